//! A repository behind `keybag serve`: the storage API over HTTPS, with a bearer token, the
//! server's certificate pinned by its SHA-256 fingerprint (checked on every connection), and
//! bounded retries with exponential backoff on connection failures, 5xx and 429.

use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{check_name, Kind, Storage};
use crate::{Error, Result};

/// How to reach a server.
#[derive(Clone)]
pub struct HttpSettings {
    /// `https://host:port` (or `http://` on a loopback address, for tests).
    pub base: String,
    /// The bearer token.
    pub token: Zeroizing<String>,
    /// The SHA-256 of the server's certificate (hex); required for https.
    pub fingerprint: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries of a failed request.
    pub retries: u32,
}

impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("base", &self.base)
            .field("token", &"(redacted)")
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl HttpSettings {
    /// `base` with `token` and `fingerprint`, default timeout (120 s) and retries (4).
    pub fn new(base: &str, token: Zeroizing<String>, fingerprint: Option<String>) -> HttpSettings {
        HttpSettings {
            base: base.trim_end_matches('/').to_string(),
            token,
            fingerprint,
            timeout: Duration::from_secs(120),
            retries: 4,
        }
    }
}

/// Accepts exactly one certificate: the one whose SHA-256 is pinned (a self-signed server
/// certificate is the common case, so no chain is built). With no pin, records what it saw
/// and refuses (see [`probe_fingerprint`]).
#[derive(Debug)]
struct Pinned {
    want: Option<[u8; 32]>,
    seen: std::sync::Mutex<Option<String>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        *self.seen.lock().expect("lock") = Some(hex::encode(got));
        match self.want {
            Some(w) if w == got => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::General(
                "the server's certificate does not match the pinned fingerprint".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn pinned(want: Option<&str>) -> Result<Arc<Pinned>> {
    let want = match want {
        Some(h) => {
            let h: String = h
                .chars()
                .filter(|c| *c != ':')
                .collect::<String>()
                .to_lowercase();
            let mut b = [0u8; 32];
            hex::decode_to_slice(&h, &mut b).map_err(|_| {
                Error::Invalid("a server fingerprint is 64 hex digits (SHA-256)".into())
            })?;
            Some(b)
        }
        None => None,
    };
    Ok(Arc::new(Pinned {
        want,
        seen: std::sync::Mutex::new(None),
        provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    }))
}

fn client_with(verifier: Arc<Pinned>, timeout: Duration) -> Result<Client> {
    let tls = rustls::ClientConfig::builder_with_provider(verifier.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Error::Invalid(format!("HTTP client: {e}")))
}

/// An HTTPS client that accepts only the certificate pinned by `fingerprint` (plain HTTP is
/// accepted for loopback addresses only).
pub fn client(base: &str, fingerprint: Option<&str>, timeout: Duration) -> Result<Client> {
    check_base(base)?;
    if base.starts_with("https://") && fingerprint.is_none() {
        return Err(Error::Invalid(format!(
            "{base}: no pinned fingerprint for this server (log in first, or give --server-fingerprint)"
        )));
    }
    client_with(pinned(fingerprint)?, timeout)
}

/// Connects once to `base` and returns the SHA-256 fingerprint of the certificate it shows,
/// without trusting it (trust on first use: the caller shows it and pins it).
pub fn probe_fingerprint(base: &str) -> Result<String> {
    check_base(base)?;
    let v = pinned(None)?;
    let c = client_with(v.clone(), Duration::from_secs(15))?;
    let _ = c.get(format!("{base}/healthz")).send();
    let seen = v.seen.lock().expect("lock").clone();
    seen.ok_or_else(|| Error::Storage {
        op: "connect",
        object: base.to_string(),
        reason: "no TLS certificate was received (is it an https:// keybag server?)".into(),
    })
}

fn check_base(base: &str) -> Result<()> {
    if let Some(rest) = base.strip_prefix("http://") {
        let host = rest.split(['/', ':']).next().unwrap_or("");
        if !(host == "127.0.0.1" || host == "localhost" || host == "[::1]") {
            return Err(Error::Invalid(format!(
                "{base}: plain HTTP only to a loopback address; use https://"
            )));
        }
        return Ok(());
    }
    if base.starts_with("https://") {
        return Ok(());
    }
    Err(Error::Invalid(format!("{base}: not an https:// URL")))
}

/// A repository on a keybag server.
pub struct HttpStorage {
    client: Client,
    base: String,
    token: Zeroizing<String>,
    retries: u32,
}

impl std::fmt::Debug for HttpStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HttpStorage({})", self.base)
    }
}

impl HttpStorage {
    /// A client for `settings`.
    pub fn new(settings: HttpSettings) -> Result<HttpStorage> {
        let client = client(
            &settings.base,
            settings.fingerprint.as_deref(),
            settings.timeout,
        )?;
        Ok(HttpStorage {
            client,
            base: settings.base,
            token: settings.token,
            retries: settings.retries,
        })
    }

    /// [`HttpStorage::new`] over a client made already by [`client`] for the same server (one
    /// connection pool, one TLS handshake, for a program that also talks to the server's
    /// other APIs); `settings.fingerprint` and `timeout` are the client's then.
    pub fn with_client(settings: HttpSettings, client: Client) -> Result<HttpStorage> {
        check_base(&settings.base)?;
        Ok(HttpStorage {
            client,
            base: settings.base,
            token: settings.token,
            retries: settings.retries,
        })
    }

    fn url(&self, kind: Kind, name: Option<&str>) -> String {
        match (kind, name) {
            (Kind::Config, _) => format!("{}/v1/repo/config", self.base),
            (k, None) => format!("{}/v1/repo/{}/", self.base, k.dir()),
            (k, Some(n)) => format!("{}/v1/repo/{}/{n}", self.base, k.dir()),
        }
    }

