//! keybag against readers we did not write: iphone_backup_decrypt and mvt, run from
//! the venvs that scripts/test.sh builds (KEYBAG_PY_IBD, KEYBAG_PY_MVT). These tests
//! fail, never skip, when the tools are missing.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::{
    as_map, json_ok, keybag_output as keybag, repo, run_py, tree_hashes,
    PASSKEY as FIXTURE_PASSKEY, PASSWORD as FIXTURE_PASSWORD,
};
use mobilebackup::writer::{BackupWriter, Content, Encryption, Kind, NewRecord, WriterOptions};
use sha2::{Digest, Sha256};

#[test]
fn fixture_keybag_and_iphone_backup_decrypt_extract_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = repo().join("testdata/enc-small-public");
    let ibd_out = tmp.path().join("ibd");
    let ibd = json_ok(
        &run_py(
            "KEYBAG_PY_IBD",
            "ibd_extract.py",
            &[&fixture, &ibd_out],
            Some(FIXTURE_PASSWORD),
        ),
        "ibd_extract",
    );
    let theirs = as_map(&ibd["files"]);
    assert_eq!(theirs.len(), 16);
    let out = tmp.path().join("keybag");
    let o = keybag(
        &[
            OsStr::new("extract"),
            fixture.as_os_str(),
            out.as_os_str(),
            OsStr::new("--derived-key"),
            OsStr::new(FIXTURE_PASSKEY),
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tree_hashes(&out), theirs);
}

#[test]
fn fixture_decrypt_is_accepted_by_mvt_and_reads_back_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = repo().join("testdata/enc-small-public");
    let out = tmp.path().join("decrypted");
    let o = keybag(
        &[OsStr::new("decrypt"), fixture.as_os_str(), out.as_os_str()],
        Some(FIXTURE_PASSWORD),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mvt = json_ok(
        &run_py("KEYBAG_PY_MVT", "mvt_check.py", &[&out], None),
        "mvt check-backup",
    );
    assert_eq!(mvt["manifest_records"], 40);
    assert_eq!(mvt["missing_blobs"], 0);
    assert_eq!(mvt["apps"], 3);
    assert_eq!(mvt["errors"].as_array().unwrap().len(), 0, "{mvt}");
    let original = keybag(
        &[
            OsStr::new("ls"),
            fixture.as_os_str(),
            OsStr::new("--long"),
            OsStr::new("--derived-key"),
            OsStr::new(FIXTURE_PASSKEY),
        ],
        None,
    );
    let copy = keybag(
        &[OsStr::new("ls"), out.as_os_str(), OsStr::new("--long")],
        None,
    );
    assert!(original.status.success() && copy.status.success());
    let copy = String::from_utf8_lossy(&copy.stdout);
    assert_eq!(copy, String::from_utf8_lossy(&original.stdout));
    assert_eq!(copy.lines().count(), 40);
}

const DOMAINS: [&str; 10] = [
    "HomeDomain",
    "CameraRollDomain",
    "MediaDomain",
    "RootDomain",
    "WirelessDomain",
    "HealthDomain",
    "AppDomain-com.example.alpha",
    "AppDomain-net.example.beta",
    "AppDomainGroup-group.com.example.shared",
    "SysSharedContainerDomain-systemgroup.com.apple.configurationprofiles",
];

/// A deterministic population: ≥ 300 records across 10 domains with folders,
/// symlinks, empty files, unicode names and sizes on and around multiples of 16.
/// Returns the records and the sha256 of every file, keyed `domain/relativePath`.
fn population() -> (Vec<NewRecord>, BTreeMap<String, String>) {
    let names = [
        "notes.txt",
        "Résumé 2024.txt",
        "日本語.db",
        "emoji 😀.plist",
        "a b c.bin",
    ];
    let sizes = [0usize, 1, 15, 16, 17, 32, 48, 255, 4096, 65_536, 100_003];
    let mut recs = Vec::new();
    let mut want = BTreeMap::new();
    let mut n = 0usize;
    for (d, domain) in DOMAINS.iter().enumerate() {
        recs.push(NewRecord::directory(*domain, "Library"));
        recs.push(NewRecord::directory(*domain, "Library/Preferences"));
        recs.push(NewRecord::directory(*domain, "Documents/empty folder"));
        for i in 0..30 {
            let size = sizes[(i + d) % sizes.len()];
            let data: Vec<u8> = (0..size)
                .map(|j| ((j * 31 + i * 7 + d * 13) % 256) as u8)
                .collect();
            let dir = if i % 2 == 0 {
                "Library/Preferences"
            } else {
                "Documents"
            };
            let rel = format!("{dir}/{i:02} {}", names[(i + d) % names.len()]);
            want.insert(
                format!("{domain}/{rel}"),
                hex::encode(Sha256::digest(&data)),
            );
            let mut r = NewRecord::file(*domain, rel, Content::Bytes(data));
            if let Kind::File {
                protection_class, ..
            } = &mut r.kind
            {
                *protection_class = 1 + ((i + d) % 4) as u32;
            }
            r.mtime = 1_700_000_000 + (n as i64) * 61;
            recs.push(r);
            n += 1;
        }
        recs.push(NewRecord::symlink(
            *domain,
            "Library/link",
            "/var/mobile/Library/Preferences",
        ));
    }
    (recs, want)
}

