//! `keybag passwd` on copies of the encrypted fixture, checked with keybag itself,
//! the fixture's ground truth and iphone_backup_decrypt (KEYBAG_PY_IBD; the test
//! fails when it is missing).
//!
//! Secrets never go in argv: passwords come from KEYBAG_PASSWORD,
//! KEYBAG_NEW_PASSWORD or files. Each successful change runs the real 10M-round
//! KDF once for the new password; the old side uses --derived-key where it can.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::{
    as_map, enc, fixture_copy, mvt, os, run_py, tree_hashes, Keybag, Out, PASSKEY as OLD_PASSKEY,
    PASSWORD as OLD_PASSWORD,
};
use dataprotection::{KdfLimits, Passkey};
use mobilebackup::passwd::{Hooks, PasswordChange, Step};
use mobilebackup::{Credentials, Secret};
use serde_json::Value;

const NEW_PASSWORD: &str = "n3w pässword, with spaces";

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

/// `domain/relativePath` → sha256 of the plaintext of every regular file (ground truth).
fn expected_files() -> BTreeMap<String, String> {
    common::expected_files()
        .into_iter()
        .map(|(domain, rel, _, sha)| (format!("{domain}/{rel}"), sha))
        .collect()
}

/// Runs keybag with no secrets inherited and no terminal on stdin.
fn keybag(args: &[&OsStr], env: &[(&str, &str)]) -> Out<String> {
    let o = Keybag::new(args)
        .password(None)
        .env_remove("KEYBAG_NEW_PASSWORD")
        .envs(env)
        .run()
        .into_text();
    for pw in [OLD_PASSWORD, NEW_PASSWORD] {
        assert!(
            !o.stdout.contains(pw) && !o.stderr.contains(pw),
            "a password was printed"
        );
    }
    o
}

/// iphone_backup_decrypt: (exit code, `domain/relativePath` → sha256 on success).
fn ibd(dir: &Path, password: &str) -> (i32, BTreeMap<String, String>) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = run_py(
        "KEYBAG_PY_IBD",
        "ibd_extract.py",
        &[dir, out_dir.path()],
        Some(password),
    );
    let code = out.status.code().unwrap();
    if code != 0 {
        return (code, BTreeMap::new());
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (code, as_map(&v["files"]))
}

