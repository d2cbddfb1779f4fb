use std::path::PathBuf;

/// Errors of the backup reader and writer. Every variant names the file involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The folder is not an iOS backup at all.
    #[error("{path}: not an iOS backup: {reason}")]
    NotABackup {
        /// The folder.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A backup in a format this version does not read.
    #[error("{path}: unsupported backup format: {reason}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file that exists but cannot be understood.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The password or derived key is wrong.
    #[error("{path}: wrong password or key (the backup keybag's class keys do not unwrap)")]
    WrongPassword {
        /// The `Manifest.plist` whose keybag refused it.
        path: PathBuf,
    },
    /// An encrypted backup was used without unlocking it first.
    #[error("{path}: the backup is encrypted; a password or derived key is needed")]
    Locked {
        /// The backup folder.
        path: PathBuf,
    },
    /// A key or crypto operation failed.
    #[error("{path}: {source}")]
    Crypto {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: dataprotection::Error,
    },
    /// A regular file's blob is absent.
    #[error("{path}: blob missing")]
    MissingBlob {
        /// Where it should be.
        path: PathBuf,
    },
    /// A blob is present but cannot be decrypted.
    #[error("{path}: damaged blob: {reason}")]
    DamagedBlob {
        /// The blob.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A blob whose SHA-1 differs from the record's `Digest`: it changed after the backup
    /// was made (a real device refuses to restore it).
    #[error("{path}: SHA-1 {actual} differs from the recorded Digest {expected} (changed after the backup)")]
    DigestMismatch {
        /// The blob.
        path: PathBuf,
        /// The recorded `Digest`, hex.
        expected: String,
        /// The blob's SHA-1, hex.
        actual: String,
    },
    /// A record whose domain, path or fileID is unsafe or invalid.
    #[error("record {domain}/{relative_path}: {reason}")]
    BadRecord {
        /// The record's domain.
        domain: String,
        /// The record's relative path.
        relative_path: String,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
        Error::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
