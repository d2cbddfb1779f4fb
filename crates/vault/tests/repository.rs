//! The repository end to end, on a local folder and on S3 (s3s-fs on loopback, through a
//! proxy that records every request): init, open, push, read back, dedup, check (and what it
//! finds in a damaged repository), forget, prune, rollback detection, keys. Every scenario
//! takes an `Arc<dyn Storage>` and runs on both backends with the same assertions; on S3,
//! no write may carry a precondition header (`Backend::finish`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{cheap, data, push, read_all, small, stored_bytes};
use vault::check::check;
use vault::forget::{forget, KeepPolicy};
use vault::keys::{RecoveryKey, Secret};
use vault::prune::{prune, PruneOptions};
use vault::snapshot::ChainState;
use vault::storage::{Kind, Storage};
use vault::tree::Tree;
use vault::{Error, Repository, SnapshotInfo, Writer};

/// Each scenario, as a test on a local folder and as a test on S3.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod local {
            $(#[test]
            fn $scenario() {
                let b = crate::common::Backend::local();
                super::$scenario(b.storage.clone());
                b.finish();
            })*
        }
        mod s3 {
            $(#[test]
            fn $scenario() {
                let b = crate::common::Backend::s3();
                super::$scenario(b.storage.clone());
                b.finish();
            })*
        }
    };
}

on_both_backends!(
    push_read_dedup_check_forget_prune,
    damage_is_named_by_check,
    a_store_serving_an_older_state_is_caught,
    keys_can_be_added_removed_and_rotated,
    inits_racing_for_one_location_lock_no_one_out,
);

