#![allow(dead_code)]
//! What the vault's integration tests share: the storages a scenario runs on (a local folder,
//! and s3s-fs on loopback behind a recording proxy), the fault-injecting proxy, and a few
//! helpers.

pub mod proxy;
pub mod s3;

use std::collections::BTreeMap;
use std::sync::Arc;

use vault::keys::{Argon2Params, Params, MIN_MEMORY_KIB};
use vault::storage::{Kind, LocalStorage, S3Storage, Storage};
use vault::tree::{Node, Tree};
use vault::{Repository, SnapshotInfo, Writer};

use proxy::Proxy;
use s3::S3Server;

/// Headers that make a request conditional. The vault must never send one on a write: some
/// S3-compatible servers ignore them.
pub const CONDITIONAL: [&str; 6] = [
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "x-amz-copy-source-if-match",
    "x-amz-copy-source-if-none-match",
];

/// A storage for one test, and what keeps it alive.
pub struct Backend {
    /// The storage under test.
    pub storage: Arc<dyn Storage>,
    /// The S3 server (S3 only).
    pub server: Option<S3Server>,
    /// The recording proxy in front of it (S3 only).
    pub proxy: Option<Proxy>,
    /// The local folder's parent (local only).
    pub dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// A fresh local folder.
    pub fn local() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        Backend {
            storage: Arc::new(LocalStorage::new(dir.path().join("repo"))),
            server: None,
            proxy: None,
            dir: Some(dir),
        }
    }

    /// `s3://vault-test/team/phone-1` on a fresh s3s-fs, through a proxy that passes every
    /// request on and records it; the product's default timeouts and retries.
    pub fn s3() -> Backend {
        let server = S3Server::start();
        let proxy = Proxy::start(server.addr);
        let storage = Arc::new(
            S3Storage::new(server.settings_at(&proxy.endpoint(), "team/phone-1")).unwrap(),
        );
        Backend {
            storage,
            server: Some(server),
            proxy: Some(proxy),
            dir: None,
        }
    }

    /// Another handle on the same repository (a second client).
    pub fn reopen(&self) -> Arc<dyn Storage> {
        match (&self.server, &self.proxy, &self.dir) {
            (Some(server), Some(proxy), _) => Arc::new(
                S3Storage::new(server.settings_at(&proxy.endpoint(), "team/phone-1")).unwrap(),
            ),
            (_, _, Some(dir)) => Arc::new(LocalStorage::new(dir.path().join("repo"))),
            _ => unreachable!(),
        }
    }

    /// After a scenario: on S3, no write carried a precondition (the vault never relies on
    /// one), and the server saw requests at all.
    pub fn finish(self) {
        if let Some(p) = &self.proxy {
            let seen = p.seen();
            assert!(!seen.is_empty(), "the proxy saw no request");
            for r in &seen {
                if r.method == "GET" || r.method == "HEAD" {
                    continue;
                }
                for (h, v) in &r.headers {
                    assert!(
                        !CONDITIONAL.contains(&h.as_str()),
                        "{} {} carries {h}: {v}",
                        r.method,
                        r.target
                    );
                }
            }
        }
    }
}

/// Cheap Argon2 for tests.
pub fn cheap() -> Option<Argon2Params> {
    Some(Argon2Params {
        m_kib: MIN_MEMORY_KIB,
        t: 1,
        p: 1,
    })
}

/// Small chunks and packs, so a few MB exercise many of both.
pub fn small() -> Params {
    Params {
        chunk_min: 4 << 10,
        chunk_avg: 16 << 10,
        chunk_max: 64 << 10,
        pack_target: 256 << 10,
    }
}

/// Reproducible pseudo-random bytes.
pub fn data(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Pushes `files` as one snapshot of `chain`.
pub fn try_push(
    repo: &Repository,
    files: &[(&str, Vec<u8>)],
    chain: &str,
) -> vault::Result<vault::Id> {
    let w = Writer::new(repo, None)?;
    let mut tree = Tree::default();
    for (name, content) in files {
        let (chunks, size) = w.add_reader(&mut &content[..])?;
        tree.nodes.push(Node {
            name: name.to_string(),
            size,
            meta: vec![],
            chunks,
        });
    }
    let (id, _) = w.commit(
        &tree,
        SnapshotInfo {
            chain: chain.into(),
            host: "test".into(),
            tags: BTreeMap::new(),
            time_ms: None,
        },
        None,
    )?;
    Ok(id)
}

/// Pushes `files` as one snapshot of `chain`; panics on failure.
pub fn push(repo: &Repository, files: &[(&str, Vec<u8>)], chain: &str) -> vault::Id {
    try_push(repo, files, chain).unwrap()
}

/// Every file of a snapshot.
pub fn read_all(repo: &Repository, snapshot: &str) -> BTreeMap<String, Vec<u8>> {
    let (_, s) = repo.find_snapshot(snapshot).unwrap();
    let tree = repo.tree(&s).unwrap();
    tree.nodes
        .iter()
        .map(|n| {
            let mut out = Vec::new();
            repo.read_chunks(&n.chunks, &mut out).unwrap();
            (n.name.clone(), out)
        })
        .collect()
}

/// Bytes of every pack stored.
pub fn stored_bytes(s: &dyn Storage) -> u64 {
    s.list(Kind::Data).unwrap().iter().map(|(_, n)| n).sum()
}
