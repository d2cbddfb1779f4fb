//! Accounts, sessions, devices, the operator's API.
//!
//! * `POST /v1/register/start|finish`: OPAQUE registration with the enrollment code the
//!   operator gave (one use; a password reset issues a new one).
//! * `POST /v1/login/start|finish`: OPAQUE login; success gives an `owner` token valid for
//!   [`SESSION_TTL`]. Failed logins are throttled per account and per address.
//! * `POST /v1/logout`: revokes the token used.
//! * `GET /v1/status`, `GET|POST /v1/devices`, `DELETE /v1/devices/{id}` (owner).
//! * `/v1/admin/…` (admin tokens): accounts, password resets, quotas.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use opaque_ke::{ServerLogin, ServerLoginParameters, ServerRegistration};
use serde::{Deserialize, Serialize};

use super::{peer, ApiError, AppState, Caller};
use crate::admin::now;
use crate::auth::{self, Scope, Suite};
use crate::parse::{self, LoginFinish, LoginStart, NewAccount, NewDevice, Quota, RegisterRequest};

/// How long a login's `owner` token lasts (seconds).
pub const SESSION_TTL: i64 = 12 * 3600;
/// Failed logins allowed in [`THROTTLE_WINDOW`], per account and per address.
pub const MAX_FAILURES_ACCOUNT: i64 = 10;
/// See [`MAX_FAILURES_ACCOUNT`].
pub const MAX_FAILURES_ADDR: i64 = 30;
/// Seconds over which failures are counted.
pub const THROTTLE_WINDOW: i64 = 15 * 60;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn decode(what: &str, s: &str) -> Result<Vec<u8>, ApiError> {
    parse::base64(s).ok_or_else(|| ApiError::bad(format!("{what} is not base64")))
}

/// A message back.
#[derive(Serialize)]
pub struct Message {
    message: String,
}

async fn enrolled(st: &AppState, account: &str, code: &str) -> Result<(String, String), ApiError> {
    let denied = || ApiError::new(StatusCode::FORBIDDEN, "unknown account or enrollment code");
    let acct = st.db.account_by_name(account).await?.ok_or_else(denied)?;
    let (hash, expires) = st.db.enrollment(&acct.id).await?.ok_or_else(denied)?;
    let given = auth::hash_secret(code);
    if given != hash || expires < now() {
        return Err(denied());
    }
    Ok((acct.id, hash))
}

/// `POST /v1/register/start`.
pub async fn register_start(
    State(st): State<Arc<AppState>>,
    Json(req): Json<RegisterRequest>,
) -> Result<Json<Message>, ApiError> {
    let (id, _) = enrolled(&st, &req.account, &req.code).await?;
    let msg = parse::registration_request(&decode("message", &req.message)?)
        .ok_or_else(|| ApiError::bad("not an OPAQUE registration request"))?;
    let r = ServerRegistration::<Suite>::start(&st.setup, msg, id.as_bytes())
        .map_err(|_| ApiError::bad("OPAQUE registration failed"))?;
    Ok(Json(Message {
        message: b64().encode(r.message.serialize()),
    }))
}

/// `POST /v1/register/finish`.
pub async fn register_finish(
    State(st): State<Arc<AppState>>,
    Json(req): Json<RegisterRequest>,
) -> Result<StatusCode, ApiError> {
    let (id, hash) = enrolled(&st, &req.account, &req.code).await?;
    let upload = parse::registration_upload(&decode("message", &req.message)?)
        .ok_or_else(|| ApiError::bad("not an OPAQUE registration upload"))?;
    let file = ServerRegistration::<Suite>::finish(upload);
    if !st
        .db
        .register(&id, &hash, &b64().encode(file.serialize()))
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the enrollment code was used meanwhile",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `{login, message}`.
#[derive(Serialize, Deserialize)]
pub struct LoginReply {
    login: String,
    message: String,
}

async fn throttled(st: &AppState, account: &str, addr: &str) -> Result<(), ApiError> {
    let (a, b) = st
        .db
        .failures_since(account, addr, now() - THROTTLE_WINDOW)
        .await?;
    if a >= MAX_FAILURES_ACCOUNT || b >= MAX_FAILURES_ADDR {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins; try again later",
        ));
    }
    Ok(())
}

/// `POST /v1/login/start`. An unknown account gets a response indistinguishable from a known
/// one's (OPAQUE's dummy login), and fails at the end.
pub async fn login_start(
    State(st): State<Arc<AppState>>,
    ci: ConnectInfo<SocketAddr>,
    Json(req): Json<LoginStart>,
) -> Result<Json<LoginReply>, ApiError> {
    let addr = peer(ci);
    throttled(&st, &req.account, &addr).await?;
    let msg = parse::credential_request(&decode("message", &req.message)?)
        .ok_or_else(|| ApiError::bad("not an OPAQUE credential request"))?;
    // Every start counts as a failure until its finish succeeds: a client can tell a wrong
    // password from the server's answer alone, without ever finishing.
    st.db.login_failed(&req.account, &addr, now()).await?;
    let acct = st.db.account_by_name(&req.account).await?;
    let (account_id, file) = match &acct {
        Some(a) => match st.db.password_file(&a.id).await? {
            Some(f) => (
                a.id.clone(),
                parse::password_file(&decode("password file", &f)?),
            ),
            None => (a.id.clone(), None),
        },
        None => (String::new(), None),
    };
    let ident = if account_id.is_empty() {
        req.account.clone()
    } else {
        account_id.clone()
    };
    let start = ServerLogin::start(
        &mut rand::rngs::OsRng,
        &st.setup,
        file,
        msg,
        ident.as_bytes(),
        ServerLoginParameters::default(),
    )
    .map_err(|_| ApiError::bad("OPAQUE login failed"))?;
    let login = auth::new_id();
    // Unknown accounts still store a state, so both paths look alike; finishing one fails.
    st.db
        .put_login(
            &login,
            if account_id.is_empty() {
                "-"
            } else {
                &account_id
            },
            &format!("{}:{}", b64().encode(start.state.serialize()), req.account),
            now() + 120,
        )
        .await?;
    Ok(Json(LoginReply {
        login,
        message: b64().encode(start.message.serialize()),
    }))
}

