//! Command-line syntax (clap derive).

use std::fmt;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use zeroize::Zeroizing;

/// Shown after every `--help`: exit codes and where secrets come from.
pub const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  any other error (I/O, no password available, output folder exists, ...)
  2  usage error (bad command line, invalid --derived-key or --device-key)
  3  some files are damaged, missing or unreadable; everything else was done
  4  not a backup, or a format this version does not read (Manifest.plist,
     keybag, Manifest.db)
  5  wrong password or derived key

The password of an encrypted backup is read from --password-file FILE (first
line; '-' reads stdin), else from the KEYBAG_PASSWORD environment variable,
else from a prompt when stdin is a terminal. It is never accepted as an
argument. --derived-key-file FILE (the 32-byte key mvt and other tools save)
skips the slow password derivation; --device-key-file FILE gives the device key
0x835. (--derived-key HEX and --device-key HEX exist too, but any user of the
machine can read a command line.)";

/// Open, audit and extract encrypted iPhone (iTunes/Finder) backups.
#[derive(Debug, Parser)]
#[command(
    name = "keybag",
    version,
    long_about = "Open, audit and extract iPhone backups made by iTunes or Finder, \
                  encrypted or not (iOS 10.2 and later).\n\n\
                  Start with `keybag demo` to see every step on the sample backup shipped \
                  with the source.",
    after_help = AFTER_HELP,
    arg_required_else_help = true,
    propagate_version = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Device, date, encryption and content statistics of a backup.
    #[command(after_help = AFTER_HELP)]
    Info {
        #[command(flatten)]
        backup: BackupArgs,
    },
    /// List records as DOMAIN/PATH, sorted by domain then path.
    #[command(after_help = AFTER_HELP)]
    Ls {
        #[command(flatten)]
        backup: BackupArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Also show kind, size, protection class, mode (octal) and mtime (UTC).
        #[arg(short, long)]
        long: bool,
    },
    /// Extract files into OUTDIR/<domain>/<relativePath>.
    #[command(after_help = AFTER_HELP)]
    Extract {
        #[command(flatten)]
        backup: BackupArgs,
        /// Output folder (created if needed; existing files are replaced).
        #[arg(value_name = "OUTDIR")]
        out: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Write one file's content to stdout.
    #[command(after_help = AFTER_HELP)]
    Cat {
        #[command(flatten)]
        backup: BackupArgs,
        /// The record's domain, e.g. HomeDomain.
        domain: String,
        /// The record's relativePath, e.g. Library/SMS/sms.db.
        path: String,
    },
    /// Write an unencrypted copy of an encrypted backup to OUTDIR (which must not exist).
    #[command(after_help = AFTER_HELP)]
    Decrypt {
        #[command(flatten)]
        backup: BackupArgs,
        /// The new backup folder.
        #[arg(value_name = "OUTDIR")]
        out: PathBuf,
    },
    /// Check the password and Manifest.db, bad records and missing blobs;
    /// with --deep, decrypt every file too.
    #[command(after_help = AFTER_HELP)]
    Verify {
        #[command(flatten)]
        backup: BackupArgs,
        /// Read and decrypt every file (in parallel) to find damaged ones.
        #[arg(long)]
        deep: bool,
    },
    /// What a backup holds and what it cannot: what a new iPhone will not get
    /// back, password cost and strength, encrypted-only data, integrity.
    #[command(
        long_about = crate::commands::audit::LONG_ABOUT,
        after_help = AFTER_HELP
    )]
    Audit {
        #[command(flatten)]
        backup: BackupArgs,
        /// Also write the report as one self-contained HTML page to FILE.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Do not read the blobs: only check that they exist (no digests, padding or sizes).
        #[arg(long)]
        quick: bool,
    },
    /// Change an encrypted backup's password: re-wrap its class keys under the
    /// new one, with fresh salts (files untouched).
    #[command(
        long_about = crate::commands::passwd::LONG_ABOUT,
        after_help = AFTER_HELP
    )]
    Passwd {
        #[command(flatten)]
        backup: BackupArgs,
        /// Read the new password from the first line of FILE ('-' = stdin).
        #[arg(long, value_name = "FILE", help_heading = "New password")]
        new_password_file: Option<PathBuf>,
    },
    /// List keychain items: passwords, internet passwords, certificates and keys
    /// (secrets hidden unless --show-secrets).
    #[command(after_help = AFTER_HELP)]
    Keychain {
        #[command(flatten)]
        backup: BackupArgs,
        /// Show the secrets (passwords) in the table or JSON.
        #[arg(long)]
        show_secrets: bool,
        /// `table` (default), or `csv`: name,url,username,password,note, which password
        /// managers import. CSV holds the passwords in plaintext and needs --show-secrets.
        #[arg(long, value_enum, value_name = "FORMAT", conflicts_with = "json")]
        format: Option<KeychainFormat>,
    },
    /// A guided tour on the encrypted sample backup shipped with the source.
    Demo,
    /// Off-site, end-to-end encrypted, deduplicated storage of phone backups: a local
    /// folder or S3 (init, push, snapshots, ls, cat, diff, pull, check, forget, prune, key).
    #[command(after_help = crate::commands::cloud::CLOUD_HELP)]
    Cloud {
        /// What to do.
        #[command(subcommand)]
        command: crate::commands::cloud::CloudCommand,
    },
    /// Run a self-hosted, multi-tenant backup service for `keybag cloud` (HTTPS, accounts,
    /// devices with scoped tokens; SQLite or PostgreSQL; a folder or S3), or its operator's
    /// commands (`keybag serve admin …`).
    #[command(after_help = crate::commands::serve::SERVE_HELP)]
    Serve(crate::commands::serve::ServeCmd),
    /// A virtual iPhone (a folder): lock states, files, keychain; back it up, restore onto
    /// it, import a real backup.
    #[command(after_help = crate::commands::device::DEVICE_HELP)]
    Device {
        /// What to do with the device.
        #[command(subcommand)]
        command: crate::commands::device::DeviceCommand,
    },
}

