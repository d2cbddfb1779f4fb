//! `keybag audit` against the fixtures, tampered copies of them, hostile names,
//! and the HTML page rendered by a real headless Chromium.
//!
//! Secrets never go in argv: the password comes from `KEYBAG_PASSWORD`; most
//! runs use the fixture's published derived key and device key (allowed as hex).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{
    blob_of, enc, expected, fixture_copy, keybag, keybag_env, mvt, Out, DEVICE_KEY, PASSKEY,
    PASSWORD,
};
use mobilebackup::mbfile::{self, MbFile};
use serde_json::Value;

// ---------------------------------------------------------------- helpers

/// The `target/` folder of this build (beside `target/debug/keybag`).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_keybag"))
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

fn record<'a>(exp: &'a Value, domain: &str, rel: &str) -> &'a Value {
    exp["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["domain"] == domain && r["relativePath"] == rel)
        .unwrap_or_else(|| panic!("{domain}/{rel} in expected.json"))
}

/// `audit BACKUP --json --derived-key … [extra]` on the encrypted fixture (or a copy).
fn audit_json(backup: &Path, extra: &[&str]) -> Out {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("audit"),
        backup.as_os_str(),
        OsStr::new("--json"),
        OsStr::new("--derived-key"),
        OsStr::new(PASSKEY),
    ];
    args.extend(extra.iter().map(OsStr::new));
    keybag(args)
}