fn push_read_dedup_check_forget_prune(storage: Arc<dyn Storage>) {
    let (repo, recovery) = Repository::init(storage.clone(), b"pw", cheap(), small()).unwrap();
    assert!(matches!(
        Repository::init(storage.clone(), b"pw", cheap(), small()),
        Err(Error::AlreadyExists { .. })
    ));
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a", data(1, 3_000_000)),
        ("b", data(2, 100)),
        ("empty", vec![]),
        ("c", data(3, 700_000)),
    ];
    // The first push also holds a file no later snapshot has.
    let mut first = files.clone();
    first.push(("gone", data(4, 2_000_000)));
    let s1 = push(&repo, &first, "phone");
    assert_eq!(
        read_all(&repo, &s1.to_hex()),
        first
            .iter()
            .map(|(n, d)| (n.to_string(), d.clone()))
            .collect()
    );
    let after_first = stored_bytes(storage.as_ref());

    // The same content again: almost nothing new (a tree and a snapshot).
    let s2 = push(&repo, &files, "phone");
    let added = stored_bytes(storage.as_ref()) - after_first;
    assert!(added < after_first / 50, "{added} of {after_first}");
    // One file changed in its middle: only chunks around the change are new.
    let mut changed = files.clone();
    changed[0].1[1_500_000] ^= 1;
    let before = stored_bytes(storage.as_ref());
    let s3 = push(&repo, &changed, "phone");
    let added = stored_bytes(storage.as_ref()) - before;
    assert!(added < 300_000, "{added}");

    // Reopen with the password and with the recovery key; a wrong one is refused.
    let again = Repository::open(storage.clone(), &Secret::Password(b"pw")).unwrap();
    assert_eq!(read_all(&again, &s3.to_hex())["a"], changed[0].1);
    let typed = RecoveryKey::parse(&recovery.display()).unwrap();
    Repository::open(storage.clone(), &Secret::Recovery(&typed)).unwrap();
    assert!(matches!(
        Repository::open(storage.clone(), &Secret::Password(b"nope")),
        Err(Error::WrongSecret)
    ));
    let r = check(&again, true, None).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.snapshots, 3);

    // Forget all but the newest, prune twice (mark, then delete after the grace period).
    let d = forget(
        &again,
        &KeepPolicy {
            last: 1,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    assert_eq!(d.iter().filter(|d| d.reasons.is_empty()).count(), 2);
    let _ = (s1, s2);
    let opts = PruneOptions {
        grace: Duration::from_secs(3600),
        max_unused: 0.5,
        ..Default::default()
    };
    let p1 = prune(&again, &opts).unwrap();
    assert!(p1.marked > 0, "{p1:?}");
    assert_eq!(p1.deleted, 0);
    assert!(check(&again, true, None).unwrap().problems.is_empty());
    let later = PruneOptions {
        now_ms: Some(i64::MAX / 2),
        ..opts.clone()
    };
    let p2 = prune(&again, &later).unwrap();
    assert!(p2.deleted > 0, "{p2:?}");
    let r = check(&again, true, None).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(read_all(&again, "latest")["a"], changed[0].1);
}

fn damage_is_named_by_check(storage: Arc<dyn Storage>) {
    let (repo, _) = Repository::init(storage.clone(), b"pw", cheap(), small()).unwrap();
    push(
        &repo,
        &[("a", data(7, 2_000_000)), ("b", data(8, 50_000))],
        "x",
    );
    let packs = storage.list(Kind::Data).unwrap();
    assert!(packs.len() >= 3);
    // A flipped byte in one pack, another pack deleted.
    let mut b = storage.get(Kind::Data, &packs[0].0).unwrap();
    b[100] ^= 1;
    storage.put(Kind::Data, &packs[0].0, &b).unwrap();
    storage.delete(Kind::Data, &packs[1].0).unwrap();
    let repo = Repository::open(storage.clone(), &Secret::Password(b"pw")).unwrap();
    let quick = check(&repo, false, None).unwrap();
    assert!(
        quick
            .problems
            .iter()
            .any(|p| p.object.ends_with(&packs[1].0) && p.problem.contains("missing")),
        "{:?}",
        quick.problems
    );
    let deep = check(&repo, true, None).unwrap();
    assert!(
        deep.problems
            .iter()
            .any(|p| p.object.ends_with(&packs[0].0)
                && p.problem.contains("does not match its name")),
        "{:?}",
        deep.problems
    );
    // A truncated index object.
    let ix = storage.list(Kind::Index).unwrap();
    let b = storage.get(Kind::Index, &ix[0].0).unwrap();
    storage
        .put(Kind::Index, &ix[0].0, &b[..b.len() / 2])
        .unwrap();
    let repo = Repository::open(storage.clone(), &Secret::Password(b"pw")).unwrap();
    let r = check(&repo, false, None).unwrap();
    assert!(
        r.problems.iter().any(|p| p.object.contains(&ix[0].0)),
        "{:?}",
        r.problems
    );
}

fn a_store_serving_an_older_state_is_caught(storage: Arc<dyn Storage>) {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = Repository::init(storage.clone(), b"pw", cheap(), small()).unwrap();
    let state = dir.path().join("state.json");
    let w = Writer::new(&repo, None).unwrap();
    let info = || SnapshotInfo {
        chain: "d".into(),
        host: "h".into(),
        ..Default::default()
    };
    let (s0, _) = w.commit(&Tree::default(), info(), Some(&state)).unwrap();
    // Keep the first snapshot aside, push a second, then "roll back" the store.
    let saved = storage.get(Kind::Snapshots, &s0.to_hex()).unwrap();
    let w = Writer::new(&repo, None).unwrap();
    let (s1, snap1) = w.commit(&Tree::default(), info(), Some(&state)).unwrap();
    assert_eq!(snap1.seq, 1);
    assert_eq!(snap1.parent, Some(s0));
    storage.delete(Kind::Snapshots, &s1.to_hex()).unwrap();
    storage.put(Kind::Snapshots, &s0.to_hex(), &saved).unwrap();
    let mut st = ChainState::load(&state).unwrap();
    let e = st.observe(&repo.snapshots().unwrap()).unwrap_err();
    assert!(matches!(e, Error::Rollback(_)), "{e}");
    // A snapshot swapped for another's bytes is refused by name.
    storage.put(Kind::Snapshots, &s1.to_hex(), &saved).unwrap();
    let e = repo.snapshots().unwrap_err().to_string();
    assert!(e.contains("does not match its name"), "{e}");
}

fn keys_can_be_added_removed_and_rotated(storage: Arc<dyn Storage>) {
    let (mut repo, _) = Repository::init(storage.clone(), b"pw", cheap(), small()).unwrap();
    let extra = repo
        .add_key(&Secret::Password(b"second"), "laptop", cheap())
        .unwrap();
    assert_eq!(repo.keys().unwrap().len(), 3);
    Repository::open(storage.clone(), &Secret::Password(b"second")).unwrap();
    repo.remove_key(&extra).unwrap();
    assert!(Repository::open(storage.clone(), &Secret::Password(b"second")).is_err());
    let current = repo
        .keys()
        .unwrap()
        .into_iter()
        .find(|k| k.current)
        .unwrap();
    assert!(repo.remove_key(&current.id).is_err());

    let s = push(&repo, &[("f", data(9, 500_000))], "c");
    let recovery = repo.rotate(b"new pw", cheap()).unwrap();
    assert_eq!(repo.keys().unwrap().len(), 2);
    assert!(Repository::open(storage.clone(), &Secret::Password(b"pw")).is_err());
    let r2 = Repository::open(storage.clone(), &Secret::Password(b"new pw")).unwrap();
    Repository::open(storage.clone(), &Secret::Recovery(&recovery)).unwrap();
    assert_eq!(read_all(&r2, &s.to_hex())["f"], data(9, 500_000));
    // New data under the new epoch; prune --reseal moves the old packs and snapshots.
    push(&r2, &[("g", data(10, 100_000))], "c");
    let p = prune(
        &r2,
        &PruneOptions {
            reseal: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(p.repacked > 0 && p.resealed_snapshots == 1, "{p:?}");
    let r3 = Repository::open(storage.clone(), &Secret::Password(b"new pw")).unwrap();
    assert!(check(&r3, true, None).unwrap().problems.is_empty());
    let (_, latest) = r3.find_snapshot("latest").unwrap();
    assert_eq!(r3.tree(&latest).unwrap().nodes[0].name, "g");
}

/// Writes through to `inner`, but right after the first `config` put lands, a rival init's
/// key files and config land too, replacing it (two inits racing on a server that ignores
/// If-None-Match).
struct RivalConfig {
    inner: Arc<dyn Storage>,
    rival: Vec<(Kind, String, Vec<u8>)>,
    done: std::sync::atomic::AtomicBool,
}

impl Storage for RivalConfig {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> vault::Result<()> {
        self.inner.put(kind, name, data)?;
        if kind == Kind::Config && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            for (k, n, bytes) in &self.rival {
                self.inner.put(*k, n, bytes)?;
            }
        }
        Ok(())
    }
    fn get(&self, kind: Kind, name: &str) -> vault::Result<Vec<u8>> {
        self.inner.get(kind, name)
    }
    fn get_range(&self, kind: Kind, name: &str, o: u64, l: u64) -> vault::Result<Vec<u8>> {
        self.inner.get_range(kind, name, o, l)
    }
    fn list(&self, kind: Kind) -> vault::Result<Vec<(String, u64)>> {
        self.inner.list(kind)
    }
    fn delete(&self, kind: Kind, name: &str) -> vault::Result<()> {
        self.inner.delete(kind, name)
    }
}

/// No conditional write makes `config` create-only. Two inits racing for one location: the
/// one whose config was replaced gives way (`AlreadyExists`, its key files removed); key files
/// of an init that lost after its read-back are passed over by `open`, so the password opens
/// the repository that holds the config either way.
fn inits_racing_for_one_location_lock_no_one_out(storage: Arc<dyn Storage>) {
    // The rival: a complete repository elsewhere, with the same password.
    let elsewhere = tempfile::tempdir().unwrap();
    let other: Arc<dyn Storage> = Arc::new(vault::storage::LocalStorage::new(
        elsewhere.path().join("r"),
    ));
    let (rival, _) = Repository::init(other.clone(), b"pw", cheap(), small()).unwrap();
    let rival_keys = other.list(Kind::Keys).unwrap();
    let mut objects: Vec<(Kind, String, Vec<u8>)> = rival_keys
        .iter()
        .map(|(n, _)| (Kind::Keys, n.clone(), other.get(Kind::Keys, n).unwrap()))
        .collect();
    objects.push((
        Kind::Config,
        "config".into(),
        other.get(Kind::Config, "config").unwrap(),
    ));

    // Our init's config is replaced by the rival's right after it lands: it gives way.
    let racing: Arc<dyn Storage> = Arc::new(RivalConfig {
        inner: storage.clone(),
        rival: objects,
        done: Default::default(),
    });
    let e = Repository::init(racing, b"pw", cheap(), small()).unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e}");
    assert_eq!(storage.list(Kind::Keys).unwrap(), rival_keys);
    let opened = Repository::open(storage.clone(), &Secret::Password(b"pw")).unwrap();
    assert_eq!(opened.id(), rival.id());

    // A loser's key files that stayed (its read-back passed before the rival's config landed):
    // the password still opens the repository of the config, whatever the listing order.
    let lost = tempfile::tempdir().unwrap();
    let loser: Arc<dyn Storage> =
        Arc::new(vault::storage::LocalStorage::new(lost.path().join("r")));
    let (loser_repo, _) = Repository::init(loser.clone(), b"pw", cheap(), small()).unwrap();
    for (name, _) in loser.list(Kind::Keys).unwrap() {
        storage
            .put(Kind::Keys, &name, &loser.get(Kind::Keys, &name).unwrap())
            .unwrap();
    }
    let opened = Repository::open(storage.clone(), &Secret::Password(b"pw")).unwrap();
    assert_eq!(opened.id(), rival.id());
    assert_ne!(opened.id(), loser_repo.id());
    // A password only a foreign key file takes is refused, naming that key file.
    let stray = tempfile::tempdir().unwrap();
    let s3: Arc<dyn Storage> = Arc::new(vault::storage::LocalStorage::new(stray.path().join("r")));
    Repository::init(s3.clone(), b"only-mine", cheap(), small()).unwrap();
    for (name, _) in s3.list(Kind::Keys).unwrap() {
        storage
            .put(Kind::Keys, &name, &s3.get(Kind::Keys, &name).unwrap())
            .unwrap();
    }
    let e = Repository::open(storage.clone(), &Secret::Password(b"only-mine")).unwrap_err();
    assert!(
        e.to_string().contains("belongs to another repository"),
        "{e}"
    );
}
