#!/usr/bin/env python3
"""Extract every regular file of an encrypted iOS backup with iphone_backup_decrypt.

Usage (with the ibd venv from scripts/pyenv.sh):
    KEYBAG_TEST_PASSWORD=... target/py/ibd/bin/python tests/py/ibd_extract.py BACKUP_DIR OUT_DIR
The password comes from $KEYBAG_TEST_PASSWORD, or from the file named by
$KEYBAG_TEST_PASSWORD_FILE (one trailing newline is stripped). Never from argv.

Every Manifest.db row with flags = 1 whose blob exists is decrypted to
OUT_DIR/<fileID[:2]>/<fileID> (the backup's own layout, so any path is safe).
Stdout gets one JSON object:
    {"files":   {"<domain>/<relativePath>": "<sha256 hex of plaintext>", ...},
     "file_ids": {"<domain>/<relativePath>": "<fileID>", ...},
     "missing": ["<domain>/<relativePath>", ...],   # flags=1 rows with no blob
     "count": <number of files extracted>}
Library chatter (e.g. its "INFO: decrypted N bytes" prints) goes to stderr.
Exit: 0 ok, 5 wrong password (IncorrectPassphraseError), 1 any other error.
"""
import contextlib
import json
import os
import sys

sys.dont_write_bytecode = True  # keep tests/py free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import read_password, sha256_file  # noqa: E402


def run(backup, out):
    from iphone_backup_decrypt import EncryptedBackup

    eb = EncryptedBackup(backup_directory=backup, passphrase=read_password())
    eb.test_decryption()  # unlocks keybag + Manifest.db; raises on a wrong password
    files, ids, missing = {}, {}, []

    def pick(*, file_id, domain, relative_path, **_kw):
        key = f"{domain}/{relative_path}"
        if not os.path.isfile(os.path.join(backup, file_id[:2], file_id)):
            missing.append(key)
            return False
        dest = os.path.join(out, file_id[:2], file_id)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        ids[key] = file_id
        return dest

    n = eb.extract_files(relative_paths_like="%", domain_like="%", output_folder=out,
                         filter_callback=pick)
    for key, fid in ids.items():
        files[key] = sha256_file(os.path.join(out, fid[:2], fid))
    if n != len(ids):
        raise RuntimeError(f"extract_files reported {n} files, expected {len(ids)}")
    return {"files": files, "file_ids": ids, "missing": sorted(missing), "count": n}


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 1
    backup, out = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    os.makedirs(out, exist_ok=True)
    try:
        from iphone_backup_decrypt import IncorrectPassphraseError
        with contextlib.redirect_stdout(sys.stderr):
            result = run(backup, out)
    except IncorrectPassphraseError as e:
        print(f"ibd_extract: wrong password: {e}", file=sys.stderr)
        return 5
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001
        print(f"ibd_extract: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=1, sort_keys=True, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
