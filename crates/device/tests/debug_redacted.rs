//! `Debug` of every type here that holds a secret shows none of it: a panic message or a log
//! line that prints one cannot leak a passcode, a password, a key or a keychain secret
//! (issue 8, the secrets canary).

use std::collections::BTreeMap;

use dataprotection::{DeviceKey, Passkey};
use device::backup::BackupOptions;
use device::import::ImportOptions;
use device::restore::RestoreOptions;
use device::{DerValue, Device, InitOptions, KeychainItem, ProtectionClass};
use zeroize::Zeroizing;

const PASSCODE: &str = "kbDebugCanaryPasscode-12";
const PASSWORD: &str = "kbDebugCanaryPassword-31";
const SECRET: &str = "kbDebugCanarySecret-47";

/// Fails if `shown` holds a canary or any key's hex or byte list.
fn assert_clean(shown: &str, keys: &[&[u8]]) {
    for canary in [PASSCODE, PASSWORD, SECRET] {
        assert!(!shown.contains(canary), "{shown}");
        let bytes = format!("{:?}", canary.as_bytes());
        assert!(!shown.contains(&bytes[1..bytes.len() - 1]), "{shown}");
    }
    for k in keys {
        assert!(!shown.to_lowercase().contains(&hex::encode(k)), "{shown}");
        let list = format!("{:?}", k);
        assert!(!shown.contains(&list[1..list.len() - 1]), "{shown}");
    }
}

fn both<T: std::fmt::Debug>(v: &T) -> String {
    format!("{v:?}\n{v:#?}")
}

fn z(s: &str) -> Option<Zeroizing<Vec<u8>>> {
    Some(Zeroizing::new(s.as_bytes().to_vec()))
}

#[test]
fn options_hide_passcodes_passwords_and_keys() {
    let pk = Passkey::random();
    let dk = DeviceKey::random();
    let init = InitOptions {
        name: "n".into(),
        passcode: z(PASSCODE),
        ..InitOptions::default()
    };
    assert_clean(&both(&init), &[]);
    let backup = BackupOptions {
        password: z(PASSWORD),
        ..BackupOptions::default()
    };
    assert_clean(&both(&backup), &[]);
    let restore = RestoreOptions {
        password: z(PASSWORD),
        passkey: Some(pk.clone()),
        ..RestoreOptions::default()
    };
    assert_clean(&both(&restore), &[pk.as_bytes()]);
    let import = ImportOptions {
        password: z(PASSWORD),
        passkey: Some(pk.clone()),
        device_key: Some(dk.clone()),
        passcode: z(PASSCODE),
        ..ImportOptions::default()
    };
    let shown = both(&import);
    assert_clean(&shown, &[pk.as_bytes(), dk.as_bytes()]);
    assert!(shown.contains("redacted"), "{shown}");
}

/// A keychain item hides `v_Data` whatever its type; the device hides its UID and keys.
#[test]
fn keychain_items_and_the_device() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    let mut dev = Device::init(
        &dir,
        InitOptions {
            name: "n".into(),
            passcode: z(PASSCODE),
            passcode_iterations: Some(1_000),
            ..InitOptions::default()
        },
    )
    .unwrap();
    let uid = std::fs::read(dir.join("secure/uid.key")).unwrap();
    let dk = dev.device_key();
    assert_clean(&both(&dev), &[&uid, dk.as_bytes()]);
    for v_data in [DerValue::data(SECRET.as_bytes()), DerValue::string(SECRET)] {
        let mut attributes = BTreeMap::new();
        attributes.insert("acct".to_string(), DerValue::string("alice"));
        attributes.insert("v_Data".to_string(), v_data);
        let row = dev
            .keychain_add("genp", ProtectionClass(6), attributes.clone())
            .unwrap();
        let item = dev.keychain_item(row).unwrap();
        let shown = both(&item);
        assert_clean(&shown, &[&uid, dk.as_bytes()]);
        assert!(shown.contains("alice"), "{shown}");
        let made = KeychainItem {
            table: "genp".into(),
            rowid: 1,
            class: ProtectionClass(6),
            attributes,
        };
        assert_clean(&both(&made), &[]);
    }
}
