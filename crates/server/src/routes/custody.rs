//! `/v1/custody/…` and `/v1/contacts/…`: the records iCloud-style backup keeps per account
//! (see the `icloud` crate). Every record is opaque to the server (sealed by the client)
//! except `escrow`, which is sealed to the service's own escrow key: in standard custody the
//! server opens it for the account's owner after a login ("available after authentication"),
//! and the operator can open it too. In end-to-end custody there is no `escrow` record.
//!
//! * `GET /v1/custody/escrow-key`: the service's escrow public key (hex);
//! * `GET /v1/custody/records`: the names of the account's records;
//! * `GET`/`PUT`/`DELETE /v1/custody/records/{name}`: one record (`{"value": base64}`);
//!   reading takes any token of the account, writing and deleting an owner's;
//! * `POST /v1/custody/escrow/open`: the `escrow` record opened (owner only; 404 without one);
//! * `GET /v1/contacts/{account}/key`: another account's published `contact-key` record;
//! * `PUT /v1/contacts/{account}/packets`: leaves a recovery-contact packet (sealed by the
//!   sender to that key) in that account as `packet.<sender>`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

use super::{ApiError, AppState, Caller};
use crate::admin::now;
use crate::auth::Scope;

/// Largest record.
const MAX_RECORD: usize = 64 << 10;
/// Most records per account.
const MAX_RECORDS: usize = 256;

/// What a record's value travels as.
#[derive(serde::Deserialize)]
pub struct Record {
    value: String,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The associated data the `escrow` record is sealed with: it names its account, so one
/// account's escrow record copied into another does not open.
pub fn escrow_aad(account: &str) -> Vec<u8> {
    format!("keybag.escrow/v1:{account}").into_bytes()
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 96
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            "a record name is 1 to 96 letters, digits, '.', '_', '-' or '@'",
        ))
    }
}

fn decode(r: &Record) -> Result<Vec<u8>, ApiError> {
    let v = b64()
        .decode(&r.value)
        .map_err(|_| ApiError::bad("value: not base64"))?;
    if v.len() > MAX_RECORD {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a record holds at most {MAX_RECORD} bytes"),
        ));
    }
    Ok(v)
}

fn any_scope(caller: &Caller) -> Result<&str, ApiError> {
    if caller.scope == Scope::Admin {
        return Err(ApiError::forbidden(
            "an admin token reads no account's records",
        ));
    }
    caller.account()
}

/// `GET /v1/custody/escrow-key`.
pub async fn escrow_key(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    any_scope(&caller)?;
    let secret = crate::admin::escrow_secret(&st.db).await?;
    Ok(Json(json!({
        "public": hex::encode(dataprotection::curve::public_of(&secret))
    })))
}

/// `GET /v1/custody/records`.
pub async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<String>>, ApiError> {
    let id = any_scope(&caller)?;
    let all = st.db.custody_all(id).await?;
    Ok(Json(all.into_iter().map(|(n, _)| n).collect()))
}

/// `GET /v1/custody/records/{name}`.
pub async fn get(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_name(&name)?;
    let id = any_scope(&caller)?;
    let v = st
        .db
        .custody_get(id, &name)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(json!({ "value": b64().encode(v) })))
}

/// `PUT /v1/custody/records/{name}`.
pub async fn put(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Json(rec): Json<Record>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Owner)?;
    check_name(&name)?;
    let id = caller.account()?;
    let v = decode(&rec)?;
    if st.db.custody_get(id, &name).await?.is_none()
        && st.db.custody_all(id).await?.len() >= MAX_RECORDS
    {
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("an account holds at most {MAX_RECORDS} records"),
        ));
    }
    st.db.custody_put(id, &name, &v, now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/custody/records/{name}`.
pub async fn delete(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Owner)?;
    check_name(&name)?;
    if st.db.custody_delete(caller.account()?, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

/// `POST /v1/custody/escrow/open`.
pub async fn escrow_open(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Owner)?;
    let id = caller.account()?;
    let sealed = st.db.custody_get(id, "escrow").await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no escrow record: this account's custody is end-to-end (or was never set up)",
        )
    })?;
    let acct = st.db.account(id).await?.ok_or_else(ApiError::not_found)?;
    let secret = crate::admin::escrow_secret(&st.db).await?;
    let plain = dataprotection::curve::open(&secret, &escrow_aad(&acct.name), &sealed)
        .map_err(|_| ApiError::new(StatusCode::CONFLICT, "the escrow record does not open"))?;
    Ok(Json(json!({ "value": b64().encode(&plain[..]) })))
}

async fn account_named(st: &AppState, name: &str) -> Result<crate::db::Account, ApiError> {
    crate::admin::check_name(name).map_err(|_| ApiError::not_found())?;
    st.db
        .account_by_name(name)
        .await?
        .ok_or_else(ApiError::not_found)
}

/// `GET /v1/contacts/{account}/key`.
pub async fn contact_key(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Owner)?;
    let other = account_named(&st, &name).await?;
    let v = st
        .db
        .custody_get(&other.id, "contact-key")
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(json!({ "value": b64().encode(v) })))
}

/// `PUT /v1/contacts/{account}/packets`.
pub async fn contact_packet(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Json(rec): Json<Record>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Owner)?;
    let me = st
        .db
        .account(caller.account()?)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let other = account_named(&st, &name).await?;
    if other.id == me.id {
        return Err(ApiError::bad(
            "an account cannot be its own recovery contact",
        ));
    }
    let v = decode(&rec)?;
    st.db
        .custody_put(&other.id, &format!("packet.{}", me.name), &v, now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
