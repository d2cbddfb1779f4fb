//! Opening a repository from the command line: where it is, what unlocks it, and where this
//! client keeps what it saw of it (rollback detection).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use vault::keys::{RecoveryKey, Secret};
use vault::snapshot::ChainState;
use vault::{Repository, Snapshots};
use zeroize::Zeroizing;

use crate::exit;
use crate::secrets::read_password_file;

/// Environment variable: the repository's password.
pub const REPO_PASSWORD_ENV: &str = "KEYBAG_REPO_PASSWORD";
/// Environment variable: a recovery key.
pub const RECOVERY_KEY_ENV: &str = "KEYBAG_RECOVERY_KEY";
/// Environment variable: a new repository password (`init`, `key add`, `key rotate`).
pub const NEW_REPO_PASSWORD_ENV: &str = "KEYBAG_NEW_REPO_PASSWORD";
/// Environment variable: where client state is kept.
pub const STATE_DIR_ENV: &str = "KEYBAG_STATE_DIR";

/// Where the repository is and what opens it.
#[derive(Debug, Args)]
pub struct RepoArgs {
    /// The repository: a folder, s3://bucket/prefix, or https://server (a `keybag serve`).
    #[arg(long, value_name = "REPO", env = "KEYBAG_REPO")]
    pub repo: String,
    #[command(flatten)]
    pub server: super::servers::ServerAccess,
    /// Read the repository password from the first line of FILE ('-' = stdin).
    #[arg(long, value_name = "FILE", help_heading = "Unlocking")]
    pub repo_password_file: Option<PathBuf>,
    /// Open with a recovery key read from FILE instead of the password.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Unlocking",
        conflicts_with = "repo_password_file"
    )]
    pub recovery_key_file: Option<PathBuf>,
    /// Where this client remembers the newest snapshot it saw of each repository (rollback
    /// detection); default $KEYBAG_STATE_DIR, else $XDG_STATE_HOME/keybag/vaults, else
    /// ~/.local/state/keybag/vaults.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The secret that opens a repository.
pub enum RepoSecret {
    /// A password.
    Password(Zeroizing<Vec<u8>>),
    /// A recovery key.
    Recovery(RecoveryKey),
}

impl RepoSecret {
    /// As the vault takes it.
    pub fn as_secret(&self) -> Secret<'_> {
        match self {
            RepoSecret::Password(p) => Secret::Password(p),
            RepoSecret::Recovery(r) => Secret::Recovery(r),
        }
    }
}

fn env_bytes(name: &str) -> Option<Zeroizing<Vec<u8>>> {
    use std::os::unix::ffi::OsStringExt;
    let v = Zeroizing::new(std::env::var_os(name)?.into_vec());
    (!v.is_empty()).then_some(v)
}

fn recovery(text: &[u8]) -> Result<RecoveryKey> {
    let s = std::str::from_utf8(text).map_err(|_| exit::usage("a recovery key is ASCII"))?;
    RecoveryKey::parse(s).map_err(|e| exit::usage(e.to_string()))
}

/// The repository's password or recovery key: files first, then the environment, then a
/// prompt on a terminal.
pub fn secret(args: &RepoArgs) -> Result<RepoSecret> {
    if let Some(p) = &args.repo_password_file {
        return Ok(RepoSecret::Password(read_password_file(
            p,
            "--repo-password-file",
        )?));
    }
    if let Some(p) = &args.recovery_key_file {
        let text = read_password_file(p, "--recovery-key-file")?;
        return Ok(RepoSecret::Recovery(recovery(&text)?));
    }
    if let Some(pw) = env_bytes(REPO_PASSWORD_ENV) {
        return Ok(RepoSecret::Password(pw));
    }
    if let Some(text) = env_bytes(RECOVERY_KEY_ENV) {
        return Ok(RepoSecret::Recovery(recovery(&text)?));
    }
    if std::io::stdin().is_terminal() {
        let pw = Zeroizing::new(
            rpassword::prompt_password(format!("Repository password for {}: ", args.repo))
                .context("reading the password from the terminal")?
                .into_bytes(),
        );
        if !pw.is_empty() {
            return Ok(RepoSecret::Password(pw));
        }
    }
    Err(exit::other(format!(
        "{}: no repository password given: use --repo-password-file, {REPO_PASSWORD_ENV}, \
         --recovery-key-file, {RECOVERY_KEY_ENV} or a terminal",
        args.repo
    )))
}

/// A new repository password: `file`, else `KEYBAG_NEW_REPO_PASSWORD`, else a prompt asked
/// twice.
pub fn new_password(file: Option<&Path>, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(p) = file {
        return read_password_file(p, "--new-password-file");
    }
    if let Some(pw) = env_bytes(NEW_REPO_PASSWORD_ENV) {
        return Ok(pw);
    }
    if std::io::stdin().is_terminal() {
        let a = Zeroizing::new(
            rpassword::prompt_password(format!("New password for {what}: "))
                .context("reading the password from the terminal")?
                .into_bytes(),
        );
        let b = Zeroizing::new(
            rpassword::prompt_password("Again: ")
                .context("reading the password from the terminal")?
                .into_bytes(),
        );
        if a != b {
            return Err(exit::other("the two passwords differ"));
        }
        if a.is_empty() {
            return Err(exit::other("empty password"));
        }
        return Ok(a);
    }
    Err(exit::other(format!(
        "{what}: no new password given: use --new-password-file, {NEW_REPO_PASSWORD_ENV} or a \
         terminal"
    )))
}

/// Opens the repository named by `args`.
pub fn open(args: &RepoArgs) -> Result<Repository> {
    let storage = super::servers::storage(&args.repo, &args.server)?;
    let secret = secret(args)?;
    let spinner = crate::progress::spinner("opening the repository (deriving its key)".into());
    let r = Repository::open(storage, &secret.as_secret());
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    Ok(r?)
}

/// This client's state folder.
pub fn state_dir(args: &RepoArgs) -> PathBuf {
    if let Some(d) = &args.state_dir {
        return d.clone();
    }
    if let Some(d) = std::env::var_os(super::repo::STATE_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("keybag/vaults");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/keybag/vaults")
}

/// The state file of `repo` for this client.
pub fn state_file(args: &RepoArgs, repo: &Repository) -> PathBuf {
    ChainState::path(&state_dir(args), &repo.id())
}

/// Every snapshot, checked against what this client saw before (a rollback is refused), and
/// recorded as seen.
pub fn snapshots(args: &RepoArgs, repo: &Repository) -> Result<Snapshots> {
    // The state before the listing: what a concurrent push of this client recorded there
    // is already in the repository when the listing is read.
    let path = state_file(args, repo);
    let mut st = ChainState::load(&path)?;
    let all = repo.snapshots()?;
    st.observe(&all)?;
    st.save(&path)?;
    Ok(all)
}
