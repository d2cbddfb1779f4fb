#!/usr/bin/env bash
# Create the Python venvs used by keybag's third-party-reader tests.
#
#   scripts/pyenv.sh            # from any cwd; idempotent
#
# Makes two separate venvs (mvt pins an older iphone_backup_decrypt):
#   ${CARGO_TARGET_DIR:-<repo>/target}/py/ibd  <- tests/py/requirements-ibd.txt
#   ${CARGO_TARGET_DIR:-<repo>/target}/py/mvt  <- tests/py/requirements-mvt.txt
# A venv is rebuilt only if its stamp (sha256 of the requirements file + the
# base interpreter version) changed, so a re-run is a no-op taking well under 1 s.
# Base interpreter: $KEYBAG_PYTHON, else python3. Output: the last two lines are
#   KEYBAG_PY_IBD=/abs/path/to/ibd/bin/python
#   KEYBAG_PY_MVT=/abs/path/to/mvt/bin/python
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac  # cargo: relative to cwd
pyroot="$target/py"
base_py="${KEYBAG_PYTHON:-python3}"

mkdir -p "$pyroot"

# Serialise concurrent callers (parallel cargo tests) on one lock.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$pyroot/.lock"
    flock 9
fi

die() { echo "pyenv.sh: error: $*" >&2; exit 1; }

command -v "$base_py" >/dev/null 2>&1 || die "no '$base_py' on PATH (set KEYBAG_PYTHON)"
if ! "$base_py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    # Debian's system python ships venv/ensurepip separately.
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "pyenv.sh: installing python3-venv via apt-get" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    fi
    "$base_py" -c 'import venv, ensurepip' || die "'$base_py' lacks venv/ensurepip"
fi
py_ver="$("$base_py" -c 'import sys; print(sys.version.split()[0])')"

hash_file() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
    else "$base_py" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
    fi
}

# ensure_venv NAME REQUIREMENTS_FILE IMPORT_CHECK
ensure_venv() {
    local name="$1" req="$2" check="$3"
    local dir="$pyroot/$name" stamp="$pyroot/$name/.keybag-stamp"
    [ -f "$req" ] || die "missing $req"
    local want
    want="$(hash_file "$req") python-$py_ver"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$dir/bin/python" ]; then
        return 0
    fi
    echo "pyenv.sh: building venv '$name' in $dir" >&2
    rm -rf "$dir"
    "$base_py" -m venv "$dir"
    local pip=("$dir/bin/python" -m pip --disable-pip-version-check --no-input -q)
    "${pip[@]}" install -r "$req" >&2 || die "pip install -r $req failed"
    "${pip[@]}" check >&2 || die "pip check failed for venv '$name'"
    "$dir/bin/python" -c "$check" >&2 || die "import check failed for venv '$name'"
    echo "$want" >"$stamp"
}

ensure_venv ibd "$repo/tests/py/requirements-ibd.txt" \
    'import Crypto.Cipher.AES, iphone_backup_decrypt; from iphone_backup_decrypt import EncryptedBackup, IncorrectPassphraseError'
ensure_venv mvt "$repo/tests/py/requirements-mvt.txt" \
    'import mvt.ios.cli, iphone_backup_decrypt'
[ -x "$pyroot/mvt/bin/mvt-ios" ] || die "mvt-ios entry point missing in $pyroot/mvt/bin"

echo "KEYBAG_PY_IBD=$pyroot/ibd/bin/python"
echo "KEYBAG_PY_MVT=$pyroot/mvt/bin/python"
