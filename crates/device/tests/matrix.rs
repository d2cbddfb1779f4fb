//! The outcome matrix of data-protection-design.md §4.3 (local backups), as one table-driven
//! test: every file class and keychain class × {encrypted, unencrypted} × {same device, other
//! device}. Plus the export rules and the bad-input cases of backup and restore.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use device::backup::{backup, BackupOptions, OpError};
use device::restore::{restore, RestoreOptions};
use device::{DerValue, Device, InitOptions, LockState, ProtectionClass, PutOptions};
use mobilebackup::keychain;
use mobilebackup::Backup;
use zeroize::Zeroizing;

const PASSCODE: &[u8] = b"123456";
const PW: &[u8] = b"matrix backup password";

fn init(dir: &Path, name: &str) -> Device {
    let mut d = Device::init(
        dir,
        InitOptions {
            name: name.into(),
            passcode: Some(Zeroizing::new(PASSCODE.to_vec())),
            passcode_iterations: Some(10),
            ..InitOptions::default()
        },
    )
    .unwrap();
    if d.state() != LockState::Unlocked {
        d.unlock(PASSCODE).unwrap();
    }
    d
}

/// A copy of a device folder: the same hardware (same UID), as after "erase all content".
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        let dst = to.join(e.file_name());
        if t.is_dir() {
            copy_tree(&e.path(), &dst);
        } else if t.is_file() {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

fn open_unlocked(dir: &Path) -> Device {
    let mut d = Device::open(dir).unwrap();
    if d.state() != LockState::Unlocked {
        d.unlock(PASSCODE).unwrap();
    }
    d
}

const FILE_CLASSES: [(&str, u32); 4] = [("A", 1), ("B", 2), ("C", 3), ("D", 4)];
const KC_CLASSES: [(&str, u32); 7] = [
    ("ak", 6),
    ("ck", 7),
    ("dk", 8),
    ("aku", 9),
    ("cku", 10),
    ("dku", 11),
    ("akpu", 12),
];

fn file_path(name: &str) -> String {
    format!("Documents/class-{name}.txt")
}

fn file_bytes(name: &str) -> Vec<u8> {
    format!("contents of the class {name} file\n")
        .repeat(100)
        .into_bytes()
}

fn secret(name: &str) -> Vec<u8> {
    format!("secret-{name}").into_bytes()
}

const APP: &str = "com.example.matrix";

fn app_domain() -> String {
    format!("AppDomain-{APP}")
}

/// Fills the source device: one file per class, one keychain item per class, plus files that a
/// backup must leave out.
fn fill(d: &mut Device) {
    d.install_app(APP).unwrap();
    let dom = app_domain();
    for (name, class) in FILE_CLASSES {
        let opts = PutOptions {
            class: ProtectionClass(class),
            ..PutOptions::default()
        };
        d.put(&dom, &file_path(name), &mut &file_bytes(name)[..], &opts)
            .unwrap();
    }
    for (name, class) in KC_CLASSES {
        let mut a = BTreeMap::new();
        a.insert("svce".to_string(), DerValue::string(format!("svc-{name}")));
        a.insert("acct".to_string(), DerValue::string("alice"));
        a.insert("agrp".to_string(), DerValue::string(APP));
        a.insert("v_Data".to_string(), DerValue::data(secret(name)));
        d.keychain_add("genp", ProtectionClass(class), a).unwrap();
    }
    // Left out of every backup.
    let plain = PutOptions::default();
    d.put(&dom, "Library/Caches/cache.bin", &mut &b"cache"[..], &plain)
        .unwrap();
    d.put(&dom, "tmp/scratch", &mut &b"tmp"[..], &plain)
        .unwrap();
    let flagged = PutOptions {
        exclude_from_backup: true,
        ..PutOptions::default()
    };
    d.put(&dom, "Documents/flagged.db", &mut &b"flagged"[..], &flagged)
        .unwrap();
}

fn backup_opts(encrypted: bool) -> BackupOptions {
    BackupOptions {
        password: encrypted.then(|| Zeroizing::new(PW.to_vec())),
        dpic: 1000,
    }
}

fn restore_opts() -> RestoreOptions {
    RestoreOptions {
        password: Some(Zeroizing::new(PW.to_vec())),
        ..RestoreOptions::default()
    }
}

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    source: PathBuf,
    /// The source device right after init: same UID, no data.
    same_template: PathBuf,
    other_template: PathBuf,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let source = root.join("phone");
    let mut d = init(&source, "Alice's iPhone");
    let same_template = root.join("phone-erased");
    copy_tree(&source, &same_template);
    fill(&mut d);
    drop(d);
    let other_template = root.join("new-phone");
    drop(init(&other_template, "Alice's new iPhone"));
    World {
        _tmp: tmp,
        root,
        source,
        same_template,
        other_template,
    }
}

