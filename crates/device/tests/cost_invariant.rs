//! The password-cost invariant (spec §7 items 1, 6, 11 applied to the device): nothing in
//! a device folder lets a passcode be checked more cheaply than its full KDF.
//!
//! Method: enumerate every file of a device that has a passcode, files, keychain items,
//! and has been through unlock/lock/wrong attempts. Every file must be one we know;
//! for each we state what it holds and check it:
//! * `secure/systembag.kb`: the only passcode-dependent material, class keys with
//!   `WRAP=3`, which unwrap under HMAC(UID-key, PBKDF2(passcode, SALT, ITER)) with the
//!   full ITER and not with ITER-1 nor without the UID tangle;
//! * every other file is byte-for-byte independent of the passcode: a twin device with
//!   the same UID, class keys and contents but a *different passcode* would differ only
//!   in `systembag.kb` and `locker` (checked by changing the passcode and comparing);
//! * no cheap function of the passcode (hashes, 1-round PBKDF2, HMACs) appears anywhere.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use dataprotection::wrap::unwrap_key;
use dataprotection::Key256;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

fn rel(dir: &Path, p: &Path) -> String {
    p.strip_prefix(dir).unwrap().to_string_lossy().into_owned()
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    all_files(dir)
        .into_iter()
        .map(|p| (rel(dir, &p), std::fs::read(&p).unwrap()))
        .collect()
}

fn cheap_functions(passcode: &[u8], salt: &[u8]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        Sha256::digest(passcode).to_vec(),
        Sha1::digest(passcode).to_vec(),
        Sha256::digest([salt, passcode].concat()).to_vec(),
        Sha256::digest([passcode, salt].concat()).to_vec(),
        dataprotection::kdf::pbkdf2_sha256(passcode, salt, 1).to_vec(),
        dataprotection::kdf::pbkdf2_sha256(passcode, salt, 1000).to_vec(),
        hex::encode(Sha256::digest(passcode)).into_bytes(),
        passcode.to_vec(),
    ];
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(salt).unwrap();
    m.update(passcode);
    v.push(m.finalize().into_bytes().to_vec());
    // 8-byte prefixes too (a truncated verifier is still a verifier).
    let prefixes: Vec<Vec<u8>> = v
        .iter()
        .filter(|x| x.len() >= 8)
        .map(|x| x[..8].to_vec())
        .collect();
    v.extend(prefixes);
    v
}

