//! The keychain reader and writer: against the enc-small-public fixture's ground truth, a
//! round trip through `BackupWriter`, and hostile or damaged input built here (each case a
//! test: a per-item problem, the rest of the report intact, never a panic).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use dataprotection::{cbc, UnlockedKeybag};
use dataprotection::{gcm, wrap, DeviceKey, Key256, Keybag, Passkey, ProtectionClass};
use mobilebackup::keychain::der::{self, DerDate, DerValue};
use mobilebackup::keychain::writer::{self as kcw, NewKeychainItem};
use mobilebackup::keychain::{self, item, ItemState, Keychain};
use mobilebackup::writer::{BackupWriter, Content, Encryption, NewRecord, WriterOptions};
use mobilebackup::{Backup, Error};
use plist::{Dictionary, Value as P};
use serde_json::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(testdata("enc-small-public.expected.json")).unwrap())
        .unwrap()
}

fn fixture(device_key: bool) -> (Backup, Value) {
    let exp = expected();
    let mut b = Backup::open(testdata("enc-small-public")).unwrap();
    let pk = Passkey::from_hex(exp["passkey_hex"].as_str().unwrap()).unwrap();
    let dk = DeviceKey::from_hex(exp["device_key_835_hex"].as_str().unwrap()).unwrap();
    b.unlock_with_passkey(&pk, device_key.then_some(&dk))
        .unwrap();
    (b, exp)
}

fn find<'a>(kc: &'a Keychain, table: &str, rowid: u64) -> &'a keychain::Item {
    kc.items
        .iter()
        .find(|i| i.table == table && i.rowid == Some(rowid))
        .unwrap_or_else(|| panic!("{table}/{rowid} not listed"))
}

/// The raw `keychain-backup.plist` of an opened backup.
fn raw_plist(b: &Backup) -> Vec<u8> {
    let cat = b.catalog().unwrap();
    let rec = cat
        .records
        .iter()
        .find(|r| r.domain == "KeychainDomain" && r.relative_path == "keychain-backup.plist")
        .unwrap();
    let mut out = Vec::new();
    b.open_file(rec).unwrap().read_to_end(&mut out).unwrap();
    out
}

fn opt_str(v: &Value) -> Option<&str> {
    v.as_str()
}

// ---------------------------------------------------------------- fixture

#[test]
fn fixture_password_only_opens_migratory_items_and_seals_this_device_only() {
    let (b, exp) = fixture(false);
    let kc = keychain::read(&b)
        .unwrap()
        .expect("the fixture has a keychain");
    let want = exp["keychain"]["items"].as_array().unwrap();
    assert_eq!(kc.items.len(), want.len());
    assert_eq!(
        kc.keybag_uuid.as_deref(),
        exp["keychain"]["keybag_uuid"].as_str()
    );
    assert_eq!(kc.keybag_uuid_matches, Some(true));
    assert!(kc.warnings.is_empty(), "{:?}", kc.warnings);
    assert!(kc.unknown_keys.is_empty());
    for w in want {
        let it = find(
            &kc,
            w["table"].as_str().unwrap(),
            w["rowid"].as_u64().unwrap(),
        );
        assert_eq!(it.class.unwrap().0 as u64, w["class"].as_u64().unwrap());
        assert_eq!(
            it.class.unwrap().short_name(),
            w["class_short"].as_str().unwrap()
        );
        assert_eq!(it.class.unwrap().name(), w["class_name"].as_str().unwrap());
        assert_eq!(
            it.this_device_only(),
            w["this_device_only"].as_bool().unwrap()
        );
        assert_eq!(it.version, Some(w["blob_version"].as_u64().unwrap() as u32));
        assert_eq!(
            hex::encode(&it.persistent_ref),
            w["persistent_ref_hex"].as_str().unwrap()
        );
        if w["needs_key835"].as_bool().unwrap() {
            let ItemState::Sealed { reason } = &it.state else {
                panic!("{:?} should be sealed", it.state)
            };
            assert!(reason.contains("0x835"), "{reason}");
            assert!(it.attributes.is_empty());
            assert!(it.secret().is_none());
        } else {
            assert_eq!(it.state, ItemState::Open);
            assert_eq!(
                hex::encode(it.secret().unwrap()),
                w["secret_hex"].as_str().unwrap()
            );
        }
    }
    assert_eq!(kc.counts(), (3, 3, 0));
    assert!(!kc.wrong_device_key());
}

