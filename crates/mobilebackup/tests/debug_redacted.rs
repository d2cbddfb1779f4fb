//! `Debug` of every type here that holds a secret shows none of it: a panic message or a log
//! line that prints one cannot leak a password, a key or a keychain secret (issue 8, the
//! secrets canary).

use std::collections::BTreeMap;

use dataprotection::ProtectionClass;
use mobilebackup::keychain::{DerValue, Item, ItemState, Keychain, NewKeychainItem};

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
