//! The TLV keybag (`BackupKeyBag` in `Manifest.plist`) and class-key unlocking.
//!
//! Layout: a flat run of `tag[4] | u32be length | value` records. The header
//! comes first; the second `UUID` (or a class-only tag) starts the first class
//! record, and every later `UUID` starts another. Unknown tags are kept and
//! written back, so a keybag we re-encode is byte-identical to what we read.

use std::collections::BTreeMap;
use std::fmt;

use crate::kdf::{KdfLimits, KdfParams};
use crate::wrap::{device_seal, device_unseal, unwrap_key, wrap_key, WRAPPED_LEN};
use crate::{DeviceKey, Error, Key256, Passkey, ProtectionClass, Result};

/// A four-character record tag.
pub type Tag = [u8; 4];

/// `WRAP` bit: sealed with the device key 0x835.
pub const WRAP_DEVICE: u32 = 1;
/// `WRAP` bit: wrapped with the password/passcode key.
pub const WRAP_PASSCODE: u32 = 2;

/// Keybag `TYPE` values (after masking the flag bits).
pub mod kind {
    /// A device's system keybag.
    pub const SYSTEM: u32 = 0;
    /// An iTunes/Finder backup keybag.
    pub const BACKUP: u32 = 1;
    /// An escrow keybag.
    pub const ESCROW: u32 = 2;
    /// An iCloud (OTA) backup keybag.
    pub const ICLOUD: u32 = 3;
}

/// One class-key record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassKeyRecord {
    /// `UUID` of the class key.
    pub uuid: Option<Vec<u8>>,
    /// `CLAS` as stored (may carry high bits).
    pub class_raw: u32,
    /// `WRAP`: bit 0 device key, bit 1 password key.
    pub wrap: u32,
    /// `KTYP`: 0 AES, 1 Curve25519.
    pub ktyp: Option<u32>,
    /// `WPKY`: the wrapped class key.
    pub wpky: Vec<u8>,
    /// `PBKY`: public key of an asymmetric class.
    pub pbky: Option<Vec<u8>>,
    /// Unknown tags, kept in order.
    pub extra: Vec<(Tag, Vec<u8>)>,
}

impl ClassKeyRecord {
    /// The protection class with high bits masked off.
    pub fn class(&self) -> ProtectionClass {
        ProtectionClass::masked(self.class_raw)
    }
}

/// A parsed keybag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keybag {
    /// `VERS`.
    pub version: Option<u32>,
    /// `TYPE` as stored (see [`Keybag::kind`]).
    pub type_raw: Option<u32>,
    /// The keybag `UUID` (16 bytes).
    pub uuid: Option<Vec<u8>>,
    /// `HMCK`.
    pub hmck: Option<Vec<u8>>,
    /// Keybag-level `WRAP`.
    pub wrap: Option<u32>,
    /// `SALT` (PBKDF2-SHA1 salt).
    pub salt: Option<Vec<u8>>,
    /// `ITER` (PBKDF2-SHA1 count).
    pub iter: Option<u32>,
    /// `DPWT`.
    pub dpwt: Option<u32>,
    /// `DPIC` (PBKDF2-SHA256 count).
    pub dpic: Option<u32>,
    /// `DPSL` (PBKDF2-SHA256 salt).
    pub dpsl: Option<Vec<u8>>,
    /// Unknown header tags, kept in order.
    pub extra: Vec<(Tag, Vec<u8>)>,
    /// Class-key records in file order.
    pub classes: Vec<ClassKeyRecord>,
}

fn tag_str(tag: &Tag) -> String {
    String::from_utf8_lossy(tag).into_owned()
}

fn be32(tag: &Tag, offset: usize, v: &[u8]) -> Result<u32> {
    let arr: [u8; 4] = v.try_into().map_err(|_| Error::KeybagBadLength {
        tag: tag_str(tag),
        offset,
        len: v.len(),
        expected: "4",
    })?;
    Ok(u32::from_be_bytes(arr))
}

fn exact(tag: &Tag, offset: usize, v: &[u8], n: usize, expected: &'static str) -> Result<Vec<u8>> {
    if v.len() != n {
        return Err(Error::KeybagBadLength {
            tag: tag_str(tag),
            offset,
            len: v.len(),
            expected,
        });
    }
    Ok(v.to_vec())
}

fn nonempty(tag: &Tag, offset: usize, v: &[u8]) -> Result<Vec<u8>> {
    if v.is_empty() || v.len() > 256 {
        return Err(Error::KeybagBadLength {
            tag: tag_str(tag),
            offset,
            len: v.len(),
            expected: "1 to 256",
        });
    }
    Ok(v.to_vec())
}

fn set_once<T>(slot: &mut Option<T>, value: T, tag: &Tag, offset: usize) -> Result<()> {
    if slot.is_some() {
        return Err(Error::KeybagBadLength {
            tag: tag_str(tag),
            offset,
            len: 0,
            expected: "a single occurrence per record (duplicate tag)",
        });
    }
    *slot = Some(value);
    Ok(())
}

/// A class record under construction.
#[derive(Default)]
struct PartialClass {
    offset: usize,
    uuid: Option<Vec<u8>>,
    class_raw: Option<u32>,
    wrap: Option<u32>,
    ktyp: Option<u32>,
    wpky: Option<Vec<u8>>,
    pbky: Option<Vec<u8>>,
    extra: Vec<(Tag, Vec<u8>)>,
}

