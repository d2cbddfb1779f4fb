/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The device failed.
    #[error(transparent)]
    Device(#[from] device::Error),
    /// The repository failed.
    #[error(transparent)]
    Vault(#[from] vault::Error),
    /// The service refused or could not be reached.
    #[error(transparent)]
    Server(#[from] server::client::ClientError),
    /// A record or key does not open (wrong key, or changed).
    #[error("{0}")]
    Crypto(String),
    /// No custody path this party has opens the account's service key.
    #[error("{0}")]
    NoKey(String),
    /// The server served something older than this client has seen.
    #[error("rollback detected: {0}")]
    Rollback(String),
    /// Anything else a person must fix (named in the message).
    #[error("{0}")]
    Invalid(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
