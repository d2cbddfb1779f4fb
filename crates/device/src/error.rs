use std::path::PathBuf;

use dataprotection::ProtectionClass;

use crate::LockState;

/// Everything that can go wrong with an emulated device. Every variant that
/// concerns a file names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The folder is not a device made by `Device::init` (no or unreadable `device.json`).
    #[error("{path}: not a device folder ({reason})")]
    NotADevice {
        /// The folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `init` was pointed at a folder that already has content.
    #[error("{path}: folder exists and is not empty; refusing to create a device there")]
    AlreadyExists {
        /// The folder.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading a file's content from its source (a backup's blob, a pipe) failed: the
    /// source's fault, not the device's. A damaged backup blob carries its
    /// [`mobilebackup::blob::DigestMismatch`] inside `source`.
    #[error("{what}: {source}")]
    Source {
        /// Whose content (`content of DOMAIN/PATH`).
        what: String,
        /// The read error.
        source: std::io::Error,
    },
    /// A SQLite database (`store.db`, `keychain.db`) failed.
    #[error("{path}: database error: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// A file of the device is malformed or damaged.
    #[error("{path}: damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The system keybag's signature does not verify: it was modified, replaced by an
    /// old copy, or belongs to another device (different UID).
    #[error("{path}: system keybag signature does not verify (tampered, replayed, or from another device)")]
    TamperedKeybag {
        /// `secure/systembag.kb`.
        path: PathBuf,
    },
    /// The device was wiped (10 failed passcode attempts with wipe enabled).
    #[error("{path}: device was wiped after too many failed passcode attempts; its data is unrecoverable")]
    Wiped {
        /// The device folder.
        path: PathBuf,
    },
    /// The passcode did not unwrap the class keys.
    #[error("{path}: wrong passcode ({failed_attempts} failed attempt(s) in a row)")]
    WrongPasscode {
        /// `secure/systembag.kb`.
        path: PathBuf,
        /// Consecutive failures so far.
        failed_attempts: u32,
    },
    /// Too many failures: the next attempt is allowed only later.
    #[error("device is disabled after failed passcode attempts: try again in {seconds} s")]
    TryAgainLater {
        /// Seconds to wait.
        seconds: u64,
    },
    /// The operation needs a passcode and the device has none (e.g. an `akpu` item).
    #[error("{what} needs a passcode and this device has none")]
    PasscodeRequired {
        /// What was attempted.
        what: String,
    },
    /// A class key is not available in the current lock state.
    #[error("class {class} ({name}) is not available while the device is {state}", name = class.name())]
    ClassUnavailable {
        /// The class.
        class: ProtectionClass,
        /// The lock state.
        state: LockState,
    },
    /// A class this operation does not accept.
    #[error("class {class} cannot be used here: {reason}")]
    BadClass {
        /// The class.
        class: ProtectionClass,
        /// Why.
        reason: &'static str,
    },
    /// A domain or path that is unsafe or malformed (escapes its domain, NUL, …).
    #[error("invalid path {domain}/{path:?}: {reason}")]
    BadPath {
        /// The domain.
        domain: String,
        /// The relative path.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// No entry at that path.
    #[error("{domain}/{path}: no such file or directory")]
    NotFound {
        /// The domain.
        domain: String,
        /// The relative path.
        path: String,
    },
    /// The entry has the wrong kind for the operation (e.g. `get` on a directory).
    #[error("{domain}/{path}: {reason}")]
    WrongKind {
        /// The domain.
        domain: String,
        /// The relative path.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A keychain request that makes no sense (unknown table, no such row, …).
    #[error("keychain: {0}")]
    Keychain(String),
    /// iCloud Backup is off on this device.
    #[error("{path}: iCloud Backup is off on this device (turn it on with `keybag device cloud enable`)")]
    CloudOff {
        /// The device folder.
        path: PathBuf,
    },
    /// A cryptographic operation failed on a file of the device.
    #[error("{path}: {source}")]
    Crypto {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: dataprotection::Error,
    },
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

pub(crate) fn db(path: impl Into<PathBuf>) -> impl FnOnce(rusqlite::Error) -> Error {
    let path = path.into();
    move |source| Error::Db { path, source }
}

pub(crate) fn damaged(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
    Error::Damaged {
        path: path.into(),
        reason: reason.into(),
    }
}
