#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! An emulated iPhone: a folder that stands in for the Secure Enclave and the flash.
//!
//! # Folder layout
//!
//! | file | what | secret? |
//! |---|---|---|
//! | `device.json` | name, UDID, model, iOS version, the calibrated passcode iteration count, the failed-attempt counter and `locked_out_until`, `wipe_after_10` | no; holds nothing derived from the passcode |
//! | `secure/uid.key` | the 32-byte UID (mode 0600, folder 0700). The only place it lives; no command prints or exports it, only [`Device::device_key`] (0x835) leaves | yes |
//! | `secure/locker` | 32 random bytes, the `BAG1`-style effaceable locker: with the UID it keys the keybag signature; replaced at every passcode change (so an old keybag copy no longer verifies) and destroyed by a wipe | yes |
//! | `secure/systembag.kb` | `DATA` (the system keybag TLV: `VERS` 4, `TYPE` 0, `UUID`, `WRAP`, `SALT`, `ITER`, class records) then `SIGN` (HMAC-SHA256) | class keys wrapped |
//! | `secure/backup-keybag` | only once a backup was made with a password ("encrypt local backup" on): `KBBK`, version 1, the password's 32-byte passkey RFC 3394-wrapped (40 bytes) under a UID-derived key, then the backup keybag TLV. Like iOS, which keeps the backup password on the phone (device-bound, as a ThisDeviceOnly item: a copied folder with another UID cannot open it), later backups reuse this keybag without asking for the password or running its KDF ([`backup::backup_with_device_setting`]); a backup with another password replaces it | passkey wrapped |
//! | `run/session` | the class keys the SEP holds in RAM after first unlock, AES-GCM under a UID-derived key. A real SEP never writes these out; the file only exists so separate CLI invocations share a boot. `lock` rewrites it without A, B-private, ak, aku, akpu; `restart` deletes it | yes |
//! | `store.db`, `store/xx/<id>` | SQLite index of files (domain, path, kind, mode, owner, times, class, wrapped file key, exclude flag, blob id, size) and the encrypted blobs; a `changes` row holds a random token that triggers renew on every change (as in `keychain.db`) | contents encrypted |
//! | `backup-state.json` | after a backup: its folder, the SHA-256 of its four top-level files, the change tokens, identity and lock state then, the keybag UUID; a backup of the unchanged device into the same folder then only refreshes its dates | no |
//! | `keychain.db` | SQLite: `rowid`, `tbl`, `class`, wrapped item key, AES-GCM of the item's DER attribute dictionary | attributes encrypted |
//!
//! # Keys
//!
//! * UID-derived keys: key 0x835 = AES-256-ECB(UID, 16 × 0x01), as IDP computes it; the
//!   others are labelled HMAC-SHA256(UID, label) (the spec's advice in §1.2): the KEK of
//!   `WRAP=1` class keys, the passcode tangle key, the keybag signing key, the session key,
//!   the KEK of the kept backup password's passkey.
//! * Passcode key = HMAC-SHA256(tangle key, PBKDF2-HMAC-SHA256(passcode, SALT, ITER)). The
//!   UID makes it device-bound (a copied folder with another UID fails with the right
//!   passcode); `ITER` is calibrated at init to ≈80 ms per guess ([`calibrate_iterations`])
//!   and stored in the signed keybag. **No passcode verifier is stored**: the only check is
//!   the RFC 3394 integrity check of class keys wrapped `WRAP=3` under that key.
//! * Class keys: A 1, B 2 (X25519; `PBKY` public, private key wrapped), C 3, D 4, keychain
//!   6–12. With a passcode: D, dk, dku are `WRAP=1` (UID only) and every other class is
//!   `WRAP=3` (UID-tangled passcode key); akpu (12) exists only then. Without a passcode
//!   everything is `WRAP=1`, so the device is unlocked from boot and `lock` changes nothing.
//! * Files: a random 256-bit key per file, AES-256-CBC (zero IV, PKCS7: the same blob
//!   format as a backup), streamed in 1 MiB chunks. A, C, D: the file key is RFC 3394
//!   wrapped by the class key (40 bytes). B: `ephPub(32) ‖ RFC3394(SHA-256(00000001 ‖
//!   X25519(eph, classPub) ‖ ephPub ‖ classPub), fileKey)` (72 bytes), so a locked device
//!   can create class-B files but only an unlocked one can reopen them. An [`OpenFile`]
//!   keeps its unwrapped key, so an open class-B file stays readable after `lock`.
//! * Keychain: per-item random key wrapped by the class key; the whole attribute
//!   dictionary (DER, including `agrp` and `v_Data`) is AES-256-GCM encrypted with a random
//!   12-byte IV and `table ‖ class` as AAD. Only `rowid`, table and class are plaintext, so
//!   a locked device can count items but not list their access groups.
//!
//! # Lock states and attempts
//!
//! `BeforeFirstUnlock` (no session: D, dk, dku), `Unlocked` (everything), `Locked` (C, ck,
//! cku, D, dk, dku, and the B public key). Failed unlocks increase `failed_attempts` in
//! `device.json`; from the 5th the next attempt is refused until `locked_out_until`
//! (1 min, 5 min, 15 min, 15 min, 1 h…, as iOS) with [`Error::TryAgainLater`]; the clock
//! is injectable ([`Device::set_clock`]) so tests never sleep. With `wipe_after_10` the 10th
//! failure deletes `secure/` (UID, locker, keybag) and `run/`: every blob stays on disk and
//! is unreadable. Repeating the same wrong passcode counts once only within one [`Device`]
//! value (the last wrong key is kept in memory, never on disk: storing anything derived
//! from a wrong guess would be a verifier).