/// Output formats of `keybag keychain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeychainFormat {
    /// A table for people.
    Table,
    /// CSV for password managers (name,url,username,password,note).
    Csv,
}

/// The backup folder and how to unlock it; shared by every command that reads a backup.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The backup folder (the one holding Manifest.db, usually named after the UDID).
    #[arg(value_name = "BACKUP")]
    pub dir: PathBuf,

    /// Machine-readable output on stdout (errors still go to stderr).
    #[arg(long)]
    pub json: bool,

    /// Read the password from the first line of FILE ('-' = stdin).
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Unlocking",
        conflicts_with_all = ["derived_key", "derived_key_file"]
    )]
    pub password_file: Option<PathBuf>,

    /// The 32-byte derived key as 64 hex digits (skips the password KDF). Other users can
    /// read a command line: prefer --derived-key-file.
    #[arg(
        long,
        value_name = "HEX",
        help_heading = "Unlocking",
        conflicts_with = "derived_key_file"
    )]
    pub derived_key: Option<HexKey>,

    /// Read the derived key from FILE (64 hex digits, or 32 raw bytes).
    #[arg(long, value_name = "FILE", help_heading = "Unlocking")]
    pub derived_key_file: Option<PathBuf>,

    /// The device key 0x835 as 32 hex digits: opens classes sealed to the original device.
    /// Other users can read a command line: prefer --device-key-file.
    #[arg(
        long,
        value_name = "HEX",
        help_heading = "Unlocking",
        conflicts_with = "device_key_file"
    )]
    pub device_key: Option<HexKey>,

    /// Read the device key 0x835 from FILE (32 hex digits, or 16 raw bytes).
    #[arg(long, value_name = "FILE", help_heading = "Unlocking")]
    pub device_key_file: Option<PathBuf>,
}

/// A key given in hex on the command line (`--derived-key`, `--device-key`): wiped on drop,
/// and its `Debug` shows none of it, so printing the parsed command line (a panic message,
/// a log line) cannot leak it.
#[derive(Clone)]
pub struct HexKey(Zeroizing<String>);

impl HexKey {
    /// The hex digits as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for HexKey {
    fn from(text: String) -> Self {
        HexKey(Zeroizing::new(text))
    }
}

impl fmt::Debug for HexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HexKey(redacted)")
    }
}

/// Record selection for `ls` and `extract`.
#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// Only records whose domain matches this glob (e.g. HomeDomain, 'AppDomain-*').
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,

    /// Only records whose relativePath matches this glob ('*' stays within one
    /// folder, '**' crosses folders), e.g. 'Library/SMS/**'.
    #[arg(long, value_name = "GLOB")]
    pub path: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "44a316ca4293d559aa3a068ebb22105607824ea61d611baf62cd3e83c0c796c7";
    const DEVICE_KEY: &str = "793b52fd8ca0b58f37cfdde966237ceb";

    /// A panic message or a log line that shows the parsed command line shows no key.
    #[test]
    fn debug_of_the_command_line_hides_the_keys() {
        for args in [
            vec!["keybag", "info", "B", "--derived-key", KEY],
            vec!["keybag", "keychain", "B", "--device-key", DEVICE_KEY],
            vec![
                "keybag",
                "device",
                "import",
                "D",
                "B",
                "--device-key",
                DEVICE_KEY,
            ],
        ] {
            let cli = Cli::try_parse_from(&args).unwrap();
            let shown = format!("{cli:?} {cli:#?}");
            assert!(!shown.contains(KEY), "{shown}");
            assert!(!shown.contains(DEVICE_KEY), "{shown}");
            assert!(shown.contains("redacted"), "{shown}");
        }
    }
}
