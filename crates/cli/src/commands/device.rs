//! `keybag device …`: the emulated iPhone (crate `device`). Passcodes and secrets come
//! from files, environment variables or a prompt, never from argv. The UID is never
//! printed; neither is the device key.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use dataprotection::ProtectionClass;
use device::{DerValue, Device, EntryKind, InitOptions, PutOptions};
use serde_json::json;
use zeroize::Zeroizing;

use crate::commands::device_backup::BackupCommand;
use crate::exit;
use crate::output::{iso8601, print_json, sanitize};
use crate::secrets::read_password_file;

/// Environment variable holding the device passcode.
pub const PASSCODE_ENV: &str = "KEYBAG_PASSCODE";
/// Environment variable holding the new passcode (`device passcode`).
pub const NEW_PASSCODE_ENV: &str = "KEYBAG_NEW_PASSCODE";
/// Environment variable holding a keychain secret (`device keychain add`).
pub const SECRET_ENV: &str = "KEYBAG_SECRET";

/// Shown after `keybag device --help`.
pub const DEVICE_HELP: &str = "\
Exit codes: 0 success, 1 other error, 2 usage error or a path that escapes its
domain, 4 not a device folder or a damaged/tampered device, 5 wrong passcode,
6 device locked: the class key is not available now, the device is disabled
(try again later) or was wiped.

The passcode is read from --passcode-file FILE (first line), else from
KEYBAG_PASSCODE, else from a prompt; never from the command line.";

