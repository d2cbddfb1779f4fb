//! `keybag serve`: run the multi-tenant backup service (crate `server`), and the operator's
//! commands on its database (`keybag serve admin …`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use server::ServeOptions;

use crate::exit;
use crate::output::{human_bytes, iso8601, print_json, sanitize};

/// Shown after `keybag serve --help`.
pub const SERVE_HELP: &str = "\
Serves HTTPS with the certificate given by --tls-cert/--tls-key, else a self-signed one made
at first start and kept in the data folder; its SHA-256 fingerprint is printed at start, and
clients pin it. Metadata is a SQLite file in the data folder unless --database
postgres://… is given; objects go in the data folder unless --blobs s3://bucket/prefix is
given (endpoint and credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY). Several servers on one PostgreSQL and one bucket serve the same
accounts. SIGINT or SIGTERM stops taking connections and finishes requests under way.

The operator makes accounts with `keybag serve admin account add NAME --code-file FILE`; the
person registers a password with that enrollment code (`keybag cloud register`), and the
server never learns it.";

/// Where the server keeps its state (shared by `serve` and `serve admin`).
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The data folder: SQLite metadata, the self-signed certificate, objects.
    #[arg(
        long,
        value_name = "DIR",
        env = "KEYBAG_SERVE_DATA",
        default_value = "keybag-serve"
    )]
    pub data: PathBuf,
    /// Keep metadata in PostgreSQL (postgres://user@host:port/db) instead of the data folder.
    #[arg(long, value_name = "URL", env = "KEYBAG_SERVE_DATABASE")]
    pub database: Option<String>,
    /// Keep objects in S3 (s3://bucket/prefix) instead of the data folder.
    #[arg(long, value_name = "URL", env = "KEYBAG_SERVE_BLOBS")]
    pub blobs: Option<String>,
    /// The quota of new accounts, in GiB.
    #[arg(long, value_name = "GIB", default_value_t = 100)]
    pub default_quota_gib: u64,
}

/// `keybag serve`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServeCmd {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// The operator's certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS (a loopback address only: behind a local proxy).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub insecure_http: bool,
    /// The largest request body, in MiB (a pack is at most 16 MiB).
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub max_body_mib: usize,
    /// Requests per second each token may make (bursts of twice that).
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub rate_limit: u32,
    /// Write `{"addr": …, "fingerprint": …}` to FILE once listening (for scripts and tests).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// The operator's commands.
    #[command(subcommand)]
    pub admin: Option<ServeSub>,
}

