#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! The fuzz targets of keybag, one function per target.
//!
//! Each function feeds arbitrary bytes to a real parser of the workspace and asserts the
//! invariants that parser documents (round trips, agreement with an independent reading).
//! It panics only when such an invariant is violated: a parser error on hostile input is
//! the expected outcome, not a finding. The cargo-fuzz project in `fuzz/` calls these
//! functions from thin `fuzz_target!`s, and `tests/replay.rs` runs every committed corpus
//! and regression input through them on the stable toolchain.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use dataprotection::{cbc, gcm, wrap, DeviceKey, Key256, Keybag, Passkey, UnlockedKeybag};
use mobilebackup::keychain::{self, der, item, DerValue, Item, ItemState};
use mobilebackup::manifestdb::{self, Row};
use mobilebackup::plists::{InfoPlist, ManifestPlist, StatusPlist};
use mobilebackup::{bplist_guard as guard, layout, mbfile, Record};

/// A fuzz target: takes any bytes, panics only on a violated invariant.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("keybag_tlv", keybag_tlv),
    ("bplist_guard", bplist_guard),
    ("top_plists", top_plists),
    ("mbfile", mbfile),
    ("keychain_item", keychain_item),
    ("keychain_plist", keychain_plist),
    ("der", der),
    ("manifest_db", manifest_db),
];

/// `BackupKeyBag` of the `enc-small-public` fixture, unlocked once with its published passkey
/// (no KDF run): real class keys for the keychain targets.
pub mod fixture {
    use super::*;

    /// The fixture's `Manifest.plist`, which holds its keybag.
    pub const MANIFEST_PLIST: &[u8] =
        include_bytes!("../../../testdata/enc-small-public/Manifest.plist");
    /// Its passkey (`testdata/enc-small-public.README.md`).
    pub const PASSKEY_HEX: &str =
        "44a316ca4293d559aa3a068ebb22105607824ea61d611baf62cd3e83c0c796c7";
    /// Its device key 0x835.
    pub const DEVICE_KEY_HEX: &str = "793b52fd8ca0b58f37cfdde966237ceb";
    /// Its keybag UUID, as the keychain's `keybag-uuid`.
    pub const KEYBAG_UUID: &str = "75ce1f86-b7cf-43e6-82ca-5867ce25a9ca";

    /// The fixture keybag.
    pub fn keybag() -> &'static Keybag {
        static KB: OnceLock<Keybag> = OnceLock::new();
        KB.get_or_init(|| {
            let d =
                mobilebackup::plists::dict_from_bytes(Path::new("Manifest.plist"), MANIFEST_PLIST)
                    .expect("the fixture's Manifest.plist");
            let m = ManifestPlist::from_dict(Path::new("Manifest.plist"), d).expect("fixture");
            Keybag::parse(&m.keybag.expect("BackupKeyBag")).expect("the fixture keybag")
        })
    }

    /// The fixture's class keys: with the device key, all of 1–11; without it, 5 and 9–11
    /// stay sealed.
    pub fn keys(with_device_key: bool) -> &'static UnlockedKeybag {
        static WITH: OnceLock<UnlockedKeybag> = OnceLock::new();
        static WITHOUT: OnceLock<UnlockedKeybag> = OnceLock::new();
        let unlock = |dk: Option<&DeviceKey>| {
            let passkey = Passkey::from_hex(PASSKEY_HEX).expect("hex");
            keybag()
                .unlock(&passkey, dk)
                .expect("the published passkey")
        };
        if with_device_key {
            WITH.get_or_init(|| unlock(Some(&DeviceKey::from_hex(DEVICE_KEY_HEX).expect("hex"))))
        } else {
            WITHOUT.get_or_init(|| unlock(None))
        }
    }
}

// ------------------------------------------------------------------ keybag_tlv

/// `Keybag::parse` on any bytes. When it parses: `to_bytes` parses back to the same keybag
/// and is a fixed point of encode ∘ parse; the accessors and `unlock` (with a fixed passkey
/// and device key, so no KDF runs) do not panic.
pub fn keybag_tlv(data: &[u8]) {
    let Ok(kb) = Keybag::parse(data) else {
        return;
    };
    let bytes = kb.to_bytes();
    let again = Keybag::parse(&bytes).expect("to_bytes of a parsed keybag parses");
    assert_eq!(again, kb, "parse(to_bytes(kb)) == kb");
    assert_eq!(again.to_bytes(), bytes, "to_bytes is stable");
    let _ = kb.kind();
    if let Some(u) = kb.uuid_string() {
        assert_eq!(u.len(), 36);
    }
    let _ = kb.kdf_params();
    let passkey = Passkey::from_bytes([0x42; 32]);
    let device = DeviceKey::from_bytes([0x24; 16]);
    if let Ok(unlocked) = kb.unlock(&passkey, Some(&device)) {
        for class in unlocked.available().collect::<Vec<_>>() {
            assert!(unlocked.key(class).is_ok());
        }
        let _ = unlocked.sealed().count();
    }
}

