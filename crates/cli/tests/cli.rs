//! The `keybag` binary against the fixtures in `testdata/` and damaged copies of them.
//!
//! Secrets never go in argv: the password comes from `KEYBAG_PASSWORD` or
//! `--password-file`; most tests use the fixture's published derived key.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use common::forge::{insert_rows, keybag_bytes, mbfile_for, rewrite_manifest};
use common::{
    blob_of, enc, expected, expected_files, fixture_copy, keybag, keybag_env, mvt, os, sha256_hex,
    PASSKEY, PASSWORD,
};
use mobilebackup::layout;
use serde_json::Value;

// ---------------------------------------------------------------- helpers

/// `args` followed by `--derived-key PASSKEY`.
fn with_key(args: &[&OsStr]) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = args.iter().map(|a| a.to_os_string()).collect();
    v.push("--derived-key".into());
    v.push(PASSKEY.into());
    v
}

fn record_line(domain: &str, rel: &str) -> String {
    if rel.is_empty() {
        domain.to_string()
    } else {
        format!("{domain}/{rel}")
    }
}

/// Expected `ls` lines of the encrypted fixture, in keybag's order.
fn expected_lines() -> Vec<String> {
    let exp = expected();
    let mut recs: Vec<(String, String)> = exp["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["domain"].as_str().unwrap().to_string(),
                r["relativePath"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    recs.sort();
    recs.iter().map(|(d, r)| record_line(d, r)).collect()
}

/// Every file, folder and link under `root`, relative.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Asserts that every symlink under `root` points (lexically) inside `root`.
fn assert_links_stay_inside(root: &Path) {
    for rel in walk(root) {
        let p = root.join(&rel);
        if !std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink()
        {
            continue;
        }
        let target = std::fs::read_link(&p).unwrap();
        assert!(
            target.is_relative(),
            "{} -> {}",
            rel.display(),
            target.display()
        );
        let mut depth: Vec<_> = rel.parent().unwrap().components().collect();
        for c in target.components() {
            match c {
                Component::ParentDir => {
                    assert!(depth.pop().is_some(), "{} escapes", rel.display());
                }
                Component::Normal(_) => depth.push(c),
                Component::CurDir => {}
                _ => panic!("{} -> {}", rel.display(), target.display()),
            }
        }
    }
}

// ---------------------------------------------------------------- usage

#[test]
fn help_documents_exit_codes_and_no_args_is_usage() {
    let out = keybag(["--help"]);
    assert_eq!(out.code, 0);
    let help = out.text();
    assert!(help.contains("Exit codes"), "{help}");
    for line in [
        "0  success",
        "3  some files are damaged",
        "4  not a backup",
        "5  wrong password",
    ] {
        assert!(help.contains(line), "{line:?} not in {help}");
    }
    assert!(help.contains("KEYBAG_PASSWORD"));
    let sub = keybag(["extract", "--help"]);
    assert_eq!(sub.code, 0);
    assert!(sub.text().contains("Exit codes"));
    assert!(sub.text().contains("--password-file"));
    assert!(
        !sub.text().contains("--password "),
        "no --password option may exist"
    );

    assert_eq!(keybag(Vec::<&str>::new()).code, 2);
    assert_eq!(keybag(["frobnicate"]).code, 2);
    assert_eq!(keybag(["ls"]).code, 2);
}

#[test]
fn malformed_keys_and_globs_are_usage_errors_that_never_echo_the_key() {
    let bad = "zz316ca4293d559aa3a068ebb22105607824ea61d611baf62cd3e83c0c796c7";
    let out = keybag([os("ls"), enc().as_os_str(), os("--derived-key"), os(bad)]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(out.stderr_lines().len(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("keybag: --derived-key"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("316ca42"), "{}", out.stderr);

    let out = keybag([os("ls"), enc().as_os_str(), os("--derived-key"), os("abcd")]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("64 hex digits"), "{}", out.stderr);

    let out = keybag(with_key(&[
        os("ls"),
        enc().as_os_str(),
        os("--device-key"),
        os("1234"),
    ]));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--device-key"), "{}", out.stderr);

    let out = keybag([os("ls"), mvt().as_os_str(), os("--path"), os("a[")]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--path"), "{}", out.stderr);
}

// ---------------------------------------------------------------- mvt fixture

#[test]
fn mvt_ls_lists_every_record() {
    let out = keybag([os("ls"), mvt().as_os_str()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines = out.lines();
    assert_eq!(lines.len(), 3721);
    let mut sorted = lines.clone();
    sorted.sort_by(|a, b| {
        let split = |s: &str| {
            let (d, r) = s.split_once('/').unwrap_or((s, ""));
            (d.to_string(), r.to_string())
        };
        split(a).cmp(&split(b))
    });
    assert_eq!(lines, sorted, "sorted by domain, then path");
    assert!(lines.contains(&"HomeDomain".to_string()));
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

#[test]
fn mvt_ls_filters_and_long_form() {
    let out = keybag([
        os("ls"),
        mvt().as_os_str(),
        os("--domain"),
        os("HomeDomain"),
        os("--path"),
        os("Library/Preferences/*.plist"),
        os("--long"),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines = out.lines();
    assert!(!lines.is_empty());
    for l in &lines {
        // kind, size, class, mode (octal), mtime (ISO 8601 UTC), path [-> target]
        let (head, rest) = l.split_once("Z  ").expect("mtime then path");
        let path = rest.split(" -> ").next().unwrap();
        assert!(path.starts_with("HomeDomain/Library/Preferences/"), "{l}");
        assert!(path.ends_with(".plist"), "{l}");
        assert!(
            !path["HomeDomain/Library/Preferences/".len()..].contains('/'),
            "{l}"
        );
        assert!(
            (head.starts_with("file ") && head.contains(" 100"))
                || (head.starts_with("symlink ") && head.contains(" 120") && rest.contains(" -> ")),
            "{l}"
        );
    }
    assert!(lines.iter().any(|l| l.starts_with("file ")));
    // '*' stays within one folder; '**' crosses folders.
    let count = |glob: &str| {
        keybag([
            os("ls"),
            mvt().as_os_str(),
            os("--domain"),
            os("HomeDomain"),
            os("--path"),
            os(glob),
        ])
        .lines()
        .len()
    };
    let (shallow, deep) = (count("Library/*"), count("Library/**"));
    assert!(shallow > 0 && deep > shallow, "{shallow} {deep}");
    let apps = keybag([
        os("ls"),
        mvt().as_os_str(),
        os("--domain"),
        os("AppDomain-*"),
    ]);
    assert!(apps.lines().iter().all(|l| l.starts_with("AppDomain-")));
    assert!(apps.lines().len() > 100);
}

#[test]
fn mvt_info_json_counts() {
    let out = keybag([os("info"), mvt().as_os_str(), os("--json")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let j = out.json();
    assert_eq!(j["encrypted"], false);
    assert_eq!(j["records"], 3721);
    assert_eq!(j["files"], 1089);
    assert_eq!(j["directories"], 2618);
    assert_eq!(j["symlinks"], 14);
    assert_eq!(j["missing_blobs"], 1079);
    assert_eq!(j["bad_records"], 0);
    assert_eq!(j["device"]["product_type"], "iPhone9,3");
    assert_eq!(j["device"]["product_version"], "14.3");
    assert_eq!(j["backup_date_source"], "Info.plist");
    // The sum of `field` over the entries of the list `list`.
    let sum = |list: &str, field: &str| -> u64 {
        j[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[field].as_u64().unwrap())
            .sum()
    };
    let by_class_files = sum("by_class", "files");
    assert_eq!(by_class_files, 1089);
    let by_domain = sum("by_domain", "records");
    assert_eq!(by_domain, 3721);
    let total = sum("by_domain", "bytes");
    assert_eq!(j["total_bytes"].as_u64().unwrap(), total);

    let text = keybag([os("info"), mvt().as_os_str()]);
    assert_eq!(text.code, 0);
    let t = text.text();
    assert!(t.contains("1,089 files, 2,618 folders, 14 symlinks"), "{t}");
    assert!(t.contains("Missing blobs 1,079"), "{t}");
    assert!(t.contains(" MB"), "human-friendly size: {t}");
}

/// Present regular files of the mvt fixture: (display path, fileID).
fn mvt_present_files() -> Vec<(String, String)> {
    let out = keybag([os("ls"), mvt().as_os_str(), os("--json")]);
    out.json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "file")
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["file_id"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(_, id)| blob_of(&mvt(), id).exists())
        .collect()
}

#[test]
fn mvt_extract_writes_present_files_and_reports_missing_ones() {
    let present = mvt_present_files();
    assert_eq!(present.len(), 10);
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");
    let out = keybag([
        os("extract"),
        mvt().as_os_str(),
        out_dir.as_os_str(),
        os("--json"),
    ]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(out.stderr_lines().len(), 1, "{}", out.stderr);
    let j = out.json();
    assert_eq!(j["files"], 10);
    assert_eq!(j["dirs"], 2618);
    assert_eq!(j["damaged"], true);
    let problems = j["problems"].as_array().unwrap();
    let missing = problems.iter().filter(|p| p["kind"] == "missing").count();
    assert_eq!(missing, 1079);
    for p in problems.iter().filter(|p| p["kind"] == "missing") {
        assert!(
            p["message"].as_str().unwrap().contains("blob missing"),
            "{p}"
        );
    }
    for (path, id) in &present {
        let got = std::fs::read(out_dir.join(path)).unwrap();
        let want = std::fs::read(blob_of(&mvt(), id)).unwrap();
        assert!(got == want, "{path} differs from its blob");
    }
    assert_links_stay_inside(&out_dir);

    // Text mode: summary, first 20 problems, the count of the rest.
    let out_dir2 = work.path().join("out2");
    let text = keybag([os("extract"), mvt().as_os_str(), out_dir2.as_os_str()]);
    assert_eq!(text.code, 3);
    let t = text.text();
    assert!(t.starts_with("Extracted 10 files ("), "{t}");
    assert!(t.contains("1,079 missing"), "{t}");
    assert!(t.contains("more (--json lists them all)"), "{t}");
    assert!(t.lines().count() < 30, "{t}");
}

// ---------------------------------------------------------------- encrypted fixture

#[test]
fn enc_ls_matches_the_expected_records() {
    let out = keybag(with_key(&[os("ls"), enc().as_os_str()]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.lines(), expected_lines());
    assert_eq!(out.lines().len(), 40);
}

#[test]
fn enc_ls_json_and_long() {
    let out = keybag(with_key(&[os("ls"), enc().as_os_str(), os("--json")]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let entries = out.json();
    let exp = expected();
    let by_path: BTreeMap<String, &Value> = exp["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                record_line(
                    r["domain"].as_str().unwrap(),
                    r["relativePath"].as_str().unwrap(),
                ),
                r,
            )
        })
        .collect();
    for e in entries.as_array().unwrap() {
        let r = by_path[e["path"].as_str().unwrap()];
        assert_eq!(e["file_id"], r["fileID"]);
        assert_eq!(e["size"], r["size"]);
        assert_eq!(e["mode"], r["mode"]);
        assert_eq!(e["mtime"], r["mtime"]);
        assert_eq!(e["protection_class"], r["protection_class"]);
        assert_eq!(e["target"], r["target"]);
        assert!(e["problem"].is_null());
    }
    let long = keybag(with_key(&[os("ls"), enc().as_os_str(), os("--long")]));
    let link = long
        .lines()
        .into_iter()
        .find(|l| l.contains("HomeDomain/Library/Logs/current"))
        .unwrap();
    assert!(link.starts_with("symlink"), "{link}");
    assert!(link.contains("120755"), "{link}");
    assert!(
        link.ends_with("-> /var/mobile/Library/Logs/forge-2024-05-01.log"),
        "{link}"
    );
}

#[test]
fn enc_extract_matches_ground_truth() {
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");
    let out = keybag(with_key(&[
        os("extract"),
        enc().as_os_str(),
        out_dir.as_os_str(),
    ]));
    assert_eq!(out.code, 0, "{}\n{}", out.text(), out.stderr);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    assert!(
        out.text()
            .starts_with("Extracted 16 files (14.6 KB), 23 folders and 1 symlink into"),
        "{}",
        out.text()
    );
    for (domain, rel, _, sha) in expected_files() {
        let bytes = std::fs::read(out_dir.join(&domain).join(&rel)).unwrap();
        assert_eq!(sha256_hex(&bytes), sha, "{domain}/{rel}");
    }
    assert!(out_dir
        .join("AppDomain-net.forge.notes/Documents/Folders/nested/deeper")
        .is_dir());
    // The symlink's target /var/mobile/Library/Logs/forge-2024-05-01.log maps inside
    // OUTDIR (HomeDomain is rooted at /var/mobile), so it is created, relative.
    let link = out_dir.join("HomeDomain/Library/Logs/current");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("forge-2024-05-01.log")
    );
    assert_links_stay_inside(&out_dir);
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        1,
        "nothing beside OUTDIR"
    );
}

#[test]
fn enc_extract_filters() {
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");
    let out = keybag(with_key(&[
        os("extract"),
        enc().as_os_str(),
        out_dir.as_os_str(),
        os("--domain"),
        os("AppDomain-*"),
        os("--path"),
        os("Documents/*.txt"),
        os("--json"),
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["files"], 3);
    let files: BTreeSet<String> = walk(&out_dir)
        .into_iter()
        .filter(|p| out_dir.join(p).is_file())
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        files,
        [
            "AppDomain-net.forge.notes/Documents/welcome.txt",
            "AppDomain-net.forge.notes/Documents/Résumé 2024.txt",
            "AppDomain-net.forge.notes/Documents/empty.txt",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
}

#[test]
fn enc_real_password_from_the_environment() {
    let out = keybag_env(
        [os("ls"), enc().as_os_str()],
        &[("KEYBAG_PASSWORD", PASSWORD)],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.lines(), expected_lines());
    assert!(!out.stderr.contains(PASSWORD));
}

#[test]
fn enc_password_file_first_line_only() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw.txt");
    std::fs::write(&pw, format!("{PASSWORD}\r\nsecond line is ignored\n")).unwrap();
    // The file wins over a wrong KEYBAG_PASSWORD.
    let out = keybag_env(
        [
            os("info"),
            enc().as_os_str(),
            os("--json"),
            os("--password-file"),
            pw.as_os_str(),
        ],
        &[("KEYBAG_PASSWORD", "wrong")],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["files"], 16);
    assert!(!out.text().contains(PASSWORD));
    assert!(!out.text().contains(PASSKEY));

    std::fs::write(&pw, "\n").unwrap();
    let out = keybag([
        os("ls"),
        enc().as_os_str(),
        os("--password-file"),
        pw.as_os_str(),
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("empty"), "{}", out.stderr);
}

#[test]
fn enc_wrong_password_exits_5_with_one_line() {
    let out = keybag_env(
        [
            os("extract"),
            enc().as_os_str(),
            os("/nonexistent/never-created"),
        ],
        &[("KEYBAG_PASSWORD", "wrong")],
    );
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert_eq!(out.stderr_lines().len(), 1, "{}", out.stderr);
    assert!(out.stderr.starts_with("keybag: "), "{}", out.stderr);
    assert!(out.stderr.contains("wrong password"), "{}", out.stderr);
    assert!(out.stderr.contains("Manifest.plist"), "{}", out.stderr);
    assert!(!out.stderr.contains("wrong\n") && !out.stderr.contains("\"wrong\""));
    assert!(out.stdout.is_empty());
    assert!(!Path::new("/nonexistent/never-created").exists());
}

#[test]
fn enc_wrong_derived_key_exits_5() {
    let zero = "00".repeat(32);
    let out = keybag([
        os("verify"),
        enc().as_os_str(),
        os("--derived-key"),
        os(&zero),
    ]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert_eq!(out.stderr_lines().len(), 1);
    assert!(!out.stderr.contains(&zero));
}

#[test]
fn enc_derived_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let hex_file = dir.path().join("key.txt");
    std::fs::write(&hex_file, format!("{PASSKEY}\n")).unwrap();
    let out = keybag([
        os("ls"),
        enc().as_os_str(),
        os("--derived-key-file"),
        hex_file.as_os_str(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.lines().len(), 40);
    let raw_file = dir.path().join("key.bin");
    std::fs::write(&raw_file, hex::decode(PASSKEY).unwrap()).unwrap();
    let out = keybag([
        os("ls"),
        enc().as_os_str(),
        os("--derived-key-file"),
        raw_file.as_os_str(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // --derived-key and --password-file conflict: usage.
    let out = keybag(with_key(&[
        os("ls"),
        enc().as_os_str(),
        os("--password-file"),
        hex_file.as_os_str(),
    ]));
    assert_eq!(out.code, 2);
}

#[test]
fn enc_without_any_password_is_a_clear_error() {
    let out = keybag([os("ls"), enc().as_os_str()]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.stderr_lines().len(), 1);
    assert!(out.stderr.contains("no password"), "{}", out.stderr);
    assert!(out.stderr.contains("KEYBAG_PASSWORD"), "{}", out.stderr);
    assert!(out.stderr.contains("--password-file"), "{}", out.stderr);
}

#[test]
fn enc_cat_writes_exact_content() {
    for (domain, rel, _, sha) in expected_files() {
        let out = keybag(with_key(&[
            os("cat"),
            enc().as_os_str(),
            os(&domain),
            os(&rel),
        ]));
        assert_eq!(out.code, 0, "{domain}/{rel}: {}", out.stderr);
        assert_eq!(sha256_hex(&out.stdout), sha, "{domain}/{rel}");
    }
    let out = keybag(with_key(&[
        os("cat"),
        enc().as_os_str(),
        os("HomeDomain"),
        os("Library"),
    ]));
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("HomeDomain/Library"), "{}", out.stderr);
    assert!(out.stderr.contains("not a file"), "{}", out.stderr);
    let out = keybag(with_key(&[
        os("cat"),
        enc().as_os_str(),
        os("HomeDomain"),
        os("nope.txt"),
    ]));
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("HomeDomain/nope.txt"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
}

#[test]
fn enc_verify_deep_is_clean() {
    let out = keybag(with_key(&[
        os("verify"),
        enc().as_os_str(),
        os("--deep"),
        os("--json"),
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let j = out.json();
    assert_eq!(j["files"], 16);
    assert_eq!(j["files_read"], 16);
    assert_eq!(j["bytes_read"], 14617);
    assert_eq!(j["has_damage"], false);
    assert_eq!(j["problems"].as_array().unwrap().len(), 0);
    let text = keybag(with_key(&[os("verify"), enc().as_os_str()]));
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.text().contains("Password OK"), "{}", text.text());
}

#[test]
fn enc_info_json_fields() {
    let out = keybag(with_key(&[os("info"), enc().as_os_str(), os("--json")]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let j = out.json();
    let exp = expected();
    assert_eq!(j["encrypted"], true);
    assert_eq!(j["passcode_set"], true);
    assert_eq!(j["device"]["name"], exp["device"]["DeviceName"]);
    assert_eq!(j["device"]["product_type"], exp["device"]["ProductType"]);
    assert_eq!(
        j["device"]["product_version"],
        exp["device"]["ProductVersion"]
    );
    assert_eq!(j["device"]["udid"], exp["udid"]);
    assert_eq!(j["backup_date_unix"], exp["backup_date_unix"]);
    assert_eq!(j["backup_date"], "2024-04-26T23:08:23Z");
    assert_eq!(j["records"], 40);
    assert_eq!(j["files"], 16);
    assert_eq!(j["directories"], 23);
    assert_eq!(j["symlinks"], 1);
    assert_eq!(j["missing_blobs"], 0);
    let sizes: u64 = expected_files().len() as u64;
    assert_eq!(sizes, 16);
    let total: u64 = exp["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["flags"] == 1)
        .map(|r| r["size"].as_u64().unwrap())
        .sum();
    assert_eq!(j["total_bytes"].as_u64().unwrap(), total);
    let classes: BTreeMap<u64, u64> = j["by_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["class"].as_u64().unwrap(), c["files"].as_u64().unwrap()))
        .collect();
    assert_eq!(classes, BTreeMap::from([(1, 3), (2, 2), (3, 7), (4, 4)]));
    assert_eq!(j["by_domain"].as_array().unwrap().len(), 5);
    assert_eq!(j["keybag"]["kdf_sha256_rounds"], 10_000_000);
    assert_eq!(j["keybag"]["uuid"], exp["keybag"]["uuid"]);
    assert_eq!(
        j["keybag"]["sealed_classes"],
        serde_json::json!([5, 9, 10, 11])
    );
    // No secret anywhere in the output.
    let text = out.text();
    for secret in [
        PASSKEY,
        PASSWORD,
        exp["device_key_835_hex"].as_str().unwrap(),
    ] {
        assert!(!text.contains(secret));
    }
    // With the device key, every class opens.
    let out = keybag(with_key(&[
        os("info"),
        enc().as_os_str(),
        os("--json"),
        os("--device-key"),
        os(exp["device_key_835_hex"].as_str().unwrap()),
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.json()["keybag"]["sealed_classes"],
        serde_json::json!([])
    );
}

#[test]
fn enc_decrypt_then_read_without_password() {
    let work = tempfile::tempdir().unwrap();
    let plain = work.path().join("plain");
    let out = keybag(with_key(&[
        os("decrypt"),
        enc().as_os_str(),
        plain.as_os_str(),
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.text().starts_with("Decrypted 16 files"),
        "{}",
        out.text()
    );
    let listing = keybag([os("ls"), plain.as_os_str()]);
    assert_eq!(listing.code, 0, "{}", listing.stderr);
    assert_eq!(listing.lines(), expected_lines());
    let info = keybag([os("info"), plain.as_os_str(), os("--json")]);
    assert_eq!(info.json()["encrypted"], false);
    for (domain, rel, _, sha) in expected_files() {
        let out = keybag([os("cat"), plain.as_os_str(), os(&domain), os(&rel)]);
        assert_eq!(sha256_hex(&out.stdout), sha, "{domain}/{rel}");
    }
    // A second run refuses to overwrite; decrypting a plain backup is refused.
    let again = keybag(with_key(&[
        os("decrypt"),
        enc().as_os_str(),
        plain.as_os_str(),
    ]));
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let plain2 = work.path().join("plain2");
    let twice = keybag([os("decrypt"), plain.as_os_str(), plain2.as_os_str()]);
    assert_eq!(twice.code, 1);
    assert!(twice.stderr.contains("not encrypted"), "{}", twice.stderr);
    assert!(!plain2.exists());
}

#[test]
fn json_errors_go_to_stderr_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = keybag([os("info"), dir.path().as_os_str(), os("--json")]);
    assert_eq!(out.code, 4);
    assert!(out.stdout.is_empty());
    assert_eq!(out.stderr_lines().len(), 1);
}

#[test]
fn demo_runs_on_a_fresh_clone_without_printing_secrets() {
    let out = keybag(["demo"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let t = out.text();
    for step in ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"] {
        assert!(t.contains(step), "{t}");
    }
    assert!(t.contains("derived key"), "{t}");
    assert!(t.contains("10,000,000"), "{t}");
    assert!(t.contains("Extracted 16 files"), "{t}");
    assert!(!t.contains(PASSKEY) && !t.contains(PASSWORD), "{t}");
    assert!(!t.contains("793b52fd8ca0b58f37cfdde966237ceb"));
    // The temporary folder is gone afterwards.
    let tmp = t
        .lines()
        .find(|l| l.contains("Extracted "))
        .and_then(|l| l.split(" into ").nth(1))
        .map(|p| PathBuf::from(p.trim_end_matches('.')))
        .unwrap();
    assert!(!tmp.exists(), "{} left behind", tmp.display());
}

// ---------------------------------------------------------------- bad input

#[test]
fn not_a_backup_exits_4_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = keybag([os("info"), dir.path().as_os_str()]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains(&dir.path().display().to_string()),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("not an iOS backup"), "{}", out.stderr);
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "hello").unwrap();
    for cmd in ["info", "ls", "verify"] {
        let out = keybag([os(cmd), file.as_os_str()]);
        assert_eq!(out.code, 4, "{cmd}: {}", out.stderr);
        assert!(
            out.stderr.contains(&file.display().to_string()),
            "{}",
            out.stderr
        );
        assert_eq!(out.stderr_lines().len(), 1);
    }
    let out = keybag([os("ls"), dir.path().join("absent").as_os_str()]);
    assert_eq!(out.code, 4);
}

#[test]
fn truncated_blob_is_reported_and_the_rest_extracted() {
    let (_g, b) = fixture_copy(&enc());
    let files = expected_files();
    let (victim_dom, victim_rel, victim_id, _) = files
        .iter()
        .find(|f| f.1 == "Library/Notes/NoteStore.sqlite")
        .unwrap()
        .clone();
    let blob = blob_of(&b, &victim_id);
    let len = std::fs::metadata(&blob).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
    f.set_len(len - 5).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");
    let out = keybag(with_key(&[
        os("extract"),
        b.as_os_str(),
        out_dir.as_os_str(),
    ]));
    assert_eq!(out.code, 3, "{}", out.stderr);
    let t = out.text();
    assert!(t.contains("1 damaged"), "{t}");
    assert!(t.contains(&victim_id), "names the blob: {t}");
    assert!(t.contains(&format!("{victim_dom}/{victim_rel}")), "{t}");
    assert!(t.contains("not a multiple of 16"), "{t}");
    for (domain, rel, id, sha) in &files {
        let p = out_dir.join(domain).join(rel);
        if *id == victim_id {
            assert!(!p.exists(), "no partial file for a damaged blob");
        } else {
            assert_eq!(
                sha256_hex(&std::fs::read(&p).unwrap()),
                *sha,
                "{domain}/{rel}"
            );
        }
    }
    // verify --deep finds it too; cat fails with 3 and names the blob.
    let v = keybag(with_key(&[os("verify"), b.as_os_str(), os("--deep")]));
    assert_eq!(v.code, 3);
    assert!(v.text().contains(&victim_id));
    let c = keybag(with_key(&[
        os("cat"),
        b.as_os_str(),
        os(&victim_dom),
        os(&victim_rel),
    ]));
    assert_eq!(c.code, 3);
    assert!(c.stderr.contains(&victim_id), "{}", c.stderr);
    assert_eq!(c.stderr_lines().len(), 1);
}

#[test]
fn bad_padding_is_reported() {
    let (_g, b) = fixture_copy(&enc());
    let files = expected_files();
    let (dom, rel, id, _) = files
        .iter()
        .find(|f| f.1 == "Documents/Résumé 2024.txt")
        .unwrap()
        .clone();
    // Flipping the top bit of the last byte of the next-to-last block flips the
    // last plaintext byte (the pad length) to a value above 16.
    let blob = blob_of(&b, &id);
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    assert!(n >= 32);
    bytes[n - 17] ^= 0x80;
    std::fs::write(&blob, bytes).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");
    let out = keybag(with_key(&[
        os("extract"),
        b.as_os_str(),
        out_dir.as_os_str(),
        os("--json"),
    ]));
    assert_eq!(out.code, 3, "{}", out.stderr);
    let j = out.json();
    let p: Vec<&Value> = j["problems"].as_array().unwrap().iter().collect();
    assert_eq!(p.len(), 1, "{j}");
    assert_eq!(p[0]["kind"], "damaged");
    assert_eq!(p[0]["path"], format!("{dom}/{rel}"));
    assert!(p[0]["message"].as_str().unwrap().contains("padding"), "{j}");
    assert_eq!(j["files"], 16, "the bytes are kept, flagged");
    let c = keybag(with_key(&[os("cat"), b.as_os_str(), os(&dom), os(&rel)]));
    assert_eq!(c.code, 3);
    assert!(c.stderr.contains("padding"), "{}", c.stderr);
}

#[test]
fn missing_blob_is_reported() {
    let (_g, b) = fixture_copy(&enc());
    let files = expected_files();
    let (dom, rel, id, _) = files[0].clone();
    std::fs::remove_file(blob_of(&b, &id)).unwrap();
    let info = keybag(with_key(&[os("info"), b.as_os_str(), os("--json")]));
    assert_eq!(info.json()["missing_blobs"], 1);
    let verify = keybag(with_key(&[os("verify"), b.as_os_str(), os("--json")]));
    assert_eq!(verify.code, 3);
    assert_eq!(verify.json()["missing"], 1);
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");
    let out = keybag(with_key(&[
        os("extract"),
        b.as_os_str(),
        out_dir.as_os_str(),
    ]));
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.text().contains("1 missing"), "{}", out.text());
    assert!(
        out.text().contains(&format!("{dom}/{rel}")),
        "{}",
        out.text()
    );
    assert!(out.text().contains("Extracted 15 files"), "{}", out.text());
    let c = keybag(with_key(&[os("cat"), b.as_os_str(), os(&dom), os(&rel)]));
    assert_eq!(c.code, 3);
    assert!(c.stderr.contains("blob missing"), "{}", c.stderr);
}

#[test]
fn corrupt_manifest_db_exits_4() {
    // Pages overwritten after the header, then the header itself.
    let (_g, b) = fixture_copy(&mvt());
    let db = b.join("Manifest.db");
    let mut bytes = std::fs::read(&db).unwrap();
    for x in &mut bytes[4096 * 3..4096 * 23] {
        *x = 0xAA;
    }
    std::fs::write(&db, &bytes).unwrap();
    let out = keybag([os("ls"), b.as_os_str()]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("Manifest.db"), "{}", out.stderr);
    assert_eq!(out.stderr_lines().len(), 1);

    for x in &mut bytes[..100] {
        *x = 0x55;
    }
    std::fs::write(&db, &bytes).unwrap();
    for cmd in ["ls", "info", "extract"] {
        let mut args = vec![os(cmd), b.as_os_str()];
        let target = b.parent().unwrap().join("out");
        if cmd == "extract" {
            args.push(target.as_os_str());
        }
        let out = keybag(args);
        assert_eq!(out.code, 4, "{cmd}: {}", out.stderr);
        assert!(out.stderr.contains("Manifest.db"), "{}", out.stderr);
    }
}

#[test]
fn manifest_plist_without_manifest_key_exits_4() {
    let (_g, b) = fixture_copy(&enc());
    rewrite_manifest(&b, |d| {
        d.remove("ManifestKey");
    });
    let out = keybag(with_key(&[os("ls"), b.as_os_str()]));
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("ManifestKey"), "{}", out.stderr);
    assert!(out.stderr.contains("Manifest.plist"), "{}", out.stderr);
}

#[test]
fn malformed_keybag_exits_4() {
    // An invalid tag.
    let (_g, b) = fixture_copy(&enc());
    let mut kb = keybag_bytes(&b);
    assert_eq!(&kb[..4], b"VERS");
    kb[1] = 0;
    rewrite_manifest(&b, |d| {
        d.insert("BackupKeyBag".into(), plist::Value::Data(kb));
    });
    let out = keybag(with_key(&[os("ls"), b.as_os_str()]));
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("Manifest.plist"), "{}", out.stderr);
    assert!(out.stderr.contains("invalid tag"), "{}", out.stderr);

    // A length running past the end.
    let (_g2, b2) = fixture_copy(&enc());
    let mut kb = keybag_bytes(&b2);
    kb[4..8].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    rewrite_manifest(&b2, |d| {
        d.insert("BackupKeyBag".into(), plist::Value::Data(kb));
    });
    let out = keybag(with_key(&[os("info"), b2.as_os_str()]));
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("truncated"), "{}", out.stderr);

    // A wrong-length value of a known tag.
    let (_g3, b3) = fixture_copy(&enc());
    let kb = keybag_bytes(&b3);
    let mut bad = kb[..4].to_vec();
    bad.extend_from_slice(&2u32.to_be_bytes());
    bad.extend_from_slice(&[0, 5]);
    bad.extend_from_slice(&kb[12..]);
    rewrite_manifest(&b3, |d| {
        d.insert("BackupKeyBag".into(), plist::Value::Data(bad));
    });
    let out = keybag(with_key(&[os("info"), b3.as_os_str()]));
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("VERS"), "{}", out.stderr);
}

#[test]
fn absurd_dpic_is_refused_quickly() {
    let (_g, b) = fixture_copy(&enc());
    let mut kb = keybag_bytes(&b);
    let at = kb.windows(4).position(|w| w == b"DPIC").unwrap();
    assert_eq!(&kb[at + 4..at + 8], &4u32.to_be_bytes());
    kb[at + 8..at + 12].copy_from_slice(&u32::MAX.to_be_bytes());
    rewrite_manifest(&b, |d| {
        d.insert("BackupKeyBag".into(), plist::Value::Data(kb));
    });
    let start = Instant::now();
    let out = keybag_env([os("ls"), b.as_os_str()], &[("KEYBAG_PASSWORD", PASSWORD)]);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(out.stderr_lines().len(), 1);
    assert!(out.stderr.contains("cap"), "{}", out.stderr);
    assert!(out.stderr.contains("4294967295"), "{}", out.stderr);
    assert!(out.stderr.contains("DPIC"), "{}", out.stderr);
}

#[test]
fn hostile_rows_are_reported_and_nothing_escapes() {
    let (g, b) = fixture_copy(&mvt());
    let tag = format!("keybag-escape-{}", std::process::id());
    let body = b"hostile content\n".to_vec();
    let file_row = |dom: &str, rel: &str| {
        let id = layout::file_id(dom, rel);
        let blob = blob_of(&b, &id);
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, &body).unwrap();
        (
            id,
            dom.to_string(),
            rel.to_string(),
            1,
            mbfile_for(rel, 0o100644, body.len() as u64, None),
        )
    };
    let mut rows = vec![
        file_row("HomeDomain", &format!("../../../{tag}-dotdot.txt")),
        file_row("HomeDomain", &format!("/tmp/{tag}-absolute.txt")),
        file_row("HomeDomain", &format!("Library/{tag}\0nul.txt")),
        file_row("HomeDomain", &format!("..\\..\\{tag}-backslash.txt")),
        file_row(&format!("../../{tag}-domain"), "x.txt"),
    ];
    // fileIDs that are not 40 lowercase hex digits.
    let rel = format!("Library/{tag}-fileid.txt");
    rows.push((
        format!("../../../../tmp/{tag}-fileid"),
        "HomeDomain".into(),
        rel.clone(),
        1,
        mbfile_for(&rel, 0o100644, 16, None),
    ));
    let rel = format!("Library/{tag}-upper.txt");
    rows.push((
        layout::file_id("HomeDomain", &rel).to_uppercase(),
        "HomeDomain".into(),
        rel.clone(),
        1,
        mbfile_for(&rel, 0o100644, 16, None),
    ));
    // Symlinks pointing outside.
    for (name, target) in [
        ("abs", "/etc/passwd"),
        ("rel", "../../../../etc"),
        ("deep", "/var/mobile/../../etc"),
    ] {
        let rel = format!("Library/{tag}-link-{name}");
        rows.push((
            layout::file_id("HomeDomain", &rel),
            "HomeDomain".into(),
            rel.clone(),
            4,
            mbfile_for(&rel, 0o120755, 0, Some(target)),
        ));
    }
    // An MBFile whose RelativePath differs from the row's.
    let rel = format!("Library/{tag}-mismatch.txt");
    rows.push((
        layout::file_id("HomeDomain", &rel),
        "HomeDomain".into(),
        rel,
        1,
        mbfile_for("../../../../etc/passwd", 0o100644, 16, None),
    ));
    insert_rows(&b, &rows);

    let out_dir = g.path().join("out");
    let out = keybag([
        os("extract"),
        b.as_os_str(),
        out_dir.as_os_str(),
        os("--json"),
    ]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let j = out.json();
    let problems: BTreeMap<String, String> = j["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] != "missing" && p["kind"] != "size-mismatch")
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_string(),
                p["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (_, dom, rel, flags, _) in &rows {
        let path = record_line(dom, rel);
        let kind = problems
            .get(&path)
            .unwrap_or_else(|| panic!("{path:?} not reported: {problems:?}"));
        if *flags == 4 {
            assert_eq!(kind, "symlink-skipped", "{path}");
        } else {
            assert_eq!(kind, "bad-record", "{path}");
        }
    }
    assert_eq!(j["files"], 10, "the real files are still extracted");

    // Nothing outside OUTDIR: the temp dir holds only the backup copy and OUTDIR.
    let beside: BTreeSet<String> = std::fs::read_dir(g.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        beside,
        BTreeSet::from(["backup".to_string(), "out".to_string()])
    );
    for p in walk(g.path()) {
        let name = p.to_string_lossy();
        assert!(
            !name.contains(&tag) || name.starts_with("backup"),
            "{name} was written"
        );
    }
    assert!(!Path::new(&format!("/tmp/{tag}-absolute.txt")).exists());
    assert!(!Path::new(&format!("/tmp/{tag}-fileid")).exists());
    assert_links_stay_inside(&out_dir);

    // ls shows them (escaped, one line each) and warns; verify lists them.
    let ls = keybag([os("ls"), b.as_os_str()]);
    assert_eq!(ls.code, 0);
    assert_eq!(ls.lines().len(), 3721 + rows.len());
    assert!(
        ls.text()
            .contains(&format!("HomeDomain/Library/{tag}\\u{{0}}nul.txt")),
        "NUL is escaped"
    );
    assert!(ls.stderr.contains("unsafe or undecodable"), "{}", ls.stderr);
    let v = keybag([os("verify"), b.as_os_str(), os("--json")]);
    assert_eq!(v.code, 3);
    assert_eq!(v.json()["bad_records"], rows.len() as u64 - 3);
}

/// A keyed archive whose root reference is `root` with `objects`.
fn archive(objects: Vec<plist::Value>, root: plist::Value) -> Vec<u8> {
    let mut top = plist::Dictionary::new();
    top.insert("root".into(), root);
    let mut d = plist::Dictionary::new();
    d.insert("$archiver".into(), "NSKeyedArchiver".into());
    d.insert("$version".into(), plist::Value::Integer(100_000.into()));
    d.insert("$top".into(), plist::Value::Dictionary(top));
    d.insert("$objects".into(), plist::Value::Array(objects));
    let mut buf = Vec::new();
    plist::Value::Dictionary(d)
        .to_writer_binary(&mut buf)
        .unwrap();
    buf
}

#[test]
fn broken_mbfile_archives_are_bad_records_and_the_rest_is_extracted() {
    use plist::{Uid, Value as P};
    let (g, b) = fixture_copy(&mvt());
    let null = || P::String("$null".into());
    let mut mb = plist::Dictionary::new();
    mb.insert("RelativePath".into(), P::Uid(Uid::new(99)));
    mb.insert("Size".into(), P::Integer(5.into()));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dangling-root", archive(vec![null()], P::Uid(Uid::new(7)))),
        (
            "cyclic",
            archive(vec![null(), P::Uid(Uid::new(1))], P::Uid(Uid::new(1))),
        ),
        (
            "self-cycle",
            archive(
                vec![null(), P::Uid(Uid::new(2)), P::Uid(Uid::new(1))],
                P::Uid(Uid::new(1)),
            ),
        ),
        (
            "dangling-field",
            archive(vec![null(), P::Dictionary(mb)], P::Uid(Uid::new(1))),
        ),
        ("not-a-plist", b"garbage, not a plist".to_vec()),
    ];
    let rows: Vec<_> = cases
        .iter()
        .map(|(name, bytes)| {
            let rel = format!("Library/broken-{name}.txt");
            let id = layout::file_id("HomeDomain", &rel);
            let blob = blob_of(&b, &id);
            std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
            std::fs::write(&blob, b"x").unwrap();
            (id, "HomeDomain".to_string(), rel, 1i64, bytes.clone())
        })
        .collect();
    insert_rows(&b, &rows);
    let out_dir = g.path().join("out");
    let out = keybag([
        os("extract"),
        b.as_os_str(),
        out_dir.as_os_str(),
        os("--json"),
    ]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let j = out.json();
    let problems = j["problems"].as_array().unwrap();
    for (_, dom, rel, _, _) in &rows {
        let path = record_line(dom, rel);
        let p = problems
            .iter()
            .find(|p| p["path"] == path.as_str())
            .unwrap_or_else(|| panic!("{path} not reported"));
        assert_eq!(p["kind"], "bad-record", "{p}");
        assert!(!out_dir.join(&path).exists());
    }
    let messages: Vec<&str> = problems
        .iter()
        .filter_map(|p| p["message"].as_str())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("dangling UID")),
        "{messages:?}"
    );
    assert!(messages.iter().any(|m| m.contains("cycle")), "{messages:?}");
    assert_eq!(j["files"], 10);
    for (path, id) in mvt_present_files() {
        assert_eq!(
            std::fs::read(out_dir.join(&path)).unwrap(),
            std::fs::read(blob_of(&mvt(), &id)).unwrap(),
            "{path}"
        );
    }
}

#[test]
fn extract_into_a_file_is_refused_before_asking_anything() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let out = keybag([os("extract"), enc().as_os_str(), file.as_os_str()]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("not a folder"), "{}", out.stderr);
}

/// A blob changed in its first block still has valid padding: only its `Digest`
/// shows the change. `verify --deep` (like `audit`) must catch it.
#[test]
fn verify_deep_catches_a_digest_mismatch_with_valid_padding() {
    let (_tmp, b) = fixture_copy(&enc());
    let blob = blob_of(&b, "a736b045bdc00d2e22b269e370cec43d73a2bfe8"); // NoteStore.sqlite, 4,096 bytes
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[5] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();

    let quick = keybag(with_key(&[os("verify"), b.as_os_str(), os("--json")]));
    assert_eq!(
        quick.code, 0,
        "presence-only check cannot see it: {}",
        quick.stderr
    );
    let deep = keybag(with_key(&[
        os("verify"),
        b.as_os_str(),
        os("--deep"),
        os("--json"),
    ]));
    assert_eq!(deep.code, 3, "{}", deep.stderr);
    let j = deep.json();
    assert_eq!(j["digest_mismatches"], 1);
    assert_eq!(j["damaged"], 1);
    assert_eq!(j["problems"][0]["kind"], "digest-mismatch");
    assert!(j["problems"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("NoteStore.sqlite"));
    // The file still decrypts with valid padding: extraction writes it, silently different.
    let text = keybag(with_key(&[os("verify"), b.as_os_str(), os("--deep")]));
    assert_eq!(text.code, 3);
    assert!(text.text().contains("digest-mismatch"), "{}", text.text());
    assert!(
        text.text().contains("differs from the recorded Digest"),
        "{}",
        text.text()
    );
}
