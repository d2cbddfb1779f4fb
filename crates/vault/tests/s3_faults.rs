//! The S3 backend under faults, injected by a loopback proxy between the client and a real
//! s3s-fs: the server down (refused), connections reset, `500 InternalError`, `503 SlowDown`,
//! a server that accepts and never answers, and connections cut mid-body.
//!
//! For each, with a permanent fault: a put of a pack, a get and a list each fail after the
//! bounded retries (exactly `1 + max_retries` requests reach the proxy) with
//! `Error::Storage` naming the operation, `s3://bucket/key` and why, and no credential; a push
//! fails with that error (no panic, no hang beyond the configured timeouts); nothing partial
//! is in the bucket (no object at the failed put's name; the packs a push stored before the
//! fault are whole, named by their hash); once the fault clears, a push indexes what the failed
//! one left, and `check` with `read_data` finds nothing wrong. With a transient fault (the
//! first `max_retries` requests fail), the retries absorb it: the push succeeds.
//!
//! Timeouts here are short (connect 1 s, request 2 s) through the settings; no test asserts a
//! duration. Each failure's time and request count are printed (`--nocapture`).

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::proxy::{Fault, Proxy};
use common::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use common::{cheap, data, push, read_all, small, try_push};
use vault::check::check;
use vault::keys::Secret;
use vault::storage::{Kind, S3Settings, S3Storage, Storage};
use vault::{Error, Id, Repository, Writer};

const PREFIX: &str = "faults";
const MAX_RETRIES: usize = 3;

/// Short timeouts and backoffs, so a fault fails fast; a retry count of 3.
fn fast(server: &S3Server, proxy: &Proxy) -> S3Settings {
    let mut s = server.settings_at(&proxy.endpoint(), PREFIX);
    s.connect_timeout = std::time::Duration::from_secs(1);
    s.request_timeout = std::time::Duration::from_secs(2);
    s.max_retries = MAX_RETRIES;
    s.initial_backoff = std::time::Duration::from_millis(50);
    s.max_backoff = std::time::Duration::from_millis(400);
    s.retry_window = std::time::Duration::from_secs(120);
    s
}

struct Rig {
    server: S3Server,
    proxy: Proxy,
    /// Through the proxy.
    storage: Arc<dyn Storage>,
    /// Straight to the server: what the bucket really holds.
    direct: Arc<dyn Storage>,
}

fn rig() -> Rig {
    let server = S3Server::start();
    let proxy = Proxy::start(server.addr);
    let storage: Arc<dyn Storage> = Arc::new(S3Storage::new(fast(&server, &proxy)).unwrap());
    let direct = server.storage(PREFIX);
    Rig {
        server,
        proxy,
        storage,
        direct,
    }
}

/// Every object of the repository, with its bytes.
fn contents(s: &dyn Storage) -> Vec<(Kind, String, Vec<u8>)> {
    let mut out = Vec::new();
    for k in Kind::ALL {
        for (name, _) in s.list(k).unwrap() {
            out.push((k, name.clone(), s.get(k, &name).unwrap()));
        }
    }
    out
}

/// What a fault's message must say.
fn says_why(fault: Fault, reason: &str) -> bool {
    match fault {
        Fault::Down => reason.contains("connection refused"),
        Fault::Reset | Fault::Cut => {
            reason.contains("connection was cut") || reason.contains("connection reset")
        }
        Fault::InternalError => reason.contains("answered 500 InternalError"),
        Fault::SlowDown => reason.contains("answered 503 SlowDown"),
        Fault::Stall => reason.contains("no answer in time"),
    }
}

/// One operation under a permanent fault: an `Error::Storage` for `op` on `object`, saying
/// why, after exactly `1 + MAX_RETRIES` requests (refused connections are not counted).
fn fails<T: std::fmt::Debug>(
    rig: &Rig,
    fault: Fault,
    op: &str,
    object: &str,
    f: impl FnOnce() -> vault::Result<T>,
) {
    let before = rig.proxy.requests();
    let t = Instant::now();
    let e = f().unwrap_err();
    let took = t.elapsed();
    let requests = rig.proxy.requests() - before;
    eprintln!("{fault:?} {op}: {requests} requests, {took:.2?}: {e}");
    let shown = format!("{e} {e:?}");
    assert!(
        !shown.contains(SECRET_KEY) && !shown.contains(ACCESS_KEY),
        "{shown}"
    );
    match &e {
        Error::Storage {
            op: o,
            object: obj,
            reason,
        } => {
            assert_eq!((*o, obj.as_str()), (op, object), "{e}");
            assert!(says_why(fault, reason), "{fault:?}: {reason}");
        }
        other => panic!("{fault:?} {op}: not a storage error: {other:?}"),
    }
    let expected = if fault == Fault::Down {
        0
    } else {
        1 + MAX_RETRIES
    };
    assert_eq!(requests, expected, "{fault:?} {op}: requests made");
}

