#!/usr/bin/env bash
# Runs every test of keybag on a fresh machine: installs the third-party readers
# the tests compare against (iphone_backup_decrypt, mvt) into venvs under
# target/py, the S3-compatible server the vault's S3 tests start on loopback
# (s3s-fs), PostgreSQL for the service tests (Debian's package), checks formatting and lints,
# then runs the whole test suite.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# Third-party readers, each in its own venv (mvt pins an older iphone_backup_decrypt).
while IFS='=' read -r key value; do
    case "$key" in KEYBAG_PY_IBD|KEYBAG_PY_MVT) export "$key=$value" ;; esac
done < <(scripts/pyenv.sh)
: "${KEYBAG_PY_IBD:?pyenv.sh did not report the iphone_backup_decrypt venv}"
: "${KEYBAG_PY_MVT:?pyenv.sh did not report the mvt venv}"

# Headless Chromium renders `keybag audit --html` in the tests (Debian's package).
if ! command -v chromium >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
KEYBAG_CHROMIUM="$(command -v chromium)"
export KEYBAG_CHROMIUM

# s3s-fs (crates.io): the real S3-compatible server the vault's S3 tests start and stop on
# 127.0.0.1 (docs/vault.md). A few minutes to build on 2 cores, once.
s3s_version="0.14.1"
cargo_root="${CARGO_HOME:-$HOME/.cargo}"
cargo_bin="$cargo_root/bin"
if ! "$cargo_bin/s3s-fs" --version 2>/dev/null | grep -qF "$s3s_version"; then
    cargo install s3s-fs --version "$s3s_version" --features binary --locked --root "$cargo_root"
fi
KEYBAG_S3S_FS="$cargo_bin/s3s-fs"
export KEYBAG_S3S_FS

# PostgreSQL (Debian's package): the service tests make their own clusters with initdb, as
# the unprivileged `postgres` account when run as root, on free ports of 127.0.0.1, and stop
# them (crates/server/tests/common/pg.rs). The package's own cluster is not used.
pg_bin_dir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}
if [ -z "$(pg_bin_dir)" ] || [ ! -x "$(pg_bin_dir)/initdb" ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
KEYBAG_PG_BIN="$(pg_bin_dir)"
export KEYBAG_PG_BIN
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "test.sh: running as root, but there is no postgres account to run PostgreSQL as" >&2
    exit 1
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