// ------------------------------------------------------------------ bplist_guard

/// `bplist_guard::check` on any bytes. What the guard lets through, the `plist` crate's tree
/// builder must handle without hanging or exhausting the stack; a tree it builds, written back
/// by the same crate's binary writer (as keybag's writers do), passes the guard again and
/// reads back to the same tree.
pub fn bplist_guard(data: &[u8]) {
    if guard::check(data).is_err() {
        return;
    }
    let Ok(value) = plist::Value::from_reader(Cursor::new(data)) else {
        return;
    };
    rewrite_and_compare(&value);
}

/// Writes `value` as a binary plist; the guard must accept it and it must read back equal.
fn rewrite_and_compare(value: &plist::Value) {
    let mut out = Vec::new();
    value
        .to_writer_binary(&mut out)
        .expect("the plist crate writes what it read");
    if let Err(e) = guard::check(&out) {
        panic!("the guard refuses a binary plist written from an accepted one: {e}");
    }
    let back = plist::Value::from_reader(Cursor::new(&out)).expect("written plist reads back");
    assert!(
        same_plist(value, &back),
        "binary rewrite changed the tree:\n{value:?}\n{back:?}"
    );
}

/// Equality of plist trees where a binary round trip is exact: reals by bit pattern (NaN
/// included), dates to the microsecond (binary dates are f64 seconds).
fn same_plist(a: &plist::Value, b: &plist::Value) -> bool {
    use plist::Value as V;
    match (a, b) {
        (V::Real(x), V::Real(y)) => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
        (V::Date(x), V::Date(y)) => {
            let (x, y) = (
                std::time::SystemTime::from(*x),
                std::time::SystemTime::from(*y),
            );
            let d = x.duration_since(y).or_else(|_| y.duration_since(x));
            d.is_ok_and(|d| d.as_micros() < 1)
        }
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_plist(p, q))
        }
        (V::Dictionary(x), V::Dictionary(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|((k, p), (l, q))| k == l && same_plist(p, q))
        }
        _ => a == b,
    }
}

// ------------------------------------------------------------------ top_plists

/// `plists::dict_from_bytes` (the bplist guard, then the `plist` crate) on any bytes, then
/// `ManifestPlist`, `InfoPlist` and `StatusPlist` of the dictionary, and `Keybag::parse` of
/// its `BackupKeyBag` as `Backup::open` does. The dictionary written back as a binary plist
/// reads back to the same fields.
pub fn top_plists(data: &[u8]) {
    let path = Path::new("Manifest.plist");
    let Ok(dict) = mobilebackup::plists::dict_from_bytes(path, data) else {
        return;
    };
    let manifest = ManifestPlist::from_dict(path, dict.clone());
    let info = InfoPlist::from_dict(dict.clone());
    let status = StatusPlist::from_dict(&dict);
    if let Ok(m) = &manifest {
        if let Some(kb) = &m.keybag {
            keybag_tlv(kb);
        }
    }

    let mut out = Vec::new();
    plist::Value::Dictionary(dict.clone())
        .to_writer_binary(&mut out)
        .expect("the plist crate writes what it read");
    let back = mobilebackup::plists::dict_from_bytes(path, &out)
        .expect("a dictionary written as a binary plist reads back");
    let manifest2 = ManifestPlist::from_dict(path, back.clone());
    match (&manifest, &manifest2) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.keybag, b.keybag);
            assert_eq!(a.manifest_key, b.manifest_key);
            assert_eq!(a.is_encrypted, b.is_encrypted);
            assert_eq!(a.was_passcode_set, b.was_passcode_set);
            assert_eq!(a.version, b.version);
            assert_eq!(a.device, b.device);
            assert_eq!(a.applications, b.applications);
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("ManifestPlist differs after a rewrite: {a:?} / {b:?}"),
    }
    let info2 = InfoPlist::from_dict(back.clone());
    assert_eq!(info.device, info2.device);
    assert_eq!(info.installed_applications, info2.installed_applications);
    let status2 = StatusPlist::from_dict(&back);
    assert_eq!(status.snapshot_state, status2.snapshot_state);
    assert_eq!(status.is_full_backup, status2.is_full_backup);
    assert_eq!(status.version, status2.version);
}

