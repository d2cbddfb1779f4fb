//! `keybag keychain` against the enc-small-public ground truth, backups written by
//! `BackupWriter` with keychain items, and an independent decoder (tests/py/kc_decode.py,
//! run with the iphone_backup_decrypt venv's Python, which has pycryptodome).
//!
//! Secrets never go in argv: passwords through KEYBAG_PASSWORD / KEYBAG_TEST_PASSWORD;
//! only the derived key and the device key, which are flags by design, are arguments.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{
    enc, expected, json_ok, py_command, repo, Keybag, Out, DEVICE_KEY, PASSKEY,
    PASSWORD as FIXTURE_PASSWORD,
};
use dataprotection::{DeviceKey, ProtectionClass};
use mobilebackup::keychain::der::{DerDate, DerValue};
use mobilebackup::keychain::writer::{self as kcw, NewKeychainItem};
use mobilebackup::writer::{BackupWriter, Content, Encryption, NewRecord, WriterOptions};
use serde_json::{json, Value};
use zeroize::Zeroizing;

const PASSWORD: &str = "keychain writer test";

fn expected_items() -> Vec<Value> {
    expected()["keychain"]["items"].as_array().unwrap().clone()
}

fn keybag(args: &[&str], password: Option<&str>) -> Out<String> {
    Keybag::new(args).password(password).run().into_text()
}

fn kc_decode(backup: &Path, password: &str, device_key: Option<&str>) -> Value {
    let mut cmd = py_command("KEYBAG_PY_IBD", "kc_decode.py");
    cmd.arg(backup)
        .env("KEYBAG_TEST_PASSWORD", password)
        .env_remove("KEYBAG_TEST_DEVICE_KEY");
    if let Some(dk) = device_key {
        cmd.env("KEYBAG_TEST_DEVICE_KEY", dk);
    }
    json_ok(&cmd.output().expect("python runs"), "kc_decode.py")
}

/// `keybag keychain FIXTURE --derived-key PASSKEY EXTRA…` on the encrypted fixture,
/// with no KEYBAG_PASSWORD.
fn fixture_keychain(extra: &[&str]) -> Out<String> {
    let dir = enc();
    let mut args = vec!["keychain", dir.to_str().unwrap(), "--derived-key", PASSKEY];
    args.extend_from_slice(extra);
    keybag(&args, None)
}

fn by_ref(items: &Value) -> BTreeMap<String, Value> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let key = i
                .get("persistent_ref")
                .or(i.get("persistent_ref_hex"))
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            (key, i.clone())
        })
        .collect()
}

// ---------------------------------------------------------------- fixture