#[test]
fn fixture_device_key_opens_every_item_with_the_right_attributes() {
    let (b, exp) = fixture(true);
    let kc = keychain::read(&b).unwrap().unwrap();
    assert_eq!(kc.counts(), (6, 0, 0));
    for w in exp["keychain"]["items"].as_array().unwrap() {
        let it = find(
            &kc,
            w["table"].as_str().unwrap(),
            w["rowid"].as_u64().unwrap(),
        );
        assert_eq!(it.state, ItemState::Open, "{:?}", it.warnings);
        assert!(it.warnings.is_empty(), "{:?}", it.warnings);
        assert_eq!(
            hex::encode(it.secret().unwrap()),
            w["secret_hex"].as_str().unwrap()
        );
        assert_eq!(
            it.secret().unwrap().len() as u64,
            w["secret_len"].as_u64().unwrap()
        );
        assert_eq!(it.account(), opt_str(&w["acct"]));
        assert_eq!(it.access_group(), opt_str(&w["agrp"]));
        assert_eq!(it.service(), opt_str(&w["svce"]));
        assert_eq!(it.server(), opt_str(&w["srvr"]));
        assert_eq!(it.label(), opt_str(&w["labl"]));
        assert_eq!(it.path(), opt_str(&w["path"]));
        assert_eq!(it.pdmn(), opt_str(&w["pdmn"]));
        assert_eq!(it.attr_str("UUID"), opt_str(&w["uuid"]));
        assert_eq!(it.port(), w["port"].as_i64());
        assert_eq!(
            it.attributes.get("ptcl").and_then(DerValue::as_i64),
            w["ptcl"].as_i64()
        );
        assert_eq!(
            it.protocol().as_deref(),
            w["ptcl_fourcc"].as_str().map(str::trim_end)
        );
        for (attr, key) in [("cdat", "cdat"), ("mdat", "mdat")] {
            let d = it.attributes[attr].as_date().unwrap();
            assert_eq!(d.to_generalized_time(), w[key].as_str().unwrap());
        }
        assert_eq!(
            it.this_device_only(),
            w["this_device_only"].as_bool().unwrap()
        );
        // The attributes re-encode to exactly the DER Apple's format holds.
        let der = der::encode(&DerValue::Dict(it.attributes.clone()));
        assert_eq!(
            hex::encode(Sha256::digest(&der)),
            w["der_plaintext_sha256"].as_str().unwrap()
        );
    }
    let inet = find(&kc, "inet", 10);
    assert_eq!(
        inet.url().as_deref(),
        Some("ftp://xray.forge.example:143/login")
    );
    assert_eq!(inet.created().as_deref(), Some("2024-03-21T00:16:37Z"));
    assert_eq!(inet.modified().as_deref(), Some("2024-03-27T19:14:49.5Z"));
    assert_eq!(
        find(&kc, "inet", 3).url().as_deref(),
        Some("imap://victor.forge.example:993")
    );
    assert_eq!(find(&kc, "genp", 3).kind_name(), "password");
    assert_eq!(inet.kind_name(), "internet password");
}

/// Decrypts every fixture item by hand (dataprotection primitives only) and checks that
/// DER `encode(decode(x)) == x` byte for byte, and the blob hashes of the ground truth.
#[test]
fn fixture_der_round_trip_is_byte_identical() {
    let (b, exp) = fixture(true);
    let keys = b.keys().unwrap();
    let P::Dictionary(top) = P::from_reader(std::io::Cursor::new(raw_plist(&b))).unwrap() else {
        panic!("not a dictionary")
    };
    let want: BTreeMap<String, &Value> = exp["keychain"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["persistent_ref_hex"].as_str().unwrap().to_string(), w))
        .collect();
    let mut n = 0;
    for table in ["genp", "inet"] {
        for e in top[table].as_array().unwrap() {
            let e = e.as_dictionary().unwrap();
            let blob = e["v_Data"].as_data().unwrap();
            let w = want[&hex::encode(e["v_PersistentRef"].as_data().unwrap())];
            assert_eq!(
                hex::encode(Sha256::digest(blob)),
                w["v_Data_blob_sha256"].as_str().unwrap()
            );
            let class = ProtectionClass::masked(u32::from_le_bytes(blob[4..8].try_into().unwrap()));
            let bulk = wrap::unwrap_key(keys.key(class).unwrap(), &blob[12..52]).unwrap();
            if let Some(k) = w["bulk_key_hex"].as_str() {
                assert_eq!(bulk.to_hex(), k);
            }
            let plain = gcm::decrypt(
                &bulk,
                &[],
                &[],
                &blob[52..blob.len() - 16],
                &blob[blob.len() - 16..],
            )
            .unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&plain)),
                w["der_plaintext_sha256"].as_str().unwrap()
            );
            let (v, warnings) = der::decode(&plain).unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            assert_eq!(
                der::encode(&v),
                &plain[..],
                "{table} item re-encodes differently"
            );
            n += 1;
        }
    }
    assert_eq!(n, 6);
}

#[test]
fn missing_keychain_blob_is_an_error_naming_the_file() {
    // The real iOS 14.3 sample lists keychain-backup.plist but ships without its blob.
    let b = Backup::open(testdata("mvt-ios-backup")).unwrap();
    match keychain::read(&b) {
        Err(Error::MissingBlob { path }) => {
            assert!(path.ends_with("51/51a4616e576dd33cd2abadfea874eb8ff246bf0e"))
        }
        other => panic!("expected MissingBlob, got {other:?}"),
    }
}

#[test]
fn locked_backup_is_an_error() {
    let b = Backup::open(testdata("enc-small-public")).unwrap();
    assert!(matches!(keychain::read(&b), Err(Error::Locked { .. })));
}

// ---------------------------------------------------------------- writer round trip

const PASSWORD: &str = "keychain round trip";

fn date(text: &str) -> DerValue {
    DerValue::Date(DerDate::parse_generalized(text).unwrap())
}