// ------------------------------------------------------------------ mbfile

/// `mbfile::decode` on any bytes. When it decodes: `encode` gives a blob that decodes to the
/// same `MbFile` and re-encodes to the same bytes, and that the bplist guard and the `plist`
/// crate (an independent reader) both accept.
pub fn mbfile(data: &[u8]) {
    let Ok(f) = mbfile::decode(data) else {
        return;
    };
    let bytes = mbfile::encode(&f);
    let again = mbfile::decode(&bytes).expect("encode's output decodes");
    assert_eq!(again, f, "decode(encode(f)) == f");
    assert_eq!(mbfile::encode(&again), bytes, "encode is stable");
    if let Err(e) = guard::check(&bytes) {
        panic!("the guard refuses encode's output: {e}");
    }
    let v = plist::Value::from_reader(Cursor::new(&bytes))
        .expect("encode's output is a plist to the plist crate");
    let rp = v
        .as_dictionary()
        .and_then(|d| d.get("$objects"))
        .and_then(plist::Value::as_array)
        .and_then(|o| o.get(2))
        .and_then(plist::Value::as_string);
    assert_eq!(
        rp,
        Some(f.relative_path.as_str()),
        "$objects[2] is RelativePath"
    );
}

// ------------------------------------------------------------------ der

/// `keychain::der::decode` on any bytes. When it decodes: `encode` is as long as
/// `encoded_len` says, reproduces the input exactly when decoding gave no warning (the
/// codec's documented promise), and decodes back, without warnings, to the same value. Text
/// input also goes through `DerDate::parse_generalized`, whose dates print back to
/// themselves.
pub fn der(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(d) = keychain::DerDate::parse_generalized(text) {
            let again = keychain::DerDate::parse_generalized(&d.to_generalized_time())
                .expect("a printed date parses");
            assert_eq!(again, d);
            let _ = d.to_iso8601();
        }
    }
    let Ok((value, warnings)) = der::decode(data) else {
        return;
    };
    let bytes = der::encode(&value);
    assert_eq!(
        bytes.len(),
        der::encoded_len(&value),
        "encoded_len is exact"
    );
    if warnings.is_empty() {
        assert_eq!(bytes, data, "no warning, so encode(decode(x)) == x");
    }
    let (again, w) = der::decode(&bytes).expect("canonical encoding decodes");
    assert!(
        w.is_empty(),
        "canonical encoding decodes without warnings: {w:?}"
    );
    assert_eq!(again, value, "decode(encode(v)) == v");
    walk_der(&value);
}

/// Calls the accessors of every value in the tree.
fn walk_der(v: &DerValue) {
    let _ = (v.type_name(), v.as_str(), v.as_data(), v.as_i64());
    if let Some(d) = v.as_date() {
        let _ = (d.to_iso8601(), d.to_string(), d.unix_seconds(), d.nanos());
    }
    match v {
        DerValue::Array(a) => a.iter().for_each(walk_der),
        DerValue::Dict(d) => d.values().for_each(walk_der),
        _ => {}
    }
}

// ------------------------------------------------------------------ keychain items

