//! Bad requests and failures around the service: malformed and oversized requests, wrong,
//! expired and revoked tokens, guessed names, a client that disconnects mid-upload, the S3
//! server going down, login throttling, quotas and rate limits. After each, the server still
//! serves everyone else, and nothing partial is ever visible.

mod common;

use std::io::Read;

use common::{Deployment, TestServer};
use reqwest::blocking::{Body, Client};
use reqwest::Method;

fn object(tag: &str) -> (String, Vec<u8>) {
    let body = format!("sealed bytes of {tag}").repeat(50).into_bytes();
    (vault::Id::of_bytes(&body).to_hex(), body)
}

fn status(c: &Client, m: Method, url: &str, token: Option<&str>, body: Vec<u8>) -> u16 {
    let mut rb = c.request(m, url).body(body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    rb.send().expect("request").status().as_u16()
}

fn start(d: &Deployment, data: &std::path::Path) -> TestServer {
    TestServer::start(d.options(data.to_path_buf()))
}

/// Every kind of malformed request gets a 4xx naming the problem; the server goes on serving.
#[test]
fn malformed_requests_get_4xx() {
    let d = Deployment::local();
    let data = tempfile::tempdir().unwrap();
    let srv = start(&d, data.path());
    let owner = srv.account("alice", "pw one two three");
    let c = srv.http();
    let b = &srv.base;
    let (name, bytes) = object("x");
    // A body that does not hash to its name: refused, and never visible.
    let (other, _) = object("y");
    let r = c
        .put(format!("{b}/v1/repo/data/{other}"))
        .bearer_auth(&owner)
        .body(bytes.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("does not hash"));
    assert_eq!(
        status(
            &c,
            Method::HEAD,
            &format!("{b}/v1/repo/data/{other}"),
            Some(&owner),
            vec![]
        ),
        404
    );
    let cases: Vec<(Method, String, Vec<u8>, &str, u16)> = vec![
        (
            Method::PUT,
            format!("{b}/v1/repo/data/not-hex"),
            bytes.clone(),
            "",
            400,
        ),
        (
            Method::PUT,
            format!("{b}/v1/repo/data/{}", &name[..40]),
            bytes.clone(),
            "",
            400,
        ),
        (
            Method::PUT,
            format!("{b}/v1/repo/data/..%2F..%2Fetc"),
            bytes.clone(),
            "",
            400,
        ),
        (
            Method::GET,
            format!("{b}/v1/repo/data/..%2Fconfig"),
            vec![],
            "",
            404,
        ),
        (
            Method::GET,
            format!("{b}/v1/repo/nosuchkind/{name}"),
            vec![],
            "",
            404,
        ),
        (
            Method::GET,
            format!("{b}/v1/repo/nosuchkind/"),
            vec![],
            "",
            404,
        ),
        (Method::GET, format!("{b}/v1/nothing/here"), vec![], "", 404),
        (
            Method::PATCH,
            format!("{b}/v1/repo/data/{name}"),
            vec![],
            "",
            405,
        ),
        (
            Method::POST,
            format!("{b}/v1/login/start"),
            b"not json".to_vec(),
            "application/json",
            400,
        ),
        (
            Method::POST,
            format!("{b}/v1/login/start"),
            br#"{"account":"alice"}"#.to_vec(),
            "application/json",
            422,
        ),
        (
            Method::POST,
            format!("{b}/v1/login/start"),
            br#"{"account":"alice","message":"%%%"}"#.to_vec(),
            "application/json",
            400,
        ),
        (
            Method::POST,
            format!("{b}/v1/login/start"),
            br#"{"account":"alice","message":"AAAA"}"#.to_vec(),
            "application/json",
            400,
        ),
        (
            Method::POST,
            format!("{b}/v1/login/finish"),
            br#"{"login":"nope","message":"AAAA"}"#.to_vec(),
            "application/json",
            401,
        ),
        (
            Method::POST,
            format!("{b}/v1/register/start"),
            br#"{"account":"alice","code":"guess","message":"AAAA"}"#.to_vec(),
            "application/json",
            403,
        ),
        (
            Method::POST,
            format!("{b}/v1/devices"),
            br#"{"name":""}"#.to_vec(),
            "application/json",
            400,
        ),
        (
            Method::POST,
            format!("{b}/v1/devices"),
            br#"{"name":"x","scope":"owner"}"#.to_vec(),
            "application/json",
            400,
        ),
        (
            Method::POST,
            format!("{b}/v1/devices"),
            br#"{"name":"x","scope":"root"}"#.to_vec(),
            "application/json",
            422,
        ),
        (
            Method::POST,
            format!("{b}/v1/devices"),
            br#"{"name":"x"}"#.to_vec(),
            "text/plain",
            415,
        ),
    ];
    for (m, url, body, ctype, want) in cases {
        let mut rb = c.request(m.clone(), &url).bearer_auth(&owner).body(body);
        if !ctype.is_empty() {
            rb = rb.header("content-type", ctype);
        }
        let got = rb.send().unwrap().status().as_u16();
        assert_eq!(got, want, "{m} {url}");
    }
    // Ranges: malformed or outside the object.
    assert_eq!(
        status(
            &c,
            Method::PUT,
            &format!("{b}/v1/repo/data/{name}"),
            Some(&owner),
            bytes.clone()
        ),
        201
    );
    for (range, want) in [
        ("bytes=5-2", 416),
        ("bytes=abc", 416),
        ("items=0-1", 416),
        ("bytes=0-99999999", 416),
        ("bytes=2-5", 200),
    ] {
        let r = c
            .get(format!("{b}/v1/repo/data/{name}"))
            .bearer_auth(&owner)
            .header("range", range)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "Range: {range}");
        if want == 200 {
            assert_eq!(r.bytes().unwrap().as_ref(), &bytes[2..6]);
        }
    }
    // Authorization headers that are not ours.
    let long = format!("Bearer {}", "a".repeat(5000));
    for h in [
        "Basic YWxpY2U6cHc=",
        "Bearer",
        "Bearer    ",
        long.as_str(),
        "bearer kbt_x",
    ] {
        let r = c
            .get(format!("{b}/v1/status"))
            .header("authorization", h)
            .send()
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            401,
            "Authorization: {}",
            &h[..h.len().min(20)]
        );
    }
    // And the server still serves: a good request works.
    assert_eq!(
        status(
            &c,
            Method::GET,
            &format!("{b}/v1/status"),
            Some(&owner),
            vec![]
        ),
        200
    );
}

