//! Push and pull against the fixtures and keybag's own device backups: every file of the
//! pulled folder byte-identical to the pushed one; a re-keyed backup of the same phone adds
//! almost nothing; the repository's objects hold no plaintext of the backup. Each runs on a
//! local folder and on a real S3-compatible server (s3s-fs, started here on loopback; the
//! test command installs it and exports KEYBAG_S3S_FS).

#[allow(dead_code)]
#[path = "../../vault/tests/common/s3.rs"]
mod s3;

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use cloud::pull::{pull, PullOptions};
use cloud::push::{push, PushOptions};
use common::{files, passkey_creds, repo_on, testdata};
use dataprotection::KdfLimits;
use mobilebackup::{Credentials, Secret};
use vault::storage::{Kind, LocalStorage, Storage};

fn round_trip(
    backup: &Path,
    creds: Option<Credentials>,
    expect_rekeyed: bool,
    s: Arc<dyn Storage>,
) {
    let t = tempfile::tempdir().unwrap();
    let r = repo_on(s);
    let rep = push(
        &r,
        backup,
        &PushOptions {
            credentials: creds,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(rep.rekeyed > 0, expect_rekeyed, "{rep:?}");
    let out = t.path().join("pulled");
    let p = pull(&r, "latest", &out, &PullOptions::default()).unwrap();
    assert!(p.failed.is_empty(), "{:?}", p.failed);
    let a = files(backup);
    let b = files(&out);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(b[k] == *v, "{k} differs");
    }
}

#[test]
fn fixtures_come_back_byte_for_byte() {
    let t = tempfile::tempdir().unwrap();
    let local = |n: &str| Arc::new(LocalStorage::new(t.path().join(n))) as Arc<dyn Storage>;
    let enc = testdata("enc-small-public");
    round_trip(&enc, Some(passkey_creds()), true, local("a"));
    round_trip(&enc, None, false, local("b"));
    round_trip(&testdata("mvt-ios-backup"), None, false, local("c"));
}

#[test]
fn fixtures_come_back_byte_for_byte_through_s3() {
    let server = s3::S3Server::start();
    let enc = testdata("enc-small-public");
    round_trip(&enc, Some(passkey_creds()), true, server.storage("a"));
    round_trip(&enc, None, false, server.storage("b/c"));
    round_trip(
        &testdata("mvt-ios-backup"),
        None,
        false,
        server.storage("d"),
    );
}

/// A device with `n` files of `size` bytes (the same content each time it is made).
fn device(dir: &Path, n: usize, size: usize) -> device::Device {
    let mut d = device::Device::init(
        dir,
        device::InitOptions {
            name: "Dedup phone".into(),
            passcode_iterations: Some(1000),
            ..Default::default()
        },
    )
    .unwrap();
    let mut x = 12345u32;
    for i in 0..n {
        let data: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        d.put(
            "HomeDomain",
            &format!("Library/f{i}.bin"),
            &mut &data[..],
            &device::PutOptions::default(),
        )
        .unwrap();
    }
    d
}

#[test]
fn a_rekeyed_backup_of_the_same_phone_adds_almost_nothing() {
    let t = tempfile::tempdir().unwrap();
    rekeyed(Arc::new(LocalStorage::new(t.path().join("repo"))));
}

#[test]
fn a_rekeyed_backup_of_the_same_phone_adds_almost_nothing_in_s3() {
    let server = s3::S3Server::start();
    rekeyed(server.storage("rekeyed"));
}

fn rekeyed(s: Arc<dyn Storage>) {
    let t = tempfile::tempdir().unwrap();
    let dev = device(&t.path().join("phone"), 60, 200_000);
    let opts = device::backup::BackupOptions {
        password: Some(zeroize::Zeroizing::new(b"backup pw".to_vec())),
        dpic: 1000,
    };
    let b1 = t.path().join("b1");
    let b2 = t.path().join("b2");
    device::backup::backup(&dev, &b1, &opts).unwrap();
    device::backup::backup(&dev, &b2, &opts).unwrap();
    // Every blob differs (new keybag, new file keys).
    let f1 = files(&b1);
    let f2 = files(&b2);
    let blobs: Vec<_> = f1.keys().filter(|k| k.len() == 43).collect();
    assert!(blobs.len() >= 60);
    assert!(blobs.iter().all(|k| f1[*k] != f2[*k]));
    let creds = || {
        Some(Credentials {
            secret: Secret::Password(zeroize::Zeroizing::new(b"backup pw".to_vec())),
            device_key: None,
            limits: KdfLimits::default(),
        })
    };
    let r = repo_on(s.clone());
    let first = push(
        &r,
        &b1,
        &PushOptions {
            credentials: creds(),
            ..Default::default()
        },
    )
    .unwrap();
    let stored1: u64 = s.list(Kind::Data).unwrap().iter().map(|(_, n)| n).sum();
    let second = push(
        &r,
        &b2,
        &PushOptions {
            credentials: creds(),
            ..Default::default()
        },
    )
    .unwrap();
    let stored2: u64 = s.list(Kind::Data).unwrap().iter().map(|(_, n)| n).sum();
    let added = stored2 - stored1;
    assert!(
        added * 20 <= stored1,
        "the second push added {added} bytes to {stored1} ({:?} / {:?})",
        first.stored_bytes,
        second.stored_bytes
    );
    assert_eq!(second.seq, 1);
    // Both come back byte for byte.
    for (snap, src) in [(first.snapshot, &b1), (second.snapshot, &b2)] {
        let out = t.path().join(format!("out-{}", snap.short()));
        let p = pull(&r, &snap.to_hex(), &out, &PullOptions::default()).unwrap();
        assert!(p.failed.is_empty(), "{:?}", p.failed);
        assert_eq!(files(&out), files(src));
    }
}

#[test]
fn no_object_holds_a_name_or_content_in_the_clear() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    privacy(Arc::new(LocalStorage::new(&repo)), &repo);
}

