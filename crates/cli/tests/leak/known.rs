//! The canaries of `canary.rs`: the secrets it passes (constants), the enc fixture's, the
//! key files (right, wrong and malformed) and the derived keys and device keys found on the
//! way.

use std::ffi::OsString;
use std::path::Path;

use dataprotection::{DeviceKey, KdfLimits, Keybag, Passkey};

use super::{Canary, Session};
use crate::common;

/// The phone's backup password (set through the library at a cheap KDF count).
pub const PASSWORD: &str = "kbCanaryBackupPw-7f3Qx";
/// The new password of `passwd`, and of the one real `device backup --encrypt`.
pub const NEW_PASSWORD: &str = "kbCanaryNewBackupPw-2Lm9";
/// A wrong backup password.
pub const WRONG_PASSWORD: &str = "kbCanaryWrongBackupPw-8Hd1";
/// The phone's passcode.
pub const PASSCODE: &str = "kbCanaryPasscode-4417";
/// Its new passcode (`device passcode`).
pub const NEW_PASSCODE: &str = "kbCanaryNewPasscode-9051";
/// A wrong passcode.
pub const WRONG_PASSCODE: &str = "kbCanaryWrongPasscode-3326";
/// The phone's keychain secrets: an ak item's (through KEYBAG_SECRET)…
pub const SECRET_AK: &str = "kbCanarySecretAk-Env-51";
/// … a ck item's (through --secret-file)…
pub const SECRET_CK: &str = "kbCanarySecretCk-File-52";
/// … a dku item's (KEYBAG_SECRET; backed up sealed to the phone's key 0x835)…
pub const SECRET_DKU: &str = "kbCanarySecretDku-Env-53";
/// … and an akpu item's (KEYBAG_SECRET; never leaves the phone).
pub const SECRET_AKPU: &str = "kbCanarySecretAkpu-Env-54";
/// The second line of a password file (never read, never shown).
pub const SECOND_LINE: &str = "kbCanarySecondLine-6610";
/// Content of the ordinary files put on the phone (not a secret: it must come back).
pub const CONTENT: &[u8] = b"an ordinary file on the canary phone\n";

/// `--OPTION FILE`.
pub fn opt(option: &str, file: &Path) -> Vec<OsString> {
    a![option, file]
}

/// The enc fixture's secrets: its password, derived key, device key 0x835, Manifest.db key
/// and the six keychain secrets (`enc secret ak`, …, by class); returns the secrets' names.
pub fn enc_canaries(s: &mut Session) -> Vec<String> {
    s.canary(Canary::text("enc password", common::PASSWORD));
    s.canary(Canary::key(
        "enc derived key",
        &hex::decode(common::PASSKEY).unwrap(),
    ));
    s.canary(Canary::key(
        "enc device key",
        &hex::decode(common::DEVICE_KEY).unwrap(),
    ));
    let exp = common::expected();
    let db_key = hex::decode(exp["manifest_key"]["db_key_hex"].as_str().unwrap()).unwrap();
    s.canary(Canary::key("enc Manifest.db key", &db_key));
    let mut names = Vec::new();
    for item in exp["keychain"]["items"].as_array().unwrap() {
        let secret = hex::decode(item["secret_hex"].as_str().unwrap()).unwrap();
        let name = format!("enc secret {}", item["class_short"].as_str().unwrap());
        s.canary(Canary::text(&name, std::str::from_utf8(&secret).unwrap()));
        names.push(name);
    }
    names
}