/// Expected outcome per row: restored in (enc→same, enc→other, unenc→same, unenc→other).
/// (row, file class, keychain class, restored in enc→same, enc→other, unenc→same, unenc→other).
type Row = (&'static str, Option<u32>, Option<u32>, [bool; 4]);

fn matrix() -> Vec<Row> {
    // (row, file class, keychain class, outcomes) — design §4.3.
    vec![
        ("file A", Some(1), None, [true, true, true, true]),
        ("file B", Some(2), None, [true, true, true, true]),
        ("file C", Some(3), None, [true, true, true, true]),
        ("file D", Some(4), None, [true, true, true, true]),
        ("keychain ak", None, Some(6), [true, true, true, false]),
        ("keychain ck", None, Some(7), [true, true, true, false]),
        ("keychain dk", None, Some(8), [true, true, true, false]),
        ("keychain aku", None, Some(9), [true, false, true, false]),
        ("keychain cku", None, Some(10), [true, false, true, false]),
        ("keychain dku", None, Some(11), [true, false, true, false]),
        (
            "keychain akpu",
            None,
            Some(12),
            [false, false, false, false],
        ),
    ]
}

fn name_of(class: u32) -> &'static str {
    FILE_CLASSES
        .iter()
        .chain(KC_CLASSES.iter())
        .find(|(_, c)| *c == class)
        .unwrap()
        .0
}

