//! Regression tests for what hostile and damaged backups could still do (issue 8, items
//! 1–6): each failed before its fix.
//!
//! 1. a blob that is a symlink was followed (a file of the examiner's machine was copied out);
//! 2. a FIFO in place of a blob hung every command that read it;
//! 3. a `Files` view over an endless query made SQLite fill the disk;
//! 4. `device restore` wrote files cut short or changed after the backup, with exit 0;
//! 5. `device import` stopped on one record that did not fit;
//! 6. malformed keybag class records were "key unwrap failed", exit 1; duplicate fileIDs
//!    made `decrypt` exit 4 while every other command ignored them.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::forge::{
    insert_rows, keybag_bytes, keybag_command, mbfile_for, present_files, replace_with_fifo,
    replace_with_symlink, rewrite_manifest, run_watching_fifos, set_keybag, tlv_bytes, tlv_records,
    with_encrypted_db, with_plain_db,
};
use common::{blob_of, enc, fixture_copy, keybag, keybag_env, mvt, os, tree_hashes, PASSKEY};
use mobilebackup::layout;

/// A canary file outside every backup: its content must never show up in keybag's output.
fn canary(dir: &Path) -> (PathBuf, String) {
    let text = format!("CANARY-{}-examiner-private", std::process::id());
    let p = dir.join("outside-canary.txt");
    std::fs::write(&p, &text).unwrap();
    (p, text)
}

/// True when any regular file under `root` contains `needle`.
fn tree_contains(root: &Path, needle: &str) -> bool {
    fn walk(dir: &Path, needle: &[u8]) -> bool {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return false;
        };
        rd.flatten().any(|e| {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                walk(&e.path(), needle)
            } else if t.is_file() {
                let b = std::fs::read(e.path()).unwrap();
                b.windows(needle.len()).any(|w| w == needle)
            } else {
                false
            }
        })
    }
    walk(root, needle.as_bytes())
}