pub mod backup;
mod bag;
mod batch;
mod cloudbag;
mod device;
mod error;
pub mod import;
mod keychain;
mod meta;
pub mod restore;
mod sep;
mod shape;
mod staging;
mod store;

use std::collections::BTreeMap;
use std::fmt;

pub use dataprotection::ProtectionClass;
pub use mobilebackup::keychain::DerValue;
use zeroize::Zeroizing;

pub use bag::split_envelope;
pub use batch::{OpenContent, PutItem};
pub use cloudbag::{
    CloudEnabled, CloudExport, CloudFile, CloudItem, FILE_CLASSES, KEYCHAIN_CLASSES,
};
pub use device::Device;
pub use error::{Error, Result};
pub use sep::calibrate_iterations;
pub use store::OpenFile;

/// Options of [`Device::init`].
#[derive(Default)]
pub struct InitOptions {
    /// Device name (`--name`).
    pub name: String,
    /// The passcode, if any.
    pub passcode: Option<Zeroizing<Vec<u8>>>,
    /// Product type, default `iPhone13,2`.
    pub model: Option<String>,
    /// iOS version, default `17.5`.
    pub ios_version: Option<String>,
    /// PBKDF2 iterations of the passcode KDF; `None` calibrates to ≈80 ms (tests pass a small count).
    pub passcode_iterations: Option<u32>,
    /// Wipe the device on the 10th consecutive failed passcode attempt.
    pub wipe_after_10: bool,
}

/// Lock state of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockState {
    /// After boot, before the passcode was entered once: only D, dk, dku.
    BeforeFirstUnlock,
    /// Unlocked: every class.
    Unlocked,
    /// Locked after a first unlock: C, ck, cku, D, dk, dku (and the class-B public key).
    Locked,
}

impl LockState {
    /// `before-first-unlock`, `unlocked`, `locked`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockState::BeforeFirstUnlock => "before-first-unlock",
            LockState::Unlocked => "unlocked",
            LockState::Locked => "locked",
        }
    }
}

impl fmt::Display for LockState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kind of a stored entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink {
        /// The link target, as stored.
        target: String,
    },
}

