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
    ("vault_sealed", vault_sealed),
    ("vault_plain", vault_plain),
    ("vault_keys", vault_keys),
    ("server_requests", server_requests),
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

// ------------------------------------------------------------------ vault

/// A vault keyring with fixed keys (two epochs, 0 and 7; 7 seals new objects), so that
/// objects sealed by the seed generator open in every later run, and the fixed recovery key
/// and salt of the `vault_keys` target.
pub mod vault_fixture {
    use super::*;
    use vault::crypto::{EpochKey, Key32};
    use vault::keys::{Keyring, Params};
    use vault::Id;

    /// The recovery key sealing the `vault_keys` key files (28 Crockford characters).
    pub const RECOVERY_KEY: &str = "ABCD-EFGH-JKMN-PQRS-TVWX-YZ01-2345";
    /// The salt of those key files.
    pub const SALT: [u8; 32] = [0x5A; 32];

    /// The fixed keyring.
    pub fn keyring() -> &'static Keyring {
        static KR: OnceLock<Keyring> = OnceLock::new();
        KR.get_or_init(|| Keyring {
            repo_id: Id([0x11; 32]),
            params: Params::default(),
            epochs: vec![
                EpochKey {
                    epoch: 0,
                    enc: Key32([1; 32]),
                    id: Key32([2; 32]),
                    chunker_seed: 3,
                },
                EpochKey {
                    epoch: 7,
                    enc: Key32([4; 32]),
                    id: Key32([5; 32]),
                    chunker_seed: 6,
                },
            ],
        })
    }

    /// The recovery key, parsed.
    pub fn recovery_key() -> vault::keys::RecoveryKey {
        vault::keys::RecoveryKey::parse(RECOVERY_KEY).expect("a valid recovery key")
    }

    /// The wrapping key a recovery key file with [`SALT`] has for [`RECOVERY_KEY`], derived
    /// independently of `vault::keys` (BLAKE3 `derive_key` of the salt and the 28 characters),
    /// so the target can seal any plaintext as a key file's keyring.
    pub fn recovery_wrapping_key() -> Key32 {
        let mut h = blake3::Hasher::new_derive_key("keybag vault recovery key v1");
        h.update(&SALT);
        h.update(RECOVERY_KEY.replace('-', "").as_bytes());
        Key32(*h.finalize().as_bytes())
    }

    /// The associated data of a key file's seal.
    pub const KEY_AAD: &[u8] = b"keybag vault key file v1";

    /// The associated data of a pack header sealed under `epoch`.
    pub fn header_aad(epoch: u32) -> Vec<u8> {
        let mut a = b"keybag vault pack header ".to_vec();
        a.extend_from_slice(&epoch.to_le_bytes());
        a
    }

    /// A whole pack of `filler` blob-area bytes around a header whose **plaintext** is
    /// `header`, sealed under the current epoch (`pack` format of `vault::pack`).
    pub fn pack_with_header(filler: &[u8], header: &[u8]) -> Vec<u8> {
        let key = keyring().current();
        let mut out = b"KBVP\x01".to_vec();
        out.extend_from_slice(&key.epoch.to_le_bytes());
        out.extend_from_slice(filler);
        let sealed = vault::crypto::seal(&key.enc, &header_aad(key.epoch), header);
        out.extend_from_slice(&sealed);
        out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        out
    }
}

/// The object kinds sealed with `vault::object`.
const OBJECT_KINDS: [vault::storage::Kind; 3] = [
    vault::storage::Kind::Index,
    vault::storage::Kind::Snapshots,
    vault::storage::Kind::Pending,
];

