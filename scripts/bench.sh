#!/usr/bin/env bash
# keybag benchmarks (the issue's acceptance numbers), run side by side with their peers.
#
#   scripts/bench.sh            # from any cwd; idempotent; results in $B/results
#
# 1. KDF: whole-process `keybag verify` of testdata/enc-small-public (password from
#    KEYBAG_PASSWORD) vs PBKDF2-HMAC-SHA256 x DPIC in python with pycryptodome (what
#    iphone_backup_decrypt 0.11.2 uses) and with hashlib; plus kdf_bench, a micro-benchmark
#    of the library's PBKDF2 against the bare SHA-256 compressions.
# 2. Full extract of a synthetic encrypted backup (2,000 files, 512 MiB) with its derived key
#    (no KDF): keybag extract vs iphone_backup_decrypt extract_files (passphrase_key=, no
#    KDF) vs cp -r of the backup's blob folders. Warm page cache (one warm-up run each), the
#    output folder removed (and synced) before every run; then, when /proc/sys/vm/drop_caches
#    is writable, cold-cache runs too.
# 3. Peak RSS (GNU time "Maximum resident set size") of keybag extract on a backup holding
#    one 2,100 MiB file (iphone_backup_decrypt alongside, for reference).
# 4. Writer: the synth example writing the 2,000-file source tree as an encrypted backup
#    (writer step = add_all + finish, timed inside the process, the one-time 10M KDF apart)
#    vs cp -r of the source tree.
#
# Generated data lives in ${KEYBAG_BENCH_DIR:-/tmp/keybag-bench} (never inside the repo):
#   data/      inputs, generated once and kept for re-runs (about 3.2 GB)
#   out/       outputs of the runs, removed at the end
#   results/   raw hyperfine JSON/markdown, GNU time output, logs and summary.md
# Every hyperfine benchmark runs in KEYBAG_BENCH_ROUNDS (3) rounds, each with one warm-up run
# per command and then KEYBAG_BENCH_KDF_RUNS (4) runs for the KDF, KEYBAG_BENCH_RUNS (3) for
# extract and writer, KEYBAG_BENCH_COLD_RUNS (2; 0 skips them) for cold-cache extract; the
# rounds are pooled (scripts/hf-merge.py). Input size: KEYBAG_BENCH_FILES (2000), KEYBAG_BENCH_MIB (512),
# KEYBAG_BENCH_BIG_MIB (2100). A full run takes about 7 minutes (plus ~30 s the first time,
# to generate the inputs) and writes at most ~6 GB at once.
# Secrets: passwords go through the KEYBAG_PASSWORD environment variable and derived keys
# through --derived-key-file / a key file, never through a command line.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
B="${KEYBAG_BENCH_DIR:-/tmp/keybag-bench}"
mkdir -p "$B"
B="$(cd "$B" && pwd -P)"
case "$B/" in "$(pwd -P)"/*) echo "bench.sh: KEYBAG_BENCH_DIR must be outside the repo" >&2; exit 1 ;; esac
R="$B/results"
D="$B/data"
O="$B/out"
KDF_RUNS="${KEYBAG_BENCH_KDF_RUNS:-4}"
RUNS="${KEYBAG_BENCH_RUNS:-3}"
ROUNDS="${KEYBAG_BENCH_ROUNDS:-3}"
COLD_RUNS="${KEYBAG_BENCH_COLD_RUNS:-2}"
FILES="${KEYBAG_BENCH_FILES:-2000}"
MIB="${KEYBAG_BENCH_MIB:-512}"
BIG_MIB="${KEYBAG_BENCH_BIG_MIB:-2100}"
FIXTURE="$repo/testdata/enc-small-public"
FIXTURE_PASSWORD='correct horse battery staple'    # public, see testdata/enc-small-public.README.md
SYNTH_PASSWORD='keybag-bench synthetic backup'      # protects nothing but generated noise

log() { printf '\n== %s\n' "$*"; }
q() { printf '%q' "$1"; }
die() { echo "bench.sh: error: $*" >&2; exit 1; }

rm -rf "$R" "$O"
mkdir -p "$R" "$D" "$O" "$B/py"
exec > >(tee "$R/bench.log") 2>&1

# --- tools -------------------------------------------------------------------------------
need_pkgs=()
command -v hyperfine >/dev/null 2>&1 || need_pkgs+=(hyperfine)
[ -x /usr/bin/time ] || need_pkgs+=(time)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
        || die "please install: ${need_pkgs[*]} (Debian packages)"
    log "installing ${need_pkgs[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
fi
PY="$(scripts/pyenv.sh | sed -n 's/^KEYBAG_PY_IBD=//p')"
[ -x "$PY" ] || die "scripts/pyenv.sh did not report the iphone_backup_decrypt venv"

log "building (release)"
cargo build --release --locked -p keybag
cargo build --release --locked -p mobilebackup --example synth --example kdf_bench
T="${CARGO_TARGET_DIR:-$repo/target}"
case "$T" in /*) ;; *) T="$repo/$T" ;; esac
KB="$T/release/keybag"
SYNTH="$T/release/examples/synth"
KDFB="$T/release/examples/kdf_bench"


# --- machine -----------------------------------------------------------------------------
{
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "cpu_flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'sha_ni|aes|vaes|avx2|avx512f' | tr '\n' ' ')"
    echo "mem: $(sed -n 's/^MemTotal:[[:space:]]*//p' /proc/meminfo)"
    echo "kernel: $(uname -r)"
    echo "tmp_fs: $(df -T /tmp | awk 'NR==2 {print $2" on "$1}')"
    echo "bench_dir_fs: $(df -T "$B" | awk 'NR==2 {print $2" on "$1}')"
    echo "loadavg_start: $(cat /proc/loadavg)"
    echo "keybag: $("$KB" --version) ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?'), tree $(git -C "$repo" status --porcelain 2>/dev/null | grep -q . && echo dirty || echo clean))"
    echo "rustc: $(rustc -V)"
    echo "hyperfine: $(hyperfine --version)"
    echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0])')"
    echo "iphone_backup_decrypt: $("$PY" -c 'from importlib.metadata import version as v; print(v("iphone_backup_decrypt"))')"
    echo "pycryptodome: $("$PY" -c 'import Crypto; print(Crypto.__version__)')"
    echo "fastpbkdf2 installed: $("$PY" -c 'import fastpbkdf2' 2>/dev/null && echo yes || echo no)"
} | tee "$R/machine.txt"

