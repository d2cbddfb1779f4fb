//! The HTTP API: routes, the caller's identity, errors as status codes, per-request logging
//! and metrics, rate limits.

mod account;
pub mod custody;
mod repo;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use opaque_ke::ServerSetup;
use vault::storage::Storage;

use crate::auth::{hash_secret, Scope, Suite};
use crate::db::Db;
use crate::metrics::Metrics;
use crate::ServeOptions;

/// What every request handler shares.
pub struct AppState {
    /// The metadata database.
    pub db: Db,
    /// OPAQUE's server setup.
    pub setup: ServerSetup<Suite>,
    /// Where objects go; each account under its ID.
    pub blobs: Blobs,
    /// The options served with.
    pub opts: ServeOptions,
    /// Counters.
    pub metrics: Metrics,
    stores: Mutex<HashMap<String, Arc<dyn Storage>>>,
    /// Body bytes in memory, in KiB permits ([`ServeOptions::body_budget`]).
    budget: tokio::sync::Semaphore,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl AppState {
    /// The shared state.
    pub fn new(db: Db, setup: ServerSetup<Suite>, blobs: Blobs, opts: ServeOptions) -> AppState {
        let budget = tokio::sync::Semaphore::new(kib(opts.body_budget.max(opts.max_body)));
        AppState {
            db,
            setup,
            blobs,
            opts,
            metrics: Metrics::default(),
            stores: Mutex::new(HashMap::new()),
            budget,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until `bytes` more of bodies may be held in memory; the share is given back
    /// when the permit is dropped.
    pub async fn reserve(&self, bytes: u64) -> tokio::sync::SemaphorePermit<'_> {
        let want = kib(usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(self.opts.max_body));
        self.budget
            .acquire_many(u32::try_from(want).unwrap_or(u32::MAX))
            .await
            .expect("the budget is never closed")
    }

    /// The storage of one account (its own folder or prefix).
    pub fn store(&self, account_id: &str) -> Result<Arc<dyn Storage>, ApiError> {
        if let Some(s) = self.stores.lock().expect("lock").get(account_id) {
            return Ok(s.clone());
        }
        let s: Arc<dyn Storage> = match &self.blobs {
            Blobs::Folder(dir) => Arc::new(vault::storage::LocalStorage::new(dir.join(account_id))),
            Blobs::S3(base) => Arc::new(
                base.sub(account_id)
                    .map_err(|_| ApiError::unavailable("storage"))?,
            ),
        };
        self.stores
            .lock()
            .expect("lock")
            .insert(account_id.to_string(), s.clone());
        Ok(s)
    }

    /// The folder storage of one account, when objects are kept in folders (uploads are then
    /// streamed to disk rather than held in memory).
    pub fn folder(&self, account_id: &str) -> Option<vault::storage::LocalStorage> {
        match &self.blobs {
            Blobs::Folder(dir) => Some(vault::storage::LocalStorage::new(dir.join(account_id))),
            Blobs::S3(_) => None,
        }
    }

    /// Takes one request from a token's bucket; false when it is empty.
    fn allow(&self, key: &str) -> bool {
        let rate = f64::from(self.opts.rate_per_token.max(1));
        let burst = rate * 2.0;
        let now = Instant::now();
        let mut b = self.buckets.lock().expect("lock");
        let e = b.entry(key.to_string()).or_insert((burst, now));
        e.0 = (e.0 + now.duration_since(e.1).as_secs_f64() * rate).min(burst);
        e.1 = now;
        if e.0 >= 1.0 {
            e.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Bytes in KiB, rounded up (a semaphore's permits are counted in u32).
fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024).max(1)
}

/// Where objects are kept.
pub enum Blobs {
    /// A folder (`data/blobs` by default); each account in a subfolder.
    Folder(std::path::PathBuf),
    /// A bucket; each account under a prefix (one client shared by all).
    S3(Arc<vault::storage::S3Storage>),
}

/// An error answer: a status and a short message (JSON `{"error": …}`) naming the request's
/// problem, never a secret.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// Any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn bad(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, m)
    }
    pub(crate) fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing, unknown, expired or revoked token",
        )
    }
    pub(crate) fn forbidden(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, m)
    }
    pub(crate) fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not found")
    }
    fn unavailable(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} is unavailable; try again later"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(serde_json::json!({"error": self.message})),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            crate::Error::Config(m) => ApiError::bad(m),
            // Storage and database trouble is the server's, and passing: 503, details logged
            // without names.
            _ => ApiError::unavailable("the service"),
        }
    }
}

/// The caller, from its bearer token.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Its account (none for admin tokens).
    pub account_id: Option<String>,
    /// Its device, if the token is a device's.
    pub device_id: Option<String>,
    /// Its scope.
    pub scope: Scope,
    /// The token's hash (for logout).
    pub token_hash: String,
}

impl Caller {
    /// The account, or 403 for admin tokens.
    pub fn account(&self) -> Result<&str, ApiError> {
        self.account_id
            .as_deref()
            .ok_or_else(|| ApiError::forbidden("this token belongs to no account"))
    }