/// The vault's sealed formats, with [`vault_fixture::keyring`]. The first byte picks the
/// mode, the rest is input:
///
/// * `mode % 4 == 0`: the bytes are a stored object, named by their hash, opened with
///   `open_object` as an index, a snapshot and a pending mark; what opens is at most
///   `MAX_OBJECT_PLAIN` bytes and goes through that kind's decoder; under another name it
///   does not open;
/// * `1`: the bytes are a whole pack: `pack::parse` (`pack_epoch`, `header_len`,
///   `open_header`); every blob its header lists lies inside the pack, and `open_blob` of it
///   gives `raw_len` bytes or an error;
/// * `2`: the bytes are **plaintext**: sealed as each object kind it opens back to itself
///   (and not as another kind); sealed as a data and a tree blob in a `PackWriter` pack, the
///   pack parses to the writer's entries and each blob opens back to the bytes;
/// * `3`: the bytes are the **plaintext of a pack header**, sealed by the target in a pack
///   of 256 filler bytes: `open_header` accepts it exactly when it decodes as a list of
///   entries that all lie in the blob area, and then gives those entries.
pub fn vault_sealed(data: &[u8]) {
    use vault::object::{epoch_of, open_object, seal_object, MAX_OBJECT_PLAIN};
    use vault::pack::{self, BlobKind, Entry, PackWriter, HEAD_LEN};
    use vault::Id;

    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let kr = vault_fixture::keyring();
    match mode % 4 {
        0 => {
            let name = Id::of_bytes(rest).to_hex();
            for kind in OBJECT_KINDS {
                let Ok(plain) = open_object(kr, kind, &name, rest) else {
                    continue;
                };
                assert!(plain.len() <= MAX_OBJECT_PLAIN);
                assert!(open_object(kr, kind, &Id([0; 32]).to_hex(), rest).is_err());
                decode_object(kind, &name, &plain);
            }
        }
        1 => {
            let id = Id::of_bytes(rest);
            let Ok((epoch, entries)) = pack::parse(kr, &id, rest) else {
                return;
            };
            assert_eq!(pack::pack_epoch(&id, rest).ok(), Some(epoch));
            let hl = pack::header_len(&id, rest.len() as u64, &rest[rest.len() - 4..])
                .expect("a parsed pack has a header length") as u64;
            let blob_end = rest.len() as u64 - 4 - hl;
            for e in &entries {
                let (start, end) = (u64::from(e.offset), u64::from(e.offset) + u64::from(e.len));
                assert!(
                    start >= HEAD_LEN && end <= blob_end,
                    "{e:?} outside the pack"
                );
                let sealed = &rest[start as usize..end as usize];
                if let Ok(plain) = pack::open_blob(kr, epoch, &id, e, sealed) {
                    assert_eq!(plain.len(), e.raw_len as usize);
                }
            }
        }
        2 => {
            let key = kr.current();
            for kind in OBJECT_KINDS {
                let (id, sealed) = seal_object(kr, kind, rest);
                assert_eq!(id, Id::of_bytes(&sealed));
                assert_eq!(epoch_of(&sealed), Some(key.epoch));
                let back = open_object(kr, kind, &id.to_hex(), &sealed).expect("a seal opens");
                assert_eq!(back, rest, "open_object(seal_object(x)) == x");
                for other in OBJECT_KINDS.into_iter().filter(|k| *k != kind) {
                    assert!(open_object(kr, other, &id.to_hex(), &sealed).is_err());
                }
            }
            let mut w = PackWriter::new(key.epoch);
            let id = key.chunk_id(rest);
            for kind in [BlobKind::Data, BlobKind::Tree] {
                let sealed = pack::seal_blob(key, &id, kind, rest);
                w.push(id, kind, rest.len() as u32, &sealed);
            }
            let (name, bytes, entries) = w.finish(key);
            let (epoch, got) = pack::parse(kr, &name, &bytes).expect("a written pack parses");
            assert_eq!((epoch, &got), (key.epoch, &entries));
            for e in &got {
                let sealed = &bytes[e.offset as usize..(e.offset + e.len) as usize];
                let plain = pack::open_blob(kr, epoch, &name, e, sealed).expect("blob opens");
                assert_eq!(plain, rest, "open_blob(seal_blob(x)) == x");
            }
        }
        _ => {
            let filler = [0xEEu8; 256];
            let bytes = vault_fixture::pack_with_header(&filler, rest);
            let id = Id::of_bytes(&bytes);
            let blob_end = HEAD_LEN + filler.len() as u64;
            let expected = postcard::from_bytes::<Vec<Entry>>(rest).ok().filter(|v| {
                v.iter().all(|e| {
                    u64::from(e.offset) >= HEAD_LEN
                        && u64::from(e.offset) + u64::from(e.len) <= blob_end
                })
            });
            let got = pack::parse(kr, &id, &bytes);
            if bytes.len() as u64 - 4 - blob_end > u64::from(pack::MAX_HEADER) {
                assert!(got.is_err(), "a header over MAX_HEADER was read");
                return;
            }
            match (expected, got) {
                (Some(want), Ok((_, entries))) => {
                    assert_eq!(entries, want);
                    for e in &entries {
                        let sealed = &bytes[e.offset as usize..(e.offset + e.len) as usize];
                        assert!(pack::open_blob(kr, kr.current().epoch, &id, e, sealed).is_err());
                    }
                }
                (None, Err(_)) => {}
                (want, got) => panic!("open_header: expected {want:?}, got {got:?}"),
            }
        }
    }
}

