//! `keybag device cloud …`, `keybag cloud custody|recovery-key|recovery-contact|audit` and
//! `keybag serve admin restore`: iCloud-style device backup (the `icloud` crate) from the
//! command line. Passwords come from files or KEYBAG_ACCOUNT_PASSWORD, never argv.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use device::Device;
use icloud::audit::{can_read, mud_puddle, Category, Party};
use icloud::custody::{self, KeyPath};
use icloud::{Account, CloudState, Mode, RecoveryKey};

use super::cloud::account::{client_err, password, ServerArgs};
use super::cloud::servers::{self, Servers};
use crate::exit;
use crate::output::{human_bytes, print_json, sanitize};
use crate::secrets::read_password_file;

/// How a device that is not (yet) trusted gets the account's service key.
#[derive(Debug, Default, Args)]
pub struct PathArgs {
    /// The recovery key, from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    pub recovery_key_file: Option<PathBuf>,
    /// Ask the service's escrow (standard custody only; after a login).
    #[arg(long)]
    pub escrow: bool,
    /// Use the approval a trusted device gave (after `keybag device cloud request-approval`
    /// here and `keybag device cloud approve` there).
    #[arg(long)]
    pub approved: bool,
    /// A recovery contact's account name (with --contact-code-file).
    #[arg(long, value_name = "ACCOUNT", requires = "contact_code_file")]
    pub contact: Option<String>,
    /// The code the recovery contact handed over (`keybag cloud recovery-contact code`).
    #[arg(long, value_name = "FILE")]
    pub contact_code_file: Option<PathBuf>,
}