# --- python peers (written here so the repo holds no extra files) ---------------------------
cat >"$B/py/kdf.py" <<'EOF'
# PBKDF2-HMAC-SHA256 over DPSL x DPIC of a backup's keybag: the slow half of the backup KDF.
# usage: kdf.py pycryptodome|hashlib BACKUP   (password from KEYBAG_PASSWORD)
import os, plistlib, struct, sys
which, backup = sys.argv[1], sys.argv[2]
pw = os.environ["KEYBAG_PASSWORD"].encode()
with open(os.path.join(backup, "Manifest.plist"), "rb") as f:
    kb = plistlib.load(f)["BackupKeyBag"]
tags, i = {}, 0
while i + 8 <= len(kb):
    tag, n = kb[i:i + 4], struct.unpack(">I", kb[i + 4:i + 8])[0]
    tags.setdefault(tag, kb[i + 8:i + 8 + n])
    i += 8 + n
dpsl, dpic = tags[b"DPSL"], struct.unpack(">I", tags[b"DPIC"])[0]
if which == "pycryptodome":
    # Exactly what iphone_backup_decrypt 0.11.2 calls when fastpbkdf2 is absent.
    import Crypto.Hash.SHA256, Crypto.Protocol.KDF
    key = Crypto.Protocol.KDF.PBKDF2(pw, dpsl, 32, dpic, hmac_hash_module=Crypto.Hash.SHA256)
elif which == "hashlib":
    import hashlib
    key = hashlib.pbkdf2_hmac("sha256", pw, dpsl, dpic, 32)
else:
    sys.exit("unknown implementation " + which)
assert len(key) == 32
EOF
cat >"$B/py/ibd_unlock.py" <<'EOF'
# iphone_backup_decrypt: full unlock (both KDF stages) + Manifest.db decryption.
# usage: ibd_unlock.py BACKUP   (password from KEYBAG_PASSWORD)
import os, sys
from iphone_backup_decrypt import EncryptedBackup
b = EncryptedBackup(backup_directory=sys.argv[1], passphrase=os.environ["KEYBAG_PASSWORD"])
assert b.test_decryption()
EOF
cat >"$B/py/ibd_extract.py" <<'EOF'
# iphone_backup_decrypt: extract every file, unlocking with the derived key (no KDF).
# Output layout OUT/<domain>/<relativePath>, like keybag extract.
# usage: ibd_extract.py BACKUP OUT KEYFILE
import sys
from iphone_backup_decrypt import EncryptedBackup
backup, out, keyfile = sys.argv[1:4]
with open(keyfile) as f:
    key = bytes.fromhex(f.read().strip())
