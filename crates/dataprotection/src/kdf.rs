//! Backup password key derivation.
//!
//! iOS ≥ 10.2 (keybag has `DPSL`/`DPIC`):
//! `passkey = PBKDF2-SHA1(PBKDF2-SHA256(pw, DPSL, DPIC, 32), SALT, ITER, 32)`.
//! Older backups: `passkey = PBKDF2-SHA1(pw, SALT, ITER, 32)`.
//! The choice is made from the keybag's contents, never from a version string.
//!
//! Speed: `pbkdf2_hmac` keys one HMAC state and clones it per iteration, so each
//! iteration costs exactly two compressions (inner and outer) on precomputed
//! states; `sha2` picks the CPU's SHA extensions at run time.

use sha1::Sha1;
use sha2::Sha256;

use crate::{Error, Passkey, Result};

/// KDF parameters read from a keybag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// `SALT`, the PBKDF2-SHA1 salt.
    pub salt: Vec<u8>,
    /// `ITER`, the PBKDF2-SHA1 iteration count.
    pub iter: u32,
    /// `DPSL` and `DPIC` (iOS ≥ 10.2): the PBKDF2-SHA256 salt and count.
    pub double: Option<(Vec<u8>, u32)>,
}

/// Caps on iteration counts read from untrusted keybags, so a hostile file
/// cannot make us spin for hours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfLimits {
    /// Highest accepted `DPIC` (PBKDF2-SHA256 rounds).
    pub max_dpic: u32,
    /// Highest accepted `ITER` (PBKDF2-SHA1 rounds).
    pub max_iter: u32,
}

impl Default for KdfLimits {
    /// Ten times what Apple writes today (10,000,000 and 10,000), with room for
    /// the legacy single-KDF's larger counts.
    fn default() -> Self {
        Self {
            max_dpic: 100_000_000,
            max_iter: 10_000_000,
        }
    }
}

impl KdfParams {
    /// True for the iOS ≥ 10.2 double derivation.
    pub fn is_double(&self) -> bool {
        self.double.is_some()
    }

    /// Rejects parameters that are invalid or beyond `limits`.
    pub fn check(&self, limits: &KdfLimits) -> Result<()> {
        if self.iter == 0 {
            return Err(Error::KdfInvalid("ITER is 0"));
        }
        if self.iter > limits.max_iter {
            return Err(Error::KdfTooExpensive {
                what: "ITER (PBKDF2-SHA1)",
                value: self.iter.into(),
                max: limits.max_iter.into(),
            });
        }
        if self.salt.is_empty() {
            return Err(Error::KdfInvalid("SALT is empty"));
        }
        if let Some((dpsl, dpic)) = &self.double {
            if *dpic == 0 {
                return Err(Error::KdfInvalid("DPIC is 0"));
            }
            if *dpic > limits.max_dpic {
                return Err(Error::KdfTooExpensive {
                    what: "DPIC (PBKDF2-SHA256)",
                    value: (*dpic).into(),
                    max: limits.max_dpic.into(),
                });
            }
            if dpsl.is_empty() {
                return Err(Error::KdfInvalid("DPSL is empty"));
            }
        }
        Ok(())
    }

    /// Derives the passkey from the password's UTF-8 bytes (no normalisation).
    pub fn derive(&self, password: &[u8], limits: &KdfLimits) -> Result<Passkey> {
        self.check(limits)?;
        let mut out = [0u8; 32];
        match &self.double {
            Some((dpsl, dpic)) => {
                let mut k1 = Passkey::from_bytes(pbkdf2_sha256(password, dpsl, *dpic));
                pbkdf2::pbkdf2_hmac::<Sha1>(k1.as_bytes(), &self.salt, self.iter, &mut out);
                zeroize::Zeroize::zeroize(&mut k1);
            }
            None => pbkdf2::pbkdf2_hmac::<Sha1>(password, &self.salt, self.iter, &mut out),
        }
        let key = Passkey::from_bytes(out);
        zeroize::Zeroize::zeroize(&mut out);
        Ok(key)
    }
}

/// PBKDF2-HMAC-SHA256 with a 32-byte output.
pub fn pbkdf2_sha256(password: &[u8], salt: &[u8], rounds: u32) -> [u8; 32] {
    pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, rounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6070 (PBKDF2-HMAC-SHA1) and RFC 7914 §11 (PBKDF2-HMAC-SHA256) vectors.
    #[test]
    fn pbkdf2_vectors() {
        let mut out = [0u8; 20];
        pbkdf2::pbkdf2_hmac::<Sha1>(b"password", b"salt", 4096, &mut out);
        assert_eq!(hex::encode(out), "4b007901b765489abead49d926f721d065a429c1");
        let mut out = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"Password", b"NaCl", 80000, &mut out);
        assert_eq!(
            hex::encode(out),
            "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56\
             a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d"
        );
    }

    #[test]
    fn caps_refuse_absurd_counts() {
        let p = KdfParams {
            salt: vec![0; 20],
            iter: 10_000,
            double: Some((vec![0; 20], u32::MAX)),
        };
        let err = p.derive(b"x", &KdfLimits::default()).unwrap_err();
        assert!(matches!(err, Error::KdfTooExpensive { .. }), "{err}");
        assert!(err.to_string().contains("4294967295"));
        let p = KdfParams {
            salt: vec![0; 20],
            iter: 0,
            double: None,
        };
        assert!(matches!(
            p.derive(b"x", &KdfLimits::default()),
            Err(Error::KdfInvalid(_))
        ));
        let p = KdfParams {
            salt: vec![],
            iter: 1,
            double: None,
        };
        assert!(matches!(
            p.derive(b"x", &KdfLimits::default()),
            Err(Error::KdfInvalid(_))
        ));
    }

    #[test]
    fn legacy_is_single_sha1() {
        let p = KdfParams {
            salt: b"salt".to_vec(),
            iter: 4096,
            double: None,
        };
        let k = p.derive(b"password", &KdfLimits::default()).unwrap();
        // First 20 bytes equal RFC 6070's 4096-round output.
        assert_eq!(
            hex::encode(&k.as_bytes()[..20]),
            "4b007901b765489abead49d926f721d065a429c1"
        );
    }
}