#[test]
fn no_object_holds_a_name_or_content_in_the_clear_in_s3() {
    let server = s3::S3Server::start();
    // The S3 server's own data folder: every object as it is stored on its disk.
    privacy(server.storage("private"), &server.bucket_dir());
}

/// Pushes backups full of canaries into `s` and searches every file under `stored` (where
/// the store keeps its objects) for them.
fn privacy(s: Arc<dyn Storage>, stored: &Path) {
    let t = tempfile::tempdir().unwrap();
    let mut dev = device::Device::init(
        &t.path().join("phone"),
        device::InitOptions {
            name: "CANARY-DEVICE-NAME".into(),
            passcode_iterations: Some(1000),
            ..Default::default()
        },
    )
    .unwrap();
    dev.put(
        "HomeDomain",
        "Library/CANARY-FILE-NAME.txt",
        &mut &b"CANARY-FILE-CONTENT repeated CANARY-FILE-CONTENT"[..],
        &device::PutOptions::default(),
    )
    .unwrap();
    let mut item = BTreeMap::new();
    item.insert(
        "svce".to_string(),
        device::DerValue::String("CANARY-KEYCHAIN-SERVICE".into()),
    );
    item.insert(
        "acct".to_string(),
        device::DerValue::String("CANARY-KEYCHAIN-ACCOUNT".into()),
    );
    item.insert(
        "agrp".to_string(),
        device::DerValue::String("com.example.group".into()),
    );
    item.insert(
        "v_Data".to_string(),
        device::DerValue::Data(zeroize::Zeroizing::new(b"CANARY-KEYCHAIN-SECRET".to_vec())),
    );
    dev.keychain_add("genp", dataprotection::ProtectionClass(7), item)
        .unwrap();
    // An unencrypted backup and an encrypted one pushed with its password (its files and
    // keychain then go into the vault as plaintext, sealed).
    let plain = t.path().join("plain");
    device::backup::backup(
        &dev,
        &plain,
        &device::backup::BackupOptions {
            password: None,
            dpic: 1000,
        },
    )
    .unwrap();
    let enc = t.path().join("enc");
    let pw = || zeroize::Zeroizing::new(b"backup pw".to_vec());
    device::backup::backup(
        &dev,
        &enc,
        &device::backup::BackupOptions {
            password: Some(pw()),
            dpic: 1000,
        },
    )
    .unwrap();
    let r = repo_on(s);
    push(&r, &plain, &PushOptions::default()).unwrap();
    let creds = Credentials {
        secret: Secret::Password(pw()),
        device_key: None,
        limits: KdfLimits::default(),
    };
    let rep = push(
        &r,
        &enc,
        &PushOptions {
            credentials: Some(creds),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(rep.rekeyed > 0);
    let needles: [&[u8]; 8] = [
        b"CANARY-DEVICE-NAME",
        b"CANARY-FILE-NAME",
        b"CANARY-FILE-CONTENT",
        b"CANARY-KEYCHAIN-SERVICE",
        b"CANARY-KEYCHAIN-ACCOUNT",
        b"CANARY-KEYCHAIN-SECRET",
        b"HomeDomain",
        b"Library",
    ];
    // Sanity: the plaintext is really there to find in the backup pushed unencrypted.
    assert!(files(&plain)
        .values()
        .any(|b| b.windows(19).any(|w| w == b"CANARY-FILE-CONTENT")));
    let objects = files(stored);
    assert!(objects.len() > 3);
    for (name, bytes) in &objects {
        for n in needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n),
                "{name} holds {:?}",
                String::from_utf8_lossy(n)
            );
            assert!(!name.as_bytes().windows(n.len()).any(|w| w == n));
        }
    }
    // And both come back.
    let out = t.path().join("out");
    let p = pull(&r, "latest", &out, &PullOptions::default()).unwrap();
    assert!(p.failed.is_empty());
    assert_eq!(files(&out), files(&enc));
    let all = r.snapshots().unwrap();
    let out = t.path().join("out-plain");
    pull(&r, &all[0].0.to_hex(), &out, &PullOptions::default()).unwrap();
    assert_eq!(files(&out), files(&plain));
}
