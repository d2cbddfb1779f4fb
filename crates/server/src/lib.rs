#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! `keybag serve`: a self-hosted, multi-tenant service for keybag vaults.
//!
//! * HTTPS only (rustls): the operator's certificate, or a self-signed one made at first start
//!   (clients pin its SHA-256 fingerprint). Plain HTTP only on a loopback address, and only when
//!   asked for explicitly.
//! * The vault's storage API over HTTP (`/v1/repo/…`): every `keybag cloud` command works
//!   against `https://host:port`. Uploads are verified against their names (BLAKE3 of the bytes)
//!   and become visible whole or not at all.
//! * Accounts made by the operator, registered and logged into with OPAQUE (the server never
//!   learns a password), devices with scoped tokens ([`auth`]), quotas, login throttling,
//!   per-token rate limits, request size limits.
//! * Metadata in SQLite (the data folder) or PostgreSQL; objects in the data folder or S3. No
//!   state in the process: several servers on one PostgreSQL and one bucket serve the same
//!   accounts.
//! * `/healthz`, `/metrics` (Prometheus text), one JSON log line per request that names the
//!   route, never a token, an account's password or an object.

pub mod admin;
pub mod auth;
pub mod client;
pub mod db;
mod metrics;
pub mod parse;
mod routes;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use metrics::Metrics;
pub use routes::custody::escrow_aad as custody_escrow_aad;
pub use routes::{AppState, Blobs};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is wrong (flags, files).
    #[error("{0}")]
    Config(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(String),
    /// A unique name is taken.
    #[error("{0}")]
    Conflict(String),
    /// A file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The storage failed.
    #[error(transparent)]
    Vault(#[from] vault::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The data folder: the SQLite database, the self-signed certificate, stored objects.
    pub data_dir: PathBuf,
    /// `postgres://…` to keep metadata in PostgreSQL instead of the data folder.
    pub database: Option<String>,
    /// `s3://bucket/prefix` to keep objects there instead of the data folder.
    pub blobs: Option<String>,
    /// How to reach the bucket of `blobs`; `None`: the AWS environment variables.
    pub s3: Option<vault::storage::S3Settings>,
    /// The operator's certificate and key (PEM); a self-signed pair when `None`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Serve plain HTTP (only on a loopback address).
    pub insecure_http: bool,
    /// Largest request body (a pack is 16 MiB).
    pub max_body: usize,
    /// Bytes of request and response bodies held in memory at once, across all requests;
    /// an upload or download waits for its share (this bounds the server's memory whatever
    /// the number of clients).
    pub body_budget: usize,
    /// Requests per second each token may make (a burst of twice that is allowed).
    pub rate_per_token: u32,
    /// Default quota of a new account, bytes.
    pub default_quota: i64,
    /// Write one JSON line per request to stderr (off for a server embedded in `keybag demo`).
    pub log_requests: bool,
}

impl ServeOptions {
    /// Defaults for `listen` and `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> ServeOptions {
        ServeOptions {
            listen,
            data_dir,
            database: None,
            blobs: None,
            s3: None,
            tls: None,
            insecure_http: false,
            max_body: 64 << 20,
            body_budget: 96 << 20,
            rate_per_token: 500,
            default_quota: 100 << 30,
            log_requests: true,
        }
    }

    /// The database URL: PostgreSQL if given, else `data_dir/meta.sqlite`.
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(u) => u.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("meta.sqlite").display()
            ),
        }
    }
}

/// What a started server tells its caller.
#[derive(Clone, Debug)]
pub struct Ready {
    /// The address it listens on (the port, when 0 was asked for).
    pub addr: SocketAddr,
    /// Its certificate's SHA-256 fingerprint (`None` over plain HTTP).
    pub fingerprint: Option<String>,
}

