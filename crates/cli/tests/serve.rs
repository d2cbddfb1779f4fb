//! `keybag serve` and `keybag cloud` against it, end to end through the binaries, on both
//! deployments (SQLite + folder; PostgreSQL + S3, real servers started here): the operator
//! makes accounts, people register and log in (OPAQUE), enroll devices with scoped tokens,
//! push and pull real backups byte for byte. Then the faults: two servers on one PostgreSQL
//! and one bucket, the server killed -9 mid-upload, PostgreSQL restarted during a push, a
//! certificate that does not match the pin. The server's log is checked for secrets and names.

mod common;
#[path = "../../server/tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;
#[path = "../../vault/tests/common/s3.rs"]
#[allow(dead_code)]
mod s3;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::serve_proc::Serve;
use common::{assert_same_tree, enc, files, mvt, Keybag, Out, PASSWORD};

const VAULT_PW: &str = "vault password for the serve tests";

/// The two deployments.
enum Deployment {
    Local,
    Scaled {
        pg: pg::Postgres,
        s3: Box<s3::S3Server>,
        db: String,
    },
}

impl Deployment {
    fn scaled() -> Deployment {
        let pg = pg::Postgres::start();
        let db = pg.create_db("keybag");
        Deployment::Scaled {
            pg,
            s3: Box::new(s3::S3Server::start()),
            db,
        }
    }

    /// `keybag serve` arguments and environment.
    fn server_args(&self) -> (Vec<String>, Vec<(String, String)>) {
        match self {
            Deployment::Local => (vec![], vec![]),
            Deployment::Scaled { s3, db, .. } => (
                vec![
                    "--database".into(),
                    db.clone(),
                    "--blobs".into(),
                    format!("s3://{}/serve", s3::BUCKET),
                ],
                s3.env()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            ),
        }
    }
}

/// A person at a computer: their own config (pinned servers, session) and state folders,
/// their secrets in files.
struct Person {
    dir: tempfile::TempDir,
    name: String,
}

