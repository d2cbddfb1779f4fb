#!/usr/bin/env python3
"""An independent decoder of the keychain of an encrypted iOS backup.

It shares no code with keybag: pure Python plus pycryptodome's raw AES (ECB/CBC only). It
does everything itself from the spec (ios-backup-format.md §3-§8): the keybag TLV, the
double PBKDF2 (iteration counts read from the keybag), RFC 3394 unwrap, the device-key
layer, Manifest.db decryption, the MBFile keyed archive, the keychain plist, AES-GCM with
an empty IV (GHASH written here; pycryptodome refuses empty nonces) and Apple's DER plist.

Usage (with the ibd venv from scripts/pyenv.sh, which has pycryptodome):
    KEYBAG_TEST_PASSWORD=... [KEYBAG_TEST_DEVICE_KEY=hex] python tests/py/kc_decode.py BACKUP
Secrets come from the environment only, never from argv.

Stdout: one JSON object
    {"keybag_uuid": "...", "items": [
        {"table": "genp", "rowid": 3, "persistent_ref_hex": "...", "version": 3, "class": 6,
         "state": "open" | "sealed" | "damaged", "reason": "...",
         "attributes": {"acct": "...", "port": 993, "cdat": "2024-03-19T14:53:44Z",
                        "UUID": "...", "v_Data": {"hex": "..."}, ...},
         "der_sha256": "...", "blob_sha256": "..."}, ...]}
Attribute values: strings and integers as JSON, data as {"hex": ...}, dates as ISO 8601
strings, booleans, null, lists, objects. Exit: 0 ok, 5 wrong password, 1 other errors.
"""
import hashlib
import json
import os
import plistlib
import sqlite3
import struct
import sys
import tempfile

from Crypto.Cipher import AES

KEYCHAIN = ("KeychainDomain", "keychain-backup.plist")
TABLES = ("genp", "inet", "cert", "keys")


# ------------------------------------------------------------------ primitives

def aes_ecb_encrypt(key, block):
    return AES.new(key, AES.MODE_ECB).encrypt(block)


def cbc_decrypt(key, data, iv=b"\0" * 16):
    return AES.new(key, AES.MODE_CBC, iv).decrypt(data)


def unpad(data):
    n = data[-1]
    if n < 1 or n > 16 or data[-n:] != bytes([n]) * n:
        raise ValueError("bad PKCS7 padding")
    return data[:-n]


def kw_unwrap(kek, wrapped):
    """RFC 3394 key unwrap; None on an integrity failure."""
    n = len(wrapped) // 8 - 1
    a = wrapped[:8]
    r = [wrapped[8 * (i + 1):8 * (i + 2)] for i in range(n)]
    ecb = AES.new(kek, AES.MODE_ECB)
    for j in range(5, -1, -1):
        for i in range(n, 0, -1):
            t = n * j + i
            a_x = (int.from_bytes(a, "big") ^ t).to_bytes(8, "big")
            b = ecb.decrypt(a_x + r[i - 1])
            a, r[i - 1] = b[:8], b[8:]
    if a != b"\xa6" * 8:
        return None
    return b"".join(r)


def gf_mult(x, y):
    """Multiplication in GF(2^128) with GCM's bit order (NIST SP 800-38D, Algorithm 1)."""
    r = 0xE1 << 120
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ r if v & 1 else v >> 1
    return z


def ghash(h, data):
    h = int.from_bytes(h, "big")
    y = 0
    for i in range(0, len(data), 16):
        block = data[i:i + 16].ljust(16, b"\0")
        y = gf_mult(y ^ int.from_bytes(block, "big"), h)
    return y.to_bytes(16, "big")


def pad16(b):
    return b + b"\0" * (-len(b) % 16)


