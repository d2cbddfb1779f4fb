//! What the operator does (`keybag serve admin …`), straight on the database: accounts (each
//! with a one-time enrollment code, given to its person, who registers a password with it
//! through OPAQUE), password resets (a new code; every token of the account revoked), quotas,
//! and admin tokens for the HTTP admin API.

use base64::Engine;
use opaque_ke::ServerSetup;

use crate::auth::{self, Scope, Suite};
use crate::db::{Account, Db};
use crate::{Error, Result};

/// How long an enrollment code stays valid (seconds).
pub const ENROLL_TTL: i64 = 7 * 24 * 3600;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The OPAQUE server setup every process shares: made by the first one, kept in the database.
pub async fn server_setup(db: &Db) -> Result<ServerSetup<Suite>> {
    let fresh = ServerSetup::<Suite>::new(&mut rand::rngs::OsRng);
    let stored = db
        .set_meta_if_absent("opaque_setup", &b64().encode(fresh.serialize()))
        .await?;
    let bytes = b64()
        .decode(stored)
        .map_err(|e| Error::Db(format!("opaque_setup: {e}")))?;
    ServerSetup::<Suite>::deserialize(&bytes).map_err(|e| Error::Db(format!("opaque_setup: {e}")))
}

/// The service's escrow key (X25519, made by the first process, kept in the database like
/// the OPAQUE setup): in standard custody an account's service key is sealed to its public
/// half, so the operator can open it (spec §5.2: "available after authentication").
pub async fn escrow_secret(db: &Db) -> Result<dataprotection::Key256> {
    let fresh = dataprotection::curve::new_private();
    let stored = db
        .set_meta_if_absent("escrow_x25519", &fresh.to_hex())
        .await?;
    dataprotection::Key256::from_hex(&stored).map_err(|e| Error::Db(format!("escrow_x25519: {e}")))
}

/// A new account: returns it and its enrollment code (shown once).
pub async fn add_account(db: &Db, name: &str, quota: i64) -> Result<(Account, String)> {
    check_name(name)?;
    let (code, hash) = auth::new_code();
    let id = auth::new_id();
    let t = now();
    db.create_account(&id, name, quota, &hash, t + ENROLL_TTL, t)
        .await?;
    let acct = db
        .account(&id)
        .await?
        .ok_or_else(|| Error::Db("account vanished".into()))?;
    Ok((acct, code))
}

/// An operator-run password reset: a new enrollment code, every token of the account revoked.
/// (What the person's data is then readable with depends on the custody mode.)
pub async fn reset_account(db: &Db, name: &str) -> Result<String> {
    let acct = db
        .account_by_name(name)
        .await?
        .ok_or_else(|| Error::Config(format!("no account {name:?}")))?;
    let (code, hash) = auth::new_code();
    db.set_enrollment(&acct.id, &hash, now() + ENROLL_TTL)
        .await?;
    db.revoke_tokens_of(&acct.id, None).await?;
    Ok(code)
}

/// Sets a quota by account name.
pub async fn set_quota(db: &Db, name: &str, bytes: i64) -> Result<()> {
    let acct = db
        .account_by_name(name)
        .await?
        .ok_or_else(|| Error::Config(format!("no account {name:?}")))?;
    db.set_quota(&acct.id, bytes).await
}

/// A new admin token (shown once).
pub async fn add_admin_token(db: &Db) -> Result<String> {
    let (t, h) = auth::new_token();
    db.add_token(&h, None, None, Scope::Admin.as_str(), None, now())
        .await?;
    Ok(t)
}

/// Checks an account name: 1–64 of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{:?}: an account name is 1 to 64 letters, digits, '.', '_', '-' or '@'",
            name.chars().take(80).collect::<String>()
        )))
    }
}