/// Items of every exportable class, in every table, with awkward attributes.
fn new_items() -> Vec<NewKeychainItem> {
    let mut v = Vec::new();
    for (i, class) in (6..=11u32).enumerate() {
        let c = ProtectionClass(class);
        let genp = NewKeychainItem::new("genp", c)
            .string("agrp", "com.example.app")
            .string("svce", &format!("service-{class}"))
            .string("acct", &format!("user{class}@example.com"))
            .string("labl", &format!("Label {class} — Ünïcödé ✓"))
            .attr("cdat", date("20240319145344Z"))
            .attr("mdat", date(&format!("20240321183949.{}Z", i + 1)))
            .attr("sync", DerValue::Integer(0))
            .attr("musr", DerValue::data(Vec::new()))
            .secret(format!("pw-{class}-秘密").as_bytes());
        v.push(genp);
        let inet = NewKeychainItem::new("inet", c)
            .string("agrp", "group.example.shared")
            .string("srvr", &format!("host{class}.example.com"))
            .string("acct", "josé")
            .string("path", "/login")
            .attr("ptcl", DerValue::Integer(0x6874_7073)) // 'htps'
            .attr("port", DerValue::Integer(143))
            .attr("cdat", date("19991231235959.123456789Z"))
            .secret(&[0, 1, 2, 0xFF, 0xFE]);
        v.push(inet);
    }
    let mut cert = NewKeychainItem::new("cert", ProtectionClass(7))
        .string("agrp", "apple")
        .attr("ctyp", DerValue::Integer(1))
        .attr("subj", DerValue::data(vec![0x30, 0x00]))
        .secret(&vec![0x5A; 3000]);
    cert.rowid = Some(42);
    v.push(cert);
    v.push(
        NewKeychainItem::new("keys", ProtectionClass(10))
            .string("agrp", "com.example.app")
            .attr("kcls", DerValue::Integer(1))
            .attr("perm", DerValue::Bool(true))
            .attr("bsiz", DerValue::Integer(256))
            .attr(
                "list",
                DerValue::Array(vec![DerValue::Null, DerValue::Integer(-1)]),
            )
            .secret(&[7; 32]),
    );
    v
}

fn write_backup(
    dir: &std::path::Path,
    enc: bool,
    dk: &DeviceKey,
    items: Vec<NewKeychainItem>,
) -> PathBuf {
    let opts = WriterOptions {
        encryption: enc.then(|| Encryption {
            password: Zeroizing::new(PASSWORD.as_bytes().to_vec()),
            dpic: 10_000,
            device_key: Some(dk.clone()),
        }),
        ..WriterOptions::default()
    };
    let w = BackupWriter::create(&dir.join("backup"), opts).unwrap();
    w.add(NewRecord::file(
        "HomeDomain",
        "Library/a.txt",
        Content::Bytes(b"a".to_vec()),
    ))
    .unwrap();
    w.add_keychain(items).unwrap();
    w.finish().unwrap()
}

fn open_written(path: &std::path::Path, dk: Option<&DeviceKey>) -> Backup {
    let mut b = Backup::open(path).unwrap();
    if b.is_encrypted() {
        let pk = b
            .derive_passkey(PASSWORD.as_bytes(), &dataprotection::KdfLimits::default())
            .unwrap();
        b.unlock_with_passkey(&pk, dk).unwrap();
    }
    b
}

#[test]
fn writer_round_trip_encrypted() {
    let tmp = tempfile::tempdir().unwrap();
    let dk = DeviceKey::random();
    let items = new_items();
    let path = write_backup(tmp.path(), true, &dk, items.clone());

    // The file is stored like the device's: class 1, mode 0400, root, with a Digest.
    let b = open_written(&path, None);
    let cat = b.catalog().unwrap();
    let rec = cat
        .records
        .iter()
        .find(|r| r.domain == "KeychainDomain" && r.relative_path == "keychain-backup.plist")
        .unwrap();
    let f = rec.file.as_ref().unwrap();
    assert_eq!(
        (f.protection_class, f.mode, f.uid, f.gid),
        (1, 0o100400, 0, 0)
    );
    assert!(f.digest.is_some());
    assert_eq!(rec.file_id, "51a4616e576dd33cd2abadfea874eb8ff246bf0e");

    // Password only: 6-8 open, 9-11 sealed.
    let kc = keychain::read(&b).unwrap().unwrap();
    assert_eq!(kc.keybag_uuid_matches, Some(true));
    assert_eq!(kc.keybag_uuid, b.keybag().unwrap().uuid_string());
    assert!(kc.warnings.is_empty(), "{:?}", kc.warnings);
    assert_eq!(kc.items.len(), items.len());
    for it in &kc.items {
        assert_eq!(it.version, Some(3));
        if it.class.unwrap().is_this_device_only() {
            assert!(
                matches!(it.state, ItemState::Sealed { .. }),
                "{:?}",
                it.state
            );
        } else {
            assert_eq!(it.state, ItemState::Open);
        }
    }

    // With the device key: everything opens, attributes as written (plus pdmn).
    let b = open_written(&path, Some(&dk));
    let kc = keychain::read(&b).unwrap().unwrap();
    assert_eq!(kc.counts(), (items.len(), 0, 0));
    let mut rowids: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for it in &kc.items {
        rowids.entry(&it.table).or_default().push(it.rowid.unwrap());
        assert!(it.warnings.is_empty(), "{:?}", it.warnings);
    }
    assert_eq!(rowids["genp"], vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(rowids["cert"], vec![42]);
    // Items come back in table order, then in the order they were given.
    for table in ["genp", "inet", "cert", "keys"] {
        let written: Vec<&NewKeychainItem> = items.iter().filter(|i| i.table == table).collect();
        let read: Vec<&keychain::Item> = kc.items.iter().filter(|i| i.table == table).collect();
        assert_eq!(written.len(), read.len());
        for (w, r) in written.iter().zip(read) {
            let mut want = w.attributes.clone();
            want.insert("pdmn".into(), DerValue::string(w.class.short_name()));
            assert_eq!(r.attributes, want);
            assert_eq!(r.class, Some(w.class));
            assert_eq!(r.this_device_only(), w.class.is_this_device_only());
        }
    }
    let inet = kc.items.iter().find(|i| i.table == "inet").unwrap();
    assert_eq!(
        inet.url().as_deref(),
        Some("https://host6.example.com:143/login")
    );
    assert_eq!(
        inet.created().as_deref(),
        Some("1999-12-31T23:59:59.123456789Z")
    );
}

#[test]
fn writer_round_trip_unencrypted_is_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let dk = DeviceKey::random();
    let path = write_backup(tmp.path(), false, &dk, new_items());
    let b = open_written(&path, Some(&dk));
    assert!(!b.is_encrypted());
    let kc = keychain::read(&b).unwrap().unwrap();
    assert_eq!(kc.keybag_uuid_matches, Some(true));
    assert_eq!(kc.items.len(), new_items().len());
    for it in &kc.items {
        assert_eq!(
            it.state,
            ItemState::Sealed {
                reason: item::UNENCRYPTED_SEALED.into()
            }
        );
        assert!(it.class.is_some() && it.version == Some(3) && it.rowid.is_some());
    }
}