#[test]
fn passwd_then_keybag_and_iphone_backup_decrypt_open_only_with_the_new_password() {
    let (tmp, dir) = fixture_copy(&enc());
    let before = snapshot(&dir);
    let o = keybag(
        &[os("passwd"), dir.as_os_str()],
        &[
            ("KEYBAG_PASSWORD", OLD_PASSWORD),
            ("KEYBAG_NEW_PASSWORD", NEW_PASSWORD),
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("Password changed"), "{}", o.stdout);
    assert!(
        o.stdout.contains("11 class keys re-wrapped"),
        "{}",
        o.stdout
    );

    // Only Manifest.plist changed; nothing added (no .bak, no temp file) or removed.
    let after = snapshot(&dir);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &before {
        if name != "Manifest.plist" {
            assert_eq!(&after[name], bytes, "{name} (Manifest.db, blobs) untouched");
        }
    }
    let plist = |b: &[u8]| match plist::Value::from_reader(std::io::Cursor::new(b)).unwrap() {
        plist::Value::Dictionary(d) => d,
        _ => panic!("not a dictionary"),
    };
    let (old_d, new_d) = (
        plist(&before["Manifest.plist"]),
        plist(&after["Manifest.plist"]),
    );
    assert_eq!(old_d["ManifestKey"], new_d["ManifestKey"]);
    assert_ne!(old_d["BackupKeyBag"], new_d["BackupKeyBag"]);

    // keybag: the new password extracts the ground truth, the old one is refused.
    let out = tmp.path().join("extract");
    let o = keybag(
        &[os("extract"), dir.as_os_str(), out.as_os_str()],
        &[("KEYBAG_PASSWORD", NEW_PASSWORD)],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let ours = tree_hashes(&out);
    assert_eq!(ours, expected_files());
    let o = keybag(
        &[os("verify"), dir.as_os_str()],
        &[("KEYBAG_PASSWORD", OLD_PASSWORD)],
    );
    assert_eq!(o.code, 5, "old password: {}", o.stderr);

    // iphone_backup_decrypt: the same, with identical bytes.
    let (code, theirs) = ibd(&dir, NEW_PASSWORD);
    assert_eq!(code, 0, "ibd with the new password");
    assert_eq!(theirs, ours);
    assert_eq!(ibd(&dir, OLD_PASSWORD).0, 5, "ibd with the old password");
}

#[test]
fn passwd_from_files_with_json_output() {
    let (tmp, dir) = fixture_copy(&enc());
    let new_file = tmp.path().join("new-password");
    std::fs::write(&new_file, format!("{NEW_PASSWORD}\r\nignored\n")).unwrap();
    let o = keybag(
        &[
            os("passwd"),
            dir.as_os_str(),
            os("--json"),
            os("--derived-key"),
            os(OLD_PASSKEY),
            os("--new-password-file"),
            new_file.as_os_str(),
        ],
        // The file wins over the environment.
        &[("KEYBAG_NEW_PASSWORD", "not this one")],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["changed"], true);
    assert_eq!(v["rewrapped"], 11);
    assert_eq!(v["device_bound"], 4);
    assert_eq!(v["dpic"], 10_000_000);
    assert_eq!(v["iter"], 10_000);
    assert_eq!(v["records"], 40);
    assert_eq!(v["replaced_leftover"], false);
    // The first line of the file is the new password.
    let o = keybag(
        &[
            os("verify"),
            dir.as_os_str(),
            os("--password-file"),
            new_file.as_os_str(),
        ],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
}

#[test]
fn passwd_refusals_change_nothing() {
    let (tmp, dir) = fixture_copy(&enc());
    let before = snapshot(&dir);
    let d = dir.as_os_str();
    let with_old = |extra: &[&OsStr], env: &[(&str, &str)]| {
        let mut args = vec![os("passwd"), d, os("--derived-key"), os(OLD_PASSKEY)];
        args.extend_from_slice(extra);
        keybag(&args, env)
    };

    // Wrong old key: exit 5.
    let o = keybag(
        &[os("passwd"), d, os("--derived-key"), os(&"00".repeat(32))],
        &[("KEYBAG_NEW_PASSWORD", NEW_PASSWORD)],
    );
    assert_eq!(o.code, 5, "{}", o.stderr);
    // No new password and no terminal.
    let o = with_old(&[], &[]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("no new password"), "{}", o.stderr);
    // Empty new passwords.
    let o = with_old(&[], &[("KEYBAG_NEW_PASSWORD", "")]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("empty"), "{}", o.stderr);
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, "\nsecond line\n").unwrap();
    let o = with_old(&[os("--new-password-file"), empty.as_os_str()], &[]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("--new-password-file"), "{}", o.stderr);
    // Both passwords from stdin: usage error.
    let o = keybag(
        &[
            os("passwd"),
            d,
            os("--password-file"),
            os("-"),
            os("--new-password-file"),
            os("-"),
        ],
        &[],
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    // A differing Manifest.plist.bak from an interrupted run: refused, with instructions.
    let bak = dir.join("Manifest.plist.bak");
    std::fs::write(&bak, b"an older keybag").unwrap();
    let o = with_old(&[], &[("KEYBAG_NEW_PASSWORD", NEW_PASSWORD)]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("Manifest.plist.bak") && o.stderr.contains("keybag verify"),
        "{}",
        o.stderr
    );
    std::fs::remove_file(&bak).unwrap();
    assert_eq!(snapshot(&dir), before, "nothing written");

    // An unencrypted backup has no password to change.
    let (_tmp2, plain) = fixture_copy(&mvt());
    let plain_before = snapshot(&plain);
    let o = keybag(
        &[os("passwd"), plain.as_os_str()],
        &[("KEYBAG_NEW_PASSWORD", NEW_PASSWORD)],
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("not encrypted") && o.stderr.contains("decrypt"),
        "{}",
        o.stderr
    );
    assert_eq!(snapshot(&plain), plain_before);
}

#[test]
fn passwd_after_an_interrupted_run() {
    let old = || Credentials {
        secret: Secret::Passkey(Passkey::from_hex(OLD_PASSKEY).unwrap()),
        device_key: None,
        limits: KdfLimits::default(),
    };
    let crash_after = |dir: &Path, at: Step| -> Passkey {
        let change = PasswordChange::prepare(dir, &old(), NEW_PASSWORD.as_bytes()).unwrap();
        let pk = change.new_passkey().clone();
        let hook = move |s: Step| {
            if s == at {
                Err(mobilebackup::Error::Io {
                    path: PathBuf::from("crash"),
                    source: std::io::Error::other("simulated crash"),
                })
            } else {
                Ok(())
            }
        };
        assert!(change
            .commit(&Hooks {
                after_step: Some(&hook)
            })
            .is_err());
        pk
    };

    // Interrupted after the copy: the old password still works and a new run completes.
    let (_t1, dir) = fixture_copy(&enc());
    crash_after(&dir, Step::BackedUp);
    let o = keybag(
        &[
            os("passwd"),
            dir.as_os_str(),
            os("--derived-key"),
            os(OLD_PASSKEY),
        ],
        &[("KEYBAG_NEW_PASSWORD", NEW_PASSWORD)],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("interrupted"), "{}", o.stdout);
    assert!(!dir.join("Manifest.plist.bak").exists());

    // Interrupted after the new Manifest.plist: refused with either key; following
    // the instructions (the new password works, so delete the .bak) recovers.
    let (_t2, dir) = fixture_copy(&enc());
    let new_pk = crash_after(&dir, Step::Written).to_hex();
    let before = snapshot(&dir);
    for key in [OLD_PASSKEY, new_pk.as_str()] {
        let o = keybag(
            &[os("passwd"), dir.as_os_str(), os("--derived-key"), os(key)],
            &[("KEYBAG_NEW_PASSWORD", "another")],
        );
        assert_eq!(o.code, 1, "{}", o.stderr);
        assert!(o.stderr.contains("interrupted"), "{}", o.stderr);
    }
    assert_eq!(snapshot(&dir), before);
    let verify = |key: &str| {
        keybag(
            &[os("verify"), dir.as_os_str(), os("--derived-key"), os(key)],
            &[],
        )
        .code
    };
    assert_eq!(verify(&new_pk), 0);
    assert_eq!(verify(OLD_PASSKEY), 5);
    std::fs::remove_file(dir.join("Manifest.plist.bak")).unwrap();
    assert_eq!(verify(&new_pk), 0);
}

#[test]
fn passwd_help_documents_sources_and_recovery() {
    let o = keybag(&[os("passwd"), os("--help")], &[]);
    assert_eq!(o.code, 0);
    for needle in [
        "--new-password-file",
        "KEYBAG_NEW_PASSWORD",
        "asked twice",
        "Manifest.plist.bak",
        "keybag verify",
        "keybag decrypt",
    ] {
        assert!(o.stdout.contains(needle), "{needle}: {}", o.stdout);
    }
}
