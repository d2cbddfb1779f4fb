#!/usr/bin/env bash
# Runs every cargo-fuzz target of keybag for SECONDS each (default 60), one after the other.
#
#   scripts/fuzz.sh [--merge] [--seed] [--runs N] [--target NAME]... [SECONDS]
#
# Needs the nightly toolchain; installs cargo-fuzz from crates.io when it is missing.
# Each target runs as a single libFuzzer process (no -jobs/-workers: one process at a time,
# under `nice -n 10`) with -rss_limit_mb=2048 -timeout=10, reading fuzz/corpus/<target> and
# writing what it finds to fuzz/scratch/<target> (ignored by git). Crashes, hangs and
# out-of-memory inputs land in fuzz/artifacts/<target>/. The run prints one line per target
# (executions from libFuzzer's final stat::number_of_executed_units, time, exec/s, corpus,
# new inputs, findings) and exits non-zero when any target found something.
#
#   --merge        merge the new inputs of fuzz/scratch/<target> into fuzz/corpus/<target>
#                  and minimize the result (cargo fuzz cmin with -use_counters=0: the
#                  smallest set of inputs that keeps every covered edge)
#   --seed         first regenerate the seeds from testdata/ and keybag's writers
#                  (crates/fuzzing/examples/seeds.rs) into fuzz/seeds and merge them into
#                  fuzz/corpus the same way
#   --runs N       stop a target after N executions if that comes before SECONDS
#   --target NAME  run only NAME (repeatable)
#
# A finding becomes a regression test: copy the artifact to fuzz/regressions/<target>/<name>
# (tests/replay.rs of crates/fuzzing runs every file there on the stable toolchain), fix it,
# and rerun.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo/fuzz"

seconds=60
merge=0
seed=0
only=()
runs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --merge) merge=1 ;;
        --seed) seed=1 ;;
        --target) only+=("$2"); shift ;;
        --runs) runs=("-runs=$2"); shift ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *[!0-9]*|'') echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
        *) seconds="$1" ;;
    esac
    shift
done

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# Safe Rust gains little from AddressSanitizer and runs about twice as fast without it;
# debug assertions stay on so that integer overflow is a finding.
fuzz_flags=(-O --debug-assertions --sanitizer none)
nice -n 10 cargo +nightly fuzz build "${fuzz_flags[@]}"
bin_dir="$PWD/target/x86_64-unknown-linux-gnu/release"

targets=("${only[@]}")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
# keychain_plist opens items on rayon's pool: keep it to one thread like everything else.
export RAYON_NUM_THREADS=1

if [ "$seed" = 1 ]; then
    rm -rf seeds
    (cd "$repo" && nice -n 10 cargo run --release -q -p keybag-fuzzing --example seeds -- fuzz/seeds)
    for t in "${targets[@]}"; do
        mkdir -p "corpus/$t"
        cp "seeds/$t"/* "corpus/$t"/
        nice -n 10 cargo +nightly fuzz cmin "${fuzz_flags[@]}" "$t" "corpus/$t" -- \
            -use_counters=0 -rss_limit_mb=2048 -timeout=10 >"seeds/$t.merge.log" 2>&1
    done
fi

failed=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "scratch/$t" "artifacts/$t" "corpus/$t"
    log="scratch/$t.log"
    before=$(find "scratch/$t" -type f | wc -l)
    start=$(date +%s)
    set +e
    nice -n 10 "$bin_dir/$t" "scratch/$t" "corpus/$t" \
        -max_total_time="$seconds" "${runs[@]}" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    status=$?
    set -e
    took=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    execs=${execs:-0}
    rate=$(( execs / (took > 0 ? took : 1) ))
    files=$(find "corpus/$t" -type f | wc -l)
    bytes=$(find "corpus/$t" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
    new=$(( $(find "scratch/$t" -type f | wc -l) - before ))
    found=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tr '\n' ' ')
    if [ "$status" -ne 0 ] || [ -n "$found" ]; then
        failed=1
        result="FINDING (exit $status) ${found:-see $log}"
        grep -m1 -E "panicked at|ERROR: libFuzzer" "$log" || true
    else
        result="ok"
    fi
    if [ "$merge" = 1 ] && [ -n "$(ls -A "scratch/$t")" ]; then
        cp "scratch/$t"/* "corpus/$t"/
        nice -n 10 cargo +nightly fuzz cmin "${fuzz_flags[@]}" "$t" "corpus/$t" -- \
            -use_counters=0 -rss_limit_mb=2048 -timeout=10 >"scratch/$t.merge.log" 2>&1
        files=$(find "corpus/$t" -type f | wc -l)
        bytes=$(find "corpus/$t" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
    fi
    line=$(printf '%-15s %12s execs %6ss %8s exec/s  corpus %4s files %8s bytes  new %5s  %s' \
        "$t" "$execs" "$took" "$rate" "$files" "$bytes" "$new" "$result")
    echo "$line"
    summary+=("$line")
done

echo
echo "== fuzz.sh summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
