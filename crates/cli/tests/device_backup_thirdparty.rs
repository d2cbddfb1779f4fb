//! `keybag device backup --encrypt` against readers we did not write: iphone_backup_decrypt and
//! `mvt-ios decrypt-backup` open the backup of a virtual device (Apple's DPIC, 10,000,000) and
//! every file is byte-identical to the device's plaintext; `keybag keychain` lists the exported
//! items with their classes, ThisDeviceOnly ones sealed without the device key and open with it.
//! Also `keybag device restore` / `import` end to end, with their bad-input exit codes.
//! Like thirdparty.rs, these fail (never skip) when the Python tools are missing.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

use common::{as_map, json_ok, keybag_output as keybag};
use device::{DerValue, Device, InitOptions, LockState, ProtectionClass, PutOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const PASSWORD: &str = "device backup pw ✓";
const PASSCODE: &[u8] = b"246810";
const APP: &str = "ch.threema.app";

/// Runs `tests/py/SCRIPT ARGS…` with this file's PASSWORD; its JSON output.
fn run_py(var: &str, script: &str, args: &[&Path]) -> Value {
    json_ok(&common::run_py(var, script, args, Some(PASSWORD)), script)
}

/// The JSON output of a successful keybag run.
fn ok_json(o: &Output) -> Value {
    json_ok(o, "keybag")
}

fn init(dir: &Path) -> Device {
    let mut d = Device::init(
        dir,
        InitOptions {
            name: "Test iPhone".into(),
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

fn item(svce: &str, secret: &[u8]) -> BTreeMap<String, DerValue> {
    let mut a = BTreeMap::new();
    a.insert("svce".into(), DerValue::string(svce));
    a.insert("acct".into(), DerValue::string("alice"));
    a.insert("agrp".into(), DerValue::string(APP));
    a.insert("v_Data".into(), DerValue::data(secret.to_vec()));
    a
}

/// A populated device; returns the sha256 of every file a backup must contain.
fn populate(d: &mut Device) -> BTreeMap<String, String> {
    d.install_app(APP).unwrap();
    let dom = format!("AppDomain-{APP}");
    let mut want = BTreeMap::new();
    let sizes = [0usize, 1, 15, 16, 17, 4096, 100_003, (1 << 20) + 5];
    for (i, size) in sizes.iter().enumerate() {
        let class = ProtectionClass(1 + (i as u32 % 4));
        let data: Vec<u8> = (0..*size).map(|j| ((j * 31 + i * 7) % 251) as u8).collect();
        let path = format!("Documents/f{i} é.bin");
        let opts = PutOptions {
            class,
            ..PutOptions::default()
        };
        d.put(&dom, &path, &mut &data[..], &opts).unwrap();
        want.insert(format!("{dom}/{path}"), hex::encode(Sha256::digest(&data)));
    }
    d.mkdir("HomeDomain", "Library/Notes", 0o755).unwrap();
    d.put(
        "HomeDomain",
        "Library/Notes/notes.sqlite",
        &mut &b"notes"[..],
        &PutOptions::default(),
    )
    .unwrap();
    want.insert(
        "HomeDomain/Library/Notes/notes.sqlite".into(),
        hex::encode(Sha256::digest(b"notes")),
    );
    d.put(
        &dom,
        "Library/Caches/c",
        &mut &b"cache"[..],
        &PutOptions::default(),
    )
    .unwrap();
    d.keychain_add("genp", ProtectionClass(6), item("password", b"hunter2"))
        .unwrap();
    d.keychain_add(
        "keys",
        ProtectionClass(10),
        item("identity", b"private key"),
    )
    .unwrap();
    d.keychain_add("genp", ProtectionClass(12), item("akpu", b"never"))
        .unwrap();
    want
}

#[test]
fn device_backup_is_read_identically_by_iphone_backup_decrypt_and_mvt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("phone");
    let mut d = init(&dir);
    let want = populate(&mut d);
    let dk = d.device_key().to_hex();
    drop(d);
    let out = tmp.path().join("backup");
    let r = ok_json(&keybag(
        &[
            OsStr::new("device"),
            OsStr::new("backup"),
            dir.as_os_str(),
            out.as_os_str(),
            OsStr::new("--encrypt"),
            OsStr::new("--json"),
        ],
        Some(PASSWORD),
    ));
    assert_eq!(r["encrypted"], true);
    assert_eq!(r["keychain"].as_array().unwrap().len(), 2, "{r}");
    // Backed up again, unchanged and without a password: the device keeps the backup and
    // rewrites only its plists' dates, which the third-party readers below must accept.
    let again = ok_json(&keybag(
        &[
            OsStr::new("device"),
            OsStr::new("backup"),
            dir.as_os_str(),
            out.as_os_str(),
            OsStr::new("--json"),
        ],
        None,
    ));
    assert_eq!(
        (&again["unchanged"], &again["kdf_runs"]),
        (&Value::Bool(true), &Value::from(0))
    );

    let ibd = run_py(
        "KEYBAG_PY_IBD",
        "ibd_extract.py",
        &[&out, &tmp.path().join("ibd")],
    );
    let mut theirs = as_map(&ibd["files"]);
    theirs.remove("KeychainDomain/keychain-backup.plist");
    assert_eq!(theirs, want, "iphone_backup_decrypt");
    let mvt = run_py(
        "KEYBAG_PY_MVT",
        "mvt_decrypt.py",
        &[&out, &tmp.path().join("mvt")],
    );
    let mut theirs = as_map(&mvt["files"]);
    theirs.remove("KeychainDomain/keychain-backup.plist");
    assert_eq!(theirs, want, "mvt decrypt-backup");

    // keybag's own keychain listing: classes right, ThisDeviceOnly sealed without 0x835.
    let kc = ok_json(&keybag(
        &[
            OsStr::new("keychain"),
            out.as_os_str(),
            OsStr::new("--json"),
        ],
        Some(PASSWORD),
    ));
    let classes = |kc: &Value| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = kc["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["class_short"].as_str().unwrap().to_string(),
                    i["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        classes(&kc),
        vec![
            ("ak".into(), "open".into()),
            ("cku".into(), "sealed".into())
        ]
    );
    let kc = ok_json(&keybag(
        &[
            OsStr::new("keychain"),
            out.as_os_str(),
            OsStr::new("--json"),
            OsStr::new("--device-key"),
            OsStr::new(&dk),
        ],
        Some(PASSWORD),
    ));
    assert_eq!(
        classes(&kc),
        vec![("ak".into(), "open".into()), ("cku".into(), "open".into())]
    );
}

#[test]
fn device_restore_and_import_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("phone");
    let mut d = init(&dir);
    populate(&mut d);
    drop(d);
    let other = tmp.path().join("other");
    drop(init(&other));
    let out = tmp.path().join("backup");
    let o = keybag(
        &[
            OsStr::new("device"),
            OsStr::new("backup"),
            dir.as_os_str(),
            out.as_os_str(),
            OsStr::new("--encrypt"),
        ],
        Some(PASSWORD),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Library/Caches is never backed up"), "{text}");
    assert!(text.contains("akpu"), "{text}");

    // Restore onto another device: the password survives, the ThisDeviceOnly key is lost.
    let restore = |target: &Path, pw: Option<&str>, json: bool| {
        let mut args = vec![
            OsStr::new("device"),
            OsStr::new("restore"),
            target.as_os_str(),
            out.as_os_str(),
        ];
        if json {
            args.push(OsStr::new("--json"));
        }
        keybag(&args, pw)
    };
    let r = ok_json(&restore(&other, Some(PASSWORD), true));
    assert_eq!(r["keychain_restored"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["lost"].as_array().unwrap().len(), 1, "{r}");
    assert!(r["lost"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("ThisDeviceOnly item from another device"));

    // Bad input: wrong password (exit 5), not a device (4), damaged backup (3).
    assert_eq!(restore(&other, Some("wrong"), false).status.code(), Some(5));
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    assert_eq!(
        restore(&plain, Some(PASSWORD), false).status.code(),
        Some(4)
    );

    // Import: a new device from the backup; the cku key stays sealed without --device-key.
    let imported = tmp.path().join("imported");
    let r = ok_json(&keybag(
        &[
            OsStr::new("device"),
            OsStr::new("import"),
            imported.as_os_str(),
            out.as_os_str(),
            OsStr::new("--json"),
        ],
        Some(PASSWORD),
    ));
    assert_eq!(r["keychain"].as_array().unwrap().len(), 1, "{r}");
    assert!(r["skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("ThisDeviceOnly"));
    let dev = Device::open(&imported).unwrap();
    assert_eq!(dev.keychain_items().unwrap().len(), 1);
    let mut buf = Vec::new();
    dev.get("HomeDomain", "Library/Notes/notes.sqlite", &mut buf)
        .unwrap();
    assert_eq!(buf, b"notes");
}