/// Opens the database and the storage, and builds the shared state.
pub async fn state(opts: &ServeOptions) -> Result<Arc<AppState>> {
    private_dir(&opts.data_dir)?;
    let db = db::Db::open(&opts.database_url()).await?;
    let setup = admin::server_setup(&db).await?;
    let blobs = match &opts.blobs {
        Some(b) => {
            let rest = b.strip_prefix("s3://").ok_or_else(|| {
                Error::Config(format!("--blobs {b}: not an s3://bucket/prefix URL"))
            })?;
            let rest = rest.trim_end_matches('/').to_string();
            // Building the client makes a runtime: not on an async thread.
            let given = opts.s3.clone();
            let s3 = tokio::task::spawn_blocking(move || {
                let mut s = match given {
                    Some(mut s) => {
                        let (b, p) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
                        s.bucket = b.to_string();
                        s.prefix = p.trim_matches('/').to_string();
                        s
                    }
                    None => vault::storage::S3Settings::from_env(&rest)?,
                };
                // The client retries too (with its own backoff): a request the store cannot
                // answer soon gets 503 rather than holding a connection for minutes.
                if std::env::var_os("AWS_MAX_ATTEMPTS").is_none() {
                    s.max_retries = 2;
                }
                s.retry_window = Duration::from_secs(15);
                vault::storage::S3Storage::new(s)
            })
            .await
            .map_err(|e| Error::Config(e.to_string()))??;
            routes::Blobs::S3(Arc::new(s3))
        }
        None => routes::Blobs::Folder(opts.data_dir.join("blobs")),
    };
    Ok(Arc::new(AppState::new(db, setup, blobs, opts.clone())))
}

/// Serves until SIGINT or SIGTERM (then finishes requests under way, for up to 30 s).
/// `ready` is told the address and fingerprint once the socket is bound.
pub async fn serve(opts: ServeOptions, ready: impl FnOnce(Ready) + Send) -> Result<()> {
    let stop = async {
        let ctrl_c = tokio::signal::ctrl_c();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    };
    serve_until(opts, ready, stop).await
}

/// Serves until `stop` completes (then finishes requests under way, for up to 30 s).
pub async fn serve_until(
    opts: ServeOptions,
    ready: impl FnOnce(Ready) + Send,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if opts.insecure_http && !opts.listen.ip().is_loopback() {
        return Err(Error::Config(format!(
            "{}: plain HTTP is allowed only on a loopback address",
            opts.listen
        )));
    }
    let st = state(&opts).await?;
    let result = serve_with(&opts, st.clone(), ready, stop).await;
    // The S3 client owns a runtime, which may not be dropped on an async thread.
    let _ = tokio::task::spawn_blocking(move || drop(st)).await;
    result
}

async fn serve_with(
    opts: &ServeOptions,
    st: Arc<AppState>,
    ready: impl FnOnce(Ready) + Send,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = routes::router(st);
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        stop.await;
        shutdown.graceful_shutdown(Some(Duration::from_secs(30)));
    });
    let svc = app.into_make_service_with_connect_info::<SocketAddr>();
    if opts.insecure_http {
        let server = axum_server::bind(opts.listen).handle(handle.clone());
        let h = handle.clone();
        let task = tokio::spawn(async move { server.serve(svc).await });
        let addr = h
            .listening()
            .await
            .ok_or_else(|| Error::Config("could not listen".into()))?;
        ready(Ready {
            addr,
            fingerprint: None,
        });
        task.await
            .map_err(|e| Error::Config(e.to_string()))?
            .map_err(Error::io(opts.listen.to_string()))?;
        return Ok(());
    }
    let names = vec![
        "localhost".to_string(),
        opts.listen.ip().to_string(),
        "127.0.0.1".to_string(),
    ];
    let (cert, key) = tls::ensure(
        &opts.data_dir,
        opts.tls.as_ref().map(|t| t.0.as_path()),
        opts.tls.as_ref().map(|t| t.1.as_path()),
        &names,
    )?;
    let fp = tls::fingerprint(&tls::first_cert_der(&read(&cert)?)?);
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
        .await
        .map_err(|e| Error::Config(format!("TLS certificate {}: {e}", cert.display())))?;
    let server = axum_server::bind_rustls(opts.listen, config).handle(handle.clone());
    let h = handle.clone();
    let task = tokio::spawn(async move { server.serve(svc).await });
    let addr = h
        .listening()
        .await
        .ok_or_else(|| Error::Config("could not listen".into()))?;
    ready(Ready {
        addr,
        fingerprint: Some(fp),
    });
    task.await
        .map_err(|e| Error::Config(e.to_string()))?
        .map_err(Error::io(opts.listen.to_string()))?;
    Ok(())
}

/// A runtime for the blocking entry points.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keybag-serve")
        .build()
        .map_err(Error::io("tokio runtime"))
}

