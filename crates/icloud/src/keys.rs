//! The keys of iCloud-style backup and the records that carry them: pure functions of bytes.
//!
//! * The **service key** (32 random bytes per account, spec §5.2's "iCloud Backup service
//!   key") opens the account's vault repository and the keybag records. Every custody path
//!   carries it, sealed (X25519 + AES-GCM, [`dataprotection::curve::seal`]) with its
//!   generation, so a path that still carries a rotated-out key is recognised as stale.
//! * A **keybag record** holds one device's cloud keybag (TYPE 3) and its keybag key,
//!   AES-GCM under a key derived from the service key, with its generation in the AAD.
//! * The **recovery key** is 28 characters (7 groups of 4 from a 32-letter alphabet,
//!   140 bits); its X25519 private key is SHA-256 of it. The server keeps the public key and
//!   the service key sealed to it.
//! * A **recovery contact** gets a packet sealed to the contact's published key; inside is a
//!   per-contact X25519 private key encrypted with a random AES key that only the server
//!   keeps, beside the service key sealed to that contact key's public half (spec §5.3):
//!   neither the packet nor the server's half alone opens anything.

use std::collections::BTreeMap;

use dataprotection::keybag::{kind, Keybag, WRAP_PASSCODE};
use dataprotection::wrap::{unwrap_key, wrap_key};
use dataprotection::{curve, Key256};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Associated data of each sealed record kind.
pub mod aad {
    /// The service key sealed to the recovery key.
    pub const RECOVERY_KEY: &[u8] = b"keybag.icloud/recovery-key/v1";
    /// The service key sealed to a trusted device.
    pub const TRUSTED: &[u8] = b"keybag.icloud/trusted-device/v1";
    /// The service key sealed to a recovery contact key.
    pub const CONTACT: &[u8] = b"keybag.icloud/recovery-contact/v1";
    /// A recovery contact packet sealed to the contact.
    pub const PACKET: &[u8] = b"keybag.icloud/contact-packet/v1";
    /// The contact private key under the server-held AES key.
    pub const CONTACT_INNER: &[u8] = b"keybag.icloud/contact-inner/v1";
    /// A keybag record.
    pub const KEYBAG: &[u8] = b"keybag.icloud/keybag/v1";
}

/// The account's service key and its generation (1, then +1 at every rotation).
#[derive(Clone)]
pub struct ServiceKey {
    /// The key.
    pub key: Key256,
    /// Its generation.
    pub generation: u64,
}

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceKey(generation {}, redacted)", self.generation)
    }
}

impl ServiceKey {
    /// A new key of `generation`.
    pub fn generate(generation: u64) -> ServiceKey {
        ServiceKey {
            key: Key256::random(),
            generation,
        }
    }

    /// The repository key made from it: a vault recovery key (140 bits of an HMAC of the
    /// service key). A recovery key's key file is opened with BLAKE3, not Argon2id: the
    /// secret is random, stretching it would only cost every backup time and memory.
    pub fn vault_key(&self) -> vault::keys::RecoveryKey {
        const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let k = self.derive("keybag.icloud/vault-key");
        let text: Zeroizing<String> = Zeroizing::new(
            k.as_bytes()[..28]
                .iter()
                .map(|b| CROCKFORD[(b & 31) as usize] as char)
                .collect(),
        );
        vault::keys::RecoveryKey::parse(&text).expect("28 Crockford characters")
    }

    /// `key ‖ generation`: what each custody path seals.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(self.key.as_bytes().to_vec());
        v.extend_from_slice(&self.generation.to_be_bytes());
        v
    }

    /// Parses [`ServiceKey::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Result<ServiceKey> {
        if b.len() != 40 {
            return Err(Error::Crypto("a sealed service key is 40 bytes".into()));
        }
        Ok(ServiceKey {
            key: Key256::from_slice(&b[..32]).expect("32 bytes"),
            generation: u64::from_be_bytes(b[32..].try_into().expect("8 bytes")),
        })
    }

    fn derive(&self, label: &str) -> Key256 {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_bytes()).expect("any");
        mac.update(label.as_bytes());
        let out: [u8; 32] = mac.finalize().into_bytes().into();
        Key256::from_bytes(out)
    }
}

