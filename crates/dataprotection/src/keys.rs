//! Key types that wipe themselves on drop and never print their bytes.

use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{Error, Result};

/// A fixed-size secret. `Debug` prints only its length; memory is zeroed on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Secret<const N: usize>([u8; N]);

impl<const N: usize> Secret<N> {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; N]) -> Self {
        Self(bytes)
    }

    /// Copies a slice of exactly `N` bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; N] = bytes.try_into().ok()?;
        Some(Self(arr))
    }

    /// Parses `2N` hex digits (whitespace around them is ignored).
    pub fn from_hex(text: &str) -> Result<Self> {
        let text = text.trim();
        let mut out = [0u8; N];
        hex::decode_to_slice(text, &mut out).map_err(|e| {
            Error::BadHex(format!(
                "{e} (expected {} hex digits, got {})",
                2 * N,
                text.len()
            ))
        })?;
        Ok(Self(out))
    }

    /// A fresh random key from the operating system's CSPRNG.
    pub fn random() -> Self {
        let mut out = [0u8; N];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut out);
        Self(out)
    }

    /// The key bytes. Keep the borrow short.
    pub fn as_bytes(&self) -> &[u8; N] {
        &self.0
    }

    /// Lowercase hex, for the rare case the user asks to see a key.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl<const N: usize> fmt::Debug for Secret<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret<{N}>(redacted)")
    }
}

/// An AES-256 key: class keys, file keys, the `Manifest.db` key.
pub type Key256 = Secret<32>;
/// The 32-byte key derived from a backup password (what mvt calls the derived key).
pub type Passkey = Secret<32>;
/// The AES-128 device key 0x835 (derived from the device UID).
pub type DeviceKey = Secret<16>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_redaction() {
        let k = DeviceKey::from_hex("793b52fd8ca0b58f37cfdde966237ceb").unwrap();
        assert_eq!(k.to_hex(), "793b52fd8ca0b58f37cfdde966237ceb");
        assert_eq!(format!("{k:?}"), "Secret<16>(redacted)");
        assert!(!format!("{k:?}").contains("793b"));
        let err = Key256::from_hex("abcd").unwrap_err().to_string();
        assert!(err.contains("expected 64 hex digits"), "{err}");
        assert!(Key256::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn random_keys_differ() {
        assert_ne!(Key256::random(), Key256::random());
    }
}