/// `keybag serve admin`.
#[derive(Debug, Subcommand)]
pub enum ServeSub {
    /// The operator's commands, straight on the database.
    Admin {
        /// What to do.
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// `keybag serve admin …`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Accounts: add, list, reset, quota.
    Account {
        /// What to do.
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Restore an account's newest iCloud-style device backup onto a new device folder, from
    /// the service's own stores: works in standard custody (the service escrows the key),
    /// fails in end-to-end custody. What "the operator can read your backups" means.
    Restore {
        #[command(flatten)]
        store: StoreArgs,
        /// The account.
        #[arg(long)]
        account: String,
        /// The new device folder to restore onto (absent or empty).
        #[arg(long, value_name = "DIR")]
        device: PathBuf,
        /// A snapshot ID prefix (default: the newest).
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// A new admin token for the HTTP admin API (written to FILE, mode 0600).
    Token {
        #[command(flatten)]
        store: StoreArgs,
        /// Where to write it (must not exist).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
    },
}

/// `keybag serve admin account …`.
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// A new account; its one-time enrollment code goes to FILE (mode 0600) for its person.
    Add {
        #[command(flatten)]
        store: StoreArgs,
        /// Its name (letters, digits, '.', '_', '-', '@').
        name: String,
        /// Its quota in GiB (default: --default-quota-gib).
        #[arg(long, value_name = "GIB")]
        quota_gib: Option<u64>,
        /// Where to write the enrollment code (must not exist).
        #[arg(long, value_name = "FILE")]
        code_file: PathBuf,
    },
    /// Every account, its usage and quota.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Reset a forgotten password: a new enrollment code to FILE; every token revoked.
    Reset {
        #[command(flatten)]
        store: StoreArgs,
        /// The account.
        name: String,
        /// Where to write the new enrollment code (must not exist).
        #[arg(long, value_name = "FILE")]
        code_file: PathBuf,
    },
    /// Set an account's quota.
    Quota {
        #[command(flatten)]
        store: StoreArgs,
        /// The account.
        name: String,
        /// The quota in GiB.
        gib: u64,
    },
}

fn gib(n: u64) -> Result<i64> {
    i64::try_from(
        n.checked_mul(1 << 30)
            .ok_or_else(|| exit::usage("quota too large"))?,
    )
    .map_err(|_| exit::usage("quota too large"))
}

fn options(store: &StoreArgs, listen: SocketAddr) -> Result<ServeOptions> {
    let mut o = ServeOptions::new(listen, store.data.clone());
    o.database = store.database.clone();
    o.blobs = store.blobs.clone();
    o.default_quota = gib(store.default_quota_gib)?;
    Ok(o)
}

fn server_err(e: server::Error) -> anyhow::Error {
    match e {
        server::Error::Config(m) | server::Error::Conflict(m) => exit::other(sanitize(&m)),
        e => exit::other(sanitize(&e.to_string())),
    }
}

/// Runs `keybag serve` or `keybag serve admin …`.
pub fn run(cmd: &ServeCmd) -> Result<u8> {
    if let Some(ServeSub::Admin { command }) = &cmd.admin {
        return admin(command);
    }
    let mut o = options(&cmd.store, cmd.listen)?;
    o.insecure_http = cmd.insecure_http;
    o.tls = cmd.tls_cert.clone().zip(cmd.tls_key.clone());
    o.max_body = cmd
        .max_body_mib
        .checked_mul(1 << 20)
        .filter(|n| *n >= 1 << 20)
        .ok_or_else(|| exit::usage("--max-body-mib: 1 or more"))?;
    o.rate_per_token = cmd.rate_limit.max(1);
    let ready_file = cmd.ready_file.clone();
    server::run(o, move |r| {
        let scheme = if r.fingerprint.is_some() { "https" } else { "http" };
        eprintln!("keybag serve: listening on {scheme}://{}", r.addr);
        if let Some(fp) = &r.fingerprint {
            eprintln!("keybag serve: certificate SHA-256 fingerprint {fp}");
        }
        if let Some(f) = ready_file {
            let j = serde_json::json!({"addr": r.addr.to_string(), "url": format!("{scheme}://{}", r.addr), "fingerprint": r.fingerprint});
            // Written whole through a rename: a script polling for it never reads half.
            let tmp = f.with_extension("tmp");
            if std::fs::write(&tmp, j.to_string()).and_then(|()| std::fs::rename(&tmp, &f)).is_err() {
                eprintln!("keybag serve: cannot write {}", f.display());
            }
        }
    })
    .map_err(server_err)?;
    eprintln!("keybag serve: stopped");
    Ok(exit::OK)
}

fn admin(cmd: &AdminCommand) -> Result<u8> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    match cmd {
        AdminCommand::Restore {
            store,
            account,
            device,
            snapshot,
        } => {
            let o = options(store, any)?;
            return crate::commands::device_cloud::admin_restore(
                &o,
                account,
                device,
                snapshot.as_deref(),
            );
        }
        AdminCommand::Token { store, token_file } => {
            let o = options(store, any)?;
            let t = zeroize::Zeroizing::new(server::ops::add_admin_token(&o).map_err(server_err)?);
            write_secret(token_file, &t)?;
            println!("Admin token written to {}", token_file.display());
        }
        AdminCommand::Account { command } => match command {
            AccountCommand::Add {
                store,
                name,
                quota_gib,
                code_file,
            } => {
                let o = options(store, any)?;
                let q = quota_gib.map(gib).transpose()?;
                if code_file.exists() {
                    return Err(exit::other(format!(
                        "{}: exists already (give a new file)",
                        code_file.display()
                    )));
                }
                let (a, code) = server::ops::add_account(&o, name, q).map_err(server_err)?;
                let code = zeroize::Zeroizing::new(code);
                write_secret(code_file, &code)?;
                println!(
                    "Account {} made (quota {}); its enrollment code is in {} (valid 7 days, \
                     one use): give it to its person for `keybag cloud register`",
                    sanitize(&a.name),
                    human_bytes(a.quota_bytes as u64),
                    code_file.display()
                );
            }
            AccountCommand::List { store, json } => {
                let o = options(store, any)?;
                let all = server::ops::accounts(&o).map_err(server_err)?;
                if *json {
                    print_json(&all)?;
                } else {
                    for a in &all {
                        println!(
                            "{:<24} {:>10} of {:>10}  {}  made {}",
                            sanitize(&a.name),
                            human_bytes(a.used_bytes.max(0) as u64),
                            human_bytes(a.quota_bytes.max(0) as u64),
                            if a.registered {
                                "registered"
                            } else {
                                "awaiting registration"
                            },
                            iso8601(a.created)
                        );
                    }
                }
            }
            AccountCommand::Reset {
                store,
                name,
                code_file,
            } => {
                let o = options(store, any)?;
                if code_file.exists() {
                    return Err(exit::other(format!(
                        "{}: exists already (give a new file)",
                        code_file.display()
                    )));
                }
                let code = zeroize::Zeroizing::new(
                    server::ops::reset_account(&o, name).map_err(server_err)?,
                );
                write_secret(code_file, &code)?;
                println!(
                    "Account {}: every token revoked; the new enrollment code is in {}",
                    sanitize(name),
                    code_file.display()
                );
            }
            AccountCommand::Quota {
                store,
                name,
                gib: g,
            } => {
                let o = options(store, any)?;
                server::ops::set_quota(&o, name, gib(*g)?).map_err(server_err)?;
                println!("Account {}: quota {} GiB", sanitize(name), g);
            }
        },
    }
    Ok(exit::OK)
}

/// Writes a secret to a new file readable by its owner only.
pub fn write_secret(path: &std::path::Path, s: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}: cannot create (it must not exist)", path.display()))?;
    writeln!(f, "{s}").with_context(|| path.display().to_string())?;
    Ok(())
}
