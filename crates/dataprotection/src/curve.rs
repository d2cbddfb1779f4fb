//! Curve25519 key wrapping: the class-B scheme (a public key suffices to wrap, only the
//! private key unwraps) and a sealed box built the same way for small records.

use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::{Error, Key256, Result};

/// Length of a key wrapped to a public key: `ephPub(32) ‖ RFC 3394(40)`.
pub const WRAPPED_TO_PUBLIC_LEN: usize = 72;
/// Bytes a sealed box adds to its plaintext: `ephPub(32)` and the GCM tag (16).
pub const SEAL_OVERHEAD: usize = 48;

/// Class-B key agreement (One-Pass DH, SP 800-56A concatenation KDF with SHA-256, as IDP's
/// `unwrapCurve25519`): SHA-256(00000001 ‖ X25519(secret, public) ‖ ephPub ‖ classPub).
fn kek(shared: &[u8; 32], eph_pub: &[u8; 32], class_pub: &[u8; 32]) -> Key256 {
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(shared);
    h.update(eph_pub);
    h.update(class_pub);
    let mut out: [u8; 32] = h.finalize().into();
    let k = Key256::from_bytes(out);
    out.zeroize();
    k
}

/// The X25519 public key of a private key.
pub fn public_of(private: &Key256) -> [u8; 32] {
    let secret = StaticSecret::from(*private.as_bytes());
    *PublicKey::from(&secret).as_bytes()
}

/// A fresh X25519 private key (clamped on use, as x25519-dalek does).
pub fn new_private() -> Key256 {
    Key256::random()
}

fn agree(eph_or_priv: &Key256, public: &[u8; 32]) -> Key256 {
    let secret = StaticSecret::from(*eph_or_priv.as_bytes());
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    Key256::from_bytes(*shared.as_bytes())
}

/// Wraps `key` to the public key `to`: `ephPub(32) ‖ RFC3394(kek, key)(40)`.
pub fn wrap_to(to: &[u8; 32], key: &Key256) -> Vec<u8> {
    let eph = Key256::random();
    let eph_pub = public_of(&eph);
    let shared = agree(&eph, to);
    let k = kek(shared.as_bytes(), &eph_pub, to);
    let mut out = eph_pub.to_vec();
    out.extend_from_slice(&crate::wrap::wrap_key(&k, key));
    out
}

/// Unwraps a 72-byte key wrapped by [`wrap_to`] with the matching private key.
pub fn unwrap_with(private: &Key256, wrapped: &[u8]) -> Result<Key256> {
    if wrapped.len() != WRAPPED_TO_PUBLIC_LEN {
        return Err(Error::WrappedKeyLength(wrapped.len()));
    }
    let eph_pub: [u8; 32] = wrapped[..32].try_into().expect("32 bytes");
    let shared = agree(private, &eph_pub);
    let k = kek(shared.as_bytes(), &eph_pub, &public_of(private));
    crate::wrap::unwrap_key(&k, &wrapped[32..])
}

/// The sealed box's key: SHA-256("keybag.seal/v1" ‖ X25519 ‖ ephPub ‖ recipientPub). Each box
/// has its own ephemeral key, so a fixed GCM nonce is never reused under one key.
fn seal_key(shared: &[u8; 32], eph_pub: &[u8; 32], to: &[u8; 32]) -> Key256 {
    let mut h = Sha256::new();
    h.update(b"keybag.seal/v1");
    h.update(shared);
    h.update(eph_pub);
    h.update(to);
    let mut out: [u8; 32] = h.finalize().into();
    let k = Key256::from_bytes(out);
    out.zeroize();
    k
}

const SEAL_IV: [u8; 12] = [0; 12];

/// Encrypts `plain` to the public key `to` (ECIES: X25519, SHA-256, AES-256-GCM), binding
/// `aad`: `ephPub(32) ‖ ciphertext ‖ tag(16)`.
pub fn seal(to: &[u8; 32], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let eph = Key256::random();
    let eph_pub = public_of(&eph);
    let shared = agree(&eph, to);
    let k = seal_key(shared.as_bytes(), &eph_pub, to);
    let (ct, tag) = crate::gcm::encrypt(&k, &SEAL_IV, aad, plain).expect("short input");
    let mut out = eph_pub.to_vec();
    out.extend_from_slice(&ct);
    out.extend_from_slice(&tag);
    out
}

/// Opens a box made by [`seal`] with the recipient's private key; fails on any other key,
/// another `aad`, or a changed byte.
pub fn open(private: &Key256, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(Error::CiphertextLength(sealed.len() as u64));
    }
    let eph_pub: [u8; 32] = sealed[..32].try_into().expect("32 bytes");
    let shared = agree(private, &eph_pub);
    let k = seal_key(shared.as_bytes(), &eph_pub, &public_of(private));
    let (ct, tag) = sealed[32..].split_at(sealed.len() - SEAL_OVERHEAD);
    crate::gcm::decrypt(&k, &SEAL_IV, aad, ct, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_to_public_key_round_trips_and_needs_the_private_key() {
        let a = new_private();
        let b = new_private();
        let key = Key256::random();
        let w = wrap_to(&public_of(&a), &key);
        assert_eq!(w.len(), WRAPPED_TO_PUBLIC_LEN);
        assert_eq!(unwrap_with(&a, &w).unwrap().as_bytes(), key.as_bytes());
        assert!(unwrap_with(&b, &w).is_err());
        let mut bad = w.clone();
        bad[40] ^= 1;
        assert!(unwrap_with(&a, &bad).is_err());
    }

    #[test]
    fn sealed_box_opens_only_with_its_key_and_aad() {
        let a = new_private();
        let b = new_private();
        let s = seal(&public_of(&a), b"ctx", b"secret bytes");
        assert_eq!(s.len(), 12 + SEAL_OVERHEAD);
        assert_eq!(&open(&a, b"ctx", &s).unwrap()[..], b"secret bytes");
        assert!(open(&b, b"ctx", &s).is_err());
        assert!(open(&a, b"other", &s).is_err());
        let mut bad = s.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(open(&a, b"ctx", &bad).is_err());
        assert!(open(&a, b"ctx", &s[..40]).is_err());
        // Two seals of one plaintext differ (fresh ephemeral key each time).
        assert_ne!(
            seal(&public_of(&a), b"ctx", b"x"),
            seal(&public_of(&a), b"ctx", b"x")
        );
    }

    /// RFC 7748 §6.1: the X25519 public keys of Alice's and Bob's private keys.
    #[test]
    fn public_keys_match_rfc7748() {
        let alice =
            Key256::from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap();
        assert_eq!(
            hex::encode(public_of(&alice)),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}
