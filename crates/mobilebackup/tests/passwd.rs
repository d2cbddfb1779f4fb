//! Password change (`mobilebackup::passwd`, `Keybag::rewrap`) on copies of the
//! encrypted fixture, checked against its ground truth and, for the states a
//! crash can leave, against iphone_backup_decrypt (KEYBAG_PY_IBD).
//!
//! Each `prepare` runs the real 10M-round KDF once for the new password; the old
//! side always uses the fixture's published passkey.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use dataprotection::{DeviceKey, KdfLimits, Keybag, Passkey, ProtectionClass};
use mobilebackup::passwd::{
    change_password, check_leftover, Hooks, PasswordChange, Step, MANIFEST_PLIST_BAK,
};
use mobilebackup::plists::read_dict;
use mobilebackup::{Backup, Credentials, Error, RecordKind, Secret};
use serde_json::Value;
use sha2::{Digest, Sha256};

const OLD_PASSWORD: &str = "correct horse battery staple";
const NEW_PASSWORD: &str = "new: Tr0ub4dor & 3 ünïcode";

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(testdata("enc-small-public.expected.json")).unwrap())
        .unwrap()
}

fn old_passkey() -> Passkey {
    Passkey::from_hex(expected()["passkey_hex"].as_str().unwrap()).unwrap()
}

