//! The emulated Secure Enclave's key derivations: everything computed from the UID.

use std::path::Path;
use std::time::{Duration, Instant};

use aes::cipher::{BlockEncrypt, KeyInit};
use dataprotection::{DeviceKey, Key256};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroize;

use crate::error::{damaged, Result};

/// Labels of the UID-derived keys (HMAC-SHA256(UID, label)).
pub(crate) mod label {
    /// KEK of class keys wrapped with the UID only (`WRAP=1`).
    pub const CLASS_WRAP: &str = "keybag.device/class-wrap";
    /// Key of the final HMAC that tangles the passcode KDF output with the UID.
    pub const PASSCODE_TANGLE: &str = "keybag.device/passcode-tangle";
    /// Key that, with the locker, signs the system keybag.
    pub const KEYBAG_SIGN: &str = "keybag.device/keybag-sign";
    /// Key of `run/session` (the stand-in for SEP memory).
    pub const SESSION: &str = "keybag.device/session";
    /// KEK (RFC 3394) of the backup password's passkey in `secure/backup-keybag`.
    pub const BACKUP_KEYBAG: &str = "keybag.device/backup-keybag";
    /// KEK (RFC 3394) of the cloud keybag's keychain class keys (`WRAP=1`).
    pub const CLOUD_KEYCHAIN: &str = "keybag.device/cloud-keychain";
    /// Key of the device-bound records `secure/bound-*`.
    pub const BOUND: &str = "keybag.device/bound";
}

/// The device's hardware UID (a 256-bit AES key). Only this module uses its bytes.
pub(crate) struct Uid(Key256);

impl Uid {
    pub fn generate() -> Self {
        Uid(Key256::random())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let mut bytes = std::fs::read(path).map_err(crate::error::io(path))?;
        let key = Key256::from_slice(&bytes);
        bytes.zeroize();
        key.map(Uid)
            .ok_or_else(|| damaged(path, "UID key file is not 32 bytes"))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// AES-256-ECB(UID, block).
    fn aes(&self, block: [u8; 16]) -> [u8; 16] {
        let cipher = aes::Aes256::new(self.0.as_bytes().into());
        let mut b = block.into();
        cipher.encrypt_block(&mut b);
        b.into()
    }

    /// Key 0x835: AES-256-ECB(UID, 16 × 0x01), as IDP computes it.
    pub fn key835(&self) -> DeviceKey {
        let mut k = self.aes([0x01; 16]);
        let out = DeviceKey::from_bytes(k);
        k.zeroize();
        out
    }

    /// HMAC-SHA256(UID, label): an HKDF-style labelled key (spec §1.2's advice).
    pub fn derive(&self, label: &str) -> Key256 {
        hmac256(self.0.as_bytes(), &[label.as_bytes()])
    }

    /// The passcode key: HMAC-SHA256(derive(PASSCODE_TANGLE), PBKDF2-HMAC-SHA256(passcode, salt, iter)).
    /// Without the UID the result cannot be computed; without `iter` rounds neither.
    pub fn tangle(&self, passcode: &[u8], salt: &[u8], iter: u32) -> Key256 {
        let mut stretched = dataprotection::kdf::pbkdf2_sha256(passcode, salt, iter);
        let tangle = self.derive(label::PASSCODE_TANGLE);
        let out = hmac256(tangle.as_bytes(), &[&stretched]);
        stretched.zeroize();
        out
    }
}

pub(crate) fn hmac256(key: &[u8], parts: &[&[u8]]) -> Key256 {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    let mut out: [u8; 32] = mac.finalize().into_bytes().into();
    let k = Key256::from_bytes(out);
    out.zeroize();
    k
}

/// Iterations of PBKDF2-HMAC-SHA256 that take about `target` on this machine
/// (at least 10,000). Measured once, at `init`.
pub fn calibrate_iterations(target: Duration) -> u32 {
    const PROBE: u32 = 50_000;
    let start = Instant::now();
    let _ = dataprotection::kdf::pbkdf2_sha256(b"calibration", b"calibration salt....", PROBE);
    let took = start.elapsed().as_secs_f64().max(1e-6);
    let n = (PROBE as f64 * target.as_secs_f64() / took) as u64;
    n.clamp(10_000, u32::MAX as u64) as u32
}

/// Wraps `file_key` to the class-B public key: `ephPub(32) ‖ RFC3394(kek, file_key)(40)`
/// (IDP's `unwrapCurve25519` scheme, in [`dataprotection::curve`]).
pub(crate) fn class_b_wrap(class_pub: &[u8; 32], file_key: &Key256) -> Vec<u8> {
    dataprotection::curve::wrap_to(class_pub, file_key)
}

/// Unwraps a 72-byte class-B wrapped key with the class private key.
pub(crate) fn class_b_unwrap(
    class_priv: &Key256,
    wrapped: &[u8],
) -> dataprotection::Result<Key256> {
    dataprotection::curve::unwrap_with(class_priv, wrapped)
}

/// The X25519 public key of a class-B private key.
pub(crate) fn class_b_public(class_priv: &Key256) -> [u8; 32] {
    dataprotection::curve::public_of(class_priv)
}
