//! Resumable uploads through `keybag serve` with an append-only `backup` token (issue 10): a
//! push cut off after some packs were stored resumes without storing those packs' chunks
//! again. The token may not read data back, so the pack headers cannot be read to learn what
//! the cut-off push stored: the client's journal (one sealed index entry per stored pack, in a
//! local folder) is what tells it. Without a journal, the same resume stores them again (the
//! control, which shows the journal is what makes the difference).

mod common;

use std::collections::HashSet;
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{Deployment, TestServer};
use vault::keys::{Argon2Params, Params, Secret};
use vault::storage::{Kind, LocalStorage, Storage};
use vault::tree::Tree;
use vault::{Error, Repository, SnapshotInfo, Writer};

const PASSWORD: &[u8] = b"resume repository password";

/// A storage that records the packs it stores and fails every pack upload after `left`,
/// as if the client were killed then.
struct CutAfter {
    inner: Arc<dyn Storage>,
    left: AtomicUsize,
    stored: Mutex<Vec<String>>,
}

impl CutAfter {
    fn new(inner: Arc<dyn Storage>, left: usize) -> Arc<CutAfter> {
        Arc::new(CutAfter {
            inner,
            left: AtomicUsize::new(left),
            stored: Mutex::new(Vec::new()),
        })
    }

    fn stored(&self) -> HashSet<String> {
        self.stored.lock().unwrap().iter().cloned().collect()
    }
}

impl Storage for CutAfter {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> vault::Result<()> {
        if kind == Kind::Data {
            let ok = self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if !ok {
                return Err(Error::Io {
                    path: name.to_string(),
                    source: std::io::Error::other("the client was cut off"),
                });
            }
            self.inner.put(kind, name, data)?;
            self.stored.lock().unwrap().push(name.to_string());
            return Ok(());
        }
        self.inner.put(kind, name, data)
    }
    fn get(&self, kind: Kind, name: &str) -> vault::Result<Vec<u8>> {
        self.inner.get(kind, name)
    }
    fn get_range(&self, kind: Kind, name: &str, off: u64, len: u64) -> vault::Result<Vec<u8>> {
        self.inner.get_range(kind, name, off, len)
    }
    fn list(&self, kind: Kind) -> vault::Result<Vec<(String, u64)>> {
        self.inner.list(kind)
    }
    fn delete(&self, kind: Kind, name: &str) -> vault::Result<()> {
        self.inner.delete(kind, name)
    }
    fn size(&self, kind: Kind, name: &str) -> vault::Result<Option<u64>> {
        self.inner.size(kind, name)
    }
}

/// Deterministic incompressible bytes (xorshift).
fn content(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What a cut-off push followed by a resumed one left in a new account's repository.
struct Outcome {
    /// Packs stored before the cut.
    first: HashSet<String>,
    /// Packs the resumed push stored.
    second: HashSet<String>,
    /// Chunks the repository now holds more than once.
    duplicated: usize,
    /// Chunks it holds.
    chunks: usize,
}

fn cut_and_resume(srv: &TestServer, account: &str, journal: bool) -> Outcome {
    let owner = srv.account(account, "account password one two");
    // Small chunks and packs, so the 2 MiB below make some thirty packs.
    let params = Params {
        chunk_min: 4 << 10,
        chunk_avg: 16 << 10,
        chunk_max: 64 << 10,
        pack_target: 64 << 10,
    };
    let cheap = Argon2Params {
        m_kib: 64 << 10,
        t: 1,
        p: 1,
    };
    Repository::init(srv.storage(&owner), PASSWORD, Some(cheap), params).expect("init");
    let backup = srv.device(&owner, "phone", "backup");
    let data = content(2 << 20);
    let dir = tempfile::tempdir().unwrap();
    let journal_store = || -> Option<Arc<dyn Storage>> {
        journal.then(|| Arc::new(LocalStorage::new(dir.path().join("journal"))) as Arc<dyn Storage>)
    };

    // The first push, cut off after 10 packs.
    let cut = CutAfter::new(srv.storage(&backup), 10);
    let repo = Repository::open(cut.clone(), &Secret::Password(PASSWORD)).expect("open");
    let w = Writer::with_journal(&repo, None, journal_store()).expect("writer");
    // Packs are stored by an upload thread: the cut shows in add_reader or, at the latest,
    // once the packs handed over are waited for.
    let err = w
        .add_reader(&mut Cursor::new(&data))
        .and_then(|_| w.flush())
        .unwrap_err();
    assert!(err.to_string().contains("cut off"), "{err}");
    drop(w);
    let first = cut.stored();
    assert_eq!(first.len(), 10);

    // The resumed push: a new process (new repository handle), the same journal.
    let rec = CutAfter::new(srv.storage(&backup), usize::MAX);
    let repo = Repository::open(rec.clone(), &Secret::Password(PASSWORD)).expect("open");
    let w = Writer::with_journal(&repo, None, journal_store()).expect("writer");
    let (chunks, size) = w.add_reader(&mut Cursor::new(&data)).expect("resumed push");
    assert_eq!(size, data.len() as u64);
    w.commit(&Tree::default(), SnapshotInfo::default(), None)
        .expect("snapshot");
    let second = rec.stored();

    // The owner checks the result: everything readable, every chunk there.
    let repo = Repository::open(srv.storage(&owner), &Secret::Password(PASSWORD)).expect("open");
    let report = vault::check::check(&repo, true, None).expect("check");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    if journal {
        assert_eq!(report.unindexed_packs, 0);
    } else {
        // The packs stored before the cut stay unindexed (the backup token could not read
        // their headers); the owner's next push would index them: do that now, to count.
        assert_eq!(report.unindexed_packs, first.len());
        assert_eq!(vault::recover_unindexed(&repo).unwrap(), first.len());
    }
    let ix = repo.index().unwrap();
    let unique: HashSet<_> = ix.entries().map(|(id, _)| *id).collect();
    for id in &chunks {
        assert!(unique.contains(id), "chunk {id} missing");
    }
    let duplicated = unique.iter().filter(|id| ix.all(id).len() > 1).count();
    if journal {
        // The journal is emptied once its packs are indexed.
        let left = LocalStorage::new(dir.path().join("journal"))
            .list(Kind::Index)
            .unwrap();
        assert!(left.is_empty(), "journal not cleared: {left:?}");
    }
    Outcome {
        first,
        second,
        duplicated,
        chunks: unique.len(),
    }
}

#[test]
fn a_backup_token_push_resumes_without_storing_again() {
    let d = Deployment::local();
    let data = tempfile::tempdir().unwrap();
    let srv = TestServer::start(d.options(data.path().to_path_buf()));

    let with = cut_and_resume(&srv, "alice", true);
    assert!(
        with.first.is_disjoint(&with.second),
        "the resumed push stored again {} of the {} packs stored before the cut",
        with.first.intersection(&with.second).count(),
        with.first.len()
    );
    assert_eq!(with.duplicated, 0, "chunks stored twice");
    assert!(
        with.chunks > 50,
        "{} chunks: too few to mean anything",
        with.chunks
    );

    // Control: without a journal, a backup token cannot learn what the cut-off push stored.
    let without = cut_and_resume(&srv, "bob", false);
    assert!(
        without.duplicated > 0,
        "without a journal nothing was stored twice: the test does not show what the journal does"
    );
}