fn old_creds() -> Credentials {
    Credentials {
        secret: Secret::Passkey(old_passkey()),
        device_key: None,
        limits: KdfLimits::default(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// A copy of the encrypted fixture: (guard, backup folder).
fn fixture_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("backup");
    copy_dir(&testdata("enc-small-public"), &dest);
    (dir, dest)
}

/// Every file under `root` (relative path → bytes).
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `domain/relativePath` → sha256 of every regular file, from the ground truth.
fn expected_files() -> BTreeMap<String, String> {
    expected()["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["flags"] == 1)
        .map(|r| {
            (
                format!(
                    "{}/{}",
                    r["domain"].as_str().unwrap(),
                    r["relativePath"].as_str().unwrap()
                ),
                r["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Opens `dir` with `passkey` and decrypts every file: `Ok` with the hashes,
/// or the error of the first step that failed.
fn open_with(dir: &Path, passkey: &Passkey) -> Result<BTreeMap<String, String>, Error> {
    let mut b = Backup::open(dir)?;
    b.unlock_with_passkey(passkey, None)?;
    let cat = b.catalog()?;
    let mut out = BTreeMap::new();
    for r in cat.records.iter().filter(|r| r.kind() == RecordKind::File) {
        let mut buf = Vec::new();
        let rep = b.copy_file(r, &mut buf)?;
        assert!(rep.padding_ok, "{}", r.display_path());
        out.insert(r.display_path(), hex::encode(Sha256::digest(&buf)));
    }
    Ok(out)
}

/// Asserts that `dir` opens with exactly one of the two passkeys, giving the fixture's files.
fn assert_opens_only_with(dir: &Path, good: &Passkey, bad: &Passkey, what: &str) {
    assert_eq!(
        open_with(dir, good).unwrap_or_else(|e| panic!("{what}: {e}")),
        expected_files(),
        "{what}"
    );
    assert!(
        matches!(open_with(dir, bad), Err(Error::WrongPassword { .. })),
        "{what}: the other password must be refused"
    );
}

/// iphone_backup_decrypt on `dir` with `password`: (exit code, files on success).
fn ibd(dir: &Path, password: &str) -> (i32, BTreeMap<String, String>) {
    let py = std::env::var_os("KEYBAG_PY_IBD").expect(
        "KEYBAG_PY_IBD is not set: run the tests through scripts/test.sh, which installs iphone_backup_decrypt",
    );
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(py)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/py/ibd_extract.py"))
        .arg(dir)
        .arg(out_dir.path())
        .env("KEYBAG_TEST_PASSWORD", password)
        .output()
        .expect("python runs");
    let code = out.status.code().unwrap();
    if code != 0 {
        return (code, BTreeMap::new());
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = v["files"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    (code, files)
}

#[test]
fn rewrap_of_the_fixture_keybag_keeps_every_class_key() {
    let exp = expected();
    let dict = read_dict(&testdata("enc-small-public/Manifest.plist")).unwrap();
    let kb = Keybag::parse(dict["BackupKeyBag"].as_data().unwrap()).unwrap();
    let old = old_passkey();
    let (new_kb, new_pk) = kb
        .rewrap(&old, NEW_PASSWORD.as_bytes(), &KdfLimits::default())
        .unwrap();
    assert_ne!(new_kb.salt, kb.salt);
    assert_ne!(new_kb.dpsl, kb.dpsl);
    assert_eq!(
        (new_kb.iter, new_kb.dpic, new_kb.dpwt),
        (Some(10_000), Some(10_000_000), kb.dpwt)
    );
    assert_eq!((&new_kb.uuid, &new_kb.hmck), (&kb.uuid, &kb.hmck));
    let dk = DeviceKey::from_hex(exp["device_key_835_hex"].as_str().unwrap()).unwrap();
    let keys = new_kb.unlock(&new_pk, Some(&dk)).unwrap();
    let classes = exp["keybag"]["classes"].as_object().unwrap();
    assert_eq!(classes.len(), 11);
    for (class, c) in classes {
        let rec = new_kb
            .classes
            .iter()
            .find(|r| r.class_raw.to_string() == *class)
            .unwrap();
        assert_eq!(hex::encode(rec.uuid.as_ref().unwrap()), c["uuid_hex"]);
        assert_eq!(
            rec.wrap,
            c["wrap"].as_u64().unwrap() as u32,
            "class {class}"
        );
        assert_ne!(hex::encode(&rec.wpky), c["wpky_hex"], "class {class}");
        let key = keys
            .key(ProtectionClass(class.parse().unwrap()))
            .unwrap()
            .to_hex();
        assert_eq!(key, c["key_hex"], "class {class}");
    }
    assert!(matches!(
        new_kb.unlock(&old, None),
        Err(dataprotection::Error::WrongPassword)
    ));
    assert!(matches!(
        kb.rewrap(&new_pk, b"x", &KdfLimits::default()),
        Err(dataprotection::Error::WrongPassword)
    ));
}

#[test]
fn change_password_rewrites_only_the_keybag() {
    let (_tmp, dir) = fixture_copy();
    let before = snapshot(&dir);
    let change = PasswordChange::prepare(&dir, &old_creds(), NEW_PASSWORD.as_bytes()).unwrap();
    assert_eq!(snapshot(&dir), before, "prepare writes nothing");
    let new_pk = change.new_passkey().clone();
    let report = change.commit(&Hooks::default()).unwrap();
    assert_eq!(report.rewrapped, 11);
    assert_eq!(report.device_bound, 4);
    assert_eq!((report.iter, report.dpic), (Some(10_000), Some(10_000_000)));
    assert_eq!(report.records, 40);
    assert!(report.sample.is_some());
    assert!(!report.replaced_leftover);

    let after = snapshot(&dir);
    assert!(!dir.join(MANIFEST_PLIST_BAK).exists());
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "no file added or removed"
    );
    for (name, bytes) in &before {
        if name != "Manifest.plist" {
            assert_eq!(&after[name], bytes, "{name} is untouched");
        }
    }
    // Manifest.plist: binary, same keys in the same order, only BackupKeyBag differs.
    assert!(after["Manifest.plist"].starts_with(b"bplist00"));
    let old = read_dict(&testdata("enc-small-public/Manifest.plist")).unwrap();
    let new = read_dict(&dir.join("Manifest.plist")).unwrap();
    assert_eq!(
        old.keys().collect::<Vec<_>>(),
        new.keys().collect::<Vec<_>>()
    );
    for (k, v) in &old {
        if k == "BackupKeyBag" {
            assert_ne!(&new[k], v);
        } else {
            assert_eq!(&new[k], v, "{k}");
        }
    }
    assert_opens_only_with(&dir, &new_pk, &old_passkey(), "after the change");
}

#[test]
fn temp_files_of_a_killed_change_are_removed_by_the_next_one() {
    // Found by the CLI's crash trials: a change killed while writing Manifest.plist.bak or
    // Manifest.plist leaves its temp file, which nothing removed.
    let (_tmp, dir) = fixture_copy();
    let before = snapshot(&dir);
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = [
        format!(".Manifest.plist.keybag-tmp-{dead}-Ab12Cd"),
        format!(".Manifest.plist.bak.keybag-tmp-{dead}-xYz789"),
    ];
    for name in &stale {
        std::fs::write(dir.join(name), b"half a plist").unwrap();
    }
    // One of a change still running (this process) is left alone.
    let live = format!(".Manifest.plist.keybag-tmp-{}-live01", std::process::id());
    std::fs::write(dir.join(&live), b"in progress").unwrap();
    change_password(
        &dir,
        &old_creds(),
        NEW_PASSWORD.as_bytes(),
        &Hooks::default(),
    )
    .unwrap();
    for name in &stale {
        assert!(!dir.join(name).exists(), "{name} removed");
    }
    std::fs::remove_file(dir.join(&live)).unwrap();
    assert_eq!(
        snapshot(&dir).keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
}

#[test]
fn a_crash_after_any_step_leaves_a_backup_that_opens_with_one_password() {
    let old = old_passkey();
    for step in Step::ALL {
        let (_tmp, dir) = fixture_copy();
        let change = PasswordChange::prepare(&dir, &old_creds(), NEW_PASSWORD.as_bytes()).unwrap();
        let new = change.new_passkey().clone();
        let crash = move |s: Step| {
            if s == step {
                Err(Error::Io {
                    path: PathBuf::from("crash"),
                    source: std::io::Error::other(format!("simulated crash after {s:?}")),
                })
            } else {
                Ok(())
            }
        };
        let e = change
            .commit(&Hooks {
                after_step: Some(&crash),
            })
            .unwrap_err();
        assert!(e.to_string().contains("simulated crash"), "{step:?}: {e}");
        let what = format!("crash after {step:?}");
        let bak = dir.join(MANIFEST_PLIST_BAK);
        match step {
            Step::BackedUp => {
                assert_opens_only_with(&dir, &old, &new, &what);
                // The leftover .bak is identical: the next run replaces it and succeeds.
                assert!(check_leftover(&dir).unwrap());
                let r = change_password(
                    &dir,
                    &old_creds(),
                    NEW_PASSWORD.as_bytes(),
                    &Hooks::default(),
                )
                .unwrap();
                assert!(r.replaced_leftover);
                assert!(!bak.exists());
                assert!(matches!(
                    open_with(&dir, &old),
                    Err(Error::WrongPassword { .. })
                ));
            }
            Step::Written | Step::Verified => {
                assert!(bak.is_file(), "{what}");
                assert_opens_only_with(&dir, &new, &old, &what);
                if step == Step::Written {
                    // Third-party reader: the new password opens it, the old one is refused.
                    let (code, files) = ibd(&dir, NEW_PASSWORD);
                    assert_eq!(code, 0, "{what}: ibd with the new password");
                    assert_eq!(files, expected_files(), "{what}");
                    assert_eq!(ibd(&dir, OLD_PASSWORD).0, 5, "{what}: ibd, old password");
                }
                // The next run refuses, with either password, and says how to recover.
                let before = snapshot(&dir);
                for creds in [
                    old_creds(),
                    Credentials {
                        secret: Secret::Passkey(new.clone()),
                        device_key: None,
                        limits: KdfLimits::default(),
                    },
                ] {
                    let e = change_password(&dir, &creds, b"third", &Hooks::default())
                        .unwrap_err()
                        .to_string();
                    assert!(
                        e.contains("Manifest.plist.bak") && e.contains("interrupted"),
                        "{e}"
                    );
                }
                assert_eq!(snapshot(&dir), before, "{what}: nothing written");
                // Following the instructions (new password works → delete .bak) recovers.
                std::fs::remove_file(&bak).unwrap();
                assert!(!check_leftover(&dir).unwrap());
            }
            Step::Cleaned => {
                assert!(!bak.exists());
                assert_opens_only_with(&dir, &new, &old, &what);
            }
        }
    }
}

#[test]
fn failed_verification_puts_the_old_manifest_back() {
    let (_tmp, dir) = fixture_copy();
    let before = snapshot(&dir);
    let plist = dir.join("Manifest.plist");
    // Something damages the new Manifest.plist between writing and checking it.
    let damage = |s: Step| {
        if s == Step::Written {
            let mut bytes = std::fs::read(&plist).unwrap();
            let n = bytes.len();
            bytes[n / 2] ^= 0x55;
            std::fs::write(&plist, bytes).unwrap();
        }
        Ok(())
    };
    let e = change_password(
        &dir,
        &old_creds(),
        NEW_PASSWORD.as_bytes(),
        &Hooks {
            after_step: Some(&damage),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("put back") && e.contains("unchanged"), "{e}");
    assert_eq!(
        snapshot(&dir),
        before,
        "restored byte for byte, no .bak left"
    );
    assert_eq!(open_with(&dir, &old_passkey()).unwrap(), expected_files());
}

#[test]
fn refusals_write_nothing() {
    // Unencrypted backup: there is no password to change.
    let mvt = testdata("mvt-ios-backup");
    let e = change_password(&mvt, &old_creds(), b"new", &Hooks::default()).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("not encrypted"), "{e}");

    let (_tmp, dir) = fixture_copy();
    let before = snapshot(&dir);
    // Wrong old key.
    let wrong = Credentials {
        secret: Secret::Passkey(Passkey::from_bytes([1; 32])),
        device_key: None,
        limits: KdfLimits::default(),
    };
    let e = change_password(&dir, &wrong, b"new", &Hooks::default()).unwrap_err();
    assert!(matches!(e, Error::WrongPassword { .. }), "{e}");
    // Empty new password.
    let e = change_password(&dir, &old_creds(), b"", &Hooks::default()).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    assert_eq!(snapshot(&dir), before);

    // A .bak that differs from Manifest.plist: refused before any work.
    let bak = dir.join(MANIFEST_PLIST_BAK);
    std::fs::write(&bak, b"something else").unwrap();
    let e = change_password(&dir, &old_creds(), b"new", &Hooks::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("interrupted") && e.contains("keybag verify"),
        "{e}"
    );
    std::fs::remove_file(&bak).unwrap();
    // A .bak that is not a regular file.
    std::fs::create_dir(&bak).unwrap();
    let e = check_leftover(&dir).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    std::fs::remove_dir(&bak).unwrap();
    assert_eq!(snapshot(&dir), before);
}