/// The decoder of an opened object of `kind` (no panic; round trips where it decodes).
fn decode_object(kind: vault::storage::Kind, name: &str, plain: &[u8]) {
    use vault::storage::Kind;
    match kind {
        Kind::Index => index_file(name, plain),
        Kind::Snapshots => snapshot(name, plain),
        _ => pending(name, plain),
    }
}

/// `IndexFile::decode`: decode(encode(f)) == f, encode stable; the in-memory index built of
/// it finds every blob it lists, and lists its packs back.
fn index_file(name: &str, plain: &[u8]) {
    use vault::index::{Index, IndexFile};
    let Ok(f) = IndexFile::decode(name, plain) else {
        return;
    };
    let bytes = postcard::to_stdvec(&f).expect("serializable");
    let again = IndexFile::decode(name, &bytes).expect("an encoded index file decodes");
    assert_eq!(again, f);
    assert_eq!(postcard::to_stdvec(&again).expect("serializable"), bytes);
    let mut ix = Index::default();
    for p in f.packs.iter().cloned() {
        ix.add_pack(p);
    }
    let n = ix.packs().len() as u32;
    for p in &f.packs {
        let no = ix.pack_no(&p.pack).expect("an added pack is known");
        assert!(no < n);
        for b in &p.blobs {
            assert!(ix.get(&b.id).is_some(), "an indexed blob is found");
            assert!(!ix.all(&b.id).is_empty());
        }
    }
    let listed = ix.indexed_packs(&(0..n).collect::<Vec<_>>());
    assert_eq!(listed.len(), n as usize);
    assert!(ix.len() <= f.packs.iter().map(|p| p.blobs.len()).sum::<usize>());
}

/// `Snapshot::decode_plain` (JSON, version 1): its JSON decodes back equal.
fn snapshot(name: &str, plain: &[u8]) {
    use vault::snapshot::Snapshot;
    let Ok(s) = Snapshot::decode_plain(name, plain) else {
        return;
    };
    assert_eq!(s.version, 1);
    let json = serde_json::to_vec(&s).expect("serializable");
    let again = Snapshot::decode_plain(name, &json).expect("a snapshot's JSON decodes");
    assert_eq!(again, s);
    let _ = s.parent.map(|p| p.short());
}

/// `Pending::decode_plain`: `packs` lists the marks' packs; decode(encode(p)) == p.
fn pending(name: &str, plain: &[u8]) {
    use vault::prune::Pending;
    let Ok(p) = Pending::decode_plain(name, plain) else {
        return;
    };
    assert_eq!(p.packs.len(), p.marks.len());
    let bytes = p.encode();
    assert_eq!(Pending::decode_plain(name, &bytes).expect("decodes"), p);
}

