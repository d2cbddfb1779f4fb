//! Domains, paths, metadata, apps, encryption at rest, bad input.

mod common;

use common::*;
use device::{Device, EntryKind, Error, PutOptions};

#[test]
fn files_have_metadata_and_parents() {
    let (_t, _dir, mut dev) = new_device(Some(PASSCODE));
    dev.put(
        "HomeDomain",
        "Library/Notes/notes.db",
        &mut &b"notes"[..],
        &PutOptions {
            class: PC::COMPLETE,
            mode: 0o600,
            uid: 501,
            gid: 20,
            mtime: Some(1_600_000_000),
            exclude_from_backup: true,
        },
    )
    .unwrap();
    let e = dev.entries(Some("HomeDomain")).unwrap();
    let paths: Vec<_> = e
        .iter()
        .map(|e| (e.path.as_str(), e.kind.clone()))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("Library", EntryKind::Directory),
            ("Library/Notes", EntryKind::Directory),
            ("Library/Notes/notes.db", EntryKind::File),
        ]
    );
    let f = &e[2];
    assert_eq!(
        (f.mode, f.uid, f.gid, f.mtime, f.size),
        (0o600, 501, 20, 1_600_000_000, 5)
    );
    assert_eq!(f.class, PC::COMPLETE);
    assert!(f.exclude_from_backup);
    dev.set_exclude_from_backup("HomeDomain", "Library/Notes/notes.db", false)
        .unwrap();
    assert!(!dev.entries(None).unwrap()[2].exclude_from_backup);
    // Replace keeps birth, changes content.
    put(
        &mut dev,
        "HomeDomain",
        "Library/Notes/notes.db",
        b"v2",
        PC::NONE,
    );
    assert_eq!(
        get(&dev, "HomeDomain", "Library/Notes/notes.db").unwrap(),
        b"v2"
    );
    assert_eq!(dev.entries(None).unwrap().len(), 3);
    assert_eq!(all_files(&_dir.join("store")).len(), 1, "old blob removed");
    // A file cannot be a parent; a directory cannot be replaced by a file.
    assert!(matches!(
        dev.put(
            "HomeDomain",
            "Library/Notes/notes.db/x",
            &mut &b""[..],
            &PutOptions::default()
        ),
        Err(Error::WrongKind { .. })
    ));
    assert!(matches!(
        dev.put(
            "HomeDomain",
            "Library",
            &mut &b""[..],
            &PutOptions::default()
        ),
        Err(Error::WrongKind { .. })
    ));
    dev.symlink("HomeDomain", "Library/link", "Notes/notes.db")
        .unwrap();
    assert!(dev.entries(None).unwrap().iter().any(|e| e.kind
        == EntryKind::Symlink {
            target: "Notes/notes.db".into()
        }));
    // rm: non-empty directory refused; file then directory fine.
    assert!(dev.remove("HomeDomain", "Library/Notes").is_err());
    dev.remove("HomeDomain", "Library/Notes/notes.db").unwrap();
    dev.remove("HomeDomain", "Library/Notes").unwrap();
    assert!(matches!(
        get(&dev, "HomeDomain", "Library/Notes/notes.db"),
        Err(Error::NotFound { .. })
    ));
    assert!(all_files(&_dir.join("store")).is_empty());
    // Empty and large files round-trip (large: several 1 MiB chunks, odd length).
    put(
        &mut dev,
        "CameraRollDomain",
        "Media/DCIM/empty",
        b"",
        PC::NONE,
    );
    assert_eq!(
        get(&dev, "CameraRollDomain", "Media/DCIM/empty").unwrap(),
        b""
    );
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    put(
        &mut dev,
        "CameraRollDomain",
        "Media/DCIM/IMG_0001.HEIC",
        &big,
        PC::COMPLETE_UNLESS_OPEN,
    );
    assert!(get(&dev, "CameraRollDomain", "Media/DCIM/IMG_0001.HEIC").unwrap() == big);
}

#[test]
fn app_containers() {
    let (_t, _dir, mut dev) = new_device(None);
    dev.install_app("com.example.notes").unwrap();
    dev.install_app("com.example.chat").unwrap();
    dev.install_app("com.example.chat").unwrap();
    assert_eq!(
        dev.apps().unwrap(),
        vec!["com.example.chat", "com.example.notes"]
    );
    let e = dev.entries(Some("AppDomain-com.example.notes")).unwrap();
    let p: Vec<_> = e
        .iter()
        .map(|e| (e.path.as_str(), e.exclude_from_backup))
        .collect();
    assert_eq!(
        p,
        vec![
            ("Documents", false),
            ("Library", false),
            ("Library/Caches", true),
            ("Library/Preferences", false),
            ("tmp", true),
        ]
    );
    assert!(dev.install_app("../evil").is_err());
    assert!(dev.install_app("").is_err());
    assert!(dev.install_app("a/b").is_err());
}