#[test]
fn writer_rejects_bad_items() {
    let tmp = tempfile::tempdir().unwrap();
    let w = BackupWriter::create(&tmp.path().join("b"), WriterOptions::default()).unwrap();
    for (bad, want) in [
        (
            NewKeychainItem::new("pass", ProtectionClass(6)),
            "not one of",
        ),
        (NewKeychainItem::new("genp", ProtectionClass(12)), "6-11"),
        (NewKeychainItem::new("genp", ProtectionClass(3)), "6-11"),
    ] {
        let e = w.add_keychain(vec![bad]).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    let mut a = NewKeychainItem::new("genp", ProtectionClass(6));
    a.rowid = Some(5);
    let e = w
        .add_keychain(vec![a.clone(), a.clone()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("rowid 5 appears twice"), "{e}");
    w.add_keychain(vec![a.clone()]).unwrap();
    let e = w.add_keychain(vec![a]).unwrap_err().to_string();
    assert!(e.contains("duplicate record"), "{e}");
}

// ---------------------------------------------------------------- hostile input

struct Bag {
    keys: UnlockedKeybag,
    uuid: String,
    kb: Keybag,
}

/// An encrypted keybag (cheap KDF) and its keys, without the device key: 9–11 sealed.
fn bag(device: bool) -> Bag {
    let dk = DeviceKey::random();
    let (kb, _) = Keybag::new_backup(b"pw", &dk, 1000).unwrap();
    let pk = kb
        .derive_passkey(b"pw", &dataprotection::KdfLimits::default())
        .unwrap();
    let keys = kb.unlock(&pk, device.then_some(&dk)).unwrap();
    Bag {
        keys,
        uuid: kb.uuid_string().unwrap(),
        kb,
    }
}

fn attrs(acct: &str) -> BTreeMap<String, DerValue> {
    let mut m = BTreeMap::new();
    m.insert("acct".to_string(), DerValue::string(acct));
    m.insert("agrp".to_string(), DerValue::string("g"));
    m.insert("v_Data".to_string(), DerValue::data(b"s3cret".to_vec()));
    m
}

fn good_blob(bag: &Bag, class: u32, acct: &str) -> Vec<u8> {
    kcw::encrypt_item(
        class,
        bag.keys.key(ProtectionClass(class)).unwrap(),
        &attrs(acct),
    )
}

fn entry(blob: Vec<u8>, table: &str, rowid: u64) -> P {
    let mut d = Dictionary::new();
    d.insert("v_Data".into(), P::Data(blob));
    d.insert(
        "v_PersistentRef".into(),
        P::Data(kcw::persistent_ref(table, rowid)),
    );
    P::Dictionary(d)
}

fn plist(genp: Vec<P>, uuid: &str, extra: &[(&str, P)]) -> Vec<u8> {
    let mut top = Dictionary::new();
    top.insert("genp".into(), P::Array(genp));
    top.insert("keybag-uuid".into(), P::String(uuid.into()));
    for (k, v) in extra {
        top.insert((*k).into(), v.clone());
    }
    let mut out = Vec::new();
    P::Dictionary(top).to_writer_binary(&mut out).unwrap();
    out
}

/// Parses a keychain whose `genp` holds a good item, the `bad` blob, and another good item;
/// returns the bad item after checking the good ones opened.
fn with_bad_blob(b: &Bag, bad: Vec<u8>) -> keychain::Item {
    let bytes = plist(
        vec![
            entry(good_blob(b, 6, "first"), "genp", 1),
            entry(bad, "genp", 2),
            entry(good_blob(b, 7, "last"), "genp", 3),
        ],
        &b.uuid,
        &[],
    );
    let kc = keychain::parse(&bytes, Some(&b.keys), Some(&b.uuid)).unwrap();
    assert_eq!(kc.items.len(), 3);
    assert_eq!(kc.items[0].state, ItemState::Open);
    assert_eq!(kc.items[0].account(), Some("first"));
    assert_eq!(kc.items[2].state, ItemState::Open);
    assert_eq!(kc.items[2].account(), Some("last"));
    assert_eq!(kc.items[1].rowid, Some(2));
    kc.items[1].clone()
}

fn damaged_reason(it: &keychain::Item) -> String {
    match &it.state {
        ItemState::Damaged { reason } => reason.clone(),
        other => panic!("expected damaged, got {other:?}"),
    }
}

fn assert_damaged(b: &Bag, bad: Vec<u8>, want: &str) -> keychain::Item {
    let it = with_bad_blob(b, bad);
    let r = damaged_reason(&it);
    assert!(r.contains(want), "reason {r:?} lacks {want:?}");
    assert!(it.attributes.is_empty());
    it
}

fn blob_with(bag: &Bag, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = good_blob(bag, 6, "x");
    f(&mut b);
    b
}

#[test]
fn truncated_blobs() {
    let b = bag(false);
    let good = good_blob(&b, 6, "x");
    for (n, want) in [
        (0, "no header"),
        (7, "no header"),
        (10, "header is 12"),
        (51, "truncated"),
        (67, "truncated"),
    ] {
        let bad = good[..n].to_vec();
        assert_damaged(&b, bad, want);
    }
    // Cut inside the ciphertext: the tag no longer matches.
    assert_damaged(&b, good[..good.len() - 3].to_vec(), "tag mismatch");
}

#[test]
fn oversized_blob() {
    let b = bag(false);
    let big = kcw::seal_v3(
        6,
        b.keys.key(ProtectionClass(6)).unwrap(),
        &vec![0u8; item::MAX_ITEM_BYTES],
    );
    assert_damaged(&b, big, "over the 1 MiB cap");
}

#[test]
fn wrong_wrapped_key_lengths() {
    let b = bag(false);
    for n in [0u32, 32, 41, u32::MAX] {
        let bad = blob_with(&b, |x| x[8..12].copy_from_slice(&n.to_le_bytes()));
        assert_damaged(&b, bad, &format!("wrapped key length is {n}"));
    }
}

#[test]
fn tag_mismatch_and_tampering() {
    let b = bag(false);
    let bad = blob_with(&b, |x| {
        let n = x.len();
        x[n - 1] ^= 1
    });
    assert_damaged(&b, bad, "tag mismatch");
    let bad = blob_with(&b, |x| x[60] ^= 0x80);
    assert_damaged(&b, bad, "tag mismatch");
    // Tampering with the wrapped key fails its RFC 3394 check.
    let bad = blob_with(&b, |x| x[20] ^= 1);
    assert_damaged(&b, bad, item::UNWRAP_FAILED);
    // A blob encrypted to another keybag's class key.
    let other = bag(false);
    assert_damaged(&b, good_blob(&other, 6, "x"), item::UNWRAP_FAILED);
}

#[test]
fn der_with_bad_lengths() {
    let b = bag(false);
    let k = b.keys.key(ProtectionClass(6)).unwrap();
    for (plain, want) in [
        (
            hex::decode("310a300a0c0461636374").unwrap(),
            "runs past the end",
        ),
        (hex::decode("3180").unwrap(), "indefinite"),
        (hex::decode("31003100").unwrap(), "trailing"),
        (
            hex::decode("3008300c0c0461636374").unwrap(),
            "runs past the end",
        ),
        (Vec::new(), "truncated"),
        (hex::decode("0c0161").unwrap(), "not a dictionary"),
    ] {
        let r = damaged_reason(&with_bad_blob(&b, kcw::seal_v3(6, k, &plain)));
        assert!(r.contains(want), "{r}");
    }
}

#[test]
fn unsorted_der_opens_with_a_warning_and_duplicates_are_damage() {
    let b = bag(false);
    let k = b.keys.key(ProtectionClass(6)).unwrap();
    // "v_Data" entry (30 0e) before "acct" (30 0b): out of DER order.
    let vdata = "300e0c06765f446174610404".to_string() + "73656372";
    let acct = "300b0c0461636374 0c03626f62".replace(' ', "");
    let unsorted = hex::decode(format!("311d{vdata}{acct}")).unwrap();
    let it = with_bad_blob(&b, kcw::seal_v3(6, k, &unsorted));
    assert_eq!(it.state, ItemState::Open);
    assert_eq!(it.account(), Some("bob"));
    assert_eq!(it.secret(), Some(&b"secr"[..]));
    assert!(
        it.warnings.iter().any(|w| w.contains("not in DER order")),
        "{:?}",
        it.warnings
    );

    let dup = hex::decode(format!("311a{acct}{acct}")).unwrap();
    let r = damaged_reason(&with_bad_blob(&b, kcw::seal_v3(6, k, &dup)));
    assert!(r.contains("appears twice"), "{r}");
}

#[test]
fn deep_nesting_is_damage() {
    let b = bag(false);
    let k = b.keys.key(ProtectionClass(6)).unwrap();
    let mut v = DerValue::Null;
    for _ in 0..100 {
        v = DerValue::Array(vec![v]);
    }
    let mut m = BTreeMap::new();
    m.insert("deep".to_string(), v);
    let plain = der::encode(&DerValue::Dict(m));
    let r = damaged_reason(&with_bad_blob(&b, kcw::seal_v3(6, k, &plain)));
    assert!(r.contains("nested deeper"), "{r}");
}

#[test]
fn unknown_class_ids_and_versions() {
    let b = bag(false);
    let k6 = b.keys.key(ProtectionClass(6)).unwrap().clone();
    for class in [0u32, 3, 5, 13, 15] {
        let bad = kcw::encrypt_item(class, &k6, &attrs("x"));
        let it = assert_damaged(&b, bad, "not a keychain class");
        assert_eq!(it.class, Some(ProtectionClass(class)));
    }
    // akpu (12) is a keychain class, but never in a backup keybag.
    assert_damaged(
        &b,
        kcw::encrypt_item(12, &k6, &attrs("x")),
        "no key for class 12",
    );
    // High "generation" bits are masked off: 0x10 | 6 opens as class 6.
    let it = with_bad_blob(&b, kcw::encrypt_item(0x10 | 6, &k6, &attrs("gen")));
    assert_eq!(it.state, ItemState::Open);
    assert_eq!(it.class, Some(ProtectionClass(6)));
    for (v, want) in [
        (4u32, "access control"),
        (7, "unknown blob version 7"),
        (0x7FFF_FFFF, "unknown blob version"),
    ] {
        let bad = blob_with(&b, |x| x[..4].copy_from_slice(&v.to_le_bytes()));
        let it = assert_damaged(&b, bad, want);
        assert_eq!(it.version, Some(v));
    }
}

/// Versions 0 and 1 (CBC, raw secret), 2 (GCM over a bplist), and the static-IV flag.
#[test]
fn older_versions_and_the_static_iv_open() {
    let b = bag(false);
    let ck = b.keys.key(ProtectionClass(7)).unwrap();
    let bulk = Key256::random();
    let wrapped = wrap::wrap_key(ck, &bulk);
    let ct = cbc::encrypt_padded(&bulk, b"legacy secret");

    let mut v0 = [0u32.to_le_bytes(), 7u32.to_le_bytes()].concat();
    v0.extend_from_slice(&wrapped);
    v0.extend_from_slice(&ct);
    let it = with_bad_blob(&b, v0);
    assert_eq!((it.state.clone(), it.version), (ItemState::Open, Some(0)));
    assert_eq!(it.secret(), Some(&b"legacy secret"[..]));

    let mut v1 = [1u32.to_le_bytes(), 7u32.to_le_bytes(), 40u32.to_le_bytes()].concat();
    v1.extend_from_slice(&wrapped);
    v1.extend_from_slice(&ct);
    let it = with_bad_blob(&b, v1.clone());
    assert_eq!(it.secret(), Some(&b"legacy secret"[..]));
    // Bad padding in a CBC item.
    let n = v1.len();
    v1[n - 1] ^= 0x55;
    assert_damaged(&b, v1, "padding");

    // v2: GCM (empty IV) over a binary plist.
    let mut d = Dictionary::new();
    d.insert("acct".into(), P::String("plist user".into()));
    d.insert("v_Data".into(), P::Data(b"bp secret".to_vec()));
    d.insert("port".into(), P::Integer(8080.into()));
    d.insert(
        "cdat".into(),
        P::Date(plist::Date::from(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_250),
        )),
    );
    let mut bp = Vec::new();
    P::Dictionary(d).to_writer_binary(&mut bp).unwrap();
    let (ct2, tag) = gcm::encrypt(&bulk, &[], &[], &bp).unwrap();
    let mut v2 = [2u32.to_le_bytes(), 7u32.to_le_bytes(), 40u32.to_le_bytes()].concat();
    v2.extend_from_slice(&wrapped);
    v2.extend_from_slice(&ct2);
    v2.extend_from_slice(&tag);
    let it = with_bad_blob(&b, v2);
    assert_eq!((it.state.clone(), it.version), (ItemState::Open, Some(2)));
    assert_eq!(it.account(), Some("plist user"));
    assert_eq!(it.secret(), Some(&b"bp secret"[..]));
    assert_eq!(it.port(), Some(8080));
    assert_eq!(it.created().as_deref(), Some("2023-11-14T22:13:20.25Z"));

    // v3 with bit 31: static IV, the 12 header bytes as AAD.
    let header = [
        (3u32 | item::STATIC_IV_FLAG).to_le_bytes(),
        7u32.to_le_bytes(),
        40u32.to_le_bytes(),
    ]
    .concat();
    let plain = der::encode(&DerValue::Dict(attrs("static")));
    let (ct3, tag) = gcm::encrypt(&bulk, &gcm::KEYCHAIN_STATIC_IV, &header, &plain).unwrap();
    let mut v3 = header.clone();
    v3.extend_from_slice(&wrapped);
    v3.extend_from_slice(&ct3);
    v3.extend_from_slice(&tag);
    let it = with_bad_blob(&b, v3.clone());
    assert_eq!((it.state.clone(), it.version), (ItemState::Open, Some(3)));
    assert_eq!(it.account(), Some("static"));
    // Clearing the flag (so: empty IV, no AAD) breaks the tag.
    v3[3] &= 0x7F;
    assert_damaged(&b, v3, "tag mismatch");
}

#[test]
fn malformed_entries_and_tables() {
    let b = bag(false);
    let mut no_data = Dictionary::new();
    no_data.insert(
        "v_PersistentRef".into(),
        P::Data(kcw::persistent_ref("genp", 9)),
    );
    let mut string_data = Dictionary::new();
    string_data.insert("v_Data".into(), P::String("nope".into()));
    let mut odd_ref = Dictionary::new();
    odd_ref.insert("v_Data".into(), P::Data(good_blob(&b, 6, "odd ref")));
    odd_ref.insert(
        "v_PersistentRef".into(),
        P::Data(b"inet\0\0\0\0\0\0\0\x07".to_vec()),
    );
    odd_ref.insert("extra".into(), P::Boolean(true));
    let mut uuid_ref = Dictionary::new();
    uuid_ref.insert("v_Data".into(), P::Data(good_blob(&b, 6, "uuid ref")));
    uuid_ref.insert(
        "v_PersistentRef".into(),
        P::Data([b"genp".to_vec(), vec![0xAB; 16]].concat()),
    );
    let bytes = plist(
        vec![
            P::Dictionary(no_data),
            P::String("not a dict".into()),
            P::Dictionary(string_data),
            P::Dictionary(odd_ref),
            P::Dictionary(uuid_ref),
            entry(good_blob(&b, 8, "fine"), "genp", 5),
        ],
        &b.uuid,
        &[
            ("inet", P::String("not an array".into())),
            ("keyboardEntries", P::Array(vec![])),
            ("zzz", P::Integer(1.into())),
        ],
    );
    let kc = keychain::parse(&bytes, Some(&b.keys), Some(&b.uuid)).unwrap();
    assert_eq!(kc.unknown_keys, vec!["keyboardEntries", "zzz"]);
    let reasons: Vec<String> = kc.items.iter().map(|i| format!("{:?}", i.state)).collect();
    assert_eq!(kc.items.len(), 7, "{reasons:?}");
    assert!(damaged_reason(&kc.items[0]).contains("no v_Data"));
    assert_eq!(kc.items[0].rowid, Some(9));
    assert!(damaged_reason(&kc.items[1]).contains("not a dictionary"));
    assert!(damaged_reason(&kc.items[2]).contains("v_Data is a string"));
    assert_eq!(kc.items[3].state, ItemState::Open);
    assert_eq!(kc.items[3].rowid, Some(7));
    assert!(kc.items[3]
        .warnings
        .iter()
        .any(|w| w.contains("names table \"inet\"")));
    assert!(kc.items[3].warnings.iter().any(|w| w.contains("extra")));
    assert_eq!(kc.items[4].state, ItemState::Open);
    assert_eq!(kc.items[4].rowid, None);
    assert!(kc.items[4].warnings.is_empty());
    assert_eq!(kc.items[5].account(), Some("fine"));
    assert_eq!(kc.items[6].table, "inet");
    assert!(damaged_reason(&kc.items[6]).contains("not an array"));
}

#[test]
fn keybag_uuid_mismatch_warns_on_the_whole_keychain() {
    let b = bag(false);
    let bytes = plist(
        vec![entry(good_blob(&b, 6, "a"), "genp", 1)],
        "00000000-1111-2222-3333-444444444444",
        &[],
    );
    let kc = keychain::parse(&bytes, Some(&b.keys), Some(&b.uuid)).unwrap();
    assert_eq!(kc.keybag_uuid_matches, Some(false));
    assert!(
        kc.warnings[0].contains("not the backup keybag's UUID"),
        "{:?}",
        kc.warnings
    );
    assert_eq!(kc.items[0].state, ItemState::Open);
    // Case does not matter.
    let bytes = plist(vec![], &b.uuid.to_uppercase(), &[]);
    let kc = keychain::parse(&bytes, Some(&b.keys), Some(&b.uuid)).unwrap();
    assert_eq!(kc.keybag_uuid_matches, Some(true));
    assert!(kc.warnings.is_empty());
}

#[test]
fn not_a_plist_is_an_error() {
    let b = bag(false);
    for bytes in [
        b"".to_vec(),
        b"garbage".to_vec(),
        b"bplist00\0\0\0".to_vec(),
        {
            let mut out = Vec::new();
            P::Array(vec![]).to_writer_binary(&mut out).unwrap();
            out
        },
    ] {
        assert!(keychain::parse(&bytes, Some(&b.keys), None).is_err());
    }
}

#[test]
fn wrong_device_key_is_detected() {
    let good = bag(true);
    // The same keybag unlocked with another device key: classes 9-11 "open" to garbage.
    let pk = good
        .kb
        .derive_passkey(b"pw", &dataprotection::KdfLimits::default())
        .unwrap();
    let wrong = good.kb.unlock(&pk, Some(&DeviceKey::random())).unwrap();
    let bytes = plist(
        vec![
            entry(good_blob(&good, 6, "a"), "genp", 1),
            entry(good_blob(&good, 10, "b"), "genp", 2),
        ],
        &good.uuid,
        &[],
    );
    let kc = keychain::parse(&bytes, Some(&wrong), Some(&good.uuid)).unwrap();
    assert_eq!(kc.items[0].state, ItemState::Open);
    assert!(damaged_reason(&kc.items[1]).contains("wrong device key"));
    assert!(kc.wrong_device_key());
    let kc = keychain::parse(&bytes, Some(&good.keys), Some(&good.uuid)).unwrap();
    assert_eq!(kc.counts(), (2, 0, 0));
    assert!(!kc.wrong_device_key());
}

#[test]
fn backup_with_a_non_plist_keychain_or_none() {
    let tmp = tempfile::tempdir().unwrap();
    let w = BackupWriter::create(&tmp.path().join("a"), WriterOptions::default()).unwrap();
    w.add(NewRecord::file(
        "KeychainDomain",
        "keychain-backup.plist",
        Content::Bytes(b"\x00not a plist".to_vec()),
    ))
    .unwrap();
    let path = w.finish().unwrap();
    let b = Backup::open(&path).unwrap();
    match keychain::read(&b) {
        Err(Error::Malformed { path, reason }) => {
            assert!(
                path.ends_with("51a4616e576dd33cd2abadfea874eb8ff246bf0e"),
                "{path:?}"
            );
            assert!(reason.contains("keychain-backup.plist"), "{reason}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }

    let w = BackupWriter::create(&tmp.path().join("b"), WriterOptions::default()).unwrap();
    w.add(NewRecord::file(
        "HomeDomain",
        "x",
        Content::Bytes(b"x".to_vec()),
    ))
    .unwrap();
    let path = w.finish().unwrap();
    assert!(keychain::read(&Backup::open(&path).unwrap())
        .unwrap()
        .is_none());
}

#[test]
fn backup_keybag_uuid_mismatch() {
    // An encrypted backup whose keychain plist was made for another keybag.
    let tmp = tempfile::tempdir().unwrap();
    let dk = DeviceKey::random();
    let w = BackupWriter::create(
        &tmp.path().join("a"),
        WriterOptions {
            encryption: Some(Encryption {
                password: Zeroizing::new(PASSWORD.as_bytes().to_vec()),
                dpic: 10_000,
                device_key: Some(dk.clone()),
            }),
            ..WriterOptions::default()
        },
    )
    .unwrap();
    let item = NewKeychainItem::new("genp", ProtectionClass(6)).secret(b"x");
    let foreign = kcw::build_plist(&[item], None, "AAAAAAAA-0000-0000-0000-000000000000").unwrap();
    w.add(NewRecord::file(
        "KeychainDomain",
        "keychain-backup.plist",
        Content::Bytes(foreign),
    ))
    .unwrap();
    let path = w.finish().unwrap();
    let b = open_written(&path, Some(&dk));
    let kc = keychain::read(&b).unwrap().unwrap();
    assert_eq!(
        kc.keybag_uuid.as_deref(),
        Some("aaaaaaaa-0000-0000-0000-000000000000")
    );
    assert_eq!(kc.keybag_uuid_matches, Some(false));
    assert_eq!(kc.warnings.len(), 1);
    assert!(
        kc.warnings[0].contains("another keybag"),
        "{:?}",
        kc.warnings
    );
    let r = damaged_reason(&kc.items[0]);
    assert!(r.contains("encrypted to another keybag"), "{r}");
}

/// Random corruption of whole keychain plists and of DER plaintexts: never a panic.
#[test]
fn random_corruption_never_panics() {
    let b = bag(true);
    let items: Vec<NewKeychainItem> = (6..=11)
        .map(|c| {
            NewKeychainItem::new("genp", ProtectionClass(c))
                .string("acct", "a")
                .attr(
                    "cdat",
                    DerValue::Date(DerDate::new(1_700_000_000, 5).unwrap()),
                )
                .attr("port", DerValue::Integer(443))
                .secret(b"s")
        })
        .collect();
    let good = kcw::build_plist(&items, Some(&b.keys), &b.uuid).unwrap();
    let der_good = der::encode(&DerValue::Dict(attrs("fuzz")));
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..3000 {
        let (src, is_der) = if round % 2 == 0 {
            (&good, false)
        } else {
            (&der_good, true)
        };
        let mut m = src.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % m.len();
            match next() % 3 {
                0 => m[i] ^= 1 << (next() % 8),
                1 => m[i] = next() as u8,
                _ => m.truncate(i.max(1)),
            }
        }
        if is_der {
            let _ = der::decode(&m);
            let sealed = kcw::seal_v3(6, b.keys.key(ProtectionClass(6)).unwrap(), &m);
            let kc = keychain::parse(
                &plist(vec![entry(sealed, "genp", 1)], &b.uuid, &[]),
                Some(&b.keys),
                None,
            )
            .unwrap();
            assert_eq!(kc.items.len(), 1);
        } else if let Ok(kc) = keychain::parse(&m, Some(&b.keys), Some(&b.uuid)) {
            assert!(kc.items.len() <= items.len() + 4);
        }
    }
}

/// An unencrypted backup written with `unencrypted_keybag`: every reader sees its items
/// sealed, but the keybag opens with the two keys the writer was given and then the items do.
#[test]
fn unencrypted_keybag_with_known_keys_opens_for_its_device_only() {
    use mobilebackup::writer::UnencryptedKeybag;
    let dir = tempfile::tempdir().unwrap();
    let pk = Passkey::from_bytes([3; 32]);
    let dk = DeviceKey::random();
    let opts = WriterOptions {
        unencrypted_keybag: Some(UnencryptedKeybag {
            passkey: pk.clone(),
            device_key: dk.clone(),
        }),
        ..WriterOptions::default()
    };
    let w = BackupWriter::create(&dir.path().join("b"), opts).unwrap();
    w.add_keychain(vec![
        NewKeychainItem::new("genp", ProtectionClass(7)).secret(b"migratory"),
        NewKeychainItem::new("keys", ProtectionClass(10)).secret(b"tdo"),
    ])
    .unwrap();
    let out = w.finish().unwrap();
    let b = Backup::open(&out).unwrap();
    let kc = keychain::read(&b).unwrap().unwrap();
    assert_eq!(kc.counts(), (0, 2, 0));
    let cat = b.catalog().unwrap();
    let rec = cat
        .records
        .iter()
        .find(|r| r.relative_path == keychain::RELATIVE_PATH)
        .unwrap();
    let mut bytes = Vec::new();
    b.copy_file(rec, &mut bytes).unwrap();
    let kb = b.keybag().unwrap();
    let keys = kb.unlock(&pk, Some(&dk)).unwrap();
    let kc = keychain::parse(&bytes, Some(&keys), kb.uuid_string().as_deref()).unwrap();
    assert_eq!(kc.counts(), (2, 0, 0));
    // Another device key: every keychain class of an unencrypted backup is WRAP=3.
    let keys = kb.unlock(&pk, Some(&DeviceKey::random())).unwrap();
    let kc = keychain::parse(&bytes, Some(&keys), None).unwrap();
    assert_eq!(kc.counts(), (0, 0, 2));
}