b = EncryptedBackup(backup_directory=backup, passphrase_key=key)
n = b.extract_files(relative_paths_like="%", domain_like="%", output_folder=out,
                    preserve_folders=True, domain_subfolders=True)
print(f"extracted {n} files")
EOF

# --- inputs (generated once, kept) -------------------------------------------------------
export KEYBAG_PASSWORD="$SYNTH_PASSWORD"
SRC="$D/src-main"
BK="$D/bk-main"
BIG="$D/bk-big"
# An input is (re)made when its stamp (the parameters it was made with) is missing or differs.
if [ "$(cat "$D/main.stamp" 2>/dev/null)" != "files=$FILES mib=$MIB" ]; then
    log "generating the main input: $FILES files, $MIB MiB, and its encrypted backup"
    rm -rf "$D/main.stamp" "$SRC" "$BK" "$BK.key"
    "$SYNTH" gen --source "$SRC" --files "$FILES" --mib "$MIB"
    "$SYNTH" write --source "$SRC" --out "$BK" --key-file "$BK.key"
    echo "files=$FILES mib=$MIB" >"$D/main.stamp"
fi
if [ "$(cat "$D/big.stamp" 2>/dev/null)" != "mib=$BIG_MIB" ]; then
    log "generating the big-file input: one $BIG_MIB MiB file, encrypted backup"
    rm -rf "$D/big.stamp" "$BIG" "$BIG.key" "$D/src-big"
    "$SYNTH" write --source "$D/src-big" --files 1 --mib "$BIG_MIB" --out "$BIG" --key-file "$BIG.key"
    rm -rf "$D/src-big"   # the backup is the input; its 2 GiB source is not needed again
    echo "mib=$BIG_MIB" >"$D/big.stamp"
fi
unset KEYBAG_PASSWORD

# hf NAME ROUNDS [hyperfine options and -n NAME CMD pairs...]: runs hyperfine ROUNDS times
# (so slow drift of this shared VM hits every command alike instead of whichever runs last),
# keeps each round's JSON/markdown as NAME.roundK.*, and merges the rounds into NAME.json
# (all run times of a command pooled; statistics recomputed). "@ROUND@" in an argument is
# replaced by the round number.
hf() {
    local name="$1" rounds="$2" k
    shift 2
    for k in $(seq 1 "$rounds"); do
        echo "-- $name, round $k/$rounds (load $(cut -d' ' -f1-3 /proc/loadavg))"
        hyperfine --style basic \
            --export-json "$R/$name.round$k.json" --export-markdown "$R/$name.round$k.md" \
            "${@//@ROUND@/$k}"
    done
    python3 "$repo/scripts/hf-merge.py" "$R/$name" "$rounds"
}

# --- 1. KDF --------------------------------------------------------------------------------
log "1. KDF (fixture, DPIC 10M): $ROUNDS rounds x $KDF_RUNS runs, 1 warm-up each"
echo "loadavg kdf: $(cat /proc/loadavg)" >>"$R/machine.txt"
export KEYBAG_PASSWORD="$FIXTURE_PASSWORD"
hf kdf "$ROUNDS" --warmup 1 --runs "$KDF_RUNS" \
    -n "keybag verify" "$(q "$KB") verify $(q "$FIXTURE")" \
    -n "pycryptodome PBKDF2-SHA256" "$(q "$PY") $(q "$B/py/kdf.py") pycryptodome $(q "$FIXTURE")" \
    -n "hashlib.pbkdf2_hmac" "$(q "$PY") $(q "$B/py/kdf.py") hashlib $(q "$FIXTURE")" \
    -n "iphone_backup_decrypt unlock" "$(q "$PY") $(q "$B/py/ibd_unlock.py") $(q "$FIXTURE")"
unset KEYBAG_PASSWORD
log "1b. kdf_bench micro-benchmark (3 runs)"
for _ in 1 2 3; do "$KDFB"; done | tee "$R/kdf_bench.txt"