    /// Requires `scope` exactly.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scope == scope {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "a {} token cannot do this",
                self.scope.as_str()
            )))
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        let hash = hash_secret(&token);
        let row = st
            .db
            .token(&hash)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        let now = crate::admin::now();
        if row.revoked || row.expires.is_some_and(|e| e < now) {
            return Err(ApiError::unauthorized());
        }
        let scope = Scope::parse(&row.scope).ok_or_else(ApiError::unauthorized)?;
        if !st.allow(&hash) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate limit: slow down",
            ));
        }
        Ok(Caller {
            account_id: row.account_id,
            device_id: row.device_id,
            scope,
            token_hash: hash,
        })
    }
}

fn bearer(h: &HeaderMap) -> Option<String> {
    let v = h.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    crate::parse::bearer(v).map(str::to_string)
}

/// How much of a body declared too large is read and thrown away before the 413, and for how
/// long: a server that answers without reading makes the client's send fail with a broken
/// pipe before it can read the answer ("lingering close", as nginx does).
const LINGER_BYTES: u64 = 16 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// A 413 for a request whose declared length is over the limit, after reading and dropping
/// its body (up to [`LINGER_BYTES`] past the limit, for at most [`LINGER_TIME`]), so the
/// client gets the answer. `None` when the declared length is within the limit (or absent:
/// the handlers then stop reading at the limit).
async fn refuse_oversized(req: Request, max: usize) -> Result<Response, Request> {
    use http_body_util::BodyExt;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let Some(n) = declared.filter(|n| *n > max as u64) else {
        return Err(req);
    };
    if n <= max as u64 + LINGER_BYTES {
        let mut body = req.into_body();
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    }
    Ok(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {max} bytes"),
    )
    .into_response())
}

/// One JSON line per request on stderr, and the metrics. The route template only: never an
/// object name, a token or an account name.
async fn observe(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    // Known methods only: a label per made-up method would let anyone grow the metrics.
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "PUT" | "POST" | "DELETE") => m.to_string(),
        _ => "OTHER".to_string(),
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let len_in = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    st.metrics.start();
    st.metrics.bytes_in(len_in);
    let resp = match refuse_oversized(req, st.opts.max_body).await {
        Ok(refused) => refused,
        Err(req) => next.run(req).await,
    };
    let secs = start.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    if let Some(n) = resp
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        st.metrics.bytes_out(n);
    }
    st.metrics.done(&method, &route, status, secs);
    if st.opts.log_requests {
        eprintln!(
            "{}",
            serde_json::json!({
                "t": crate::admin::now(),
                "method": method,
                "route": route,
                "status": status,
                "ms": (secs * 1000.0 * 10.0).round() / 10.0,
            })
        );
    }
    resp
}

/// The caller's address (for login throttling).
pub(crate) fn peer(ci: ConnectInfo<SocketAddr>) -> String {
    ci.0.ip().to_string()
}

/// Every route.
pub fn router(st: Arc<AppState>) -> Router {
    let max = st.opts.max_body;
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|State(st): State<Arc<AppState>>| async move { st.metrics.render() }),
        )
        .route("/v1/register/start", post(account::register_start))
        .route("/v1/register/finish", post(account::register_finish))
        .route("/v1/login/start", post(account::login_start))
        .route("/v1/login/finish", post(account::login_finish))
        .route("/v1/logout", post(account::logout))
        .route("/v1/status", get(account::status))
        .route(
            "/v1/devices",
            get(account::devices).post(account::add_device),
        )
        .route(
            "/v1/devices/{id}",
            axum::routing::delete(account::revoke_device),
        )
        .route(
            "/v1/admin/accounts",
            get(account::admin_accounts).post(account::admin_add_account),
        )
        .route(
            "/v1/admin/accounts/{name}/reset",
            post(account::admin_reset),
        )
        .route("/v1/admin/accounts/{name}/quota", put(account::admin_quota))
        .route(
            "/v1/repo/config",
            get(repo::get_config)
                .head(repo::get_config)
                .put(repo::put_config),
        )
        .route("/v1/custody/escrow-key", get(custody::escrow_key))
        .route("/v1/custody/escrow/open", post(custody::escrow_open))
        .route("/v1/custody/records", get(custody::list))
        .route(
            "/v1/custody/records/{name}",
            get(custody::get).put(custody::put).delete(custody::delete),
        )
        .route("/v1/contacts/{account}/key", get(custody::contact_key))
        .route(
            "/v1/contacts/{account}/packets",
            put(custody::contact_packet),
        )
        .route("/v1/repo/{kind}/", get(repo::list))
        .route(
            "/v1/repo/{kind}/{name}",
            get(repo::get_object)
                .head(repo::get_object)
                .put(repo::put_object)
                .delete(repo::delete_object),
        )
        .layer(axum::middleware::from_fn_with_state(st.clone(), observe))
        .layer(DefaultBodyLimit::max(max))
        .with_state(st)
}