/// Seals the service key to `to` (a 32-byte public key) with `aad`.
pub fn seal_service_key(to: &[u8; 32], aad: &[u8], svk: &ServiceKey) -> Vec<u8> {
    curve::seal(to, aad, &svk.to_bytes())
}

/// Opens what [`seal_service_key`] sealed.
pub fn open_service_key(private: &Key256, aad: &[u8], sealed: &[u8]) -> Result<ServiceKey> {
    let plain = curve::open(private, aad, sealed)
        .map_err(|_| Error::Crypto("the sealed service key does not open with this key".into()))?;
    ServiceKey::from_bytes(&plain)
}

/// A record that names a public key and carries the service key sealed to it:
/// `public(32) ‖ sealed`.
pub fn public_record(public: &[u8; 32], aad: &[u8], svk: &ServiceKey) -> Vec<u8> {
    let mut v = public.to_vec();
    v.extend_from_slice(&seal_service_key(public, aad, svk));
    v
}

/// Splits a [`public_record`].
pub fn split_public_record(b: &[u8]) -> Result<([u8; 32], &[u8])> {
    if b.len() < 32 + curve::SEAL_OVERHEAD {
        return Err(Error::Crypto("record too short".into()));
    }
    Ok((b[..32].try_into().expect("32"), &b[32..]))
}

// ---------------------------------------------------------------- keybag records

/// One device's cloud keybag as the service keeps it.
pub struct KeybagRecord {
    /// Generation (rises at every rewrap).
    pub generation: u64,
    /// The keybag key (unwraps the file class private keys).
    pub keybag_key: Key256,
    /// The keybag TLV.
    pub keybag: Vec<u8>,
}

/// `generation(8) ‖ iv(12) ‖ AES-GCM(k, keybag_key ‖ keybag)`, k derived from the service key,
/// AAD = label ‖ generation.
pub fn seal_keybag(svk: &ServiceKey, rec: &KeybagRecord) -> Vec<u8> {
    let k = svk.derive("keybag.icloud/keybag-record");
    let mut iv = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut iv);
    let mut plain = Zeroizing::new(rec.keybag_key.as_bytes().to_vec());
    plain.extend_from_slice(&rec.keybag);
    let mut a = aad::KEYBAG.to_vec();
    a.extend_from_slice(&rec.generation.to_be_bytes());
    let (ct, tag) = dataprotection::gcm::encrypt(&k, &iv, &a, &plain).expect("short");
    let mut out = rec.generation.to_be_bytes().to_vec();
    out.extend_from_slice(&iv);
    out.extend_from_slice(&ct);
    out.extend_from_slice(&tag);
    out
}

/// Opens [`seal_keybag`].
pub fn open_keybag(svk: &ServiceKey, b: &[u8]) -> Result<KeybagRecord> {
    if b.len() < 8 + 12 + 32 + 16 {
        return Err(Error::Crypto("keybag record too short".into()));
    }
    let generation = u64::from_be_bytes(b[..8].try_into().expect("8"));
    let k = svk.derive("keybag.icloud/keybag-record");
    let mut a = aad::KEYBAG.to_vec();
    a.extend_from_slice(&b[..8]);
    let (ct, tag) = b[20..].split_at(b.len() - 20 - 16);
    let plain = dataprotection::gcm::decrypt(&k, &b[8..20], &a, ct, tag).map_err(|_| {
        Error::Crypto("the keybag record does not open with this service key".into())
    })?;
    Ok(KeybagRecord {
        generation,
        keybag_key: Key256::from_slice(&plain[..32]).expect("32"),
        keybag: plain[32..].to_vec(),
    })
}

/// The file class private keys of a cloud keybag, unwrapped with its keybag key (each checked
/// against its `PBKY`).
pub fn file_class_keys(keybag: &[u8], keybag_key: &Key256) -> Result<BTreeMap<u32, Key256>> {
    let kb = Keybag::parse(keybag).map_err(|e| Error::Crypto(format!("cloud keybag: {e}")))?;
    if kb.kind() != Some(kind::ICLOUD) {
        return Err(Error::Crypto("not an iCloud Backup (TYPE 3) keybag".into()));
    }
    let mut out = BTreeMap::new();
    for rec in kb.classes.iter().filter(|r| r.wrap == WRAP_PASSCODE) {
        let k = unwrap_key(keybag_key, &rec.wpky)
            .map_err(|_| Error::Crypto("the keybag key does not unwrap the cloud keybag".into()))?;
        if rec.pbky.as_deref() != Some(&curve::public_of(&k)[..]) {
            return Err(Error::Crypto(format!(
                "cloud keybag class {}: PBKY does not match",
                rec.class().0
            )));
        }
        out.insert(rec.class().0, k);
    }
    Ok(out)
}

