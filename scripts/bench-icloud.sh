#!/usr/bin/env bash
# iCloud-style device backup (issue 11; docs/BENCHMARKS.md, "Device cloud backup"): the same
# device backed up to a local `keybag serve` vs to a local folder, in one run.
#
#   scripts/bench-icloud.sh      # from any cwd; results in $B/results (summary.md)
#
# Data: scripts/bench-vault.sh's device (device_bench populate-random: 10,000 files of 105 kB,
# random contents, 1.05 GB, passcode set), copied fresh for every round. Per round, each
# output new (a new account on the server, a new backup folder, a fresh empty device):
#   local backup     keybag device backup PHONE OUT --encrypt   (unlocked: every class)
#   cloud backup     keybag device cloud backup PHONE           (locked: class A/B keys gone)
#   re-backup        the unchanged locked device again
#   local restore    keybag device restore NEW OUT
#   cloud restore    keybag device cloud restore NEW --escrow   (standard custody)
# Order alternates by round (local first in odd rounds); each input is read once before it is
# timed; times and peak RSS from /usr/bin/time. The server runs on this machine (same disk,
# same 2 cores): its time is inside the cloud numbers. Secrets go through files and the
# environment only.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
B="${KEYBAG_BENCH_DIR:-/tmp/keybag-icloud-bench}"
mkdir -p "$B"
B="$(cd "$B" && pwd -P)"
case "$B/" in "$(pwd -P)"/*) echo "bench-icloud.sh: KEYBAG_BENCH_DIR must be outside the repo" >&2; exit 1 ;; esac
R="$B/results"
D="$B/data"
O="$B/out"
RUNS="${KEYBAG_BENCH_RUNS:-1}"
rm -rf "$R" "$O"
mkdir -p "$R" "$D" "$O"
exec > >(tee "$R/bench.log") 2>&1
log() { printf '\n== %s\n' "$*"; }
[ -x /usr/bin/time ] || { echo "bench-icloud.sh: please install time (Debian package)" >&2; exit 1; }

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
    echo "loadavg_start: $(cat /proc/loadavg)"
} | tee "$R/machine.txt"

if [ "$(cat "$D/stamp" 2>/dev/null)" != "icloud_bench v1" ]; then
    log "populating the device (10,000 random files)"
    rm -rf "$D"
    "$T/release/examples/device_bench" populate-random "$D"
    echo "icloud_bench v1" >"$D/stamp"
fi
echo "phone: $(find "$D/phone/store" -type f | wc -l) blobs, $(du -sb "$D/phone/store" | cut -f1) bytes"

export KEYBAG_PASSWORD='keybag-bench device backup'   # protects nothing but generated noise
printf '123456\n' >"$O/passcode"
printf 'keybag-bench account password\n' >"$O/account-pw"
export KEYBAG_CONFIG_DIR="$O/config"

log "starting keybag serve on loopback"
"$KB" serve --data "$O/serve" --listen 127.0.0.1:0 --ready-file "$O/ready" >"$O/serve.log" 2>&1 &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do [ -s "$O/ready" ] && break; sleep 0.05; done
URL="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$O/ready")"

warm() { find "$1" -type f -exec cat {} + >/dev/null; }
timed() { # name cmd…: appends "name seconds maxrss_kib" to $R/times.txt
    local name="$1"
    shift
    sync
    sleep 2
    /usr/bin/time -f "%e %M" -o "$O/time" "$@" >"$O/$name.out" 2>"$O/$name.err" \
        || { cat "$O/$name.err" >&2; exit 1; }
    echo "$name $(cat "$O/time")" | tee -a "$R/times.txt"
}

for k in $(seq 1 "$RUNS"); do
    log "round $k/$RUNS"
    acct="bench$k"
    rm -rf "$O/phone" "$O/local" "$O/new-local" "$O/new-cloud" "$O/code"
    cp -a "$D/phone" "$O/phone"
    cp -a "$D/target-empty" "$O/new-local"
    cp -a "$D/target-empty" "$O/new-cloud"
    "$KB" serve admin account add "$acct" --data "$O/serve" --code-file "$O/code" >/dev/null
    "$KB" cloud register --server "$URL" --account "$acct" --enrollment-code-file "$O/code" \
        --password-file "$O/account-pw" >/dev/null 2>&1
    "$KB" device unlock "$O/phone" --passcode-file "$O/passcode" >/dev/null
    "$KB" device cloud enable "$O/phone" --server "$URL" --account "$acct" \
        --password-file "$O/account-pw" >/dev/null
    local_backup() {
        "$KB" device unlock "$O/phone" --passcode-file "$O/passcode" >/dev/null
        warm "$O/phone/store"
        timed local-backup "$KB" device backup "$O/phone" "$O/local" --encrypt
    }
    cloud_backup() {
        "$KB" device lock "$O/phone" >/dev/null
        warm "$O/phone/store"
        timed cloud-backup "$KB" device cloud backup "$O/phone"
        timed cloud-rebackup "$KB" device cloud backup "$O/phone"
    }
    if [ $((k % 2)) -eq 1 ]; then local_backup; cloud_backup; else cloud_backup; local_backup; fi
    grep -h "while locked" "$O/cloud-backup.out" || true
    local_restore() {
        warm "$O/local"
        timed local-restore "$KB" device restore "$O/new-local" "$O/local"
    }
    cloud_restore() {
        warm "$O/serve/blobs"
        timed cloud-restore "$KB" device cloud restore "$O/new-cloud" --server "$URL" \
            --account "$acct" --password-file "$O/account-pw" --escrow
    }
    if [ $((k % 2)) -eq 1 ]; then local_restore; cloud_restore; else cloud_restore; local_restore; fi
done
kill $SERVE
wait $SERVE 2>/dev/null || true
echo "loadavg_end: $(cat /proc/loadavg)" >>"$R/machine.txt"

python3 - "$R/times.txt" <<'PY' | tee "$R/summary.md"
import statistics, sys
t = {}
for line in open(sys.argv[1]):
    n, s, m = line.split()
    t.setdefault(n, []).append((float(s), int(m)))
def mean(n): return statistics.mean(s for s, _ in t[n])
def med(n): return statistics.median(s for s, _ in t[n])
def rss(n): return max(m for _, m in t[n]) / 1024
out = [f"- {n}: mean {mean(n):.2f} s, median {med(n):.2f} s, peak RSS {rss(n):.0f} MiB (n={len(t[n])})" for n in t]
for what, a, b, goal in [
    ("cloud backup (locked) / local backup --encrypt", "cloud-backup", "local-backup", 1.5),
    ("unchanged re-backup / first cloud backup", "cloud-rebackup", "cloud-backup", 0.05),
    ("cloud restore / local restore", "cloud-restore", "local-restore", 1.5),
]:
    r, rm = mean(a) / mean(b), med(a) / med(b)
    out.append(f"- {what}: {r:.3f} by mean, {rm:.3f} by median (goal <= {goal}): {'PASS' if r <= goal else 'FAIL'}")
print("\n".join(out))
PY
rm -rf "$O"
log "done: results in $R (device kept in $D)"
