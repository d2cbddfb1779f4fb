//! "Encrypt local backup" held by the device: the first backup with a password keeps the
//! backup keybag in `secure/backup-keybag` (device-bound), later backups reuse it without a
//! password and without any KDF run.

mod common;

use std::path::Path;

use common::{init, put, PC};
use dataprotection::KdfLimits;
use device::backup::{backup, backup_with_device_setting, BackupOptions, OpError};
use mobilebackup::{Backup, RecordKind};
use zeroize::Zeroizing;

const PW: &[u8] = b"backup password on the phone";
const OTHER_PW: &[u8] = b"a new backup password";

fn with_pw(pw: &[u8]) -> BackupOptions {
    BackupOptions {
        password: Some(Zeroizing::new(pw.to_vec())),
        dpic: 1000,
    }
}

fn no_pw() -> BackupOptions {
    BackupOptions {
        password: None,
        dpic: 1000,
    }
}

fn keybag_bytes(out: &Path) -> Vec<u8> {
    Backup::open(out).unwrap().keybag().unwrap().to_bytes()
}

/// Opens `out` with `pw` through keybag's reader: every file's content, by path.
fn read_all(out: &Path, pw: &[u8]) -> mobilebackup::Result<Vec<(String, Vec<u8>)>> {
    let mut b = Backup::open(out)?;
    let pk = b.derive_passkey(pw, &KdfLimits::default())?;
    b.unlock_with_passkey(&pk, None)?;
    let cat = b.catalog()?;
    let mut files = Vec::new();
    for r in cat.records.iter().filter(|r| r.kind() == RecordKind::File) {
        if r.domain == "KeychainDomain" {
            continue;
        }
        let mut buf = Vec::new();
        b.copy_file(r, &mut buf)?;
        files.push((r.relative_path.clone(), buf));
    }
    files.sort();
    Ok(files)
}

fn fill(dev: &mut device::Device) {
    put(dev, "HomeDomain", "Library/Notes/a.txt", b"note a", PC(3));
    put(dev, "HomeDomain", "Library/Notes/b.txt", b"note b", PC(1));
    put(dev, "HomeDomain", "Library/Notes/d.txt", b"note d", PC(4));
}

#[test]
fn second_backup_without_password_reuses_the_device_keybag_and_runs_no_kdf() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("phone");
    let mut dev = init(&dir, None);
    fill(&mut dev);
    assert!(!dev.backup_encryption());
    let out = tmp.path().join("backup");

    let first = backup(&dev, &out, &with_pw(PW)).unwrap();
    assert!(first.encrypted && first.backup_password_set && !first.device_keybag);
    assert_eq!(first.kdf_runs, 1);
    assert!(dev.backup_encryption());
    let kb = keybag_bytes(&out);
    let want = read_all(&out, PW).unwrap();
    assert_eq!(want.len(), 3);

    // Like a phone: no password asked, same keybag, nothing re-encrypted, no KDF.
    let again = backup_with_device_setting(&dev, &out, &no_pw()).unwrap();
    assert!(again.encrypted && again.device_keybag && !again.backup_password_set);
    assert_eq!(again.kdf_runs, 0);
    assert_eq!(again.reused, again.files, "{again:?}");
    assert_eq!(keybag_bytes(&out), kb);
    assert_eq!(read_all(&out, PW).unwrap(), want);

    // Into a new folder too (no previous backup): still no KDF, same keybag.
    let fresh = tmp.path().join("fresh");
    let r = backup_with_device_setting(&dev, &fresh, &no_pw()).unwrap();
    assert_eq!((r.kdf_runs, r.reused, r.encrypted), (0, 0, true));
    assert_eq!(keybag_bytes(&fresh), kb);
    assert_eq!(read_all(&fresh, PW).unwrap(), want);
    assert!(matches!(
        read_all(&fresh, OTHER_PW),
        Err(mobilebackup::Error::WrongPassword { .. })
    ));

    // The same password given again: one KDF to check it, the kept keybag stays.
    let same = backup(&dev, &out, &with_pw(PW)).unwrap();
    assert_eq!(same.kdf_runs, 1);
    assert!(!same.backup_password_set);
    assert_eq!(same.reused, same.files);
    assert_eq!(keybag_bytes(&out), kb);

    // `backup` without a password (the caller's explicit choice) stays unencrypted.
    let plain = tmp.path().join("plain");
    let r = backup(&dev, &plain, &no_pw()).unwrap();
    assert!(!r.encrypted && r.kdf_runs == 0);
    assert!(!Backup::open(&plain).unwrap().is_encrypted());

    // The passkey is not stored in the clear.
    let kept = std::fs::read(dir.join("secure/backup-keybag")).unwrap();
    let mut b = Backup::open(&out).unwrap();
    let pk = b.derive_passkey(PW, &KdfLimits::default()).unwrap();
    assert!(!common::contains(&kept, pk.as_bytes()));
    b.unlock_with_passkey(&pk, None).unwrap();
}

