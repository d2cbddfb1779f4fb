#!/usr/bin/env bash
# Device backup benchmarks (issue 4), with hyperfine, side by side with `cp -r`.
#
#   scripts/bench-device.sh      # from any cwd; results in $B/results (summary.md)
#
# A virtual device with 10,000 files of 105 kB (1.05 GB; classes A-D round-robin, 20 app
# domains; made once by `device_bench populate`, kept in $B/data) is timed as whole
# `keybag device ...` processes:
#   cp -r        of the device folder (blobs + databases), output removed before each run;
#   first        `device backup --encrypt` into a new folder (one 10M-round PBKDF2 checking
#                the password against the keybag the device keeps; see BENCHMARKS.md);
#   incremental  `device backup` (no password: the device's kept keybag) into a folder
#                holding a backup of the unchanged device; and again with one file
#                rewritten (`device put`) before every run;
#   restore      `device restore` of that backup onto a fresh copy of an empty device.
# Every benchmark runs KEYBAG_BENCH_ROUNDS (3) rounds of KEYBAG_BENCH_RUNS (3) runs after one
# warm-up; rounds are pooled (scripts/hf-merge.py) so slow drift of this shared VM hits all
# commands alike. Passwords go through KEYBAG_PASSWORD, never a command line.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
B="${KEYBAG_BENCH_DIR:-/tmp/keybag-device-bench}"
mkdir -p "$B"
B="$(cd "$B" && pwd -P)"
case "$B/" in "$(pwd -P)"/*) echo "bench-device.sh: KEYBAG_BENCH_DIR must be outside the repo" >&2; exit 1 ;; esac
R="$B/results"
D="$B/data"
O="$B/out"
RUNS="${KEYBAG_BENCH_RUNS:-3}"
ROUNDS="${KEYBAG_BENCH_ROUNDS:-3}"
rm -rf "$R" "$O"
mkdir -p "$R" "$D" "$O"
exec > >(tee "$R/bench.log") 2>&1
log() { printf '\n== %s\n' "$*"; }
q() { printf '%q' "$1"; }
command -v hyperfine >/dev/null || { echo "bench-device.sh: please install hyperfine (Debian package)" >&2; exit 1; }

log "building (release)"
cargo build --release --locked -p keybag
cargo build --release --locked -p device --example device_bench
T="${CARGO_TARGET_DIR:-$repo/target}"
case "$T" in /*) ;; *) T="$repo/$T" ;; esac
KB="$T/release/keybag"
{
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "kernel: $(uname -r)"
    echo "bench_dir_fs: $(df -T "$B" | awk 'NR==2 {print $2" on "$1}')"
    echo "keybag: $("$KB" --version) ($(git rev-parse --short HEAD 2>/dev/null || echo '?'), tree $(git status --porcelain 2>/dev/null | grep -q . && echo dirty || echo clean))"
    echo "hyperfine: $(hyperfine --version)"
    echo "loadavg_start: $(cat /proc/loadavg)"
} | tee "$R/machine.txt"

if [ "$(cat "$D/stamp" 2>/dev/null)" != "device_bench v1" ]; then
    log "populating the device (10,000 files, 1.05 GB)"
    rm -rf "$D"
    "$T/release/examples/device_bench" populate "$D"
    echo "device_bench v1" >"$D/stamp"
fi
PHONE="$D/phone"
EMPTY="$D/target-empty"
export KEYBAG_PASSWORD='keybag-bench device backup'   # protects nothing but generated noise

hf() {
    local name="$1" k
    shift
    for k in $(seq 1 "$ROUNDS"); do
        echo "-- $name, round $k/$ROUNDS (load $(cut -d' ' -f1-3 /proc/loadavg))"
        hyperfine --style basic --warmup 1 --runs "$RUNS" \
            --export-json "$R/$name.round$k.json" --export-markdown "$R/$name.round$k.md" "$@"
    done
    python3 "$repo/scripts/hf-merge.py" "$R/$name" "$ROUNDS"
}

log "1. first backup vs cp -r (each output removed and synced before every run)"
hf first \
    --prepare "rm -rf $(q "$O/cp") $(q "$O/first") && sync" \
    -n "cp -r device folder" "cp -r $(q "$PHONE") $(q "$O/cp")" \
    -n "device backup --encrypt (new folder)" "$(q "$KB") device backup $(q "$PHONE") $(q "$O/first") --encrypt"
rm -rf "$O/cp" "$O/first"

log "2. incremental backup of the unchanged device"
"$KB" device backup "$PHONE" "$O/inc" --encrypt >/dev/null
sync
hf incremental \
    -n "device backup (unchanged, in place)" "$(q "$KB") device backup $(q "$PHONE") $(q "$O/inc")"
# The same with one file rewritten before every run: the full comparison with the previous
# backup (the unchanged case above is recognised from the device's change token instead).
head -c 105000 /dev/urandom >"$O/changed.bin"
hf incremental-one-change \
    --prepare "$(q "$KB") device put $(q "$PHONE") AppDomain-com.example.app0 Documents/d0/f0.bin --from $(q "$O/changed.bin") >/dev/null" \
    -n "device backup (1 of 10,000 files changed, in place)" "$(q "$KB") device backup $(q "$PHONE") $(q "$O/inc")"

log "3. restore onto an empty device"
hf restore \
    --prepare "rm -rf $(q "$O/target") && cp -r $(q "$EMPTY") $(q "$O/target") && sync" \
    -n "device restore" "$(q "$KB") device restore $(q "$O/target") $(q "$O/inc")"
echo "loadavg_end: $(cat /proc/loadavg)" >>"$R/machine.txt"

python3 - "$R" <<'EOF' | tee "$R/summary.md"
import json, os, sys
R = sys.argv[1]
def load(n):
    return {r["command"]: r for r in json.load(open(os.path.join(R, n + ".json")))["results"]}
def fmt(r):
    return (f'mean {r["mean"]:.3f} ± {r["stddev"]:.3f} s, median {r["median"]:.3f}, min {r["min"]:.3f}, '
            f'max {r["max"]:.3f} (n={len(r["times"])}; user {r["user"]:.3f}, sys {r["system"]:.3f})')
f, i, r = load("first"), load("incremental"), load("restore")
i1 = load("incremental-one-change")
cp, first = f["cp -r device folder"], f["device backup --encrypt (new folder)"]
inc = i["device backup (unchanged, in place)"]
rest = r["device restore"]
out = [f"- {n}: {fmt(x)}" for n, x in [*f.items(), *i.items(), *i1.items(), *r.items()]]
one = i1["device backup (1 of 10,000 files changed, in place)"]
for what, a, b, goal in [("first backup / cp -r", first, cp, 2.0), ("incremental / first", inc, first, 0.05)]:
    m, md = a["mean"] / b["mean"], a["median"] / b["median"]
    out.append(f"- {what}: {m:.3f} by mean, {md:.3f} by median (goal ≤ {goal}): {'PASS' if m <= goal else 'FAIL'}")
out.append(f"- one file changed / first: {one['mean'] / first['mean']:.3f} (no goal of its own)")
out.append(f"- restore / first backup: {rest['mean'] / first['mean']:.2f} (no goal)")
print("\n".join(out))
EOF
rm -rf "$O"
log "done: results in $R (device kept in $D)"
