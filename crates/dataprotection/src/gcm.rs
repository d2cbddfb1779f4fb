//! AES-256-GCM (NIST SP 800-38D) with IVs of any length, including **none**.
//!
//! Keychain item blobs of versions 2 and 3 are sealed with AES-256-GCM under an
//! *empty* IV (spec §8.3). AEAD crates refuse a zero-length nonce, so this
//! module builds GCM from the AES block cipher and GHASH:
//!
//! * pre-counter block `J0 = IV ‖ 0^31 ‖ 1` for a 96-bit IV; otherwise
//!   `J0 = GHASH_H(IV ‖ 0^s ‖ 0^64 ‖ [len(IV)·8]_64)`, which for the empty IV
//!   is GHASH of one all-zero length block, i.e. `J0 = 0^128`;
//! * keystream blocks `E_K(inc32(J0))`, `E_K(inc32²(J0))`, …;
//! * tag `= E_K(J0) ⊕ GHASH_H(A ‖ 0^v ‖ C ‖ 0^u ‖ [len(A)]_64 ‖ [len(C)]_64)`.
//!
//! Decryption checks the tag (in constant time) *before* producing any
//! plaintext. The static-IV variant of keychain blobs (12 bytes, with AAD) is
//! the same code with a 96-bit IV.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes256;
use ghash::universal_hash::UniversalHash;
use ghash::GHash;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{Error, Key256, Result};

/// Length of a GCM tag (the full 128 bits; keychain blobs use it).
pub const TAG_LEN: usize = 16;

/// Longest plaintext GCM allows: 2^32 − 2 blocks.
pub const MAX_PLAINTEXT: u64 = ((1u64 << 32) - 2) * 16;

/// The static 12-byte IV of keychain blobs whose version has bit 31 set (spec §8.3).
pub const KEYCHAIN_STATIC_IV: [u8; 12] = [
    0x1e, 0xa0, 0x5c, 0xa9, 0x98, 0x2e, 0x87, 0xdc, 0xf1, 0x45, 0xe8, 0x24,
];

type Block = [u8; 16];

/// An AES-256-GCM key schedule with its hash subkey `H = E_K(0^128)`.
pub struct Gcm {
    aes: Aes256,
    h: Zeroizing<Block>,
}

impl std::fmt::Debug for Gcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gcm(redacted)")
    }
}

impl Gcm {
    /// Expands `key`.
    pub fn new(key: &Key256) -> Self {
        let aes = Aes256::new(key.as_bytes().into());
        let mut h = Zeroizing::new([0u8; 16]);
        aes.encrypt_block((&mut *h).into());
        Self { aes, h }
    }

    fn ghash(&self) -> GHash {
        GHash::new((&*self.h).into())
    }

    /// The pre-counter block `J0` for `iv`.
    fn j0(&self, iv: &[u8]) -> Block {
        if iv.len() == 12 {
            let mut j = [0u8; 16];
            j[..12].copy_from_slice(iv);
            j[15] = 1;
            return j;
        }
        let mut g = self.ghash();
        g.update_padded(iv);
        let mut len = [0u8; 16];
        len[8..].copy_from_slice(&((iv.len() as u64) * 8).to_be_bytes());
        g.update(&[len.into()]);
        g.finalize().into()
    }

    /// XORs the keystream that starts at `inc32(j0)` into `buf`.
    fn ctr(&self, j0: &Block, buf: &mut [u8]) {
        const PAR: usize = 8;
        let prefix: [u8; 12] = j0[..12].try_into().expect("12 bytes");
        let mut ctr = u32::from_be_bytes(j0[12..].try_into().expect("4 bytes"));
        let mut ks = [aes::Block::default(); PAR];
        for chunk in buf.chunks_mut(16 * PAR) {
            let n = chunk.len().div_ceil(16);
            for b in ks.iter_mut().take(n) {
                ctr = ctr.wrapping_add(1);
                b[..12].copy_from_slice(&prefix);
                b[12..].copy_from_slice(&ctr.to_be_bytes());
            }
            self.aes.encrypt_blocks(&mut ks[..n]);
            for (c, k) in chunk.iter_mut().zip(ks.iter().flat_map(|b| b.iter())) {
                *c ^= k;
            }
        }
        for b in ks.iter_mut() {
            zeroize::Zeroize::zeroize(b.as_mut_slice());
        }
    }

