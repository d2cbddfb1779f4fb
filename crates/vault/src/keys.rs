//! The repository's keys and the ways in.
//!
//! * The **keyring** (the master key) holds every key epoch ([`EpochKey`]); new data is sealed
//!   under the last one. It never leaves a client unsealed.
//! * A **key file** (`keys/<name>`) seals the keyring once per way in: a password, through
//!   Argon2id (≥ 64 MiB, time cost calibrated to about half a second), or a printable
//!   **recovery key** of 140 random bits (28 characters, read aloud in groups of four, like
//!   Apple's), through BLAKE3's key derivation (it needs no stretching).
//! * Retiring a leaked master key ([`Keyring::rotate`]): a new epoch is added, the key files
//!   are written again for the secrets at hand (the others are removed: they open the leaked
//!   keyring), new data is sealed under the new epoch, and `prune --reseal` re-seals old packs;
//!   once none is left under an old epoch, it is dropped from the keyring.

use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::crypto::{open, seal, EpochKey, Key32};
use crate::id::Id;
use crate::{Error, Result};

/// Argon2id memory floor and default (KiB): 64 MiB.
pub const MIN_MEMORY_KIB: u32 = 64 * 1024;
/// Caps on costs read from a key file (untrusted): 4 GiB, 64 passes, 16 lanes.
pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// See [`MAX_MEMORY_KIB`].
pub const MAX_TIME_COST: u32 = 64;
/// See [`MAX_MEMORY_KIB`].
pub const MAX_LANES: u32 = 16;
/// What a password derivation aims to take.
pub const TARGET_KDF_TIME: Duration = Duration::from_millis(500);

/// Chunking and packing parameters, fixed when the repository is made.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// Smallest chunk (a shorter file is one chunk).
    pub chunk_min: u32,
    /// Average chunk.
    pub chunk_avg: u32,
    /// Largest chunk.
    pub chunk_max: u32,
    /// A pack is uploaded once it holds this many bytes.
    pub pack_target: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            chunk_min: 256 << 10,
            chunk_avg: 1 << 20,
            chunk_max: 4 << 20,
            pack_target: 16 << 20,
        }
    }
}

impl Params {
    /// Checks the values (they come from a sealed but possibly old or odd keyring).
    pub fn check(&self) -> Result<()> {
        let ok = (64..=1 << 22).contains(&self.chunk_min)
            && self.chunk_min <= self.chunk_avg
            && self.chunk_avg <= self.chunk_max
            && (256..=1 << 22).contains(&self.chunk_avg)
            && (1024..=1 << 24).contains(&self.chunk_max)
            && (1 << 16..=1 << 30).contains(&self.pack_target);
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "repository parameters out of range: {self:?}"
            )))
        }
    }
}

/// Every key epoch of a repository, and its fixed parameters.
#[derive(Clone, Zeroize, ZeroizeOnDrop, serde::Serialize, serde::Deserialize)]
pub struct Keyring {
    /// The repository this keyring belongs to (also in the plain `config`).
    #[zeroize(skip)]
    pub repo_id: Id,
    /// Chunking and packing parameters.
    #[zeroize(skip)]
    pub params: Params,
    /// Key epochs, oldest first; the last seals new data.
    pub epochs: Vec<EpochKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keyring({}, epochs {:?}, redacted)",
            self.repo_id.short(),
            self.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>()
        )
    }
}

impl Keyring {
    /// A new keyring with one epoch.
    pub fn new(repo_id: Id, params: Params) -> Keyring {
        Keyring {
            repo_id,
            params,
            epochs: vec![EpochKey::random(0)],
        }
    }

    /// The epoch that seals new data.
    pub fn current(&self) -> &EpochKey {
        self.epochs.last().expect("a keyring has an epoch")
    }

    /// The keys of `epoch`, if this keyring still holds it.
    pub fn epoch(&self, epoch: u32) -> Option<&EpochKey> {
        self.epochs.iter().find(|e| e.epoch == epoch)
    }

    /// Adds a new epoch: new data is sealed and named under fresh keys from now on.
    pub fn rotate(&mut self) -> u32 {
        let next = self.current().epoch + 1;
        self.epochs.push(EpochKey::random(next));
        next
    }

