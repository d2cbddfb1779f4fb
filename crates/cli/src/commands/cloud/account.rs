//! `cloud register`, `login`, `logout`, `devices`, `status`: an account on a `keybag serve`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use server::client::{ClientError, ServerClient};
use zeroize::Zeroizing;

use super::servers::{self, session, Servers};
use crate::exit;
use crate::output::{human_bytes, iso8601, print_json, sanitize};
use crate::secrets::read_password_file;

/// Environment variable: the account password.
pub const ACCOUNT_PASSWORD_ENV: &str = "KEYBAG_ACCOUNT_PASSWORD";
/// Environment variable: the enrollment code the operator gave.
pub const ENROLLMENT_CODE_ENV: &str = "KEYBAG_ENROLLMENT_CODE";

/// The server and how to trust it.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server: https://host:port.
    #[arg(long, value_name = "URL", env = "KEYBAG_SERVER")]
    pub server: String,
    /// Pin this certificate fingerprint (SHA-256, hex) instead of trusting the first one seen.
    #[arg(long, value_name = "HEX")]
    pub server_fingerprint: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `keybag cloud register`.
#[derive(Debug, Args)]
pub struct RegisterCmd {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The account the operator made.
    #[arg(long)]
    pub account: String,
    /// The enrollment code, from the first line of FILE (else KEYBAG_ENROLLMENT_CODE).
    #[arg(long, value_name = "FILE")]
    pub enrollment_code_file: Option<PathBuf>,
    /// The new password, from FILE (else KEYBAG_ACCOUNT_PASSWORD, else a prompt twice).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

/// `keybag cloud login`.
#[derive(Debug, Args)]
pub struct LoginCmd {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The account.
    #[arg(long)]
    pub account: String,
    /// The password, from FILE (else KEYBAG_ACCOUNT_PASSWORD, else a prompt).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

/// `keybag cloud logout` / `status`.
#[derive(Debug, Args)]
pub struct ServerOnly {
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `keybag cloud devices …`.
#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List the account's devices and the last backup of each.
    List(ServerOnly),
    /// Enroll a device: writes its token (backup: append only; restore: read) to FILE.
    Add {
        #[command(flatten)]
        server: ServerArgs,
        /// Its name.
        name: String,
        /// `backup` (default) or `restore`.
        #[arg(long, default_value = "backup")]
        scope: String,
        /// Where to write the device's token (created, mode 0600).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
    },
    /// Revoke a device and its tokens.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        /// Its ID.
        id: String,
    },
}

fn env_secret(name: &str) -> Option<Zeroizing<Vec<u8>>> {
    use std::os::unix::ffi::OsStringExt;
    let v = Zeroizing::new(std::env::var_os(name)?.into_vec());
    (!v.is_empty()).then_some(v)
}

pub(crate) fn password(
    file: Option<&std::path::Path>,
    what: &str,
    twice: bool,
) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(f) = file {
        return read_password_file(f, "--password-file");
    }
    if let Some(p) = env_secret(ACCOUNT_PASSWORD_ENV) {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        let a = Zeroizing::new(
            rpassword::prompt_password(format!("Password for {what}: "))?.into_bytes(),
        );
        if twice {
            let b = Zeroizing::new(rpassword::prompt_password("Again: ")?.into_bytes());
            if a != b {
                return Err(exit::other("the two passwords differ"));
            }
        }
        if !a.is_empty() {
            return Ok(a);
        }
    }
    Err(exit::other(format!(
        "{what}: no password given: use --password-file, {ACCOUNT_PASSWORD_ENV} or a terminal"
    )))
}

/// A client error as the CLI reports it.
pub(crate) fn client_err(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::WrongPassword => exit::Failure {
            code: exit::WRONG_KEY,
            message: e.to_string(),
        }
        .into(),
        e => exit::other(sanitize(&e.to_string())),
    }
}

/// A client for `args`, its certificate pinned (first use pins what the server shows).
fn connect(args: &ServerArgs, servers: &mut Servers) -> Result<(String, ServerClient)> {
    let base = servers::base(&args.server)?;
    let fp = servers::pin(&base, args.server_fingerprint.as_deref(), servers)?;
    let c = ServerClient::new(&base, fp.as_deref()).map_err(client_err)?;
    Ok((base, c))
}

/// Runs `cloud register`.
pub fn register(cmd: &RegisterCmd) -> Result<u8> {
    let code = match &cmd.enrollment_code_file {
        Some(f) => read_password_file(f, "--enrollment-code-file")?,
        None => env_secret(ENROLLMENT_CODE_ENV).ok_or_else(|| {
            exit::other(format!(
                "no enrollment code: use --enrollment-code-file or {ENROLLMENT_CODE_ENV}"
            ))
        })?,
    };
    let code = String::from_utf8(code.to_vec())
        .map_err(|_| exit::usage("the enrollment code is ASCII"))?;
    let mut servers = Servers::load()?;
    let (base, c) = connect(&cmd.server, &mut servers)?;
    let pw = password(cmd.password_file.as_deref(), &cmd.account, true)?;
    c.register(&cmd.account, code.trim(), &pw)
        .map_err(client_err)?;
    servers.save()?;
    println!(
        "Account {} registered on {} (the server holds no copy of the password). Log in with \
         `keybag cloud login`.",
        sanitize(&cmd.account),
        sanitize(&base)
    );
    Ok(exit::OK)
}

