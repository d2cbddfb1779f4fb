"""Helpers shared by the third-party test scripts (run from their own venvs)."""
import hashlib
import os


def read_password():
    """The test password: $KEYBAG_TEST_PASSWORD, or the file named by
    $KEYBAG_TEST_PASSWORD_FILE (one trailing newline stripped). Never argv."""
    pw = os.environ.get("KEYBAG_TEST_PASSWORD")
    if pw is not None:
        return pw
    path = os.environ.get("KEYBAG_TEST_PASSWORD_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            pw = f.read()
        return pw[:-1] if pw.endswith("\n") else pw
    raise RuntimeError("set KEYBAG_TEST_PASSWORD or KEYBAG_TEST_PASSWORD_FILE")


def sha256_file(path):
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
