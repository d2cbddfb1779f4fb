//! Restore and import write regular files in one batch after folders, symlinks and removals:
//! what those steps leave must be what the per-file order used to give.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use device::backup::{backup, BackupOptions, OpError};
use device::import::{import, ImportOptions};
use device::restore::{restore, RestoreOptions};
use device::{Device, EntryKind};
use zeroize::Zeroizing;

const PW: &[u8] = b"batch backup password";
const DOM: &str = "AppDomain-com.example.notes";

fn data(name: &str) -> Vec<u8> {
    format!("{name}: some note text\n").repeat(40).into_bytes()
}

/// A source phone with folders (one 0700), a symlink, files of every class, and a file, a
/// folder and a symlink at paths where the target has something else.
fn source(dir: &Path) {
    let mut d = init(dir, None);
    d.install_app("com.example.notes").unwrap();
    d.mkdir(DOM, "Documents/Private", 0o700).unwrap();
    for (i, class) in [
        PC::COMPLETE,
        PC::COMPLETE_UNLESS_OPEN,
        PC::UNTIL_FIRST_AUTH,
        PC::NONE,
    ]
    .into_iter()
    .enumerate()
    {
        put(
            &mut d,
            DOM,
            &format!("Documents/Private/n{i}.txt"),
            &data(&format!("n{i}")),
            class,
        );
    }
    put(&mut d, DOM, "Documents/was-dir", &data("was-dir"), PC::NONE);
    put(
        &mut d,
        DOM,
        "Documents/was-link",
        &data("was-link"),
        PC::NONE,
    );
    put(
        &mut d,
        DOM,
        "Documents/existing.txt",
        &data("new existing"),
        PC::NONE,
    );
    d.mkdir(DOM, "Documents/was-file", 0o755).unwrap();
    put(
        &mut d,
        DOM,
        "Documents/was-file/inside",
        &data("inside"),
        PC::NONE,
    );
    d.symlink(DOM, "Documents/latest", "Private/n0.txt")
        .unwrap();
}

/// A target phone (another device) in the way of the source's paths.
fn target(dir: &Path) {
    let mut d = init(dir, None);
    d.set_clock(Arc::new(|| 1_000));
    d.install_app("com.example.notes").unwrap();
    d.mkdir(DOM, "Documents/was-dir", 0o755).unwrap();
    d.symlink(DOM, "Documents/was-link", "elsewhere").unwrap();
    put(&mut d, DOM, "Documents/was-file", b"a file", PC::NONE);
    put(&mut d, DOM, "Documents/existing.txt", b"old", PC::NONE);
    put(&mut d, DOM, "Documents/only-on-target", b"kept", PC::NONE);
}

fn make_backup(root: &Path) -> std::path::PathBuf {
    let src = root.join("phone");
    source(&src);
    let out = root.join("backup");
    let opts = BackupOptions {
        password: Some(Zeroizing::new(PW.to_vec())),
        dpic: 1000,
    };
    backup(&Device::open(&src).unwrap(), &out, &opts).unwrap();
    out
}

fn restore_opts() -> RestoreOptions {
    RestoreOptions {
        password: Some(Zeroizing::new(PW.to_vec())),
        ..RestoreOptions::default()
    }
}

/// Breaks the PKCS7 padding of `path`'s blob: flipping the top bit of the next-to-last
/// ciphertext block's last byte flips it in the last plaintext byte (CBC), which then
/// is above 16. Length and every other block stay intact.
fn break_padding(backup_dir: &Path, path: &str) {
    let mut b = mobilebackup::Backup::open(backup_dir).unwrap();
    b.unlock(&mobilebackup::Credentials {
        secret: mobilebackup::Secret::Password(Zeroizing::new(PW.to_vec())),
        device_key: None,
        limits: Default::default(),
    })
    .unwrap();
    let cat = b.catalog().unwrap();
    let rec = cat
        .records
        .iter()
        .find(|r| r.relative_path == path)
        .unwrap();
    let blob = b.blob_path(rec).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    assert!(n >= 32);
    bytes[n - 17] ^= 0x80;
    std::fs::write(&blob, &bytes).unwrap();
}