/// The `problems` of a `--json` report whose path is `path`, as `kind: message` lines.
fn problems_for(j: &serde_json::Value, path: &str) -> Vec<String> {
    j["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["path"] == path)
        .map(|p| format!("{}: {}", p["kind"].as_str().unwrap(), p["message"]))
        .collect()
}

// ------------------------------------------------------------------ 1. symlinked blobs

#[test]
fn a_blob_that_is_a_symlink_is_never_followed() {
    let (g, b) = fixture_copy(&mvt());
    let (outside, secret) = canary(g.path());
    let (path, id) = present_files(&b, &[]).into_iter().next().unwrap();
    let (domain, rel) = path.split_once('/').unwrap();
    replace_with_symlink(&blob_of(&b, &id), &outside);

    let out_dir = g.path().join("out");
    let x = keybag([
        os("extract"),
        b.as_os_str(),
        out_dir.as_os_str(),
        os("--json"),
    ]);
    assert_eq!(x.code, 3, "{}", x.stderr);
    let p = problems_for(&x.json(), &path);
    assert!(
        p.iter()
            .any(|m| m.starts_with("damaged:") && m.contains("symlink")),
        "{p:?}"
    );
    assert!(
        !tree_contains(&out_dir, &secret),
        "the canary was copied out"
    );

    let c = keybag([os("cat"), b.as_os_str(), os(domain), os(rel)]);
    assert_eq!(c.code, 3, "{}", c.stderr);
    assert!(c.stdout.is_empty());
    assert!(c.stderr.contains("symlink"), "{}", c.stderr);

    for cmd in [&["verify", "--deep"][..], &["audit"]] {
        let mut args = vec![os(cmd[0]), b.as_os_str(), os("--json")];
        args.extend(cmd[1..].iter().map(os));
        let v = keybag(args);
        assert_eq!(v.code, 3, "{cmd:?}: {}", v.stderr);
        assert!(!v.text().contains(&secret));
    }

    let dev = g.path().join("phone");
    let i = keybag([
        os("device"),
        os("import"),
        dev.as_os_str(),
        b.as_os_str(),
        os("--json"),
    ]);
    assert_eq!(i.code, 3, "{}", i.stderr);
    let skipped = i.json()["skipped"].to_string();
    assert!(
        skipped.contains(&path) && skipped.contains("symlink"),
        "{skipped}"
    );
    let got = keybag([
        os("device"),
        os("get"),
        dev.as_os_str(),
        os(domain),
        os(rel),
    ]);
    assert_ne!(got.code, 0, "the record was not imported");
    assert!(!tree_contains(&dev, &secret));
}

#[test]
fn a_blob_folder_that_is_a_symlink_is_never_followed() {
    // `xx/` itself a symlink into another "backup" holding a file of that fileID.
    let (g, b) = fixture_copy(&mvt());
    let (path, id) = present_files(&b, &[]).into_iter().next().unwrap();
    let elsewhere = g.path().join("other-backup").join(&id[..2]);
    std::fs::create_dir_all(&elsewhere).unwrap();
    let secret = "CANARY-other-backup-file";
    for e in std::fs::read_dir(b.join(&id[..2])).unwrap() {
        let e = e.unwrap();
        std::fs::write(elsewhere.join(e.file_name()), secret).unwrap();
    }
    std::fs::remove_dir_all(b.join(&id[..2])).unwrap();
    std::os::unix::fs::symlink(&elsewhere, b.join(&id[..2])).unwrap();
    let out_dir = g.path().join("out");
    let x = keybag([
        os("extract"),
        b.as_os_str(),
        out_dir.as_os_str(),
        os("--json"),
    ]);
    assert_eq!(x.code, 3, "{}", x.stderr);
    assert!(!problems_for(&x.json(), &path).is_empty());
    assert!(!tree_contains(&out_dir, secret));
}

#[test]
fn decrypt_does_not_follow_a_symlinked_blob_or_plist() {
    let (g, b) = fixture_copy(&enc());
    let (outside, secret) = canary(g.path());
    let (path, id) = present_files(&b, &["--derived-key", PASSKEY])
        .into_iter()
        .next()
        .unwrap();
    replace_with_symlink(&blob_of(&b, &id), &outside);
    let out_dir = g.path().join("dec");
    let d = keybag([
        os("decrypt"),
        b.as_os_str(),
        out_dir.as_os_str(),
        os("--derived-key"),
        os(PASSKEY),
        os("--json"),
    ]);
    assert_eq!(d.code, 3, "{}", d.stderr);
    assert!(!problems_for(&d.json(), &path).is_empty());
    assert!(!blob_of(&out_dir, &id).exists());
    assert!(!tree_contains(&out_dir, &secret));

    // A top-level plist that is a symlink: the backup is refused, nothing is read through it.
    let info = b.join("Info.plist");
    std::fs::copy(&info, g.path().join("info-copy")).unwrap();
    replace_with_symlink(&info, &g.path().join("info-copy"));
    let out2 = g.path().join("dec2");
    let d = keybag([
        os("decrypt"),
        b.as_os_str(),
        out2.as_os_str(),
        os("--derived-key"),
        os(PASSKEY),
    ]);
    assert_eq!(d.code, 4, "{}", d.stderr);
    assert!(
        d.stderr.contains("Info.plist") && d.stderr.contains("symlink"),
        "{}",
        d.stderr
    );
    assert!(!out2.exists());
}

// ------------------------------------------------------------------ 2. FIFOs

#[test]
fn a_fifo_in_place_of_a_blob_is_refused_without_opening_it() {
    let (g, b) = fixture_copy(&mvt());
    let (path, id) = present_files(&b, &[]).into_iter().next().unwrap();
    let (domain, rel) = path.split_once('/').unwrap();
    let fifo = blob_of(&b, &id);
    replace_with_fifo(&fifo);
    let out_dir = g.path().join("out");
    let dev = g.path().join("phone");
    let runs: Vec<(&str, Vec<&OsStr>)> = vec![
        (
            "extract",
            vec![
                os("extract"),
                b.as_os_str(),
                out_dir.as_os_str(),
                os("--json"),
            ],
        ),
        (
            "verify",
            vec![os("verify"), b.as_os_str(), os("--deep"), os("--json")],
        ),
        ("audit", vec![os("audit"), b.as_os_str(), os("--json")]),
        ("cat", vec![os("cat"), b.as_os_str(), os(domain), os(rel)]),
        (
            "import",
            vec![
                os("device"),
                os("import"),
                dev.as_os_str(),
                b.as_os_str(),
                os("--json"),
            ],
        ),
    ];
    for (name, args) in runs {
        let (out, opened) = run_watching_fifos(keybag_command(args), std::slice::from_ref(&fifo));
        assert!(!opened, "{name} opened the FIFO for reading");
        assert_eq!(out.code, 3, "{name}: {}", out.stderr);
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), out.stderr);
        let line = all.lines().find(|l| l.contains("FIFO"));
        assert!(line.is_some(), "{name}: the FIFO is not named as such");
    }
}