/// One keychain item blob. The first byte picks the mode, the rest is input:
///
/// * `mode & 7 == 0`: the bytes are a blob, opened with the fixture's class keys;
/// * `mode & 7 == 1`: the same as an item of an unencrypted backup (never opens);
/// * otherwise the bytes after a class byte are the **plaintext** of a blob this function
///   seals around it (version 0/1 CBC, 2/3 GCM, static-IV flag from bit 6) under the
///   fixture's real class key, so the fuzzer reaches the decoders behind the cryptography.
///   The outcome must then be what the header and plaintext dictate: classes outside 6–12
///   and classes without a key never open; versions 0/1 open exactly when the CBC plaintext
///   has valid PKCS7 padding, with the unpadded bytes as `v_Data`; version 3 opens exactly
///   when the plaintext is a DER dictionary, with its entries as attributes; version 2 opens
///   exactly when the guard passes and the plaintext is a plist dictionary.
///
/// Bit 7 of the mode unlocks the fixture without its device key (classes 5, 9–11 sealed).
/// In every mode the item's accessors and summary must not panic, and only an open item has
/// attributes.
pub fn keychain_item(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = fixture::keys(mode & 0x80 == 0);
    let table = item::TABLES[usize::from(mode >> 3) & 3];
    match mode & 7 {
        0 => check_item(&item::open(table, rest, Some(keys))),
        1 => {
            let it = item::open(table, rest, None);
            assert!(
                it.state != ItemState::Open,
                "an unencrypted backup's item opened"
            );
            check_item(&it);
        }
        m => {
            let Some((&class_byte, plain)) = rest.split_first() else {
                return;
            };
            let version = u32::from(m) % 4;
            let static_iv = mode & 0x40 != 0 && version >= 2;
            // Low nibble: the class; high nibble: "generation" bits the reader masks off.
            let class_raw = u32::from(class_byte & 0x0F) | (u32::from(class_byte >> 4) << 28);
            let class = dataprotection::ProtectionClass::masked(class_raw);
            let class_key = keys.key(class).ok();
            let (blob, cbc_plain) = seal(version, static_iv, class_raw, class_key, plain);
            let it = item::open(table, &blob, Some(keys));
            check_item(&it);
            if blob.len() > item::MAX_ITEM_BYTES {
                assert!(it.state != ItemState::Open, "an item over the cap opened");
                return;
            }
            assert_eq!(it.version, Some(version));
            assert_eq!(it.class, Some(class));
            let expected: Option<BTreeMap<String, DerValue>> =
                if class_key.is_none() || !(6..=12).contains(&class.0) {
                    None
                } else {
                    match version {
                        0 | 1 => unpad(&cbc_plain).map(|s| {
                            BTreeMap::from([("v_Data".to_string(), DerValue::data(s.to_vec()))])
                        }),
                        3 => match der::decode(plain) {
                            Ok((DerValue::Dict(d), _)) => Some(d),
                            _ => None,
                        },
                        _ => {
                            let is_dict = guard::check(plain).is_ok()
                                && matches!(
                                    plist::Value::from_reader(Cursor::new(plain)),
                                    Ok(plist::Value::Dictionary(_))
                                );
                            if is_dict {
                                Some(it.attributes.clone())
                            } else {
                                None
                            }
                        }
                    }
                };
            match expected {
                Some(attrs) => {
                    assert_eq!(it.state, ItemState::Open, "{:?}", it.state.reason());
                    assert_eq!(it.attributes, attrs);
                }
                None => assert!(it.state != ItemState::Open, "opened: {it:?}"),
            }
        }
    }
}

/// A blob of `version` around `plain` under `class_key` (a fixed bulk key; an unwrappable
/// wrapped key when the class has none). Returns it with the CBC plaintext used (whole
/// blocks of `plain`) for versions 0 and 1.
fn seal(
    version: u32,
    static_iv: bool,
    class_raw: u32,
    class_key: Option<&Key256>,
    plain: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let bulk = Key256::from_bytes([0x5A; 32]);
    let wrapped = match class_key {
        Some(k) => wrap::wrap_key(k, &bulk),
        None => [0xA5; wrap::WRAPPED_LEN],
    };
    let raw_version = version | if static_iv { item::STATIC_IV_FLAG } else { 0 };
    let mut blob = Vec::new();
    blob.extend_from_slice(&raw_version.to_le_bytes());
    blob.extend_from_slice(&class_raw.to_le_bytes());
    if version != 0 {
        blob.extend_from_slice(&(wrap::WRAPPED_LEN as u32).to_le_bytes());
    }
    let header_len = blob.len();
    blob.extend_from_slice(&wrapped);
    if version < 2 {
        let mut body = plain[..plain.len() / cbc::BLOCK * cbc::BLOCK].to_vec();
        let cbc_plain = body.clone();
        cbc::Encryptor::new(&bulk)
            .encrypt(&mut body)
            .expect("whole blocks");
        blob.extend_from_slice(&body);
        return (blob, cbc_plain);
    }
    let (iv, aad): (&[u8], Vec<u8>) = if static_iv {
        (&gcm::KEYCHAIN_STATIC_IV, blob[..header_len].to_vec())
    } else {
        (&[], Vec::new())
    };
    let (ct, tag) = gcm::encrypt(&bulk, iv, &aad, plain).expect("small plaintext");
    blob.extend_from_slice(&ct);
    blob.extend_from_slice(&tag);
    (blob, Vec::new())
}

/// PKCS7-unpadded bytes of a CBC plaintext, as an independent check of the reader's.
fn unpad(p: &[u8]) -> Option<&[u8]> {
    let n = usize::from(*p.last()?);
    if n == 0 || n > 16 || n > p.len() || p[p.len() - n..].iter().any(|&b| usize::from(b) != n) {
        return None;
    }
    Some(&p[..p.len() - n])
}