impl PartialClass {
    fn finish(self) -> Result<ClassKeyRecord> {
        let at = |what| Error::KeybagBadLength {
            tag: what,
            offset: self.offset,
            len: 0,
            expected: "present in every class record",
        };
        let rec = ClassKeyRecord {
            uuid: self.uuid,
            class_raw: self.class_raw.ok_or_else(|| at("CLAS".into()))?,
            wrap: self.wrap.unwrap_or(0),
            ktyp: self.ktyp,
            wpky: self.wpky.ok_or_else(|| at("WPKY".into()))?,
            pbky: self.pbky,
            extra: self.extra,
        };
        // An AES class key is 32 bytes, 40 once RFC 3394-wrapped; a password-wrapped one
        // must be wrapped. (Asymmetric records are left to whoever opens them.)
        let n = rec.wpky.len();
        let wrapped_needed = rec.wrap & WRAP_PASSCODE != 0;
        if rec.ktyp.unwrap_or(0) == 0 && (n != 40 && (wrapped_needed || n != 32)) {
            return Err(Error::KeybagBadClass {
                offset: self.offset,
                class: rec.class().0,
                field: "WPKY",
                reason: format!(
                    "has {n} bytes; a class key is 40 bytes wrapped{}",
                    if wrapped_needed {
                        ""
                    } else {
                        " or 32 bytes bare"
                    }
                ),
            });
        }
        Ok(rec)
    }
}