/// A device folder argument.
#[derive(Debug, Args)]
pub struct DirArg {
    /// The device folder.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// The subcommands of `keybag device`.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// iCloud-style backup of the device to a `keybag serve` account: enable, backup (in
    /// any lock state), restore, disable.
    Cloud {
        /// What to do.
        #[command(subcommand)]
        command: crate::commands::device_cloud::DeviceCloudCommand,
    },
    /// Create a device folder: UID, system keybag, empty store and keychain.
    Init {
        /// The folder to create (absent or empty).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Device name.
        #[arg(long)]
        name: String,
        /// Set a passcode, read from the first line of FILE (else KEYBAG_PASSCODE; none if neither).
        #[arg(long, value_name = "FILE")]
        passcode_file: Option<PathBuf>,
        /// Product type (default iPhone13,2).
        #[arg(long)]
        model: Option<String>,
        /// iOS version (default 17.5).
        #[arg(long = "ios", value_name = "VERSION")]
        ios_version: Option<String>,
        /// Erase the device's keys on the 10th consecutive wrong passcode.
        #[arg(long)]
        wipe_after_10: bool,
        /// PBKDF2 iterations of the passcode KDF (default: calibrated to ~80 ms). For tests.
        #[arg(long, hide = true)]
        passcode_iterations: Option<u32>,
    },
    /// Name, UDID, model, iOS, lock state, passcode, counts (never the UID).
    Info {
        #[command(flatten)]
        dir: DirArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Unlock with the passcode.
    Unlock {
        #[command(flatten)]
        dir: DirArg,
        /// Read the passcode from the first line of FILE.
        #[arg(long, value_name = "FILE")]
        passcode_file: Option<PathBuf>,
    },
    /// Lock: class A, the class-B private key and ak/aku/akpu are forgotten.
    Lock {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Restart: back to before-first-unlock (only class D, dk, dku).
    Restart {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Set, change or remove the passcode (removal deletes akpu keychain items).
    Passcode {
        #[command(flatten)]
        dir: DirArg,
        /// The current passcode, from the first line of FILE (else KEYBAG_PASSCODE or a prompt).
        #[arg(long, value_name = "FILE")]
        passcode_file: Option<PathBuf>,
        /// The new passcode, from FILE (else KEYBAG_NEW_PASSCODE or a prompt asked twice).
        #[arg(long, value_name = "FILE", conflicts_with = "remove")]
        new_passcode_file: Option<PathBuf>,
        /// Remove the passcode.
        #[arg(long)]
        remove: bool,
    },
    /// Store a file (from stdin or --from), encrypted under its class.
    Put {
        #[command(flatten)]
        dir: DirArg,
        /// Domain, e.g. HomeDomain, AppDomain-com.example.app.
        domain: String,
        /// Path relative to the domain.
        path: String,
        /// Protection class.
        #[arg(long, value_enum, ignore_case = true, default_value = "C")]
        class: FileClass,
        /// Mark the file as excluded from backups.
        #[arg(long)]
        exclude_from_backup: bool,
        /// Read the content from FILE instead of stdin.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
    },
    /// Write a file's content to stdout.
    Get {
        #[command(flatten)]
        dir: DirArg,
        /// Domain.
        domain: String,
        /// Path relative to the domain.
        path: String,
    },
    /// List files (metadata only: works in every lock state).
    Ls {
        #[command(flatten)]
        dir: DirArg,
        /// Only this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a file, a symlink or an empty directory.
    Rm {
        #[command(flatten)]
        dir: DirArg,
        /// Domain.
        domain: String,
        /// Path relative to the domain.
        path: String,
    },
    /// Apps.
    App {
        /// What to do.
        #[command(subcommand)]
        command: AppCommand,
    },
    /// The device keychain.
    Keychain {
        /// What to do.
        #[command(subcommand)]
        command: KeychainCommand,
    },
    #[command(flatten)]
    Backup(BackupCommand),
}

/// `keybag device app …`.
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Create the app container AppDomain-BUNDLE (Documents, Library, Library/Preferences,
    /// Library/Caches, tmp).
    Install {
        #[command(flatten)]
        dir: DirArg,
        /// Bundle id, e.g. com.example.notes.
        bundle: String,
    },
}

/// `keybag device keychain …`.
#[derive(Debug, Subcommand)]
pub enum KeychainCommand {
    /// Add a password; the secret comes from --secret-file or KEYBAG_SECRET.
    Add {
        #[command(flatten)]
        dir: DirArg,
        /// password (genp) or internet (inet).
        #[arg(long, value_enum)]
        kind: ItemKind,
        /// Keychain class.
        #[arg(long, value_enum, ignore_case = true)]
        class: KeychainClass,
        /// Access group (agrp).
        #[arg(long)]
        group: String,
        /// Service (svce), for --kind password.
        #[arg(long, conflicts_with = "server")]
        service: Option<String>,
        /// Server (srvr), for --kind internet.
        #[arg(long)]
        server: Option<String>,
        /// Account (acct).
        #[arg(long)]
        account: String,
        /// Label (labl).
        #[arg(long)]
        label: Option<String>,
        /// Read the secret from FILE (all of it).
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
    /// List items: row, table, class, and for those readable now group, service, account.
    Ls {
        #[command(flatten)]
        dir: DirArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write an item's secret to stdout.
    Get {
        #[command(flatten)]
        dir: DirArg,
        /// Row id (from `keychain ls`).
        rowid: u64,
    },
}

/// File protection classes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FileClass {
    /// Complete (1).
    A,
    /// Complete unless open (2).
    B,
    /// Until first user authentication (3).
    C,
    /// None (4).
    D,
}

/// Keychain item kinds.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ItemKind {
    /// Generic password (genp).
    Password,
    /// Internet password (inet).
    Internet,
}

/// Keychain classes.
#[derive(Debug, Clone, Copy, ValueEnum)]
#[allow(missing_docs)]
pub enum KeychainClass {
    Ak,
    Ck,
    Dk,
    Aku,
    Cku,
    Dku,
    Akpu,
}

impl FileClass {
    fn class(self) -> ProtectionClass {
        ProtectionClass(self as u32 + 1)
    }
}

impl KeychainClass {
    fn class(self) -> ProtectionClass {
        ProtectionClass(match self {
            KeychainClass::Ak => 6,
            KeychainClass::Ck => 7,
            KeychainClass::Dk => 8,
            KeychainClass::Aku => 9,
            KeychainClass::Cku => 10,
            KeychainClass::Dku => 11,
            KeychainClass::Akpu => 12,
        })
    }
}

fn env_bytes(name: &str) -> Option<Zeroizing<Vec<u8>>> {
    use std::os::unix::ffi::OsStringExt;
    let v = Zeroizing::new(std::env::var_os(name)?.into_vec());
    (!v.is_empty()).then_some(v)
}

/// A passcode from FILE, the environment variable, or a prompt (when `prompt` names it).
fn passcode(
    file: Option<&Path>,
    option: &str,
    env: &str,
    prompt: Option<&str>,
) -> Result<Option<Zeroizing<Vec<u8>>>> {
    if let Some(f) = file {
        return read_password_file(f, option).map(Some);
    }
    if let Some(v) = env_bytes(env) {
        return Ok(Some(v));
    }
    match prompt {
        Some(p) if std::io::stdin().is_terminal() => {
            let v = Zeroizing::new(
                rpassword::prompt_password(p)
                    .context("reading the passcode from the terminal")?
                    .into_bytes(),
            );
            Ok((!v.is_empty()).then_some(v))
        }
        _ => Ok(None),
    }
}

fn required_passcode(file: Option<&Path>, dir: &Path) -> Result<Zeroizing<Vec<u8>>> {
    passcode(
        file,
        "--passcode-file",
        PASSCODE_ENV,
        Some(&format!("Passcode for {}: ", dir.display())),
    )?
    .ok_or_else(|| {
        exit::other(format!(
            "{}: no passcode given: use --passcode-file, {PASSCODE_ENV} or a terminal",
            dir.display()
        ))
    })
}

fn open(dir: &Path) -> Result<Device> {
    Ok(Device::open(dir)?)
}

/// Runs a `keybag device` subcommand.
pub fn run(cmd: &DeviceCommand) -> Result<u8> {
    match cmd {
        DeviceCommand::Cloud { command } => crate::commands::device_cloud::device(command),
        DeviceCommand::Init {
            dir,
            name,
            passcode_file,
            model,
            ios_version,
            wipe_after_10,
            passcode_iterations,
        } => {
            let pc = passcode(
                passcode_file.as_deref(),
                "--passcode-file",
                PASSCODE_ENV,
                None,
            )?;
            let dev = Device::init(
                dir,
                InitOptions {
                    name: name.clone(),
                    passcode: pc,
                    model: model.clone(),
                    ios_version: ios_version.clone(),
                    passcode_iterations: *passcode_iterations,
                    wipe_after_10: *wipe_after_10,
                },
            )?;
            println!(
                "created device {} (UDID {}) in {}{}",
                sanitize(dev.name()),
                dev.udid(),
                dir.display(),
                if dev.passcode_set() {
                    ", with a passcode"
                } else {
                    ", no passcode"
                }
            );
            Ok(exit::OK)
        }
        DeviceCommand::Info { dir, json } => info(&dir.dir, *json),
        DeviceCommand::Unlock { dir, passcode_file } => {
            let mut dev = open(&dir.dir)?;
            if dev.passcode_set() {
                let pc = required_passcode(passcode_file.as_deref(), &dir.dir)?;
                dev.unlock(&pc)?;
            } else {
                dev.unlock(b"")?;
            }
            println!("unlocked");
            Ok(exit::OK)
        }
        DeviceCommand::Lock { dir } => {
            let mut dev = open(&dir.dir)?;
            dev.lock()?;
            println!("{}", dev.state());
            Ok(exit::OK)
        }
        DeviceCommand::Restart { dir } => {
            let mut dev = open(&dir.dir)?;
            dev.restart()?;
            println!("{}", dev.state());
            Ok(exit::OK)
        }
        DeviceCommand::Passcode {
            dir,
            passcode_file,
            new_passcode_file,
            remove,
        } => {
            let mut dev = open(&dir.dir)?;
            let old = if dev.passcode_set() {
                Some(required_passcode(passcode_file.as_deref(), &dir.dir)?)
            } else {
                None
            };
            let new = if *remove {
                None
            } else {
                let new = passcode(
                    new_passcode_file.as_deref(),
                    "--new-passcode-file",
                    NEW_PASSCODE_ENV,
                    Some("New passcode: "),
                )?
                .ok_or_else(|| {
                    exit::other(format!(
                        "no new passcode given: use --new-passcode-file, {NEW_PASSCODE_ENV}, \
                         a terminal, or --remove"
                    ))
                })?;
                if new_passcode_file.is_none()
                    && env_bytes(NEW_PASSCODE_ENV).is_none()
                    && std::io::stdin().is_terminal()
                {
                    let again = Zeroizing::new(
                        rpassword::prompt_password("Again: ")
                            .context("reading the passcode from the terminal")?
                            .into_bytes(),
                    );
                    if again != new {
                        return Err(exit::other("the passcodes differ"));
                    }
                }
                Some(new)
            };
            dev.set_passcode(
                old.as_deref().map(|v| v.as_slice()),
                new.as_deref().map(|v| v.as_slice()),
            )?;
            println!(
                "{}",
                if new.is_some() {
                    "passcode set; class keys rewrapped"
                } else {
                    "passcode removed; akpu keychain items deleted"
                }
            );
            Ok(exit::OK)
        }
        DeviceCommand::Put {
            dir,
            domain,
            path,
            class,
            exclude_from_backup,
            from,
        } => {
            let mut dev = open(&dir.dir)?;
            let opts = PutOptions {
                class: class.class(),
                exclude_from_backup: *exclude_from_backup,
                ..Default::default()
            };
            match from {
                Some(f) => {
                    let mut file = std::fs::File::open(f)
                        .with_context(|| format!("--from {}", f.display()))?;
                    dev.put(domain, path, &mut file, &opts)?;
                }
                None => dev.put(domain, path, &mut std::io::stdin().lock(), &opts)?,
            }
            Ok(exit::OK)
        }
        DeviceCommand::Get { dir, domain, path } => {
            let dev = open(&dir.dir)?;
            let mut out = std::io::stdout().lock();
            dev.get(domain, path, &mut out)?;
            out.flush()?;
            Ok(exit::OK)
        }
        DeviceCommand::Ls { dir, domain, json } => ls(&dir.dir, domain.as_deref(), *json),
        DeviceCommand::Rm { dir, domain, path } => {
            open(&dir.dir)?.remove(domain, path)?;
            Ok(exit::OK)
        }
        DeviceCommand::App {
            command: AppCommand::Install { dir, bundle },
        } => {
            open(&dir.dir)?.install_app(bundle)?;
            println!("installed AppDomain-{}", sanitize(bundle));
            Ok(exit::OK)
        }
        DeviceCommand::Keychain { command } => keychain(command),
        DeviceCommand::Backup(c) => crate::commands::device_backup::run(c),
    }
}

fn info(dir: &Path, json: bool) -> Result<u8> {
    let dev = open(dir)?;
    let entries = dev.entries(None)?;
    let files = entries.iter().filter(|e| e.kind == EntryKind::File).count();
    let bytes: u64 = entries.iter().map(|e| e.size).sum();
    let apps = dev.apps()?;
    let items = dev.keychain_all()?;
    let available = items.iter().filter(|i| i.3).count();
    if json {
        print_json(&json!({
            "name": dev.name(),
            "udid": dev.udid(),
            "model": dev.model(),
            "ios_version": dev.ios_version(),
            "state": dev.state().as_str(),
            "passcode_set": dev.passcode_set(),
            "passcode_iterations": dev.passcode_iterations(),
            "failed_attempts": dev.failed_attempts(),
            "locked_out_until": dev.locked_out_until(),
            "wipe_after_10": dev.wipe_after_10(),
            "entries": entries.len(),
            "files": files,
            "bytes": bytes,
            "apps": apps,
            "keychain_items": items.len(),
            "keychain_items_available": available,
        }))?;
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "Name:            {}", sanitize(dev.name()))?;
    writeln!(out, "UDID:            {}", sanitize(dev.udid()))?;
    writeln!(out, "Model:           {}", sanitize(dev.model()))?;
    writeln!(out, "iOS:             {}", sanitize(dev.ios_version()))?;
    writeln!(out, "State:           {}", dev.state())?;
    writeln!(
        out,
        "Passcode:        {}",
        if dev.passcode_set() {
            format!("set ({} PBKDF2 iterations)", dev.passcode_iterations())
        } else {
            "none".into()
        }
    )?;
    if dev.failed_attempts() > 0 {
        writeln!(out, "Failed attempts: {}", dev.failed_attempts())?;
    }
    if dev.locked_out_until() > 0 {
        writeln!(out, "Disabled until:  {}", iso8601(dev.locked_out_until()))?;
    }
    writeln!(
        out,
        "Wipe after 10:   {}",
        if dev.wipe_after_10() { "yes" } else { "no" }
    )?;
    writeln!(
        out,
        "Files:           {files} ({bytes} bytes), {} entries",
        entries.len()
    )?;
    writeln!(out, "Apps:            {}", apps.len())?;
    writeln!(
        out,
        "Keychain:        {} items ({available} readable now)",
        items.len()
    )?;
    Ok(exit::OK)
}

fn kind_str(k: &EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Directory => "dir",
        EntryKind::Symlink { .. } => "link",
    }
}

fn ls(dir: &Path, domain: Option<&str>, json: bool) -> Result<u8> {
    let dev = open(dir)?;
    let entries = dev.entries(domain)?;
    if json {
        let v: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({
                    "domain": e.domain,
                    "path": e.path,
                    "kind": kind_str(&e.kind),
                    "target": match &e.kind { EntryKind::Symlink { target } => Some(target), _ => None },
                    "class": e.class.short_name(),
                    "mode": format!("{:o}", e.mode),
                    "uid": e.uid,
                    "gid": e.gid,
                    "mtime": e.mtime,
                    "ctime": e.ctime,
                    "birth": e.birth,
                    "size": e.size,
                    "exclude_from_backup": e.exclude_from_backup,
                })
            })
            .collect();
        print_json(&v)?;
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    for e in &entries {
        let link = match &e.kind {
            EntryKind::Symlink { target } => format!(" -> {}", sanitize(target)),
            _ => String::new(),
        };
        writeln!(
            out,
            "{:<4} {:<4} {:>4o} {:>10} {} {} {}/{}{}",
            kind_str(&e.kind),
            e.class.short_name(),
            e.mode,
            e.size,
            iso8601(e.mtime),
            if e.exclude_from_backup { "x" } else { "-" },
            sanitize(&e.domain),
            sanitize(&e.path),
            link
        )?;
    }
    Ok(exit::OK)
}

fn attr_str(attrs: &BTreeMap<String, DerValue>, key: &str) -> Option<String> {
    match attrs.get(key)? {
        DerValue::String(s) => Some(s.clone()),
        DerValue::Data(d) => Some(String::from_utf8_lossy(d).into_owned()),
        _ => None,
    }
}

fn keychain(cmd: &KeychainCommand) -> Result<u8> {
    match cmd {
        KeychainCommand::Add {
            dir,
            kind,
            class,
            group,
            service,
            server,
            account,
            label,
            secret_file,
        } => {
            let secret = match secret_file {
                Some(f) => Zeroizing::new(
                    std::fs::read(f).with_context(|| format!("--secret-file {}", f.display()))?,
                ),
                None => env_bytes(SECRET_ENV).ok_or_else(|| {
                    exit::other(format!(
                        "no secret given: use --secret-file or {SECRET_ENV}"
                    ))
                })?,
            };
            let mut attrs = BTreeMap::new();
            let table = match kind {
                ItemKind::Password => {
                    let s = service
                        .as_ref()
                        .ok_or_else(|| exit::usage("--kind password needs --service"))?;
                    attrs.insert("svce".into(), DerValue::String(s.clone()));
                    "genp"
                }
                ItemKind::Internet => {
                    let s = server
                        .as_ref()
                        .ok_or_else(|| exit::usage("--kind internet needs --server"))?;
                    attrs.insert("srvr".into(), DerValue::String(s.clone()));
                    "inet"
                }
            };
            attrs.insert("agrp".into(), DerValue::String(group.clone()));
            attrs.insert("acct".into(), DerValue::String(account.clone()));
            if let Some(l) = label {
                attrs.insert("labl".into(), DerValue::String(l.clone()));
            }
            attrs.insert("v_Data".into(), DerValue::Data(secret));
            let rowid = open(&dir.dir)?.keychain_add(table, class.class(), attrs)?;
            println!("{rowid}");
            Ok(exit::OK)
        }
        KeychainCommand::Ls { dir, json } => {
            let dev = open(&dir.dir)?;
            let readable: BTreeMap<u64, device::KeychainItem> = dev
                .keychain_items()?
                .into_iter()
                .map(|i| (i.rowid, i))
                .collect();
            let rows: Vec<_> = dev
                .keychain_all()?
                .into_iter()
                .map(|(rowid, table, class, available)| {
                    let a = readable.get(&rowid).map(|i| &i.attributes);
                    let get = |k: &str| a.and_then(|a| attr_str(a, k));
                    json!({
                        "rowid": rowid,
                        "table": table,
                        "class": class.short_name(),
                        "available": available,
                        "group": get("agrp"),
                        "service": get("svce"),
                        "server": get("srvr"),
                        "account": get("acct"),
                        "label": get("labl"),
                    })
                })
                .collect();
            if *json {
                print_json(&rows)?;
                return Ok(exit::OK);
            }
            let mut out = std::io::stdout().lock();
            for r in &rows {
                let s = |k: &str| r[k].as_str().map(sanitize).unwrap_or_default();
                if r["available"].as_bool() == Some(true) {
                    writeln!(
                        out,
                        "{:>5} {} {:<4} group={} {}={} account={}",
                        r["rowid"],
                        r["table"].as_str().unwrap_or(""),
                        r["class"].as_str().unwrap_or(""),
                        s("group"),
                        if r["table"] == "inet" {
                            "server"
                        } else {
                            "service"
                        },
                        if r["table"] == "inet" {
                            s("server")
                        } else {
                            s("service")
                        },
                        s("account"),
                    )?;
                } else {
                    writeln!(
                        out,
                        "{:>5} {} {:<4} (locked: class key not available)",
                        r["rowid"],
                        r["table"].as_str().unwrap_or(""),
                        r["class"].as_str().unwrap_or(""),
                    )?;
                }
            }
            Ok(exit::OK)
        }
        KeychainCommand::Get { dir, rowid } => {
            let dev = open(&dir.dir)?;
            let item = dev.keychain_item(*rowid)?;
            let mut out = std::io::stdout().lock();
            match item.attributes.get("v_Data") {
                Some(DerValue::Data(d)) => out.write_all(d)?,
                Some(DerValue::String(s)) => out.write_all(s.as_bytes())?,
                _ => return Err(exit::other(format!("item {rowid} has no secret (v_Data)"))),
            }
            out.flush()?;
            Ok(exit::OK)
        }
    }
}
