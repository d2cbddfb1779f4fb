//! `keybag device backup | restore | import`: local backups of a virtual device, restores onto
//! one (design §4.3's outcome matrix), and real backups turned into a device. The work is done
//! by `device::{backup, restore, import}`; this module reads secrets and prints.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use device::backup::{BackupOptions, OpError, Skip};
use device::import::ImportOptions;
use device::restore::RestoreOptions;
use zeroize::Zeroizing;

use crate::args::HexKey;
use crate::exit;
use crate::output::{human_bytes, plural, print_json, sanitize, thousands};
use crate::secrets::{parse_hex, read_key_file, read_password_file, PASSWORD_ENV};

/// `keybag device backup DIR OUT [--encrypt]`.
///
/// As on iOS, "encrypt local backup" is a setting of the device: the first `--encrypt` backup
/// sets the backup password, and the device keeps its backup keybag (bound to its UID). From
/// then on every backup of that device is encrypted with it, without asking for the password
/// and without the password's KDF (seconds at Apple's 10,000,000 rounds).
#[derive(Debug, Args)]
pub struct BackupCmd {
    /// The device folder.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The backup folder to create (or to update, when it holds an earlier backup of this
    /// device: unchanged files are not rewritten).
    #[arg(value_name = "OUT")]
    pub out: PathBuf,
    /// Encrypt the backup and set the device's backup password (or check it; a different one
    /// changes it); the password comes from --password-file, KEYBAG_PASSWORD or a prompt (asked
    /// twice). Without --encrypt, a device whose backup encryption is on still makes an
    /// encrypted backup, with the backup password it holds (nothing is asked).
    #[arg(long)]
    pub encrypt: bool,
    /// Read the backup password from the first line of FILE ('-' = stdin).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `keybag device restore DIR BACKUP`.
#[derive(Debug, Args)]
pub struct RestoreCmd {
    /// The device folder to restore onto (must be unlocked).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The backup folder.
    #[arg(value_name = "BACKUP")]
    pub backup: PathBuf,
    /// Read the backup password from the first line of FILE ('-' = stdin).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Read the backup's derived key from FILE (64 hex digits or 32 raw bytes) instead of
    /// its password: the slow KDF is skipped.
    #[arg(long, value_name = "FILE", conflicts_with = "password_file")]
    pub derived_key_file: Option<PathBuf>,
    /// Take files whose length differs from their record's Size (and that have no Digest
    /// to prove their bytes) as they are, instead of as damaged: real phones' databases that
    /// changed while they were copied look like this.
    #[arg(long)]
    pub accept_size_mismatch: bool,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `keybag device import DIR BACKUP [--device-key-file FILE]`.
#[derive(Debug, Args)]
pub struct ImportCmd {
    /// The device folder to create.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// A real iOS backup folder.
    #[arg(value_name = "BACKUP")]
    pub backup: PathBuf,
    /// Read the backup password from the first line of FILE ('-' = stdin).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Read the backup's derived key from FILE (64 hex digits or 32 raw bytes) instead of
    /// its password: the slow KDF is skipped.
    #[arg(long, value_name = "FILE", conflicts_with = "password_file")]
    pub derived_key_file: Option<PathBuf>,
    /// The original phone's device key 0x835 (32 hex digits): imports its ThisDeviceOnly
    /// keychain items too. Other users can read a command line: prefer --device-key-file.
    #[arg(long, value_name = "HEX", conflicts_with = "device_key_file")]
    pub device_key: Option<HexKey>,
    /// Read the original phone's device key 0x835 from FILE (32 hex digits or 16 raw bytes).
    #[arg(long, value_name = "FILE")]
    pub device_key_file: Option<PathBuf>,
    /// Give the new device a passcode, read from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    pub passcode_file: Option<PathBuf>,
    /// Take files whose length differs from their record's Size (and that have no Digest
    /// to prove their bytes) as they are, instead of as damaged: real phones' databases that
    /// changed while they were copied look like this.
    #[arg(long)]
    pub accept_size_mismatch: bool,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The password from `--password-file`, `KEYBAG_PASSWORD` or a prompt (twice when `confirm`).
fn password(file: Option<&Path>, what: &str, confirm: bool) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(path) = file {
        return read_password_file(path, "--password-file");
    }
    if let Some(value) = std::env::var_os(PASSWORD_ENV) {
        use std::os::unix::ffi::OsStringExt;
        let pw = Zeroizing::new(value.into_vec());
        if !pw.is_empty() {
            return Ok(pw);
        }
    }
    if std::io::stdin().is_terminal() {
        let pw = Zeroizing::new(
            rpassword::prompt_password(format!("Password for {what}: "))
                .context("reading the password from the terminal")?
                .into_bytes(),
        );
        if pw.is_empty() {
            return Err(exit::other("empty password"));
        }
        if confirm {
            let again = Zeroizing::new(
                rpassword::prompt_password("Again: ")
                    .context("reading the password from the terminal")?
                    .into_bytes(),
            );
            if again != pw {
                return Err(exit::other("the passwords differ"));
            }
        }
        return Ok(pw);
    }
    Err(exit::other(format!(
        "{what}: no password given: use {PASSWORD_ENV}, --password-file or a terminal"
    )))
}

/// An operation error with the exit code the CLI uses for it.
fn op_error(e: OpError) -> anyhow::Error {
    match e {
        OpError::Backup(e) => e.into(),
        OpError::Damaged(m) => exit::Failure {
            code: exit::DAMAGE,
            message: format!("damaged backup: {m} (nothing was changed)"),
        }
        .into(),
        OpError::Device(e) => {
            let code = match &e {
                device::Error::NotADevice { .. } => exit::FORMAT,
                device::Error::WrongPasscode { .. } => exit::WRONG_KEY,
                _ => exit::OTHER,
            };
            exit::Failure {
                code,
                message: e.to_string(),
            }
            .into()
        }
        other => exit::other(other.to_string()),
    }
}

fn print_skips(title: &str, list: &[Skip]) {
    if list.is_empty() {
        return;
    }
    println!("{title} ({}):", list.len());
    for s in list.iter().take(50) {
        let class = s
            .class
            .as_deref()
            .map(|c| format!(" [{c}]"))
            .unwrap_or_default();
        println!(
            "  {} {}{class}: {}",
            s.kind,
            sanitize(&s.what),
            sanitize(&s.reason)
        );
    }
    if list.len() > 50 {
        println!("  … and {} more (see --json)", list.len() - 50);
    }
}

/// The password of the backup at `dir` when it is encrypted (asked for, or read from
/// `password_file` / the environment); `None` when it is not, or cannot be read (the library
/// then reports why).
fn backup_password(dir: &Path, password_file: Option<&Path>) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let encrypted = mobilebackup::Backup::open(dir)
        .ok()
        .is_some_and(|b| b.is_encrypted());
    if !encrypted {
        return Ok(None);
    }
    password(password_file, &dir.display().to_string(), false).map(Some)
}

/// What unlocks the backup at `dir`: its derived key from `derived_key_file` if given, else
/// its password when it is encrypted (see [`backup_password`]).
#[allow(clippy::type_complexity)]
fn backup_secret(
    dir: &Path,
    password_file: Option<&Path>,
    derived_key_file: Option<&Path>,
) -> Result<(Option<Zeroizing<Vec<u8>>>, Option<dataprotection::Passkey>)> {
    match derived_key_file {
        Some(p) => Ok((None, Some(read_key_file::<32>(p, "--derived-key-file")?))),
        None => Ok((backup_password(dir, password_file)?, None)),
    }
}

/// "N files (size), N folders, N symlinks", as every report here starts.
fn contents(files: u64, bytes: u64, directories: u64, symlinks: u64) -> String {
    format!(
        "{} ({}), {}, {}",
        plural(files, "file", "files"),
        human_bytes(bytes),
        plural(directories, "folder", "folders"),
        plural(symlinks, "symlink", "symlinks"),
    )
}

/// `keybag device backup`.
pub fn run_backup(cmd: &BackupCmd) -> Result<u8> {
    let dev = device::Device::open(&cmd.dir).map_err(|e| op_error(e.into()))?;
    let pw = if cmd.encrypt {
        Some(password(
            cmd.password_file.as_deref(),
            &format!("the new backup {}", cmd.out.display()),
            true,
        )?)
    } else {
        None
    };
    let opts = BackupOptions {
        password: pw,
        ..BackupOptions::default()
    };
    let r = device::backup::backup_with_device_setting(&dev, &cmd.out, &opts).map_err(op_error)?;
    if cmd.json {
        print_json(&r)?;
        return Ok(exit::OK);
    }
    println!(
        "{} backup of {} ({}) in {}",
        if r.encrypted {
            "Encrypted"
        } else {
            "Unencrypted"
        },
        sanitize(dev.name()),
        dev.state(),
        r.out.display()
    );
    if r.device_keybag {
        println!(
            "  encrypted with the backup password held by the device (backup encryption is on; \
             no password asked)"
        );
    } else if r.backup_password_set {
        println!(
            "  backup encryption is now on for this device: it keeps this backup password, and \
             later backups are encrypted with it without asking"
        );
    }
    if r.unchanged {
        println!(
            "  nothing changed since this device's last backup into this folder: kept as it \
             is, dates refreshed"
        );
    }
    println!(
        "  {}; {} unchanged since the last backup (not rewritten)",
        contents(r.files, r.bytes, r.directories, r.symlinks),
        thousands(r.reused)
    );
    println!(
        "  keychain: {} exported{}",
        plural(r.keychain.len() as u64, "item", "items"),
        if r.encrypted {
            " (ThisDeviceOnly ones sealed to this device's key 0x835)"
        } else {
            " (all sealed to this device: unencrypted backup)"
        }
    );
    for (table, class, what) in &r.keychain {
        println!("    {table} [{class}] {}", sanitize(what));
    }
    print_skips("Not backed up", &r.skipped);
    Ok(exit::OK)
}

/// `keybag device restore`.
pub fn run_restore(cmd: &RestoreCmd) -> Result<u8> {
    let (password, passkey) = backup_secret(
        &cmd.backup,
        cmd.password_file.as_deref(),
        cmd.derived_key_file.as_deref(),
    )?;
    let opts = RestoreOptions {
        password,
        passkey,
        accept_size_mismatch: cmd.accept_size_mismatch,
        ..RestoreOptions::default()
    };
    let r = device::restore::restore(&cmd.dir, &cmd.backup, &opts).map_err(op_error)?;
    // Keychain items lost to damage (not to where they are restored) are damage.
    let code = if r.damaged_items > 0 {
        eprintln!(
            "keybag: {} damaged in the backup (listed as lost); everything else was restored",
            plural(r.damaged_items, "keychain item is", "keychain items are")
        );
        exit::DAMAGE
    } else {
        exit::OK
    };
    if cmd.json {
        print_json(&r)?;
        return Ok(code);
    }
    println!(
        "Restored {} onto {} (re-keyed under its class keys)",
        contents(r.files, r.bytes, r.directories, r.symlinks),
        cmd.dir.display()
    );
    println!(
        "Keychain: {} restored, {} already present, {} lost",
        r.keychain_restored.len(),
        r.keychain_present.len(),
        r.lost.len()
    );
    for (table, class, what) in r.keychain_restored.iter().chain(&r.keychain_present) {
        println!("  restored {table} [{class}] {}", sanitize(what));
    }
    print_skips("Lost", &r.lost);
    print_skips("Skipped", &r.skipped);
    Ok(code)
}

/// `keybag device import`.
pub fn run_import(cmd: &ImportCmd) -> Result<u8> {
    let device_key = match (&cmd.device_key, &cmd.device_key_file) {
        (Some(hex), _) => Some(parse_hex::<16>(hex.as_str(), "--device-key")?),
        (None, Some(p)) => Some(read_key_file::<16>(p, "--device-key-file")?),
        (None, None) => None,
    };
    let (password, passkey) = backup_secret(
        &cmd.backup,
        cmd.password_file.as_deref(),
        cmd.derived_key_file.as_deref(),
    )?;
    let passcode = cmd
        .passcode_file
        .as_deref()
        .map(|p| read_password_file(p, "--passcode-file"))
        .transpose()?;
    let opts = ImportOptions {
        password,
        passkey,
        device_key,
        passcode,
        accept_size_mismatch: cmd.accept_size_mismatch,
        ..ImportOptions::default()
    };
    let r = device::import::import(&cmd.dir, &cmd.backup, &opts).map_err(op_error)?;
    // Some record of the backup did not come over: damage (the keychain's sealed items are
    // not: they are reported, as designed).
    let code = if r.damaged_items > 0 || r.skipped.iter().any(|s| s.kind != "keychain") {
        exit::DAMAGE
    } else {
        exit::OK
    };
    if cmd.json {
        print_json(&r)?;
        return Ok(code);
    }
    println!(
        "Imported {} into the new device {}: {}",
        cmd.backup.display(),
        cmd.dir.display(),
        contents(r.files, r.bytes, r.directories, r.symlinks),
    );
    println!(
        "Keychain: {} imported",
        plural(r.keychain.len() as u64, "item", "items")
    );
    print_skips("Not imported", &r.skipped);
    Ok(code)
}

/// The backup subcommands of `keybag device`. `crate::commands::device`'s subcommand enum embeds
/// them with `#[command(flatten)]`.
#[derive(Debug, clap::Subcommand)]
pub enum BackupCommand {
    /// Back the device up into OUT: a real iTunes/Finder-format backup (left out: Caches, tmp,
    /// files flagged exclude-from-backup, and what a locked device cannot read). Once a backup
    /// was made with --encrypt, the device holds the backup password: later backups are
    /// encrypted with it without asking.
    Backup(BackupCmd),
    /// Restore a backup onto the device: files re-keyed under its class keys, keychain items
    /// per the outcome matrix (ThisDeviceOnly ones only from this same device).
    Restore(RestoreCmd),
    /// Create a device folder from a real iOS backup (ThisDeviceOnly keychain items only with
    /// --device-key-file).
    Import(ImportCmd),
}

/// Runs one of the backup subcommands.
pub fn run(cmd: &BackupCommand) -> Result<u8> {
    match cmd {
        BackupCommand::Backup(c) => run_backup(c),
        BackupCommand::Restore(c) => run_restore(c),
        BackupCommand::Import(c) => run_import(c),
    }
}