impl Keybag {
    /// Parses a TLV keybag. Unknown tags are kept; malformed records are errors.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let mut kb = Keybag::default();
        let mut current: Option<PartialClass> = None;
        // Byte offset of each class record, for messages.
        let mut offsets = Vec::new();
        let mut off = 0usize;
        while off < data.len() {
            if data.len() - off < 8 {
                return Err(Error::KeybagTruncated {
                    offset: off,
                    needed: 8,
                    available: data.len() - off,
                });
            }
            let tag: Tag = data[off..off + 4].try_into().expect("4 bytes");
            if !tag.iter().all(|b| b.is_ascii_alphanumeric()) {
                return Err(Error::KeybagBadTag { offset: off, tag });
            }
            let len =
                u32::from_be_bytes(data[off + 4..off + 8].try_into().expect("4 bytes")) as usize;
            let start = off + 8;
            if data.len() - start < len {
                return Err(Error::KeybagTruncated {
                    offset: off,
                    needed: len + 8,
                    available: data.len() - off,
                });
            }
            let v = &data[start..start + len];
            let class_tag = matches!(&tag, b"CLAS" | b"KTYP" | b"WPKY" | b"PBKY");
            let new_class = (&tag == b"UUID" && (kb.uuid.is_some() || current.is_some()))
                || (class_tag && current.is_none());
            if new_class {
                if let Some(done) = current.take() {
                    offsets.push(done.offset);
                    kb.classes.push(done.finish()?);
                }
                current = Some(PartialClass {
                    offset: off,
                    ..Default::default()
                });
            }
            match current.as_mut() {
                Some(c) => match &tag {
                    b"UUID" => set_once(&mut c.uuid, exact(&tag, off, v, 16, "16")?, &tag, off)?,
                    b"CLAS" => set_once(&mut c.class_raw, be32(&tag, off, v)?, &tag, off)?,
                    b"WRAP" => set_once(&mut c.wrap, be32(&tag, off, v)?, &tag, off)?,
                    b"KTYP" => set_once(&mut c.ktyp, be32(&tag, off, v)?, &tag, off)?,
                    b"WPKY" => set_once(&mut c.wpky, nonempty(&tag, off, v)?, &tag, off)?,
                    b"PBKY" => set_once(&mut c.pbky, nonempty(&tag, off, v)?, &tag, off)?,
                    _ => c.extra.push((tag, v.to_vec())),
                },
                None => match &tag {
                    b"VERS" => set_once(&mut kb.version, be32(&tag, off, v)?, &tag, off)?,
                    b"TYPE" => set_once(&mut kb.type_raw, be32(&tag, off, v)?, &tag, off)?,
                    b"UUID" => set_once(&mut kb.uuid, exact(&tag, off, v, 16, "16")?, &tag, off)?,
                    b"HMCK" => set_once(&mut kb.hmck, v.to_vec(), &tag, off)?,
                    b"WRAP" => set_once(&mut kb.wrap, be32(&tag, off, v)?, &tag, off)?,
                    b"SALT" => set_once(&mut kb.salt, nonempty(&tag, off, v)?, &tag, off)?,
                    b"ITER" => set_once(&mut kb.iter, be32(&tag, off, v)?, &tag, off)?,
                    b"DPWT" => set_once(&mut kb.dpwt, be32(&tag, off, v)?, &tag, off)?,
                    b"DPIC" => set_once(&mut kb.dpic, be32(&tag, off, v)?, &tag, off)?,
                    b"DPSL" => set_once(&mut kb.dpsl, nonempty(&tag, off, v)?, &tag, off)?,
                    _ => kb.extra.push((tag, v.to_vec())),
                },
            }
            off = start + len;
        }
        if let Some(done) = current.take() {
            offsets.push(done.offset);
            kb.classes.push(done.finish()?);
        }
        for (i, rec) in kb.classes.iter().enumerate() {
            if let Some(first) = kb.classes[..i]
                .iter()
                .position(|r| r.class() == rec.class())
            {
                return Err(Error::KeybagBadClass {
                    offset: offsets[i],
                    class: rec.class().0,
                    field: "CLAS",
                    reason: format!(
                        "appears twice (first in the record at byte {}); which key is the class's is ambiguous",
                        offsets[first]
                    ),
                });
            }
        }
        if kb.uuid.is_none() && kb.classes.is_empty() {
            return Err(Error::KeybagMissing("records (empty keybag)"));
        }
        Ok(kb)
    }

    /// Encodes the keybag. Known tags are written in Apple's order, unknown ones after.
    pub fn to_bytes(&self) -> Vec<u8> {
        fn put(out: &mut Vec<u8>, tag: &[u8; 4], v: &[u8]) {
            out.extend_from_slice(tag);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        fn put32(out: &mut Vec<u8>, tag: &[u8; 4], v: Option<u32>) {
            if let Some(v) = v {
                put(out, tag, &v.to_be_bytes());
            }
        }
        fn putb(out: &mut Vec<u8>, tag: &[u8; 4], v: &Option<Vec<u8>>) {
            if let Some(v) = v {
                put(out, tag, v);
            }
        }
        let mut out = Vec::new();
        put32(&mut out, b"VERS", self.version);
        put32(&mut out, b"TYPE", self.type_raw);
        putb(&mut out, b"UUID", &self.uuid);
        putb(&mut out, b"HMCK", &self.hmck);
        put32(&mut out, b"WRAP", self.wrap);
        putb(&mut out, b"SALT", &self.salt);
        put32(&mut out, b"ITER", self.iter);
        put32(&mut out, b"DPWT", self.dpwt);
        put32(&mut out, b"DPIC", self.dpic);
        putb(&mut out, b"DPSL", &self.dpsl);
        for (t, v) in &self.extra {
            put(&mut out, t, v);
        }
        for c in &self.classes {
            putb(&mut out, b"UUID", &c.uuid);
            put(&mut out, b"CLAS", &c.class_raw.to_be_bytes());
            put(&mut out, b"WRAP", &c.wrap.to_be_bytes());
            put32(&mut out, b"KTYP", c.ktyp);
            put(&mut out, b"WPKY", &c.wpky);
            putb(&mut out, b"PBKY", &c.pbky);
            for (t, v) in &c.extra {
                put(&mut out, t, v);
            }
        }
        out
    }

    /// `TYPE` without its flag bits (see [`kind`]).
    pub fn kind(&self) -> Option<u32> {
        self.type_raw.map(|t| t & 0x3FFF_FFFF)
    }

    /// The keybag UUID as lowercase hyphenated text, as the keychain's `keybag-uuid`.
    pub fn uuid_string(&self) -> Option<String> {
        let u = self.uuid.as_ref()?;
        let h = hex::encode(u);
        Some(format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        ))
    }

    /// KDF parameters. The double KDF is chosen by the presence of `DPSL`/`DPIC`.
    pub fn kdf_params(&self) -> Result<KdfParams> {
        let salt = self.salt.clone().ok_or(Error::KeybagMissing("SALT"))?;
        let iter = self.iter.ok_or(Error::KeybagMissing("ITER"))?;
        let double = match (&self.dpsl, self.dpic) {
            (Some(s), Some(c)) => Some((s.clone(), c)),
            (None, None) => None,
            (Some(_), None) => return Err(Error::KeybagMissing("DPIC (DPSL is present)")),
            (None, Some(_)) => return Err(Error::KeybagMissing("DPSL (DPIC is present)")),
        };
        Ok(KdfParams { salt, iter, double })
    }

    /// Derives the passkey from a password, honouring `limits`.
    pub fn derive_passkey(&self, password: &[u8], limits: &KdfLimits) -> Result<Passkey> {
        self.kdf_params()?.derive(password, limits)
    }

    /// Unwraps every class key that `passkey` (and `device_key`, if given) can open.
    ///
    /// A wrong passkey is detected by the RFC 3394 integrity check of the first
    /// password-wrapped class. A wrong *device* key cannot be detected here (that
    /// layer has no integrity); it shows later as file or item keys that fail to unwrap.
    pub fn unlock(
        &self,
        passkey: &Passkey,
        device_key: Option<&DeviceKey>,
    ) -> Result<UnlockedKeybag> {
        let mut out = UnlockedKeybag::default();
        let mut verified = false;
        for rec in &self.classes {
            let class = rec.class();
            if rec.ktyp.unwrap_or(0) != 0 {
                out.sealed
                    .insert(class, Sealed::UnsupportedKeyType(rec.ktyp.unwrap_or(0)));
                continue;
            }
            let mut key = if rec.wrap & WRAP_PASSCODE != 0 {
                match unwrap_key(passkey, &rec.wpky) {
                    Ok(k) => {
                        verified = true;
                        k
                    }
                    Err(Error::UnwrapFailed) if !verified => return Err(Error::WrongPassword),
                    Err(e) => {
                        out.sealed.insert(class, Sealed::Damaged(e.to_string()));
                        continue;
                    }
                }
            } else if rec.wpky.len() == 32 {
                Key256::from_slice(&rec.wpky).expect("32 bytes")
            } else {
                out.sealed.insert(
                    class,
                    Sealed::Damaged(format!("WPKY of {} bytes", rec.wpky.len())),
                );
                continue;
            };
            if rec.wrap & WRAP_DEVICE != 0 {
                match device_key {
                    Some(dk) => key = device_unseal(dk, &key),
                    None => {
                        out.sealed.insert(class, Sealed::NeedsDeviceKey);
                        continue;
                    }
                }
            }
            out.keys.insert(class, key);
        }
        if !verified {
            return Err(Error::KeybagMissing(
                "password-wrapped class key (cannot check the password)",
            ));
        }
        Ok(out)
    }

    /// A fresh backup keybag for `password`, with Apple's WRAP pattern: classes
    /// 1–4 and 6–8 under the password (WRAP=2); 5 and 9–11 under the password and
    /// `device_key` (WRAP=3), so ThisDeviceOnly keys open only with that device.
    ///
    /// `dpic` is the PBKDF2-SHA256 count (Apple: 10,000,000). Returns the keybag
    /// and its unlocked keys (including the sealed classes, which the writer knows).
    pub fn new_backup(
        password: &[u8],
        device_key: &DeviceKey,
        dpic: u32,
    ) -> Result<(Keybag, UnlockedKeybag)> {
        Self::new_backup_with_passkey(password, device_key, dpic).map(|(kb, keys, _)| (kb, keys))
    }

    /// [`new_backup`](Self::new_backup), also returning the passkey the password derived to
    /// (one KDF run), so that a device can keep the keybag and reopen it later with
    /// [`unlock`](Self::unlock) without running the KDF again.
    pub fn new_backup_with_passkey(
        password: &[u8],
        device_key: &DeviceKey,
        dpic: u32,
    ) -> Result<(Keybag, UnlockedKeybag, Passkey)> {
        let (pending, unlocked) = Self::new_backup_pending(device_key, dpic);
        let passkey = pending.kdf_params().derive(password, &NO_LIMITS)?;
        Ok((pending.seal(&passkey), unlocked, passkey))
    }

    /// A fresh backup keybag (as [`new_backup`](Self::new_backup)) whose class keys exist
    /// before its password layer: the keys can encrypt files at once while the slow KDF of
    /// [`PendingBackupKeybag::kdf_params`] runs elsewhere, and
    /// [`PendingBackupKeybag::seal`] then wraps them under the passkey it derived.
    pub fn new_backup_pending(
        device_key: &DeviceKey,
        dpic: u32,
    ) -> (PendingBackupKeybag, UnlockedKeybag) {
        let mut kb = Keybag {
            version: Some(5),
            type_raw: Some(kind::BACKUP),
            uuid: Some(random_vec(16)),
            hmck: Some(vec![0; 40]),
            wrap: Some(0),
            salt: Some(random_vec(20)),
            iter: Some(10_000),
            dpwt: Some(1),
            dpic: Some(dpic),
            dpsl: Some(random_vec(20)),
            extra: Vec::new(),
            classes: Vec::new(),
        };
        // Apple's pattern: 5 and the ThisDeviceOnly keychain classes also need 0x835.
        let (unlocked, inner) =
            kb.add_fresh_class_keys(device_key, |c| c == 5 || (9..=11).contains(&c));
        (PendingBackupKeybag { kb, inner }, unlocked)
    }
}