    /// The tag over `aad` and `ciphertext` for pre-counter block `j0`.
    fn tag(&self, j0: &Block, aad: &[u8], ciphertext: &[u8]) -> Block {
        let mut g = self.ghash();
        g.update_padded(aad);
        g.update_padded(ciphertext);
        let mut len = [0u8; 16];
        len[..8].copy_from_slice(&((aad.len() as u64) * 8).to_be_bytes());
        len[8..].copy_from_slice(&((ciphertext.len() as u64) * 8).to_be_bytes());
        g.update(&[len.into()]);
        let s: Block = g.finalize().into();
        let mut mask = aes::Block::from(*j0);
        self.aes.encrypt_block(&mut mask);
        let mut t = [0u8; 16];
        for i in 0..16 {
            t[i] = s[i] ^ mask[i];
        }
        t
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn encrypt_in_place(&self, iv: &[u8], aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN]> {
        check_len(buf.len())?;
        let j0 = self.j0(iv);
        self.ctr(&j0, buf);
        Ok(self.tag(&j0, aad, buf))
    }

    /// Checks `tag` over `aad` and the ciphertext in `buf`, then decrypts `buf` in place.
    /// On a mismatch (wrong key, IV, AAD, or damaged data) `buf` is left untouched.
    pub fn decrypt_in_place(
        &self,
        iv: &[u8],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<()> {
        check_len(buf.len())?;
        if tag.len() != TAG_LEN {
            return Err(Error::TagMismatch);
        }
        let j0 = self.j0(iv);
        let want = self.tag(&j0, aad, buf);
        if !bool::from(want.ct_eq(tag)) {
            return Err(Error::TagMismatch);
        }
        self.ctr(&j0, buf);
        Ok(())
    }
}

fn check_len(n: usize) -> Result<()> {
    if n as u64 > MAX_PLAINTEXT {
        return Err(Error::CiphertextLength(n as u64));
    }
    Ok(())
}

/// Encrypts `plaintext`; returns the ciphertext and the 16-byte tag.
pub fn encrypt(
    key: &Key256,
    iv: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, [u8; TAG_LEN])> {
    let mut buf = plaintext.to_vec();
    let tag = Gcm::new(key).encrypt_in_place(iv, aad, &mut buf)?;
    Ok((buf, tag))
}

/// Verifies `tag` and decrypts `ciphertext`; the plaintext is wiped on drop.
pub fn decrypt(
    key: &Key256,
    iv: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    Gcm::new(key).decrypt_in_place(iv, aad, &mut buf, tag)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    fn key(s: &str) -> Key256 {
        Key256::from_slice(&h(s)).unwrap()
    }

    // Spec §13 vector 3: empty IV, no AAD.
    #[test]
    fn spec_vector_3_empty_iv() {
        let k = key("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
        let pt = b"hello keychain backup item!";
        let (ct, tag) = encrypt(&k, &[], &[], pt).unwrap();
        assert_eq!(
            hex::encode(&ct),
            "98381ac22599f480df95f35021ac165f6fdfdeabc50ceac96dc588"
        );
        assert_eq!(hex::encode(tag), "c935a3594d52b71b1805b2388dbfd5b1");
        assert_eq!(&decrypt(&k, &[], &[], &ct, &tag).unwrap()[..], pt);
    }

    // With the empty IV, J0 = GHASH_H(0^128) = 0^128: the tag mask is E_K(0) and the
    // first keystream block E_K(0^120 ‖ 01) — check that against raw AES.
    #[test]
    fn empty_iv_means_zero_j0() {
        let k = Key256::random();
        let aes = Aes256::new(k.as_bytes().into());
        let mut ks = aes::Block::from([0u8; 16]);
        ks[15] = 1;
        aes.encrypt_block(&mut ks);
        let (ct, _) = encrypt(&k, &[], &[], &[0u8; 16]).unwrap();
        assert_eq!(&ct[..], &ks[..]);
        // Empty plaintext, empty AAD: GHASH of the zero length block is 0, so tag = E_K(0).
        let mut e0 = aes::Block::default();
        aes.encrypt_block(&mut e0);
        let (_, tag) = encrypt(&k, &[], &[], &[]).unwrap();
        assert_eq!(&tag[..], &e0[..]);
    }

    // McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 13–18 (AES-256).
    const K15: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
    const P15: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                       1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
    const P16: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                       1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
    const A16: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";

    struct Case {
        key: &'static str,
        iv: &'static str,
        aad: &'static str,
        pt: &'static str,
        ct: &'static str,
        tag: &'static str,
    }

    fn check(c: &Case) {
        let k = key(c.key);
        let (iv, aad, pt) = (h(c.iv), h(c.aad), h(c.pt));
        let (ct, tag) = encrypt(&k, &iv, &aad, &pt).unwrap();
        assert_eq!(hex::encode(&ct), hex::encode(h(c.ct)), "ciphertext");
        assert_eq!(hex::encode(tag), hex::encode(h(c.tag)), "tag");
        assert_eq!(&decrypt(&k, &iv, &aad, &ct, &tag).unwrap()[..], &pt[..]);
    }

    #[test]
    fn mcgrew_viega_13_14() {
        let zero = "0000000000000000000000000000000000000000000000000000000000000000";
        check(&Case {
            key: zero,
            iv: "000000000000000000000000",
            aad: "",
            pt: "",
            ct: "",
            tag: "530f8afbc74536b9a963b4f1c4cb738b",
        });
        check(&Case {
            key: zero,
            iv: "000000000000000000000000",
            aad: "",
            pt: "00000000000000000000000000000000",
            ct: "cea7403d4d606b6e074ec5d3baf39d18",
            tag: "d0d1c8a799996bf0265b98b5d48ab919",
        });
    }

    #[test]
    fn mcgrew_viega_15_16() {
        check(&Case {
            key: K15,
            iv: "cafebabefacedbaddecaf888",
            aad: "",
            pt: P15,
            ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
                 8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            tag: "b094dac5d93471bdec1a502270e3cc6c",
        });
        check(&Case {
            key: K15,
            iv: "cafebabefacedbaddecaf888",
            aad: A16,
            pt: P16,
            ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
                 8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            tag: "76fc6ece0f4e1768cddf8853bb2d551b",
        });
    }

    // Test cases 17 (64-bit IV) and 18 (480-bit IV): J0 goes through GHASH.
    #[test]
    fn mcgrew_viega_17_18_non_96_bit_iv() {
        check(&Case {
            key: K15,
            iv: "cafebabefacedbad",
            aad: A16,
            pt: P16,
            ct: "c3762df1ca787d32ae47c13bf19844cbaf1ae14d0b976afac52ff7d79bba9de0
                 feb582d33934a4f0954cc2363bc73f7862ac430e64abe499f47c9b1f",
            tag: "3a337dbf46a792c45e454913fe2ea8f2",
        });
        check(&Case {
            key: K15,
            iv: "9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728
                 c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b",
            aad: A16,
            pt: P16,
            ct: "5a8def2f0c9e53f1f75d7853659e2a20eeb2b22aafde6419a058ab4f6f746bf4
                 0fc0c3b780f244452da3ebf1c5d82cdea2418997200ef82e44ae7e3f",
            tag: "a44a8266ee1c8eb0c8b5d4cf5ae9f19a",
        });
    }

    #[test]
    fn equals_aes_gcm_crate_for_96_bit_ivs() {
        use aes_gcm::aead::{Aead, KeyInit as _, Payload};
        for len in [0usize, 1, 15, 16, 17, 127, 128, 129, 1000] {
            let k = Key256::random();
            let iv: [u8; 12] = rand::random();
            let aad: Vec<u8> = (0..len % 37).map(|i| i as u8).collect();
            let pt: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let (ct, tag) = encrypt(&k, &iv, &aad, &pt).unwrap();
            let theirs = aes_gcm::Aes256Gcm::new(k.as_bytes().into())
                .encrypt(
                    (&iv).into(),
                    Payload {
                        msg: &pt,
                        aad: &aad,
                    },
                )
                .unwrap();
            assert_eq!(theirs[..len], ct[..], "len {len}");
            assert_eq!(theirs[len..], tag[..], "len {len}");
        }
    }

    #[test]
    fn static_iv_with_aad_round_trips() {
        let k = Key256::random();
        let aad = [3u8, 0, 0, 0x80, 7, 0, 0, 0, 40, 0, 0, 0];
        let (ct, tag) = encrypt(&k, &KEYCHAIN_STATIC_IV, &aad, b"secret").unwrap();
        assert_eq!(
            &decrypt(&k, &KEYCHAIN_STATIC_IV, &aad, &ct, &tag).unwrap()[..],
            b"secret"
        );
        assert!(decrypt(&k, &[], &aad, &ct, &tag).is_err());
        assert!(decrypt(&k, &KEYCHAIN_STATIC_IV, &[], &ct, &tag).is_err());
    }

    #[test]
    fn tampering_is_rejected() {
        let k = Key256::random();
        let (ct, tag) = encrypt(&k, &[], &[], b"hello keychain backup item!").unwrap();
        let mut bad = ct.clone();
        bad[3] ^= 1;
        assert!(matches!(
            decrypt(&k, &[], &[], &bad, &tag),
            Err(Error::TagMismatch)
        ));
        let mut bad_tag = tag;
        bad_tag[15] ^= 0x80;
        assert!(matches!(
            decrypt(&k, &[], &[], &ct, &bad_tag),
            Err(Error::TagMismatch)
        ));
        assert!(matches!(
            decrypt(&k, &[], &[], &ct, &tag[..15]),
            Err(Error::TagMismatch)
        ));
        assert!(matches!(
            decrypt(&Key256::random(), &[], &[], &ct, &tag),
            Err(Error::TagMismatch)
        ));
        assert!(decrypt(&k, &[0u8; 12], &[], &ct, &tag).is_err());
        // The buffer is left as it was on a mismatch.
        let mut buf = bad.clone();
        assert!(Gcm::new(&k)
            .decrypt_in_place(&[], &[], &mut buf, &tag)
            .is_err());
        assert_eq!(buf, bad);
    }

    #[test]
    fn counter_wraps_in_32_bits() {
        // A J0 whose low 32 bits are all ones: inc32 wraps to 0 without touching the prefix.
        // Check against a hand-rolled keystream from raw AES.
        let k = Key256::random();
        let g = Gcm::new(&k);
        let mut j0 = [0xABu8; 16];
        j0[12..].copy_from_slice(&[0xFF; 4]);
        let mut buf = [0u8; 32];
        g.ctr(&j0, &mut buf);
        let aes = Aes256::new(k.as_bytes().into());
        for (i, want_ctr) in [0u32, 1].iter().enumerate() {
            let mut b = aes::Block::from(j0);
            b[12..].copy_from_slice(&want_ctr.to_be_bytes());
            aes.encrypt_block(&mut b);
            assert_eq!(&buf[i * 16..(i + 1) * 16], &b[..]);
        }
    }
}