/// Runs `cloud login`.
pub fn login(cmd: &LoginCmd) -> Result<u8> {
    let mut servers = Servers::load()?;
    let (base, c) = connect(&cmd.server, &mut servers)?;
    let pw = password(cmd.password_file.as_deref(), &cmd.account, false)?;
    let s = c.login(&cmd.account, &pw).map_err(client_err)?;
    let e = servers.entry(&base);
    e.account = Some(cmd.account.clone());
    e.token = Some(s.token.to_string());
    e.expires = s.expires;
    servers.save()?;
    if cmd.server.json {
        print_json(
            &serde_json::json!({"server": base, "account": cmd.account, "expires": s.expires}),
        )?;
    } else {
        println!(
            "Logged in to {} as {}{}",
            sanitize(&base),
            sanitize(&cmd.account),
            s.expires
                .map(|x| format!(" until {}", iso8601(x)))
                .unwrap_or_default()
        );
    }
    Ok(exit::OK)
}

/// Runs `cloud logout`.
pub fn logout(cmd: &ServerOnly) -> Result<u8> {
    let mut servers = Servers::load()?;
    let (base, c) = connect(&cmd.server, &mut servers)?;
    if let Ok(t) = session(&mut servers, &base) {
        // A token the server no longer knows is logged out already.
        let _ = c.logout(&t);
    }
    let e = servers.entry(&base);
    e.token = None;
    e.expires = None;
    servers.save()?;
    println!("Logged out of {}", sanitize(&base));
    Ok(exit::OK)
}

/// Runs `cloud status`.
pub fn status(cmd: &ServerOnly) -> Result<u8> {
    let mut servers = Servers::load()?;
    let (base, c) = connect(&cmd.server, &mut servers)?;
    let t = session(&mut servers, &base)?;
    let s = c.status(&t).map_err(client_err)?;
    if cmd.server.json {
        print_json(&s)?;
        return Ok(exit::OK);
    }
    println!(
        "{} on {}: {} of {} used",
        sanitize(s["account"].as_str().unwrap_or("?")),
        sanitize(&base),
        human_bytes(s["used_bytes"].as_u64().unwrap_or(0)),
        human_bytes(s["quota_bytes"].as_u64().unwrap_or(0))
    );
    print_devices(&s["devices"]);
    Ok(exit::OK)
}

fn print_devices(v: &serde_json::Value) {
    for d in v.as_array().into_iter().flatten() {
        let when = |k: &str| d[k].as_i64().map_or_else(|| "never".into(), iso8601);
        println!(
            "  {}  {:<20} last backup {}{}",
            &d["id"].as_str().unwrap_or("")[..8.min(d["id"].as_str().unwrap_or("").len())],
            sanitize(d["name"].as_str().unwrap_or("")),
            when("last_snapshot"),
            if d["revoked"].as_bool() == Some(true) {
                "  (revoked)"
            } else {
                ""
            }
        );
    }
}

/// Runs `cloud devices …`.
pub fn devices(cmd: &DevicesCommand) -> Result<u8> {
    let args = match cmd {
        DevicesCommand::List(s) => &s.server,
        DevicesCommand::Add { server, .. } | DevicesCommand::Revoke { server, .. } => server,
    };
    let mut servers = Servers::load()?;
    let (base, c) = connect(args, &mut servers)?;
    let t = session(&mut servers, &base)?;
    match cmd {
        DevicesCommand::List(_) => {
            let v = c.devices(&t).map_err(client_err)?;
            if args.json {
                print_json(&v)?;
            } else {
                print_devices(&v);
            }
        }
        DevicesCommand::Add {
            name,
            scope,
            token_file,
            ..
        } => {
            let v = c.add_device(&t, name, scope).map_err(client_err)?;
            let token = Zeroizing::new(v["token"].as_str().unwrap_or_default().to_string());
            crate::commands::serve::write_secret(token_file, &token)?;
            if args.json {
                print_json(&serde_json::json!({"device": v["device"], "scope": v["scope"]}))?;
            } else {
                println!(
                    "Device {} ({}) enrolled; its {} token is in {}",
                    sanitize(name),
                    v["device"].as_str().unwrap_or(""),
                    scope,
                    token_file.display()
                );
            }
        }
        DevicesCommand::Revoke { id, .. } => {
            c.revoke_device(&t, id).map_err(client_err)?;
            println!("Device {} revoked", sanitize(id));
        }
    }
    Ok(exit::OK)
}