#[test]
fn a_fifo_as_a_top_level_file_is_refused() {
    for name in ["Manifest.plist", "Status.plist", "Manifest.db"] {
        let (_g, b) = fixture_copy(&mvt());
        let fifo = b.join(name);
        replace_with_fifo(&fifo);
        let (out, opened) = run_watching_fifos(
            keybag_command([os("info"), b.as_os_str()]),
            std::slice::from_ref(&fifo),
        );
        assert!(!opened, "info opened {name}");
        assert_eq!(out.code, 4, "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains(name) && out.stderr.contains("FIFO"),
            "{}",
            out.stderr
        );
    }
}

// ------------------------------------------------------------------ 3. Manifest.db schema

#[test]
fn a_files_view_or_trigger_is_refused_before_any_query() {
    let cases = [
        (
            "view",
            "ALTER TABLE Files RENAME TO FilesData; CREATE VIEW Files AS SELECT * FROM FilesData;",
            "view (Files)",
        ),
        (
            "endless view",
            "ALTER TABLE Files RENAME TO FilesData;
             CREATE VIEW Files AS WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n + 1 FROM r)
               SELECT f.* FROM FilesData f, r;",
            "view (Files)",
        ),
        (
            "trigger",
            "CREATE TABLE log(x); CREATE TRIGGER t AFTER DELETE ON Files BEGIN INSERT INTO log VALUES (1); END;",
            "trigger (t)",
        ),
    ];
    for (name, sql, want) in cases {
        let (g, b) = fixture_copy(&mvt());
        with_plain_db(&b, |c| c.execute_batch(sql).unwrap());
        for cmd in ["ls", "info", "verify", "audit", "extract"] {
            let mut args = vec![os(cmd), b.as_os_str()];
            let out_dir = g.path().join("out");
            if cmd == "extract" {
                args.push(out_dir.as_os_str());
            }
            let out = keybag(args);
            assert_eq!(out.code, 4, "{name} / {cmd}: {}", out.stderr);
            assert!(out.stderr.contains(want), "{name} / {cmd}: {}", out.stderr);
            assert!(out.stderr.contains("Manifest.db"), "{}", out.stderr);
            assert!(!out_dir.exists());
        }
    }
}

// ------------------------------------------------------------------ 4. restore checks

/// A device with a few files (HomeDomain files get a `Digest`, AppDomain ones do not),
/// backed up into `OUT` (encrypted with `password` if given): (device, backup).
fn device_with_backup(t: &Path, password: Option<&str>) -> (PathBuf, PathBuf) {
    let dev = t.join("phone");
    let d = dev.to_str().unwrap();
    let run = |args: &[&str], stdin: &[u8], env: &[(&str, &str)]| {
        let o = common::Keybag::new(args)
            .password(None)
            .env_remove("KEYBAG_PASSCODE")
            .envs(env)
            .stdin(stdin)
            .run();
        assert_eq!(o.code, 0, "{args:?}: {}", o.stderr);
    };
    run(&["device", "init", d, "--name", "Hardening"], b"", &[]);
    run(
        &["device", "app", "install", d, "com.example.notes"],
        b"",
        &[],
    );
    let body: Vec<u8> = (0..5000u32).flat_map(|i| i.to_le_bytes()).collect();
    run(
        &["device", "put", d, "HomeDomain", "Library/a.db"],
        &body,
        &[],
    );
    run(
        &["device", "put", d, "HomeDomain", "Library/b.txt"],
        b"bee",
        &[],
    );
    run(
        &[
            "device",
            "put",
            d,
            "AppDomain-com.example.notes",
            "Documents/n.txt",
        ],
        &body,
        &[],
    );
    let out = t.join("backup");
    let o = out.to_str().unwrap();
    match password {
        Some(pw) => run(
            &["device", "backup", d, o, "--encrypt"],
            b"",
            &[("KEYBAG_PASSWORD", pw)],
        ),
        None => run(&["device", "backup", d, o], b"", &[]),
    }
    (dev, out)
}

