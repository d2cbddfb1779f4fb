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

/// SHA-256 initial hash value (FIPS 180-4 §5.3.3).
const SHA256_H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// PBKDF2-HMAC-SHA256 with a 32-byte output (one block, as the backup KDF uses).
///
/// Specialised because the 10M-round DPIC dominates every unlock: the HMAC
/// inner and outer states are computed once, and each round is exactly two
/// `compress256` calls on a pre-padded block (SHA extensions when the CPU has
/// them). The generic `pbkdf2` + `hmac` path clones and re-pads a hasher per
/// round, which measured ~40% slower here (docs/BENCHMARKS.md). Tested equal
/// to the `pbkdf2` crate and RFC 7914.
pub fn pbkdf2_sha256(password: &[u8], salt: &[u8], rounds: u32) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    use sha2::digest::generic_array::GenericArray;
    use sha2::Digest;

    // HMAC key block: keys longer than the block are hashed first (RFC 2104).
    let mut key = [0u8; 64];
    if password.len() > 64 {
        key[..32].copy_from_slice(&Sha256::digest(password));
    } else {
        key[..password.len()].copy_from_slice(password);
    }
    let state_after = |pad: u8| {
        let mut block = [0u8; 64];
        for (b, k) in block.iter_mut().zip(key) {
            *b = k ^ pad;
        }
        let mut state = SHA256_H0;
        sha2::compress256(&mut state, &[GenericArray::from(block)]);
        zeroize::Zeroize::zeroize(&mut block);
        state
    };
    let (inner, outer) = (state_after(0x36), state_after(0x5c));
    zeroize::Zeroize::zeroize(&mut key);

    // U1 = HMAC(password, salt ‖ INT(1)): the salt has any length, so use the generic MAC once.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(password).expect("HMAC takes any key length");
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let u1 = mac.finalize().into_bytes();

    // Every later U_i hashes 32 bytes after a 64-byte pad block: one padded block,
    // 0x80 terminator and a bit length of (64 + 32) * 8 = 768.
    let mut block = GenericArray::from([0u8; 64]);
    block[..32].copy_from_slice(&u1);
    block[32] = 0x80;
    block[62] = 0x03;
    let mut acc = [0u32; 8];
    for (a, c) in acc.iter_mut().zip(u1.chunks_exact(4)) {
        *a = u32::from_be_bytes(c.try_into().expect("4 bytes"));
    }
    for _ in 1..rounds {
        let mut s = inner;
        sha2::compress256(&mut s, std::slice::from_ref(&block));
        for (d, w) in block[..32].chunks_exact_mut(4).zip(s) {
            d.copy_from_slice(&w.to_be_bytes());
        }
        let mut s = outer;
        sha2::compress256(&mut s, std::slice::from_ref(&block));
        for ((d, w), a) in block[..32].chunks_exact_mut(4).zip(s).zip(acc.iter_mut()) {
            d.copy_from_slice(&w.to_be_bytes());
            *a ^= w;
        }
    }
    let mut out = [0u8; 32];
    for (d, a) in out.chunks_exact_mut(4).zip(acc) {
        d.copy_from_slice(&a.to_be_bytes());
    }
    zeroize::Zeroize::zeroize(&mut block[..]);
    zeroize::Zeroize::zeroize(&mut acc);
    out
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
    fn specialised_sha256_equals_the_generic_crate() {
        let long = [7u8; 100];
        let exact = [9u8; 64];
        for pw in [
            &b""[..],
            b"p",
            b"correct horse battery staple",
            &exact,
            &long,
        ] {
            for salt in [&b""[..], b"NaCl", &[0u8; 20], &[1u8; 200]] {
                for rounds in [1u32, 2, 3, 1000] {
                    let want = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(pw, salt, rounds);
                    assert_eq!(
                        pbkdf2_sha256(pw, salt, rounds),
                        want,
                        "{} {} {rounds}",
                        pw.len(),
                        salt.len()
                    );
                }
            }
        }
        // RFC 7914 §11, first 32 bytes.
        assert_eq!(
            hex::encode(pbkdf2_sha256(b"passwd", b"salt", 1)),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
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