#[test]
fn a_different_password_makes_a_new_keybag_and_the_old_one_no_longer_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("phone");
    let mut dev = init(&dir, None);
    fill(&mut dev);
    let out = tmp.path().join("backup");
    backup(&dev, &out, &with_pw(PW)).unwrap();
    let old_kb = keybag_bytes(&out);
    let want = read_all(&out, PW).unwrap();

    let changed = backup_with_device_setting(&dev, &out, &with_pw(OTHER_PW)).unwrap();
    assert!(changed.backup_password_set);
    // Checked against the kept keybag, then the new keybag; the previous backup opens with
    // the replaced keybag's passkey (no KDF) and its blobs are re-wrapped, not re-encrypted.
    assert_eq!(changed.kdf_runs, 2);
    assert_eq!(changed.reused, changed.files);
    assert_ne!(keybag_bytes(&out), old_kb);
    assert_eq!(read_all(&out, OTHER_PW).unwrap(), want);
    assert!(matches!(
        read_all(&out, PW),
        Err(mobilebackup::Error::WrongPassword { .. })
    ));

    // The device now holds the new one: no password, no KDF, opens with the new password.
    let again = backup_with_device_setting(&dev, &out, &no_pw()).unwrap();
    assert_eq!((again.kdf_runs, again.device_keybag), (0, true));
    assert_eq!(read_all(&out, OTHER_PW).unwrap(), want);
    assert!(read_all(&out, PW).is_err());
}

#[test]
fn the_kept_keybag_is_bound_to_the_device_uid() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("phone");
    let mut dev = init(&dir, None);
    fill(&mut dev);
    backup(&dev, &tmp.path().join("backup"), &with_pw(PW)).unwrap();

    // Another device (another UID) given this device's secure/backup-keybag.
    let other_dir = tmp.path().join("other");
    let mut other = init(&other_dir, None);
    fill(&mut other);
    std::fs::copy(
        dir.join("secure/backup-keybag"),
        other_dir.join("secure/backup-keybag"),
    )
    .unwrap();
    assert!(other.backup_encryption());
    let out = tmp.path().join("other-backup");
    match backup_with_device_setting(&other, &out, &no_pw()) {
        Err(OpError::Refused(msg)) => assert!(msg.contains("another device"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!out.exists());
    // With the password given, a fresh keybag for that device replaces it.
    let r = backup_with_device_setting(&other, &out, &with_pw(PW)).unwrap();
    assert!(r.backup_password_set);
    assert_eq!(r.kdf_runs, 1);
    assert_eq!(read_all(&out, PW).unwrap().len(), 3);
    let r = backup_with_device_setting(&other, &out, &no_pw()).unwrap();
    assert_eq!((r.kdf_runs, r.device_keybag, r.reused), (0, true, 3));
}

#[test]
fn without_encryption_on_a_phone_backup_is_unencrypted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("phone");
    let mut dev = init(&dir, None);
    fill(&mut dev);
    let out = tmp.path().join("backup");
    let r = backup_with_device_setting(&dev, &out, &no_pw()).unwrap();
    assert!(!r.encrypted && !r.device_keybag && r.kdf_runs == 0);
    assert!(!dev.backup_encryption());
    assert!(!Backup::open(&out).unwrap().is_encrypted());
}

