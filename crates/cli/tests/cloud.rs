//! `keybag cloud …` end to end on a local folder (and the 10,000-file round trip also on S3,
//! a real s3s-fs started here on loopback): round trips of the fixtures, of keybag's own
//! device backups and of a synthetic backup of 10,000 files (iphone_backup_decrypt opens what
//! comes back), browsing (ls, cat, diff), damage found by `check` and survived by `pull`,
//! wrong secrets, and a store that rolls back. Secrets go through files and the environment.

mod common;
#[allow(dead_code)]
#[path = "../../vault/tests/common/s3.rs"]
mod s3;

use std::path::{Path, PathBuf};

use common::{assert_same_tree, enc, files, mvt, Keybag, Out, PASSKEY, PASSWORD};
use mobilebackup::writer::{BackupWriter, Content, Encryption, NewRecord, WriterOptions};

const VAULT_PW: &str = "vault password for tests";

/// A repository in `t/repo`, with its state folder `t/state` and key files in `t/keys`.
struct Env {
    t: tempfile::TempDir,
    /// For a repository in S3: its `s3://…` URL and the environment that reaches the server.
    s3: Option<(String, Vec<(&'static str, String)>)>,
}

impl Env {
    fn new() -> Env {
        Env::with(None)
    }

    /// A repository at `s3://BUCKET/prefix` on `server`.
    fn on_s3(server: &s3::S3Server, prefix: &str) -> Env {
        Env::with(Some((
            format!("s3://{}/{prefix}", s3::BUCKET),
            server.env(),
        )))
    }

    fn with(s3: Option<(String, Vec<(&'static str, String)>)>) -> Env {
        let e = Env {
            t: tempfile::tempdir().unwrap(),
            s3,
        };
        std::fs::create_dir(e.path("keys")).unwrap();
        std::fs::write(e.path("keys/passkey"), PASSKEY).unwrap();
        std::fs::write(e.path("keys/backup-pw"), format!("{PASSWORD}\n")).unwrap();
        let o = e.run(
            &["cloud", "init", &e.repo_arg(), "--kdf-iterations", "1"],
            &[("KEYBAG_NEW_REPO_PASSWORD", VAULT_PW)],
        );
        assert_eq!(o.code, 0, "{}", o.stderr);
        e
    }

    fn path(&self, p: &str) -> PathBuf {
        self.t.path().join(p)
    }

    fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// REPO as the commands take it.
    fn repo_arg(&self) -> String {
        match &self.s3 {
            Some((url, _)) => url.clone(),
            None => self.repo().to_str().unwrap().to_string(),
        }
    }

    /// keybag with the repository's password and state folder in its environment.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let state = self.path("state");
        let mut all: Vec<(&str, &str)> = vec![
            ("KEYBAG_REPO_PASSWORD", VAULT_PW),
            ("KEYBAG_STATE_DIR", state.to_str().unwrap()),
        ];
        if let Some((_, s3)) = &self.s3 {
            all.extend(s3.iter().map(|(k, v)| (*k, v.as_str())));
        }
        all.extend_from_slice(env);
        Keybag::new(args)
            .password(None)
            .env_remove("KEYBAG_RECOVERY_KEY")
            .env_remove("KEYBAG_REPO")
            .envs(&all)
            .run()
    }

    /// `keybag cloud CMD … --repo REPO`.
    fn cloud(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let repo = self.repo_arg();
        let mut a = vec!["cloud"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--repo", &repo]);
        self.run(&a, env)
    }

    fn push(&self, backup: &Path, extra: &[&str]) -> serde_json::Value {
        let mut a = vec!["push", backup.to_str().unwrap(), "--json"];
        a.extend_from_slice(extra);
        let o = self.cloud(&a, &[]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        o.json()
    }

    fn pull(&self, snapshot: &str, out: &Path) -> Out {
        self.cloud(&["pull", snapshot, out.to_str().unwrap(), "--json"], &[])
    }
}

#[test]
fn fixtures_round_trip_through_the_command_line() {
    let e = Env::new();
    let key = e.path("keys/passkey");
    let s1 = e.push(&enc(), &["--derived-key-file", key.to_str().unwrap()]);
    assert!(s1["rekeyed"].as_u64().unwrap() >= 16, "{s1}");
    let s2 = e.push(&mvt(), &[]);
    assert_eq!(s2["rekeyed"], 0);
    for (snap, src) in [(&s1, enc()), (&s2, mvt())] {
        let id = snap["snapshot"].as_str().unwrap();
        let out = e.path(&format!("out-{}", &id[..8]));
        let p = e.pull(&id[..12], &out);
        assert_eq!(p.code, 0, "{}", p.stderr);
        assert_same_tree(&src, &out);
    }
    // Listing and reading one file, without pulling.
    let id = &s1["snapshot"].as_str().unwrap()[..10];
    let ls = e.cloud(&["ls", id], &[]);
    assert_eq!(ls.code, 0);
    let expected: Vec<String> = common::expected()["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let (d, p) = (
                r["domain"].as_str().unwrap(),
                r["relativePath"].as_str().unwrap(),
            );
            if p.is_empty() {
                d.to_string()
            } else {
                format!("{d}/{p}")
            }
        })
        .collect();
    let mut got = ls.lines();
    let mut want = expected.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let cat = e.cloud(&["cat", id, "HomeDomain", "Library/Notes/readme.txt"], &[]);
    assert_eq!(cat.code, 0, "{}", cat.stderr);
    let (_, _, _, sha) = common::expected_files()
        .into_iter()
        .find(|f| f.1 == "Library/Notes/readme.txt")
        .unwrap();
    assert_eq!(common::sha256_hex(&cat.stdout), sha);
    let snaps = e.cloud(&["snapshots", "--json"], &[]).json();
    assert_eq!(snaps.as_array().unwrap().len(), 2);
}

/// An encrypted backup of `n` files (sizes 200 B to 8 KB), made by keybag's writer with a
/// cheap KDF.
fn synthetic(out: &Path, n: usize) {
    let w = BackupWriter::create(
        out,
        WriterOptions {
            encryption: Some(Encryption {
                dpic: 1000,
                ..Encryption::new(PASSWORD)
            }),
            ..WriterOptions::default()
        },
    )
    .unwrap();
    let mut x = 7u32;
    let recs: Vec<NewRecord> = (0..n)
        .map(|i| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let len = 200 + (x as usize % 8000);
            let data: Vec<u8> = (0..len)
                .map(|j| (j as u32 ^ x).wrapping_mul(2_654_435_761) as u8)
                .collect();
            NewRecord::file(
                if i % 2 == 0 {
                    "HomeDomain"
                } else {
                    "AppDomain-com.example.synth"
                },
                format!("Library/d{:03}/f{i:05}.bin", i / 100),
                Content::Bytes(data),
            )
        })
        .collect();
    w.add_all(recs).unwrap();
    w.finish().unwrap();
}

#[test]
fn ten_thousand_files_come_back_and_iphone_backup_decrypt_opens_them() {
    ten_thousand_files(Env::new());
}

#[test]
fn ten_thousand_files_come_back_through_s3() {
    let server = s3::S3Server::start();
    let e = Env::on_s3(&server, "phones/ten-thousand");
    ten_thousand_files(e);
    // The objects went to the S3 server (its folder on disk), packs among them.
    let stored = files(&server.bucket_dir().join("phones/ten-thousand"));
    assert!(
        stored.keys().filter(|k| k.starts_with("data/")).count() >= 1,
        "{:?}",
        stored.keys().collect::<Vec<_>>()
    );
}

fn ten_thousand_files(e: Env) {
    let b = e.path("synth");
    synthetic(&b, 10_000);
    let pw = e.path("keys/backup-pw");
    let r = e.push(&b, &["--password-file", pw.to_str().unwrap()]);
    assert!(r["files"].as_u64().unwrap() >= 10_004, "{r}");
    assert_eq!(r["raw"].as_u64().unwrap(), 3, "the three plists: {r}");
    let out = e.path("pulled");
    let p = e.pull("latest", &out);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_same_tree(&b, &out);
    let ex = e.path("ibd-out");
    let o = common::run_py(
        "KEYBAG_PY_IBD",
        "ibd_extract.py",
        &[&out, &ex],
        Some(PASSWORD),
    );
    let j = common::json_ok(&o, "ibd_extract.py");
    assert_eq!(j["count"], 10_000);
}

#[test]
fn a_device_backup_round_trips_and_diff_tells_what_changed() {
    let e = Env::new();
    let dev = e.path("phone");
    let d = dev.to_str().unwrap();
    let ok = |o: Out| assert_eq!(o.code, 0, "{}", o.stderr);
    ok(e.run(&["device", "init", d, "--name", "Cloud phone"], &[]));
    for (p, body) in [
        ("Library/a.txt", "alpha"),
        ("Library/b.txt", "bravo"),
        ("Documents/c.txt", "charlie"),
    ] {
        ok(Keybag::new(["device", "put", d, "HomeDomain", p])
            .password(None)
            .stdin(body.as_bytes())
            .run());
    }
    let b1 = e.path("b1");
    ok(e.run(
        &["device", "backup", d, b1.to_str().unwrap(), "--encrypt"],
        &[("KEYBAG_PASSWORD", PASSWORD)],
    ));
    ok(
        Keybag::new(["device", "put", d, "HomeDomain", "Library/a.txt"])
            .password(None)
            .stdin(b"alpha 2")
            .run(),
    );
    ok(e.run(&["device", "rm", d, "HomeDomain", "Library/b.txt"], &[]));
    ok(
        Keybag::new(["device", "put", d, "HomeDomain", "Library/new.txt"])
            .password(None)
            .stdin(b"new")
            .run(),
    );
    let b2 = e.path("b2");
    ok(e.run(
        &["device", "backup", d, b2.to_str().unwrap()],
        &[("KEYBAG_PASSWORD", PASSWORD)],
    ));
    let pw = e.path("keys/backup-pw");
    let s1 = e.push(&b1, &["--password-file", pw.to_str().unwrap()]);
    let s2 = e.push(&b2, &["--password-file", pw.to_str().unwrap()]);
    assert_eq!(s2["seq"], 1);
    let id1 = &s1["snapshot"].as_str().unwrap()[..12];
    let id2 = &s2["snapshot"].as_str().unwrap()[..12];
    let diff = e.cloud(&["diff", id1, id2, "--json"], &[]).json();
    let paths = |k: &str| -> Vec<String> {
        diff[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let r = if r.is_array() { &r[0] } else { r };
                format!(
                    "{}/{}",
                    r["domain"].as_str().unwrap(),
                    r["path"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(paths("added"), vec!["HomeDomain/Library/new.txt"]);
    assert_eq!(paths("removed"), vec!["HomeDomain/Library/b.txt"]);
    assert!(
        paths("changed").contains(&"HomeDomain/Library/a.txt".to_string()),
        "{diff}"
    );
    assert!(
        !paths("changed").contains(&"HomeDomain/Documents/c.txt".to_string()),
        "{diff}"
    );
    let out = e.path("out");
    assert_eq!(e.pull(id1, &out).code, 0);
    assert_same_tree(&b1, &out);
    let o = common::run_py(
        "KEYBAG_PY_IBD",
        "ibd_extract.py",
        &[&out, &e.path("ibd")],
        Some(PASSWORD),
    );
    common::json_ok(&o, "ibd_extract.py");
}

#[test]
fn wrong_secrets_and_a_rolled_back_store_are_refused() {
    let e = Env::new();
    let s0 = e.push(&mvt(), &[]);
    let wrong = e.cloud(&["snapshots"], &[("KEYBAG_REPO_PASSWORD", "nope")]);
    assert_eq!(wrong.code, 5, "{}", wrong.stderr);
    let rk = e.cloud(
        &["snapshots"],
        &[
            ("KEYBAG_REPO_PASSWORD", ""),
            ("KEYBAG_RECOVERY_KEY", "0000-0000-0000-0000-0000-0000-0000"),
        ],
    );
    assert_eq!(rk.code, 5, "{}", rk.stderr);
    let not_repo = e.run(
        &[
            "cloud",
            "snapshots",
            "--repo",
            e.path("keys").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(not_repo.code, 4, "{}", not_repo.stderr);
    // Keep the first snapshot object, push again, then serve the old state.
    let name = s0["snapshot"].as_str().unwrap().to_string();
    let saved = std::fs::read(e.repo().join("snapshots").join(&name)).unwrap();
    let s1 = e.push(&mvt(), &[]);
    std::fs::remove_file(
        e.repo()
            .join("snapshots")
            .join(s1["snapshot"].as_str().unwrap()),
    )
    .unwrap();
    std::fs::write(e.repo().join("snapshots").join(&name), saved).unwrap();
    let o = e.cloud(&["snapshots"], &[]);
    assert_eq!(o.code, 7, "{}", o.stderr);
    assert!(o.stderr.contains("rollback"), "{}", o.stderr);
    let out = e.path("out");
    assert_eq!(e.pull("latest", &out).code, 7);
    assert!(!out.exists());
}

#[test]
fn check_names_damage_and_pull_never_writes_a_wrong_byte() {
    let e = Env::new();
    let b = e.path("synth");
    synthetic(&b, 300);
    let pw = e.path("keys/backup-pw");
    let s = e.push(&b, &["--password-file", pw.to_str().unwrap()]);
    let snap = s["snapshot"].as_str().unwrap().to_string();
    assert_eq!(e.cloud(&["check", "--read-data"], &[]).code, 0);
    // Flip a byte in the middle of the (one) data pack: the blob there no longer opens.
    let packs: Vec<PathBuf> = files(&e.repo().join("data"))
        .keys()
        .map(|k| e.repo().join("data").join(k))
        .collect();
    let big = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    let mut bytes = std::fs::read(&big).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&big, &bytes).unwrap();
    let c = e.cloud(&["check", "--read-data", "--json"], &[]);
    assert_eq!(c.code, 3, "{}", c.stderr);
    let name = big.file_name().unwrap().to_str().unwrap();
    assert!(c.text().contains(name), "{}", c.text());
    let out = e.path("out");
    let p = e.pull(&snap[..12], &out);
    assert_eq!(p.code, 3, "{}", p.stderr);
    let j = p.json();
    let failed = j["failed"].as_array().unwrap();
    assert!(!failed.is_empty() && failed.len() < 300, "{j}");
    // Whatever was written is exactly the original; what failed is absent.
    let (src, got) = (files(&b), files(&out));
    for (k, v) in &got {
        assert!(src[k] == *v, "{k} written wrong");
    }
    for f in failed {
        assert!(!got.contains_key(f[0].as_str().unwrap()));
    }
    assert_eq!(got.len() + failed.len(), src.len());

    // A deleted pack, a truncated index, a snapshot swapped for another's bytes: each on a
    // repository of its own, and `check` names the object.
    type Damage = fn(&Env) -> String;
    let cases: [(&str, Damage); 3] = [
        ("deleted pack", |e| {
            let data = files(&e.repo().join("data"));
            let pack = data.keys().next().unwrap().clone();
            std::fs::remove_file(e.repo().join("data").join(&pack)).unwrap();
            Path::new(&pack)
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        }),
        ("truncated index", |e| {
            let index = files(&e.repo().join("index"));
            let (name, bytes) = index.iter().next().unwrap();
            std::fs::write(e.repo().join("index").join(name), &bytes[..bytes.len() / 2]).unwrap();
            name.clone()
        }),
        ("swapped snapshot", |e| {
            let snaps = files(&e.repo().join("snapshots"));
            let names: Vec<&String> = snaps.keys().collect();
            std::fs::write(e.repo().join("snapshots").join(names[0]), &snaps[names[1]]).unwrap();
            names[0].clone()
        }),
    ];
    for (what, damage) in cases {
        let e = Env::new();
        e.push(&mvt(), &[]);
        e.push(&mvt(), &[]);
        let name = damage(&e);
        let c = e.cloud(&["check", "--json"], &[]);
        assert_eq!(c.code, 3, "{what}: {}", c.stderr);
        assert!(
            c.text().contains(&name),
            "{what}: {name} not named: {}",
            c.text()
        );
    }
}

#[test]
fn keys_forget_and_prune_from_the_command_line() {
    let e = Env::new();
    let ok = |o: &Out| assert_eq!(o.code, 0, "{}", o.stderr);
    // A second password, listed, then removed; a new recovery key opens the repository.
    let add = e.cloud(
        &["key", "add", "--label", "laptop", "--kdf-iterations", "1"],
        &[("KEYBAG_NEW_REPO_PASSWORD", "second")],
    );
    ok(&add);
    let keys = e.cloud(&["key", "list", "--json"], &[]).json();
    assert_eq!(keys.as_array().unwrap().len(), 3);
    ok(&e.cloud(&["snapshots"], &[("KEYBAG_REPO_PASSWORD", "second")]));
    let laptop = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "laptop")
        .unwrap();
    ok(&e.cloud(
        &["key", "remove", &laptop["id"].as_str().unwrap()[..12]],
        &[],
    ));
    assert_eq!(
        e.cloud(&["snapshots"], &[("KEYBAG_REPO_PASSWORD", "second")])
            .code,
        5
    );
    let rk = e.cloud(&["key", "add", "--recovery"], &[]);
    ok(&rk);
    let key_text = rk
        .text()
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 34 && l.matches('-').count() == 6)
        .unwrap()
        .to_string();
    std::fs::write(e.path("keys/recovery"), &key_text).unwrap();
    let by_recovery = e.cloud(
        &[
            "snapshots",
            "--recovery-key-file",
            e.path("keys/recovery").to_str().unwrap(),
        ],
        &[("KEYBAG_REPO_PASSWORD", "")],
    );
    ok(&by_recovery);

    // Three snapshots; forget keeps the newest; prune marks, then (grace 0) deletes.
    for _ in 0..3 {
        e.push(&mvt(), &[]);
    }
    let f = e.cloud(&["forget", "--keep-last", "1", "--json"], &[]);
    ok(&f);
    let removed = f
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["reasons"].as_array().unwrap().is_empty())
        .count();
    assert_eq!(removed, 2);
    assert_eq!(e.cloud(&["forget"], &[]).code, 2, "a policy is required");
    ok(&e.cloud(&["prune", "--grace", "0s"], &[]));
    ok(&e.cloud(&["prune", "--grace", "0s"], &[]));
    ok(&e.cloud(&["check", "--read-data"], &[]));
    let out = e.path("out");
    ok(&e.pull("latest", &out));
    assert_same_tree(&mvt(), &out);

    // Rotation: only the new password and the new recovery key open it afterwards.
    let rot = e.cloud(
        &["key", "rotate", "--kdf-iterations", "1"],
        &[("KEYBAG_NEW_REPO_PASSWORD", "rotated")],
    );
    ok(&rot);
    assert_eq!(e.cloud(&["snapshots"], &[]).code, 5);
    let env = [("KEYBAG_REPO_PASSWORD", "rotated")];
    ok(&e.cloud(&["prune", "--reseal", "--grace", "0s"], &env));
    ok(&e.cloud(&["check", "--read-data"], &env));
    let out2 = e.path("out2");
    let p = e.cloud(&["pull", "latest", out2.to_str().unwrap()], &env);
    ok(&p);
    assert_same_tree(&mvt(), &out2);
}