/// The plaintext decoders of the vault and of `cloud`'s snapshots. The first byte picks:
///
/// * `0`: `IndexFile::decode` (then an in-memory `Index` of it), `1`: `Snapshot::decode_plain`,
///   `6`: `Pending::decode_plain`, each with decode(encode(x)) == x;
/// * `2`: `Tree::from_bytes`: decode(to_bytes(t)) == t, `to_bytes` stable, every node found
///   by name; its annex through `Annex::decode` and its nodes' metadata through
///   `FileMeta::decode`;
/// * `3`: `cloud::model::Annex::decode`: round trip, and each record's kind name and blob
///   node name (`Annex::blob_node`, what browsing looks up);
/// * `4`: `FileMeta::decode`: round trip;
/// * `5`: `crypto::unframe_blob` with the `raw_len` of the next four bytes (LE): what it gives
///   is `raw_len` bytes, and framed again (compressed or not) unframes to the same bytes;
/// * `7`: a pack header's plaintext (postcard list of `pack::Entry`): round trip.
pub fn vault_plain(data: &[u8]) {
    use vault::pack::Entry;
    use vault::tree::Tree;

    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let name = "0".repeat(64);
    match mode % 8 {
        0 => index_file(&name, rest),
        1 => snapshot(&name, rest),
        2 => {
            let Ok(t) = Tree::from_bytes("tree", rest) else {
                return;
            };
            let bytes = t.to_bytes();
            let again = Tree::from_bytes("tree", &bytes).expect("to_bytes decodes");
            assert_eq!(again, t);
            assert_eq!(again.to_bytes(), bytes, "to_bytes is stable");
            for n in &t.nodes {
                assert!(t.node(&n.name).is_some());
                meta(&n.name, &n.meta);
            }
            annex(&t.annex);
        }
        3 => annex(rest),
        4 => meta("node", rest),
        5 => {
            let Some((len, framed)) = rest.split_first_chunk::<4>() else {
                return;
            };
            let raw_len = u32::from_le_bytes(*len) as usize;
            let Ok(plain) = vault::crypto::unframe_blob(framed, raw_len) else {
                return;
            };
            assert_eq!(plain.len(), raw_len);
            assert!(raw_len <= vault::crypto::MAX_BLOB_PLAIN);
            for compress in [false, true] {
                let f = vault::crypto::frame_blob(&plain, compress);
                assert!(f.len() <= 5 + plain.len(), "frames are not padded");
                let back = vault::crypto::unframe_blob(&f, raw_len).expect("a frame unframes");
                assert_eq!(back, plain);
            }
        }
        6 => pending(&name, rest),
        _ => {
            let Ok(entries) = postcard::from_bytes::<Vec<Entry>>(rest) else {
                return;
            };
            let bytes = postcard::to_stdvec(&entries).expect("serializable");
            assert_eq!(
                postcard::from_bytes::<Vec<Entry>>(&bytes).expect("decodes"),
                entries
            );
        }
    }
}

/// `Annex::decode`: decode(encode(a)) == a, version 1; records' names do not panic.
fn annex(b: &[u8]) {
    use cloud::model::Annex;
    let Ok(a) = Annex::decode(b) else {
        return;
    };
    assert_eq!(a.version, 1);
    let bytes = a.encode();
    assert_eq!(Annex::decode(&bytes).expect("encode decodes"), a);
    for r in &a.records {
        let _ = r.kind.name();
        let node = Annex::blob_node(&r.file_id);
        assert!(node.ends_with(&r.file_id));
    }
}

/// `FileMeta::decode`: decode(encode(m)) == m.
fn meta(name: &str, b: &[u8]) {
    use cloud::model::FileMeta;
    let Ok(m) = FileMeta::decode(name, b) else {
        return;
    };
    assert_eq!(
        FileMeta::decode(name, &m.encode()).expect("encode decodes"),
        m
    );
}

