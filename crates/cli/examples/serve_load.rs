//! Load on a running `keybag serve` (scripts/bench-serve.sh; docs/BENCHMARKS.md, issue 10):
//! CLIENTS people, each with an account, a repository and a phone enrolled with a backup
//! token, push small incremental backups (a few files changed each time) for SECONDS at once.
//! Every storage request is timed on the client; the result is one JSON object on stdout.
//!
//!     cargo run --release -p keybag --example serve_load -- \
//!         --data DIR --url https://127.0.0.1:PORT --fingerprint HEX \
//!         [--clients 50] [--seconds 60] [--files 200] [--file-kib 4] [--changes 5]
//!
//! With `--make-backup OUT [--files N] [--file-kib K]` it only writes one backup (N files of
//! K KiB of random bytes) into OUT and exits: the data for the via-server vs direct push.
//!
//! DIR is the server's data folder (accounts are made there, as `keybag serve admin` does).
//! Set-up (accounts, first full pushes) is not measured. Benchmark data protects nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use mobilebackup::writer::{BackupWriter, Content, NewRecord, WriterOptions};
use server::client::ServerClient;
use vault::keys::{Argon2Params, Params, Secret};
use vault::storage::{HttpSettings, HttpStorage, Kind, Storage};
use vault::Repository;
use zeroize::Zeroizing;

struct Args {
    data: PathBuf,
    database: Option<String>,
    url: String,
    fingerprint: Option<String>,
    clients: usize,
    seconds: u64,
    files: usize,
    file_kib: usize,
    changes: usize,
    make_backup: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        data: PathBuf::new(),
        database: None,
        url: String::new(),
        fingerprint: None,
        clients: 50,
        seconds: 60,
        files: 200,
        file_kib: 4,
        changes: 5,
        make_backup: None,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--data" => a.data = val.into(),
            "--database" => a.database = Some(val),
            "--url" => a.url = val,
            "--fingerprint" => a.fingerprint = Some(val),
            "--clients" => a.clients = val.parse().expect("--clients N"),
            "--seconds" => a.seconds = val.parse().expect("--seconds N"),
            "--files" => a.files = val.parse().expect("--files N"),
            "--file-kib" => a.file_kib = val.parse().expect("--file-kib N"),
            "--changes" => a.changes = val.parse().expect("--changes N"),
            "--make-backup" => a.make_backup = Some(val.into()),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    assert!(
        a.make_backup.is_some() || !a.url.is_empty(),
        "--url is needed"
    );
    a
}

