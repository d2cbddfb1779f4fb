//! A repository in an S3-compatible bucket, through Apache Arrow's `object_store`.
//!
//! Blocking calls over a private tokio runtime, so the vault stays synchronous (rayon threads
//! call it). Path-style addressing, as every S3-compatible server takes it.
//!
//! **Layout.** Under the prefix: `config`, `keys/NAME`, `data/XX/NAME` (`XX`: the name's first
//! two hex digits), `index/NAME`, `snapshots/NAME`, `pending/NAME`, the same as a local folder.
//! Listing a kind lists only its own prefix; `config` is looked up with a HEAD, never by
//! listing the bucket. A key under a kind's prefix that is not exactly where the vault puts
//! its objects (a stranger, a folder marker, a misplaced copy) is not listed.
//!
//! **Failures.** Every request has a connect timeout and a request timeout (the whole request,
//! body included: it must exceed the upload time of a pack on the slowest link in use). This
//! backend retries itself (object_store's own retries are off: it does not retry a list answer
//! cut short, and two layers would multiply the count): after a refused, reset or cut
//! connection, a timeout, a 5xx answer (`500 InternalError`, `503 SlowDown`), `429`, `408` or
//! S3's `400 RequestTimeout`, with exponential backoff and jitter, at most
//! [`S3Settings::max_retries`] times and none after [`S3Settings::retry_window`]. Every request
//! it makes is idempotent (puts of content-named objects, gets, lists, deletes), so a retry
//! after a timeout is safe. Then the operation fails with [`Error::Storage`] naming the
//! operation, `s3://bucket/key` and why (refused, no answer in time, the status and S3 error
//! code, a cut connection), with the retries made. A 4xx answer (403, 404, …) is final at once.
//! Every PUT is a single request, atomic on the server (no multipart upload), so a failed or
//! interrupted put leaves nothing at the object's name; what the vault stored before stays.
//! The defaults ([`S3Settings::new`]) suit a real deployment; tests use short ones.
//!
//! **No conditional requests.** Nothing here sends `If-None-Match`, `If-Match` or any other
//! precondition, and no correctness rests on one: some S3-compatible servers (Garage, s3rver)
//! silently ignore them (`../shared/spec/vault-anchors.md` §5). Every object but `config` is
//! named by the hash of its bytes, so two writers storing one name store the same bytes, and an
//! overwrite changes nothing; two pushes running at once write distinct packs, index objects
//! and snapshots. The one named object, `config`, is written once by `init`, which reads it
//! back and gives way if another `init` raced it; `open` skips a key file of a raced-out
//! `init` instead of failing (see [`crate::Repository::init`]). The tests run every repository
//! scenario through a proxy that records each request and check that none carries a
//! precondition header.
//!
//! **Secrets.** The secret key and session token are held in zeroized memory, never shown by
//! `Debug` and scrubbed from every error message; an endpoint URL carrying credentials is
//! refused.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::{Path as ObjPath, PathPart};
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use rand::Rng;
use zeroize::Zeroizing;

use super::{check_name, Kind, Storage};
use crate::{Error, Result};

/// Retries of a failed request before the error is returned (the default of
/// [`S3Settings::max_retries`]).
const MAX_RETRIES: usize = 4;

/// Where a bucket is and how to talk to it. [`S3Settings::new`] gives the defaults;
/// [`S3Settings::from_env`] reads the usual AWS environment variables. `Debug` shows no
/// credential.
#[derive(Clone)]
#[non_exhaustive]
pub struct S3Settings {
    /// The bucket.
    pub bucket: String,
    /// The folder in it (`a/b`; empty: the bucket's top level).
    pub prefix: String,
    /// The server (`https://host[:port]`; `None`: AWS for [`S3Settings::region`]).
    pub endpoint: Option<String>,
    /// The region requests are signed for.
    pub region: String,
    /// The access key ID.
    pub access_key_id: Option<String>,
    /// The secret access key.
    pub secret_access_key: Option<Zeroizing<String>>,
    /// A session token (temporary credentials).
    pub session_token: Option<Zeroizing<String>>,
    /// Time allowed to open a connection (default 5 s).
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, upload or download included (default 120 s: a
    /// 16 MiB pack over a 2 Mbit/s uplink takes about 70 s).
    pub request_timeout: Duration,
    /// Retries of a failed request (default 4).
    pub max_retries: usize,
    /// The first backoff (default 200 ms); later ones grow up to twice the previous one, with
    /// jitter.
    pub initial_backoff: Duration,
    /// The longest backoff (default 5 s).
    pub max_backoff: Duration,
    /// No retry starts later than this after a request's first attempt (default 300 s).
    pub retry_window: Duration,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |set: bool| if set { "[redacted]" } else { "[not set]" };
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &shown(self.access_key_id.is_some()))
            .field(
                "secret_access_key",
                &shown(self.secret_access_key.is_some()),
            )
            .field("session_token", &shown(self.session_token.is_some()))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("retry_window", &self.retry_window)
            .finish()
    }
}