/// Bodies past the limits: 413, nothing stored.
#[test]
fn oversized_bodies_are_refused() {
    let d = Deployment::local();
    let data = tempfile::tempdir().unwrap();
    let mut o = d.options(data.path().to_path_buf());
    o.max_body = 1 << 20;
    let srv = TestServer::start(o);
    let owner = srv.account("alice", "pw one two three");
    let c = srv.http();
    let b = &srv.base;
    let big = vec![7u8; (1 << 20) + 1];
    let name = vault::Id::of_bytes(&big).to_hex();
    assert_eq!(
        status(
            &c,
            Method::PUT,
            &format!("{b}/v1/repo/data/{name}"),
            Some(&owner),
            big.clone()
        ),
        413
    );
    assert_eq!(
        status(
            &c,
            Method::HEAD,
            &format!("{b}/v1/repo/data/{name}"),
            Some(&owner),
            vec![]
        ),
        404
    );
    // The same without a Content-Length (chunked): cut off at the limit all the same.
    let r = c
        .put(format!("{b}/v1/repo/data/{name}"))
        .bearer_auth(&owner)
        .body(Body::new(std::io::Cursor::new(big.clone())))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let mut json = br#"{"account":"alice","message":""#.to_vec();
    json.extend(std::iter::repeat_n(b'A', 2 << 20));
    json.extend(br#""}"#);
    let r = c
        .post(format!("{b}/v1/login/start"))
        .header("content-type", "application/json")
        .body(json)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // A config is small.
    let cfg = vec![1u8; 100 << 10];
    assert_eq!(
        status(
            &c,
            Method::PUT,
            &format!("{b}/v1/repo/config"),
            Some(&owner),
            cfg
        ),
        413
    );
    assert_eq!(
        status(
            &c,
            Method::GET,
            &format!("{b}/v1/repo/config"),
            Some(&owner),
            vec![]
        ),
        404
    );
    assert_eq!(
        status(
            &c,
            Method::GET,
            &format!("{b}/v1/status"),
            Some(&owner),
            vec![]
        ),
        200
    );
}

/// Wrong, expired, revoked and reset tokens: 401; another account's objects: 404.
#[test]
fn token_states() {
    let d = Deployment::local();
    let data = tempfile::tempdir().unwrap();
    let srv = start(&d, data.path());
    let alice = srv.account("alice", "pw one two three");
    let bob = srv.account("bob", "pw four five six");
    let c = srv.http();
    let b = &srv.base;
    let st = |t: &str| {
        status(
            &c,
            Method::GET,
            &format!("{b}/v1/repo/index/"),
            Some(t),
            vec![],
        )
    };
    // Wrong: an unknown token, a token with a byte changed.
    assert_eq!(st("kbt_nonsense"), 401);
    let mut changed = alice.clone().into_bytes();
    let last = changed.len() - 1;
    changed[last] = if changed[last] == b'A' { b'B' } else { b'A' };
    assert_eq!(st(std::str::from_utf8(&changed).unwrap()), 401);
    assert_eq!(st(&alice), 200);
    // Expired: a session whose time is up (written straight into the database).
    let (expired, hash) = server::auth::new_token();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = server::db::Db::open(&srv.opts.database_url())
            .await
            .unwrap();
        let acct = db.account_by_name("alice").await.unwrap().unwrap();
        let now = server::admin::now();
        db.add_token(
            &hash,
            Some(&acct.id),
            None,
            "owner",
            Some(now - 1),
            now - 100,
        )
        .await
        .unwrap();
    });
    assert_eq!(st(&expired), 401);
    // Revoked: logged out; a revoked device's tokens.
    let session = srv
        .client()
        .login("alice", b"pw one two three")
        .unwrap()
        .token
        .to_string();
    assert_eq!(st(&session), 200);
    srv.client().logout(&session).unwrap();
    assert_eq!(st(&session), 401);
    let v = srv.client().add_device(&alice, "phone", "backup").unwrap();
    let dev = v["token"].as_str().unwrap().to_string();
    assert_eq!(st(&dev), 200);
    srv.client()
        .revoke_device(&alice, v["device"].as_str().unwrap())
        .unwrap();
    assert_eq!(st(&dev), 401);
    // Another account's object, by its real name: 404, exactly as a name nobody has.
    let (name, bytes) = object("alice's pack");
    assert_eq!(
        status(
            &c,
            Method::PUT,
            &format!("{b}/v1/repo/data/{name}"),
            Some(&alice),
            bytes
        ),
        201
    );
    for m in [Method::GET, Method::HEAD, Method::DELETE] {
        assert_eq!(
            status(
                &c,
                m.clone(),
                &format!("{b}/v1/repo/data/{name}"),
                Some(&bob),
                vec![]
            ),
            404,
            "{m}"
        );
    }
    assert_eq!(
        status(
            &c,
            Method::HEAD,
            &format!("{b}/v1/repo/data/{name}"),
            Some(&alice),
            vec![]
        ),
        200
    );
    // A password reset revokes every token of the account.
    let code = server::ops::reset_account(&srv.opts, "alice").unwrap();
    assert_eq!(st(&alice), 401);
    assert_eq!(st(&bob), 200);
    // The new code registers a new password; the old one no longer logs in.
    srv.client()
        .register("alice", &code, b"a new password")
        .unwrap();
    assert!(srv.client().login("alice", b"pw one two three").is_err());
    let t = srv.client().login("alice", b"a new password").unwrap();
    assert_eq!(st(&t.token), 200);
    // A code is used once.
    assert!(srv.client().register("alice", &code, b"again").is_err());
}