    /// Sends with retries; returns the final response (any status).
    fn send(
        &self,
        op: &'static str,
        object: &str,
        make: &dyn Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            match make().bearer_auth(self.token.as_str()).send() {
                Ok(r)
                    if r.status().is_server_error()
                        || r.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    last = format!("server answered {}", r.status());
                }
                Ok(r) => return Ok(r),
                Err(e) => {
                    last = describe(&e);
                    if last.contains("pinned fingerprint") {
                        break; // never retried: a different server
                    }
                }
            }
        }
        Err(Error::Storage {
            op,
            object: object.to_string(),
            reason: format!("{last} (after {} attempts)", self.retries + 1),
        })
    }

    fn check(&self, op: &'static str, kind: Kind, name: &str, r: Response) -> Result<Response> {
        let s = r.status();
        if s.is_success() {
            return Ok(r);
        }
        if s == StatusCode::NOT_FOUND && op != "put" {
            return Err(Error::Missing {
                object: kind.show(name),
            });
        }
        let msg = r
            .json::<serde_json::Value>()
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Err(Error::Storage {
            op,
            object: kind.show(name),
            reason: format!("server answered {s}: {msg}"),
        })
    }
}

/// An error's chain as one line (reqwest hides the TLS cause in its sources).
pub fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// A response body read straight into one buffer (sized from `expect` or Content-Length,
/// capped): `bytes()` then `to_vec()` copied a 16 MiB pack twice more.
fn read_body(
    mut r: reqwest::blocking::Response,
    object: &str,
    expect: Option<u64>,
) -> Result<Vec<u8>> {
    use std::io::Read;
    let hint = expect.or(r.content_length()).unwrap_or(0).min(64 << 20) as usize;
    let mut v = Vec::with_capacity(hint);
    r.read_to_end(&mut v).map_err(|e| Error::Storage {
        op: "get",
        object: object.to_string(),
        reason: e.to_string(),
    })?;
    Ok(v)
}

impl Storage for HttpStorage {
    /// Three: the next packs travel while the server stores (and fsyncs) the one before.
    fn concurrent_puts(&self) -> usize {
        3
    }

    fn location(&self) -> String {
        self.base.clone()
    }

    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<()> {
        check_name(kind, name)?;
        let url = self.url(kind, Some(name));
        let body = bytes::Bytes::copy_from_slice(data);
        let r = self.send("put", &kind.show(name), &|| {
            self.client.put(&url).body(body.clone())
        })?;
        self.check("put", kind, name, r).map(|_| ())
    }

    fn put_buf(&self, kind: Kind, name: &str, data: Vec<u8>) -> (Result<()>, Option<Vec<u8>>) {
        if let Err(e) = check_name(kind, name) {
            return (Err(e), Some(data));
        }
        let url = self.url(kind, Some(name));
        // The body shares the buffer (no copy); once the request is done it is ours again.
        let body = bytes::Bytes::from(data);
        let r = self
            .send("put", &kind.show(name), &|| {
                self.client.put(&url).body(body.clone())
            })
            .and_then(|r| self.check("put", kind, name, r).map(|_| ()));
        let back = body.try_into_mut().ok().map(Vec::from);
        (r, back)
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>> {
        check_name(kind, name)?;
        let url = self.url(kind, Some(name));
        let r = self.send("get", &kind.show(name), &|| self.client.get(&url))?;
        let r = self.check("get", kind, name, r)?;
        read_body(r, &kind.show(name), None)
    }

    fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        check_name(kind, name)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let url = self.url(kind, Some(name));
        let range = format!("bytes={offset}-{}", offset + len - 1);
        let r = self.send("get", &kind.show(name), &|| {
            self.client
                .get(&url)
                .header(reqwest::header::RANGE, range.clone())
        })?;
        if r.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            return Err(Error::corrupt(kind.show(name), "range outside the object"));
        }
        let r = self.check("get", kind, name, r)?;
        let b = read_body(r, &kind.show(name), Some(len))?;
        if b.len() as u64 != len {
            return Err(Error::corrupt(
                kind.show(name),
                format!("asked {len} bytes at {offset}, got {}", b.len()),
            ));
        }
        Ok(b)
    }

    fn list(&self, kind: Kind) -> Result<Vec<(String, u64)>> {
        if kind == Kind::Config {
            return Ok(self
                .size(kind, "config")?
                .map(|n| vec![("config".into(), n)])
                .unwrap_or_default());
        }
        let url = self.url(kind, None);
        let what = format!("{}/", kind.dir());
        let r = self.send("list", &what, &|| self.client.get(&url))?;
        let r = self.check("list", kind, &what, r)?;
        let mut v: Vec<(String, u64)> = r.json().map_err(|e| Error::Storage {
            op: "list",
            object: what.clone(),
            reason: describe(&e),
        })?;
        v.retain(|(n, _)| check_name(kind, n).is_ok());
        v.sort();
        Ok(v)
    }

    fn delete(&self, kind: Kind, name: &str) -> Result<()> {
        check_name(kind, name)?;
        let url = self.url(kind, Some(name));
        let r = self.send("delete", &kind.show(name), &|| self.client.delete(&url))?;
        if r.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        self.check("delete", kind, name, r).map(|_| ())
    }

    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>> {
        check_name(kind, name)?;
        let url = self.url(kind, Some(name));
        let r = self.send("get", &kind.show(name), &|| self.client.head(&url))?;
        if r.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let r = self.check("get", kind, name, r)?;
        Ok(r.headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok()))
    }
}