# --- 2. extract ----------------------------------------------------------------------------
OUT="$O/extract"
PREP="rm -rf $(q "$OUT") && sync"
log "2. extract $FILES files / $MIB MiB, warm cache: $ROUNDS rounds x $RUNS runs, 1 warm-up each"
echo "loadavg extract: $(cat /proc/loadavg)" >>"$R/machine.txt"
EX_CMDS=(
    -n "keybag extract" "$(q "$KB") extract --derived-key-file $(q "$BK.key") $(q "$BK") $(q "$OUT")"
    -n "iphone_backup_decrypt extract_files" "$(q "$PY") $(q "$B/py/ibd_extract.py") $(q "$BK") $(q "$OUT") $(q "$BK.key")"
    -n "cp -r blob folders" "mkdir -p $(q "$OUT") && cp -r $(q "$BK")/[0-9a-f][0-9a-f] $(q "$OUT")/"
)
hf extract "$ROUNDS" --warmup 1 --runs "$RUNS" --prepare "$PREP" "${EX_CMDS[@]}"
if [ "$COLD_RUNS" -gt 0 ] && { : >/proc/sys/vm/drop_caches; } 2>/dev/null; then
    log "2b. extract, cold page cache: $ROUNDS rounds x $COLD_RUNS runs"
    hf extract-cold "$ROUNDS" --runs "$COLD_RUNS" \
        --prepare "$PREP && echo 3 > /proc/sys/vm/drop_caches" "${EX_CMDS[@]}"
else
    echo "(cold-cache runs skipped: /proc/sys/vm/drop_caches is not writable or KEYBAG_BENCH_COLD_RUNS=0)"
fi
log "2c. extract outputs equal the source tree"
for tool in keybag ibd; do
    rm -rf "$OUT"
    if [ "$tool" = keybag ]; then "$KB" extract --derived-key-file "$BK.key" "$BK" "$OUT" >/dev/null
    else "$PY" "$B/py/ibd_extract.py" "$BK" "$OUT" "$BK.key" >/dev/null; fi
    if diff -rq "$SRC" "$OUT" >/dev/null; then echo "$tool: identical to the source tree"
    else echo "$tool: DIFFERS from the source tree"; fi
done | tee "$R/extract-check.txt"
rm -rf "$OUT"

# --- 3. peak RSS -----------------------------------------------------------------------------
log "3. peak RSS, extracting one $BIG_MIB MiB file"
echo "loadavg rss: $(cat /proc/loadavg)" >>"$R/machine.txt"
BOUT="$O/extract-big"
rm -rf "$BOUT"; sync
/usr/bin/time -v -o "$R/rss-keybag.txt" "$KB" extract --derived-key-file "$BIG.key" "$BIG" "$BOUT"
du -sb "$BOUT" | tee "$R/rss-keybag-output.txt"
rm -rf "$BOUT"; sync
/usr/bin/time -v -o "$R/rss-ibd.txt" "$PY" "$B/py/ibd_extract.py" "$BIG" "$BOUT" "$BIG.key"
rm -rf "$BOUT"; sync
grep -E 'Maximum resident|Elapsed' "$R/rss-keybag.txt" "$R/rss-ibd.txt"

# --- 4. writer -------------------------------------------------------------------------------
WOUT="$O/writer"
log "4. writer: $FILES files / $MIB MiB, warm cache: $ROUNDS rounds x $RUNS runs, 1 warm-up each"
echo "loadavg writer: $(cat /proc/loadavg)" >>"$R/machine.txt"
export KEYBAG_PASSWORD="$SYNTH_PASSWORD"
hf writer "$ROUNDS" --warmup 1 --runs "$RUNS" --prepare "rm -rf $(q "$WOUT") && sync" \
    -n "synth write (encrypted)" "$(q "$SYNTH") write --source $(q "$SRC") --out $(q "$WOUT") --report $(q "$R/writer-encrypted.round@ROUND@.jsonl")" \
    -n "synth write --plain" "$(q "$SYNTH") write --plain --source $(q "$SRC") --out $(q "$WOUT") --report $(q "$R/writer-plain.round@ROUND@.jsonl")" \
    -n "cp -r source tree" "cp -r $(q "$SRC") $(q "$WOUT")"
unset KEYBAG_PASSWORD
rm -rf "$WOUT"
echo "loadavg_end: $(cat /proc/loadavg)" >>"$R/machine.txt"