/// The expected ThisDeviceOnly items: (agrp, table, rowid, class, acct, svce or srvr).
fn expected_tdo() -> Vec<(String, String, u64, u64, String, String)> {
    expected()["keychain"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["this_device_only"] == true)
        .map(|i| {
            (
                i["agrp"].as_str().unwrap().to_string(),
                i["table"].as_str().unwrap().to_string(),
                i["rowid"].as_u64().unwrap(),
                i["class"].as_u64().unwrap(),
                i["acct"].as_str().unwrap().to_string(),
                i["svce"]
                    .as_str()
                    .or(i["srvr"].as_str())
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

fn problems_of(report: &Value, kind: &str) -> Vec<String> {
    report["integrity"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == kind)
        .map(|p| p["path"].as_str().unwrap().to_string())
        .collect()
}

/// The entries of a report list (`never_backed_up`, `encrypted_only`) by their `id`.
fn by_id(list: &Value) -> BTreeMap<&str, &Value> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect()
}

// ---------------------------------------------------------------- the encrypted fixture

#[test]
fn fixture_json_facts_with_the_device_key() {
    let out = audit_json(&enc(), &["--device-key", DEVICE_KEY]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    let exp = expected();

    // Encryption and the KDF.
    let e = &r["encryption"];
    assert_eq!(e["encrypted"], true);
    assert_eq!(e["unlocked"], true);
    assert_eq!(e["device_key_used"], true);
    assert_eq!(e["kdf"]["scheme"], "double");
    assert_eq!(e["kdf"]["sha256_rounds"], 10_000_000);
    assert_eq!(e["kdf"]["sha256_rounds"], exp["keybag"]["dpic"]);
    assert_eq!(e["kdf"]["sha1_rounds"], exp["keybag"]["iter"]);
    assert_eq!(e["kdf"]["sha256_salt_bytes"], 20);
    assert_eq!(e["kdf"]["sha1_salt_bytes"], 20);
    let c = &e["guess_cost"];
    let secs = c["seconds_per_guess_per_core"].as_f64().unwrap();
    let rate = c["guesses_per_second_per_core"].as_f64().unwrap();
    assert!(secs > 0.01 && secs < 1000.0, "{c}");
    assert!((secs * rate - 1.0).abs() < 1e-6, "{c}");
    assert_eq!(c["sample_sha256_rounds"], 100_000);
    assert!(c["cores"].as_u64().unwrap() >= 1);
    // A derived key gives no password to rate.
    assert!(e["password_strength"].is_null());

    // Keychain: 6 items, all open with the device key.
    let k = &r["keychain"];
    assert_eq!(k["status"], "read");
    assert_eq!(k["items"], 6);
    assert_eq!(k["open"], 6);
    assert_eq!(k["this_device_only"], 3);
    assert_eq!(k["migratory"], 3);
    assert_eq!(k["akpu"], 0);
    assert_eq!(k["keybag_uuid"], exp["keychain"]["keybag_uuid"]);
    assert_eq!(k["keybag_uuid_matches"], true);

    // What will not come back: the three ThisDeviceOnly items, named, by access group.
    let lost = &r["lost_on_new_device"];
    assert_eq!(lost["items"], 3);
    assert_eq!(lost["named"], 3);
    assert_eq!(lost["migratory"], 3);
    let mut got = Vec::new();
    for g in lost["groups"].as_array().unwrap() {
        let agrp = g["access_group"].as_str().unwrap();
        for i in g["items"].as_array().unwrap() {
            assert_eq!(i["access_group"], agrp);
            assert_eq!(i["state"], "open");
            assert_eq!(i["this_device_only"], true);
            got.push((
                agrp.to_string(),
                i["table"].as_str().unwrap().to_string(),
                i["rowid"].as_u64().unwrap(),
                i["class"].as_u64().unwrap(),
                i["account"].as_str().unwrap().to_string(),
                i["service"]
                    .as_str()
                    .or(i["server"].as_str())
                    .unwrap()
                    .to_string(),
            ));
            assert!(i.get("secret").is_none() && i.get("v_Data").is_none());
        }
    }
    let mut want = expected_tdo();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let groups: Vec<&str> = lost["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["access_group"].as_str().unwrap())
        .collect();
    assert_eq!(
        groups,
        ["apple", "net.forge.chat"],
        "sorted by access group"
    );
    // Migratory items counted per access group, against the ground truth.
    let mut want_mig: BTreeMap<String, u64> = BTreeMap::new();
    for i in exp["keychain"]["items"].as_array().unwrap() {
        if i["this_device_only"] == false {
            *want_mig
                .entry(i["agrp"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    let got_mig: BTreeMap<String, u64> = lost["migratory_by_access_group"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["access_group"].as_str().unwrap().to_string(),
                g["items"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got_mig, want_mig);

    // Integrity: clean, every blob read, every Digest checked.
    let i = &r["integrity"];
    let digests = exp["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["digest_hex"].is_string())
        .count();
    assert_eq!(i["deep"], true);
    assert_eq!(i["clean"], true);
    assert_eq!(i["files"], 16);
    assert_eq!(i["files_read"], 16);
    assert_eq!(i["missing"], 0);
    assert_eq!(i["digest_mismatches"], 0);
    assert_eq!(i["damaged"], 0);
    assert_eq!(i["sealed"], 0);
    assert_eq!(i["digest_checked"], digests as u64);
    assert_eq!(i["problems"].as_array().unwrap().len(), 0);

    // Contents against the ground truth.
    let recs = exp["records"].as_array().unwrap();
    assert_eq!(r["contents"]["records"], recs.len() as u64);
    assert_eq!(r["contents"]["files"], 16);
    let total: u64 = recs
        .iter()
        .filter(|r| r["flags"] == 1)
        .map(|r| r["size"].as_u64().unwrap())
        .sum();
    assert_eq!(r["contents"]["total_bytes"], total);
    let mut want_class: BTreeMap<u64, u64> = BTreeMap::new();
    for rec in recs.iter().filter(|r| r["flags"] == 1) {
        *want_class
            .entry(rec["protection_class"].as_u64().unwrap())
            .or_default() += 1;
    }
    let got_class: BTreeMap<u64, u64> = r["contents"]["by_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["class"].as_u64().unwrap(), c["files"].as_u64().unwrap()))
        .collect();
    assert_eq!(got_class, want_class);
    let domains: BTreeSet<&str> = recs.iter().map(|r| r["domain"].as_str().unwrap()).collect();
    let got_domains: BTreeSet<&str> = r["contents"]["by_domain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["domain"].as_str().unwrap())
        .collect();
    assert_eq!(got_domains, domains);

    // Never backed up: the akpu check is a real check here.
    let never = by_id(&r["never_backed_up"]);
    assert_eq!(never["akpu-keychain-items"]["verdict"], "absent");
    assert_eq!(never["app-caches"]["verdict"], "absent");
    assert_eq!(never["app-tmp"]["verdict"], "absent");
    assert_eq!(never["app-bundles"]["verdict"], "absent");
    assert_eq!(never["excluded-files"]["verdict"], "unverifiable");

    // Encrypted-only content of this small fixture.
    let only = by_id(&r["encrypted_only"]);
    assert_eq!(only["saved-passwords"]["present"], true);
    assert_eq!(only["health"]["present"], false);
    assert_eq!(only["call-history"]["present"], false);
    assert_eq!(only["safari-history"]["present"], false);
    assert_eq!(only["wifi"]["present"], false);

    // Who can read what.
    let who: Vec<&str> = r["access"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["who"].as_str().unwrap())
        .collect();
    assert!(who.iter().any(|w| w.contains("backup password")), "{who:?}");
    assert!(who.iter().any(|w| w.contains("original iPhone")), "{who:?}");

    // The first finding is what a new iPhone will not get back.
    assert_eq!(r["summary"][0]["level"], "warning");
    assert!(r["summary"][0]["title"]
        .as_str()
        .unwrap()
        .contains("3 keychain items will not come back"));
    // No secret of the fixture anywhere.
    let text = out.text();
    for i in exp["keychain"]["items"].as_array().unwrap() {
        let secret = hex::decode(i["secret_hex"].as_str().unwrap()).unwrap();
        assert!(!text.contains(std::str::from_utf8(&secret).unwrap()));
    }
    assert!(!text.contains(PASSKEY) && !text.contains(DEVICE_KEY));
}

#[test]
fn fixture_text_names_every_this_device_only_item_with_the_device_key() {
    let out = keybag([
        OsStr::new("audit"),
        enc().as_os_str(),
        OsStr::new("--derived-key"),
        OsStr::new(PASSKEY),
        OsStr::new("--device-key"),
        OsStr::new(DEVICE_KEY),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.text();
    // Most important first: the summary starts with what a new iPhone will not get.
    let summary = text.find("Summary").unwrap();
    let lost = text.find("3 keychain items will not come back").unwrap();
    assert!(
        lost > summary && lost < text.find("Integrity").unwrap(),
        "{text}"
    );
    for (agrp, table, rowid, _, acct, name) in expected_tdo() {
        assert!(text.contains(&agrp), "{agrp}\n{text}");
        assert!(text.contains(&acct), "{acct}\n{text}");
        assert!(text.contains(&name), "{name}\n{text}");
        assert!(text.contains(&format!("{table}/{rowid}")), "{text}");
    }
    assert!(text.contains("UID-derived key 0x835"), "{text}");
    assert!(
        text.contains("These do come back: 3 migratory keychain items"),
        "{text}"
    );
}

#[test]
fn fixture_without_the_device_key_lists_sealed_items_and_says_why() {
    let out = audit_json(&enc(), &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    let lost = &r["lost_on_new_device"];
    assert_eq!(lost["items"], 3);
    assert_eq!(lost["named"], 0);
    assert_eq!(r["keychain"]["sealed"], 3);
    assert_eq!(r["keychain"]["open"], 3);
    assert_eq!(r["encryption"]["device_key_used"], false);
    let groups = lost["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert!(groups[0]["access_group"].is_null());
    let mut got: Vec<(String, u64, u64, String)> = groups[0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["state"], "sealed");
            assert!(i["account"].is_null() && i["service"].is_null() && i["server"].is_null());
            let reason = i["reason"].as_str().unwrap();
            assert!(reason.contains("UID key 0x835"), "{reason}");
            (
                i["table"].as_str().unwrap().to_string(),
                i["rowid"].as_u64().unwrap(),
                i["class"].as_u64().unwrap(),
                i["persistent_ref"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut want: Vec<(String, u64, u64, String)> = expected()["keychain"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["this_device_only"] == true)
        .map(|i| {
            (
                i["table"].as_str().unwrap().to_string(),
                i["rowid"].as_u64().unwrap(),
                i["class"].as_u64().unwrap(),
                i["persistent_ref_hex"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let summary = lost["summary"].as_str().unwrap();
    assert!(
        summary.contains("1 aku in inet") && summary.contains("1 cku in genp"),
        "{summary}"
    );

    // The text says the same to a person, and never guesses names.
    let out = keybag([
        OsStr::new("audit"),
        enc().as_os_str(),
        OsStr::new("--derived-key"),
        OsStr::new(PASSKEY),
    ]);
    assert_eq!(out.code, 0);
    let text = out.text();
    for (table, rowid, _, pref) in &want {
        assert!(text.contains(&format!("{table}/{rowid}")), "{text}");
        assert!(text.contains(pref.as_str()), "{text}");
    }
    for short in ["aku", "cku", "dku"] {
        assert!(text.contains(short), "{text}");
    }
    assert!(
        text.contains("sealed by the original iPhone's UID key 0x835"),
        "{text}"
    );
    assert!(text.contains("--device-key"), "{text}");
    for (_, _, _, _, acct, _) in expected_tdo() {
        assert!(
            !text.contains(&acct),
            "{acct} cannot be known without the device key"
        );
    }
}

#[test]
fn password_strength_only_with_the_password_and_the_password_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let env = [("KEYBAG_PASSWORD", PASSWORD)];
    let out = keybag_env(
        [
            OsStr::new("audit"),
            enc().as_os_str(),
            OsStr::new("--json"),
            OsStr::new("--html"),
            html.as_os_str(),
        ],
        &env,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    let s = &r["encryption"]["password_strength"];
    assert!(s.is_object(), "{s}");
    let score = s["score"].as_u64().unwrap();
    assert!(score <= 4);
    assert!(s["guesses_log10"].as_f64().unwrap() > 5.0, "{s}");
    let times = s["crack_times"].as_array().unwrap();
    assert_eq!(times.len(), 4);
    let rates: Vec<f64> = times
        .iter()
        .map(|t| t["guesses_per_second"].as_f64().unwrap())
        .collect();
    let per_core = r["encryption"]["guess_cost"]["guesses_per_second_per_core"]
        .as_f64()
        .unwrap();
    assert!((rates[0] - per_core).abs() < 1e-9);
    assert!((rates[2] / per_core - 100.0).abs() < 1e-6);
    assert!((rates[3] / per_core - 10_000.0).abs() < 1e-6);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("Password strength"));

    let text = keybag_env([OsStr::new("audit"), enc().as_os_str()], &env);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.text().contains("Strength"), "{}", text.text());
    for (what, bytes) in [
        ("json", out.stdout.clone()),
        ("html", page.into_bytes()),
        ("text", text.stdout.clone()),
        ("stderr", out.stderr.clone().into_bytes()),
    ] {
        let s = String::from_utf8(bytes).unwrap();
        assert!(!s.contains(PASSWORD), "password in {what} output");
        assert!(
            !s.contains("horse battery"),
            "part of the password in {what} output"
        );
    }

    // Without the password (derived key only): no strength, and the report says so.
    let out = audit_json(&enc(), &[]);
    assert!(out.json()["encryption"]["password_strength"].is_null());
}

// ---------------------------------------------------------------- the mvt fixture (unencrypted)

/// `domain/path` of every present blob whose SHA-1 differs from its MBFile Digest,
/// computed without keybag's reader (on a copy: SQLite may add -wal/-shm files).
fn present_blobs_with_a_wrong_digest(backup: &Path) -> Vec<String> {
    use sha1::Digest;
    let (_g, b) = fixture_copy(backup);
    let conn = rusqlite::Connection::open(b.join("Manifest.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT fileID, domain, relativePath, file FROM Files WHERE flags = 1")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })
        .unwrap();
    let mut out = Vec::new();
    for row in rows {
        let (id, dom, rel, file) = row.unwrap();
        let Ok(bytes) = std::fs::read(blob_of(&b, &id)) else {
            continue;
        };
        let Some(digest) = mbfile::decode(&file).unwrap().digest else {
            continue;
        };
        if sha1::Sha1::digest(&bytes).as_slice() != digest.as_slice() {
            out.push(format!("{dom}/{rel}"));
        }
    }
    out.sort();
    out
}

#[test]
fn mvt_audit_reports_missing_blobs_keychain_unavailable_and_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("mvt.html");
    let out = keybag([
        OsStr::new("audit"),
        mvt().as_os_str(),
        OsStr::new("--json"),
        OsStr::new("--html"),
        html.as_os_str(),
    ]);
    assert_eq!(out.code, 3, "missing blobs are damage: {}", out.stderr);
    assert!(out.stderr.contains("1,079 missing"), "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["encryption"]["encrypted"], false);
    assert!(r["encryption"]["kdf"].is_null());
    assert!(r["encryption"]["guess_cost"].is_null());
    assert_eq!(r["contents"]["records"], 3721);
    assert_eq!(r["contents"]["files"], 1089);
    let i = &r["integrity"];
    assert_eq!(i["missing"], 1079);
    assert_eq!(i["files_read"], 10);
    assert_eq!(i["clean"], false);
    // The publishers replaced the 10 payloads they kept: the 7 that carry a Digest
    // no longer match it (checked here with SHA-1 directly).
    let mut mismatched = problems_of(&r, "digest-mismatch");
    mismatched.sort();
    assert_eq!(i["digest_mismatches"], 7);
    assert_eq!(mismatched, present_blobs_with_a_wrong_digest(&mvt()));

    // The keychain is listed but its blob is missing: not available, with the reason.
    let k = &r["keychain"];
    assert_eq!(k["status"], "unavailable");
    let reason = k["reason"].as_str().unwrap();
    assert!(
        reason.contains("keychain-backup.plist") && reason.contains("missing"),
        "{reason}"
    );
    assert!(problems_of(&r, "missing").contains(&"KeychainDomain/keychain-backup.plist".into()));
    let never: Vec<&Value> = r["never_backed_up"].as_array().unwrap().iter().collect();
    assert_eq!(never[0]["id"], "akpu-keychain-items");
    assert_eq!(never[0]["verdict"], "unverifiable");

    // Plaintext to anyone with the folder; the keychain to no one off the device.
    let access = r["access"].as_array().unwrap();
    assert!(access[0]["who"]
        .as_str()
        .unwrap()
        .contains("Anyone with the folder"));
    assert!(access[0]["can_read"]
        .as_str()
        .unwrap()
        .contains("plaintext"));
    assert!(access[1]["who"].as_str().unwrap().contains("No one off"));
    assert_eq!(r["summary"][0]["level"], "critical");
    assert!(r["summary"][0]["title"]
        .as_str()
        .unwrap()
        .contains("no keychain item will come back"));

    // The encrypted-only data is present in this (decrypted) copy, and said to be.
    let only = by_id(&r["encrypted_only"]);
    assert_eq!(only["health"]["present"], true);
    assert_eq!(only["call-history"]["present"], true);
    assert_eq!(only["safari-history"]["present"], true);
    assert!(only["saved-passwords"]["present"].is_null());
    let never = by_id(&r["never_backed_up"]);
    assert_eq!(never["app-caches"]["verdict"], "absent");
    assert_eq!(never["app-tmp"]["verdict"], "absent");

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("not available"));
    assert!(page.contains("plaintext"));

    // Text: the same, readable.
    let out = keybag([OsStr::new("audit"), mvt().as_os_str()]);
    assert_eq!(out.code, 3);
    let text = out.text();
    assert!(text.contains("Encrypted     NO"), "{text}");
    assert!(text.contains("Missing 1,079"), "{text}");
    assert!(
        text.contains("... and"),
        "long problem lists are cut: {text}"
    );
}

// ---------------------------------------------------------------- damage

#[test]
fn tampered_copy_reports_digest_mismatch_and_damage() {
    let exp = expected();
    let (_g, b) = fixture_copy(&enc());
    // A blob with a Digest: flip its first byte (CBC: only the first blocks change,
    // the padding stays valid, so only the Digest can tell).
    let notes = record(&exp, "HomeDomain", "Library/Notes/NoteStore.sqlite");
    assert!(notes["digest_hex"].is_string());
    let p = blob_of(&b, notes["fileID"].as_str().unwrap());
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[0] ^= 0x55;
    std::fs::write(&p, &bytes).unwrap();
    // An app file without a Digest: truncate it.
    let welcome = record(&exp, "AppDomain-net.forge.notes", "Documents/welcome.txt");
    let p = blob_of(&b, welcome["fileID"].as_str().unwrap());
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();

    let out = audit_json(&b, &["--device-key", DEVICE_KEY]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let r = out.json();
    let i = &r["integrity"];
    assert_eq!(i["clean"], false);
    assert_eq!(i["digest_mismatches"], 1);
    assert_eq!(i["damaged"], 2);
    assert_eq!(i["missing"], 0);
    assert_eq!(
        problems_of(&r, "digest-mismatch"),
        ["HomeDomain/Library/Notes/NoteStore.sqlite"]
    );
    let damaged = problems_of(&r, "damaged");
    assert_eq!(damaged, ["AppDomain-net.forge.notes/Documents/welcome.txt"]);
    let msg = r["integrity"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "damaged")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("not a multiple of 16"), "{msg}");
    let first = &r["summary"].as_array().unwrap()[1];
    assert_eq!(first["level"], "critical");
    assert!(
        first["detail"].as_str().unwrap().contains("Digest"),
        "{first}"
    );

    // --quick does not read blobs: it cannot see this damage, and says it did not look.
    let out = audit_json(&b, &["--quick"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["integrity"]["deep"], false);
    assert_eq!(r["integrity"]["files_read"], 0);
    assert_eq!(r["integrity"]["digest_mismatches"], 0);
    // ...but it does see a missing blob.
    std::fs::remove_file(&p).unwrap();
    let out = audit_json(&b, &["--quick"]);
    assert_eq!(out.code, 3);
    assert_eq!(
        problems_of(&out.json(), "missing"),
        ["AppDomain-net.forge.notes/Documents/welcome.txt"]
    );
}

#[test]
fn wrong_password_and_bad_html_target_are_errors() {
    let out = keybag_env(
        [OsStr::new("audit"), enc().as_os_str()],
        &[("KEYBAG_PASSWORD", "not the password")],
    );
    assert_eq!(out.code, 5, "{}", out.stderr);
    let dir = tempfile::tempdir().unwrap();
    let out = keybag([
        OsStr::new("audit"),
        mvt().as_os_str(),
        OsStr::new("--html"),
        dir.path().as_os_str(),
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("folder"), "{}", out.stderr);
}

#[test]
fn html_is_written_atomically_and_replaces_an_old_report() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("r.html");
    std::fs::write(&html, "old").unwrap();
    let out = keybag([
        OsStr::new("audit"),
        enc().as_os_str(),
        OsStr::new("--derived-key"),
        OsStr::new(PASSKEY),
        OsStr::new("--quick"),
        OsStr::new("--html"),
        html.as_os_str(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.trim_end().ends_with("</html>"));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["r.html"], "no temp file left behind");
    // Self-contained: no script, no external resource.
    assert!(!page.contains("<script"));
    assert!(!page.contains("http://") && !page.contains("https://"));
    assert!(!page.contains("src=") && !page.contains("<link"));
}

// ---------------------------------------------------------------- hostile names

fn mbfile_for(rel: &str, size: u64) -> Vec<u8> {
    mbfile::encode(&MbFile {
        relative_path: rel.to_string(),
        mode: 0o100644,
        size,
        protection_class: 4,
        mtime: 1_600_000_000,
        ctime: 1_600_000_000,
        birth: 1_600_000_000,
        uid: 501,
        gid: 501,
        ..Default::default()
    })
}

const HOSTILE_DOMAIN: &str = "AppDomain-\"><script>alert('domain')<";
const HOSTILE_PATH: &str = "Library/Caches/<img src=x onerror=alert('path')>.db";
const HOSTILE_BAD_DOMAIN: &str = "AppDomain-<script>alert(1)</script>";

/// A copy of the mvt fixture with rows whose names are HTML.
fn hostile_copy() -> (tempfile::TempDir, PathBuf) {
    let (g, b) = fixture_copy(&mvt());
    let conn = rusqlite::Connection::open(b.join("Manifest.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    for (dom, rel, size) in [
        // The largest domain, so it is listed; a file under Library/Caches, so it is
        // an example of "found" content; and a domain with a '/', an unsafe record.
        (HOSTILE_DOMAIN, HOSTILE_PATH, 900_000_000u64),
        (HOSTILE_BAD_DOMAIN, "Documents/x", 1),
    ] {
        conn.execute(
            "INSERT INTO Files (fileID, domain, relativePath, flags, file) VALUES (?1, ?2, ?3, 1, ?4)",
            rusqlite::params![
                mobilebackup::layout::file_id(dom, rel),
                dom,
                rel,
                mbfile_for(rel, size)
            ],
        )
        .unwrap();
    }
    drop(conn);
    (g, b)
}

#[test]
fn hostile_names_are_escaped_in_html_and_text() {
    let (_g, b) = hostile_copy();
    let html = b.parent().unwrap().join("hostile.html");
    let out = keybag([
        OsStr::new("audit"),
        b.as_os_str(),
        OsStr::new("--html"),
        html.as_os_str(),
    ]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("<script"), "unescaped script tag");
    assert!(!page.contains("<img"), "unescaped img tag");
    assert!(
        page.contains("&lt;script&gt;alert(&#39;domain&#39;)&lt;"),
        "domain shown escaped"
    );
    assert!(
        page.contains("&lt;img src=x onerror=alert(&#39;path&#39;)&gt;"),
        "path shown escaped"
    );
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "bad record shown escaped"
    );
    let r = keybag([OsStr::new("audit"), b.as_os_str(), OsStr::new("--json")]).json();
    let caches = r["never_backed_up"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "app-caches")
        .unwrap()
        .clone();
    assert_eq!(caches["verdict"], "present");
    assert_eq!(caches["found"], 1);
    assert_eq!(problems_of(&r, "bad-record").len(), 1);
    // In a browser, nothing runs and nothing is logged.
    let run = chromium(&html, &["--dump-dom"]);
    assert!(
        run.dom.contains("alert('domain')"),
        "the name is shown as text"
    );
    assert_no_console_messages(&run);
}

// ---------------------------------------------------------------- Chromium

struct Browser {
    dom: String,
    stderr: String,
}

/// The Chromium scripts/test.sh installs (KEYBAG_CHROMIUM), else `chromium` on PATH.
fn chromium_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KEYBAG_CHROMIUM") {
        return PathBuf::from(p);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "Chromium is needed to test the HTML report and was not found: run scripts/test.sh \
         (it installs Debian's chromium) or set KEYBAG_CHROMIUM"
    );
}

/// Renders `page` headless with `extra` (e.g. --dump-dom or --screenshot=…).
fn chromium(page: &Path, extra: &[&str]) -> Browser {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let out = Command::new(chromium_path())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed: {stderr}");
    Browser {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

/// Chromium logs every console message (errors, CSP violations, uncaught
/// exceptions) as a `CONSOLE` line; the page has no script, so there must be none.
fn assert_no_console_messages(b: &Browser) {
    let bad: Vec<&str> = b
        .stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught") || l.contains("Refused to"))
        .collect();
    assert!(bad.is_empty(), "console messages: {bad:#?}");
}

#[test]
fn chromium_renders_the_fixture_report_cleanly() {
    let target = target_dir();
    let html = target.join("audit-report.html");
    let png = target.join("audit-screenshot.png");
    let _ = std::fs::remove_file(&png);
    let out = keybag([
        OsStr::new("audit"),
        enc().as_os_str(),
        OsStr::new("--derived-key"),
        OsStr::new(PASSKEY),
        OsStr::new("--device-key"),
        OsStr::new(DEVICE_KEY),
        OsStr::new("--html"),
        html.as_os_str(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    let dom = chromium(&html, &["--dump-dom"]);
    assert_no_console_messages(&dom);
    assert!(dom.dom.contains("What a new iPhone will not get back"));
    for (agrp, table, rowid, _, acct, name) in expected_tdo() {
        for s in [agrp.as_str(), acct.as_str(), name.as_str()] {
            assert!(dom.dom.contains(s), "{s} not in the rendered DOM");
        }
        assert!(dom.dom.contains(&format!("{table}/{rowid}")));
    }

    let shot = chromium(
        &html,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,2000",
        ],
    );
    assert_no_console_messages(&shot);
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 2000));
    // A blank page compresses to a few KB; a rendered report is far larger.
    assert!(bytes.len() > 50_000, "screenshot is {} bytes", bytes.len());
}