#[test]
fn outcome_matrix_of_design_4_3() {
    let w = world();
    let source = Device::open(&w.source).unwrap();
    let mut failures = Vec::new();
    for (col_enc, encrypted) in [(0, true), (2, false)] {
        let out = w.root.join(format!("backup-{encrypted}"));
        let rep = backup(&source, &out, &backup_opts(encrypted)).unwrap();
        // Export rules: excluded paths and akpu are left out, with reasons.
        for p in [
            "Library/Caches/cache.bin",
            "tmp/scratch",
            "Documents/flagged.db",
        ] {
            assert!(
                rep.skipped.iter().any(|s| s.what.ends_with(p)),
                "{p} not reported skipped: {:?}",
                rep.skipped
            );
        }
        assert!(rep
            .skipped
            .iter()
            .any(|s| s.class.as_deref() == Some("akpu")));
        assert_eq!(rep.keychain.len(), 6, "{:?}", rep.keychain);
        let b = open_backup(&out);
        let cat = b.catalog().unwrap();
        for p in [
            "Library/Caches/cache.bin",
            "tmp/scratch",
            "Documents/flagged.db",
        ] {
            assert!(
                !cat.records.iter().any(|r| r.relative_path == p),
                "{p} in backup"
            );
        }
        for (col_same, same) in [(0, true), (1, false)] {
            let col = col_enc + col_same;
            let cell = w.root.join(format!("cell-{encrypted}-{same}"));
            copy_tree(
                if same {
                    &w.same_template
                } else {
                    &w.other_template
                },
                &cell,
            );
            let report = restore(&cell, &out, &restore_opts()).unwrap();
            let dev = open_unlocked(&cell);
            let items = dev.keychain_items().unwrap();
            for (row, file_class, kc_class, expect) in matrix() {
                let want = expect[col];
                let got = if let Some(c) = file_class {
                    let name = name_of(c);
                    let mut buf = Vec::new();
                    let ok = dev.get(&app_domain(), &file_path(name), &mut buf).is_ok()
                        && buf == file_bytes(name);
                    let class_kept = dev
                        .entries(Some(&app_domain()))
                        .unwrap()
                        .iter()
                        .any(|e| e.path == file_path(name) && e.class == ProtectionClass(c));
                    ok && class_kept
                } else {
                    let c = kc_class.unwrap();
                    let name = name_of(c);
                    items.iter().any(|i| {
                        i.class == ProtectionClass(c)
                            && i.attributes.get("v_Data").and_then(DerValue::as_data)
                                == Some(&secret(name)[..])
                    })
                };
                if got != want {
                    failures.push(format!(
                        "{row}, {} → {} device: expected {}, got {}",
                        if encrypted {
                            "encrypted"
                        } else {
                            "unencrypted"
                        },
                        if same { "same" } else { "other" },
                        if want { "restored" } else { "lost" },
                        if got { "restored" } else { "lost" },
                    ));
                }
            }
            // Every lost keychain item is reported with a reason.
            let lost_expected = matrix()
                .iter()
                .filter(|(_, _, k, e)| k.is_some_and(|k| k != 12) && !e[col])
                .count();
            assert_eq!(report.lost.len(), lost_expected, "{:?}", report.lost);
            for l in &report.lost {
                assert!(l.reason.contains("another device"), "{l:?}");
            }
            // The cache, tmp and flagged files never come back.
            let entries = dev.entries(Some(&app_domain())).unwrap();
            assert!(!entries.iter().any(|e| e.path == "Documents/flagged.db"));
        }
    }
    assert!(
        failures.is_empty(),
        "outcome matrix mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn locked_device_backs_up_only_what_it_can_read() {
    let w = world();
    let mut d = Device::open(&w.source).unwrap();
    d.unlock(PASSCODE).ok();
    d.lock().unwrap();
    let out = w.root.join("locked-backup");
    let rep = backup(&d, &out, &backup_opts(true)).unwrap();
    let skipped: Vec<_> = rep
        .skipped
        .iter()
        .filter(|s| s.reason.contains("not readable while the device is"))
        .map(|s| s.class.clone().unwrap())
        .collect();
    for c in ["A", "B", "ak", "aku"] {
        assert!(
            skipped.iter().any(|s| s == c),
            "{c} not skipped: {skipped:?}"
        );
    }
    for c in ["C", "D", "ck", "dk", "cku", "dku"] {
        assert!(!skipped.iter().any(|s| s == c), "{c} skipped: {skipped:?}");
    }
    let mut b = Backup::open(&out).unwrap();
    b.unlock(&mobilebackup::Credentials {
        secret: mobilebackup::Secret::Password(Zeroizing::new(PW.to_vec())),
        device_key: Some(d.device_key()),
        limits: Default::default(),
    })
    .unwrap();
    let kc = keychain::read(&b).unwrap().unwrap();
    let mut classes: Vec<u32> = kc.items.iter().map(|i| i.class.unwrap().0).collect();
    classes.sort();
    assert_eq!(classes, vec![7, 8, 10, 11]);
}

fn open_backup(out: &Path) -> Backup {
    let mut b = Backup::open(out).unwrap();
    b.unlock(&mobilebackup::Credentials {
        secret: mobilebackup::Secret::Password(Zeroizing::new(PW.to_vec())),
        device_key: None,
        limits: Default::default(),
    })
    .unwrap();
    b
}

fn snapshot(dir: &Path) -> Vec<String> {
    let d = open_unlocked(dir);
    let mut v: Vec<String> = d
        .entries(None)
        .unwrap()
        .into_iter()
        .map(|e| format!("{}/{} {}", e.domain, e.path, e.size))
        .collect();
    v.extend(
        d.keychain_all()
            .unwrap()
            .into_iter()
            .map(|(r, t, c, _)| format!("kc {t} {r} {}", c.0)),
    );
    v
}

fn leftovers(parent: &Path) -> Vec<String> {
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn restore_refuses_bad_input_and_leaves_the_target_untouched() {
    let w = world();
    let source = Device::open(&w.source).unwrap();
    let out = w.root.join("backup");
    backup(&source, &out, &backup_opts(true)).unwrap();
    let target = w.root.join("target");
    copy_tree(&w.other_template, &target);
    let before = snapshot(&target);

    // Wrong password.
    let wrong = RestoreOptions {
        password: Some(Zeroizing::new(b"not it".to_vec())),
        ..RestoreOptions::default()
    };
    match restore(&target, &out, &wrong) {
        Err(OpError::Backup(mobilebackup::Error::WrongPassword { .. })) => {}
        other => panic!("expected a wrong password, got {other:?}"),
    }
    assert_eq!(snapshot(&target), before);

    // Damaged: one blob truncated (the class-D file, restored late in the order).
    let b = open_backup(&out);
    let cat = b.catalog().unwrap();
    let rec = cat
        .records
        .iter()
        .find(|r| r.relative_path == file_path("D"))
        .unwrap();
    let blob = b.blob_path(rec).unwrap();
    let bytes = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, &bytes[..bytes.len() - 7]).unwrap();
    let err = restore(&target, &out, &restore_opts()).unwrap_err();
    assert!(
        matches!(err, OpError::Damaged(_) | OpError::Backup(_)),
        "{err:?}"
    );
    assert_eq!(snapshot(&target), before, "a damaged backup half-restored");
    assert_eq!(leftovers(&w.root), Vec::<String>::new());
    // A missing blob as well.
    std::fs::remove_file(&blob).unwrap();
    assert!(restore(&target, &out, &restore_opts()).is_err());
    assert_eq!(snapshot(&target), before);
    assert_eq!(leftovers(&w.root), Vec::<String>::new());

    // Not a device folder.
    let plain = w.root.join("just-a-folder");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("x"), b"x").unwrap();
    match restore(&plain, &out, &restore_opts()) {
        Err(OpError::Device(device::Error::NotADevice { .. })) => {}
        other => panic!("expected not-a-device, got {other:?}"),
    }
    // Not a backup.
    match restore(&target, &plain, &restore_opts()) {
        Err(OpError::Backup(_)) => {}
        other => panic!("expected not-a-backup, got {other:?}"),
    }
    assert_eq!(snapshot(&target), before);

    // A locked target is refused.
    let mut t = Device::open(&target).unwrap();
    t.lock().unwrap();
    drop(t);
    assert!(matches!(
        restore(&target, &out, &restore_opts()),
        Err(OpError::Refused(_))
    ));
}