    /// Drops an epoch that no object is sealed under any more (never the current one).
    pub fn retire(&mut self, epoch: u32) -> Result<()> {
        if epoch == self.current().epoch {
            return Err(Error::Invalid(
                "the current key epoch cannot be retired".into(),
            ));
        }
        self.epochs.retain(|e| e.epoch != epoch);
        Ok(())
    }

    fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(postcard::to_stdvec(self).expect("serializable"))
    }

    fn from_bytes(b: &[u8]) -> Option<Keyring> {
        let k: Keyring = postcard::from_bytes(b).ok()?;
        (!k.epochs.is_empty()).then_some(k)
    }
}

/// A printable recovery key: 28 characters of Crockford's base32 (140 random bits), shown as
/// seven groups of four. Read back case-insensitively; `-` and spaces are ignored, and `I`/`L`
/// read as `1`, `O` as `0`.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct RecoveryKey(String);

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

impl RecoveryKey {
    /// 140 fresh random bits.
    pub fn generate() -> RecoveryKey {
        let mut s = String::with_capacity(28);
        let mut buf = [0u8; 28];
        rand::rngs::OsRng.fill_bytes(&mut buf);
        for b in buf.iter() {
            s.push(CROCKFORD[(b & 31) as usize] as char);
        }
        buf.zeroize();
        RecoveryKey(s)
    }

    /// Parses what a person typed or read aloud.
    pub fn parse(text: &str) -> Result<RecoveryKey> {
        let mut s = String::with_capacity(28);
        for c in text.chars() {
            let c = match c.to_ascii_uppercase() {
                '-' | ' ' | '\t' | '\n' | '\r' => continue,
                'I' | 'L' => '1',
                'O' => '0',
                c => c,
            };
            if !CROCKFORD.contains(&(c as u8)) || !c.is_ascii() {
                return Err(Error::Invalid(
                    "a recovery key is 28 characters of 0-9 and A-Z (no U), in groups of four"
                        .into(),
                ));
            }
            s.push(c);
        }
        if s.len() != 28 {
            return Err(Error::Invalid(format!(
                "a recovery key has 28 characters, this has {}",
                s.len()
            )));
        }
        Ok(RecoveryKey(s))
    }

    /// `XXXX-XXXX-XXXX-XXXX-XXXX-XXXX-XXXX`.
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

    fn wrapping_key(&self, salt: &[u8]) -> Key32 {
        let mut h = blake3::Hasher::new_derive_key("keybag vault recovery key v1");
        h.update(salt);
        h.update(self.0.as_bytes());
        Key32(*h.finalize().as_bytes())
    }
}

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(redacted)")
    }
}

/// What opens a key file.
pub enum Secret<'a> {
    /// A password (UTF-8 bytes).
    Password(&'a [u8]),
    /// A recovery key.
    Recovery(&'a RecoveryKey),
}

/// Argon2id costs.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Argon2Params {
    fn check(&self) -> Result<()> {
        if self.m_kib < MIN_MEMORY_KIB / 8
            || self.m_kib > MAX_MEMORY_KIB
            || !(1..=MAX_TIME_COST).contains(&self.t)
            || !(1..=MAX_LANES).contains(&self.p)
        {
            return Err(Error::Invalid(format!(
                "key file asks for Argon2id m={} KiB, t={}, p={}: beyond the caps (≤ {} MiB, ≤ {} passes, ≤ {} lanes); refusing",
                self.m_kib,
                self.t,
                self.p,
                MAX_MEMORY_KIB / 1024,
                MAX_TIME_COST,
                MAX_LANES
            )));
        }
        Ok(())
    }

    fn derive(&self, password: &[u8], salt: &[u8]) -> Result<Key32> {
        self.check()?;
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| Error::Invalid(format!("Argon2id parameters: {e}")))?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Key32([0; 32]);
        a.hash_password_into(password, salt, &mut out.0)
            .map_err(|e| Error::Invalid(format!("Argon2id: {e}")))?;
        Ok(out)
    }

    /// `m_kib` memory and as many passes as fit in [`TARGET_KDF_TIME`] on this machine
    /// (at least one), measured with one trial derivation.
    pub fn calibrate(m_kib: u32) -> Argon2Params {
        let p = Argon2Params { m_kib, t: 1, p: 1 };
        let start = Instant::now();
        let _ = p.derive(b"calibration", &[0u8; 16]);
        let one = start.elapsed().max(Duration::from_millis(1));
        let t = (TARGET_KDF_TIME.as_secs_f64() / one.as_secs_f64()).floor() as u32;
        Argon2Params {
            t: t.clamp(1, 16),
            ..p
        }
    }
}