fn write_backup(
    dir: &Path,
    encryption: Option<Encryption>,
) -> (PathBuf, BTreeMap<String, String>, usize) {
    let (recs, want) = population();
    let n = recs.len();
    let out = dir.join("00008030-001229C01146402E");
    let opts = WriterOptions {
        encryption,
        applications: vec!["com.example.alpha".into(), "net.example.beta".into()],
        ..WriterOptions::default()
    };
    let w = BackupWriter::create(&out, opts).unwrap();
    w.add_all(recs).unwrap();
    w.finish().unwrap();
    (out, want, n)
}

#[test]
fn writer_backup_is_read_by_iphone_backup_decrypt_and_mvt() {
    let tmp = tempfile::tempdir().unwrap();
    let password = "writer tést pässword";
    // Apple's real KDF cost: the third-party readers must derive it too.
    let (backup, want, n) = write_backup(
        tmp.path(),
        Some(Encryption::new(password.as_bytes().to_vec())),
    );
    assert!(n >= 300);
    let empty = hex::encode(Sha256::digest(b""));
    assert!(want.values().any(|h| *h == empty), "has empty files");

    let ibd_out = tmp.path().join("ibd");
    let ibd = json_ok(
        &run_py(
            "KEYBAG_PY_IBD",
            "ibd_extract.py",
            &[&backup, &ibd_out],
            Some(password),
        ),
        "ibd_extract",
    );
    assert_eq!(
        as_map(&ibd["files"]),
        want,
        "iphone_backup_decrypt reads every file identically"
    );
    assert_eq!(ibd["missing"].as_array().unwrap().len(), 0);
    let ibd_out2 = tmp.path().join("ibd2");
    let wrong = run_py(
        "KEYBAG_PY_IBD",
        "ibd_extract.py",
        &[&backup, &ibd_out2],
        Some("nope"),
    );
    assert_eq!(
        wrong.status.code(),
        Some(5),
        "iphone_backup_decrypt rejects a wrong password"
    );

    let mvt_out = tmp.path().join("mvt-decrypted");
    let mvt = json_ok(
        &run_py(
            "KEYBAG_PY_MVT",
            "mvt_decrypt.py",
            &[&backup, &mvt_out],
            Some(password),
        ),
        "mvt decrypt-backup",
    );
    assert_eq!(
        as_map(&mvt["files"]),
        want,
        "mvt decrypts every file identically"
    );
    let check = json_ok(
        &run_py("KEYBAG_PY_MVT", "mvt_check.py", &[&mvt_out], None),
        "mvt check-backup",
    );
    assert_eq!(check["manifest_records"], mvt["rows"]);
    assert_eq!(check["apps"], 2);

    // keybag reads its own output back identically too.
    let ours = tmp.path().join("keybag");
    let o = keybag(
        &[OsStr::new("extract"), backup.as_os_str(), ours.as_os_str()],
        Some(password),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut got = tree_hashes(&ours);
    assert_eq!(got.len(), want.len());
    got.retain(|k, v| want.get(k) == Some(v));
    assert_eq!(got.len(), want.len());
}

#[test]
fn unencrypted_writer_backup_is_accepted_by_mvt() {
    let tmp = tempfile::tempdir().unwrap();
    let (backup, want, _) = write_backup(tmp.path(), None);
    let check = json_ok(
        &run_py("KEYBAG_PY_MVT", "mvt_check.py", &[&backup], None),
        "mvt check-backup",
    );
    assert_eq!(check["missing_blobs"], 0);
    assert_eq!(
        check["by_flags"]["1"].as_u64().unwrap() as usize,
        want.len()
    );
    assert_eq!(check["apps"], 2);
    assert_eq!(check["errors"].as_array().unwrap().len(), 0, "{check}");
}