/// Metadata of a stored entry (readable in every lock state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Domain, e.g. `HomeDomain`, `AppDomain-com.example.app`.
    pub domain: String,
    /// Path relative to the domain root.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Protection class (directories and symlinks: C).
    pub class: ProtectionClass,
    /// Unix mode bits (permissions only).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (Unix seconds).
    pub mtime: i64,
    /// Status change time.
    pub ctime: i64,
    /// Creation time.
    pub birth: i64,
    /// Plaintext size in bytes (0 for directories and symlinks).
    pub size: u64,
    /// Excluded from backups (`NSURLIsExcludedFromBackupKey`). A backup should also skip
    /// everything under an excluded directory (`install_app` marks `Library/Caches` and `tmp`).
    pub exclude_from_backup: bool,
}

/// Options of [`Device::put`].
#[derive(Clone, Debug)]
pub struct PutOptions {
    /// Class 1–4 (default C).
    pub class: ProtectionClass,
    /// Mode bits (default 0o644).
    pub mode: u32,
    /// Owner (default 501, `mobile`).
    pub uid: u32,
    /// Group (default 501).
    pub gid: u32,
    /// Modification time; `None` = now.
    pub mtime: Option<i64>,
    /// Exclude from backup.
    pub exclude_from_backup: bool,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions {
            class: ProtectionClass::UNTIL_FIRST_AUTH,
            mode: 0o644,
            uid: 501,
            gid: 501,
            mtime: None,
            exclude_from_backup: false,
        }
    }
}

/// A decrypted keychain item. `Debug` hides its secret (`v_Data`, whatever its type).
#[derive(Clone)]
pub struct KeychainItem {
    /// `genp`, `inet`, `cert` or `keys`.
    pub table: String,
    /// Row id in `keychain.db`.
    pub rowid: u64,
    /// Class 6–12.
    pub class: ProtectionClass,
    /// Attributes: `v_Data` (the secret), `agrp`, `svce`/`srvr`, `acct`, `labl`, `pdmn`, `cdat`, `mdat`, ….
    pub attributes: BTreeMap<String, DerValue>,
}

impl fmt::Debug for KeychainItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeychainItem")
            .field("table", &self.table)
            .field("rowid", &self.rowid)
            .field("class", &self.class)
            .field(
                "attributes",
                &mobilebackup::keychain::der::RedactedAttributes(&self.attributes),
            )
            .finish()
    }
}

// `Debug` of the options that carry passcodes, passwords and keys: whether each is given,
// never its value (so that a derived `Debug` on a type holding one cannot leak it either).
// Kept here, together, rather than beside each type.

/// `Some(redacted)` or `None`.
fn given<T>(secret: &Option<T>) -> fmt::Arguments<'static> {
    match secret {
        Some(_) => format_args!("Some(redacted)"),
        None => format_args!("None"),
    }
}

impl fmt::Debug for InitOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitOptions")
            .field("name", &self.name)
            .field("passcode", &given(&self.passcode))
            .field("model", &self.model)
            .field("ios_version", &self.ios_version)
            .field("passcode_iterations", &self.passcode_iterations)
            .field("wipe_after_10", &self.wipe_after_10)
            .finish()
    }
}

impl fmt::Debug for backup::BackupOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupOptions")
            .field("password", &given(&self.password))
            .field("dpic", &self.dpic)
            .finish()
    }
}

impl fmt::Debug for restore::RestoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("password", &given(&self.password))
            .field("passkey", &given(&self.passkey))
            .field("limits", &self.limits)
            .field("accept_size_mismatch", &self.accept_size_mismatch)
            .finish()
    }
}

impl fmt::Debug for import::ImportOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportOptions")
            .field("password", &given(&self.password))
            .field("passkey", &given(&self.passkey))
            .field("device_key", &given(&self.device_key))
            .field("limits", &self.limits)
            .field("passcode", &given(&self.passcode))
            .field("passcode_iterations", &self.passcode_iterations)
            .field("accept_size_mismatch", &self.accept_size_mismatch)
            .finish()
    }
}