/// A new token.
#[derive(Serialize)]
pub struct TokenReply {
    token: String,
    scope: Scope,
    expires: Option<i64>,
}

/// `POST /v1/login/finish`.
pub async fn login_finish(
    State(st): State<Arc<AppState>>,
    ci: ConnectInfo<SocketAddr>,
    Json(req): Json<LoginFinish>,
) -> Result<Json<TokenReply>, ApiError> {
    let addr = peer(ci);
    let failed = || ApiError::new(StatusCode::UNAUTHORIZED, "wrong account or password");
    let (account_id, saved) = st
        .db
        .take_login(&req.login, now())
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown or expired login"))?;
    let (state, name) = saved.split_once(':').ok_or_else(failed)?;
    let fin = parse::credential_finalization(&decode("message", &req.message)?)
        .ok_or_else(|| ApiError::bad("not an OPAQUE credential finalization"))?;
    let server =
        parse::login_state(&decode("state", state)?).ok_or_else(|| ApiError::bad("login state"))?;
    let ok = account_id != "-" && server.finish(fin, ServerLoginParameters::default()).is_ok();
    if !ok {
        return Err(failed());
    }
    st.db.login_succeeded(name, &addr).await?;
    let (token, hash) = auth::new_token();
    let expires = now() + SESSION_TTL;
    st.db
        .add_token(
            &hash,
            Some(&account_id),
            None,
            Scope::Owner.as_str(),
            Some(expires),
            now(),
        )
        .await?;
    Ok(Json(TokenReply {
        token,
        scope: Scope::Owner,
        expires: Some(expires),
    }))
}

/// `POST /v1/logout`: revokes the token used.
pub async fn logout(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    st.db.revoke_token(&caller.token_hash).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/status`.
pub async fn status(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Owner)?;
    let id = caller.account()?;
    let acct = st
        .db
        .account(id)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let devices = st.db.devices(id).await?;
    Ok(Json(serde_json::json!({
        "account": acct.name,
        "used_bytes": acct.used_bytes,
        "quota_bytes": acct.quota_bytes,
        "devices": devices,
    })))
}

/// `GET /v1/devices`.
pub async fn devices(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<crate::db::Device>>, ApiError> {
    caller.require(Scope::Owner)?;
    Ok(Json(st.db.devices(caller.account()?).await?))
}

/// `POST /v1/devices`.
pub async fn add_device(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Json(req): Json<NewDevice>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Owner)?;
    req.check().map_err(ApiError::bad)?;
    let account = caller.account()?;
    let id = auth::new_id();
    st.db.add_device(&id, account, &req.name, now()).await?;
    let (token, hash) = auth::new_token();
    st.db
        .add_token(
            &hash,
            Some(account),
            Some(&id),
            req.scope.as_str(),
            None,
            now(),
        )
        .await?;
    Ok(Json(
        serde_json::json!({"device": id, "token": token, "scope": req.scope}),
    ))
}

/// `DELETE /v1/devices/{id}`: revokes a device and its tokens.
pub async fn revoke_device(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Owner)?;
    if st.db.revoke_device(caller.account()?, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

/// `GET /v1/admin/accounts`.
pub async fn admin_accounts(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<crate::db::Account>>, ApiError> {
    caller.require(Scope::Admin)?;
    Ok(Json(st.db.accounts().await?))
}

/// `POST /v1/admin/accounts`: a new account and its enrollment code.
pub async fn admin_add_account(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Json(req): Json<NewAccount>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Admin)?;
    let quota = req.quota_bytes.unwrap_or(st.opts.default_quota);
    let (acct, code) = crate::admin::add_account(&st.db, &req.name, quota).await?;
    Ok(Json(
        serde_json::json!({"account": acct, "enrollment_code": code}),
    ))
}

/// `POST /v1/admin/accounts/{name}/reset`.
pub async fn admin_reset(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Admin)?;
    let code = crate::admin::reset_account(&st.db, &name)
        .await
        .map_err(|_| ApiError::not_found())?;
    Ok(Json(serde_json::json!({"enrollment_code": code})))
}

/// `PUT /v1/admin/accounts/{name}/quota`.
pub async fn admin_quota(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Json(q): Json<Quota>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    q.check().map_err(ApiError::bad)?;
    crate::admin::set_quota(&st.db, &name, q.bytes)
        .await
        .map_err(|_| ApiError::not_found())?;
    Ok(StatusCode::NO_CONTENT)
}