def gcm_decrypt(key, iv, aad, ct, tag):
    """AES-GCM with any IV length (the empty one included); None on a tag mismatch."""
    h = aes_ecb_encrypt(key, b"\0" * 16)
    if len(iv) == 12:
        j0 = iv + b"\0\0\0\1"
    else:
        j0 = ghash(h, pad16(iv) + b"\0" * 8 + struct.pack(">Q", len(iv) * 8))
    s = ghash(h, pad16(aad) + pad16(ct) + struct.pack(">QQ", len(aad) * 8, len(ct) * 8))
    want = bytes(a ^ b for a, b in zip(s, aes_ecb_encrypt(key, j0)))
    if want != tag:
        return None
    out = bytearray()
    ctr = int.from_bytes(j0[12:], "big")
    for i in range(0, len(ct), 16):
        ctr = (ctr + 1) & 0xFFFFFFFF
        ks = aes_ecb_encrypt(key, j0[:12] + ctr.to_bytes(4, "big"))
        out += bytes(a ^ b for a, b in zip(ct[i:i + 16], ks))
    return bytes(out)


# ------------------------------------------------------------------ DER plist

def der_read(buf, pos):
    tag = buf[pos]
    first = buf[pos + 1]
    p = pos + 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        length = int.from_bytes(buf[p:p + n], "big")
        p += n
    if p + length > len(buf):
        raise ValueError("DER length runs past the end")
    return tag, p, p + length


def der_value(buf, pos):
    tag, s, e = der_read(buf, pos)
    c = buf[s:e]
    if tag == 0x0C:
        return c.decode("utf-8"), e
    if tag == 0x04:
        return {"hex": c.hex()}, e
    if tag == 0x02:
        return int.from_bytes(c, "big", signed=True), e
    if tag == 0x01:
        return c != b"\0", e
    if tag == 0x05:
        return None, e
    if tag == 0x18:
        t = c.decode("ascii")
        return f"{t[0:4]}-{t[4:6]}-{t[6:8]}T{t[8:10]}:{t[10:12]}:{t[12:]}", e
    if tag == 0x30:
        out, p = [], s
        while p < e:
            v, p = der_value(buf, p)
            out.append(v)
        return out, e
    if tag == 0x31:
        out, p = {}, s
        while p < e:
            t2, s2, e2 = der_read(buf, p)
            if t2 != 0x30:
                raise ValueError("dictionary entry is not a SEQUENCE")
            k, q = der_value(buf, s2)
            v, q = der_value(buf, q)
            if k in out:
                raise ValueError("duplicate key")
            out[k] = v
            p = e2
        return out, e
    raise ValueError(f"unsupported DER tag {tag:#x}")


# ------------------------------------------------------------------ keybag and backup

def parse_keybag(data):
    header, classes, cur = {}, [], None
    p = 0
    while p + 8 <= len(data):
        tag = data[p:p + 4].decode("ascii")
        n = struct.unpack(">I", data[p + 4:p + 8])[0]
        v = data[p + 8:p + 8 + n]
        p += 8 + n
        val = struct.unpack(">I", v)[0] if n == 4 else v
        if tag == "UUID" and "UUID" not in header:
            header["UUID"] = v
            continue
        if tag == "WRAP" and cur is None and "WRAP" not in header:
            header["WRAP"] = val
            continue
        if tag == "UUID":
            cur = {"UUID": v}
            classes.append(cur)
        elif cur is not None:
            cur[tag] = val
        else:
            header[tag] = val
    return header, classes


def unlock(keybag, password, device_key):
    header, classes = parse_keybag(keybag)
    k1 = hashlib.pbkdf2_hmac("sha256", password, header["DPSL"], header["DPIC"], 32)
    passkey = hashlib.pbkdf2_hmac("sha1", k1, header["SALT"], header["ITER"], 32)
    keys, sealed = {}, set()
    for c in classes:
        clas = c["CLAS"] & 0xF
        k = c["WPKY"]
        if c["WRAP"] & 2:
            k = kw_unwrap(passkey, k)
            if k is None:
                print("kc_decode: wrong password", file=sys.stderr)
                sys.exit(5)
        if c["WRAP"] & 1:
            if device_key is None:
                sealed.add(clas)
                continue
            k = AES.new(device_key, AES.MODE_CBC, b"\0" * 16).decrypt(k)
        keys[clas] = k
    uuid = header["UUID"].hex()
    uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}"
    return keys, sealed, uuid