/// A service, an account on it and the account's password.
#[derive(Debug, Args)]
pub struct AccountLogin {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The account.
    #[arg(long)]
    pub account: String,
    /// The account password, from FILE (else KEYBAG_ACCOUNT_PASSWORD, else a prompt).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

/// `keybag device cloud …`.
#[derive(Debug, Subcommand)]
pub enum DeviceCloudCommand {
    /// Turn iCloud-style backup on: enrol the device in an account, make its cloud keybag
    /// (the device must be unlocked once). The first device of an account sets it up in
    /// standard custody; a later one needs --recovery-key-file or --escrow.
    Enable {
        /// The device folder.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        login: AccountLogin,
        #[command(flatten)]
        path: PathArgs,
    },
    /// Back up to the account, in any lock state (nothing is unwrapped).
    Backup {
        /// The device folder.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot onto this (unlocked) device: its own if it is enrolled, else
    /// through a custody path.
    Restore {
        /// The device folder (new, erased, or the one that made the backup).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        login: AccountLogin,
        #[command(flatten)]
        path: PathArgs,
        /// A snapshot ID prefix (default: the newest device backup of the account).
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// On a new device: ask the account's trusted devices for its key (then `approve` on one
    /// of them, then `restore … --approved` or `enable … --approved` here).
    RequestApproval {
        /// The device folder.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        login: AccountLogin,
    },
    /// On a trusted device: approve every device that asked.
    Approve {
        #[command(flatten)]
        login: DeviceLogin,
    },
    /// Turn iCloud-style backup off: the cloud keybag and every cloud wrap are deleted.
    Disable {
        /// The device folder.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The account login a device-side command needs.
#[derive(Debug, Args)]
pub struct DeviceLogin {
    /// A trusted device of the account (its folder).
    #[arg(long, value_name = "DIR")]
    pub device: PathBuf,
    /// The account password, from FILE (else KEYBAG_ACCOUNT_PASSWORD, else a prompt).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `keybag cloud recovery-contact …`.
#[derive(Debug, Subcommand)]
pub enum ContactCommand {
    /// Name another account of the service a recovery contact (it must have published).
    Add {
        /// The contact's account.
        contact: String,
        #[command(flatten)]
        login: DeviceLogin,
    },
    /// Publish this account's contact key (so others can name it), kept by this device.
    Publish {
        #[command(flatten)]
        login: DeviceLogin,
    },
    /// As a contact: write the code OWNER needs to recover (give it to them in person).
    Code {
        /// The account that named you.
        owner: String,
        #[command(flatten)]
        login: DeviceLogin,
        /// Where to write it (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

fn open_device(dir: &Path) -> Result<Device> {
    Ok(Device::open(dir)?)
}

fn login_at(base: &str, fp: Option<&str>, account: &str, pw: Option<&Path>) -> Result<Account> {
    let p = password(pw, account, false)?;
    Account::login(base, fp, account, &p).map_err(|e| match e {
        icloud::Error::Server(c) => client_err(c),
        e => e.into(),
    })
}

fn login_args(l: &AccountLogin) -> Result<Account> {
    let mut servers = Servers::load()?;
    let base = servers::base(&l.server.server)?;
    let fp = servers::pin(&base, l.server.server_fingerprint.as_deref(), &mut servers)?;
    servers.save()?;
    login_at(&base, fp.as_deref(), &l.account, l.password_file.as_deref())
}

/// Logs in to the account of an enrolled device.
fn login_device(l: &DeviceLogin) -> Result<(Device, CloudState, Account)> {
    let dev = open_device(&l.device)?;
    let st = CloudState::require(&dev)?;
    let acct = login_at(
        &st.server,
        st.fingerprint.as_deref(),
        &st.account,
        l.password_file.as_deref(),
    )?;
    Ok((dev, st, acct))
}

fn read_text(f: &Path, what: &str) -> Result<zeroize::Zeroizing<String>> {
    let b = read_password_file(f, what)?;
    Ok(zeroize::Zeroizing::new(
        String::from_utf8(b.to_vec()).map_err(|_| exit::usage(format!("{what}: not text")))?,
    ))
}

/// The service key for a device that is not trusted, by the path the flags name.
fn by_path(acct: &Account, p: &PathArgs, dev: &Device) -> Result<Option<icloud::ServiceKey>> {
    if p.approved {
        return Ok(Some(icloud::approved_key(dev, acct)?));
    }
    if let Some(f) = &p.recovery_key_file {
        let rk = RecoveryKey::parse(&read_text(f, "--recovery-key-file")?)?;
        return Ok(Some(custody::service_key(
            acct,
            &KeyPath::RecoveryKey(&rk),
        )?));
    }
    if p.escrow {
        return Ok(Some(custody::service_key(acct, &KeyPath::Escrow)?));
    }
    if let (Some(c), Some(f)) = (&p.contact, &p.contact_code_file) {
        let code = hex::decode(read_text(f, "--contact-code-file")?.trim())
            .map_err(|_| exit::usage("--contact-code-file: the code is hex"))?;
        return Ok(Some(custody::service_key(
            acct,
            &KeyPath::Contact {
                contact: c,
                code: &code,
            },
        )?));
    }
    Ok(None)
}

/// Runs `keybag device cloud …`.
pub fn device(cmd: &DeviceCloudCommand) -> Result<u8> {
    match cmd {
        DeviceCloudCommand::Enable { dir, login, path } => {
            let mut dev = open_device(dir)?;
            let acct = login_args(login)?;
            let svk_path = if acct.mode()?.is_some() {
                by_path(&acct, path, &dev)?
            } else {
                None
            };
            let en = match &svk_path {
                None => icloud::enable(&mut dev, &acct, None)?,
                Some(svk) => icloud::enable_with_key(&mut dev, &acct, svk)?,
            };
            if login.server.json {
                print_json(&en)?;
            } else {
                println!(
                    "iCloud-style backup is on for {} (account {}, device {}){}; {} files and {} \
                     keychain items got their cloud wrap. Back up in any lock state with \
                     `keybag device cloud backup`.",
                    sanitize(dev.name()),
                    sanitize(&login.account),
                    &en.device_id[..8.min(en.device_id.len())],
                    if en.created {
                        ": the account is set up in standard custody (the service can restore; \
                         `keybag cloud custody e2e` makes it end-to-end)"
                    } else {
                        ""
                    },
                    en.files_wrapped,
                    en.items_wrapped
                );
            }
        }
        DeviceCloudCommand::Backup { dir, json } => {
            let dev = open_device(dir)?;
            let bar = crate::progress::Bytes::new(None, "backing up");
            let rep = icloud::backup::backup(&dev, Some(&|n| bar.add(n)))?;
            bar.finish();
            if *json {
                print_json(&rep)?;
            } else {
                println!(
                    "snapshot {} (#{}) of {} while {}: {} files, {} ({} unchanged, not read), {} \
                     folders and links, {} keychain items; {} stored",
                    rep.snapshot,
                    rep.seq,
                    sanitize(dev.name()),
                    rep.lock_state,
                    rep.files,
                    human_bytes(rep.bytes),
                    rep.unchanged,
                    rep.others,
                    rep.keychain,
                    human_bytes(rep.stored_bytes)
                );
                print_left(&rep.left_out, "left out");
            }
        }
        DeviceCloudCommand::Restore {
            dir,
            login,
            path,
            snapshot,
        } => {
            let mut dev = open_device(dir)?;
            let acct = login_args(login)?;
            let svk = match by_path(&acct, path, &dev)? {
                Some(k) => k,
                None if CloudState::load(&dev)?.is_some() => {
                    icloud::device_service_key(&dev, &acct)?
                }
                None => {
                    return Err(exit::usage(
                        "this device is not enrolled: give --recovery-key-file, --escrow \
                         (standard custody) or --contact with --contact-code-file",
                    ))
                }
            };
            let rep = icloud::restore::restore(&acct, &svk, &mut dev, snapshot.as_deref(), None)?;
            if login.server.json {
                print_json(&rep)?;
            } else {
                println!(
                    "restored snapshot {} of {} (backed up while {}): {} files ({}), {} folders \
                     and links, {} keychain items",
                    rep.snapshot,
                    sanitize(&rep.source.0),
                    rep.source_lock_state,
                    rep.files,
                    human_bytes(rep.bytes),
                    rep.others,
                    rep.keychain.len()
                );
                print_left(&rep.lost, "not restored");
            }
        }
        DeviceCloudCommand::RequestApproval { dir, login } => {
            let dev = open_device(dir)?;
            let acct = login_args(login)?;
            let id = icloud::request_approval(&dev, &acct)?;
            println!(
                "{} asked for approval as {id}: run `keybag device cloud approve --device PHONE`                  on a trusted device of {}, then `--approved` here",
                sanitize(dev.name()),
                sanitize(&login.account)
            );
        }
        DeviceCloudCommand::Approve { login } => {
            let (dev, _, acct) = login_device(login)?;
            let done = icloud::approve(&dev, &acct)?;
            if login.json {
                print_json(&done)?;
            } else if done.is_empty() {
                println!("no device is waiting for approval");
            } else {
                println!("approved: {}", done.join(", "));
            }
        }
        DeviceCloudCommand::Disable { dir } => {
            let mut dev = open_device(dir)?;
            icloud::disable(&mut dev)?;
            println!(
                "iCloud-style backup is off for {}: its cloud keybag and wraps are deleted; the \
                 account keeps its snapshots",
                sanitize(dev.name())
            );
        }
    }
    Ok(exit::OK)
}

fn print_left(l: &[icloud::model::Left], what: &str) {
    if l.is_empty() {
        return;
    }
    println!("{what}:");
    for x in l {
        println!(
            "  {:<8} {:<5} {}: {}",
            x.kind,
            x.class.as_deref().unwrap_or(""),
            sanitize(&x.what),
            sanitize(&x.reason)
        );
    }
}

/// Runs `keybag cloud custody MODE`.
pub fn set_custody(mode: &str, l: &DeviceLogin) -> Result<u8> {
    let mode = Mode::parse(mode)?;
    let (dev, mut st, acct) = login_device(l)?;
    let svk = icloud::device_service_key(&dev, &acct)?;
    let new = custody::set_mode(&acct, &svk, mode)?;
    st.set_service_key(&new);
    st.save(&dev)?;
    match mode {
        Mode::Standard => println!(
            "custody of {} is standard: the service escrows the key again (it can restore: \
             the mud-puddle test fails)",
            sanitize(&acct.name)
        ),
        Mode::EndToEnd => println!(
            "custody of {} is end-to-end: the escrow is deleted, the service key rotated \
             (generation {}), every keybag key rotated; only trusted devices, the recovery key \
             and recovery contacts can restore",
            sanitize(&acct.name),
            new.generation
        ),
    }
    Ok(exit::OK)
}

/// Runs `keybag cloud recovery-key`.
pub fn recovery_key(l: &DeviceLogin, out: Option<&Path>) -> Result<u8> {
    let (dev, _, acct) = login_device(l)?;
    let svk = icloud::device_service_key(&dev, &acct)?;
    let rk = custody::add_recovery_key(&acct, &svk)?;
    match out {
        Some(f) => {
            super::serve::write_secret(f, &rk.display())?;
            println!(
                "recovery key written to {} (shown nowhere else; the service keeps only its \
                 public half). Keep it offline: with no trusted device left, it is the way back.",
                f.display()
            );
        }
        None => println!(
            "recovery key (shown once; the service keeps only its public half):\n\n    {}\n",
            rk.display().as_str()
        ),
    }
    Ok(exit::OK)
}

/// Runs `keybag cloud recovery-contact …`.
pub fn contact(cmd: &ContactCommand) -> Result<u8> {
    match cmd {
        ContactCommand::Add { contact, login } => {
            let (dev, _, acct) = login_device(login)?;
            let svk = icloud::device_service_key(&dev, &acct)?;
            custody::add_contact(&acct, &svk, contact)?;
            println!(
                "{} is a recovery contact of {}: it holds a sealed packet, the service the key \
                 that opens it; neither alone recovers anything",
                sanitize(contact),
                sanitize(&acct.name)
            );
        }
        ContactCommand::Publish { login } => {
            let (_, st, acct) = login_device(login)?;
            custody::publish_contact_key(&acct, &st.identity()?)?;
            println!(
                "{} can now be named a recovery contact (this device keeps the key)",
                sanitize(&acct.name)
            );
        }
        ContactCommand::Code { owner, login, out } => {
            let (_, st, acct) = login_device(login)?;
            let code = custody::contact_code(&acct, &st.identity()?, owner)?;
            super::serve::write_secret(out, &hex::encode(code))?;
            println!(
                "the recovery code for {} is in {}: give it to them in person; it opens \
                 nothing without their account and the service's half",
                sanitize(owner),
                out.display()
            );
        }
    }
    Ok(exit::OK)
}

/// Runs `keybag cloud audit`.
pub fn audit(l: &DeviceLogin) -> Result<u8> {
    let (_, _, acct) = login_device(l)?;
    let (mode, generation) = acct
        .mode()?
        .ok_or_else(|| exit::other("the account has no device backup set up"))?;
    let names = acct.records()?;
    let count = |p: &str| names.iter().filter(|n| n.starts_with(p)).count();
    let (verdict, why) = mud_puddle(mode);
    let table: Vec<serde_json::Value> = Party::ALL
        .iter()
        .map(|&p| {
            let cells: serde_json::Map<String, serde_json::Value> = Category::ALL
                .iter()
                .map(|&c| {
                    let (yes, why) = can_read(mode, p, c);
                    (
                        format!("{c:?}").to_lowercase(),
                        serde_json::json!({"can_read": yes, "why": why}),
                    )
                })
                .collect();
            serde_json::json!({"party": p, "label": p.label(), "reads": cells})
        })
        .collect();
    if l.json {
        print_json(&serde_json::json!({
            "account": acct.name,
            "mode": mode.as_str(),
            "generation": generation,
            "escrow": names.iter().any(|n| n == "escrow"),
            "recovery_key": names.iter().any(|n| n == "recovery-key"),
            "recovery_contacts": count("contact."),
            "trusted_devices": count("trusted."),
            "mud_puddle": {"verdict": verdict, "why": why},
            "parties": table,
        }))?;
        return Ok(exit::OK);
    }
    println!(
        "account {}: {} custody (service key generation {}); escrow {}; recovery key {}; {} \
         recovery contact(s); {} trusted device(s)",
        sanitize(&acct.name),
        mode.as_str(),
        generation,
        if names.iter().any(|n| n == "escrow") {
            "held by the service"
        } else {
            "none"
        },
        if names.iter().any(|n| n == "recovery-key") {
            "set"
        } else {
            "none"
        },
        count("contact."),
        count("trusted.")
    );
    print!("{:<36}", "who reads…");
    for c in Category::ALL {
        print!(" {:<26}", c.label());
    }
    println!();
    for p in Party::ALL {
        print!("{:<36}", p.label());
        for c in Category::ALL {
            print!(" {:<26}", if can_read(mode, p, c).0 { "yes" } else { "no" });
        }
        println!();
    }
    println!("\nmud-puddle test: {verdict}: {why}");
    Ok(exit::OK)
}

/// Runs `keybag serve admin restore`: the operator restores an account's newest device
/// backup onto a new device folder of its own, from the service's stores (standard custody
/// only).
pub fn admin_restore(
    opts: &server::ServeOptions,
    account: &str,
    out: &Path,
    snapshot: Option<&str>,
) -> Result<u8> {
    let (secret, records, storage) =
        server::ops::custody(opts, account).map_err(|e| exit::other(e.to_string()))?;
    let mut dev = Device::init(
        out,
        device::InitOptions {
            name: format!("operator restore of {account}"),
            ..Default::default()
        },
    )
    .with_context(|| out.display().to_string())?;
    let rep = icloud::operator::restore(&secret, &records, storage, account, snapshot, &mut dev)?;
    println!(
        "restored snapshot {} of {} ({}) onto {}: {} files ({}); {} keychain items (the keychain \
         is bound to the source device's UID)",
        rep.snapshot,
        sanitize(account),
        sanitize(&rep.source.0),
        out.display(),
        rep.files,
        human_bytes(rep.bytes),
        rep.keychain.len()
    );
    Ok(exit::OK)
}