impl S3Settings {
    /// `bucket` and `prefix` with the default region (`us-east-1`), timeouts and retries, no
    /// endpoint and no credentials.
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> S3Settings {
        S3Settings {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(120),
            max_retries: MAX_RETRIES,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            retry_window: Duration::from_secs(300),
        }
    }

    /// `bucket[/prefix]` (what follows `s3://`), with the endpoint, region and credentials of
    /// the usual AWS environment variables: `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`,
    /// `AWS_REGION` or `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, and `AWS_MAX_ATTEMPTS` (attempts per request: retries + 1).
    pub fn from_env(bucket_and_prefix: &str) -> Result<S3Settings> {
        S3Settings::from_vars(bucket_and_prefix, |name| std::env::var(name).ok())
    }

    /// As [`S3Settings::from_env`], reading the variables through `var` (tests, or a caller
    /// with its own configuration). Empty values count as unset.
    pub fn from_vars(
        bucket_and_prefix: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<S3Settings> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let (bucket, prefix) = match bucket_and_prefix.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (bucket_and_prefix, ""),
        };
        let mut s = S3Settings::new(bucket, prefix);
        s.endpoint = var("AWS_ENDPOINT_URL_S3")
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .or_else(|| var("AWS_ENDPOINT"));
        if let Some(r) = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
            s.region = r;
        }
        s.access_key_id = var("AWS_ACCESS_KEY_ID");
        s.secret_access_key = var("AWS_SECRET_ACCESS_KEY").map(Zeroizing::new);
        s.session_token = var("AWS_SESSION_TOKEN").map(Zeroizing::new);
        if let Some(n) = var("AWS_MAX_ATTEMPTS") {
            s.max_retries = match n.trim().parse::<usize>() {
                Ok(n @ 1..=100) => n - 1,
                _ => {
                    return Err(Error::Invalid(format!(
                        "AWS_MAX_ATTEMPTS={n:?}: not a number of attempts from 1 to 100"
                    )))
                }
            };
        }
        Ok(s)
    }

    /// `s3://bucket[/prefix]`.
    pub fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// Checks the bucket name, the prefix, the endpoint and the credentials.
    fn check(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(format!("{}: {what}", self.location())));
        let b = &self.bucket;
        if b.is_empty() {
            return Err(Error::Invalid("s3://: no bucket named".into()));
        }
        if b.len() > 255
            || !b
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
        {
            return bad(format!(
                "{:?} is not a bucket name (letters, digits, '-', '.', '_')",
                b.escape_debug().to_string()
            ));
        }
        if !self.prefix.is_empty() {
            for seg in self.prefix.split('/') {
                // A segment object_store would percent-encode names another key than the one
                // typed; `.`/`..` and empty segments are refused outright.
                let encoded = PathPart::from(seg);
                if seg.is_empty() || seg == "." || seg == ".." || encoded.as_ref() != seg {
                    return bad(format!(
                        "prefix segment {:?} is not allowed (no empty, '.' or '..' segments, \
                         no control characters or any of \\{{}}^%`[]\"<>~#|*?)",
                        seg.escape_debug().to_string()
                    ));
                }
            }
        }
        if let Some(e) = &self.endpoint {
            let rest = e
                .strip_prefix("https://")
                .or_else(|| e.strip_prefix("http://"));
            let Some(rest) = rest else {
                return bad("the endpoint must be an http:// or https:// URL".into());
            };
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            if authority.contains('@') {
                // Not echoed: the URL holds a credential.
                return bad(
                    "the endpoint URL carries credentials; give them in AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY instead"
                        .into(),
                );
            }
            if authority.is_empty() {
                return bad("the endpoint URL names no host".into());
            }
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), Some(_)) => {}
            (None, None) => {
                return bad(
                    "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
                )
            }
            (Some(_), None) => {
                return bad("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into())
            }
            (None, Some(_)) => {
                return bad("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into())
            }
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("timeouts must be longer than zero".into());
        }
        Ok(())
    }
}

