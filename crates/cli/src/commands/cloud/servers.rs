//! What this client remembers of the servers it uses: each one's pinned certificate
//! fingerprint (trust on first use, or `--server-fingerprint`), the account logged in and its
//! session token. Kept in `servers.json` (mode 0600) in `$KEYBAG_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/keybag`, else `~/.config/keybag`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use zeroize::Zeroizing;

use crate::exit;

/// One server.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// SHA-256 of its certificate, hex.
    pub fingerprint: Option<String>,
    /// The account logged in.
    pub account: Option<String>,
    /// The session token (an `owner` token).
    pub token: Option<String>,
    /// When it expires (Unix seconds).
    pub expires: Option<i64>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("fingerprint", &self.fingerprint)
            .field("account", &self.account)
            .field("token", &self.token.as_ref().map(|_| "(redacted)"))
            .finish()
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(t) = self.token.as_mut() {
            zeroize::Zeroize::zeroize(t);
        }
    }
}

/// Every server this client knows, by base URL.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Servers(pub BTreeMap<String, Entry>);

fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KEYBAG_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("keybag");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".config/keybag")
}

/// `https://host:port` from what a person typed (trailing slashes removed).
pub fn base(url: &str) -> Result<String> {
    let b = url.trim_end_matches('/');
    if !(b.starts_with("https://") || b.starts_with("http://")) {
        return Err(exit::usage(format!("{url}: a server is an https:// URL")));
    }
    Ok(b.to_string())
}

impl Servers {
    /// Reads the file (empty when absent).
    pub fn load() -> Result<Servers> {
        let p = dir().join("servers.json");
        match std::fs::read(&p) {
            Ok(b) => Ok(serde_json::from_slice(&b).with_context(|| {
                format!("{}: damaged; remove it and log in again", p.display())
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Servers::default()),
            Err(e) => Err(e).with_context(|| p.display().to_string()),
        }
    }

    /// Writes the file (0600, through a rename).
    pub fn save(&self) -> Result<()> {
        let d = dir();
        std::fs::create_dir_all(&d).with_context(|| d.display().to_string())?;
        let p = d.join("servers.json");
        let mut tmp =
            tempfile::NamedTempFile::new_in(&d).with_context(|| d.display().to_string())?;
        let json = Zeroizing::new(serde_json::to_vec_pretty(self)?);
        std::io::Write::write_all(&mut tmp, &json).with_context(|| p.display().to_string())?;
        tmp.persist(&p).with_context(|| p.display().to_string())?;
        Ok(())
    }

    /// The entry of `base`, made if absent.
    pub fn entry(&mut self, base: &str) -> &mut Entry {
        self.0.entry(base.to_string()).or_default()
    }
}

/// The fingerprint to pin for `base`: given, remembered, or (first use) the one the server
/// shows, printed for the person to compare.
pub fn pin(base: &str, given: Option<&str>, servers: &mut Servers) -> Result<Option<String>> {
    if base.starts_with("http://") {
        return Ok(None);
    }
    if let Some(g) = given {
        let g: String = g
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_lowercase();
        if let Some(old) = &servers.entry(base).fingerprint {
            if *old != g {
                crate::output::warn(&format!(
                    "{base}: replacing the pinned certificate fingerprint {old} with the one given"
                ));
            }
        }
        servers.entry(base).fingerprint = Some(g.clone());
        return Ok(Some(g));
    }
    if let Some(f) = &servers.entry(base).fingerprint {
        return Ok(Some(f.clone()));
    }
    let seen = vault::storage::probe_fingerprint(base)?;
    eprintln!(
        "keybag: {base}: first connection; pinning its certificate, SHA-256 fingerprint\n    {seen}\n  \
         (compare it with what `keybag serve` printed; a later change is refused)"
    );
    servers.entry(base).fingerprint = Some(seen.clone());
    Ok(Some(seen))
}

/// Environment variable: a server token (a device's, from `keybag cloud devices add`).
pub const SERVER_TOKEN_ENV: &str = "KEYBAG_SERVER_TOKEN";

/// How to reach a repository on a `keybag serve` (REPO = https://host:port).
#[derive(Debug, Default, clap::Args)]
pub struct ServerAccess {
    /// For an https:// REPO: the token, from the first line of FILE (else
    /// KEYBAG_SERVER_TOKEN, else the session of `keybag cloud login`).
    #[arg(long, value_name = "FILE", help_heading = "Server")]
    pub server_token_file: Option<PathBuf>,
    /// For an https:// REPO: pin this certificate fingerprint (SHA-256, hex) instead of the
    /// one remembered or, on first use, the one the server shows.
    #[arg(long, value_name = "HEX", help_heading = "Server")]
    pub server_fingerprint: Option<String>,
}

/// Whether `repo` names a server.
pub fn is_server(repo: &str) -> bool {
    repo.starts_with("https://") || repo.starts_with("http://")
}

/// The storage of `repo`: a folder, a bucket, or (https://) the account's repository on a
/// server, with its token and pinned certificate.
pub fn storage(
    repo: &str,
    access: &ServerAccess,
) -> Result<std::sync::Arc<dyn vault::storage::Storage>> {
    if !is_server(repo) {
        return Ok(vault::storage::open(repo)?);
    }
    let base = base(repo)?;
    let mut servers = Servers::load()?;
    let fp = pin(&base, access.server_fingerprint.as_deref(), &mut servers)?;
    let token = if let Some(f) = &access.server_token_file {
        let t = crate::secrets::read_password_file(f, "--server-token-file")?;
        Zeroizing::new(
            String::from_utf8(t.to_vec())
                .map_err(|_| exit::usage("--server-token-file: a token is ASCII"))?
                .trim()
                .to_string(),
        )
    } else if let Some(t) = std::env::var_os(SERVER_TOKEN_ENV).filter(|t| !t.is_empty()) {
        Zeroizing::new(t.to_string_lossy().trim().to_string())
    } else {
        session(&mut servers, &base)?
    };
    servers.save()?;
    Ok(std::sync::Arc::new(vault::storage::HttpStorage::new(
        vault::storage::HttpSettings::new(&base, token, fp),
    )?))
}

/// The session token of `base` (an error naming `keybag cloud login` when there is none).
pub fn session(servers: &mut Servers, base: &str) -> Result<Zeroizing<String>> {
    let e = servers.entry(base);
    let now = crate::output::unix_seconds(std::time::SystemTime::now());
    match (&e.token, e.expires) {
        (Some(t), Some(x)) if x > now => Ok(Zeroizing::new(t.clone())),
        (Some(t), None) => Ok(Zeroizing::new(t.clone())),
        _ => Err(exit::other(format!(
            "{base}: not logged in (or the session expired): run `keybag cloud login --server \
             {base} --account NAME`, or give a device token with --server-token-file"
        ))),
    }
}
