//! `/v1/repo/…`: the vault's storage API over HTTP, in the caller's account's namespace.
//!
//! * `GET /v1/repo/{kind}/` lists `[[name, size], …]`;
//! * `GET`/`HEAD /v1/repo/{kind}/{name}` reads an object (`Range: bytes=a-b` for part of it);
//! * `PUT` stores one: its name must be the BLAKE3 hash of the body (checked before anything is
//!   written, so a wrong or partial upload is refused and never visible), the account's quota
//!   must hold it;
//! * `DELETE` removes one; `/v1/repo/config` is the repository's marker (written once).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use vault::storage::{check_name, Kind, Storage};

use super::{ApiError, AppState, Caller};
use crate::auth::{allows, Op};

fn kind(s: &str) -> Result<Kind, ApiError> {
    crate::parse::kind(s).ok_or_else(ApiError::not_found)
}

fn check(caller: &Caller, op: Op, k: Kind) -> Result<(), ApiError> {
    if allows(caller.scope, op, k.dir()) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "a {} token may not {} {}",
            caller.scope.as_str(),
            match op {
                Op::List => "list",
                Op::Read => "read",
                Op::Write => "write",
                Op::Delete => "delete",
            },
            if k == Kind::Config {
                "the config"
            } else {
                k.dir()
            }
        )))
    }
}

/// Runs a blocking storage call off the async threads; a storage failure is 503 (passing),
/// a missing object 404.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> vault::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(vault::Error::Missing { .. })) => Err(ApiError::not_found()),
        Ok(Err(vault::Error::Corrupt { .. })) => Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range outside the object",
        )),
        Ok(Err(_)) | Err(_) => Err(ApiError::unavailable("storage")),
    }
}

/// `bytes=a-b` → (offset, length).
fn range(h: &HeaderMap) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(v) = h.get(axum::http::header::RANGE) else {
        return Ok(None);
    };
    let bad = || ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "unsupported Range");
    let s = v.to_str().map_err(|_| bad())?;
    crate::parse::range(s).map(Some).ok_or_else(bad)
}

fn octets(method: &Method, body: Vec<u8>) -> Response {
    let len = body.len();
    let mut r = if method == Method::HEAD {
        StatusCode::OK.into_response()
    } else {
        body.into_response()
    };
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if method == Method::HEAD {
        r.headers_mut()
            .insert(axum::http::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    r
}

/// A HEAD answer: the object's length, no body.
fn octets_len(len: u64) -> Response {
    let mut r = StatusCode::OK.into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r.headers_mut()
        .insert(axum::http::header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// `GET /v1/repo/{kind}/`.
pub async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(k): Path<String>,
) -> Result<Json<Vec<(String, u64)>>, ApiError> {
    let k = kind(&k)?;
    check(&caller, Op::List, k)?;
    let store = st.store(caller.account()?)?;
    Ok(Json(blocking(move || store.list(k)).await?))
}

/// `GET`/`HEAD /v1/repo/{kind}/{name}`.
pub async fn get_object(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    method: Method,
    headers: HeaderMap,
    Path((k, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let k = kind(&k)?;
    check(&caller, Op::Read, k)?;
    check_name(k, &name).map_err(|_| ApiError::not_found())?;
    let store = st.store(caller.account()?)?;
    // The object is held in memory to answer: its share of the budget first.
    let (body, _permit) = match range(&headers)? {
        Some((off, len)) => {
            let permit = st.reserve(len).await;
            let b = blocking(move || store.get_range(k, &name, off, len)).await?;
            (b, permit)
        }
        None => {
            let (s, n) = (store.clone(), name.clone());
            let size = blocking(move || s.size(k, &n))
                .await?
                .ok_or_else(ApiError::not_found)?;
            let permit = st.reserve(size).await;
            if method == Method::HEAD {
                return Ok(octets_len(size));
            }
            (blocking(move || store.get(k, &name)).await?, permit)
        }
    };
    Ok(octets(&method, body))
}

/// The request's body, read once its share of the memory budget is granted (its declared
/// length; the largest allowed when it declares none). Too large: 413.
async fn read_body<'a>(
    st: &'a AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, tokio::sync::SemaphorePermit<'a>), ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {} bytes", st.opts.max_body),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.opts.max_body as u64) {
        return Err(too_large());
    }
    let permit = st
        .reserve(declared.unwrap_or(st.opts.max_body as u64))
        .await;
    let bytes = axum::body::to_bytes(body, st.opts.max_body)
        .await
        .map_err(|e| {
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                too_large()
            } else {
                ApiError::bad("the body was cut short")
            }
        })?;
    Ok((bytes, permit))
}

/// `PUT /v1/repo/{kind}/{name}`.
pub async fn put_object(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    Path((k, name)): Path<(String, String)>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let k = kind(&k)?;
    check(&caller, Op::Write, k)?;
    check_name(k, &name).map_err(|_| ApiError::bad("not an object name"))?;
    if let Some(folder) = st.folder(caller.account()?) {
        put_streamed(&st, &caller, &headers, k, name, body, folder).await?;
        return Ok(StatusCode::CREATED);
    }
    let (body, _permit) = read_body(&st, &headers, body).await?;
    if vault::Id::of_bytes(&body).to_hex() != name {
        return Err(ApiError::bad(
            "the body does not hash to the object's name (damaged or incomplete upload)",
        ));
    }
    store_object(&st, &caller, k, name, body).await?;
    Ok(StatusCode::CREATED)
}

/// Bytes written to the temporary file at a time while an upload streams in (small enough
/// to still be in the CPU's cache: writing a 16 MiB body from memory cost the server
/// more than everything else together).
const PIECE: usize = 512 << 10;

/// `PUT` into a folder: the body is hashed and written to a temporary file as it arrives,
/// then checked (its BLAKE3 must be its name, its length the declared one, the quota must
/// hold it) and only then made visible. Memory: one piece per upload, whatever its size.
async fn put_streamed(
    st: &Arc<AppState>,
    caller: &Caller,
    headers: &HeaderMap,
    k: Kind,
    name: String,
    body: Body,
    folder: vault::storage::LocalStorage,
) -> Result<(), ApiError> {
    use http_body_util::BodyExt;
    let max = st.opts.max_body as u64;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {max} bytes"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let _permit = st.reserve(PIECE as u64).await;
    let folder: Arc<vault::storage::LocalStorage> = Arc::new(folder);
    let (f, n) = (folder.clone(), name.clone());
    let mut file = blocking(move || f.begin_put(k, &n)).await?;
    let mut hasher = blake3::Hasher::new();
    let mut piece = Vec::with_capacity(PIECE);
    let mut total = 0u64;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::bad("the body was cut short"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > max {
            return Err(too_large());
        }
        hasher.update(&data);
        piece.extend_from_slice(&data);
        if piece.len() >= PIECE {
            let p = std::mem::replace(&mut piece, Vec::with_capacity(PIECE));
            file = blocking(move || file.write(&p).map(|()| file)).await?;
        }
    }
    if declared.is_some_and(|n| n != total) {
        return Err(ApiError::bad("the body was cut short"));
    }
    if hasher.finalize().to_hex().as_str() != name {
        return Err(ApiError::bad(
            "the body does not hash to the object's name (damaged or incomplete upload)",
        ));
    }
    let existed = admit(st, caller, folder, k, &name, total as i64).await?;
    blocking(move || {
        file.write(&piece)?;
        file.commit()
    })
    .await?;
    stored(st, caller, k, existed, total as i64).await
}

/// Whether `name` exists already (its bytes are then not counted again), after checking that
/// a new object of `len` bytes fits the caller's account's quota (507 when not).
async fn admit(
    st: &Arc<AppState>,
    caller: &Caller,
    store: Arc<dyn Storage>,
    k: Kind,
    name: &str,
    len: i64,
) -> Result<bool, ApiError> {
    let acct = st
        .db
        .account(caller.account()?)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let n = name.to_string();
    let existed = blocking(move || store.size(k, &n)).await?.is_some();
    if !existed && acct.used_bytes + len > acct.quota_bytes {
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "quota exceeded: {} of {} bytes used",
                acct.used_bytes, acct.quota_bytes
            ),
        ));
    }
    Ok(existed)
}

