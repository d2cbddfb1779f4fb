#!/usr/bin/env bash
# `keybag serve` load and overhead (issue 10; docs/BENCHMARKS.md, "keybag serve").
#
#   scripts/bench-serve.sh      # from any cwd; results in $B/results
#
# 1. Load: one `keybag serve` (SQLite + folder, HTTPS on loopback) and KEYBAG_BENCH_CLIENTS (50)
#    clients (the serve_load example), each with its own account, repository and phone enrolled
#    with a backup token, pushing small incremental backups (200 files of 4 KiB, 5 changed per
#    push) for KEYBAG_BENCH_SECONDS (60). Errors, request and push latency (p50/p99), throughput,
#    and the server's peak RSS (VmHWM) are recorded.
# 2. Overhead: the same first push of one backup (2,000 files of 128 KiB of random bytes,
#    256 MiB) through the server (https:// REPO, owner session) and straight into a folder
#    repository on the same disk; KEYBAG_BENCH_ROUNDS (3) alternating rounds, each into a new
#    repository; medians and their ratio.
# Passwords travel through environment variables, never a command line.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
B="${KEYBAG_BENCH_DIR:-/tmp/keybag-serve-bench}"
mkdir -p "$B"
B="$(cd "$B" && pwd -P)"
case "$B/" in "$(pwd -P)"/*) echo "bench-serve.sh: KEYBAG_BENCH_DIR must be outside the repo" >&2; exit 1 ;; esac
R="$B/results"
CLIENTS="${KEYBAG_BENCH_CLIENTS:-50}"
SECONDS_="${KEYBAG_BENCH_SECONDS:-60}"
ROUNDS="${KEYBAG_BENCH_ROUNDS:-3}"
rm -rf "$B"/*
mkdir -p "$R"
exec > >(tee "$R/bench.log") 2>&1
log() { printf '\n== %s\n' "$*"; }

log "building (release)"
cargo build --release --locked -p keybag --bin keybag --example serve_load
T="${CARGO_TARGET_DIR:-$repo/target}"
case "$T" in /*) ;; *) T="$repo/$T" ;; esac
KB="$T/release/keybag"
LOAD="$T/release/examples/serve_load"
{
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "kernel: $(uname -r)"
    echo "keybag: $("$KB" --version) ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "loadavg_start: $(cat /proc/loadavg)"
} | tee "$R/machine.txt"

server_pid=""
cleanup() { if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi; }
trap cleanup EXIT

log "starting keybag serve"
"$KB" serve --data "$B/srv" --listen 127.0.0.1:0 --ready-file "$B/ready" 2>"$R/server.log" &
server_pid=$!
for _ in $(seq 600); do [ -s "$B/ready" ] && break; sleep 0.1; done
[ -s "$B/ready" ] || { echo "bench-serve.sh: the server did not start (see $R/server.log)" >&2; exit 1; }
URL="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$B/ready")"
FP="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fingerprint"])' "$B/ready")"
echo "server: $URL"
rss() { sed -n "s/^$1:[[:space:]]*//p" "/proc/$server_pid/status"; }
echo "server RSS at start: $(rss VmRSS)"

log "load: $CLIENTS clients, $SECONDS_ s of small incremental pushes"
"$LOAD" --data "$B/srv" --url "$URL" --fingerprint "$FP" --clients "$CLIENTS" --seconds "$SECONDS_" \
    >"$R/load.json"
cat "$R/load.json"
echo "server RSS after load: $(rss VmRSS), peak (VmHWM): $(rss VmHWM)" | tee "$R/rss.txt"

log "overhead: one first push through the server and straight to a folder"
"$LOAD" --make-backup "$B/backup" --files 2000 --file-kib 128
du -sh "$B/backup"
export KEYBAG_REPO_PASSWORD="bench repository password"
export KEYBAG_NEW_REPO_PASSWORD="$KEYBAG_REPO_PASSWORD"
export KEYBAG_ACCOUNT_PASSWORD="bench account password"
export KEYBAG_STATE_DIR="$B/client-state"
export KEYBAG_CONFIG_DIR="$B/client-config"
now() { date +%s.%N; }
: >"$R/overhead.tsv"
for round in $(seq "$ROUNDS"); do
    # Through the server: a new account (and so a new, empty repository) each round.
    "$KB" serve admin account add --data "$B/srv" "over$round" --code-file "$B/code$round" >/dev/null
    KEYBAG_ENROLLMENT_CODE="$(head -n1 "$B/code$round")" \
        "$KB" cloud register --server "$URL" --server-fingerprint "$FP" --account "over$round" >/dev/null
    "$KB" cloud login --server "$URL" --server-fingerprint "$FP" --account "over$round" >/dev/null
    "$KB" cloud init "$URL" --server-fingerprint "$FP" >/dev/null
    t0="$(now)"
    "$KB" cloud push "$B/backup" --repo "$URL" --server-fingerprint "$FP" --json >"$R/push-server-$round.json"
    t1="$(now)"
    "$KB" cloud logout --server "$URL" --server-fingerprint "$FP" >/dev/null
    # Straight to a folder on the same disk.
    "$KB" cloud init "$B/direct$round" >/dev/null
    t2="$(now)"
    "$KB" cloud push "$B/backup" --repo "$B/direct$round" --json >"$R/push-direct-$round.json"
    t3="$(now)"
    s="$(python3 -c 'import sys; print(f"{float(sys.argv[2])-float(sys.argv[1]):.3f}")' "$t0" "$t1")"
    d="$(python3 -c 'import sys; print(f"{float(sys.argv[2])-float(sys.argv[1]):.3f}")' "$t2" "$t3")"
    printf '%s\t%s\t%s\n' "$round" "$s" "$d" | tee -a "$R/overhead.tsv"
    rm -rf "$B/direct$round"
done
echo "server peak RSS at the end (VmHWM): $(rss VmHWM)" | tee -a "$R/rss.txt"

python3 - "$R" <<'EOF'
import json, statistics, sys
r = sys.argv[1]
load = json.load(open(f"{r}/load.json"))
rows = [l.split("\t") for l in open(f"{r}/overhead.tsv").read().split("\n") if l]
srv = statistics.median(float(x[1]) for x in rows)
direct = statistics.median(float(x[2]) for x in rows)
rss = open(f"{r}/rss.txt").read().strip().replace("\n", "; ")
out = f"""| measure | value |
|---|---|
| clients × seconds | {load['clients']} × {load['seconds']:.0f} s |
| errors | {load['errors']} |
| pushes (per second) | {load['pushes']} ({load['pushes_per_s']:.1f}/s) |
| requests (per second) | {load['requests']} ({load['requests_per_s']:.0f}/s) |
| request latency p50 / p99 | {load['request_p50_ms']:.1f} ms / {load['request_p99_ms']:.1f} ms |
| push latency p50 / p99 | {load['push_p50_ms']:.0f} ms / {load['push_p99_ms']:.0f} ms |
| uploaded (sealed) | {load['uploaded_bytes'] / 1e6:.1f} MB |
| server RSS | {rss} |
| first push of 256 MiB via server / direct (median of {len(rows)}) | {srv:.2f} s / {direct:.2f} s = **{srv / direct:.2f}** |
"""
open(f"{r}/summary.md", "w").write(out)
print(out)
EOF