/// No caps: for KDF parameters this code chose itself.
const NO_LIMITS: KdfLimits = KdfLimits {
    max_dpic: u32::MAX,
    max_iter: u32::MAX,
};

/// A new backup keybag waiting for its password layer (see
/// [`Keybag::new_backup_pending`]). Holds the class keys' password-layer plaintexts, wiped
/// on drop.
pub struct PendingBackupKeybag {
    kb: Keybag,
    /// What the password layer wraps, per class record (device-sealed for `WRAP=3`).
    inner: Vec<Key256>,
}

impl fmt::Debug for PendingBackupKeybag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingBackupKeybag")
            .field("uuid", &self.kb.uuid_string())
            .finish_non_exhaustive()
    }
}

impl PendingBackupKeybag {
    /// The KDF the password must go through (fresh `SALT` and `DPSL`, the chosen `DPIC`).
    pub fn kdf_params(&self) -> KdfParams {
        self.kb
            .kdf_params()
            .expect("a pending backup keybag has SALT, ITER, DPSL and DPIC")
    }

    /// The keybag UUID (lowercase, hyphenated), final already.
    pub fn uuid_string(&self) -> Option<String> {
        self.kb.uuid_string()
    }

    /// The finished keybag: every class key wrapped under `passkey` (RFC 3394).
    pub fn seal(self, passkey: &Passkey) -> Keybag {
        let mut kb = self.kb.clone();
        kb.seal_password_layer(passkey, &self.inner);
        kb
    }
}

impl Keybag {
    /// A keybag for an *unencrypted* backup, shaped like the device-made ones
    /// (spec §3.4): no `DPSL`/`DPIC`, classes 1–4 WRAP=2 and 5–11 WRAP=3. Its
    /// password layer uses a random key that is thrown away, so nothing in an
    /// unencrypted backup's keychain can be opened off-device (as on iOS).
    pub fn new_unencrypted_backup(device_key: &DeviceKey) -> Keybag {
        Self::new_unencrypted_backup_keyed(&Passkey::random(), device_key).0
    }

    /// [`new_unencrypted_backup`](Self::new_unencrypted_backup) with a chosen password-layer
    /// key instead of a throwaway one, returning the class keys too. A virtual device uses it
    /// with a key it re-derives from its own UID, so that it (and only it: classes 5–11 also
    /// need `device_key`) can open its unencrypted backups' keychain again, as iOS can.
    pub fn new_unencrypted_backup_keyed(
        passkey: &Passkey,
        device_key: &DeviceKey,
    ) -> (Keybag, UnlockedKeybag) {
        let mut kb = Keybag {
            version: Some(5),
            type_raw: Some(kind::BACKUP),
            uuid: Some(random_vec(16)),
            hmck: Some(vec![0; 40]),
            wrap: Some(0),
            salt: Some(random_vec(20)),
            iter: Some(10_000),
            ..Default::default()
        };
        // Unencrypted backups: every class from 5 on is sealed to the device (spec §3.4).
        let (unlocked, inner) = kb.add_fresh_class_keys(device_key, |c| c >= 5);
        kb.seal_password_layer(passkey, &inner);
        (kb, unlocked)
    }
}

impl Keybag {
    /// Appends random class keys 1–11 with `WRAP=2` or, for the classes `device_bound`
    /// selects, `WRAP=3` (first sealed with `device_key`). Their password layer is left
    /// empty for [`seal_password_layer`](Self::seal_password_layer); returns the class keys
    /// and, per record, what that layer must wrap.
    fn add_fresh_class_keys(
        &mut self,
        device_key: &DeviceKey,
        device_bound: impl Fn(u32) -> bool,
    ) -> (UnlockedKeybag, Vec<Key256>) {
        let mut unlocked = UnlockedKeybag::default();
        let mut inners = Vec::with_capacity(11);
        for class in 1..=11u32 {
            let key = Key256::random();
            let (wrap, inner) = if device_bound(class) {
                (WRAP_DEVICE | WRAP_PASSCODE, device_seal(device_key, &key))
            } else {
                (WRAP_PASSCODE, key.clone())
            };
            self.classes.push(ClassKeyRecord {
                uuid: Some(random_vec(16)),
                class_raw: class,
                wrap,
                ktyp: Some(0),
                wpky: Vec::new(),
                pbky: None,
                extra: Vec::new(),
            });
            inners.push(inner);
            unlocked.keys.insert(ProtectionClass(class), key);
        }
        (unlocked, inners)
    }