/// A bucket (and a prefix in it).
pub struct S3Storage {
    store: AmazonS3,
    bucket: String,
    prefix: String,
    policy: Arc<Policy>,
    rt: Arc<tokio::runtime::Runtime>,
}

/// How requests are retried, and how their failures are told.
struct Policy {
    /// Credentials, scrubbed from every message.
    scrub: Vec<Zeroizing<String>>,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_retries: usize,
    initial_backoff: Duration,
    max_backoff: Duration,
    retry_window: Duration,
}

/// A failed request: the last error, and the retries made before giving up.
struct Failed {
    error: object_store::Error,
    retries: usize,
    elapsed: Duration,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Storage({})", self.location())
    }
}

impl S3Storage {
    /// `bucket[/prefix]`, with the endpoint, region and credentials of the usual AWS
    /// environment variables ([`S3Settings::from_env`]).
    pub fn from_env(bucket_and_prefix: &str) -> Result<S3Storage> {
        S3Storage::new(S3Settings::from_env(bucket_and_prefix)?)
    }

    /// The bucket of `settings` (nothing is read from the environment). Fails on a bucket
    /// name, prefix or endpoint that is not usable, or missing credentials; nothing is sent.
    pub fn new(settings: S3Settings) -> Result<S3Storage> {
        settings.check()?;
        let location = settings.location();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_virtual_hosted_style_request(false)
            .with_region(&settings.region)
            // Retries are this backend's own (`S3Storage::run`): object_store does not retry
            // a list answer cut short, and its count would multiply with ours.
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 0,
                retry_timeout: Duration::ZERO,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(settings.connect_timeout)
                    .with_timeout(settings.request_timeout)
                    .with_allow_http(true),
            );
        if let Some(e) = &settings.endpoint {
            b = b.with_endpoint(e);
        }
        let mut scrub = Vec::new();
        if let Some(k) = &settings.access_key_id {
            b = b.with_access_key_id(k);
            scrub.push(Zeroizing::new(k.clone()));
        }
        if let Some(s) = &settings.secret_access_key {
            b = b.with_secret_access_key(s.as_str());
            scrub.push(s.clone());
        }
        if let Some(t) = &settings.session_token {
            b = b.with_token(t.as_str());
            scrub.push(t.clone());
        }
        scrub.retain(|s| s.len() >= 4);
        let policy = Policy {
            scrub,
            connect_timeout: settings.connect_timeout,
            request_timeout: settings.request_timeout,
            max_retries: settings.max_retries,
            initial_backoff: settings.initial_backoff,
            max_backoff: settings.max_backoff.max(settings.initial_backoff),
            retry_window: settings.retry_window,
        };
        let store = b.build().map_err(|e| Error::Storage {
            op: "open",
            object: location,
            reason: policy.reason(&e, 0, Duration::ZERO),
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vault-s3")
            .enable_all()
            .build()
            .map_err(Error::io("tokio runtime"))?;
        Ok(S3Storage {
            store,
            bucket: settings.bucket,
            prefix: settings.prefix,
            policy: Arc::new(policy),
            rt: Arc::new(rt),
        })
    }

    /// The same bucket under `prefix/sub`, sharing this one's connections and threads (a
    /// server keeps one repository per account this way, not one client each).
    pub fn sub(&self, sub: &str) -> Result<S3Storage> {
        let ok = !sub.is_empty()
            && sub.len() <= 128
            && sub
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && sub != "."
            && sub != "..";
        if !ok {
            return Err(Error::Invalid(format!(
                "{sub:?}: a sub-prefix is 1 to 128 letters, digits, '-', '_' or '.'"
            )));
        }
        Ok(S3Storage {
            store: self.store.clone(),
            bucket: self.bucket.clone(),
            prefix: if self.prefix.is_empty() {
                sub.to_string()
            } else {
                format!("{}/{sub}", self.prefix)
            },
            policy: self.policy.clone(),
            rt: self.rt.clone(),
        })
    }

    /// The key of an object in the bucket.
    fn key(&self, kind: Kind, name: &str) -> Result<String> {
        check_name(kind, name)?;
        let mut key = String::new();
        if !self.prefix.is_empty() {
            key.push_str(&self.prefix);
            key.push('/');
        }
        match kind {
            Kind::Config => {}
            Kind::Data => {
                key.push_str("data/");
                key.push_str(&name[..2]);
                key.push('/');
            }
            k => {
                key.push_str(k.dir());
                key.push('/');
            }
        }
        key.push_str(name);
        Ok(key)
    }

    /// The prefix a kind's objects are listed under (without its trailing `/`).
    fn list_prefix(&self, kind: Kind) -> String {
        match (self.prefix.is_empty(), kind.dir()) {
            (true, d) => d.to_string(),
            (false, "") => self.prefix.clone(),
            (false, d) => format!("{}/{d}", self.prefix),
        }
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// Runs a request (every one this backend makes is idempotent: puts of content-named
    /// objects, gets, lists, deletes), retrying what may pass next time (a refused, reset or
    /// cut connection, a timeout, 5xx, 429, 408, S3's `RequestTimeout`) with exponential
    /// backoff and jitter, at most `max_retries` times and none after `retry_window`.
    fn run<T, F>(&self, request: impl Fn() -> F) -> Result<T, Failed>
    where
        F: std::future::Future<Output = object_store::Result<T>>,
    {
        let p = &self.policy;
        let start = Instant::now();
        let mut backoff = p.initial_backoff;
        let mut retries = 0;
        loop {
            let error = match self.rt.block_on(request()) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let elapsed = start.elapsed();
            if retries >= p.max_retries || elapsed > p.retry_window || !retryable(&error) {
                return Err(Failed {
                    error,
                    retries,
                    elapsed,
                });
            }
            std::thread::sleep(backoff);
            // Decorrelated jitter: the next wait is between the first and twice this one.
            let upper = (backoff * 2).max(p.initial_backoff + Duration::from_millis(1));
            backoff = rand::thread_rng()
                .gen_range(p.initial_backoff..upper)
                .min(p.max_backoff);
            retries += 1;
        }
    }

    fn fail(&self, op: &'static str, key: &str, f: Failed) -> Error {
        let no_bucket = || chain(&f.error).iter().any(|m| m.contains("NoSuchBucket"));
        if matches!(op, "get" | "head")
            && matches!(f.error, object_store::Error::NotFound { .. })
            && !no_bucket()
        {
            return Error::Missing {
                object: self.url(key),
            };
        }
        Error::Storage {
            op,
            object: self.url(key),
            reason: self.policy.reason(&f.error, f.retries, f.elapsed),
        }
    }
}

/// Every message of an error's chain, each once.
fn chain(e: &(dyn StdError + 'static)) -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(c) = cur {
        let s = c.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts
}

/// The HTTP status the server answered, if it answered.
fn status_of(e: &object_store::Error) -> Option<u16> {
    chain(e).iter().find_map(|s| {
        s.split("status code: ")
            .nth(1)
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
    })
}

/// The transport failure (no usable answer), if that is what it was.
fn transport_of(e: &object_store::Error) -> Option<HttpErrorKind> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<HttpError>() {
            return Some(h.kind());
        }
        cur = c.source();
    }
    None
}

/// Whether a failed request may pass if sent again.
fn retryable(e: &object_store::Error) -> bool {
    if !matches!(e, object_store::Error::Generic { .. }) {
        return false; // NotFound, PermissionDenied, Precondition, …: the answer stands.
    }
    if transport_of(e).is_some() {
        return true; // refused, reset, cut, timed out: every request here is idempotent
    }
    match status_of(e) {
        Some(s) if s >= 500 || s == 429 || s == 408 => true,
        Some(400) => chain(e).iter().any(|m| m.contains("RequestTimeout")),
        _ => false,
    }
}

impl Policy {
    /// Why a request failed, for people: what kind of failure and the retries made, then
    /// object_store's account (the request, the server's answer or the transport error), with
    /// every credential scrubbed.
    fn reason(&self, e: &object_store::Error, retries: usize, elapsed: Duration) -> String {
        let all = chain(e).join(": ");
        let lower = all.to_lowercase();
        let refused = {
            let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
            let mut found = false;
            while let Some(c) = cur {
                if let Some(io) = c.downcast_ref::<std::io::Error>() {
                    found |= io.kind() == std::io::ErrorKind::ConnectionRefused;
                }
                cur = c.source();
            }
            found
        };
        let hint = match (transport_of(e), status_of(e)) {
            (Some(HttpErrorKind::Connect), _) if refused => {
                "connection refused (is the server down or the endpoint wrong?)".to_string()
            }
            (Some(HttpErrorKind::Timeout), _) => format!(
                "no answer in time (connect timeout {:?}, request timeout {:?})",
                self.connect_timeout, self.request_timeout
            ),
            (Some(HttpErrorKind::Connect), _) => "cannot connect to the server".to_string(),
            (Some(_), _) => "the connection was cut before the answer was complete".to_string(),
            (None, Some(code)) => {
                let what = [
                    ("slowdown", " SlowDown (the server asks for fewer requests)"),
                    ("internalerror", " InternalError"),
                    (
                        "signaturedoesnotmatch",
                        " SignatureDoesNotMatch (wrong secret key?)",
                    ),
                    (
                        "invalidaccesskeyid",
                        " InvalidAccessKeyId (unknown access key)",
                    ),
                    ("accessdenied", " AccessDenied"),
                    ("nosuchbucket", " NoSuchBucket"),
                ]
                .iter()
                .find(|(k, _)| lower.contains(k))
                .map_or("", |(_, w)| w);
                format!("the server answered {code}{what}")
            }
            (None, None) => "the request failed".to_string(),
        };
        let tries = if retries > 0 {
            format!(
                " (gave up after {retries} {} in {:.1?})",
                if retries == 1 { "retry" } else { "retries" },
                elapsed
            )
        } else if retryable(e) {
            " (no retry: retries used up or none configured)".to_string()
        } else {
            String::new()
        };
        let mut out = format!("{hint}{tries}; {all}");
        for s in &self.scrub {
            out = out.replace(s.as_str(), "[redacted]");
        }
        out
    }
}

impl Storage for S3Storage {
    /// Two: the next pack travels while the server stores the one before.
    fn concurrent_puts(&self) -> usize {
        2
    }

    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<()> {
        let key = self.key(kind, name)?;
        let path = ObjPath::from(key.as_str());
        let payload = PutPayload::from_bytes(bytes::Bytes::copy_from_slice(data));
        // One PUT (object_store never splits `put`), unconditional: atomic on the server.
        self.run(|| self.store.put(&path, payload.clone()))
            .map(|_| ())
            .map_err(|f| self.fail("put", &key, f))
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>> {
        let key = self.key(kind, name)?;
        let path = ObjPath::from(key.as_str());
        self.run(|| async { self.store.get(&path).await?.bytes().await })
            .map(|b| b.to_vec())
            .map_err(|f| self.fail("get", &key, f))
    }

    fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let key = self.key(kind, name)?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::corrupt(kind.show(name), "range overflows"))?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let path = ObjPath::from(key.as_str());
        let b = self
            .run(|| self.store.get_range(&path, offset..end))
            .map_err(|f| match status_of(&f.error) {
                // The range starts past the end: the object is shorter than its index says.
                Some(416) => Error::corrupt(
                    self.url(&key),
                    format!("{len} bytes at {offset} asked of a shorter object (416 InvalidRange)"),
                ),
                _ => self.fail("get", &key, f),
            })?;
        if b.len() as u64 != len {
            return Err(Error::corrupt(
                self.url(&key),
                format!("{len} bytes at {offset} asked, {} served", b.len()),
            ));
        }
        Ok(b.to_vec())
    }

