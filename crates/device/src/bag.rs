//! The system keybag: building it, signing it, and unwrapping its class keys.

use std::collections::BTreeMap;
use std::path::Path;

use dataprotection::keybag::{kind, ClassKeyRecord, Keybag, WRAP_DEVICE, WRAP_PASSCODE};
use dataprotection::wrap::{unwrap_key, wrap_key};
use dataprotection::Key256;
use subtle::ConstantTimeEq;

use crate::error::{damaged, Error, Result};
use crate::sep::{class_b_public, hmac256, label, Uid};

/// Class keys by class number (class 2 holds the X25519 private key).
pub(crate) type ClassKeys = BTreeMap<u32, Key256>;

/// Classes whose keys are wrapped with the UID only, whatever the passcode (D, dk, dku).
pub(crate) const ALWAYS: [u32; 3] = [4, 8, 11];
/// Classes forgotten at lock (A, B's private key, ak, aku, akpu).
pub(crate) const FORGOTTEN_AT_LOCK: [u32; 5] = [1, 2, 6, 9, 12];
/// Every class of a device without a passcode (akpu needs one).
pub(crate) const CLASSES: [u32; 10] = [1, 2, 3, 4, 6, 7, 8, 9, 10, 11];
/// The passcode-only class.
pub(crate) const AKPU: u32 = 12;
/// Length of the keybag `SALT`.
pub(crate) const SALT_LEN: usize = 20;

/// Passcode material for building a keybag.
pub(crate) struct PasscodeWrap<'a> {
    pub key: &'a Key256,
    pub salt: Vec<u8>,
    pub iter: u32,
}

fn random16() -> Vec<u8> {
    Key256::random().as_bytes()[..16].to_vec()
}

/// Fresh class keys for a new device.
pub(crate) fn new_class_keys(with_akpu: bool) -> ClassKeys {
    let mut keys: ClassKeys = CLASSES.iter().map(|&c| (c, Key256::random())).collect();
    if with_akpu {
        keys.insert(AKPU, Key256::random());
    }
    keys
}

/// A TYPE 0, VERS 4 keybag holding `keys`: `WRAP=1` (UID) for the always-classes and for
/// everything when there is no passcode, `WRAP=3` (UID-tangled passcode key) otherwise.
pub(crate) fn build(
    uid: &Uid,
    uuid: &[u8],
    keys: &ClassKeys,
    passcode: Option<&PasscodeWrap<'_>>,
) -> Keybag {
    let uid_kek = uid.derive(label::CLASS_WRAP);
    let mut kb = Keybag {
        version: Some(4),
        type_raw: Some(kind::SYSTEM),
        uuid: Some(uuid.to_vec()),
        wrap: Some(if passcode.is_some() {
            WRAP_DEVICE | WRAP_PASSCODE
        } else {
            WRAP_DEVICE
        }),
        ..Default::default()
    };
    if let Some(p) = passcode {
        kb.salt = Some(p.salt.clone());
        kb.iter = Some(p.iter);
    }
    for (&class, key) in keys {
        let (wrap, wpky) = match passcode {
            Some(p) if !ALWAYS.contains(&class) => {
                (WRAP_DEVICE | WRAP_PASSCODE, wrap_key(p.key, key))
            }
            _ => (WRAP_DEVICE, wrap_key(&uid_kek, key)),
        };
        kb.classes.push(ClassKeyRecord {
            uuid: Some(random16()),
            class_raw: class,
            wrap,
            ktyp: Some(u32::from(class == 2)),
            wpky: wpky.to_vec(),
            pbky: (class == 2).then(|| class_b_public(key).to_vec()),
            extra: Vec::new(),
        });
    }
    kb
}

fn sign_key(uid: &Uid, locker: &[u8]) -> Key256 {
    hmac256(uid.derive(label::KEYBAG_SIGN).as_bytes(), &[locker])
}