# --- summary -----------------------------------------------------------------------------
"$PY" - "$R" "$ROUNDS" <<'EOF' | tee "$R/summary.md"
import json, os, re, statistics, sys
R, rounds = sys.argv[1], int(sys.argv[2])
def hf(name):
    p = os.path.join(R, name)
    return {r["command"]: r for r in json.load(open(p))["results"]} if os.path.exists(p) else None
def fmt(r):
    return (f'mean {r["mean"]:.3f} ± {r["stddev"]:.3f} s, median {r["median"]:.3f}, '
            f'min {r["min"]:.3f}, max {r["max"]:.3f} (n={len(r["times"])}; user {r["user"]:.3f}, sys {r["system"]:.3f})')
def ratio(a, b, goal, what):
    m, md = a["mean"] / b["mean"], a["median"] / b["median"]
    v = "PASS" if m <= goal else "FAIL"
    if (md <= goal) != (m <= goal):
        v += " (median says otherwise: borderline)"
    return f"- {what}: {m:.3f} by mean, {md:.3f} by median (goal ≤ {goal:.2f}): {v}"
out = [f"(times pooled over {rounds} rounds; ratios of means decide PASS/FAIL)", ""]
k = hf("kdf.json")
out += ["## 1. KDF (enc-small-public, DPIC 10M + ITER 10k, whole process)", ""]
out += [f"- {n}: {fmt(r)}" for n, r in k.items()]
out.append(ratio(k["keybag verify"], k["pycryptodome PBKDF2-SHA256"], 1.10, "keybag verify / pycryptodome"))
out.append(f'- hashlib / keybag verify = {k["hashlib.pbkdf2_hmac"]["mean"] / k["keybag verify"]["mean"]:.2f}x')
for label, fn in (("warm", "extract.json"), ("cold", "extract-cold.json")):
    e = hf(fn)
    if e is None:
        continue
    out += ["", f"## 2. extract ({label} page cache)", ""]
    out += [f"- {n}: {fmt(r)}" for n, r in e.items()]
    kb, ibd, cp = (e[c] for c in ("keybag extract", "iphone_backup_decrypt extract_files", "cp -r blob folders"))
    out.append(ratio(kb, ibd, 0.10, "keybag / iphone_backup_decrypt"))
    out.append(ratio(kb, cp, 1.50, "keybag / cp -r"))
out += ["", "## 3. peak RSS (one big file)", ""]
for tool in ("keybag", "ibd"):
    t = open(os.path.join(R, f"rss-{tool}.txt")).read()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
    el = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t).group(1)
    line = f"- {tool}: {rss} KiB = {rss / 1024:.1f} MiB (wall {el})"
    if tool == "keybag":
        line += f" (goal ≤ 64 MiB): {'PASS' if rss / 1024 <= 64 else 'FAIL'}"
    out.append(line)
w = hf("writer.json")
out += ["", "## 4. writer", ""]
out += [f"- {n} (whole process): {fmt(r)}" for n, r in w.items()]
def steps(label):
    rows = []
    for k in range(1, rounds + 1):
        lines = open(os.path.join(R, f"writer-{label}.round{k}.jsonl")).read().splitlines()
        rows += [json.loads(l) for l in lines[1:]]   # the first line of a round is its warm-up
    return rows
step = {}
for label in ("encrypted", "plain"):
    rows = steps(label)
    for key in ("kdf_seconds", "add_seconds", "finish_seconds", "write_seconds"):
        v = [r[key] for r in rows]
        out.append(f"- synth {label} {key}: mean {statistics.mean(v):.3f} s, median {statistics.median(v):.3f}, "
                   f"min {min(v):.3f}, max {max(v):.3f} (n={len(v)})")
    v = [r["write_seconds"] for r in rows]
    step[label] = {"mean": statistics.mean(v), "median": statistics.median(v)}
out.append(ratio(step["encrypted"], w["cp -r source tree"], 2.0, "writer step (encrypted) / cp -r"))
out.append(ratio(step["plain"], w["cp -r source tree"], 2.0, "writer step (plain) / cp -r [no goal, for reference]").replace(": PASS", "").replace(": FAIL", ""))
print("\n".join(out))
EOF
rm -rf "$O"
log "done: results in $R (inputs kept in $D; outputs removed)"