fn permanent(fault: Fault) {
    let rig = rig();
    let (repo, _) = Repository::init(rig.storage.clone(), b"pw", cheap(), small()).unwrap();
    let first = vec![("a", data(1, 600_000))];
    push(&repo, &first, "phone");
    let stored = rig.direct.list(Kind::Data).unwrap();
    let before = contents(rig.direct.as_ref());

    // One request at a time: put of a new pack, get of a stored one, list of the packs.
    rig.proxy.set(fault);
    let pack = data(99, 300_000);
    let name = Id::of_bytes(&pack).to_hex();
    let key = |n: &str| format!("s3://vault-test/{PREFIX}/data/{}/{n}", &n[..2]);
    fails(&rig, fault, "put", &key(&name), || {
        rig.storage.put(Kind::Data, &name, &pack)
    });
    fails(&rig, fault, "get", &key(&stored[0].0), || {
        rig.storage.get(Kind::Data, &stored[0].0)
    });
    fails(
        &rig,
        fault,
        "list",
        &format!("s3://vault-test/{PREFIX}/data/"),
        || rig.storage.list(Kind::Data),
    );
    assert!(matches!(
        rig.direct.get(Kind::Data, &name),
        Err(Error::Missing { .. })
    ));
    assert!(
        contents(rig.direct.as_ref()) == before,
        "the bucket changed"
    );

    // A push that meets the fault after two of its packs are stored.
    rig.proxy.clear();
    let second = vec![("b", data(2, 1_500_000))];
    let w = Writer::new(&repo, None).unwrap();
    if fault == Fault::Down {
        rig.proxy.set(fault);
    } else {
        rig.proxy.fail_after(2, fault);
    }
    let t = Instant::now();
    // Packs are stored by upload threads while chunking goes on: the failure shows in
    // add_reader or, at the latest, once the packs handed over are waited for.
    let e = w
        .add_reader(&mut &second[0].1[..])
        .and_then(|_| w.flush())
        .unwrap_err();
    eprintln!("{fault:?} push: failed after {:.2?}: {e}", t.elapsed());
    assert!(matches!(e, Error::Storage { op: "put", .. }), "{e}");
    drop(w);
    // Nothing partial: every object is one the vault wrote whole (packs named by their hash).
    let after = contents(rig.direct.as_ref());
    for (kind, name, bytes) in &after {
        if *kind == Kind::Data {
            assert_eq!(&Id::of_bytes(bytes).to_hex(), name, "a partial pack");
        }
    }
    let new_packs = after.len() - before.len();
    let expected_new = if fault == Fault::Down { 0 } else { 2 };
    assert_eq!(new_packs, expected_new, "packs stored before the fault");

    // The fault clears: a full push (which indexes what the failed one stored), then check.
    rig.proxy.clear();
    let s = push(&repo, &second, "phone");
    let repo = Repository::open(rig.direct.clone(), &Secret::Password(b"pw")).unwrap();
    let r = check(&repo, true, None).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.unindexed_packs, 0);
    assert_eq!(r.snapshots, 2);
    assert_eq!(read_all(&repo, &s.to_hex())["b"], second[0].1);
    drop(rig.server);
}

#[test]
fn server_down() {
    permanent(Fault::Down);
}

#[test]
fn connections_reset() {
    permanent(Fault::Reset);
}

#[test]
fn internal_error_500() {
    permanent(Fault::InternalError);
}

#[test]
fn slow_down_503() {
    permanent(Fault::SlowDown);
}

#[test]
fn server_stalls() {
    permanent(Fault::Stall);
}

#[test]
fn connections_cut_mid_body() {
    permanent(Fault::Cut);
}

/// The first `MAX_RETRIES` requests fail, then everything passes: the retries absorb it.
#[test]
fn transient_faults_are_absorbed() {
    let rig = rig();
    let (repo, _) = Repository::init(rig.storage.clone(), b"pw", cheap(), small()).unwrap();
    let mut expected = Vec::new();
    for (i, fault) in [
        Fault::Reset,
        Fault::InternalError,
        Fault::SlowDown,
        Fault::Stall,
        Fault::Cut,
    ]
    .into_iter()
    .enumerate()
    {
        let files = vec![("f", data(10 + i as u32, 700_000))];
        rig.proxy.fail_first(MAX_RETRIES, fault);
        let before = rig.proxy.requests();
        let t = Instant::now();
        let s = try_push(&repo, &files, "phone")
            .unwrap_or_else(|e| panic!("{fault:?}: the retries did not absorb it: {e}"));
        eprintln!(
            "{fault:?} x{MAX_RETRIES} then pass: push of {} requests in {:.2?}",
            rig.proxy.requests() - before,
            t.elapsed()
        );
        let faulted = rig
            .proxy
            .seen()
            .iter()
            .filter(|r| r.fault == Some(fault))
            .count();
        assert_eq!(faulted, MAX_RETRIES, "{fault:?}");
        expected.push((s, files));
    }
    let repo = Repository::open(rig.direct.clone(), &Secret::Password(b"pw")).unwrap();
    let r = check(&repo, true, None).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.unindexed_packs, 0);
    for (s, files) in expected {
        assert_eq!(read_all(&repo, &s.to_hex())["f"], files[0].1);
    }
}