/// The vault's key material read from storage or typed by people. The first byte picks:
///
/// * `mode % 4 == 0`: `KeyFile::from_bytes` (JSON, size cap): a parsed file is version 1,
///   writes back (`to_bytes`) to bytes that parse to the same file; opened with the fixture
///   recovery key it gives a keyring, nothing, or an error, without panicking (password
///   files are not opened: each would run Argon2id);
/// * `1`: `RecoveryKey::parse` of text: a parsed key displays as seven groups of four that
///   parse back to it, in lower case too;
/// * `2`: the bytes are the **plaintext** of a recovery key file's sealed keyring (sealed by
///   the target under the fixture recovery key): `KeyFile::open` gives a keyring exactly
///   when the plaintext decodes as one with at least one epoch, an error otherwise, never
///   "does not open"; an opened keyring seals into a new key file that opens to it again;
/// * `3`: `Config::from_bytes` of the plain `config` object: a parsed config is format
///   `keybag-vault` version 1 and its JSON parses back equal.
pub fn vault_keys(data: &[u8]) {
    use base64::Engine;
    use vault::keys::{KeyFile, KeyKind, Keyring, RecoveryKey, Secret};

    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let rk = vault_fixture::recovery_key();
    match mode % 4 {
        0 => {
            let Ok(kf) = KeyFile::from_bytes("keys/k", rest) else {
                return;
            };
            assert_eq!(kf.version, 1);
            let bytes = kf.to_bytes();
            let again = KeyFile::from_bytes("keys/k", &bytes);
            if bytes.len() > vault::keys::MAX_KEY_FILE {
                // Pretty-printing may grow a compact file past the cap.
                assert!(again.is_err());
                return;
            }
            let again = again.expect("to_bytes of a key file parses");
            assert_eq!(again.to_bytes(), bytes, "to_bytes is stable");
            if kf.kdf == KeyKind::Recovery {
                if let Ok(Some(k)) = kf.open("keys/k", &Secret::Recovery(&rk)) {
                    assert!(!k.epochs.is_empty());
                    let _ = k.params.check();
                }
            }
            assert!(!kf.takes(&Secret::Password(b"x")) || kf.kdf != KeyKind::Recovery);
        }
        1 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let Ok(k) = RecoveryKey::parse(text) else {
                return;
            };
            let shown = k.display();
            assert_eq!(shown.len(), 34);
            assert_eq!(shown.split('-').count(), 7);
            assert_eq!(RecoveryKey::parse(&shown).expect("display parses"), k);
            assert_eq!(
                RecoveryKey::parse(&shown.to_lowercase()).expect("lower case parses"),
                k
            );
        }
        2 => {
            let wk = vault_fixture::recovery_wrapping_key();
            let kf = KeyFile {
                version: 1,
                label: "recovery".into(),
                created: 0,
                kdf: KeyKind::Recovery,
                salt: b64.encode(vault_fixture::SALT),
                sealed: b64.encode(vault::crypto::seal(&wk, vault_fixture::KEY_AAD, rest)),
            };
            let expected = postcard::from_bytes::<Keyring>(rest)
                .ok()
                .filter(|k| !k.epochs.is_empty());
            match (expected, kf.open("keys/k", &Secret::Recovery(&rk))) {
                (Some(want), Ok(Some(got))) => {
                    let bytes = postcard::to_stdvec(&got).expect("serializable");
                    assert_eq!(bytes, postcard::to_stdvec(&want).expect("serializable"));
                    let _ = got.params.check();
                    let _ = (got.current(), got.epoch(0), format!("{got:?}"));
                    let kf2 = KeyFile::seal(&got, &Secret::Recovery(&rk), "r", None, 0)
                        .expect("a recovery key file seals");
                    let kf2 = KeyFile::from_bytes("keys/k2", &kf2.to_bytes()).expect("parses");
                    let back = kf2
                        .open("keys/k2", &Secret::Recovery(&rk))
                        .expect("opens")
                        .expect("with its key");
                    assert_eq!(postcard::to_stdvec(&back).expect("serializable"), bytes);
                }
                (None, Err(_)) => {}
                (want, got) => panic!(
                    "KeyFile::open: expected a keyring: {}, got {got:?}",
                    want.is_some()
                ),
            }
        }
        _ => {
            let Ok(c) = vault::Config::from_bytes("fuzz", rest) else {
                return;
            };
            assert_eq!((c.format.as_str(), c.version), ("keybag-vault", 1));
            let json = serde_json::to_vec(&c).expect("serializable");
            assert_eq!(vault::Config::from_bytes("fuzz", &json).expect("parses"), c);
        }
    }
}

// ------------------------------------------------------------------ server_requests

/// The OPAQUE server setup the `server_requests` target answers with (from a fixed seed).
pub fn server_setup() -> &'static opaque_ke::ServerSetup<server::auth::Suite> {
    use rand::SeedableRng;
    static SETUP: OnceLock<opaque_ke::ServerSetup<server::auth::Suite>> = OnceLock::new();
    SETUP.get_or_init(|| {
        opaque_ke::ServerSetup::new(&mut rand::rngs::StdRng::seed_from_u64(0x6b657962))
    })
}