/// The keybag with its file class private keys rewrapped from `old` to `new` (a rotation of
/// the keybag key; the class keys, so every file's cloud wrap, stay).
pub fn rewrap_keybag(keybag: &[u8], old: &Key256, new: &Key256) -> Result<Vec<u8>> {
    let mut kb = Keybag::parse(keybag).map_err(|e| Error::Crypto(format!("cloud keybag: {e}")))?;
    for rec in kb.classes.iter_mut().filter(|r| r.wrap == WRAP_PASSCODE) {
        let k = unwrap_key(old, &rec.wpky)
            .map_err(|_| Error::Crypto("the old keybag key does not unwrap".into()))?;
        rec.wpky = wrap_key(new, &k).to_vec();
    }
    Ok(kb.to_bytes())
}

// ---------------------------------------------------------------- recovery key

const ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A 28-character recovery key (shown once; the server never sees it).
pub struct RecoveryKey(Zeroizing<String>);

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(redacted)")
    }
}

impl RecoveryKey {
    /// A new key: 28 letters from a 32-letter alphabet (no I, O, 0, 1), 140 bits.
    pub fn generate() -> RecoveryKey {
        let mut b = Zeroizing::new([0u8; 28]);
        rand::rngs::OsRng.fill_bytes(&mut b[..]);
        RecoveryKey(Zeroizing::new(
            b.iter()
                .map(|x| ALPHABET[(x & 31) as usize] as char)
                .collect(),
        ))
    }

    /// Reads a key as a person types it: case, spaces and dashes do not matter.
    pub fn parse(text: &str) -> Result<RecoveryKey> {
        let s: String = text
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if s.len() != 28 || !s.bytes().all(|b| ALPHABET.contains(&b)) {
            return Err(Error::Invalid(
                "a recovery key is 28 letters and digits (7 groups of 4; no I, O, 0 or 1)".into(),
            ));
        }
        Ok(RecoveryKey(Zeroizing::new(s)))
    }

    /// `XXXX-XXXX-…` for showing once.
    pub fn display(&self) -> Zeroizing<String> {
        let mut out = String::with_capacity(34);
        for (i, c) in self.0.chars().enumerate() {
            if i > 0 && i % 4 == 0 {
                out.push('-');
            }
            out.push(c);
        }
        Zeroizing::new(out)
    }

    /// Its X25519 private key.
    pub fn private(&self) -> Key256 {
        let mut h = Sha256::new();
        h.update(b"keybag.icloud/recovery-key/v1:");
        h.update(self.0.as_bytes());
        Key256::from_bytes(h.finalize().into())
    }
}

// ---------------------------------------------------------------- recovery contacts

/// What setting up a recovery contact makes.
pub struct ContactSetup {
    /// For the server: `contact public(32) ‖ AES key(32) ‖ sealed service key`.
    pub record: Vec<u8>,
    /// For the contact: sealed to the contact's published key.
    pub packet: Vec<u8>,
}

/// Makes a recovery contact's halves for the owner `owner` and the contact's key `contact_pub`.
pub fn contact_setup(owner: &str, contact_pub: &[u8; 32], svk: &ServiceKey) -> ContactSetup {
    let rc = curve::new_private();
    let rc_pub = curve::public_of(&rc);
    let p = Key256::random();
    let mut iv = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut iv);
    let (ct, tag) =
        dataprotection::gcm::encrypt(&p, &iv, aad::CONTACT_INNER, rc.as_bytes()).expect("short");
    let mut inner = iv.to_vec();
    inner.extend_from_slice(&ct);
    inner.extend_from_slice(&tag);
    let packet = curve::seal(contact_pub, &packet_aad(owner), &inner);
    let mut record = rc_pub.to_vec();
    record.extend_from_slice(p.as_bytes());
    record.extend_from_slice(&seal_service_key(&rc_pub, aad::CONTACT, svk));
    ContactSetup { record, packet }
}