#[test]
fn fixture_lists_every_item_with_class_and_mobility_secrets_hidden() {
    let out = fixture_keychain(&["--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = out.json();
    assert_eq!(v["present"], true);
    assert_eq!(v["keybag_uuid_matches"], true);
    assert_eq!(v["secrets_shown"], false);
    assert_eq!(
        v["counts"],
        json!({"items": 6, "open": 3, "sealed": 3, "damaged": 0})
    );
    let got = by_ref(&v["items"]);
    for w in expected_items() {
        let it = &got[w["persistent_ref_hex"].as_str().unwrap()];
        assert_eq!(it["table"], w["table"]);
        assert_eq!(it["rowid"], w["rowid"]);
        assert_eq!(it["class"], w["class"]);
        assert_eq!(it["class_short"], w["class_short"]);
        assert_eq!(it["class_name"], w["class_name"]);
        assert_eq!(it["this_device_only"], w["this_device_only"]);
        assert_eq!(it["migratory"], !w["this_device_only"].as_bool().unwrap());
        let want_state = if w["needs_key835"].as_bool().unwrap() {
            "sealed"
        } else {
            "open"
        };
        assert_eq!(it["state"], want_state);
        assert!(it.get("secret").is_none() && it.get("secret_hex").is_none());
        assert!(it["attributes"].get("v_Data").is_none());
        let secret =
            String::from_utf8(hex::decode(w["secret_hex"].as_str().unwrap()).unwrap()).unwrap();
        assert!(
            !out.stdout.contains(&secret),
            "a secret leaked without --show-secrets"
        );
    }
    // The text table: same items, sealed ones with the reason, no secrets.
    let text = fixture_keychain(&[]);
    assert_eq!(text.code, 0);
    assert!(text
        .stdout
        .contains("Keychain: 6 items (3 open, 3 sealed, 0 damaged)"));
    assert_eq!(
        text.stdout
            .matches("sealed: needs the original device's key 0x835")
            .count(),
        3
    );
    assert!(text.stdout.contains("josé@example.com"));
    assert!(text.stdout.contains("ak migratory"));
    assert!(text.stdout.contains("cku ThisDeviceOnly"));
    assert!(!text.stdout.contains("pw-ak-1-hotel"));
}

#[test]
fn fixture_show_secrets_and_device_key() {
    let v = fixture_keychain(&["--json", "--show-secrets"]).json();
    let got = by_ref(&v["items"]);
    for w in expected_items() {
        let it = &got[w["persistent_ref_hex"].as_str().unwrap()];
        if w["needs_key835"].as_bool().unwrap() {
            assert!(it.get("secret_hex").is_none());
        } else {
            assert_eq!(it["secret_hex"], w["secret_hex"]);
        }
    }
    let out = fixture_keychain(&["--json", "--show-secrets", "--device-key", DEVICE_KEY]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = out.json();
    assert_eq!(v["counts"]["open"], 6);
    let got = by_ref(&v["items"]);
    for w in expected_items() {
        let it = &got[w["persistent_ref_hex"].as_str().unwrap()];
        assert_eq!(it["state"], "open");
        assert_eq!(it["secret_hex"], w["secret_hex"]);
        let text = String::from_utf8(hex::decode(w["secret_hex"].as_str().unwrap()).unwrap());
        assert_eq!(it["secret"], json!(text.unwrap()));
        for (ours, theirs) in [
            ("account", "acct"),
            ("access_group", "agrp"),
            ("service", "svce"),
            ("server", "srvr"),
            ("port", "port"),
            ("path", "path"),
            ("label", "labl"),
        ] {
            assert_eq!(it[ours], w[theirs], "{ours}");
        }
        assert_eq!(it["attributes"]["UUID"], w["uuid"]);
        assert_eq!(it["attributes"]["ptcl"], w["ptcl"]);
        assert_eq!(it["attributes"]["pdmn"], w["pdmn"]);
        assert_eq!(
            it["protocol"],
            json!(w["ptcl_fourcc"].as_str().map(str::trim_end))
        );
        // cdat/mdat: ISO 8601 of the GeneralizedTime in the ground truth.
        for (ours, theirs) in [("created", "cdat"), ("modified", "mdat")] {
            let g = w[theirs].as_str().unwrap();
            let iso = format!(
                "{}-{}-{}T{}:{}:{}",
                &g[0..4],
                &g[4..6],
                &g[6..8],
                &g[8..10],
                &g[10..12],
                &g[12..]
            );
            assert_eq!(it[ours], json!(iso), "{ours}");
        }
    }
}

#[test]
fn fixture_wrong_device_key_exits_5() {
    let out = fixture_keychain(&["--device-key", "00112233445566778899aabbccddeeff"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("device key"), "{}", out.stderr);
}

#[test]
fn csv_needs_show_secrets_and_warns() {
    let out = fixture_keychain(&["--format", "csv"]);
    assert_eq!(out.code, 2);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("--show-secrets"), "{}", out.stderr);

    let out = fixture_keychain(&[
        "--format",
        "csv",
        "--show-secrets",
        "--device-key",
        DEVICE_KEY,
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("plaintext"), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "name,url,username,password,note");
    assert_eq!(lines.len(), 7);
    assert!(lines.contains(
        &"Forge item 2 (ck),imap://victor.forge.example:993,josé@example.com,pw-ck-2-juliet,access group net.forge.chat; class ck migratory"
    ));
    assert!(lines.contains(
        &"Forge item 6 (dku),ftp://xray.forge.example:143/login,tango.papa6@example.com,pw-dku-6-charlie,access group apple; class dku ThisDeviceOnly"
    ));
    assert!(lines.contains(
        &"Forge item 1 (ak),,backup.delta1@example.com,pw-ak-1-hotel,access group net.forge.chat; class ak migratory"
    ));

    // Without the device key the sealed items are left out, and said so.
    let out = fixture_keychain(&["--format", "csv", "--show-secrets"]);
    assert_eq!(out.stdout.lines().count(), 4);
    assert!(out.stderr.contains("3 items sealed"), "{}", out.stderr);

    // --format and --json do not mix.
    assert_eq!(
        fixture_keychain(&["--format", "csv", "--show-secrets", "--json"]).code,
        2
    );
}

#[test]
fn independent_decoder_reads_the_fixture_like_the_ground_truth() {
    let got = kc_decode(&enc(), FIXTURE_PASSWORD, Some(DEVICE_KEY));
    assert_eq!(got["keybag_uuid"], "75ce1f86-b7cf-43e6-82ca-5867ce25a9ca");
    let items = by_ref(&got["items"]);
    assert_eq!(items.len(), 6);
    for w in expected_items() {
        let it = &items[w["persistent_ref_hex"].as_str().unwrap()];
        assert_eq!(it["state"], "open");
        assert_eq!(it["class"], w["class"]);
        assert_eq!(it["der_sha256"], w["der_plaintext_sha256"]);
        assert_eq!(it["blob_sha256"], w["v_Data_blob_sha256"]);
        assert_eq!(it["attributes"]["v_Data"]["hex"], w["secret_hex"]);
        assert_eq!(it["attributes"]["acct"], w["acct"]);
    }
    // And keybag agrees with it attribute for attribute.
    compare_with_decoder(
        &fixture_keychain(&["--json", "--show-secrets", "--device-key", DEVICE_KEY]).json(),
        &got,
    );
}

/// keybag's `--json --show-secrets` items equal the independent decoder's, attribute by
/// attribute (keybag lists the secret apart from the other attributes).
fn compare_with_decoder(ours: &Value, theirs: &Value) {
    assert_eq!(ours["keybag_uuid"], theirs["keybag_uuid"]);
    let ours = by_ref(&ours["items"]);
    let theirs = by_ref(&theirs["items"]);
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (r, t) in &theirs {
        let o = &ours[r];
        assert_eq!(o["state"], t["state"], "{r}");
        assert_eq!(o["class"], t["class"], "{r}");
        assert_eq!(o["version"], t["version"], "{r}");
        assert_eq!(o["table"], t["table"], "{r}");
        assert_eq!(o["rowid"], t["rowid"], "{r}");
        if t["state"] != "open" {
            continue;
        }
        let mut attrs = o["attributes"].as_object().unwrap().clone();
        if let Some(s) = o.get("secret_hex") {
            attrs.insert("v_Data".into(), json!({ "hex": s }));
        }
        assert_eq!(Value::Object(attrs), t["attributes"], "{r}");
    }
}

#[test]
fn missing_keychain_blob_exits_3_naming_the_file() {
    let dir = repo().join("testdata/mvt-ios-backup");
    let out = keybag(&["keychain", dir.to_str().unwrap()], None);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("51a4616e576dd33cd2abadfea874eb8ff246bf0e"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------- writer round trip

fn date(text: &str) -> DerValue {
    DerValue::Date(DerDate::parse_generalized(text).unwrap())
}

fn items() -> Vec<NewKeychainItem> {
    let mut v = Vec::new();
    for class in 6..=11u32 {
        let c = ProtectionClass(class);
        v.push(
            NewKeychainItem::new("genp", c)
                .string("agrp", "com.example.app")
                .string("svce", &format!("svc {class}"))
                .string("acct", &format!("Zoë {class}"))
                .string("labl", "日本語, \"quoted\"")
                .attr("cdat", date("20240102030405Z"))
                .attr("mdat", date("20240102030405.25Z"))
                .attr("tomb", DerValue::Integer(0))
                .attr("musr", DerValue::data(Vec::new()))
                .secret(format!("secret-{class}").as_bytes()),
        );
        v.push(
            NewKeychainItem::new("inet", c)
                .string("agrp", "group.example")
                .string("srvr", "www.example.com")
                .string("acct", "me")
                .string("path", "a/b")
                .attr("ptcl", DerValue::Integer(0x6874_7073))
                .attr("port", DerValue::Integer(8443))
                .attr("flag", DerValue::Bool(true))
                .attr("none", DerValue::Null)
                .attr(
                    "list",
                    DerValue::Array(vec![DerValue::Integer(-300), DerValue::string("x")]),
                )
                .secret(&[0xFF, 0x00, 0x10]),
        );
    }
    v.push(
        NewKeychainItem::new("cert", ProtectionClass(8))
            .attr("subj", DerValue::data(vec![0x30, 0x03, 0x02, 0x01, 0x05]))
            .secret(&vec![0x42; 1500]),
    );
    v.push(NewKeychainItem::new("keys", ProtectionClass(7)).secret(&[1; 32]));
    v
}

fn write(dir: &Path, encrypted: bool, dk: &DeviceKey, kc: Vec<NewKeychainItem>) -> PathBuf {
    let opts = WriterOptions {
        encryption: encrypted.then(|| Encryption {
            password: Zeroizing::new(PASSWORD.as_bytes().to_vec()),
            dpic: 10_000,
            device_key: Some(dk.clone()),
        }),
        ..WriterOptions::default()
    };
    let w = BackupWriter::create(&dir.join("backup"), opts).unwrap();
    w.add(NewRecord::file(
        "HomeDomain",
        "Library/x.txt",
        Content::Bytes(b"x".to_vec()),
    ))
    .unwrap();
    w.add_keychain(kc).unwrap();
    w.finish().unwrap()
}

#[test]
fn writer_keychain_is_read_back_by_keybag_and_the_independent_decoder() {
    let tmp = tempfile::tempdir().unwrap();
    let dk = DeviceKey::random();
    let backup = write(tmp.path(), true, &dk, items());
    let dir = backup.to_str().unwrap();

    // Password only: 9-11 sealed, for keybag and for the other decoder.
    let out = keybag(
        &["keychain", dir, "--json", "--show-secrets"],
        Some(PASSWORD),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ours = out.json();
    assert_eq!(ours["keybag_uuid_matches"], true);
    let theirs = kc_decode(&backup, PASSWORD, None);
    assert_eq!(theirs["keybag_uuid"], theirs["backup_keybag_uuid"]);
    compare_with_decoder(&ours, &theirs);
    let sealed: Vec<&Value> = ours["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "sealed")
        .collect();
    assert_eq!(sealed.len(), 6);
    assert!(sealed.iter().all(|i| i["this_device_only"] == true));

    // With the device key: everything opens in both, and equals what was written.
    let dkx = dk.to_hex();
    let out = keybag(
        &[
            "keychain",
            dir,
            "--json",
            "--show-secrets",
            "--device-key",
            &dkx,
        ],
        Some(PASSWORD),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ours = out.json();
    assert_eq!(ours["counts"]["open"], items().len());
    let theirs = kc_decode(&backup, PASSWORD, Some(&dkx));
    compare_with_decoder(&ours, &theirs);
    let written = items();
    for (table, got) in ["genp", "inet", "cert", "keys"].iter().flat_map(|t| {
        ours["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(move |i| i["table"] == *t)
            .map(move |i| (*t, i))
    }) {
        let w = written
            .iter()
            .filter(|w| w.table == table)
            .nth(got["rowid"].as_u64().unwrap() as usize - 1)
            .unwrap();
        assert_eq!(got["class"], w.class.0);
        assert_eq!(
            got["secret_hex"],
            hex::encode(w.attributes["v_Data"].as_data().unwrap())
        );
        assert_eq!(got["attributes"]["pdmn"], w.class.short_name());
    }
    let inet = ours["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["table"] == "inet")
        .unwrap();
    assert_eq!(inet["url"], "https://www.example.com:8443/a/b");
    assert_eq!(inet["attributes"]["list"], json!([-300, "x"]));
    assert!(inet.get("secret").is_none(), "a binary secret has no text");
    assert_eq!(inet["secret_hex"], "ff0010");
}

#[test]
fn unencrypted_writer_keychain_is_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let dk = DeviceKey::random();
    let backup = write(tmp.path(), false, &dk, items());
    let dir = backup.to_str().unwrap();
    let out = keybag(&["keychain", dir, "--json"], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = out.json();
    assert_eq!(v["encrypted"], false);
    assert_eq!(v["counts"]["sealed"], items().len());
    assert!(v["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["reason"] == "unencrypted backup: items are sealed to the original device"));
    let text = keybag(&["keychain", dir], None);
    assert!(text.stdout.contains("not encrypted"), "{}", text.stdout);
}

#[test]
fn damaged_items_exit_3_and_the_rest_is_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let dk = DeviceKey::random();
    let w = BackupWriter::create(
        &tmp.path().join("b"),
        WriterOptions {
            encryption: Some(Encryption {
                password: Zeroizing::new(PASSWORD.as_bytes().to_vec()),
                dpic: 10_000,
                device_key: Some(dk.clone()),
            }),
            ..WriterOptions::default()
        },
    )
    .unwrap();
    // Items encrypted under class keys this backup does not have, plus one that is not
    // even a blob: all damaged, the keychain still listed.
    let uuid = w.keybag_uuid().unwrap();
    let plist = kcw::build_plist(
        &[NewKeychainItem::new("genp", ProtectionClass(6)).secret(b"lost")],
        None,
        &uuid,
    )
    .unwrap();
    w.add(NewRecord::file(
        "KeychainDomain",
        "keychain-backup.plist",
        Content::Bytes(plist),
    ))
    .unwrap();
    let backup = w.finish().unwrap();
    let out = keybag(
        &["keychain", backup.to_str().unwrap(), "--json"],
        Some(PASSWORD),
    );
    assert_eq!(out.code, 3, "{}", out.stderr);
    let v = out.json();
    assert_eq!(v["counts"]["damaged"], 1);
    assert!(v["items"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("does not unwrap"));
    assert!(
        out.stderr.contains("1 keychain item is damaged"),
        "{}",
        out.stderr
    );
}

#[test]
fn not_a_plist_exits_4_and_no_keychain_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let w = BackupWriter::create(&tmp.path().join("a"), WriterOptions::default()).unwrap();
    w.add(NewRecord::file(
        "KeychainDomain",
        "keychain-backup.plist",
        Content::Bytes(b"bplist00 but not really".to_vec()),
    ))
    .unwrap();
    let a = w.finish().unwrap();
    let out = keybag(&["keychain", a.to_str().unwrap()], None);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("keychain-backup.plist"),
        "{}",
        out.stderr
    );

    let w = BackupWriter::create(&tmp.path().join("b"), WriterOptions::default()).unwrap();
    w.add(NewRecord::file("HomeDomain", "x", Content::Bytes(vec![])))
        .unwrap();
    let b = w.finish().unwrap();
    let out = keybag(&["keychain", b.to_str().unwrap(), "--json"], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["present"], false);
    let out = keybag(&["keychain", b.to_str().unwrap()], None);
    assert!(out.stdout.contains("No keychain"));
}