#[test]
fn paths_that_escape_a_domain_are_refused() {
    let (_t, _dir, mut dev) = new_device(None);
    for (domain, path) in [
        ("HomeDomain", "../x"),
        ("HomeDomain", "a/../../x"),
        ("HomeDomain", "/etc/passwd"),
        ("HomeDomain", "a\0b"),
        ("HomeDomain", "a\\..\\b"),
        ("HomeDomain", "a//b"),
        ("HomeDomain", "./a"),
        ("HomeDomain", ""),
        ("..", "x"),
        ("Home/Domain", "x"),
        ("", "x"),
    ] {
        let r = dev.put(domain, path, &mut &b"x"[..], &PutOptions::default());
        assert!(
            matches!(r, Err(Error::BadPath { .. })),
            "{domain:?} {path:?}: {r:?}"
        );
        assert!(matches!(
            get(&dev, domain, path),
            Err(Error::BadPath { .. })
        ));
        assert!(matches!(
            dev.remove(domain, path),
            Err(Error::BadPath { .. })
        ));
        assert!(matches!(
            dev.mkdir(domain, path, 0o755),
            Err(Error::BadPath { .. })
        ));
    }
    assert!(dev.entries(None).unwrap().is_empty());
    assert!(matches!(
        dev.put(
            "HomeDomain",
            "x",
            &mut &b"x"[..],
            &PutOptions {
                class: PC(7),
                ..Default::default()
            }
        ),
        Err(Error::BadClass { .. })
    ));
}

#[test]
fn not_a_device_folder() {
    let t = tempfile::tempdir().unwrap();
    for setup in ["missing", "empty", "garbage", "other-json", "a-file"] {
        let dir = t.path().join(setup);
        match setup {
            "missing" => {}
            "empty" => std::fs::create_dir(&dir).unwrap(),
            "garbage" => {
                std::fs::create_dir(&dir).unwrap();
                std::fs::write(dir.join("device.json"), b"\xff\x00garbage").unwrap();
            }
            "other-json" => {
                std::fs::create_dir(&dir).unwrap();
                std::fs::write(dir.join("device.json"), br#"{"format":"x"}"#).unwrap();
            }
            _ => std::fs::write(&dir, b"file").unwrap(),
        }
        match Device::open(&dir) {
            Err(Error::NotADevice { path, .. }) => assert_eq!(path, dir),
            other => panic!("{setup}: {other:?}"),
        }
    }
    // init refuses a non-empty folder.
    let d = t.path().join("garbage");
    assert!(matches!(
        Device::init(&d, device::InitOptions::default()),
        Err(Error::AlreadyExists { .. })
    ));
}

#[test]
fn contents_and_secrets_are_encrypted_at_rest() {
    let (_t, dir, mut dev) = new_device(Some(PASSCODE));
    let marker = b"PLAINTEXT-MARKER-8c1f0e2d-do-not-leak";
    let mut data = marker.to_vec();
    data.extend_from_slice(&[b'x'; 5000]);
    data.extend_from_slice(marker);
    for (i, class) in [1, 2, 3, 4].into_iter().enumerate() {
        put(&mut dev, "HomeDomain", &format!("f{i}"), &data, PC(class));
    }
    let secret = b"KEYCHAIN-SECRET-77aa19";
    for class in [6, 8, 10, 12] {
        let mut item = password_item("svc", secret);
        item.insert(
            "labl".into(),
            device::DerValue::String("LABEL-MARKER-55".into()),
        );
        dev.keychain_add("genp", PC(class), item).unwrap();
    }
    drop(dev);
    for f in all_files(&dir) {
        let bytes = std::fs::read(&f).unwrap();
        for needle in [
            &marker[..],
            &secret[..],
            b"LABEL-MARKER-55",
            b"com.example.group",
            PASSCODE,
        ] {
            assert!(
                !contains(&bytes, needle),
                "{} holds {:?}",
                f.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
}

#[cfg(unix)]
#[test]
fn uid_key_is_private_and_never_in_the_api_output() {
    use std::os::unix::fs::PermissionsExt;
    let (_t, dir, dev) = new_device(None);
    let meta = std::fs::metadata(dir.join("secure/uid.key")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    let secure = std::fs::metadata(dir.join("secure")).unwrap();
    assert_eq!(secure.permissions().mode() & 0o777, 0o700);
    let uid = std::fs::read(dir.join("secure/uid.key")).unwrap();
    // Key 0x835 = AES-256-ECB(UID, 01…01).
    use aes::cipher::{BlockEncrypt, KeyInit};
    let mut block = [1u8; 16].into();
    aes::Aes256::new(uid.as_slice().into()).encrypt_block(&mut block);
    assert_eq!(dev.device_key().as_bytes()[..], block[..]);
    assert!(!format!("{dev:?}").contains(&hex::encode(&uid)));
}
