//! Exit codes and the one-line error message.

use std::fmt;

use crate::output::sanitize;

/// Success.
pub const OK: u8 = 0;
/// Any other error.
pub const OTHER: u8 = 1;
/// Bad command line.
pub const USAGE: u8 = 2;
/// Damaged or missing data (the rest was done).
pub const DAMAGE: u8 = 3;
/// Not a backup, or an unsupported or malformed format.
pub const FORMAT: u8 = 4;
/// Wrong password or key.
pub const WRONG_KEY: u8 = 5;
/// Device locked: a class key is not available now, the device is disabled (try again
/// later) or was wiped.
pub const LOCKED: u8 = 6;
/// A repository shows an older state than this client saw before (rollback).
pub const ROLLBACK: u8 = 7;

/// An error raised by the CLI itself, with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// Message (without the `keybag:` prefix).
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// A usage error (exit 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Failure {
        code: USAGE,
        message: message.into(),
    }
    .into()
}

/// Any other error (exit 1) with a plain message.
pub fn other(message: impl Into<String>) -> anyhow::Error {
    Failure {
        code: OTHER,
        message: message.into(),
    }
    .into()
}

fn for_dataprotection(e: &dataprotection::Error) -> u8 {
    use dataprotection::Error as E;
    match e {
        E::WrongPassword => WRONG_KEY,
        E::KeybagTruncated { .. }
        | E::KeybagBadTag { .. }
        | E::KeybagBadLength { .. }
        | E::KeybagBadClass { .. }
        | E::KeybagMissing(_)
        | E::KdfTooExpensive { .. }
        | E::KdfInvalid(_)
        | E::WrappedKeyLength(_) => FORMAT,
        _ => OTHER,
    }
}

fn for_backup(e: &mobilebackup::Error) -> u8 {
    use mobilebackup::Error as E;
    match e {
        E::NotABackup { .. } | E::Unsupported { .. } | E::Malformed { .. } => FORMAT,
        E::WrongPassword { .. } => WRONG_KEY,
        E::Crypto { source, .. } => for_dataprotection(source),
        E::MissingBlob { .. }
        | E::DamagedBlob { .. }
        | E::DigestMismatch { .. }
        | E::BadRecord { .. } => DAMAGE,
        _ => OTHER,
    }
}

fn for_device(e: &device::Error) -> u8 {
    use device::Error as E;
    match e {
        E::NotADevice { .. } | E::TamperedKeybag { .. } | E::Damaged { .. } => FORMAT,
        E::WrongPasscode { .. } => WRONG_KEY,
        E::ClassUnavailable { .. } | E::TryAgainLater { .. } | E::Wiped { .. } => LOCKED,
        E::BadPath { .. } | E::BadClass { .. } => USAGE,
        E::Crypto { source, .. } => for_dataprotection(source),
        _ => OTHER,
    }
}

fn for_vault(e: &vault::Error) -> u8 {
    use vault::Error as E;
    match e {
        E::NotARepository { .. } => FORMAT,
        E::WrongSecret => WRONG_KEY,
        E::Corrupt { .. } | E::Missing { .. } => DAMAGE,
        E::Rollback(_) => ROLLBACK,
        _ => OTHER,
    }
}

fn for_cloud(e: &cloud::Error) -> u8 {
    match e {
        cloud::Error::Vault(e) => for_vault(e),
        cloud::Error::Backup(e) => for_backup(e),
        _ => OTHER,
    }
}

fn for_icloud(e: &icloud::Error) -> u8 {
    use icloud::Error as E;
    match e {
        E::Device(d) => for_device(d),
        E::Vault(v) => for_vault(v),
        E::NoKey(_) | E::Crypto(_) => WRONG_KEY,
        E::Server(server::client::ClientError::WrongPassword) => WRONG_KEY,
        E::Rollback(_) => ROLLBACK,
        _ => OTHER,
    }
}

/// The exit code for an error: the first cause the CLI knows decides.
pub fn code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.code;
        }
        if let Some(e) = cause.downcast_ref::<mobilebackup::Error>() {
            return for_backup(e);
        }
        if let Some(e) = cause.downcast_ref::<dataprotection::Error>() {
            return for_dataprotection(e);
        }
        if let Some(e) = cause.downcast_ref::<device::Error>() {
            return for_device(e);
        }
        if let Some(e) = cause.downcast_ref::<vault::Error>() {
            return for_vault(e);
        }
        if let Some(e) = cause.downcast_ref::<cloud::Error>() {
            return for_cloud(e);
        }
        if let Some(e) = cause.downcast_ref::<icloud::Error>() {
            return for_icloud(e);
        }
    }
    OTHER
}

/// True when the error is only a closed output pipe (`keybag ls | head`).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// One line: the causes joined with `: `, each only once (library messages
/// already include their source), control characters escaped.
pub fn message(err: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in err.chain() {
        let s = cause.to_string();
        if s.is_empty() || msg.contains(&s) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&s);
    }
    sanitize(&msg)
}