/// An unchanged device backed up into the folder of its last backup: the backup is kept as
/// it is (Manifest.db and blobs untouched), only its dates move. Any change (a file, a
/// keychain item, the lock state, another folder in between, a password to set) makes a real
/// backup again.
#[test]
fn an_unchanged_device_keeps_its_backup_and_any_change_makes_a_real_one() {
    use mobilebackup::plists::read_dict;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("phone");
    let mut dev = init(&dir, Some(b"1234"));
    dev.unlock(b"1234").unwrap();
    fill(&mut dev);
    let out = tmp.path().join("backup");
    let first = backup(&dev, &out, &with_pw(PW)).unwrap();
    assert!(!first.unchanged);
    let want = read_all(&out, PW).unwrap();
    let db = std::fs::read(out.join("Manifest.db")).unwrap();
    let status_uuid = |out: &Path| read_dict(&out.join("Status.plist")).unwrap()["UUID"].clone();
    let uuid0 = status_uuid(&out);

    let same = backup_with_device_setting(&dev, &out, &no_pw()).unwrap();
    assert!(same.unchanged, "{same:?}");
    assert_eq!(
        (same.files, same.reused, same.kdf_runs),
        (first.files, first.files, 0)
    );
    assert_eq!(same.skipped, first.skipped);
    assert_eq!(same.keychain, first.keychain);
    assert_eq!(
        std::fs::read(out.join("Manifest.db")).unwrap(),
        db,
        "kept as it is"
    );
    assert_ne!(status_uuid(&out), uuid0, "a new snapshot");
    assert_eq!(read_all(&out, PW).unwrap(), want);
    assert!(!out.join(mobilebackup::update::UPDATE_DIR).exists());

    // A new file.
    put(
        &mut dev,
        "HomeDomain",
        "Library/Notes/e.txt",
        b"note e",
        PC(3),
    );
    let r = backup_with_device_setting(&dev, &out, &no_pw()).unwrap();
    assert!(!r.unchanged);
    assert_eq!(read_all(&out, PW).unwrap().len(), want.len() + 1);
    assert!(
        backup_with_device_setting(&dev, &out, &no_pw())
            .unwrap()
            .unchanged
    );

    // A keychain item.
    dev.keychain_add(
        "genp",
        dataprotection::ProtectionClass::KC_WHEN_UNLOCKED,
        common::password_item("svc", b"secret"),
    )
    .unwrap();
    let r = backup_with_device_setting(&dev, &out, &no_pw()).unwrap();
    assert!(!r.unchanged);
    assert_eq!(r.keychain.len(), first.keychain.len() + 1);

    // The lock state: class A is left out while locked.
    dev.lock().unwrap();
    let r = backup_with_device_setting(&dev, &out, &no_pw()).unwrap();
    assert!(!r.unchanged);
    assert!(
        r.skipped.iter().any(|s| s.what.ends_with("b.txt")),
        "{:?}",
        r.skipped
    );
    dev.unlock(b"1234").unwrap();
    assert!(
        !backup_with_device_setting(&dev, &out, &no_pw())
            .unwrap()
            .unchanged
    );

    // A backup into another folder in between: the first folder gets a real backup.
    let other = tmp.path().join("other");
    backup_with_device_setting(&dev, &other, &no_pw()).unwrap();
    assert!(
        !backup_with_device_setting(&dev, &out, &no_pw())
            .unwrap()
            .unchanged
    );

    // The backup folder changed behind the device's back.
    assert!(
        backup_with_device_setting(&dev, &out, &no_pw())
            .unwrap()
            .unchanged
    );
    std::fs::write(out.join("Info.plist"), b"not a plist").unwrap();
    let r = backup_with_device_setting(&dev, &out, &no_pw());
    assert!(r.is_ok_and(|r| !r.unchanged));
    assert_eq!(read_all(&out, PW).unwrap().len(), want.len() + 1);

    // A password given is always checked: no shortcut.
    let r = backup_with_device_setting(&dev, &out, &with_pw(PW)).unwrap();
    assert!(!r.unchanged && r.kdf_runs == 1);
}

/// Unencrypted, then the same device asked for an encrypted backup of the unchanged device:
/// it must become encrypted (the shortcut never applies with a password).
#[test]
fn an_unchanged_unencrypted_backup_still_becomes_encrypted_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("phone");
    let mut dev = init(&dir, None);
    fill(&mut dev);
    let out = tmp.path().join("backup");
    backup_with_device_setting(&dev, &out, &no_pw()).unwrap();
    assert!(
        backup_with_device_setting(&dev, &out, &no_pw())
            .unwrap()
            .unchanged
    );
    assert!(!Backup::open(&out).unwrap().is_encrypted());
    let r = backup_with_device_setting(&dev, &out, &with_pw(PW)).unwrap();
    assert!(!r.unchanged && r.encrypted);
    assert!(Backup::open(&out).unwrap().is_encrypted());
    assert_eq!(read_all(&out, PW).unwrap().len(), 3);
}