impl Person {
    fn new(name: &str) -> Person {
        let p = Person {
            dir: tempfile::tempdir().unwrap(),
            name: name.to_string(),
        };
        std::fs::write(p.path("account-pw"), format!("{name}'s account password\n")).unwrap();
        std::fs::write(p.path("backup-pw"), format!("{PASSWORD}\n")).unwrap();
        p
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn p(&self, p: &str) -> String {
        self.path(p).display().to_string()
    }

    /// keybag with this person's folders and the vault password in the environment.
    fn run(&self, args: &[&str]) -> Out {
        let cfg = self.p("config");
        let st = self.p("state");
        Keybag::new(args)
            .password(None)
            .env_remove("KEYBAG_SERVER_TOKEN")
            .env_remove("KEYBAG_REPO")
            .env_remove("KEYBAG_SERVER")
            .envs(&[
                ("KEYBAG_CONFIG_DIR", &cfg),
                ("KEYBAG_STATE_DIR", &st),
                ("KEYBAG_REPO_PASSWORD", VAULT_PW),
                ("KEYBAG_NEW_REPO_PASSWORD", VAULT_PW),
            ])
            .run()
    }

    fn ok(&self, args: &[&str]) -> Out {
        let o = self.run(args);
        assert_eq!(o.code, 0, "keybag {}: {}", args.join(" "), o.stderr);
        o
    }

    /// Made by the operator, registered and logged in to `srv`.
    fn join(&self, srv: &Serve) {
        let code = self.p("code");
        let _ = std::fs::remove_file(&code);
        let o = srv.admin(&["account", "add", &self.name, "--code-file", &code]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        self.register_and_login(srv);
    }

    fn register_and_login(&self, srv: &Serve) {
        let o = self.ok(&[
            "cloud",
            "register",
            "--server",
            &srv.url,
            "--account",
            &self.name,
            "--enrollment-code-file",
            &self.p("code"),
            "--password-file",
            &self.p("account-pw"),
        ]);
        // Trust on first use: the fingerprint the server printed is the one pinned, shown.
        assert!(o.stderr.contains(&srv.fingerprint), "{}", o.stderr);
        self.login(srv);
    }

    fn login(&self, srv: &Serve) {
        self.ok(&[
            "cloud",
            "login",
            "--server",
            &srv.url,
            "--account",
            &self.name,
            "--password-file",
            &self.p("account-pw"),
        ]);
    }
}

/// What must never be in the server's log: secrets, account names, file names, object names.
fn assert_clean_log(log: &str, forbidden: &[&str]) {
    for f in forbidden {
        assert!(!f.is_empty());
        assert!(!log.contains(f), "the server's log contains {f:?}:\n{log}");
    }
}

fn end_to_end(d: Deployment) {
    let t = tempfile::tempdir().unwrap();
    let (args, env) = d.server_args();
    let mut srv = Serve::start(&t.path().join("data"), &args, &env);
    let alice = Person::new("alice");
    alice.join(&srv);
    let url = srv.url.clone();
    alice.ok(&["cloud", "init", &url, "--kdf-iterations", "1"]);
    // The owner pushes the encrypted fixture with its password (re-keyable plaintext).
    let s1 = alice
        .ok(&[
            "cloud",
            "push",
            &enc().display().to_string(),
            "--repo",
            &url,
            "--password-file",
            &alice.p("backup-pw"),
            "--json",
        ])
        .json();
    // A phone enrolled with a backup token pushes the other fixture.
    alice.ok(&[
        "cloud",
        "devices",
        "add",
        "alice's phone",
        "--server",
        &url,
        "--token-file",
        &alice.p("phone.token"),
    ]);
    alice.ok(&[
        "cloud",
        "devices",
        "add",
        "alice's laptop",
        "--scope",
        "restore",
        "--server",
        &url,
        "--token-file",
        &alice.p("laptop.token"),
    ]);
    let phone = [
        "--repo",
        url.as_str(),
        "--server-token-file",
        &alice.p("phone.token"),
    ]
    .map(String::from);
    let laptop = [
        "--repo",
        url.as_str(),
        "--server-token-file",
        &alice.p("laptop.token"),
    ]
    .map(String::from);
    let with = |cmd: &[&str], tok: &[String]| -> Vec<String> {
        cmd.iter()
            .map(|s| s.to_string())
            .chain(tok.iter().cloned())
            .collect()
    };
    let run = |a: &[String]| alice.run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let o = run(&with(
        &["cloud", "push", &mvt().display().to_string(), "--json"],
        &phone,
    ));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let s2 = o.json();
    // Again (a second backup of the same phone: forget has something to remove).
    let o = run(&with(
        &["cloud", "push", &mvt().display().to_string(), "--json"],
        &phone,
    ));
    assert_eq!(o.code, 0, "{}", o.stderr);
    // Append only: the phone can neither read data back nor delete.
    let o = run(&with(
        &["cloud", "pull", "latest", &alice.p("nope")],
        &phone,
    ));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("403") && o.stderr.contains("may not read data"),
        "{}",
        o.stderr
    );
    assert!(!alice.path("nope").exists());
    let o = run(&with(&["cloud", "forget", "--keep-last", "1"], &phone));
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("403"), "{}", o.stderr);
    let o = run(&with(&["cloud", "prune"], &phone));
    assert_ne!(o.code, 0);
    // The laptop (restore) reads everything back, byte for byte; cannot write.
    for (snap, src) in [(&s1, enc()), (&s2, mvt())] {
        let id = &snap["snapshot"].as_str().unwrap()[..12];
        let out = alice.path(&format!("pulled-{id}"));
        let o = run(&with(
            &["cloud", "pull", id, &out.display().to_string()],
            &laptop,
        ));
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert_same_tree(&src, &out);
    }
    let o = run(&with(
        &[
            "cloud",
            "cat",
            &s1["snapshot"].as_str().unwrap()[..12],
            "HomeDomain",
            "Library/Notes/readme.txt",
        ],
        &laptop,
    ));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(&with(
        &["cloud", "push", &mvt().display().to_string()],
        &laptop,
    ));
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("403"), "{}", o.stderr);
    // The owner's view: usage, the devices and their last backups; a full check.
    let st = alice
        .ok(&["cloud", "status", "--server", &url, "--json"])
        .json();
    assert!(st["used_bytes"].as_u64().unwrap() > 100_000, "{st}");
    let devs = st["devices"].as_array().unwrap();
    let phone_dev = devs.iter().find(|d| d["name"] == "alice's phone").unwrap();
    assert!(phone_dev["last_snapshot"].as_i64().is_some(), "{st}");
    let laptop_dev = devs.iter().find(|d| d["name"] == "alice's laptop").unwrap();
    assert!(laptop_dev["last_snapshot"].is_null(), "{st}");
    alice.ok(&["cloud", "check", "--read-data", "--repo", &url]);
    // Another account sees nothing of alice's.
    let bob = Person::new("bob");
    bob.join(&srv);
    let o = bob.run(&["cloud", "snapshots", "--repo", &url]);
    assert_eq!(o.code, 4, "bob opens no repository: {}", o.stderr);
    bob.ok(&["cloud", "init", &url, "--kdf-iterations", "1"]);
    let o = bob
        .ok(&["cloud", "snapshots", "--repo", &url, "--json"])
        .json();
    assert_eq!(o.as_array().unwrap().len(), 0);
    // Revoking the phone ends its token; forget and prune as the owner.
    let id = phone_dev["id"].as_str().unwrap();
    alice.ok(&["cloud", "devices", "revoke", id, "--server", &url]);
    let o = run(&with(&["cloud", "snapshots"], &phone));
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("401"), "{}", o.stderr);
    alice.ok(&["cloud", "forget", "--keep-last", "1", "--repo", &url]);
    alice.ok(&["cloud", "prune", "--grace", "0", "--repo", &url]);
    alice.ok(&["cloud", "prune", "--grace", "0", "--repo", &url]);
    alice.ok(&["cloud", "check", "--read-data", "--repo", &url]);
    // Logged out: the session no longer works, here or on the server.
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(alice.path("config/servers.json")).unwrap()).unwrap();
    let session = cfg[&url]["token"].as_str().unwrap().to_string();
    alice.ok(&["cloud", "logout", "--server", &url]);
    let o = alice.run(&["cloud", "status", "--server", &url]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("not logged in"), "{}", o.stderr);
    std::fs::write(alice.path("session.token"), &session).unwrap();
    let o = alice.run(&[
        "cloud",
        "snapshots",
        "--repo",
        &url,
        "--server-token-file",
        &alice.p("session.token"),
    ]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("401"), "{}", o.stderr);
    srv.stop();
    // The log: one line per request, no token, password, code, account, file or object name.
    let log = srv.log();
    assert!(log.lines().filter(|l| l.contains("\"route\"")).count() > 50);
    let mut forbidden: Vec<String> = vec![
        session,
        std::fs::read_to_string(alice.path("phone.token"))
            .unwrap()
            .trim()
            .to_string(),
        std::fs::read_to_string(alice.path("laptop.token"))
            .unwrap()
            .trim()
            .to_string(),
        std::fs::read_to_string(alice.path("code"))
            .unwrap()
            .trim()
            .to_string(),
        "alice's account password".into(),
        VAULT_PW.into(),
        PASSWORD.into(),
        "alice".into(),
        "bob".into(),
        "Manifest".into(),
        "readme.txt".into(),
        "HomeDomain".into(),
    ];
    if let Deployment::Local = d {
        // Every object's name (the account folder's files).
        let blobs = t.path().join("data/blobs");
        for acct in std::fs::read_dir(&blobs).unwrap() {
            for (rel, _) in files(&acct.unwrap().path()) {
                let name = rel.rsplit('/').next().unwrap().to_string();
                if name.len() == 64 {
                    forbidden.push(name);
                }
            }
        }
    }
    assert_clean_log(
        &log,
        &forbidden.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

#[test]
fn end_to_end_on_sqlite_and_a_folder() {
    end_to_end(Deployment::Local);
}

#[test]
fn end_to_end_on_postgres_and_s3() {
    end_to_end(Deployment::scaled());
}

/// Two server processes on one PostgreSQL and one bucket: an account made through one logs in
/// through the other; a push through one pulls back byte for byte through the other.
#[test]
fn two_servers_one_postgres_one_bucket() {
    let d = Deployment::scaled();
    let t = tempfile::tempdir().unwrap();
    let (args, env) = d.server_args();
    let a = Serve::start(&t.path().join("a"), &args, &env);
    let b = Serve::start(&t.path().join("b"), &args, &env);
    let alice = Person::new("alice");
    alice.join(&a);
    alice.login(&b); // pins b's own certificate on first use
    alice.ok(&["cloud", "init", &a.url, "--kdf-iterations", "1"]);
    let s = alice
        .ok(&[
            "cloud",
            "push",
            &enc().display().to_string(),
            "--repo",
            &a.url,
            "--password-file",
            &alice.p("backup-pw"),
            "--json",
        ])
        .json();
    let out = alice.path("through-b");
    alice.ok(&[
        "cloud",
        "pull",
        &s["snapshot"].as_str().unwrap()[..12],
        &out.display().to_string(),
        "--repo",
        &b.url,
    ]);
    assert_same_tree(&enc(), &out);
    // Devices and usage are the same seen from either.
    alice.ok(&[
        "cloud",
        "devices",
        "add",
        "phone",
        "--server",
        &b.url,
        "--token-file",
        &alice.p("phone.token"),
    ]);
    let sa = alice
        .ok(&["cloud", "status", "--server", &a.url, "--json"])
        .json();
    let sb = alice
        .ok(&["cloud", "status", "--server", &b.url, "--json"])
        .json();
    assert_eq!(sa, sb);
    assert_eq!(sa["devices"].as_array().unwrap().len(), 1);
    // And a device token made through b pushes through a.
    alice.ok(&[
        "cloud",
        "push",
        &mvt().display().to_string(),
        "--repo",
        &a.url,
        "--server-token-file",
        &alice.p("phone.token"),
    ]);
    let snaps = alice
        .ok(&["cloud", "snapshots", "--repo", &b.url, "--json"])
        .json();
    assert_eq!(snaps.as_array().unwrap().len(), 2);
}

/// An unencrypted backup of `n` files of `size` random bytes (several packs' worth).
fn big_backup(out: &Path, n: usize, size: usize, seed: u64) {
    use mobilebackup::writer::{BackupWriter, Content, NewRecord, WriterOptions};
    let w = BackupWriter::create(out, WriterOptions::default()).unwrap();
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let recs: Vec<NewRecord> = (0..n)
        .map(|i| {
            let data: Vec<u8> = (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            NewRecord::file(
                "HomeDomain",
                format!("Library/big/f{i}.bin"),
                Content::Bytes(data),
            )
        })
        .collect();
    w.add_all(recs).unwrap();
    w.finish().unwrap();
}

/// Waits until the server's log shows `n` stored data packs.
fn wait_for_puts(srv: &Serve, n: usize, push: &mut Child) -> bool {
    loop {
        let c = srv
            .log()
            .lines()
            .filter(|l| l.contains("\"PUT\"") && l.contains("{kind}/{name}") && l.contains("201"))
            .count();
        if c >= n {
            return true;
        }
        if push.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn spawn_push(p: &Person, backup: &Path, url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_keybag"))
        .args(["cloud", "push"])
        .arg(backup)
        .args(["--repo", url, "--json"])
        .env("KEYBAG_CONFIG_DIR", p.path("config"))
        .env("KEYBAG_STATE_DIR", p.path("state"))
        .env("KEYBAG_REPO_PASSWORD", VAULT_PW)
        .env_remove("KEYBAG_PASSWORD")
        .env_remove("KEYBAG_SERVER_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Every object the server stored is whole: its bytes hash to its name.
fn assert_objects_whole(blobs: &Path) {
    let mut n = 0;
    for (rel, bytes) in files(blobs) {
        let name = rel.rsplit('/').next().unwrap();
        if name.len() == 64 && !rel.contains("/keys/") {
            assert_eq!(
                vault::Id::of_bytes(&bytes).to_hex(),
                name,
                "{rel} is not whole"
            );
            n += 1;
        }
    }
    assert!(n > 0);
}

/// The server killed -9 while a push uploads: nothing partial ever becomes visible, and the
/// client (retrying with backoff) carries on once the server is back and finishes; the
/// snapshot pulls back byte for byte and `check --read-data` passes.
#[test]
fn server_killed_mid_upload_client_finishes() {
    let t = tempfile::tempdir().unwrap();
    let mut srv = Serve::start(&t.path().join("data"), &[], &[]);
    let alice = Person::new("alice");
    alice.join(&srv);
    let url = srv.url.clone();
    alice.ok(&["cloud", "init", &url, "--kdf-iterations", "1"]);
    for (trial, after) in [1usize, 2, 3].into_iter().enumerate() {
        let b = alice.path(&format!("big{trial}"));
        big_backup(&b, 6, 9 << 20, trial as u64 + 1);
        let before = srv
            .log()
            .lines()
            .filter(|l| l.contains("\"PUT\"") && l.contains("{kind}/{name}") && l.contains("201"))
            .count();
        let mut push = spawn_push(&alice, &b, &url);
        let hit = wait_for_puts(&srv, before + after, &mut push);
        srv.kill9();
        // What is on disk now is whole (a killed upload left at most a temp file, never an
        // object under its name).
        assert_objects_whole(&t.path().join("data/blobs"));
        std::thread::sleep(Duration::from_millis(300));
        srv.restart();
        let out = push.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "trial {trial} (killed after {after} puts, hit {hit}): {stderr}"
        );
        let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let pulled = alice.path(&format!("pulled{trial}"));
        alice.ok(&[
            "cloud",
            "pull",
            &snap["snapshot"].as_str().unwrap()[..12],
            &pulled.display().to_string(),
            "--repo",
            &url,
        ]);
        assert_same_tree(&b, &pulled);
        std::fs::remove_dir_all(&pulled).unwrap();
    }
    alice.ok(&["cloud", "check", "--read-data", "--repo", &url]);
    assert_objects_whole(&t.path().join("data/blobs"));
}

/// PostgreSQL restarted (fast shutdown: every connection cut) during a push through the
/// server: requests meanwhile get 503, the client retries, the push finishes; then the
/// snapshot pulls back byte for byte.
#[test]
fn postgres_restarted_during_a_push() {
    let mut d = Deployment::scaled();
    let t = tempfile::tempdir().unwrap();
    let (args, env) = d.server_args();
    let srv = Serve::start(&t.path().join("data"), &args, &env);
    let alice = Person::new("alice");
    alice.join(&srv);
    let url = srv.url.clone();
    alice.ok(&["cloud", "init", &url, "--kdf-iterations", "1"]);
    let b = alice.path("big");
    big_backup(&b, 6, 6 << 20, 9);
    let mut push = spawn_push(&alice, &b, &url);
    wait_for_puts(&srv, 1, &mut push);
    if let Deployment::Scaled { pg, .. } = &mut d {
        // Down until a request has seen it down (the server answers 503 once it cannot get
        // a connection), then back.
        pg.stop();
        while !srv.log().contains("\"status\":503") {
            assert!(
                push.try_wait().unwrap().is_none(),
                "the push ended with the database down"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        pg.start_again();
    }
    let out = push.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The restart was felt: requests meanwhile were answered 503 (and retried).
    let unavailable = srv
        .log()
        .lines()
        .filter(|l| l.contains("\"status\":503"))
        .count();
    assert!(
        unavailable > 0,
        "no request saw the database down:\n{}",
        srv.log()
    );
    let pulled = alice.path("pulled");
    alice.ok(&[
        "cloud",
        "pull",
        "latest",
        &pulled.display().to_string(),
        "--repo",
        &url,
    ]);
    assert_same_tree(&b, &pulled);
    alice.ok(&["cloud", "check", "--read-data", "--repo", &url]);
    alice.ok(&["cloud", "status", "--server", &url]);
}

/// A server whose certificate is not the pinned one is refused, with a message that says so,
/// and never retried; a wrong --server-fingerprint on first contact is refused the same way.
#[test]
fn a_certificate_that_does_not_match_the_pin_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let mut srv = Serve::start(&data, &[], &[]);
    let alice = Person::new("alice");
    alice.join(&srv);
    let url = srv.url.clone();
    alice.ok(&["cloud", "init", &url, "--kdf-iterations", "1"]);
    // Someone else answers at the same address: a new certificate.
    srv.stop();
    std::fs::remove_dir_all(data.join("tls")).unwrap();
    srv.restart();
    assert_eq!(srv.url, url);
    for args in [
        vec!["cloud", "status", "--server", url.as_str()],
        vec!["cloud", "snapshots", "--repo", url.as_str()],
        vec!["cloud", "push", "PLACEHOLDER", "--repo", url.as_str()],
    ] {
        let m = mvt().display().to_string();
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "PLACEHOLDER" { m.as_str() } else { a })
            .collect();
        let o = alice.run(&args);
        assert_eq!(o.code, 1, "{}", o.stderr);
        assert!(
            o.stderr.contains("does not match the pinned fingerprint"),
            "{}",
            o.stderr
        );
        assert!(
            !o.stderr.contains("after 9 attempts"),
            "a pin mismatch is not retried: {}",
            o.stderr
        );
    }
    // A new person given a wrong fingerprint on first contact.
    let bob = Person::new("bob");
    let o = bob.run(&[
        "cloud",
        "login",
        "--server",
        &url,
        "--account",
        "bob",
        "--password-file",
        &bob.p("account-pw"),
        "--server-fingerprint",
        &"ab".repeat(32),
    ]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("does not match the pinned fingerprint"),
        "{}",
        o.stderr
    );
    // With the right one given, it connects (and the log never saw a password).
    let o = bob.run(&[
        "cloud",
        "login",
        "--server",
        &url,
        "--account",
        "bob",
        "--password-file",
        &bob.p("account-pw"),
        "--server-fingerprint",
        &srv.fingerprint,
    ]);
    assert_eq!(
        o.code, 5,
        "no such account: wrong account or password: {}",
        o.stderr
    );
}