fn packet_aad(owner: &str) -> Vec<u8> {
    let mut a = aad::PACKET.to_vec();
    a.extend_from_slice(owner.as_bytes());
    a
}

/// The contact's side: opens the packet with the contact's private key and returns the code
/// to hand to the owner (the contact key, still under the server's AES key).
pub fn contact_code(contact_private: &Key256, owner: &str, packet: &[u8]) -> Result<Vec<u8>> {
    curve::open(contact_private, &packet_aad(owner), packet)
        .map(|z| z.to_vec())
        .map_err(|_| {
            Error::Crypto("the recovery contact packet does not open with this key".into())
        })
}

/// Both halves together: the server's record and the contact's code give the service key.
pub fn contact_recover(record: &[u8], code: &[u8]) -> Result<ServiceKey> {
    if record.len() < 64 + curve::SEAL_OVERHEAD || code.len() != 12 + 32 + 16 {
        return Err(Error::Crypto(
            "recovery contact record or code malformed".into(),
        ));
    }
    let p = Key256::from_slice(&record[32..64]).expect("32");
    let (ct, tag) = code[12..].split_at(32);
    let rc = dataprotection::gcm::decrypt(&p, &code[..12], aad::CONTACT_INNER, ct, tag)
        .map_err(|_| Error::Crypto("the contact's code does not open with this record".into()))?;
    let rc = Key256::from_slice(&rc).expect("32");
    open_service_key(&rc, aad::CONTACT, &record[64..])
}

/// A contact record resealed for a new service key (the contact's halves stay valid).
pub fn contact_reseal(record: &[u8], svk: &ServiceKey) -> Result<Vec<u8>> {
    if record.len() < 64 {
        return Err(Error::Crypto("recovery contact record malformed".into()));
    }
    let pubk: [u8; 32] = record[..32].try_into().expect("32");
    let mut out = record[..64].to_vec();
    out.extend_from_slice(&seal_service_key(&pubk, aad::CONTACT, svk));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_key_format_and_parse() {
        let k = RecoveryKey::generate();
        let shown = k.display();
        assert_eq!(shown.len(), 34);
        let back = RecoveryKey::parse(&shown.to_lowercase()).unwrap();
        assert_eq!(back.private().as_bytes(), k.private().as_bytes());
        assert!(RecoveryKey::parse("ABCD").is_err());
        assert!(RecoveryKey::parse(&"I".repeat(28)).is_err());
    }

    #[test]
    fn contact_halves_alone_open_nothing_together_they_do() {
        let svk = ServiceKey::generate(3);
        let contact = curve::new_private();
        let s = contact_setup("alice", &curve::public_of(&contact), &svk);
        let code = contact_code(&contact, "alice", &s.packet).unwrap();
        // The packet alone (even opened by the contact) is not the key.
        assert!(contact_code(&curve::new_private(), "alice", &s.packet).is_err());
        assert!(contact_code(&contact, "mallory", &s.packet).is_err());
        // The server's record with a wrong code fails; with the contact's, it opens.
        let mut bad = code.clone();
        bad[20] ^= 1;
        assert!(contact_recover(&s.record, &bad).is_err());
        let got = contact_recover(&s.record, &code).unwrap();
        assert_eq!(got.key.as_bytes(), svk.key.as_bytes());
        assert_eq!(got.generation, 3);
        let new = ServiceKey::generate(4);
        let re = contact_reseal(&s.record, &new).unwrap();
        assert_eq!(contact_recover(&re, &code).unwrap().generation, 4);
    }

    #[test]
    fn keybag_record_round_trip_and_binding() {
        let svk = ServiceKey::generate(1);
        let rec = KeybagRecord {
            generation: 7,
            keybag_key: Key256::random(),
            keybag: b"not really a keybag".to_vec(),
        };
        let b = seal_keybag(&svk, &rec);
        let back = open_keybag(&svk, &b).unwrap();
        assert_eq!(back.generation, 7);
        assert_eq!(back.keybag, rec.keybag);
        let mut older = b.clone();
        older[7] = 6; // claims another generation: the AAD no longer matches
        assert!(open_keybag(&svk, &older).is_err());
        assert!(open_keybag(&ServiceKey::generate(1), &b).is_err());
    }
}
