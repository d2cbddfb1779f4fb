//! `keybag cloud …`: off-site, end-to-end encrypted, deduplicated storage of phone backups
//! (crates `vault` and `cloud`). The repository's password, a recovery key and backup
//! passwords come from files, environment variables or a prompt, never from argv.

pub(crate) mod account;
mod admin;
mod repo;
pub(crate) mod servers;
mod transfer;

use anyhow::Result;
use clap::{Args, Subcommand};

/// Shown after `keybag cloud --help`.
pub const CLOUD_HELP: &str = "\
REPO is a folder path, s3://bucket/prefix (endpoint and credentials from AWS_ENDPOINT_URL,
AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) or https://host:port, a `keybag
serve` (after `keybag cloud login`, or with a device's token: --server-token-file FILE or
KEYBAG_SERVER_TOKEN); --repo may also come from KEYBAG_REPO. A server's certificate is
pinned on first use (or with --server-fingerprint) and checked on every connection.

The repository password is read from --repo-password-file FILE, else KEYBAG_REPO_PASSWORD;
a recovery key from --recovery-key-file FILE, else KEYBAG_RECOVERY_KEY; else a prompt. A
backup's own password (push) from --password-file, KEYBAG_PASSWORD or --derived-key-file.

Exit codes: 0 success, 1 other error (storage unreachable, …), 2 usage error, 3 damaged or
missing data reported (check found problems, pull could not write some files), 4 not a
repository or not a backup, 5 wrong password or recovery key, 7 the repository shows an older
state than this client saw before (rollback: refused, nothing changed).";

/// The subcommands of `keybag cloud`.
#[derive(Debug, Subcommand)]
pub enum CloudCommand {
    /// Make a new repository: asks for its password (twice) and prints a recovery key once.
    Init(admin::InitCmd),
    /// Push a Finder/iTunes backup folder into the repository as one snapshot.
    Push(transfer::PushCmd),
    /// List the snapshots (device, backup date, size, what was new).
    Snapshots(admin::SnapshotsCmd),
    /// List a snapshot's records: DOMAIN/PATH, like `keybag ls`.
    Ls(transfer::LsCmd),
    /// Write one file of a snapshot to stdout (only that file's chunks are fetched).
    Cat(transfer::CatCmd),
    /// Files added, removed and changed between two snapshots, by domain.
    Diff(transfer::DiffCmd),
    /// Write a snapshot back as a backup folder, byte-identical to the one pushed.
    Pull(transfer::PullCmd),
    /// Check the repository: structure, or every byte with --read-data.
    Check(admin::CheckCmd),
    /// Remove snapshots a retention policy does not keep (space is freed by prune).
    Forget(admin::ForgetCmd),
    /// Free the space no snapshot needs (two phases: mark, then delete after --grace).
    Prune(admin::PruneCmd),
    /// The ways into the repository: list, add, remove, rotate.
    Key {
        /// What to do.
        #[command(subcommand)]
        command: admin::KeyCommand,
    },
    /// Set the password of an account a server's operator made (with their enrollment code).
    Register(account::RegisterCmd),
    /// Log in to a server (the password never leaves this machine: OPAQUE).
    Login(account::LoginCmd),
    /// End the session with a server.
    Logout(account::ServerOnly),
    /// Usage, quota, and the devices of the account with their last backups.
    Status(account::ServerOnly),
    /// The account's devices: list, add (a scoped token), revoke.
    Devices {
        /// What to do.
        #[command(subcommand)]
        command: account::DevicesCommand,
    },
    /// iCloud-style device backup: switch the account's custody (`standard`: the service
    /// escrows the key and can restore; `e2e`: only trusted devices, the recovery key and
    /// recovery contacts can).
    Custody {
        /// `standard` or `e2e`.
        #[arg(value_name = "MODE")]
        mode: String,
        #[command(flatten)]
        login: crate::commands::device_cloud::DeviceLogin,
    },
    /// iCloud-style device backup: make a recovery key (28 characters, shown once).
    RecoveryKey {
        #[command(flatten)]
        login: crate::commands::device_cloud::DeviceLogin,
        /// Write it to FILE (must not exist) instead of the terminal.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// iCloud-style device backup: recovery contacts (add, publish, code).
    RecoveryContact {
        /// What to do.
        #[command(subcommand)]
        command: crate::commands::device_cloud::ContactCommand,
    },
    /// iCloud-style device backup: who can read what (files by class, keychain, metadata)
    /// for each party, and the account's mud-puddle verdict.
    Audit {
        #[command(flatten)]
        login: crate::commands::device_cloud::DeviceLogin,
    },
}

/// A snapshot argument: an ID prefix or `latest`.
#[derive(Debug, Args)]
pub struct SnapshotArg {
    /// A snapshot ID (a unique prefix is enough) or `latest`.
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: String,
}

/// Runs one of the cloud subcommands.
pub fn run(cmd: &CloudCommand) -> Result<u8> {
    match cmd {
        CloudCommand::Custody { mode, login } => {
            crate::commands::device_cloud::set_custody(mode, login)
        }
        CloudCommand::RecoveryKey { login, out } => {
            crate::commands::device_cloud::recovery_key(login, out.as_deref())
        }
        CloudCommand::RecoveryContact { command } => {
            crate::commands::device_cloud::contact(command)
        }
        CloudCommand::Audit { login } => crate::commands::device_cloud::audit(login),
        CloudCommand::Init(c) => admin::init(c),
        CloudCommand::Push(c) => transfer::push(c),
        CloudCommand::Snapshots(c) => admin::snapshots(c),
        CloudCommand::Ls(c) => transfer::ls(c),
        CloudCommand::Cat(c) => transfer::cat(c),
        CloudCommand::Diff(c) => transfer::diff(c),
        CloudCommand::Pull(c) => transfer::pull(c),
        CloudCommand::Check(c) => admin::check(c),
        CloudCommand::Forget(c) => admin::forget(c),
        CloudCommand::Prune(c) => admin::prune(c),
        CloudCommand::Key { command } => admin::key(command),
        CloudCommand::Register(c) => account::register(c),
        CloudCommand::Login(c) => account::login(c),
        CloudCommand::Logout(c) => account::logout(c),
        CloudCommand::Status(c) => account::status(c),
        CloudCommand::Devices { command } => account::devices(command),
    }
}

/// Parses `30s`, `15m`, `24h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: a duration is a number and a unit (30s, 15m, 24h, 7d)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "w" => n * 7 * 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h, d, w)")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap().as_secs(), 0);
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("24h").unwrap().as_secs(), 86_400);
        assert_eq!(parse_duration("2d").unwrap().as_secs(), 172_800);
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }
}
