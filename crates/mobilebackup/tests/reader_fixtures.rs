//! The reader against fixtures we did not make: a real iOS 14.3 backup (mvt) and an
//! encrypted backup from an independent generator, with its ground truth.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dataprotection::{DeviceKey, KdfLimits, Keybag, Passkey, ProtectionClass};
use mobilebackup::{Backup, Credentials, Error, RecordKind, Secret};
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

fn passkey(exp: &Value) -> Passkey {
    Passkey::from_hex(exp["passkey_hex"].as_str().unwrap()).unwrap()
}

#[test]
fn mvt_backup_lists_every_record() {
    let b = Backup::open(testdata("mvt-ios-backup")).unwrap();
    assert!(!b.is_encrypted());
    assert!(b.manifest().is_none());
    let cat = b.catalog().unwrap();
    assert_eq!(cat.records.len(), 3721);
    assert!(cat.skipped.is_empty());
    let mut kinds = BTreeMap::new();
    for r in &cat.records {
        assert!(r.problem.is_none(), "{}: {:?}", r.display_path(), r.problem);
        assert_eq!(
            r.file_id,
            mobilebackup::layout::file_id(&r.domain, &r.relative_path)
        );
        *kinds.entry(r.kind()).or_insert(0) += 1;
    }
    assert_eq!(kinds[&RecordKind::File], 1089);
    assert_eq!(kinds[&RecordKind::Directory], 2618);
    assert_eq!(kinds[&RecordKind::Symlink], 14);
}

#[test]
fn mvt_backup_present_blobs_read_back_identical_and_missing_ones_are_reported() {
    let b = Backup::open(testdata("mvt-ios-backup")).unwrap();
    let cat = b.catalog().unwrap();
    let (mut present, mut missing) = (0, 0);
    for r in cat.records.iter().filter(|r| r.kind() == RecordKind::File) {
        let mut out = Vec::new();
        match b.copy_file(r, &mut out) {
            Ok(rep) => {
                present += 1;
                assert_eq!(out, std::fs::read(b.blob_path(r).unwrap()).unwrap());
                assert_eq!(rep.bytes, out.len() as u64);
                assert!(rep.padding_ok);
            }
            Err(Error::MissingBlob { path }) => {
                missing += 1;
                assert!(path.ends_with(&r.file_id));
            }
            Err(e) => panic!("{}: {e}", r.display_path()),
        }
    }
    assert_eq!((present, missing), (10, 1079));
}

#[test]
fn encrypted_fixture_records_match_ground_truth() {
    let exp = expected();
    let mut b = Backup::open(testdata("enc-small-public")).unwrap();
    assert!(b.is_encrypted());
    // Listing needs the key: Manifest.db is encrypted.
    assert!(matches!(b.catalog(), Err(Error::Locked { .. })));
    b.unlock_with_passkey(&passkey(&exp), None).unwrap();
    let cat = b.catalog().unwrap();
    let want = exp["records"].as_array().unwrap();
    assert_eq!(cat.records.len(), want.len());
    let by_id: BTreeMap<_, _> = cat.records.iter().map(|r| (r.file_id.clone(), r)).collect();
    for w in want {
        let r = by_id[w["fileID"].as_str().unwrap()];
        let f = r.file.as_ref().unwrap();
        assert_eq!(r.domain, w["domain"].as_str().unwrap());
        assert_eq!(r.relative_path, w["relativePath"].as_str().unwrap());
        assert_eq!(r.flags, w["flags"].as_i64().unwrap());
        assert_eq!(f.size, w["size"].as_u64().unwrap());
        assert_eq!(
            f.protection_class as u64,
            w["protection_class"].as_u64().unwrap()
        );
        assert_eq!(f.mode as u64, w["mode"].as_u64().unwrap());
        assert_eq!(f.mtime, w["mtime"].as_i64().unwrap());
        assert_eq!(f.birth, w["birth"].as_i64().unwrap());
        assert_eq!(f.inode, w["inode"].as_u64().unwrap());
        assert_eq!(f.target.as_deref(), w["target"].as_str());
        assert_eq!(
            f.digest.as_ref().map(hex::encode).as_deref(),
            w["digest_hex"].as_str()
        );
        if r.kind() == RecordKind::File {
            let mut out = Vec::new();
            let rep = b.copy_file(r, &mut out).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&out)),
                w["sha256"].as_str().unwrap(),
                "{}",
                r.display_path()
            );
            assert_eq!(rep.bytes, w["actual_size"].as_u64().unwrap());
            // Digest is the SHA-1 of the stored blob.
            if let Some(d) = &f.digest {
                let blob = std::fs::read(b.blob_path(r).unwrap()).unwrap();
                assert_eq!(d.as_slice(), sha1::Sha1::digest(&blob).as_slice());
            }
        }
    }
}