#[test]
fn no_passcode_verifier_cheaper_than_the_full_kdf() {
    let (_t, dir, mut dev) = new_device(Some(PASSCODE));
    put(&mut dev, "HomeDomain", "a", b"aaaa", PC::COMPLETE);
    put(
        &mut dev,
        "HomeDomain",
        "b",
        b"bbbb",
        PC::COMPLETE_UNLESS_OPEN,
    );
    dev.install_app("com.example.app").unwrap();
    dev.keychain_add("genp", PC::KC_PASSCODE_SET_TDO, password_item("s", b"x"))
        .unwrap();
    dev.keychain_add("inet", PC::KC_AFTER_FIRST_UNLOCK, password_item("s", b"y"))
        .unwrap();
    dev.lock().unwrap();
    dev.unlock(b"wrong guess").unwrap_err();
    dev.unlock(b"another wrong guess").unwrap_err();
    dev.unlock(PASSCODE).unwrap();
    dev.lock().unwrap();
    let iter = dev.passcode_iterations();
    assert_eq!(iter, ITER);
    drop(dev);

    // 1. Every file is a known one.
    let known = |r: &str| {
        matches!(
            r,
            "device.json"
                | "secure/uid.key"
                | "secure/locker"
                | "secure/systembag.kb"
                | "run/session"
                | "store.db"
                | "store.db-wal"
                | "store.db-shm"
                | "keychain.db"
                | "keychain.db-wal"
                | "keychain.db-shm"
        ) || (r.starts_with("store/") && r.len() == "store/xx/".len() + 32)
    };
    let files = snapshot(&dir);
    for (r, _) in &files {
        assert!(known(r), "unexpected file {r} in a device folder");
    }

    // 2. The keybag: WRAP=3 class keys need the full tangled KDF.
    let kb_bytes = std::fs::read(dir.join("secure/systembag.kb")).unwrap();
    let (data, _) = device::split_envelope(&kb_bytes).unwrap();
    let bag = dataprotection::Keybag::parse(data).unwrap();
    assert_eq!(bag.iter, Some(iter));
    assert_eq!(bag.salt.as_ref().unwrap().len(), 20);
    assert!(bag.hmck.is_none() && bag.dpic.is_none() && bag.dpsl.is_none());
    assert!(bag.extra.is_empty());
    let uid = std::fs::read(dir.join("secure/uid.key")).unwrap();
    let tangle_key = {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&uid).unwrap();
        m.update(b"keybag.device/passcode-tangle");
        m.finalize().into_bytes()
    };
    let tangled = |rounds: u32| {
        let p = dataprotection::kdf::pbkdf2_sha256(PASSCODE, bag.salt.as_ref().unwrap(), rounds);
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&tangle_key).unwrap();
        m.update(&p);
        Key256::from_slice(&m.finalize().into_bytes()).unwrap()
    };
    let full = tangled(iter);
    let cheaper = tangled(iter - 1);
    let untangled = Key256::from_bytes(dataprotection::kdf::pbkdf2_sha256(
        PASSCODE,
        bag.salt.as_ref().unwrap(),
        iter,
    ));
    let mut with_passcode = BTreeSet::new();
    for c in &bag.classes {
        assert!(c.extra.is_empty(), "class {} has unknown tags", c.class_raw);
        assert_eq!(c.wpky.len(), 40);
        match c.wrap {
            3 => {
                assert!(unwrap_key(&full, &c.wpky).is_ok(), "class {}", c.class_raw);
                assert!(unwrap_key(&cheaper, &c.wpky).is_err());
                assert!(unwrap_key(&untangled, &c.wpky).is_err());
                with_passcode.insert(c.class_raw);
            }
            1 => assert!(
                [4, 8, 11].contains(&c.class_raw),
                "class {} UID-only",
                c.class_raw
            ),
            w => panic!("unexpected WRAP {w}"),
        }
    }
    assert_eq!(with_passcode, BTreeSet::from([1, 2, 3, 6, 7, 9, 10, 12]));

    // 3. device.json holds no passcode-derived field.
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("device.json")).unwrap()).unwrap();
    let keys: BTreeSet<String> = meta.as_object().unwrap().keys().cloned().collect();
    let allowed: BTreeSet<String> = [
        "format",
        "name",
        "udid",
        "model",
        "ios_version",
        "created",
        "passcode_iterations",
        "wipe_after_10",
        "failed_attempts",
        "locked_out_until",
        "wiped",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(keys, allowed);

    // 4. No cheap function of the passcode anywhere.
    let salt = bag.salt.clone().unwrap();
    for (r, bytes) in &files {
        for f in cheap_functions(PASSCODE, &salt) {
            assert!(
                !contains(bytes, &f),
                "{r} contains a cheap function of the passcode"
            );
        }
    }

    // 5. Only the keybag and locker depend on the passcode: change it and compare.
    let mut dev = device::Device::open(&dir).unwrap();
    dev.set_passcode(Some(PASSCODE), Some(b"completely different"))
        .unwrap();
    dev.lock().unwrap();
    drop(dev);
    let after = snapshot(&dir);
    let changed: BTreeSet<&str> = files
        .iter()
        .zip(after.iter())
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.0.as_str())
        .collect();
    assert_eq!(files.len(), after.len());
    for c in &changed {
        assert!(
            ["secure/systembag.kb", "secure/locker", "run/session"].contains(c)
                || c.starts_with("store.db")
                || c.starts_with("keychain.db"),
            "{c} changed with the passcode"
        );
    }
}

#[test]
fn calibrated_iterations_cost_about_80ms() {
    let n = device::calibrate_iterations(std::time::Duration::from_millis(80));
    assert!(n >= 10_000);
    let start = std::time::Instant::now();
    let _ = dataprotection::kdf::pbkdf2_sha256(b"x", b"salt", n);
    let took = start.elapsed().as_millis();
    assert!((10..=2000).contains(&took), "{n} iterations took {took} ms");
}