    /// Wraps `inner[i]` under `passkey` into the `WPKY` of class record `i`.
    fn seal_password_layer(&mut self, passkey: &Passkey, inner: &[Key256]) {
        for (rec, key) in self.classes.iter_mut().zip(inner) {
            rec.wpky = wrap_key(passkey, key).to_vec();
        }
    }
}

/// Length of the fresh `SALT` and `DPSL` that [`Keybag::rewrap`] writes (Apple's).
pub const SALT_LEN: usize = 20;

impl Keybag {
    /// A copy of this keybag for a new password: fresh random `SALT` (and `DPSL`
    /// when present, i.e. the double KDF is kept or not as it was), `ITER` and
    /// `DPIC` unchanged, and every password-wrapped (`WRAP` bit 1) class key
    /// re-wrapped under the new passkey. Everything else is kept byte for byte:
    /// UUIDs, classes, `WRAP`, `KTYP`, `HMCK`, unknown tags. The class keys
    /// themselves do not change, so `ManifestKey` and every file key stay valid.
    ///
    /// For `WRAP=3` classes only the password layer is replaced: what it wraps
    /// is the device-sealed key, which is carried over without the device key.
    ///
    /// `old` is checked first (a wrong one gives [`Error::WrongPassword`] before
    /// the slow derivation); `limits` applies to the kept `ITER`/`DPIC`.
    /// Returns the new keybag and the new passkey (so callers can verify it
    /// without a second KDF run).
    pub fn rewrap(
        &self,
        old: &Passkey,
        new_password: &[u8],
        limits: &KdfLimits,
    ) -> Result<(Keybag, Passkey)> {
        self.kdf_params()?.check(limits)?;
        let inner = self.unwrap_password_layer(old)?;
        let mut kb = self.clone();
        kb.salt = Some(random_vec(SALT_LEN));
        if kb.dpsl.is_some() {
            kb.dpsl = Some(random_vec(SALT_LEN));
        }
        let passkey = kb.derive_passkey(new_password, limits)?;
        for (rec, key) in kb.classes.iter_mut().zip(&inner) {
            if let Some(key) = key {
                rec.wpky = wrap_key(&passkey, key).to_vec();
            }
        }
        Ok((kb, passkey))
    }

    /// The password layer of every class, in record order: `Some(inner key)`
    /// for `WRAP` bit 1 records (for `WRAP=3` the still device-sealed key),
    /// `None` for the others. Any failure is an error: the first
    /// password-wrapped record failing means a wrong passkey.
    pub fn unwrap_password_layer(&self, passkey: &Passkey) -> Result<Vec<Option<Key256>>> {
        let mut verified = false;
        let mut out = Vec::with_capacity(self.classes.len());
        for rec in &self.classes {
            if rec.wrap & WRAP_PASSCODE == 0 {
                out.push(None);
                continue;
            }
            match unwrap_key(passkey, &rec.wpky) {
                Ok(k) => {
                    verified = true;
                    out.push(Some(k));
                }
                Err(Error::UnwrapFailed) if !verified => return Err(Error::WrongPassword),
                Err(e) => return Err(e),
            }
        }
        if !verified {
            return Err(Error::KeybagMissing(
                "password-wrapped class key (cannot check the password)",
            ));
        }
        Ok(out)
    }
}

fn random_vec(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut v);
    v
}

/// Why a class key is not available.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sealed {
    /// Wrapped with the device key 0x835, which was not supplied.
    NeedsDeviceKey,
    /// An asymmetric or unknown key type.
    UnsupportedKeyType(u32),
    /// The record does not unwrap although the password is right.
    Damaged(String),
}

/// Class keys recovered from a keybag.
#[derive(Default)]
pub struct UnlockedKeybag {
    keys: BTreeMap<ProtectionClass, Key256>,
    sealed: BTreeMap<ProtectionClass, Sealed>,
}

impl std::fmt::Debug for UnlockedKeybag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnlockedKeybag")
            .field("available", &self.keys.keys().collect::<Vec<_>>())
            .field("sealed", &self.sealed)
            .finish()
    }
}

/// Length of a persistent wrapped key: `u32le class` + 40-byte KW blob.
pub const PERSISTENT_KEY_LEN: usize = 4 + WRAPPED_LEN;

impl UnlockedKeybag {
    /// The key of `class`, or why it is unavailable.
    pub fn key(&self, class: ProtectionClass) -> Result<&Key256> {
        if let Some(k) = self.keys.get(&class) {
            return Ok(k);
        }
        match self.sealed.get(&class) {
            Some(Sealed::NeedsDeviceKey) => Err(Error::NeedsDeviceKey(class)),
            Some(Sealed::UnsupportedKeyType(k)) => {
                Err(Error::UnsupportedKeyType { class, ktyp: *k })
            }
            Some(Sealed::Damaged(_)) => Err(Error::UnwrapFailed),
            None => Err(Error::NoClassKey(class)),
        }
    }