/// How a key file's wrapping key is derived.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum KeyKind {
    /// A password through Argon2id.
    Password {
        /// Its costs.
        argon2id: Argon2Params,
    },
    /// A recovery key through BLAKE3 `derive_key`.
    Recovery,
}

/// A key file as stored (JSON, plain: it holds only the KDF's parameters and the sealed
/// keyring).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct KeyFile {
    /// Format version (1).
    pub version: u32,
    /// A name for people (`password`, `recovery`, or what `key add --label` gave).
    pub label: String,
    /// When it was made (Unix seconds).
    pub created: i64,
    /// The derivation.
    pub kdf: KeyKind,
    /// Random salt, base64.
    pub salt: String,
    /// The keyring sealed under the derived key, base64.
    pub sealed: String,
}

/// Longest key file read (they are a few hundred bytes).
pub const MAX_KEY_FILE: usize = 64 << 10;

const KEY_AAD: &[u8] = b"keybag vault key file v1";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl KeyFile {
    /// Seals `keyring` for `secret`. Passwords use `argon2` (or [`Argon2Params::calibrate`]d
    /// costs when `None`).
    pub fn seal(
        keyring: &Keyring,
        secret: &Secret<'_>,
        label: &str,
        argon2: Option<Argon2Params>,
        now: i64,
    ) -> Result<KeyFile> {
        let mut salt = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let (kdf, key) = match secret {
            Secret::Password(pw) => {
                let params = match argon2 {
                    Some(p) => p,
                    None => Argon2Params::calibrate(MIN_MEMORY_KIB),
                };
                if params.m_kib < MIN_MEMORY_KIB {
                    return Err(Error::Invalid(format!(
                        "Argon2id memory must be at least {} MiB",
                        MIN_MEMORY_KIB / 1024
                    )));
                }
                (
                    KeyKind::Password { argon2id: params },
                    params.derive(pw, &salt)?,
                )
            }
            Secret::Recovery(r) => (KeyKind::Recovery, r.wrapping_key(&salt)),
        };
        Ok(KeyFile {
            version: 1,
            label: label.to_string(),
            created: now,
            kdf,
            salt: b64().encode(salt),
            sealed: b64().encode(seal(&key, KEY_AAD, &keyring.to_bytes())),
        })
    }

    /// Its JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("serializable")
    }

    /// Parses stored bytes (`name` for messages).
    pub fn from_bytes(name: &str, b: &[u8]) -> Result<KeyFile> {
        if b.len() > MAX_KEY_FILE {
            return Err(Error::corrupt(name, "key file over the size cap"));
        }
        let k: KeyFile = serde_json::from_slice(b)
            .map_err(|e| Error::corrupt(name, format!("not a key file: {e}")))?;
        if k.version != 1 {
            return Err(Error::corrupt(
                name,
                format!("key file version {}", k.version),
            ));
        }
        Ok(k)
    }

    /// True when `secret` is of the kind this file takes.
    pub fn takes(&self, secret: &Secret<'_>) -> bool {
        matches!(
            (&self.kdf, secret),
            (KeyKind::Password { .. }, Secret::Password(_))
                | (KeyKind::Recovery, Secret::Recovery(_))
        )
    }

    /// The keyring, if `secret` opens this file (`Ok(None)` when it does not).
    pub fn open(&self, name: &str, secret: &Secret<'_>) -> Result<Option<Keyring>> {
        if !self.takes(secret) {
            return Ok(None);
        }
        let salt = b64()
            .decode(&self.salt)
            .map_err(|_| Error::corrupt(name, "salt is not base64"))?;
        let sealed = b64()
            .decode(&self.sealed)
            .map_err(|_| Error::corrupt(name, "sealed keyring is not base64"))?;
        let key = match (&self.kdf, secret) {
            (KeyKind::Password { argon2id }, Secret::Password(pw)) => argon2id.derive(pw, &salt)?,
            (KeyKind::Recovery, Secret::Recovery(r)) => r.wrapping_key(&salt),
            _ => return Ok(None),
        };
        let Some(plain) = open(&key, KEY_AAD, &sealed).map(Zeroizing::new) else {
            return Ok(None);
        };
        Keyring::from_bytes(&plain)
            .map(Some)
            .ok_or_else(|| Error::corrupt(name, "the keyring inside does not decode"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Option<Argon2Params> {
        Some(Argon2Params {
            m_kib: MIN_MEMORY_KIB,
            t: 1,
            p: 1,
        })
    }

    #[test]
    fn password_and_recovery_open_the_same_keyring() {
        let kr = Keyring::new(Id::of_bytes(b"repo"), Params::default());
        let kf = KeyFile::seal(&kr, &Secret::Password(b"pw"), "password", cheap(), 0).unwrap();
        let bytes = kf.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("pw\""));
        let back = KeyFile::from_bytes("k", &bytes).unwrap();
        let opened = back.open("k", &Secret::Password(b"pw")).unwrap().unwrap();
        assert_eq!(opened.current().enc, kr.current().enc);
        assert!(back
            .open("k", &Secret::Password(b"wrong"))
            .unwrap()
            .is_none());

        let rk = RecoveryKey::generate();
        let shown = rk.display();
        assert_eq!(shown.len(), 34);
        assert_eq!(shown.split('-').count(), 7);
        let kf2 = KeyFile::seal(&kr, &Secret::Recovery(&rk), "recovery", None, 0).unwrap();
        let typed = RecoveryKey::parse(&shown.to_lowercase().replace('-', " ")).unwrap();
        assert!(kf2.open("r", &Secret::Recovery(&typed)).unwrap().is_some());
        assert!(kf2.open("r", &Secret::Password(b"pw")).unwrap().is_none());
        assert!(kf2
            .open("r", &Secret::Recovery(&RecoveryKey::generate()))
            .unwrap()
            .is_none());
    }

    #[test]
    fn recovery_keys_parse_leniently_and_refuse_garbage() {
        let rk = RecoveryKey::parse("abcd efgh-jkmn pqrs tvwx yz01 2345").unwrap();
        assert_eq!(rk.display().as_str(), "ABCD-EFGH-JKMN-PQRS-TVWX-YZ01-2345");
        assert_eq!(
            RecoveryKey::parse("ILO0 0000 0000 0000 0000 0000 0000").unwrap(),
            RecoveryKey::parse("1100 0000 0000 0000 0000 0000 0000").unwrap()
        );
        assert!(RecoveryKey::parse("UUUU-0000-0000-0000-0000-0000-0000").is_err());
        assert!(RecoveryKey::parse("0000").is_err());
        assert!(RecoveryKey::parse("ÄÄÄÄ-0000-0000-0000-0000-0000-0000").is_err());
    }

    #[test]
    fn costs_from_a_key_file_are_capped() {
        let kr = Keyring::new(Id::of_bytes(b"repo"), Params::default());
        let mut kf = KeyFile::seal(&kr, &Secret::Password(b"pw"), "p", cheap(), 0).unwrap();
        kf.kdf = KeyKind::Password {
            argon2id: Argon2Params {
                m_kib: u32::MAX,
                t: 1,
                p: 1,
            },
        };
        let e = kf
            .open("k", &Secret::Password(b"pw"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("caps"), "{e}");
        assert!(KeyFile::from_bytes("k", &vec![b' '; MAX_KEY_FILE + 1]).is_err());
        assert!(KeyFile::from_bytes("k", b"{}").is_err());
    }

    #[test]
    fn rotation_keeps_old_epochs_until_retired() {
        let mut kr = Keyring::new(Id::of_bytes(b"repo"), Params::default());
        let old = kr.current().enc.clone();
        assert_eq!(kr.rotate(), 1);
        assert_ne!(kr.current().enc, old);
        assert!(kr.epoch(0).is_some());
        assert!(kr.retire(1).is_err());
        kr.retire(0).unwrap();
        assert!(kr.epoch(0).is_none());
        assert!(format!("{kr:?}").contains("redacted"));
    }
}
