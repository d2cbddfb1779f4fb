//! What the routes read from clients' bytes, in one place: object kinds and names, `Range`
//! and `Authorization` headers, the JSON bodies of the account routes, base64 fields and the
//! OPAQUE messages inside them. The routes call these functions (and deserialize these
//! types), so the `server_requests` fuzz target of `crates/fuzzing` drives the same code a
//! request does. Every function takes hostile input and answers `None`/`Err`, never panics.

use base64::Engine;
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerRegistration,
};
use serde::Deserialize;
use vault::storage::Kind;

use crate::auth::{Scope, Suite};

/// Longest bearer token accepted (tokens are 47 characters).
pub const MAX_TOKEN: usize = 200;
/// Longest device name.
pub const MAX_DEVICE_NAME: usize = 100;
/// Widest `Range` answered (2 GiB), so one request cannot ask for more than that in memory.
pub const MAX_RANGE: u64 = 1 << 31;

/// The kind of a `/v1/repo/{kind}/…` path segment; `None` for anything else (the config has
/// its own route).
pub fn kind(s: &str) -> Option<Kind> {
    Some(match s {
        "keys" => Kind::Keys,
        "data" => Kind::Data,
        "index" => Kind::Index,
        "snapshots" => Kind::Snapshots,
        "pending" => Kind::Pending,
        _ => return None,
    })
}

/// A `Range` header's value `bytes=a-b` (inclusive, as HTTP has it) as (offset, length);
/// `None` for any other form, `b < a`, or a range of [`MAX_RANGE`] bytes or more.
pub fn range(value: &str) -> Option<(u64, u64)> {
    let (a, b) = value.strip_prefix("bytes=")?.split_once('-')?;
    let a: u64 = a.parse().ok()?;
    let b: u64 = b.parse().ok()?;
    if b < a || b - a >= MAX_RANGE {
        return None;
    }
    Some((a, b - a + 1))
}

/// The token of an `Authorization: Bearer <token>` header's value: trimmed, non-empty and
/// shorter than [`MAX_TOKEN`].
pub fn bearer(value: &str) -> Option<&str> {
    let t = value.strip_prefix("Bearer ")?.trim();
    (!t.is_empty() && t.len() < MAX_TOKEN).then_some(t)
}

/// A standard-alphabet, padded base64 field of a JSON body.
pub fn base64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// A JSON request body as the routes' `Json<T>` extractor reads it (the same
/// `axum::Json::from_bytes`, after the content type is checked); the message says why not.
pub fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    axum::Json::<T>::from_bytes(body)
        .map(|axum::Json(t)| t)
        .map_err(|e| e.body_text())
}

/// `{account, code, message}`: the body of `POST /v1/register/start` and `/finish`.
#[derive(Clone, Debug, Deserialize)]
pub struct RegisterRequest {
    /// The account's name.
    pub account: String,
    /// The enrollment code the operator gave.
    pub code: String,
    /// The OPAQUE message, base64 (a registration request at start, an upload at finish).
    pub message: String,
}

/// `{account, message}`: the body of `POST /v1/login/start`.
#[derive(Clone, Debug, Deserialize)]
pub struct LoginStart {
    /// The account's name.
    pub account: String,
    /// The OPAQUE credential request, base64.
    pub message: String,
}

/// `{login, message}`: the body of `POST /v1/login/finish`.
#[derive(Clone, Debug, Deserialize)]
pub struct LoginFinish {
    /// The login the start answered.
    pub login: String,
    /// The OPAQUE credential finalization, base64.
    pub message: String,
}

/// `{name, scope}`: the body of `POST /v1/devices` (scope `backup` when absent).
#[derive(Clone, Debug, Deserialize)]
pub struct NewDevice {
    /// The device's name.
    pub name: String,
    /// Its token's scope: `backup` or `restore` ([`NewDevice::check`]).
    #[serde(default = "backup_scope")]
    pub scope: Scope,
}

fn backup_scope() -> Scope {
    Scope::Backup
}

impl NewDevice {
    /// Refuses a scope other than `backup` or `restore`, and a name that is empty, longer
    /// than [`MAX_DEVICE_NAME`] bytes or holds a control character.
    pub fn check(&self) -> Result<(), &'static str> {
        if !matches!(self.scope, Scope::Backup | Scope::Restore) {
            return Err("a device token is backup or restore");
        }
        if self.name.is_empty()
            || self.name.len() > MAX_DEVICE_NAME
            || self.name.chars().any(char::is_control)
        {
            return Err("a device name is 1 to 100 printable characters");
        }
        Ok(())
    }
}

/// `{name, quota_bytes}`: the body of `POST /v1/admin/accounts`.
#[derive(Clone, Debug, Deserialize)]
pub struct NewAccount {
    /// The account's name (checked by `admin::add_account`).
    pub name: String,
    /// Its quota; the server's default when absent.
    pub quota_bytes: Option<i64>,
}

/// `{bytes}`: the body of `PUT /v1/admin/accounts/{name}/quota`.
#[derive(Clone, Debug, Deserialize)]
pub struct Quota {
    /// The new quota (not negative: [`Quota::check`]).
    pub bytes: i64,
}

impl Quota {
    /// Refuses a negative quota.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.bytes < 0 {
            return Err("a quota is not negative");
        }
        Ok(())
    }
}

/// An OPAQUE registration request (`/v1/register/start`).
pub fn registration_request(b: &[u8]) -> Option<RegistrationRequest<Suite>> {
    RegistrationRequest::<Suite>::deserialize(b).ok()
}

/// An OPAQUE registration upload (`/v1/register/finish`).
pub fn registration_upload(b: &[u8]) -> Option<RegistrationUpload<Suite>> {
    RegistrationUpload::<Suite>::deserialize(b).ok()
}

/// An OPAQUE credential request (`/v1/login/start`).
pub fn credential_request(b: &[u8]) -> Option<CredentialRequest<Suite>> {
    CredentialRequest::<Suite>::deserialize(b).ok()
}

/// An OPAQUE credential finalization (`/v1/login/finish`).
pub fn credential_finalization(b: &[u8]) -> Option<CredentialFinalization<Suite>> {
    CredentialFinalization::<Suite>::deserialize(b).ok()
}

/// A stored OPAQUE password file (the database's copy of a registration upload).
pub fn password_file(b: &[u8]) -> Option<ServerRegistration<Suite>> {
    ServerRegistration::<Suite>::deserialize(b).ok()
}

/// A stored login state (the server's OPAQUE state that `/v1/login/start` saves, base64
/// before the `:` of its database row, and `/v1/login/finish` reads back).
pub fn login_state(b: &[u8]) -> Option<ServerLogin<Suite>> {
    ServerLogin::<Suite>::deserialize(b).ok()
}