/// Times every request of a storage.
struct Timed {
    inner: HttpStorage,
    log: Arc<Mutex<Vec<(&'static str, f64)>>>,
}

impl Timed {
    fn time<T>(&self, op: &'static str, f: impl FnOnce() -> vault::Result<T>) -> vault::Result<T> {
        let t = Instant::now();
        let r = f();
        self.log
            .lock()
            .unwrap()
            .push((op, t.elapsed().as_secs_f64()));
        r
    }
}

impl Storage for Timed {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn concurrent_puts(&self) -> usize {
        self.inner.concurrent_puts()
    }
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> vault::Result<()> {
        self.time("put", || self.inner.put(kind, name, data))
    }
    fn get(&self, kind: Kind, name: &str) -> vault::Result<Vec<u8>> {
        self.time("get", || self.inner.get(kind, name))
    }
    fn get_range(&self, kind: Kind, name: &str, off: u64, len: u64) -> vault::Result<Vec<u8>> {
        self.time("get", || self.inner.get_range(kind, name, off, len))
    }
    fn list(&self, kind: Kind) -> vault::Result<Vec<(String, u64)>> {
        self.time("list", || self.inner.list(kind))
    }
    fn delete(&self, kind: Kind, name: &str) -> vault::Result<()> {
        self.time("delete", || self.inner.delete(kind, name))
    }
    fn size(&self, kind: Kind, name: &str) -> vault::Result<Option<u64>> {
        self.time("head", || self.inner.size(kind, name))
    }
}

/// Deterministic bytes (xorshift).
fn fill(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An unencrypted backup of `files` files; file `i` has version `gen[i]`.
fn make_backup(dir: &Path, gens: &[u64], kib: usize, client: usize) {
    let _ = std::fs::remove_dir_all(dir);
    let w = BackupWriter::create(dir, WriterOptions::default()).expect("backup writer");
    let recs: Vec<NewRecord> = gens
        .iter()
        .enumerate()
        .map(|(i, g)| {
            NewRecord::file(
                "HomeDomain",
                format!("Library/app/f{i:04}.dat"),
                Content::Bytes(fill(
                    (client as u64) << 40 | (i as u64) << 20 | g,
                    kib << 10,
                )),
            )
        })
        .collect();
    w.add_all(recs).expect("records");
    w.finish().expect("finish");
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn main() {
    let a = args();
    if let Some(out) = &a.make_backup {
        make_backup(out, &vec![0; a.files], a.file_kib, 0);
        return;
    }
    let mut opts = server::ServeOptions::new("127.0.0.1:0".parse().unwrap(), a.data.clone());
    opts.database = a.database.clone();
    let work = tempfile::tempdir().expect("temp folder");
    let log = Arc::new(Mutex::new(Vec::new()));
    let pushes = AtomicU64::new(0);
    let errors = Mutex::new(Vec::<String>::new());
    let uploaded = AtomicU64::new(0);
    let push_times = Mutex::new(Vec::new());
    let ready = Barrier::new(a.clients + 1);
    let stamp = std::process::id();
    // Logins one at a time: a login's start counts against its address until it finishes,
    // and every client here shares 127.0.0.1.
    let setup = Mutex::new(());
    let started = std::thread::scope(|s| {
        for c in 0..a.clients {
            let (a, opts, work, log) = (&a, &opts, work.path(), log.clone());
            let (pushes, errors, uploaded, push_times, ready, setup) =
                (&pushes, &errors, &uploaded, &push_times, &ready, &setup);
            s.spawn(move || {
                // Set-up: account, registration, login, repository, device, first push.
                let name = format!("load{stamp}-{c}");
                let pw = format!("password of {name}");
                let client = ServerClient::new(&a.url, a.fingerprint.as_deref()).expect("client");
                let owner = {
                    let _one = setup.lock().unwrap();
                    let (_, code) = server::ops::add_account(opts, &name, None).expect("account");
                    client
                        .register(&name, &code, pw.as_bytes())
                        .expect("register");
                    client.login(&name, pw.as_bytes()).expect("login")
                };
                let http = |token: &str| {
                    HttpStorage::new(HttpSettings::new(
                        &a.url,
                        Zeroizing::new(token.to_string()),
                        a.fingerprint.clone(),
                    ))
                    .expect("storage")
                };
                let cheap = Argon2Params {
                    m_kib: 64 << 10,
                    t: 1,
                    p: 1,
                };
                Repository::init(
                    Arc::new(http(&owner.token)),
                    pw.as_bytes(),
                    Some(cheap),
                    Params::default(),
                )
                .expect("init");
                let dev = client
                    .add_device(&owner.token, "phone", "backup")
                    .expect("device");
                let token = dev["token"].as_str().unwrap().to_string();
                let storage: Arc<dyn Storage> = Arc::new(Timed {
                    inner: http(&token),
                    log: log.clone(),
                });
                let repo =
                    Repository::open(storage, &Secret::Password(pw.as_bytes())).expect("open");
                let dir = work.join(format!("c{c}"));
                let mut gens = vec![0u64; a.files];
                make_backup(&dir, &gens, a.file_kib, c);
                let push = |repo: &Repository| {
                    cloud::push::push(
                        repo,
                        &dir,
                        &cloud::push::PushOptions {
                            host: "load".into(),
                            ..Default::default()
                        },
                    )
                };
                push(&repo).expect("first push");
                log.lock().unwrap().clear();
                ready.wait();
                // Measured: small incremental backups until the time is up.
                let end = Instant::now() + Duration::from_secs(a.seconds);
                let mut round = 0u64;
                while Instant::now() < end {
                    round += 1;
                    for k in 0..a.changes {
                        let i = ((round as usize) * 7919 + k * 104_729 + c) % a.files;
                        gens[i] += 1;
                    }
                    make_backup(&dir, &gens, a.file_kib, c);
                    let t = Instant::now();
                    match push(&repo) {
                        Ok(r) => {
                            pushes.fetch_add(1, Ordering::Relaxed);
                            uploaded.fetch_add(r.stored_bytes, Ordering::Relaxed);
                            push_times.lock().unwrap().push(t.elapsed().as_secs_f64());
                        }
                        Err(e) => errors.lock().unwrap().push(e.to_string()),
                    }
                }
            });
        }
        ready.wait();
        log.lock().unwrap().clear();
        Instant::now()
    });
    let secs = started.elapsed().as_secs_f64();
    let log = log.lock().unwrap();
    let mut by_op: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut all: Vec<f64> = Vec::new();
    for (op, t) in log.iter() {
        by_op.entry(op).or_default().push(*t);
        all.push(*t);
    }
    let requests = all.len();
    let mut ops = serde_json::Map::new();
    for (op, v) in by_op.iter_mut() {
        ops.insert(
            op.to_string(),
            serde_json::json!({"count": v.len(), "p50_ms": pct(v, 0.5) * 1e3, "p99_ms": pct(v, 0.99) * 1e3}),
        );
    }
    let mut pt = push_times.lock().unwrap().clone();
    let errors = errors.into_inner().unwrap();
    let out = serde_json::json!({
        "clients": a.clients,
        "seconds": secs,
        "files_per_backup": a.files,
        "file_kib": a.file_kib,
        "changed_per_push": a.changes,
        "pushes": pushes.load(Ordering::Relaxed),
        "pushes_per_s": pushes.load(Ordering::Relaxed) as f64 / secs,
        "errors": errors.len(),
        "first_errors": errors.iter().take(5).collect::<Vec<_>>(),
        "requests": requests,
        "requests_per_s": requests as f64 / secs,
        "request_p50_ms": pct(&mut all, 0.5) * 1e3,
        "request_p99_ms": pct(&mut all, 0.99) * 1e3,
        "push_p50_ms": pct(&mut pt, 0.5) * 1e3,
        "push_p99_ms": pct(&mut pt, 0.99) * 1e3,
        "uploaded_bytes": uploaded.load(Ordering::Relaxed),
        "by_op": ops,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
    if !errors.is_empty() {
        std::process::exit(1);
    }
}