#[test]
fn incremental_backup_reuses_unchanged_blobs() {
    let w = world();
    let mut d = open_unlocked(&w.source);
    let out = w.root.join("inc");
    let first = backup(&d, &out, &backup_opts(true)).unwrap();
    assert_eq!(first.reused, 0);
    let again = backup(&d, &out, &backup_opts(true)).unwrap();
    assert_eq!(again.reused, again.files, "{again:?}");
    // Change one file: it alone is re-encrypted.
    let opts = PutOptions {
        class: ProtectionClass(3),
        mtime: Some(2_000_000_000),
        ..PutOptions::default()
    };
    d.put(&app_domain(), &file_path("C"), &mut &b"changed"[..], &opts)
        .unwrap();
    let third = backup(&d, &out, &backup_opts(true)).unwrap();
    assert_eq!(third.reused, third.files - 1);
    assert_eq!(leftovers(&w.root), Vec::<String>::new());

    // Remove a file and add one. The backup is updated in place: kept blobs are the same
    // files on disk (same inode), the removed file's blob is deleted, nothing is left over.
    let blobs = |out: &Path| -> BTreeMap<String, u64> {
        use std::os::unix::fs::MetadataExt;
        let mut m = BTreeMap::new();
        for sub in std::fs::read_dir(out).unwrap().map(|e| e.unwrap()) {
            let name = sub.file_name().to_string_lossy().into_owned();
            if name.len() == 2 && sub.path().is_dir() {
                for b in std::fs::read_dir(sub.path()).unwrap().map(|e| e.unwrap()) {
                    let id = b.file_name().to_string_lossy().into_owned();
                    m.insert(id, b.metadata().unwrap().ino());
                }
            } else {
                assert!(!name.starts_with('.'), "left in the backup: {name}");
            }
        }
        m
    };
    let before = blobs(&out);
    let gone = mobilebackup::layout::file_id(&app_domain(), &file_path("D"));
    let added_path = "Documents/added.txt";
    let added = mobilebackup::layout::file_id(&app_domain(), added_path);
    let kept = mobilebackup::layout::file_id(&app_domain(), &file_path("A"));
    assert!(before.contains_key(&gone) && !before.contains_key(&added));
    d.remove(&app_domain(), &file_path("D")).unwrap();
    d.put(&app_domain(), added_path, &mut &b"added"[..], &opts)
        .unwrap();
    let fourth = backup(&d, &out, &backup_opts(true)).unwrap();
    assert_eq!(fourth.reused, fourth.files - 1, "{fourth:?}");
    let after = blobs(&out);
    assert!(
        !after.contains_key(&gone),
        "the removed file's blob is deleted"
    );
    assert!(after.contains_key(&added));
    assert_eq!(
        after[&kept], before[&kept],
        "an unchanged blob is not rewritten"
    );
    assert_eq!(leftovers(&w.root), Vec::<String>::new());
    let mut b = Backup::open(&out).unwrap();
    b.unlock(&mobilebackup::Credentials {
        secret: mobilebackup::Secret::Password(Zeroizing::new(PW.to_vec())),
        device_key: None,
        limits: Default::default(),
    })
    .unwrap();
    assert_eq!(
        b.catalog()
            .unwrap()
            .records
            .iter()
            .filter(|r| r.kind() == mobilebackup::RecordKind::File)
            .count(),
        after.len(),
        "one blob per file record, no orphans"
    );
    // And the result restores to the new content.
    let cell = w.root.join("cell");
    copy_tree(&w.same_template, &cell);
    restore(&cell, &out, &restore_opts()).unwrap();
    let dev = open_unlocked(&cell);
    let mut buf = Vec::new();
    dev.get(&app_domain(), &file_path("C"), &mut buf).unwrap();
    assert_eq!(buf, b"changed");
    let mut buf = Vec::new();
    dev.get(&app_domain(), &file_path("A"), &mut buf).unwrap();
    assert_eq!(buf, file_bytes("A"));
    let mut buf = Vec::new();
    dev.get(&app_domain(), added_path, &mut buf).unwrap();
    assert_eq!(buf, b"added");
}
