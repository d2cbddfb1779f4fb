//! `Debug` of every type here that holds a key shows none of it: a panic message or a log
//! line that prints one cannot leak a key (issue 8, the secrets canary). `Secret<N>` itself is
//! tested in `keys.rs`.

use dataprotection::gcm::Gcm;
use dataprotection::{DeviceKey, Error, Key256, Keybag, Passkey};

/// Fails if `shown` holds any key's hex (either case) or its bytes as a list.
fn assert_clean(shown: &str, keys: &[&[u8]]) {
    for k in keys {
        assert!(!shown.to_lowercase().contains(&hex::encode(k)), "{shown}");
        let list = format!("{:?}", k);
        assert!(!shown.contains(&list[1..list.len() - 1]), "{shown}");
    }
}

fn both<T: std::fmt::Debug>(v: &T) -> String {
    format!("{v:?}\n{v:#?}")
}

#[test]
fn keybags_hide_their_class_keys() {
    let dk = DeviceKey::random();
    let (pending, unlocked) = Keybag::new_backup_pending(&dk, 1_000);
    let class_keys: Vec<Vec<u8>> = unlocked
        .available()
        .map(|c| unlocked.key(c).unwrap().as_bytes().to_vec())
        .collect();
    assert_eq!(class_keys.len(), 11);
    let mut keys: Vec<&[u8]> = class_keys.iter().map(Vec::as_slice).collect();
    keys.push(dk.as_bytes());
    assert_clean(&both(&unlocked), &keys);
    assert_clean(&both(&pending), &keys);
    let passkey = Passkey::random();
    let sealed = pending.seal(&passkey);
    keys.push(passkey.as_bytes());
    assert_clean(&both(&sealed), &keys);
    assert_clean(&both(&sealed.unlock(&passkey, Some(&dk)).unwrap()), &keys);
}

#[test]
fn gcm_hides_its_key() {
    let key = Key256::random();
    assert_clean(&both(&Gcm::new(&key)), &[key.as_bytes()]);
}

/// A key that is not hex is refused without quoting it (only the offending character).
#[test]
fn bad_hex_errors_quote_no_key() {
    let key = Key256::random().to_hex();
    for text in [
        format!("{}g", &key[..63]),
        key[..62].to_string(),
        format!("{key}00"),
    ] {
        let e = Key256::from_hex(&text).unwrap_err();
        assert!(matches!(e, Error::BadHex(_)), "{e:?}");
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(&text[..8]), "{shown}");
    }
}