fn kind(d: &Device, path: &str) -> EntryKind {
    d.entries(Some(DOM))
        .unwrap()
        .into_iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} missing"))
        .kind
}

#[test]
fn restore_replaces_what_is_in_the_way_and_keeps_folder_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = make_backup(tmp.path());
    let dst = tmp.path().join("target");
    target(&dst);
    let r = restore(&dst, &out, &restore_opts()).unwrap();
    let d = Device::open(&dst).unwrap();
    for i in 0..4 {
        let p = format!("Documents/Private/n{i}.txt");
        assert_eq!(get(&d, DOM, &p).unwrap(), data(&format!("n{i}")), "{p}");
    }
    let private = d
        .entries(Some(DOM))
        .unwrap()
        .into_iter()
        .find(|e| e.path == "Documents/Private")
        .unwrap();
    assert_eq!(private.mode, 0o700);
    for (p, name) in [
        ("Documents/was-dir", "was-dir"),
        ("Documents/was-link", "was-link"),
        ("Documents/was-file/inside", "inside"),
    ] {
        assert_eq!(kind(&d, p), EntryKind::File, "{p}");
        assert_eq!(get(&d, DOM, p).unwrap(), data(name), "{p}");
    }
    assert_eq!(kind(&d, "Documents/was-file"), EntryKind::Directory);
    assert_eq!(
        kind(&d, "Documents/latest"),
        EntryKind::Symlink {
            target: "Private/n0.txt".into()
        }
    );
    // Replaced in place: the target's file keeps its birth.
    let existing = d.open_file(DOM, "Documents/existing.txt").unwrap();
    assert_eq!(existing.entry().birth, 1_000);
    assert_eq!(
        get(&d, DOM, "Documents/existing.txt").unwrap(),
        data("new existing")
    );
    assert_eq!(get(&d, DOM, "Documents/only-on-target").unwrap(), b"kept");
    let restored = [
        "n0",
        "n1",
        "n2",
        "n3",
        "was-dir",
        "was-link",
        "new existing",
        "inside",
    ];
    assert_eq!(r.files, restored.len() as u64, "{r:?}");
    let bytes: usize = restored.iter().map(|n| data(n).len()).sum();
    assert_eq!(r.bytes, bytes as u64);
    // No blob is left over from the replaced file: one per regular file.
    let files = d
        .entries(None)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EntryKind::File)
        .count();
    assert_eq!(all_files(&dst.join("store")).len(), files);
}

#[test]
fn bad_padding_fails_a_restore_naming_the_file_and_is_skipped_by_import() {
    let tmp = tempfile::tempdir().unwrap();
    let out = make_backup(tmp.path());
    break_padding(&out, "Documents/Private/n2.txt");

    let dst = tmp.path().join("target");
    target(&dst);
    let before = Device::open(&dst).unwrap().entries(None).unwrap();
    match restore(&dst, &out, &restore_opts()) {
        Err(OpError::Damaged(m)) => {
            assert!(
                m.contains(&format!("{DOM}/Documents/Private/n2.txt: bad padding")),
                "{m}"
            );
        }
        other => panic!("expected a damaged backup, got {other:?}"),
    }
    assert_eq!(Device::open(&dst).unwrap().entries(None).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let imported = tmp.path().join("imported");
    let opts = ImportOptions {
        password: Some(Zeroizing::new(PW.to_vec())),
        passcode_iterations: Some(ITER),
        ..ImportOptions::default()
    };
    let r = import(&imported, &out, &opts).unwrap();
    let skipped: Vec<_> = r.skipped.iter().filter(|s| s.kind == "file").collect();
    assert_eq!(skipped.len(), 1, "{:?}", r.skipped);
    assert_eq!(skipped[0].what, format!("{DOM}/Documents/Private/n2.txt"));
    assert!(
        skipped[0].reason.contains("bad padding"),
        "{:?}",
        skipped[0]
    );
    assert_eq!(r.files, 7);
    let d = Device::open(&imported).unwrap();
    assert_eq!(
        get(&d, DOM, "Documents/Private/n3.txt").unwrap(),
        data("n3")
    );
    assert!(d.open_file(DOM, "Documents/Private/n2.txt").is_err());
}