    /// Classes whose keys are available.
    pub fn available(&self) -> impl Iterator<Item = ProtectionClass> + '_ {
        self.keys.keys().copied()
    }

    /// Classes whose keys are not available, with the reason.
    pub fn sealed(&self) -> impl Iterator<Item = (ProtectionClass, &Sealed)> + '_ {
        self.sealed.iter().map(|(c, s)| (*c, s))
    }

    /// Unwraps a persistent key (`u32le class ‖ KW(classkey, key)`, 44 bytes),
    /// as stored in MBFile `EncryptionKey` and `ManifestKey`.
    pub fn unwrap_persistent(&self, data: &[u8]) -> Result<Key256> {
        if data.len() != PERSISTENT_KEY_LEN {
            return Err(Error::WrappedKeyLength(data.len().saturating_sub(4)));
        }
        let class =
            ProtectionClass::masked(u32::from_le_bytes(data[..4].try_into().expect("4 bytes")));
        unwrap_key(self.key(class)?, &data[4..])
    }

    /// Wraps `key` under `class` as a 44-byte persistent key.
    pub fn wrap_persistent(
        &self,
        class: ProtectionClass,
        key: &Key256,
    ) -> Result<[u8; PERSISTENT_KEY_LEN]> {
        let mut out = [0u8; PERSISTENT_KEY_LEN];
        out[..4].copy_from_slice(&class.0.to_le_bytes());
        out[4..].copy_from_slice(&wrap_key(self.key(class)?, key));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tag: &[u8; 4], v: &[u8]) -> Vec<u8> {
        let mut o = tag.to_vec();
        o.extend_from_slice(&(v.len() as u32).to_be_bytes());
        o.extend_from_slice(v);
        o
    }

    /// The synthetic bag of spec §13 vector 2: zero salts, every class key zero.
    fn spec_bag(passkey: &Passkey) -> Vec<u8> {
        let zero = Key256::from_bytes([0; 32]);
        let mut b = [
            rec(b"VERS", &5u32.to_be_bytes()),
            rec(b"TYPE", &1u32.to_be_bytes()),
            rec(b"UUID", &[1; 16]),
            rec(b"HMCK", &[0; 40]),
            rec(b"WRAP", &0u32.to_be_bytes()),
            rec(b"SALT", &[0; 20]),
            rec(b"ITER", &10_000u32.to_be_bytes()),
            rec(b"DPWT", &1u32.to_be_bytes()),
            rec(b"DPIC", &10_000_000u32.to_be_bytes()),
            rec(b"DPSL", &[0; 20]),
        ]
        .concat();
        for class in 1..=4u32 {
            b.extend(rec(b"UUID", &[class as u8; 16]));
            b.extend(rec(b"CLAS", &class.to_be_bytes()));
            b.extend(rec(b"WRAP", &2u32.to_be_bytes()));
            b.extend(rec(b"KTYP", &0u32.to_be_bytes()));
            b.extend(rec(b"WPKY", &wrap_key(passkey, &zero)));
        }
        b
    }

    // Spec §13 vector 2: password "0000", zero salts, DPIC 10M, ITER 10k.
    #[test]
    fn spec_vector_kdf_and_unwrap() {
        let params = KdfParams {
            salt: vec![0; 20],
            iter: 10_000,
            double: Some((vec![0; 20], 10_000_000)),
        };
        let passkey = params.derive(b"0000", &KdfLimits::default()).unwrap();
        assert_eq!(
            passkey.to_hex(),
            "ec8edc160b5745ccae000bfb4787630f322821191fba7eea38feab2c6307cd9b"
        );
        let kb = Keybag::parse(&spec_bag(&passkey)).unwrap();
        assert_eq!(kb.kdf_params().unwrap(), params);
        let unlocked = kb.unlock(&passkey, None).unwrap();
        let mk = hex::decode("0200000097317494343807e690fd1e431413963dc0e3deb4907fb89fa36ce65126d0ea1301381fb3a2941e2f").unwrap();
        let dbkey = unlocked.unwrap_persistent(&mk).unwrap();
        assert_eq!(dbkey.as_bytes(), &[0u8; 32]);
    }

    #[test]
    fn parse_round_trip_and_unknown_tags() {
        let pk = Passkey::from_bytes([7; 32]);
        let mut raw = spec_bag(&pk);
        raw.extend(rec(b"ZZZZ", b"kept"));
        let kb = Keybag::parse(&raw).unwrap();
        assert_eq!(kb.classes.len(), 4);
        assert_eq!(kb.classes[3].extra, vec![(*b"ZZZZ", b"kept".to_vec())]);
        assert_eq!(kb.to_bytes(), raw);
        assert_eq!(
            kb.uuid_string().unwrap(),
            "01010101-0101-0101-0101-010101010101"
        );
        assert_eq!(kb.kind(), Some(kind::BACKUP));
    }

    #[test]
    fn masks_type_and_class_bits() {
        let raw = [
            rec(b"VERS", &4u32.to_be_bytes()),
            rec(b"TYPE", &0x4000_0001u32.to_be_bytes()),
            rec(b"UUID", &[1; 16]),
            rec(b"UUID", &[2; 16]),
            rec(b"CLAS", &0x20u32.wrapping_add(3).to_be_bytes()),
            rec(b"WPKY", &[0; 40]),
        ]
        .concat();
        let kb = Keybag::parse(&raw).unwrap();
        assert_eq!(kb.kind(), Some(kind::BACKUP));
        assert_eq!(kb.classes[0].class(), ProtectionClass(3));
    }

    #[test]
    fn wrong_password_detected() {
        let pk = Passkey::from_bytes([7; 32]);
        let kb = Keybag::parse(&spec_bag(&pk)).unwrap();
        assert!(matches!(
            kb.unlock(&Passkey::from_bytes([8; 32]), None),
            Err(Error::WrongPassword)
        ));
    }

    #[test]
    fn bad_input_is_rejected_with_clear_errors() {
        let pk = Passkey::from_bytes([7; 32]);
        let good = spec_bag(&pk);
        // Truncated mid-record.
        let e = Keybag::parse(&good[..good.len() - 3]).unwrap_err();
        assert!(matches!(e, Error::KeybagTruncated { .. }), "{e}");
        // Length field pointing past the end.
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Keybag::parse(&bad),
            Err(Error::KeybagTruncated { .. })
        ));
        // Non-ASCII tag.
        let mut bad = good.clone();
        bad[0] = 0xff;
        let e = Keybag::parse(&bad).unwrap_err();
        assert!(matches!(e, Error::KeybagBadTag { offset: 0, .. }), "{e}");
        // Known tag with the wrong length.
        let e = Keybag::parse(&rec(b"VERS", &[0; 3])).unwrap_err();
        assert!(e.to_string().contains("VERS"), "{e}");
        // Trailing bytes shorter than a header.
        let mut bad = good.clone();
        bad.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            Keybag::parse(&bad),
            Err(Error::KeybagTruncated { .. })
        ));
        // Class record without WPKY; duplicate tags; empty input.
        let bad = [
            rec(b"UUID", &[1; 16]),
            rec(b"UUID", &[2; 16]),
            rec(b"CLAS", &[0, 0, 0, 1]),
        ]
        .concat();
        assert!(Keybag::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("WPKY"));
        let bad = [rec(b"VERS", &[0, 0, 0, 1]), rec(b"VERS", &[0, 0, 0, 1])].concat();
        assert!(Keybag::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
        assert!(matches!(Keybag::parse(&[]), Err(Error::KeybagMissing(_))));
        // A class given twice, and a WPKY of 41 bytes: format errors naming the field.
        let class = |c: u32, wpky: &[u8]| {
            [
                rec(b"UUID", &[c as u8; 16]),
                rec(b"CLAS", &c.to_be_bytes()),
                rec(b"WRAP", &2u32.to_be_bytes()),
                rec(b"KTYP", &0u32.to_be_bytes()),
                rec(b"WPKY", wpky),
            ]
            .concat()
        };
        let head = [rec(b"VERS", &[0, 0, 0, 3]), rec(b"UUID", &[9; 16])].concat();
        let twice = [head.clone(), class(3, &[1; 40]), class(3 | 0x20, &[2; 40])].concat();
        let e = Keybag::parse(&twice).unwrap_err();
        assert!(
            matches!(
                e,
                Error::KeybagBadClass {
                    class: 3,
                    field: "CLAS",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("appears twice"), "{e}");
        let long = [head.clone(), class(1, &[1; 40]), class(2, &[2; 41])].concat();
        let e = Keybag::parse(&long).unwrap_err();
        assert!(
            matches!(
                e,
                Error::KeybagBadClass {
                    class: 2,
                    field: "WPKY",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("41 bytes"), "{e}");
        // A bare (unwrapped) key is 32 bytes; only password-wrapped ones must be 40.
        let mut bare = class(4, &[4; 32]);
        let at = bare.windows(4).position(|w| w == b"WRAP").unwrap();
        bare[at + 8..at + 12].copy_from_slice(&0u32.to_be_bytes());
        assert!(Keybag::parse(&[head.clone(), bare].concat()).is_ok());
        // Huge DPIC is refused before any work.
        let mut kb = Keybag::parse(&good).unwrap();
        kb.dpic = Some(4_000_000_000);
        assert!(matches!(
            kb.derive_passkey(b"x", &KdfLimits::default()),
            Err(Error::KdfTooExpensive { .. })
        ));
        kb.dpsl = None;
        assert!(matches!(kb.kdf_params(), Err(Error::KeybagMissing(_))));
    }

    #[test]
    fn new_backup_keybag_unlocks_with_wrap_pattern() {
        let dk = DeviceKey::random();
        let (kb, keys) = Keybag::new_backup(b"pw", &dk, 1000).unwrap();
        let parsed = Keybag::parse(&kb.to_bytes()).unwrap();
        assert_eq!(parsed, kb);
        let wraps: Vec<u32> = kb.classes.iter().map(|c| c.wrap).collect();
        assert_eq!(wraps, vec![2, 2, 2, 2, 3, 2, 2, 2, 3, 3, 3]);
        let pk = kb.derive_passkey(b"pw", &KdfLimits::default()).unwrap();
        let without = kb.unlock(&pk, None).unwrap();
        assert!(matches!(
            without.key(ProtectionClass(9)),
            Err(Error::NeedsDeviceKey(_))
        ));
        assert_eq!(
            without.key(ProtectionClass(6)).unwrap(),
            keys.key(ProtectionClass(6)).unwrap()
        );
        let with = kb.unlock(&pk, Some(&dk)).unwrap();
        for c in 1..=11 {
            assert_eq!(
                with.key(ProtectionClass(c)).unwrap(),
                keys.key(ProtectionClass(c)).unwrap()
            );
        }
        let fk = Key256::random();
        let p = with.wrap_persistent(ProtectionClass(3), &fk).unwrap();
        assert_eq!(&p[..4], &3u32.to_le_bytes());
        assert_eq!(without.unwrap_persistent(&p).unwrap(), fk);
        assert!(matches!(
            with.key(ProtectionClass(12)),
            Err(Error::NoClassKey(_))
        ));
    }

    #[test]
    fn pending_keybag_seals_to_the_keys_it_handed_out() {
        let dk = DeviceKey::random();
        let (pending, keys) = Keybag::new_backup_pending(&dk, 1000);
        let params = pending.kdf_params();
        assert_eq!(params.iter, 10_000);
        assert_eq!(
            params.double.as_ref().map(|(s, c)| (s.len(), *c)),
            Some((20, 1000))
        );
        let uuid = pending.uuid_string();
        // A file key wrapped before the password layer exists opens afterwards.
        let fk = Key256::random();
        let wrapped = keys.wrap_persistent(ProtectionClass(1), &fk).unwrap();
        let pk = params.derive(b"pw", &KdfLimits::default()).unwrap();
        let kb = pending.seal(&pk);
        assert_eq!(kb.uuid_string(), uuid);
        assert_eq!(Keybag::parse(&kb.to_bytes()).unwrap(), kb);
        let wraps: Vec<u32> = kb.classes.iter().map(|c| c.wrap).collect();
        assert_eq!(wraps, vec![2, 2, 2, 2, 3, 2, 2, 2, 3, 3, 3]);
        // The password opens it (through the keybag's own KDF parameters), with the device
        // key every class, and the keys are the ones handed out before sealing.
        let again = kb.derive_passkey(b"pw", &KdfLimits::default()).unwrap();
        let with = kb.unlock(&again, Some(&dk)).unwrap();
        for c in 1..=11 {
            let c = ProtectionClass(c);
            assert_eq!(with.key(c).unwrap(), keys.key(c).unwrap());
        }
        assert_eq!(with.unwrap_persistent(&wrapped).unwrap(), fk);
        let wrong = kb.derive_passkey(b"pW", &KdfLimits::default()).unwrap();
        assert!(matches!(kb.unlock(&wrong, None), Err(Error::WrongPassword)));
    }

    #[test]
    fn rewrap_keeps_class_keys_and_everything_but_salts_and_wpky() {
        let dk = DeviceKey::random();
        let (mut kb, keys) = Keybag::new_backup(b"old", &dk, 1000).unwrap();
        kb.extra.push((*b"ZZZZ", b"header".to_vec()));
        kb.classes[3].extra.push((*b"QQQQ", b"class".to_vec()));
        // A device-only record (WRAP=1) has no password layer and is left alone.
        kb.classes.push(ClassKeyRecord {
            uuid: Some(vec![9; 16]),
            class_raw: 12,
            wrap: WRAP_DEVICE,
            ktyp: Some(0),
            wpky: vec![5; 32],
            pbky: None,
            extra: Vec::new(),
        });
        let limits = KdfLimits::default();
        let old = kb.derive_passkey(b"old", &limits).unwrap();
        let (new_kb, new_pk) = kb.rewrap(&old, b"new", &limits).unwrap();
        assert_eq!(new_pk, new_kb.derive_passkey(b"new", &limits).unwrap());
        assert_eq!(Keybag::parse(&new_kb.to_bytes()).unwrap(), new_kb);
        // Fresh salts, same counts; every other header field identical.
        assert_ne!(new_kb.salt, kb.salt);
        assert_ne!(new_kb.dpsl, kb.dpsl);
        assert_eq!(new_kb.salt.as_ref().unwrap().len(), SALT_LEN);
        assert_eq!(new_kb.dpsl.as_ref().unwrap().len(), SALT_LEN);
        let mut same = new_kb.clone();
        same.salt.clone_from(&kb.salt);
        same.dpsl.clone_from(&kb.dpsl);
        for (a, b) in same.classes.iter_mut().zip(&kb.classes) {
            if a.wrap & WRAP_PASSCODE != 0 {
                assert_ne!(a.wpky, b.wpky);
                a.wpky.clone_from(&b.wpky);
            }
        }
        assert_eq!(
            same, kb,
            "only SALT, DPSL and password-wrapped WPKYs change"
        );
        assert_eq!(new_kb.classes[11].wpky, vec![5; 32]);
        // Same class keys (device-sealed ones too), old passkey refused.
        let unlocked = new_kb.unlock(&new_pk, Some(&dk)).unwrap();
        for c in 1..=11 {
            let c = ProtectionClass(c);
            assert_eq!(unlocked.key(c).unwrap(), keys.key(c).unwrap());
        }
        assert!(matches!(
            new_kb.unlock(&old, None),
            Err(Error::WrongPassword)
        ));
        assert!(matches!(
            new_kb.rewrap(&old, b"x", &limits),
            Err(Error::WrongPassword)
        ));
    }

    #[test]
    fn rewrap_legacy_limits_and_damage() {
        // Legacy single KDF: no DPSL appears.
        let pk = Passkey::from_bytes([7; 32]);
        let mut legacy = Keybag::parse(&spec_bag(&pk)).unwrap();
        legacy.dpic = None;
        legacy.dpsl = None;
        legacy.iter = Some(100);
        let (kb, new_pk) = legacy.rewrap(&pk, b"pw", &KdfLimits::default()).unwrap();
        assert!(kb.dpsl.is_none() && kb.dpic.is_none());
        assert_eq!(kb.iter, Some(100));
        assert_eq!(
            new_pk,
            KdfParams {
                salt: kb.salt.clone().unwrap(),
                iter: 100,
                double: None
            }
            .derive(b"pw", &KdfLimits::default())
            .unwrap()
        );
        // Counts beyond the caps are refused before any work.
        let mut big = legacy.clone();
        big.iter = Some(u32::MAX);
        assert!(matches!(
            big.rewrap(&pk, b"pw", &KdfLimits::default()),
            Err(Error::KdfTooExpensive { .. })
        ));
        // A damaged later class is an error, not a silent skip.
        let mut damaged = legacy.clone();
        damaged.classes[2].wpky[5] ^= 1;
        assert!(matches!(
            damaged.rewrap(&pk, b"pw", &KdfLimits::default()),
            Err(Error::UnwrapFailed)
        ));
        // A wrong old passkey fails before deriving anything.
        assert!(matches!(
            legacy.rewrap(&Passkey::from_bytes([8; 32]), b"pw", &KdfLimits::default()),
            Err(Error::WrongPassword)
        ));
    }

    #[test]
    fn unencrypted_backup_keybag_shape() {
        let kb = Keybag::new_unencrypted_backup(&DeviceKey::random());
        assert!(kb.dpic.is_none() && kb.dpsl.is_none());
        let wraps: Vec<u32> = kb.classes.iter().map(|c| c.wrap).collect();
        assert_eq!(wraps, vec![2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3]);
        assert_eq!(Keybag::parse(&kb.to_bytes()).unwrap(), kb);
    }

    #[test]
    fn keyed_unencrypted_keybag_opens_only_with_both_keys() {
        let pk = Passkey::from_bytes([7; 32]);
        let dk = DeviceKey::random();
        let (kb, made) = Keybag::new_unencrypted_backup_keyed(&pk, &dk);
        let kb = Keybag::parse(&kb.to_bytes()).unwrap();
        let open = kb.unlock(&pk, Some(&dk)).unwrap();
        for c in 1..=11 {
            let c = ProtectionClass(c);
            assert_eq!(open.key(c).unwrap(), made.key(c).unwrap());
        }
        // Another device: the password layer opens (same passkey) but 5-11 come out wrong.
        let other = kb.unlock(&pk, Some(&DeviceKey::random())).unwrap();
        assert_ne!(
            other.key(ProtectionClass(9)).unwrap(),
            made.key(ProtectionClass(9)).unwrap()
        );
        assert!(matches!(
            kb.unlock(&Passkey::from_bytes([8; 32]), Some(&dk)),
            Err(Error::WrongPassword)
        ));
    }
}
