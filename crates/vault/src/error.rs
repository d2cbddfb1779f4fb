//! Errors of the vault. Every variant names the object, file or request involved.

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The location holds no repository (no `config`), or one of another format.
    #[error("{location}: not a keybag vault: {reason}")]
    NotARepository {
        /// The repository location.
        location: String,
        /// What is missing.
        reason: String,
    },
    /// A repository already exists there.
    #[error("{location}: a repository already exists here")]
    AlreadyExists {
        /// The location.
        location: String,
    },
    /// No key file opens with the secret given.
    #[error("wrong password or recovery key: no key of the repository opens with it")]
    WrongSecret,
    /// A stored object is damaged, forged or of the wrong kind.
    #[error("{object}: {reason}")]
    Corrupt {
        /// `kind/name` of the object.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// A stored object that should exist does not.
    #[error("{object}: missing from the repository")]
    Missing {
        /// `kind/name` of the object.
        object: String,
    },
    /// The store served an older or forked snapshot chain than this client saw before.
    #[error("{0}")]
    Rollback(String),
    /// The storage backend failed (after its retries).
    #[error("storage {op} {object}: {reason}")]
    Storage {
        /// The operation (`get`, `put`, `list`, `delete`).
        op: &'static str,
        /// `kind/name` of the object, or the prefix listed.
        object: String,
        /// What the backend said.
        reason: String,
    },
    /// A parameter read from an untrusted key file or given by the caller is out of range.
    #[error("{0}")]
    Invalid(String),
    /// A local file (source of a push, state file) failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn corrupt(object: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_string();
        move |source| Error::Io { path, source }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
