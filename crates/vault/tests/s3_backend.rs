//! The S3 backend on s3s-fs, beyond the shared scenarios: repositories side by side in one
//! bucket (prefixes), keys that are not the vault's, errors (a missing object, a range past the
//! end, a wrong secret, a bucket that does not exist), and pushes from two clients at once
//! (which need no conditional write).

mod common;

use std::sync::Arc;

use common::s3::{S3Server, BUCKET, SECRET_KEY};
use common::{cheap, data, push, read_all, small, Backend};
use vault::check::check;
use vault::keys::Secret;
use vault::storage::{Kind, S3Storage, Storage};
use vault::{Error, Id, Repository};

/// Repositories at the bucket's top, at `x`, at `x/y` and at `x-y` do not see each other, and
/// objects under a kind's prefix that are not where the vault puts its own are not listed.
#[test]
fn repositories_side_by_side_in_one_bucket() {
    let server = S3Server::start();
    let prefixes = ["", "x", "x/y", "x-y"];
    let mut snaps = Vec::new();
    for (i, p) in prefixes.iter().enumerate() {
        let s = server.storage(p);
        let pw = format!("pw{i}");
        let (repo, _) = Repository::init(s.clone(), pw.as_bytes(), cheap(), small()).unwrap();
        snaps.push(push(&repo, &[("f", data(i as u32, 400_000))], "c"));
    }
    // Strangers: a vault-shaped object of another kind under `x/keys/`, one under `x/data/`
    // outside its shard folder, a non-hash name, a folder marker.
    let odd = server.storage("x/keys");
    let h = Id::of_bytes(b"stranger").to_hex();
    odd.put(Kind::Index, &h, b"not a key").unwrap();
    server
        .storage("x/data")
        .put(Kind::Data, &h, b"not a pack")
        .unwrap();
    let shard = server.storage("x/data/zz");
    shard
        .put(Kind::Config, "config", b"not a pack either")
        .unwrap();

    for (i, p) in prefixes.iter().enumerate() {
        let s = server.storage(p);
        let pw = format!("pw{i}");
        let repo = Repository::open(s.clone(), &Secret::Password(pw.as_bytes())).unwrap();
        let listed = repo.snapshots().unwrap();
        assert_eq!(listed.len(), 1, "{p:?}");
        assert_eq!(listed[0].0, snaps[i]);
        assert_eq!(repo.keys().unwrap().len(), 2, "{p:?}");
        assert_eq!(read_all(&repo, "latest")["f"], data(i as u32, 400_000));
        let r = check(&repo, true, None).unwrap();
        assert!(r.problems.is_empty(), "{p:?}: {:?}", r.problems);
        assert_eq!(r.unindexed_packs, 0, "{p:?}");
        // Another repository's password does not open this one.
        let other = format!("pw{}", (i + 1) % prefixes.len());
        assert!(matches!(
            Repository::open(s, &Secret::Password(other.as_bytes())),
            Err(Error::WrongSecret)
        ));
    }
    // A prefix with no repository.
    let e = Repository::open(server.storage("x/none"), &Secret::Password(b"pw0")).unwrap_err();
    assert!(
        matches!(e, Error::NotARepository { .. })
            && e.to_string().contains("s3://vault-test/x/none"),
        "{e}"
    );
}