fn tlv(out: &mut Vec<u8>, tag: &[u8; 4], v: &[u8]) {
    out.extend_from_slice(tag);
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

/// The file `secure/systembag.kb`: `DATA` (the keybag TLV) then `SIGN` =
/// HMAC-SHA256(HMAC(UID-derived sign key, locker), DATA).
pub(crate) fn seal(uid: &Uid, locker: &[u8], kb: &Keybag) -> Vec<u8> {
    let data = kb.to_bytes();
    let sig = hmac256(sign_key(uid, locker).as_bytes(), &[&data]);
    let mut out = Vec::with_capacity(data.len() + 48);
    tlv(&mut out, b"DATA", &data);
    tlv(&mut out, b"SIGN", sig.as_bytes());
    out
}

/// Splits the envelope without verifying it (for inspection).
pub fn split_envelope(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let take = |b: &[u8], tag: &[u8; 4]| -> Option<(usize, usize)> {
        if b.len() < 8 || &b[..4] != tag {
            return None;
        }
        let n = u32::from_be_bytes(b[4..8].try_into().ok()?) as usize;
        (b.len() - 8 >= n).then_some((8, 8 + n))
    };
    let (ds, de) = take(bytes, b"DATA")?;
    let rest = &bytes[de..];
    let (ss, se) = take(rest, b"SIGN")?;
    (se == rest.len() && se - ss == 32).then(|| (&bytes[ds..de], &rest[ss..se]))
}

/// Verifies the signature and parses the keybag. Any mismatch is `TamperedKeybag`.
pub(crate) fn open(uid: &Uid, locker: &[u8], bytes: &[u8], path: &Path) -> Result<Keybag> {
    let tampered = || Error::TamperedKeybag {
        path: path.to_path_buf(),
    };
    let (data, sig) = split_envelope(bytes).ok_or_else(tampered)?;
    let want = hmac256(sign_key(uid, locker).as_bytes(), &[data]);
    if !bool::from(want.as_bytes().as_slice().ct_eq(sig)) {
        return Err(tampered());
    }
    let kb = Keybag::parse(data).map_err(|e| damaged(path, e.to_string()))?;
    if kb.kind() != Some(kind::SYSTEM) || kb.version != Some(4) {
        return Err(damaged(path, "not a VERS 4 system keybag"));
    }
    Ok(kb)
}

/// Outcome of unwrapping.
pub(crate) enum Unwrapped {
    Keys(ClassKeys),
    WrongPasscode,
}

/// Unwraps the class keys that `passcode_key` (if any) and the UID give access to.
/// With a passcode key every `WRAP=3` class must unwrap, or the passcode is wrong.
pub(crate) fn unwrap(
    uid: &Uid,
    kb: &Keybag,
    passcode_key: Option<&Key256>,
    path: &Path,
) -> Result<Unwrapped> {
    let uid_kek = uid.derive(label::CLASS_WRAP);
    let mut keys = ClassKeys::new();
    for rec in &kb.classes {
        let class = rec.class().0;
        let key = match rec.wrap {
            WRAP_DEVICE => unwrap_key(&uid_kek, &rec.wpky).map_err(|e| Error::Crypto {
                path: path.to_path_buf(),
                source: e,
            })?,
            w if w == WRAP_DEVICE | WRAP_PASSCODE => match passcode_key {
                None => continue,
                Some(pk) => match unwrap_key(pk, &rec.wpky) {
                    Ok(k) => k,
                    Err(dataprotection::Error::UnwrapFailed) => {
                        return Ok(Unwrapped::WrongPasscode)
                    }
                    Err(e) => {
                        return Err(Error::Crypto {
                            path: path.to_path_buf(),
                            source: e,
                        })
                    }
                },
            },
            w => return Err(damaged(path, format!("class {class} has unknown WRAP {w}"))),
        };
        if class == 2 {
            let want = rec
                .pbky
                .as_deref()
                .ok_or_else(|| damaged(path, "class B has no PBKY"))?;
            if class_b_public(&key).as_slice() != want {
                return Err(damaged(path, "class B PBKY does not match its private key"));
            }
        }
        keys.insert(class, key);
    }
    Ok(Unwrapped::Keys(keys))
}

/// The class-B public key (`PBKY`).
pub(crate) fn class_b_pub(kb: &Keybag, path: &Path) -> Result<[u8; 32]> {
    kb.classes
        .iter()
        .find(|c| c.class().0 == 2)
        .and_then(|c| c.pbky.as_deref())
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| damaged(path, "no 32-byte class B PBKY"))
}