/// A reader that gives `n` bytes, then fails: the client drops the connection mid-body.
struct Cut {
    left: usize,
}

impl Read for Cut {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("client gone"));
        }
        let n = buf.len().min(self.left);
        buf[..n].fill(0x5a);
        self.left -= n;
        Ok(n)
    }
}

/// A client that disconnects mid-upload leaves nothing: no object, no temp file; the server
/// serves the next request, and the retried upload succeeds.
#[test]
fn client_disconnect_mid_upload() {
    for d in [Deployment::local(), Deployment::scaled()] {
        let data = tempfile::tempdir().unwrap();
        let srv = start(&d, data.path());
        let owner = srv.account("alice", "pw one two three");
        let c = srv.http();
        let b = &srv.base;
        let full = vec![0x5au8; 3 << 20];
        let name = vault::Id::of_bytes(&full).to_hex();
        for cut in [0usize, 1, 64 << 10, (3 << 20) - 1] {
            let r = c
                .put(format!("{b}/v1/repo/data/{name}"))
                .bearer_auth(&owner)
                .header("content-length", full.len().to_string())
                .body(Body::sized(Cut { left: cut }, full.len() as u64))
                .send();
            assert!(
                r.is_err() || !r.unwrap().status().is_success(),
                "cut at {cut}"
            );
            assert_eq!(
                status(
                    &c,
                    Method::HEAD,
                    &format!("{b}/v1/repo/data/{name}"),
                    Some(&owner),
                    vec![]
                ),
                404,
                "cut at {cut}: a partial object is visible"
            );
        }
        let list = c
            .get(format!("{b}/v1/repo/data/"))
            .bearer_auth(&owner)
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert_eq!(list, "[]");
        if let Deployment::Local = d {
            // No temp file left behind in the account's folder.
            let leftovers: Vec<_> = walk(&data.path().join("blobs"));
            assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
        }
        assert_eq!(
            status(
                &c,
                Method::PUT,
                &format!("{b}/v1/repo/data/{name}"),
                Some(&owner),
                full.clone()
            ),
            201
        );
        let got = c
            .get(format!("{b}/v1/repo/data/{name}"))
            .bearer_auth(&owner)
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        assert!(got.as_ref() == full.as_slice());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The S3 server down: clients get 503 with Retry-After (never a 404 or a false success);
/// back up, everything stored before is there and new writes work.
#[test]
fn s3_down_gives_503_and_loses_nothing() {
    let mut d = Deployment::scaled();
    let data = tempfile::tempdir().unwrap();
    let srv = start(&d, data.path());
    let owner = srv.account("alice", "pw one two three");
    let c = srv.http();
    let b = &srv.base;
    let (n1, b1) = object("before");
    assert_eq!(
        status(
            &c,
            Method::PUT,
            &format!("{b}/v1/repo/data/{n1}"),
            Some(&owner),
            b1.clone()
        ),
        201
    );
    d.s3().stop();
    let (n2, b2) = object("during");
    for (m, url, body) in [
        (Method::PUT, format!("{b}/v1/repo/data/{n2}"), b2.clone()),
        (Method::GET, format!("{b}/v1/repo/data/{n1}"), vec![]),
        (Method::HEAD, format!("{b}/v1/repo/data/{n1}"), vec![]),
        (Method::GET, format!("{b}/v1/repo/data/"), vec![]),
        (Method::DELETE, format!("{b}/v1/repo/data/{n1}"), vec![]),
    ] {
        let r = c
            .request(m.clone(), &url)
            .bearer_auth(&owner)
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 503, "{m} with S3 down");
        assert_eq!(
            r.headers().get("retry-after").map(|v| v.to_str().unwrap()),
            Some("1")
        );
    }
    // The account API does not need S3.
    assert_eq!(
        status(
            &c,
            Method::GET,
            &format!("{b}/v1/status"),
            Some(&owner),
            vec![]
        ),
        200
    );
    d.s3().restart();
    let got = c
        .get(format!("{b}/v1/repo/data/{n1}"))
        .bearer_auth(&owner)
        .send()
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.bytes().unwrap().as_ref(), b1.as_slice());
    assert_eq!(
        status(
            &c,
            Method::PUT,
            &format!("{b}/v1/repo/data/{n2}"),
            Some(&owner),
            b2
        ),
        201
    );
    // Usage counts what is stored, once each.
    let s = srv.client().status(&owner).unwrap();
    assert_eq!(s["used_bytes"].as_u64().unwrap(), (b1.len() * 2) as u64);
}