/// A missing object is `Error::Missing` naming its `s3://` key; a range past the end is
/// `Error::Corrupt` (as on a local folder), never short data; deleting a missing object is not
/// an error.
#[test]
fn missing_objects_and_short_ranges() {
    let server = S3Server::start();
    let s = server.storage("p");
    let name = Id::of_bytes(b"x").to_hex();
    match s.get(Kind::Data, &name) {
        Err(Error::Missing { object }) => {
            assert_eq!(
                object,
                format!("s3://{BUCKET}/p/data/{}/{name}", &name[..2])
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.get_range(Kind::Index, &name, 0, 4),
        Err(Error::Missing { .. })
    ));
    s.put(Kind::Data, &name, b"hello").unwrap();
    assert_eq!(s.get_range(Kind::Data, &name, 1, 3).unwrap(), b"ell");
    assert_eq!(s.list(Kind::Data).unwrap(), vec![(name.clone(), 5)]);
    for (offset, len) in [(3, 3), (5, 1), (9, 2)] {
        let e = s.get_range(Kind::Data, &name, offset, len).unwrap_err();
        assert!(
            matches!(&e, Error::Corrupt { object, .. } if object.ends_with(&name)),
            "{e:?}"
        );
    }
    assert!(s.put(Kind::Data, "../escape", b"x").is_err());
    s.delete(Kind::Data, &name).unwrap();
    s.delete(Kind::Data, &name).unwrap();
    assert!(s.list(Kind::Data).unwrap().is_empty());
    assert!(s.list(Kind::Config).unwrap().is_empty());
}

/// A wrong secret key and a bucket that does not exist: a clear `Error::Storage` at once (a
/// 4xx answer is not retried), naming the object and what the server said, never the secret.
#[test]
fn refusals_are_final_and_name_no_secret() {
    let server = S3Server::start();
    let name = Id::of_bytes(b"y").to_hex();

    let mut wrong = server.settings_at(&server.endpoint(), "p");
    let bad_secret = "kbWrongSecretCanary-93";
    wrong.secret_access_key = Some(zeroize::Zeroizing::new(bad_secret.into()));
    let s = S3Storage::new(wrong).unwrap();
    for e in [
        s.put(Kind::Data, &name, b"x").unwrap_err(),
        s.get(Kind::Data, &name).unwrap_err(),
        s.list(Kind::Keys).unwrap_err(),
    ] {
        let shown = format!("{e} {e:?}");
        assert!(
            !shown.contains(bad_secret) && !shown.contains(SECRET_KEY),
            "{shown}"
        );
        match &e {
            Error::Storage { object, reason, .. } => {
                assert!(object.starts_with("s3://vault-test/p/"), "{e}");
                assert!(reason.contains("answered 403"), "{e}");
                assert!(!reason.contains("gave up after"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    // s3s-fs differs from AWS here: a PUT creates a missing bucket and a GET answers
    // NoSuchKey; a list answers NoSuchBucket, as AWS does for all three.
    let mut nobucket = server.settings_at(&server.endpoint(), "p");
    nobucket.bucket = "no-such-bucket".into();
    let s = S3Storage::new(nobucket).unwrap();
    let e = s.list(Kind::Data).unwrap_err();
    assert!(
        matches!(&e, Error::Storage { op: "list", object, reason }
            if object == "s3://no-such-bucket/p/data/"
                && reason.contains("answered 404 NoSuchBucket")),
        "{e}"
    );
    let e = Repository::init(Arc::new(s), b"pw", cheap(), small()).unwrap_err();
    assert!(e.to_string().contains("NoSuchBucket"), "{e}");
}

/// Two clients push the same files at once: both commit (no conditional write is needed:
/// packs, index objects and snapshots of the two are distinct objects), `check` is clean and
/// both snapshots read back. No write carried a precondition header.
#[test]
fn concurrent_pushes_need_no_conditional_writes() {
    let b = Backend::s3();
    Repository::init(b.storage.clone(), b"pw", cheap(), small()).unwrap();
    let files = vec![("a", data(5, 1_200_000)), ("b", data(6, 300_000))];
    let clients: Vec<Arc<dyn Storage>> = vec![b.reopen(), b.reopen()];
    let snaps: Vec<Id> = std::thread::scope(|sc| {
        let hs: Vec<_> = clients
            .iter()
            .map(|s| {
                let files = files.clone();
                sc.spawn(move || {
                    let repo = Repository::open(s.clone(), &Secret::Password(b"pw")).unwrap();
                    push(&repo, &files, "phone")
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_ne!(snaps[0], snaps[1]);
    let repo = Repository::open(b.storage.clone(), &Secret::Password(b"pw")).unwrap();
    let r = check(&repo, true, None).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.snapshots, 2);
    for s in &snaps {
        let got = read_all(&repo, &s.to_hex());
        assert_eq!(got["a"], files[0].1);
        assert_eq!(got["b"], files[1].1);
    }
    b.finish();
}