def keychain_plist(root, keys):
    with open(os.path.join(root, "Manifest.plist"), "rb") as f:
        manifest = plistlib.load(f)
    mk = manifest["ManifestKey"]
    dbkey = kw_unwrap(keys[struct.unpack("<I", mk[:4])[0] & 0xF], mk[4:])
    with open(os.path.join(root, "Manifest.db"), "rb") as f:
        db = cbc_decrypt(dbkey, f.read())
    db = db[: len(db) // 4096 * 4096] if db[-1] == 16 and len(db) % 4096 == 16 else unpad(db)
    with tempfile.NamedTemporaryFile(suffix=".db") as tmp:
        tmp.write(db)
        tmp.flush()
        con = sqlite3.connect(tmp.name)
        row = con.execute(
            "SELECT fileID, file FROM Files WHERE domain = ? AND relativePath = ?", KEYCHAIN
        ).fetchone()
        con.close()
    if row is None:
        return None
    file_id, mbfile = row
    archive = plistlib.loads(mbfile)
    objs = archive["$objects"]
    top = objs[1]
    ek = objs[top["EncryptionKey"].data]
    ek = ek["NS.data"] if isinstance(ek, dict) else ek
    fkey = kw_unwrap(keys[struct.unpack("<I", ek[:4])[0] & 0xF], ek[4:])
    with open(os.path.join(root, file_id[:2], file_id), "rb") as f:
        return unpad(cbc_decrypt(fkey, f.read()))


def decode_item(table, entry, keys, sealed):
    blob = entry["v_Data"]
    ref = entry.get("v_PersistentRef", b"")
    out = {
        "table": table,
        "persistent_ref_hex": ref.hex(),
        "rowid": int.from_bytes(ref[4:], "big") if len(ref) == 12 else None,
        "blob_sha256": hashlib.sha256(blob).hexdigest(),
    }
    version, clas = struct.unpack("<II", blob[:8])
    version &= 0x7FFFFFFF
    clas &= 0xF
    out["version"], out["class"] = version, clas
    if version != 3:
        out["state"], out["reason"] = "damaged", f"version {version} not handled here"
        return out
    wlen = struct.unpack("<I", blob[8:12])[0]
    wrapped, ct, tag = blob[12:12 + wlen], blob[12 + wlen:-16], blob[-16:]
    if clas in sealed:
        out["state"], out["reason"] = "sealed", "needs the device key"
        return out
    if clas not in keys:
        out["state"], out["reason"] = "damaged", "no class key"
        return out
    bulk = kw_unwrap(keys[clas], wrapped)
    if bulk is None:
        out["state"], out["reason"] = "damaged", "bulk key does not unwrap"
        return out
    der = gcm_decrypt(bulk, b"", b"", ct, tag)
    if der is None:
        out["state"], out["reason"] = "damaged", "GCM tag mismatch"
        return out
    attrs, end = der_value(der, 0)
    if end != len(der):
        raise ValueError("trailing bytes after the DER dictionary")
    out["state"] = "open"
    out["attributes"] = attrs
    out["der_sha256"] = hashlib.sha256(der).hexdigest()
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: kc_decode.py BACKUP (password in KEYBAG_TEST_PASSWORD)")
    root = sys.argv[1]
    password = os.environ.get("KEYBAG_TEST_PASSWORD")
    if password is None:
        sys.exit("kc_decode: set KEYBAG_TEST_PASSWORD")
    dk = os.environ.get("KEYBAG_TEST_DEVICE_KEY")
    device_key = bytes.fromhex(dk) if dk else None
    with open(os.path.join(root, "Manifest.plist"), "rb") as f:
        keybag = plistlib.load(f)["BackupKeyBag"]
    keys, sealed, uuid = unlock(keybag, password.encode("utf-8"), device_key)
    plist_bytes = keychain_plist(root, keys)
    if plist_bytes is None:
        print(json.dumps({"keybag_uuid": None, "backup_keybag_uuid": uuid, "items": None}))
        return
    kc = plistlib.loads(plist_bytes)
    items = []
    for table in TABLES:
        for entry in kc.get(table, []):
            items.append(decode_item(table, entry, keys, sealed))
    print(json.dumps({
        "keybag_uuid": kc.get("keybag-uuid"),
        "backup_keybag_uuid": uuid,
        "top_level_keys": sorted(kc.keys()),
        "items": items,
    }, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