/// `keybag serve`'s parsers of client bytes (`server::parse`, which the routes call). The
/// first byte picks:
///
/// * `mode % 8 == 0`: a path segment: `parse::kind`, and `vault::storage::check_name` for
///   every kind, which accepts exactly `config` for the config and what parses as an `Id`
///   (64 lowercase hex digits) for the others;
/// * `1`: a `Range` value: a parsed range is 1 to `MAX_RANGE` bytes and prints back to
///   itself;
/// * `2`: an `Authorization` value: a token is non-empty, shorter than `MAX_TOKEN`,
///   trimmed, and reads back from `Bearer <token>`;
/// * `3`: a JSON body, as each route's body type (`parse::json`, axum's own reading):
///   device and quota checks, and each `message` field through base64 and every OPAQUE
///   parser;
/// * `4`–`7`: raw OPAQUE bytes: a registration request (then `ServerRegistration::start`
///   with a fixed setup), a registration upload (then `finish`, whose password file parses
///   back), a credential request (then `ServerLogin::start` for an unknown account, whose
///   saved state parses back), and a credential finalization, password file and login state.
///   What parses serializes to a prefix of the input.
pub fn server_requests(data: &[u8]) {
    use server::parse::{self, LoginFinish, LoginStart, NewAccount, NewDevice, Quota};
    use vault::storage::{check_name, Kind};

    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 8 {
        0 => {
            let Ok(s) = std::str::from_utf8(rest) else {
                return;
            };
            if let Some(k) = parse::kind(s) {
                assert_eq!(k.dir(), s);
            }
            for k in Kind::ALL {
                let ok = check_name(k, s).is_ok();
                if k == Kind::Config {
                    assert_eq!(ok, s == "config");
                } else {
                    assert_eq!(ok, s.parse::<vault::Id>().is_ok(), "{k:?} {s:?}");
                }
            }
        }
        1 => {
            let Ok(s) = std::str::from_utf8(rest) else {
                return;
            };
            if let Some((off, len)) = parse::range(s) {
                assert!((1..=parse::MAX_RANGE).contains(&len));
                let again = format!("bytes={off}-{}", off + (len - 1));
                assert_eq!(parse::range(&again), Some((off, len)));
            }
        }
        2 => {
            let Ok(s) = std::str::from_utf8(rest) else {
                return;
            };
            if let Some(t) = parse::bearer(s) {
                assert!(!t.is_empty() && t.len() < parse::MAX_TOKEN);
                assert_eq!(t, t.trim());
                assert_eq!(parse::bearer(&format!("Bearer {t}")), Some(t));
            }
        }
        3 => {
            if let Ok(r) = parse::json::<parse::RegisterRequest>(rest) {
                opaque_field(&r.message);
            }
            if let Ok(r) = parse::json::<LoginStart>(rest) {
                opaque_field(&r.message);
            }
            if let Ok(r) = parse::json::<LoginFinish>(rest) {
                opaque_field(&r.message);
            }
            if let Ok(d) = parse::json::<NewDevice>(rest) {
                if d.check().is_ok() {
                    assert!(!d.name.is_empty() && d.name.len() <= parse::MAX_DEVICE_NAME);
                }
            }
            let _ = parse::json::<NewAccount>(rest);
            if let Ok(q) = parse::json::<Quota>(rest) {
                assert_eq!(q.check().is_ok(), q.bytes >= 0);
            }
        }
        m => opaque(m, rest),
    }
}

/// A base64 `message` field: each OPAQUE parser on its bytes.
fn opaque_field(message: &str) {
    if let Some(b) = server::parse::base64(message) {
        for m in 4..8 {
            opaque(m, &b);
        }
    }
}

/// Raw OPAQUE bytes as the message of mode `m` (see [`server_requests`]).
fn opaque(m: u8, b: &[u8]) {
    use opaque_ke::{ServerLogin, ServerLoginParameters, ServerRegistration};
    use server::parse;
    let setup = server_setup();
    match m {
        4 => {
            if let Some(msg) = parse::registration_request(b) {
                assert!(b.starts_with(&msg.serialize()));
                if let Ok(r) = ServerRegistration::start(setup, msg, b"account") {
                    let _ = r.message.serialize();
                }
            }
        }
        5 => {
            if let Some(up) = parse::registration_upload(b) {
                assert!(b.starts_with(&up.serialize()));
                let file = ServerRegistration::finish(up).serialize();
                let again = parse::password_file(&file).expect("a password file parses");
                assert_eq!(again.serialize(), file);
            }
        }
        6 => {
            if let Some(msg) = parse::credential_request(b) {
                assert!(b.starts_with(&msg.serialize()));
                use rand::SeedableRng;
                let mut rng = rand::rngs::StdRng::seed_from_u64(1);
                if let Ok(start) = ServerLogin::start(
                    &mut rng,
                    setup,
                    None,
                    msg,
                    b"nobody",
                    ServerLoginParameters::default(),
                ) {
                    let state = start.state.serialize();
                    let again = parse::login_state(&state).expect("a saved state parses");
                    assert_eq!(again.serialize(), state);
                    let _ = start.message.serialize();
                }
            }
        }
        _ => {
            if let Some(f) = parse::credential_finalization(b) {
                assert!(b.starts_with(&f.serialize()));
            }
            if let Some(f) = parse::password_file(b) {
                assert!(b.starts_with(&f.serialize()));
            }
            if let Some(s) = parse::login_state(b) {
                assert!(b.starts_with(&s.serialize()));
            }
        }
    }
}