/// The fileID of `domain/rel` in a backup.
fn id_of(domain: &str, rel: &str) -> String {
    layout::file_id(domain, rel)
}

/// A fresh empty device `t/NAME`.
fn empty_device(t: &Path, name: &str) -> PathBuf {
    let dev = t.join(name);
    let o = keybag([
        os("device"),
        os("init"),
        dev.as_os_str(),
        os("--name"),
        os(name),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    dev
}

fn restore(dev: &Path, backup: &Path, password: Option<&str>) -> common::Out {
    let args = [
        os("device"),
        os("restore"),
        dev.as_os_str(),
        backup.as_os_str(),
    ];
    match password {
        Some(pw) => keybag_env(args, &[("KEYBAG_PASSWORD", pw)]),
        None => keybag(args),
    }
}

#[test]
fn restore_refuses_a_file_changed_or_cut_after_the_backup() {
    let t = tempfile::tempdir().unwrap();
    let (_dev, backup) = device_with_backup(t.path(), None);
    let with_digest = blob_of(&backup, &id_of("HomeDomain", "Library/a.db"));
    let without = blob_of(
        &backup,
        &id_of("AppDomain-com.example.notes", "Documents/n.txt"),
    );
    let original: Vec<(PathBuf, Vec<u8>)> = [&with_digest, &without]
        .iter()
        .map(|p| (p.to_path_buf(), std::fs::read(p).unwrap()))
        .collect();
    type Hurt = Box<dyn Fn(&mut Vec<u8>)>;
    let damage: [(&str, &Path, Hurt); 3] = [
        (
            "flipped byte, Digest",
            &with_digest,
            Box::new(|b| b[100] ^= 1),
        ),
        (
            "cut in half, Digest",
            &with_digest,
            Box::new(|b| b.truncate(b.len() / 2)),
        ),
        (
            "cut in half, Size only",
            &without,
            Box::new(|b| b.truncate(b.len() / 2)),
        ),
    ];
    for (name, blob, hurt) in damage {
        for (p, bytes) in &original {
            std::fs::write(p, bytes).unwrap();
        }
        let mut bytes = std::fs::read(blob).unwrap();
        hurt(&mut bytes);
        std::fs::write(blob, &bytes).unwrap();
        let target = empty_device(t.path(), &format!("target-{}", name.len()));
        let before = tree_hashes(&target);
        let r = restore(&target, &backup, None);
        assert_eq!(r.code, 3, "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains("nothing was changed"),
            "{name}: {}",
            r.stderr
        );
        let why = if name.contains("Digest") {
            "Digest"
        } else {
            "Size"
        };
        assert!(r.stderr.contains(why), "{name}: {}", r.stderr);
        assert_eq!(
            tree_hashes(&target),
            before,
            "{name}: the target is untouched"
        );
        // Only a Size mismatch (no Digest to prove the bytes) can be accepted on request.
        let r = keybag([
            os("device"),
            os("restore"),
            target.as_os_str(),
            backup.as_os_str(),
            os("--accept-size-mismatch"),
        ]);
        if why == "Size" {
            assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        } else {
            assert_eq!(r.code, 3, "{name}: {}", r.stderr);
            assert_eq!(tree_hashes(&target), before);
        }
        std::fs::remove_dir_all(&target).unwrap();

        // Import skips the damaged file and takes the rest.
        let imported = t.path().join("imported");
        let i = keybag([
            os("device"),
            os("import"),
            imported.as_os_str(),
            backup.as_os_str(),
            os("--json"),
        ]);
        assert_eq!(i.code, 3, "{name}: {}", i.stderr);
        let j = i.json();
        assert_eq!(j["files"], 2, "{name}: files imported");
        assert!(j["skipped"].to_string().contains(why), "{name}: {j}");
        std::fs::remove_dir_all(&imported).unwrap();
    }
}

#[test]
fn restore_refuses_an_encrypted_blob_changed_with_valid_padding() {
    let t = tempfile::tempdir().unwrap();
    let pw = "hardening pw";
    let (_dev, backup) = device_with_backup(t.path(), Some(pw));
    // A byte flipped in the first block: CBC garbles two blocks, the padding stays valid.
    let blob = blob_of(&backup, &id_of("HomeDomain", "Library/a.db"));
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[3] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();
    let target = empty_device(t.path(), "target");
    let before = tree_hashes(&target);
    let r = restore(&target, &backup, Some(pw));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("Digest"), "{}", r.stderr);
    assert_eq!(tree_hashes(&target), before);
}

#[test]
fn extract_and_cat_warn_and_exit_3_on_a_digest_mismatch() {
    let (g, b) = fixture_copy(&enc());
    let id = "a736b045bdc00d2e22b269e370cec43d73a2bfe8"; // NoteStore.sqlite, has a Digest
    let blob = blob_of(&b, id);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[5] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();
    let line = common::expected_files()
        .into_iter()
        .find(|f| f.2 == id)
        .unwrap();
    let path = format!("{}/{}", line.0, line.1);
    let out_dir = g.path().join("out");
    let x = keybag([
        os("extract"),
        b.as_os_str(),
        out_dir.as_os_str(),
        os("--derived-key"),
        os(PASSKEY),
        os("--json"),
    ]);
    assert_eq!(x.code, 3, "{}", x.stderr);
    let p = problems_for(&x.json(), &path);
    assert!(
        p.iter()
            .any(|m| m.starts_with("digest-mismatch:") && m.contains("changed after the backup")),
        "{p:?}"
    );
    // The bytes are kept (as with bad padding), and flagged.
    assert!(out_dir.join(&path).is_file());
    let c = keybag([
        os("cat"),
        b.as_os_str(),
        os(&line.0),
        os(&line.1),
        os("--derived-key"),
        os(PASSKEY),
    ]);
    assert_eq!(c.code, 3, "{}", c.stderr);
    assert!(
        c.stderr.contains("changed after the backup"),
        "{}",
        c.stderr
    );
    assert_eq!(c.stdout.len(), 4096);
}

// ------------------------------------------------------------------ 5. import and odd records

#[test]
fn import_skips_records_that_do_not_fit_and_takes_the_rest() {
    let (g, b) = fixture_copy(&mvt());
    let body = b"hostile but harmless\n".to_vec();
    let file_row = |rel: &str| {
        let id = layout::file_id("HomeDomain", rel);
        let blob = blob_of(&b, &id);
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, &body).unwrap();
        (
            id,
            "HomeDomain".to_string(),
            rel.to_string(),
            1i64,
            mbfile_for(rel, 0o100644, body.len() as u64, None),
        )
    };
    let dir_row = |rel: &str| {
        (
            layout::file_id("HomeDomain", rel),
            "HomeDomain".to_string(),
            rel.to_string(),
            2i64,
            mbfile_for(rel, 0o40755, 0, None),
        )
    };
    let mut rows = vec![
        file_row("Library/hx"),
        file_row("Library/hx/inner"), // a file under a file
        dir_row("Library/hx/sub"),    // a folder under a file
        file_row("Library/blobdir"),  // its blob is a folder
    ];
    let blobdir = blob_of(&b, &rows[3].0);
    std::fs::remove_file(&blobdir).unwrap();
    std::fs::create_dir(&blobdir).unwrap();
    rows.push(file_row("Library/ok-after"));
    insert_rows(&b, &rows);

    let dev = g.path().join("phone");
    let i = keybag([
        os("device"),
        os("import"),
        dev.as_os_str(),
        b.as_os_str(),
        os("--json"),
    ]);
    assert_eq!(i.code, 3, "{}", i.stderr);
    let j = i.json();
    let skipped = j["skipped"].as_array().unwrap();
    let reason = |p: &str| {
        skipped
            .iter()
            .find(|s| s["what"] == format!("HomeDomain/{p}"))
            .unwrap_or_else(|| panic!("{p} not skipped: {skipped:?}"))["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(reason("Library/hx/inner").contains("is a file"));
    assert!(reason("Library/hx/sub").contains("is a file"));
    assert!(reason("Library/blobdir").contains("folder"));
    // hx and ok-after. (The fixture's 10 present files were edited by its publishers: each
    // differs from its record's Digest or Size, so a strict import skips them too.)
    assert_eq!(j["files"], 2, "files imported");
    for p in ["Library/hx", "Library/ok-after"] {
        let got = keybag([
            os("device"),
            os("get"),
            dev.as_os_str(),
            os("HomeDomain"),
            os(p),
        ]);
        assert_eq!(got.code, 0, "{p}: {}", got.stderr);
        assert_eq!(got.stdout, body);
    }
}

// ------------------------------------------------------------------ 6. exit codes

#[test]
fn malformed_class_records_are_format_errors_naming_the_field() {
    type Edit = fn(&mut Vec<([u8; 4], Vec<u8>)>);
    let cases: [(&str, Edit, &str); 2] = [
        (
            "class twice",
            |recs| {
                // The second class record's CLAS becomes the first one's.
                let clas: Vec<usize> = (0..recs.len()).filter(|&i| &recs[i].0 == b"CLAS").collect();
                recs[clas[1]].1 = recs[clas[0]].1.clone();
            },
            "CLAS",
        ),
        (
            "41-byte WPKY",
            |recs| {
                let last = recs.iter().rposition(|r| &r.0 == b"WPKY").unwrap();
                recs[last].1.push(0);
            },
            "WPKY",
        ),
    ];
    for (name, edit, field) in cases {
        let (_g, b) = fixture_copy(&enc());
        let mut recs = tlv_records(&keybag_bytes(&b));
        edit(&mut recs);
        set_keybag(&b, tlv_bytes(&recs));
        let out = keybag([os("ls"), b.as_os_str(), os("--derived-key"), os(PASSKEY)]);
        assert_eq!(out.code, 4, "{name}: {}", out.stderr);
        assert!(out.stderr.contains(field), "{name}: {}", out.stderr);
        assert!(!out.stderr.contains("key unwrap failed"), "{}", out.stderr);
    }
    // A ManifestKey naming class 99.
    let (_g, b) = fixture_copy(&enc());
    rewrite_manifest(&b, |d| {
        let mk = d.get_mut("ManifestKey").unwrap();
        if let plist::Value::Data(bytes) = mk {
            bytes[..4].copy_from_slice(&99u32.to_le_bytes());
        }
    });
    let out = keybag([os("ls"), b.as_os_str(), os("--derived-key"), os(PASSKEY)]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("ManifestKey") && out.stderr.contains("class 99"),
        "{}",
        out.stderr
    );
}

#[test]
fn duplicate_file_ids_are_bad_records_in_every_command() {
    // Files rebuilt without its PRIMARY KEY, a second row with the first file's fileID.
    let (g, b) = fixture_copy(&enc());
    let (first, id) = present_files(&b, &["--derived-key", PASSKEY])
        .into_iter()
        .next()
        .unwrap();
    with_encrypted_db(&b, PASSKEY, |c| {
        c.execute_batch(
            "CREATE TABLE F2 (fileID TEXT, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB);
             INSERT INTO F2 SELECT * FROM Files; DROP TABLE Files; ALTER TABLE F2 RENAME TO Files;",
        )
        .unwrap();
        let rel = "Library/zz-duplicate.txt";
        c.execute(
            "INSERT INTO Files SELECT fileID, 'HomeDomain', ?1, flags, ?2 FROM Files WHERE fileID = ?3",
            rusqlite::params![rel, mbfile_for(rel, 0o100644, 3, None), id],
        )
        .unwrap();
    });
    let dup = "HomeDomain/Library/zz-duplicate.txt";
    let key = [os("--derived-key"), os(PASSKEY), os("--json")];
    let out_dir = g.path().join("out");
    let dec_dir = g.path().join("dec");
    let runs: Vec<(&str, Vec<&OsStr>)> = vec![
        ("verify", vec![os("verify"), b.as_os_str()]),
        (
            "extract",
            vec![os("extract"), b.as_os_str(), out_dir.as_os_str()],
        ),
        (
            "decrypt",
            vec![os("decrypt"), b.as_os_str(), dec_dir.as_os_str()],
        ),
    ];
    for (name, mut args) in runs {
        args.extend(key);
        let out = keybag(args);
        assert_eq!(out.code, 3, "{name}: {}", out.stderr);
        let p = problems_for(&out.json(), dup);
        assert!(
            p.iter()
                .any(|m| m.starts_with("bad-record:") && m.contains(&first)),
            "{name}: {p:?}"
        );
    }
    // The first row is the one kept: its file decrypts as before.
    assert!(out_dir.join(&first).is_file());
    assert!(blob_of(&dec_dir, &id).is_file());
}