/// After an object is stored: the account's usage, the device's last activity.
async fn stored(
    st: &Arc<AppState>,
    caller: &Caller,
    k: Kind,
    existed: bool,
    len: i64,
) -> Result<(), ApiError> {
    if !existed {
        st.db.add_usage(caller.account()?, len).await?;
    }
    if let Some(d) = &caller.device_id {
        st.db
            .device_seen(d, crate::admin::now(), k == Kind::Snapshots)
            .await?;
    }
    Ok(())
}

async fn store_object(
    st: &Arc<AppState>,
    caller: &Caller,
    k: Kind,
    name: String,
    body: Bytes,
) -> Result<(), ApiError> {
    let store = st.store(caller.account()?)?;
    let len = body.len() as i64;
    let existed = admit(st, caller, store.clone(), k, &name, len).await?;
    blocking(move || store.put(k, &name, &body)).await?;
    stored(st, caller, k, existed, len).await
}

/// `DELETE /v1/repo/{kind}/{name}`.
pub async fn delete_object(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((k, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let k = kind(&k)?;
    check(&caller, Op::Delete, k)?;
    check_name(k, &name).map_err(|_| ApiError::not_found())?;
    let account = caller.account()?.to_string();
    let store = st.store(&account)?;
    let (s, n) = (store.clone(), name.clone());
    // Not there (or another account's: the same answer): 404, so nothing can be learnt by
    // guessing names.
    let size = blocking(move || s.size(k, &n))
        .await?
        .ok_or_else(ApiError::not_found)?;
    blocking(move || store.delete(k, &name)).await?;
    st.db.add_usage(&account, -(size as i64)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET`/`HEAD /v1/repo/config`.
pub async fn get_config(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    method: Method,
) -> Result<Response, ApiError> {
    check(&caller, Op::Read, Kind::Config)?;
    let store = st.store(caller.account()?)?;
    let body = blocking(move || store.get(Kind::Config, "config")).await?;
    Ok(octets(&method, body))
}

/// `PUT /v1/repo/config`: once (the same bytes again are accepted: a retried upload).
pub async fn put_config(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    check(&caller, Op::Write, Kind::Config)?;
    let (body, _permit) = read_body(&st, &headers, body).await?;
    if body.len() > 64 << 10 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "config too large",
        ));
    }
    let store: Arc<dyn Storage> = st.store(caller.account()?)?;
    let s = store.clone();
    match blocking(move || s.get(Kind::Config, "config")).await {
        Ok(old) if old == body.as_ref() => return Ok(StatusCode::CREATED),
        Ok(_) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "this account's repository exists already",
            ))
        }
        Err(e) if e.status == StatusCode::NOT_FOUND => {}
        Err(e) => return Err(e),
    }
    store_object(&st, &caller, Kind::Config, "config".into(), body).await?;
    Ok(StatusCode::CREATED)
}