    fn list(&self, kind: Kind) -> Result<Vec<(String, u64)>> {
        if kind == Kind::Config {
            // One HEAD: listing the prefix would list the whole repository.
            let key = self.key(Kind::Config, "config")?;
            let path = ObjPath::from(key.as_str());
            return match self.run(|| self.store.head(&path)) {
                Ok(m) => Ok(vec![("config".into(), m.size)]),
                Err(Failed {
                    error: object_store::Error::NotFound { .. },
                    ..
                }) => Ok(vec![]),
                Err(f) => Err(self.fail("list", &key, f)),
            };
        }
        let prefix = self.list_prefix(kind);
        let path = ObjPath::from(prefix.as_str());
        let metas: Vec<object_store::ObjectMeta> = self
            .run(|| self.store.list(Some(&path)).try_collect())
            .map_err(|f| self.fail("list", &format!("{prefix}/"), f))?;
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                // Only objects exactly where this backend puts them.
                let at_home = self.key(kind, &name).ok()? == m.location.as_ref();
                at_home.then_some((name, m.size))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, kind: Kind, name: &str) -> Result<()> {
        let key = self.key(kind, name)?;
        let path = ObjPath::from(key.as_str());
        match self.run(|| self.store.delete(&path)) {
            Ok(())
            | Err(Failed {
                error: object_store::Error::NotFound { .. },
                ..
            }) => Ok(()),
            Err(f) => Err(self.fail("delete", &key, f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(list: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |n| {
            list.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    const CREDS: [(&str, &str); 2] = [
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE1234"),
        ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-example-secret"),
    ];

    #[test]
    fn settings_from_variables() {
        let mut v = CREDS.to_vec();
        v.extend([
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9001"),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
            ("AWS_MAX_ATTEMPTS", "3"),
            ("AWS_SESSION_TOKEN", ""),
        ]);
        let s = S3Settings::from_vars("bucket/a/b/", vars(&v)).unwrap();
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("bucket", "a/b"));
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9001"));
        assert_eq!(s.region, "eu-west-3");
        assert_eq!(s.max_retries, 2);
        assert!(s.session_token.is_none());
        let shown = format!("{s:?} {s:#?}");
        assert!(!shown.contains("wJalrXUtnFEMI") && !shown.contains("AKIDEXAMPLE"));
        let s = S3Settings::from_vars("bucket", vars(&CREDS)).unwrap();
        assert_eq!((s.prefix.as_str(), s.region.as_str()), ("", "us-east-1"));
        assert_eq!(s.max_retries, MAX_RETRIES);
        assert!(S3Settings::from_vars("b", vars(&[("AWS_MAX_ATTEMPTS", "0")])).is_err());
    }

    #[test]
    fn unusable_settings_are_refused_without_echoing_credentials() {
        let ok = S3Settings::from_vars("b/p", vars(&CREDS)).unwrap();
        let refused = |f: &dyn Fn(&mut S3Settings)| {
            let mut s = ok.clone();
            f(&mut s);
            S3Storage::new(s).unwrap_err().to_string()
        };
        assert!(refused(&|s| s.bucket.clear()).contains("no bucket"));
        assert!(refused(&|s| s.bucket = "a b".into()).contains("not a bucket name"));
        for p in ["a//b", "a/../b", "./a", "a%20b", "a*", "a\nb"] {
            let e = refused(&|s| s.prefix = p.into());
            assert!(e.contains("not allowed"), "{p}: {e}");
        }
        let e = refused(&|s| s.endpoint = Some("http://AKID:hunter2secret@host:9000".into()));
        assert!(
            e.contains("carries credentials") && !e.contains("hunter2"),
            "{e}"
        );
        assert!(refused(&|s| s.endpoint = Some("ftp://h".into())).contains("http://"));
        assert!(refused(&|s| s.secret_access_key = None).contains("AWS_SECRET_ACCESS_KEY"));
        assert!(refused(&|s| {
            s.access_key_id = None;
            s.secret_access_key = None
        })
        .contains("no credentials"));
        let s = S3Storage::new(ok).unwrap();
        assert_eq!(s.location(), "s3://b/p");
        assert_eq!(
            s.key(Kind::Data, &"ab".repeat(32)).unwrap(),
            format!("p/data/ab/{}", "ab".repeat(32))
        );
        assert_eq!(s.key(Kind::Config, "config").unwrap(), "p/config");
        assert_eq!(s.list_prefix(Kind::Keys), "p/keys");
        assert!(s.key(Kind::Keys, "../x").is_err());
        assert_eq!(format!("{s:?}"), "S3Storage(s3://b/p)");
    }
}
