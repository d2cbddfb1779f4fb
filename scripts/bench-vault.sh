#!/usr/bin/env bash
# keybag cloud vs restic (issue 9; docs/BENCHMARKS.md, "Vault"), side by side in one run.
#
#   scripts/bench-vault.sh      # from any cwd; results in $B/results (summary.md)
#
# Data: a device like scripts/bench-device.sh's (10,000 files of 105 kB, 1.05 GB) but with
# random, incompressible contents, all different (device_bench populate-random; kept in $B/data) and two encrypted `keybag device backup` runs of it
# into two new folders, bk1 and bk2: two backup keybags, so every blob of bk2 differs from
# bk1's (a re-keyed full backup). Both tools get the same folders, on the same disk:
#   first push       keybag cloud push bk1 (with the backup's password: files stored
#                    re-keyable)       vs restic backup bk1
#   re-push          the unchanged bk1 again, keybag with the backup's derived key (saved
#                    once by mvt's `mvt-ios extract-key`, as a scheduled push would keep it;
#                    no PBKDF2), and once more with the password ("re-push, password")
#   re-keyed         bk2: time, and stored bytes added
#   pull             keybag cloud pull vs restic restore, of bk1's snapshot
#   cat              one file: keybag cloud cat vs restic dump
#   S3 first push    both into a fresh s3s-fs on loopback
# Each step runs KEYBAG_BENCH_RUNS (1) times per tool, keybag first in odd rounds and restic
# first in even ones, each after reading its input once (warm), each into what the step
# needs (a new repository for the first push); times and peak RSS are from /usr/bin/time.
# Needs Debian's restic (0.14) and s3s-fs (scripts/test.sh installs it). Passwords travel
# through environment variables only.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
B="${KEYBAG_BENCH_DIR:-/tmp/keybag-vault-bench}"
mkdir -p "$B"
B="$(cd "$B" && pwd -P)"
case "$B/" in "$(pwd -P)"/*) echo "bench-vault.sh: KEYBAG_BENCH_DIR must be outside the repo" >&2; exit 1 ;; esac
R="$B/results"
D="$B/data"
O="$B/out"
RUNS="${KEYBAG_BENCH_RUNS:-1}"
rm -rf "$R" "$O"
mkdir -p "$R" "$D" "$O"
exec > >(tee "$R/bench.log") 2>&1
log() { printf '\n== %s\n' "$*"; }
command -v restic >/dev/null || { echo "bench-vault.sh: please install restic (Debian package)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench-vault.sh: please install time (Debian package)" >&2; exit 1; }
S3S="${KEYBAG_S3S_FS:-${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs}"
[ -x "$S3S" ] || { echo "bench-vault.sh: s3s-fs not found (scripts/test.sh installs it)" >&2; exit 1; }

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
    echo "keybag: $("$KB" --version) ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "restic: $(restic version)"
    echo "loadavg_start: $(cat /proc/loadavg)"
} | tee "$R/machine.txt"

export KEYBAG_PASSWORD='keybag-bench device backup'   # protects nothing but generated noise
if [ "$(cat "$D/stamp" 2>/dev/null)" != "vault_bench v2" ]; then
    log "populating the device and making bk1, bk2 (two encrypted backups, two keybags)"
    rm -rf "$D"
    "$T/release/examples/device_bench" populate-random "$D"
    "$KB" device backup "$D/phone" "$D/bk1" --encrypt >/dev/null
    "$KB" device backup "$D/phone" "$D/bk2" --encrypt >/dev/null
    echo "vault_bench v2" >"$D/stamp"
fi
echo "bk1: $(find "$D/bk1" -type f | wc -l) files, $(du -sb "$D/bk1" | cut -f1) bytes"
# bk1's derived key, saved by a third party (mvt), for the scheduled-push case.
mvt_python="$(scripts/pyenv.sh | sed -n 's/^KEYBAG_PY_MVT=//p')"
rm -f "$D/bk1.key"
MVT_IOS_BACKUP_PASSWORD="$KEYBAG_PASSWORD" "$(dirname "$mvt_python")/mvt-ios" extract-key \
    -k "$D/bk1.key" "$D/bk1" >/dev/null 2>&1
[ -s "$D/bk1.key" ] || { echo "bench-vault.sh: mvt-ios extract-key saved no key" >&2; exit 1; }

export KEYBAG_REPO_PASSWORD='keybag-bench repository'
export KEYBAG_NEW_REPO_PASSWORD="$KEYBAG_REPO_PASSWORD"
export KEYBAG_STATE_DIR="$O/state"
export RESTIC_PASSWORD="$KEYBAG_REPO_PASSWORD"
export RESTIC_CACHE_DIR="$O/restic-cache"
: >"$R/times.tsv"

# run STEP TOOL CMD...: times CMD (wall seconds, peak RSS KiB) into times.tsv.
run() {
    local step="$1" tool="$2"
    shift 2
    # Dirty pages of the previous step (a deleted or freshly written repository) are written
    # back before the clock starts: without the pause, whichever tool ran first paid for them.
    sync
    sleep 3
    /usr/bin/time -f '%e %M' -o "$O/time" "$@" >"$O/stdout" 2>"$O/stderr" || {
        echo "bench-vault.sh: $tool $step failed:" >&2; cat "$O/stderr" >&2; exit 1; }
    read -r secs rss <"$O/time"
    printf '%s\t%s\t%s\t%s\n' "$step" "$tool" "$secs" "$rss" | tee -a "$R/times.tsv"
}
size() { du -sb "$1" | cut -f1; }
# warm DIR: reads every file of DIR once, so that the tool timed next finds its input in the
# page cache as far as memory allows (this VM's memory cgroup keeps about 2.4 GB of cache:
# without it the tool that ran first read from disk and the second from cache).
warm() { find "$1" -type f -print0 | xargs -0 cat >/dev/null; }
# pair STEP KEYBAG_INPUT RESTIC_INPUT: times the commands in the arrays KBCMD and RSCMD, each
# after warming its input, keybag first in odd rounds and restic first in even ones.
pair() {
    local step="$1" wk="$2" wr="$3"
    if [ $((k % 2)) -eq 1 ]; then
        warm "$wk"; run "$step" keybag "${KBCMD[@]}"
        warm "$wr"; run "$step" restic "${RSCMD[@]}"
    else
        warm "$wr"; run "$step" restic "${RSCMD[@]}"
        warm "$wk"; run "$step" keybag "${KBCMD[@]}"
    fi
}
# The blob of one file of the device (domain-relativePath, SHA-1): for cat / dump.
DOMAIN="AppDomain-com.example.app7"
RPATH="Documents/d7/f7.bin"
FID="$(python3 -c 'import hashlib,sys; print(hashlib.sha1(sys.argv[1].encode()).hexdigest())' "$DOMAIN-$RPATH")"

for k in $(seq "$RUNS"); do
    log "round $k/$RUNS: first push"
    rm -rf "$O/kb" "$O/rs" "$O/state" "$O/restic-cache"
    "$KB" cloud init "$O/kb" --kdf-iterations 1 >/dev/null
    restic init --repo "$O/rs" >/dev/null
    KBCMD=("$KB" cloud push "$D/bk1" --repo "$O/kb")
    RSCMD=(restic backup --repo "$O/rs" "$D/bk1")
    pair first "$D/bk1" "$D/bk1"
    printf 'first-bytes\tkeybag\t%s\nfirst-bytes\trestic\t%s\n' "$(size "$O/kb")" "$(size "$O/rs")" | tee -a "$R/times.tsv"

    log "round $k/$RUNS: re-push of the unchanged backup"
    KBCMD=("$KB" cloud push "$D/bk1" --repo "$O/kb" --derived-key-file "$D/bk1.key")
    pair repush "$D/bk1" "$D/bk1"
    KBCMD=("$KB" cloud push "$D/bk1" --repo "$O/kb")
    pair repush-password "$D/bk1" "$D/bk1"

    log "round $k/$RUNS: re-keyed full backup (bk2)"
    kb0="$(size "$O/kb")" rs0="$(size "$O/rs")"
    KBCMD=("$KB" cloud push "$D/bk2" --repo "$O/kb")
    RSCMD=(restic backup --repo "$O/rs" "$D/bk2")
    pair rekeyed "$D/bk2" "$D/bk2"
    printf 'rekeyed-added\tkeybag\t%s\nrekeyed-added\trestic\t%s\n' \
        "$(($(size "$O/kb") - kb0))" "$(($(size "$O/rs") - rs0))" | tee -a "$R/times.tsv"

    log "round $k/$RUNS: pull / restore of bk1's snapshot"
    kbsnap="$("$KB" cloud snapshots --repo "$O/kb" --json | python3 -c 'import json,sys; print(sorted(json.load(sys.stdin), key=lambda x: x["snapshot"]["time_ms"])[0]["id"])')"
    rssnap="$(restic snapshots --repo "$O/rs" --json | python3 -c 'import json,sys; print(sorted(json.load(sys.stdin), key=lambda x: x["time"])[0]["id"])')"
    rm -rf "$O/pull" "$O/restore"
    KBCMD=("$KB" cloud pull "$kbsnap" "$O/pull" --repo "$O/kb")
    RSCMD=(restic restore --repo "$O/rs" "$rssnap" --target "$O/restore")
    pair pull "$O/kb" "$O/rs"
    cmp -s "$O/pull/Manifest.db" "$D/bk1/Manifest.db" || { echo "bench-vault.sh: pulled Manifest.db differs" >&2; exit 1; }
    rm -rf "$O/pull" "$O/restore"

    log "round $k/$RUNS: one file (cat / dump)"
    KBCMD=("$KB" cloud cat "$kbsnap" "$DOMAIN" "$RPATH" --repo "$O/kb")
    RSCMD=(restic dump --repo "$O/rs" "$rssnap" "$D/bk1/${FID:0:2}/$FID")
    pair cat "$O/kb/config" "$O/rs/config"

    log "round $k/$RUNS: first push into S3 (s3s-fs on loopback)"
    rm -rf "$O/s3data" && mkdir -p "$O/s3data/bench"
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret-key AWS_REGION=us-east-1
    "$S3S" --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
        "$O/s3data" >"$O/s3s.log" 2>&1 &
    s3pid=$!
    for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    rm -rf "$O/state"
    AWS_ENDPOINT_URL="http://127.0.0.1:$port" "$KB" cloud init s3://bench/kb --kdf-iterations 1 >/dev/null
    restic init --repo "s3:http://127.0.0.1:$port/bench/rs" >/dev/null
    KBCMD=(env AWS_ENDPOINT_URL="http://127.0.0.1:$port" "$KB" cloud push "$D/bk1" --repo s3://bench/kb)
    RSCMD=(restic backup --repo "s3:http://127.0.0.1:$port/bench/rs" "$D/bk1")
    pair s3-first "$D/bk1" "$D/bk1"
    kill "$s3pid"; wait "$s3pid" 2>/dev/null || true
    unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION
done
echo "loadavg_end: $(cat /proc/loadavg)" >>"$R/machine.txt"

python3 - "$R" <<'EOF' | tee "$R/summary.md"
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1] + "/times.tsv").read().splitlines() if l]
def med(step, tool, col=2):
    return statistics.median(float(r[col]) for r in rows if r[0] == step and r[1] == tool)
print("| step | keybag | restic 0.14 | ratio | goal |")
print("|---|---|---|---|---|")
for step, what, goal in [("first", "first push, 1.05 GB / 10,000 files, local", "≤ 1.0"),
                         ("repush", "re-push, unchanged (derived key)", "≤ 0.3"),
                         ("repush-password", "re-push, unchanged (password)", "≤ 0.3"),
                         ("rekeyed", "re-keyed full backup (time)", ""),
                         ("pull", "pull / restore", "≤ 1.0"),
                         ("cat", "one file: cat / dump", "≤ 1.0"),
                         ("s3-first", "first push into s3s-fs", "≤ 1.0")]:
    k, r = med(step, "keybag"), med(step, "restic")
    print(f"| {what} | {k:.2f} s | {r:.2f} s | {k / r:.2f} | {goal} |")
for step, what, goal in [("first-bytes", "stored bytes after the first push", "≤ 1.0"),
                         ("rekeyed-added", "bytes added by the re-keyed backup", "≤ 0.1")]:
    k, r = med(step, "keybag"), med(step, "restic")
    print(f"| {what} | {k / 1e6:,.1f} MB | {r / 1e6:,.1f} MB | {k / r:.3f} | {goal} |")
for step in ["first", "repush", "pull"]:
    k, r = med(step, "keybag", 3), med(step, "restic", 3)
    print(f"| peak RSS, {step} | {k / 1024:.0f} MiB | {r / 1024:.0f} MiB | {k / r:.2f} | push ≤ 1.0 |")
EOF
rm -rf "$O"
log "done: results in $R (data kept in $D)"