/// Key files: the enc fixture's derived key and device key (hex and raw), a wrong one of
/// each, and malformed ones, each malformed content a canary of its own (a message about
/// a malformed key must not quote it, not even its start).
pub struct Keys {
    pub passkey: Vec<OsString>,
    pub passkey_raw: Vec<OsString>,
    pub device: Vec<OsString>,
    pub device_raw: Vec<OsString>,
    pub wrong_passkey: Vec<OsString>,
    pub wrong_device: Vec<OsString>,
    /// (what is wrong, `--derived-key-file FILE`)
    pub malformed_passkeys: Vec<(&'static str, Vec<OsString>)>,
    /// (what is wrong, `--device-key-file FILE`)
    pub malformed_devices: Vec<(&'static str, Vec<OsString>)>,
}

pub fn keys(s: &mut Session) -> Keys {
    let (pk, dk) = (common::PASSKEY, common::DEVICE_KEY);
    let wrong_pk = Passkey::random();
    let wrong_dk = DeviceKey::random();
    s.canary(Canary::key("wrong derived key", wrong_pk.as_bytes()));
    s.canary(Canary::key("wrong device key", wrong_dk.as_bytes()));
    let nonhex = format!("{}g", &Passkey::random().to_hex()[..63]);
    let short = Passkey::random().to_hex()[..62].to_string();
    let nonhex_dev = format!("{}x", &DeviceKey::random().to_hex()[..31]);
    let long_dev = format!("{}ab", DeviceKey::random().to_hex());
    for (name, v) in [
        ("malformed derived key (non-hex)", &nonhex),
        ("malformed derived key (short)", &short),
        ("malformed device key (non-hex)", &nonhex_dev),
        ("malformed device key (long)", &long_dev),
    ] {
        s.canary(Canary::text(name, v).with_prefix(16));
    }
    let d = "--derived-key-file";
    let v = "--device-key-file";
    Keys {
        passkey: opt(d, &s.input("enc.passkey", format!("{pk}\n").as_bytes())),
        passkey_raw: opt(d, &s.input("enc.passkey.bin", &hex::decode(pk).unwrap())),
        device: opt(v, &s.input("enc.devkey", format!("{dk}\n").as_bytes())),
        device_raw: opt(v, &s.input("enc.devkey.bin", &hex::decode(dk).unwrap())),
        wrong_passkey: opt(d, &s.input("wrong.passkey", wrong_pk.to_hex().as_bytes())),
        wrong_device: opt(v, &s.input("wrong.devkey", wrong_dk.as_bytes())),
        malformed_passkeys: vec![
            (
                "63 hex digits and a g",
                opt(d, &s.input("nonhex.passkey", nonhex.as_bytes())),
            ),
            (
                "62 hex digits",
                opt(d, &s.input("short.passkey", short.as_bytes())),
            ),
            (
                "a password",
                opt(
                    d,
                    &s.input("pw.passkey", format!("{PASSWORD}\n").as_bytes()),
                ),
            ),
        ],
        malformed_devices: vec![
            (
                "31 hex digits and an x",
                opt(v, &s.input("nonhex.devkey", nonhex_dev.as_bytes())),
            ),
            (
                "34 hex digits",
                opt(v, &s.input("long.devkey", long_dev.as_bytes())),
            ),
            (
                "a derived key",
                opt(v, &s.input("pk.devkey", pk.as_bytes())),
            ),
        ],
    }
}

/// The derived key of `password` for the backup at `dir` (its keybag's own KDF).
pub fn derived_key(dir: &Path, password: &str) -> Passkey {
    let v = plist::Value::from_file(dir.join("Manifest.plist")).unwrap();
    let kb = v.as_dictionary().unwrap()["BackupKeyBag"]
        .as_data()
        .unwrap();
    let limits = KdfLimits {
        max_dpic: u32::MAX,
        max_iter: u32::MAX,
    };
    Keybag::parse(kb)
        .unwrap()
        .derive_passkey(password.as_bytes(), &limits)
        .unwrap()
}

/// The UID (allowed only in a `secure/uid.key`) and the device key 0x835 of the
/// device folder `dir`, as canaries named after `who`; returns the device key.
pub fn device_canaries(s: &mut Session, dir: &Path, who: &str) -> DeviceKey {
    let uid_file = dir.join("secure/uid.key");
    let name = format!("{who} UID");
    s.canary(Canary::key(&name, &std::fs::read(&uid_file).unwrap()));
    // Its folder, and the copy of it a restore works in.
    s.allow_in_files_ending("secure/uid.key", &[&name]);
    let key = device::Device::open(dir).unwrap().device_key();
    s.canary(Canary::key(&format!("{who} device key"), key.as_bytes()));
    key
}

/// Scans every file once more and prints the runs (seen with `--nocapture`).
pub fn finish(mut s: Session) {
    s.rescan_all("the last run");
    eprintln!(
        "{} runs, {} command lines read while running, {} file scans:\n{}",
        s.log.len(),
        s.cmdlines_caught,
        s.files_scanned,
        s.summary()
    );
}
