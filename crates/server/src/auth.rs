//! Who may do what.
//!
//! * **Passwords never reach the server**: accounts register and log in with OPAQUE
//!   (opaque-ke: Ristretto255, triple Diffie-Hellman with SHA-512, Argon2id as the key
//!   stretching function on the client). The server keeps only the OPAQUE password file; its
//!   OPRF seed (`ServerSetup`) is in the database so every server process shares it.
//! * **Tokens** are 32 random bytes (`kbt_` + base64url), sent as `Authorization: Bearer`; the
//!   database holds their SHA-256 only. Each has a scope:
//!   * `backup` (a device, append only): list objects, read the repository's metadata (config,
//!     keys, index, snapshots, pending marks: all sealed), add objects; never read data packs
//!     back, delete anything, or see other devices;
//!   * `restore`: read everything of its account;
//!   * `owner` (a logged-in person; expires): everything of the account, devices, forget/prune;
//!   * `admin` (the operator): accounts and quotas, nothing inside a repository.
//! * An object of another account is never reachable: paths carry no account, a token's
//!   account is its namespace (another account's object is simply not found: 404).

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The OPAQUE cipher suite.
pub struct Suite;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = argon2::Argon2<'static>;
}

/// A token's scope.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// A device that backs up: append only.
    Backup,
    /// Read everything of the account.
    Restore,
    /// The account's owner.
    Owner,
    /// The operator.
    Admin,
}

impl Scope {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Backup => "backup",
            Scope::Restore => "restore",
            Scope::Owner => "owner",
            Scope::Admin => "admin",
        }
    }

    /// From the stored form.
    pub fn parse(s: &str) -> Option<Scope> {
        Some(match s {
            "backup" => Scope::Backup,
            "restore" => Scope::Restore,
            "owner" => Scope::Owner,
            "admin" => Scope::Admin,
            _ => return None,
        })
    }
}

/// A new random token and its hash (what the database keeps).
pub fn new_token() -> (String, String) {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let t = format!(
        "kbt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    );
    let h = hash_secret(&t);
    (t, h)
}

/// A new random enrollment code (given to a person by the operator) and its hash.
pub fn new_code() -> (String, String) {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let c = hex::encode(b);
    let h = hash_secret(&c);
    (c, h)
}

/// SHA-256 hex of a token or code (both are 128+ random bits: no stretching needed).
pub fn hash_secret(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A random ID (accounts, devices, logins).
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// What a storage request does.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// List a kind.
    List,
    /// Read (or HEAD) an object.
    Read,
    /// Store an object.
    Write,
    /// Delete an object.
    Delete,
}

/// Whether `scope` may do `op` on an object of `kind` (a `vault::storage::Kind` directory
/// name: `""` for config, `keys`, `data`, `index`, `snapshots`, `pending`).
pub fn allows(scope: Scope, op: Op, kind: &str) -> bool {
    match scope {
        Scope::Owner => true,
        Scope::Restore => matches!(op, Op::List | Op::Read),
        Scope::Backup => match op {
            Op::List => true,
            // Sealed metadata is needed to deduplicate and to name a parent; data is not.
            Op::Read => kind != "data",
            Op::Write => matches!(kind, "data" | "index" | "snapshots"),
            Op::Delete => false,
        },
        Scope::Admin => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, ha) = new_token();
        let (b, hb) = new_token();
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(hash_secret(&a), ha);
        assert!(a.starts_with("kbt_") && a.len() > 40);
        assert!(!ha.contains(&a));
    }

    #[test]
    fn backup_tokens_append_only() {
        assert!(allows(Scope::Backup, Op::Write, "data"));
        assert!(!allows(Scope::Backup, Op::Read, "data"));
        assert!(!allows(Scope::Backup, Op::Delete, "snapshots"));
        assert!(!allows(Scope::Backup, Op::Write, "keys"));
        assert!(allows(Scope::Restore, Op::Read, "data"));
        assert!(!allows(Scope::Restore, Op::Write, "data"));
        assert!(!allows(Scope::Admin, Op::Read, "index"));
        assert!(allows(Scope::Owner, Op::Delete, "data"));
    }
}
