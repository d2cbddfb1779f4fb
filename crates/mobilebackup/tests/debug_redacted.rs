//! `Debug` of every type here that holds a secret shows none of it: a panic message or a log
//! line that prints one cannot leak a password, a key or a keychain secret (issue 8, the
//! secrets canary).

use std::collections::BTreeMap;

use dataprotection::{DeviceKey, KdfLimits, Keybag, Passkey, ProtectionClass};
use mobilebackup::keychain::{DerValue, Item, ItemState, Keychain, NewKeychainItem};
use mobilebackup::writer::{Encryption, ExistingKeybag, UnencryptedKeybag, WriterOptions};
use mobilebackup::{Backup, Credentials, Secret};
use zeroize::Zeroizing;

const PASSWORD: &str = "kbDebugCanaryPassword-31";
const SECRET: &str = "kbDebugCanarySecret-47";

/// Fails if `shown` holds `password`, `SECRET` or any key's hex (either case).
fn assert_clean(shown: &str, keys: &[&[u8]]) {
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
    for k in keys {
        let hex = hex::encode(k);
        assert!(!shown.to_lowercase().contains(&hex), "{shown}");
        // `{:?}` of a byte array: "[68, 5, …]".
        let list = format!("{:?}", k);
        assert!(!shown.contains(&list[1..list.len() - 1]), "{shown}");
    }
}

fn both<T: std::fmt::Debug>(v: &T) -> String {
    format!("{v:?}\n{v:#?}")
}

#[test]
fn credentials_and_their_secret() {
    let pk = Passkey::random();
    let dk = DeviceKey::random();
    for secret in [
        Secret::Password(Zeroizing::new(PASSWORD.as_bytes().to_vec())),
        Secret::Passkey(pk.clone()),
    ] {
        assert_clean(&both(&secret), &[pk.as_bytes()]);
        let creds = Credentials {
            secret,
            device_key: Some(dk.clone()),
            limits: KdfLimits::default(),
        };
        let shown = both(&creds);
        assert_clean(&shown, &[pk.as_bytes(), dk.as_bytes()]);
        assert!(shown.contains("redacted"), "{shown}");
    }
}

#[test]
fn audit_options() {
    let opts = mobilebackup::audit::AuditOptions {
        password: Some(PASSWORD.as_bytes()),
        ..Default::default()
    };
    let shown = both(&opts);
    assert_clean(&shown, &[PASSWORD.as_bytes()]);
    assert!(shown.contains("redacted"), "{shown}");
}

#[test]
fn writer_options() {
    let dk = DeviceKey::random();
    let (kb, unlocked, pk) =
        Keybag::new_backup_with_passkey(PASSWORD.as_bytes(), &dk, 1_000).unwrap();
    let class_keys: Vec<Vec<u8>> = unlocked
        .available()
        .map(|c| unlocked.key(c).unwrap().as_bytes().to_vec())
        .collect();
    assert_clean(
        &both(&unlocked),
        &class_keys.iter().map(Vec::as_slice).collect::<Vec<_>>(),
    );
    let mut opts = WriterOptions {
        encryption: Some(Encryption {
            password: Zeroizing::new(PASSWORD.as_bytes().to_vec()),
            dpic: 1_000,
            device_key: Some(dk.clone()),
        }),
        unencrypted_keybag: Some(UnencryptedKeybag {
            passkey: pk.clone(),
            device_key: dk.clone(),
        }),
        ..WriterOptions::default()
    };
    assert_clean(&both(&opts), &[pk.as_bytes(), dk.as_bytes()]);
    opts.existing_keybag = Some(ExistingKeybag {
        keybag: kb,
        passkey: pk.clone(),
        device_key: dk.clone(),
    });
    assert_clean(&both(&opts), &[pk.as_bytes(), dk.as_bytes()]);
}

#[test]
fn an_unlocked_backup() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata");
    let mut b = Backup::open(root.join("enc-small-public")).unwrap();
    let pk = Passkey::from_hex("44a316ca4293d559aa3a068ebb22105607824ea61d611baf62cd3e83c0c796c7")
        .unwrap();
    let dk = DeviceKey::from_hex("793b52fd8ca0b58f37cfdde966237ceb").unwrap();
    b.unlock_with_passkey(&pk, Some(&dk)).unwrap();
    let keys = b.keys().unwrap();
    let class_keys: Vec<Vec<u8>> = keys
        .available()
        .map(|c| keys.key(c).unwrap().as_bytes().to_vec())
        .collect();
    assert!(!class_keys.is_empty());
    let mut all: Vec<&[u8]> = class_keys.iter().map(Vec::as_slice).collect();
    all.extend([pk.as_bytes().as_slice(), dk.as_bytes()]);
    assert_clean(&both(&b), &all);
    assert_clean(&both(keys), &all);
    // Its keychain: six open items, their secrets never shown.
    let catalog = b.catalog().unwrap();
    let kc = mobilebackup::keychain::read_from_catalog(&b, &catalog)
        .unwrap()
        .unwrap();
    let secrets: Vec<Vec<u8>> = kc
        .items
        .iter()
        .map(|i| i.secret().unwrap().to_vec())
        .collect();
    assert_eq!(secrets.len(), 6);
    let shown = both(&kc);
    for s in &secrets {
        assert!(!shown.contains(std::str::from_utf8(s).unwrap()), "{shown}");
    }
}

/// The secret `v_Data` is hidden whatever its type: data (shown as its length) or, as a
/// hostile or odd item may have it, a string.
#[test]
fn keychain_items_hide_v_data_of_any_type() {
    for v_data in [DerValue::data(SECRET.as_bytes()), DerValue::string(SECRET)] {
        let mut attributes = BTreeMap::new();
        attributes.insert("acct".to_string(), DerValue::string("alice"));
        attributes.insert("v_Data".to_string(), v_data.clone());
        let item = Item {
            table: "genp".into(),
            persistent_ref: b"genp\0\0\0\0\0\0\0\x01".to_vec(),
            rowid: Some(1),
            version: Some(3),
            class: Some(ProtectionClass(6)),
            state: ItemState::Open,
            attributes: attributes.clone(),
            warnings: Vec::new(),
        };
        assert_eq!(item.secret(), Some(SECRET.as_bytes()));
        let shown = both(&item);
        assert_clean(&shown, &[]);
        assert!(
            shown.contains("alice"),
            "other attributes are shown: {shown}"
        );
        let kc = Keychain {
            items: vec![item],
            ..Keychain::default()
        };
        assert_clean(&both(&kc), &[]);
        let new = NewKeychainItem::new("genp", ProtectionClass(6))
            .attr("acct", DerValue::string("alice"))
            .attr("v_Data", v_data);
        assert_clean(&both(&new), &[]);
    }
}