/// Failed logins are throttled per account (429, even for the right password, until the
/// window passes); other accounts log in meanwhile.
#[test]
fn failed_logins_are_throttled() {
    let d = Deployment::local();
    let data = tempfile::tempdir().unwrap();
    let srv = start(&d, data.path());
    srv.account("alice", "right password");
    srv.account("bob", "bob password");
    let c = srv.client();
    let mut refused = 0;
    for _ in 0..12 {
        match c.login("alice", b"wrong password") {
            Err(server::client::ClientError::WrongPassword) => {}
            Err(server::client::ClientError::Refused { status: 429, .. }) => refused += 1,
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert!(refused >= 2, "no throttling after 12 failures");
    match c.login("alice", b"right password") {
        Err(server::client::ClientError::Refused { status: 429, .. }) => {}
        other => panic!("expected 429 for the throttled account, got {other:?}"),
    }
    c.login("bob", b"bob password")
        .expect("another account logs in");
    // An account nobody has looks like one with a wrong password.
    assert!(matches!(
        c.login("nobody", b"x"),
        Err(server::client::ClientError::WrongPassword)
    ));
}

/// Quotas: a write that would pass the quota is 507 and not stored; deletes free space.
#[test]
fn quota_is_enforced() {
    let d = Deployment::local();
    let data = tempfile::tempdir().unwrap();
    let srv = start(&d, data.path());
    let owner = srv.account("alice", "pw one two three");
    server::ops::set_quota(&srv.opts, "alice", 2500).unwrap();
    let c = srv.http();
    let b = &srv.base;
    let (n1, b1) = object("one"); // 1150 bytes
    let (n2, b2) = object("two");
    let (n3, b3) = object("three");
    assert_eq!(
        status(
            &c,
            Method::PUT,
            &format!("{b}/v1/repo/data/{n1}"),
            Some(&owner),
            b1.clone()
        ),
        201
    );
    // The same object again costs nothing.
    assert_eq!(
        status(
            &c,
            Method::PUT,
            &format!("{b}/v1/repo/data/{n1}"),
            Some(&owner),
            b1
        ),
        201
    );
    assert_eq!(
        status(
            &c,
            Method::PUT,
            &format!("{b}/v1/repo/data/{n2}"),
            Some(&owner),
            b2
        ),
        201
    );
    let r = c
        .put(format!("{b}/v1/repo/data/{n3}"))
        .bearer_auth(&owner)
        .body(b3.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 507);
    assert!(r.text().unwrap().contains("quota"));
    assert_eq!(
        status(
            &c,
            Method::HEAD,
            &format!("{b}/v1/repo/data/{n3}"),
            Some(&owner),
            vec![]
        ),
        404
    );
    assert_eq!(
        status(
            &c,
            Method::DELETE,
            &format!("{b}/v1/repo/data/{n2}"),
            Some(&owner),
            vec![]
        ),
        204
    );
    assert_eq!(
        status(
            &c,
            Method::PUT,
            &format!("{b}/v1/repo/data/{n3}"),
            Some(&owner),
            b3
        ),
        201
    );
}

/// A token past its rate gets 429 with Retry-After; the vault's client waits and retries, so
/// its operations still succeed.
#[test]
fn rate_limits_and_client_backoff() {
    let d = Deployment::local();
    let data = tempfile::tempdir().unwrap();
    let mut o = d.options(data.path().to_path_buf());
    o.rate_per_token = 5;
    let srv = TestServer::start(o);
    let owner = srv.account("alice", "pw one two three");
    let c = srv.http();
    let b = &srv.base;
    let mut limited = 0;
    for _ in 0..30 {
        let r = c
            .get(format!("{b}/v1/repo/index/"))
            .bearer_auth(&owner)
            .send()
            .unwrap();
        if r.status().as_u16() == 429 {
            assert!(r.headers().get("retry-after").is_some());
            limited += 1;
        }
    }
    assert!(limited > 0, "30 requests at once passed a limit of 5/s");
    let mut s = vault::storage::HttpSettings::new(
        b,
        zeroize::Zeroizing::new(owner.clone()),
        Some(srv.fingerprint.clone()),
    );
    s.retries = 8;
    let store = vault::storage::HttpStorage::new(s).unwrap();
    use vault::storage::{Kind, Storage};
    for i in 0..20 {
        let (n, body) = object(&format!("burst {i}"));
        store
            .put(Kind::Data, &n, &body)
            .expect("put through the limit");
    }
    assert_eq!(store.list(Kind::Data).unwrap().len(), 20);
}

/// `/healthz` and `/metrics` (Prometheus text: counters by route template, never by object).
#[test]
fn health_and_metrics() {
    let d = Deployment::local();
    let data = tempfile::tempdir().unwrap();
    let srv = start(&d, data.path());
    let owner = srv.account("alice", "pw one two three");
    let c = srv.http();
    let b = &srv.base;
    let (n, body) = object("metric");
    assert_eq!(
        status(
            &c,
            Method::PUT,
            &format!("{b}/v1/repo/data/{n}"),
            Some(&owner),
            body
        ),
        201
    );
    assert_eq!(
        status(
            &c,
            Method::from_bytes(b"MADEUP").unwrap(),
            &format!("{b}/healthz"),
            None,
            vec![]
        ),
        405
    );
    assert_eq!(
        c.get(format!("{b}/healthz"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "ok\n"
    );
    let m = c
        .get(format!("{b}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(m.contains("# TYPE keybag_requests_total counter"));
    assert!(
        m.contains(
            r#"keybag_requests_total{method="PUT",route="/v1/repo/{kind}/{name}",status="201"} 1"#
        ),
        "{m}"
    );
    assert!(m.contains(r#"method="OTHER""#));
    assert!(m.contains("keybag_request_seconds_bucket{le=\"+Inf\"}"));
    assert!(!m.contains(&n), "an object name in the metrics");
    assert!(!m.contains("alice"));
}

/// The memory budget for bodies: with room for one upload at a time, many at once all
/// succeed (they wait their turn), and downloads share it too.
#[test]
fn uploads_wait_for_the_memory_budget() {
    let d = Deployment::local();
    let data = tempfile::tempdir().unwrap();
    let mut o = d.options(data.path().to_path_buf());
    o.max_body = 1 << 20;
    o.body_budget = 1 << 20;
    let srv = TestServer::start(o);
    let owner = srv.account("alice", "pw one two three");
    let b = srv.base.clone();
    let objs: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            let body = vec![i as u8; 900 << 10];
            (vault::Id::of_bytes(&body).to_hex(), body)
        })
        .collect();
    std::thread::scope(|s| {
        for (name, body) in &objs {
            let c = srv.http();
            let (b, owner) = (&b, &owner);
            s.spawn(move || {
                assert_eq!(
                    status(
                        &c,
                        Method::PUT,
                        &format!("{b}/v1/repo/data/{name}"),
                        Some(owner),
                        body.clone()
                    ),
                    201
                );
                let got = c
                    .get(format!("{b}/v1/repo/data/{name}"))
                    .bearer_auth(owner)
                    .send()
                    .unwrap();
                assert_eq!(got.status().as_u16(), 200);
                assert!(got.bytes().unwrap().as_ref() == body.as_slice());
            });
        }
    });
}