/// [`serve`] on a runtime of its own: the CLI's entry point.
pub fn run(opts: ServeOptions, ready: impl FnOnce(Ready) + Send) -> Result<()> {
    runtime()?.block_on(serve(opts, ready))
}

/// A server running on a thread of its own (for `keybag demo` and benchmarks): stopped, and
/// its requests under way finished, when dropped.
pub struct Background {
    /// Where it listens, and its certificate's fingerprint.
    pub ready: Ready,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Background {
    /// Starts serving `opts` (its own runtime, two worker threads); returns once listening.
    pub fn start(opts: ServeOptions) -> Result<Background> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (rtx, rrx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| Error::Config(format!("runtime: {e}")))?;
            rt.block_on(serve_until(
                opts,
                move |ready| {
                    let _ = rtx.send(ready);
                },
                async move {
                    let _ = rx.await;
                },
            ))
        });
        match rrx.recv() {
            Ok(ready) => Ok(Background {
                ready,
                stop: Some(tx),
                thread: Some(thread),
            }),
            Err(_) => Err(thread
                .join()
                .unwrap_or_else(|_| Err(Error::Config("the server thread panicked".into())))
                .err()
                .unwrap_or_else(|| Error::Config("the server did not start".into()))),
        }
    }

    /// `https://ADDR`.
    pub fn base(&self) -> String {
        format!("https://{}", self.ready.addr)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The operator's commands, blocking, straight on the database (`keybag serve admin …`).
pub mod ops {
    use super::{admin, db::Account, db::Db, runtime, Result, ServeOptions};

    async fn db(opts: &ServeOptions) -> Result<Db> {
        if opts.database.is_none() {
            super::private_dir(&opts.data_dir)?;
        }
        let db = Db::open(&opts.database_url()).await?;
        admin::server_setup(&db).await?;
        Ok(db)
    }

    /// A new account and its enrollment code (`quota` bytes; the server default when `None`).
    pub fn add_account(
        opts: &ServeOptions,
        name: &str,
        quota: Option<i64>,
    ) -> Result<(Account, String)> {
        runtime()?.block_on(async {
            let db = db(opts).await?;
            admin::add_account(&db, name, quota.unwrap_or(opts.default_quota)).await
        })
    }

    /// Every account.
    pub fn accounts(opts: &ServeOptions) -> Result<Vec<Account>> {
        runtime()?.block_on(async { db(opts).await?.accounts().await })
    }

    /// A password reset: a new enrollment code, every token of the account revoked.
    pub fn reset_account(opts: &ServeOptions, name: &str) -> Result<String> {
        runtime()?.block_on(async { admin::reset_account(&db(opts).await?, name).await })
    }

    /// Sets an account's quota.
    pub fn set_quota(opts: &ServeOptions, name: &str, bytes: i64) -> Result<()> {
        runtime()?.block_on(async { admin::set_quota(&db(opts).await?, name, bytes).await })
    }

    /// The service's escrow secret, an account's custody records and its repository storage.
    pub type Custody = (
        dataprotection::Key256,
        Vec<(String, Vec<u8>)>,
        std::sync::Arc<dyn vault::storage::Storage>,
    );

    /// What the operator holds for an account's iCloud-style backup: the service's escrow
    /// secret, the account's custody records and its repository's storage (for
    /// `keybag serve admin restore`).
    pub fn custody(opts: &ServeOptions, name: &str) -> Result<Custody> {
        runtime()?.block_on(async {
            let st = super::state(opts).await?;
            let acct = st
                .db
                .account_by_name(name)
                .await?
                .ok_or_else(|| super::Error::Config(format!("{name}: no such account")))?;
            let secret = admin::escrow_secret(&st.db).await?;
            let records = st.db.custody_all(&acct.id).await?;
            let store = st
                .store(&acct.id)
                .map_err(|_| super::Error::Config("the object store is unavailable".into()))?;
            Ok((secret, records, store))
        })
    }

    /// A new admin token (for the HTTP admin API).
    pub fn add_admin_token(opts: &ServeOptions) -> Result<String> {
        runtime()?.block_on(async { admin::add_admin_token(&db(opts).await?).await })
    }
}

/// Makes the data folder, readable by the server's user only: it holds the OPAQUE server
/// secret (in the SQLite file) and the TLS key.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(Error::io(dir))
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(Error::io(p))
}
