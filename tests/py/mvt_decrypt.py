#!/usr/bin/env python3
"""Decrypt an encrypted iOS backup with mvt (`mvt-ios decrypt-backup`) and verify it.

Usage (with the mvt venv from scripts/pyenv.sh):
    KEYBAG_TEST_PASSWORD=... target/py/mvt/bin/python tests/py/mvt_decrypt.py ENCRYPTED_BACKUP OUT_DIR
The password comes from $KEYBAG_TEST_PASSWORD, or from the file named by
$KEYBAG_TEST_PASSWORD_FILE (one trailing newline stripped), and is handed to mvt
only through its MVT_IOS_BACKUP_PASSWORD environment variable (never argv).
OUT_DIR must not exist yet or be empty.

mvt writes OUT_DIR/Manifest.db (plain SQLite), OUT_DIR/<fileID[:2]>/<fileID>
for every flags=1 row whose blob exists, and copies the top-level *.plist.
(The backup folder's name does not have to be the UDID.) This script then checks
that Manifest.db is plain SQLite with >0 Files rows and that every flags=1 row
whose encrypted blob exists was written, and prints one JSON object:
    {"rows": N, "by_flags": {...}, "files_written": W, "missing": [...],
     "files": {"<domain>/<relativePath>": "<sha256 of decrypted file>"},
     "plists": [...], "mvt_exit": rc}
Exit: 0 ok, 5 wrong password, 2 mvt failed / output incomplete, 1 usage or
internal error. Runs offline (same settings as mvt_check.py).
"""
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import shutil

sys.dont_write_bytecode = True  # keep tests/py free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import read_password, sha256_file  # noqa: E402
from mvt_check import mvt_cmd, mvt_env  # noqa: E402


def verify(backup, out):
    db = os.path.join(out, "Manifest.db")
    if not os.path.isfile(db):
        return None, ["no Manifest.db in OUT_DIR"]
    with open(db, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            return None, ["OUT_DIR/Manifest.db is not a plain SQLite database"]
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT fileID, domain, relativePath, flags FROM Files").fetchall()
    finally:
        conn.close()
    by_flags, files, missing, reasons = {}, {}, [], []
    for fid, domain, rel, flags in rows:
        by_flags[str(flags)] = by_flags.get(str(flags), 0) + 1
        if flags != 1:
            continue
        key = f"{domain}/{rel}"
        src = os.path.join(backup, fid[:2], fid)
        dst = os.path.join(out, fid[:2], fid)
        if not os.path.isfile(src):
            missing.append(key)
        elif os.path.isfile(dst):
            files[key] = sha256_file(dst)
        else:
            reasons.append(f"mvt did not write {key} ({fid})")
    if not rows:
        reasons.append("decrypted Manifest.db has 0 Files rows")
    summary = {"rows": len(rows), "by_flags": by_flags, "files_written": len(files),
               "missing": sorted(missing), "files": files,
               "plists": sorted(n for n in os.listdir(out) if n.endswith(".plist"))}
    return summary, reasons


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 1
    backup, out = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    if os.path.isdir(out) and os.listdir(out):
        print(f"mvt_decrypt: OUT_DIR {out} is not empty", file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix="keybag-mvt-decrypt-")
    try:
        env = mvt_env(tmp)
        env["MVT_IOS_BACKUP_PASSWORD"] = read_password()
        proc = subprocess.run(mvt_cmd("decrypt-backup", "-d", out, backup), env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=600)
        console = proc.stdout.decode("utf-8", "replace")
        flat = " ".join(console.split())
        if "Password is probably wrong" in flat:
            print("mvt_decrypt: wrong password (mvt: 'Password is probably wrong')",
                  file=sys.stderr)
            return 5
        summary, reasons = verify(backup, out)
        if proc.returncode != 0:
            reasons.insert(0, f"mvt-ios exited {proc.returncode}")
        if "Failed to decrypt" in flat:
            reasons.append("mvt logged 'Failed to decrypt'")
    except Exception as e:  # noqa: BLE001
        print(f"mvt_decrypt: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if summary is not None:
        summary["mvt_exit"] = proc.returncode
        print(json.dumps(summary, indent=1, sort_keys=True, ensure_ascii=False))
    if reasons:
        sys.stderr.write(console[-4000:])
        for r in reasons:
            print(f"mvt_decrypt: FAIL: {r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