/// Every accessor of an item; only open items carry attributes.
fn check_item(it: &Item) {
    if it.state != ItemState::Open {
        assert!(it.attributes.is_empty(), "a closed item has attributes");
    }
    let _ = (it.state.name(), it.state.reason(), it.kind_name());
    let _ = (it.access_group(), it.service(), it.server(), it.account());
    let _ = (it.label(), it.path(), it.pdmn(), it.secret());
    let _ = (it.created(), it.modified(), it.this_device_only());
    let _ = (it.protocol(), it.port(), it.url());
    let _ = it.summary();
    it.attributes.values().for_each(walk_der);
}

/// `keychain::parse` of a whole `keychain-backup.plist`, once with the fixture's class keys
/// and UUID and once as an unencrypted backup's. Both readings list the same items in the
/// same tables (the four known ones), the unencrypted one opens none, counts add up, unknown
/// top-level keys come sorted, and every item's accessors work.
pub fn keychain_plist(data: &[u8]) {
    let Ok(kc) = keychain::parse(data, Some(fixture::keys(true)), Some(fixture::KEYBAG_UUID))
    else {
        assert!(
            keychain::parse(data, None, None).is_err(),
            "bytes that fail with keys parse without"
        );
        return;
    };
    let plain =
        keychain::parse(data, None, None).expect("bytes that parse with keys parse without");
    assert_eq!(kc.items.len(), plain.items.len());
    for (a, b) in kc.items.iter().zip(&plain.items) {
        assert_eq!(a.table, b.table);
        assert!(item::TABLES.contains(&a.table.as_str()));
        assert!(
            b.state != ItemState::Open,
            "an unencrypted backup's item opened"
        );
        check_item(a);
        check_item(b);
    }
    let (open, sealed, damaged) = kc.counts();
    assert_eq!(open + sealed + damaged, kc.items.len());
    let _ = kc.wrong_device_key();
    assert!(kc.unknown_keys.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(kc.keybag_uuid_matches.is_some(), kc.keybag_uuid.is_some());
}

// ------------------------------------------------------------------ manifest_db

/// `catalog_from_db_bytes` (bytes of a plain `Manifest.db` → catalog, with its schema checks
/// and SQLite fences) on any bytes. When it loads: a record without a problem has a valid
/// fileID, a safe domain and path, an MBFile whose `RelativePath` is the row's, and a unique
/// fileID; every decoded MBFile is what its raw `file` column decodes to. The problem-free
/// rows written again by keybag's own `manifestdb::build` load back to the same records.
pub fn manifest_db(data: &[u8]) {
    let Ok(cat) = mobilebackup::catalog_from_db_bytes(data) else {
        return;
    };
    let mut good: Vec<&Record> = Vec::new();
    for rec in &cat.records {
        let _ = (rec.kind().name(), rec.display_path(), rec.size());
        let _ = rec.protection_class();
        if let Some(f) = &rec.file {
            assert_eq!(mbfile::decode(&rec.raw).ok().as_ref(), Some(f));
        }
        if rec.problem.is_none() {
            let f = rec
                .file
                .as_ref()
                .expect("a problem-free record has its MBFile");
            assert_eq!(f.relative_path, rec.relative_path);
            assert!(layout::is_valid_file_id(&rec.file_id));
            assert!(layout::check_domain(&rec.domain).is_ok());
            assert!(layout::check_relative_path(&rec.relative_path).is_ok());
            good.push(rec);
        }
    }
    good.sort_by(|a, b| a.file_id.cmp(&b.file_id));
    assert!(
        good.windows(2).all(|w| w[0].file_id != w[1].file_id),
        "two problem-free records share a fileID"
    );
    let rows: Vec<Row> = good
        .iter()
        .map(|r| Row {
            file_id: r.file_id.clone(),
            domain: r.domain.clone(),
            relative_path: r.relative_path.clone(),
            flags: r.flags,
            file: r.raw.clone(),
        })
        .collect();
    let db = manifestdb::build(&rows).expect("keybag's writer builds a Manifest.db of them");
    let again = mobilebackup::catalog_from_db_bytes(&db).expect("keybag's own Manifest.db loads");
    assert!(again.skipped.is_empty());
    let mut back: Vec<&Record> = again.records.iter().collect();
    back.sort_by(|a, b| a.file_id.cmp(&b.file_id));
    assert_eq!(back.len(), good.len());
    for (a, b) in good.iter().zip(&back) {
        assert_eq!(b.problem, None, "{}", b.display_path());
        assert_eq!(
            (
                &a.file_id,
                &a.domain,
                &a.relative_path,
                a.flags,
                &a.raw,
                &a.file
            ),
            (
                &b.file_id,
                &b.domain,
                &b.relative_path,
                b.flags,
                &b.raw,
                &b.file
            )
        );
    }
}
