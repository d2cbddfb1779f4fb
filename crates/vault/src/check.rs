//! `check`: is every snapshot readable from what is stored? Structure by default (every
//! index, snapshot, tree and pending object opens; every pack an index lists exists with its
//! size; every chunk a snapshot needs is indexed); `read_data` also downloads every pack and
//! opens every blob, and checks each pack's name against its bytes.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::id::Id;
use crate::index::PackInfo;
use crate::pack::{open_blob, parse};
use crate::prune::Pending;
use crate::repo::Repository;
use crate::storage::Kind;
use crate::Result;

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The object (`data/…`, `index/…`, `snapshots/…`).
    pub object: String,
    /// What is wrong.
    pub problem: String,
}

/// What `check` found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    /// Snapshots read.
    pub snapshots: usize,
    /// Packs indexed.
    pub packs: usize,
    /// Blobs indexed.
    pub blobs: usize,
    /// Packs stored that no index lists (left by an interrupted push: the next push indexes
    /// them, prune removes them when unused). Not an error.
    pub unindexed_packs: usize,
    /// True when every pack was read.
    pub read_data: bool,
    /// Bytes read.
    pub bytes_read: u64,
    /// What is wrong; empty when the repository is sound.
    pub problems: Vec<Problem>,
}

fn problem(object: impl Into<String>, p: impl Into<String>) -> Problem {
    Problem {
        object: object.into(),
        problem: p.into(),
    }
}

/// Checks the repository (see the module docs). `progress` is told the bytes of each pack read.
pub fn check(
    repo: &Repository,
    read_data: bool,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<CheckReport> {
    repo.reset_index();
    repo.load_index()?;
    let mut r = CheckReport {
        read_data,
        ..CheckReport::default()
    };
    for e in repo.index_problems() {
        r.problems.push(split(&e));
    }
    let stored: BTreeMap<String, u64> = repo.storage().list(Kind::Data)?.into_iter().collect();
    let (packs, blobs): (Vec<PackInfo>, usize) = {
        let ix = repo.index()?;
        (ix.packs().to_vec(), ix.len())
    };
    r.packs = packs.len();
    r.blobs = blobs;
    let indexed: HashSet<String> = packs.iter().map(|p| p.id.to_hex()).collect();
    r.unindexed_packs = stored.keys().filter(|k| !indexed.contains(*k)).count();
    let mut missing_packs = HashSet::new();
    for p in &packs {
        let name = p.id.to_hex();
        match stored.get(&name) {
            None => {
                missing_packs.insert(p.id);
                r.problems.push(problem(
                    Kind::Data.show(&name),
                    "indexed but missing from the store",
                ));
            }
            Some(size) if *size != p.size => r.problems.push(problem(
                Kind::Data.show(&name),
                format!("{size} bytes stored, the index says {}", p.size),
            )),
            Some(_) => {}
        }
    }
    let (snaps, bad) = repo.snapshots_lenient()?;
    r.snapshots = snaps.len();
    for e in bad {
        r.problems.push(split(&e.to_string()));
    }
    for (name, _) in repo.storage().list(Kind::Pending)? {
        if let Err(e) = Pending::load(repo.storage(), repo.keyring(), &name) {
            r.problems.push(split(&e.to_string()));
        }
    }
    // Every chunk of every snapshot: its tree, then its files' chunks.
    for (id, s) in &snaps {
        let what = Kind::Snapshots.show(&id.to_hex());
        let missing = |chunk: &Id| -> Option<String> {
            let ix = repo.index().ok()?;
            match ix.get(chunk) {
                None => Some("not in any index".into()),
                Some(l) if missing_packs.contains(&ix.pack(l.pack).id) => {
                    Some(format!("its pack data/{} is missing", ix.pack(l.pack).id))
                }
                Some(_) => None,
            }
        };
        if let Some(why) = s.tree.iter().find_map(&missing) {
            r.problems
                .push(problem(&what, format!("its tree cannot be read: {why}")));
            continue;
        }
        let tree = match repo.tree(s) {
            Ok(t) => t,
            Err(e) => {
                r.problems
                    .push(problem(&what, format!("its tree cannot be read: {e}")));
                continue;
            }
        };
        let mut lost = 0usize;
        let mut first = None;
        for n in &tree.nodes {
            if let Some(why) = n.chunks.iter().find_map(&missing) {
                lost += 1;
                first.get_or_insert((n.name.clone(), why));
            }
        }
        if let Some((name, why)) = first {
            r.problems.push(problem(
                &what,
                format!("{lost} file(s) cannot be read, the first {name:?}: a chunk {why}"),
            ));
        }
    }
    if read_data {
        let bytes = AtomicU64::new(0);
        let found: Vec<Problem> = stored
            .par_iter()
            .flat_map_iter(|(name, _size)| {
                let mut out = Vec::new();
                let what = Kind::Data.show(name);
                let data = match repo.storage().get(Kind::Data, name) {
                    Ok(d) => d,
                    Err(e) => {
                        out.push(problem(&what, format!("cannot be read: {e}")));
                        return out;
                    }
                };
                bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some(p) = progress {
                    p(data.len() as u64);
                }
                if Id::of_bytes(&data).to_hex() != *name {
                    out.push(problem(&what, "content does not match its name (damaged)"));
                    return out;
                }
                let id: Id = name.parse().expect("listed names are ids");
                match parse(repo.keyring(), &id, &data) {
                    Ok((epoch, entries)) => {
                        for e in &entries {
                            let sealed = &data[e.offset as usize..(e.offset + e.len) as usize];
                            if let Err(err) = open_blob(repo.keyring(), epoch, &id, e, sealed) {
                                out.push(problem(&what, err.to_string()));
                            }
                        }
                    }
                    Err(e) => out.push(problem(&what, e.to_string())),
                }
                out
            })
            .collect();
        r.problems.extend(found);
        r.bytes_read = bytes.load(Ordering::Relaxed);
    }
    r.problems
        .sort_by(|a, b| a.object.cmp(&b.object).then(a.problem.cmp(&b.problem)));
    r.problems.dedup();
    Ok(r)
}

/// `"kind/name: what"` → a problem.
fn split(e: &str) -> Problem {
    match e.split_once(": ") {
        Some((o, p)) if o.contains('/') => problem(o, p),
        _ => problem("repository", e),
    }
}