#[test]
fn encrypted_fixture_keybag_round_trips_and_unlocks_per_wrap() {
    let exp = expected();
    let b = Backup::open(testdata("enc-small-public")).unwrap();
    let raw = b.manifest().unwrap().keybag.clone().unwrap();
    let kb = Keybag::parse(&raw).unwrap();
    assert_eq!(kb.to_bytes(), raw, "re-encoding is byte-identical");
    assert_eq!(
        kb.uuid_string().unwrap(),
        exp["keybag"]["uuid"].as_str().unwrap()
    );
    assert_eq!(kb.dpic, Some(10_000_000));
    let pk = passkey(&exp);
    let without = kb.unlock(&pk, None).unwrap();
    let dk = DeviceKey::from_hex(exp["device_key_835_hex"].as_str().unwrap()).unwrap();
    let with = kb.unlock(&pk, Some(&dk)).unwrap();
    for (class, c) in exp["keybag"]["classes"].as_object().unwrap() {
        let class = ProtectionClass(class.parse().unwrap());
        let want = c["key_hex"].as_str().unwrap();
        assert_eq!(with.key(class).unwrap().to_hex(), want);
        match c["wrap"].as_u64().unwrap() {
            2 => assert_eq!(without.key(class).unwrap().to_hex(), want),
            3 => assert!(matches!(
                without.key(class),
                Err(dataprotection::Error::NeedsDeviceKey(_))
            )),
            w => panic!("unexpected wrap {w}"),
        }
    }
}

#[test]
fn encrypted_fixture_password_kdf_and_wrong_password() {
    let exp = expected();
    let mut b = Backup::open(testdata("enc-small-public")).unwrap();
    let pw = Zeroizing::new(exp["password"].as_str().unwrap().as_bytes().to_vec());
    let derived = b.derive_passkey(&pw, &KdfLimits::default()).unwrap();
    assert_eq!(derived.to_hex(), exp["passkey_hex"].as_str().unwrap());
    let creds = Credentials {
        secret: Secret::Passkey(Passkey::from_bytes([1; 32])),
        device_key: None,
        limits: KdfLimits::default(),
    };
    let e = b.unlock(&creds).unwrap_err();
    assert!(matches!(e, Error::WrongPassword { .. }));
    assert!(e.to_string().contains("Manifest.plist"), "{e}");
    // A keybag asking for an absurd DPIC is refused before any work.
    let tight = KdfLimits {
        max_dpic: 1_000_000,
        max_iter: 10_000,
    };
    let e = b.derive_passkey(b"x", &tight).unwrap_err();
    assert!(e.to_string().contains("cap"), "{e}");
}

/// Copies a fixture folder into a temp dir so a test can damage it.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(name);
    let src = testdata(name);
    for entry in walk(&src) {
        let rel = entry.strip_prefix(&src).unwrap();
        let to = dst.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    (tmp, dst)
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

// Spec P18: some tools re-encrypt Manifest.db without PKCS7 padding.
#[test]
fn unpadded_manifest_db_is_still_read() {
    let exp = expected();
    let (_tmp, dir) = copy_fixture("enc-small-public");
    let key = dataprotection::Key256::from_hex(exp["manifest_key"]["db_key_hex"].as_str().unwrap())
        .unwrap();
    let db = dir.join("Manifest.db");
    let plain = dataprotection::cbc::decrypt_padded(&key, std::fs::read(&db).unwrap()).unwrap();
    assert_eq!(plain.len() % 4096, 0);
    let mut unpadded = plain.clone();
    dataprotection::cbc::Encryptor::new(&key)
        .encrypt(&mut unpadded)
        .unwrap();
    std::fs::write(&db, &unpadded).unwrap();
    let mut b = Backup::open(&dir).unwrap();
    b.unlock_with_passkey(&passkey(&exp), None).unwrap();
    assert_eq!(b.catalog().unwrap().records.len(), 40);
}

#[test]
fn damaged_manifest_db_and_manifest_plist_give_clear_errors() {
    let exp = expected();
    // Encrypted Manifest.db with a flipped byte in its first block.
    let (_tmp, dir) = copy_fixture("enc-small-public");
    let db = dir.join("Manifest.db");
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[3] ^= 0xff;
    std::fs::write(&db, &bytes).unwrap();
    let mut b = Backup::open(&dir).unwrap();
    b.unlock_with_passkey(&passkey(&exp), None).unwrap();
    let e = b.catalog().unwrap_err().to_string();
    assert!(
        e.contains("Manifest.db") && e.contains("did not decrypt"),
        "{e}"
    );
    // Truncated to a length that is not a multiple of 16.
    std::fs::write(&db, &bytes[..bytes.len() - 7]).unwrap();
    let e = b.catalog().unwrap_err().to_string();
    assert!(
        e.contains("Manifest.db") && e.contains("multiple of 16"),
        "{e}"
    );
    // Manifest.plist is not a plist.
    std::fs::write(dir.join("Manifest.plist"), b"garbage").unwrap();
    let e = Backup::open(&dir).unwrap_err().to_string();
    assert!(
        e.contains("Manifest.plist") && e.contains("not a property list"),
        "{e}"
    );
    // Not a backup at all, and the legacy format.
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Backup::open(empty.path()),
        Err(Error::NotABackup { .. })
    ));
    std::fs::write(empty.path().join("Manifest.mbdb"), b"mbdb\x05\x00").unwrap();
    assert!(matches!(
        Backup::open(empty.path()),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        Backup::open(dir.join("Manifest.plist")),
        Err(Error::NotABackup { .. })
    ));
}
