//! `prune`: lock-free, in two phases (rustic's and duplicacy's answer to restic's stale locks).
//!
//! 1. **Mark.** Packs no snapshot needs are listed in a sealed `pending/` object with the time
//!    of marking; partly used packs (or, with `reseal`, packs sealed under an old key epoch)
//!    are first copied (their used blobs into new packs under the current epoch) and then
//!    marked. Pushes do not reuse blobs of marked packs.
//! 2. **Delete**, on a later run, once a mark is older than the grace period: the pack is
//!    deleted if still no snapshot needs it (a push that started before the mark and reused
//!    one of its blobs has committed by then: the grace period must exceed the longest push),
//!    otherwise it is unmarked.
//!
//! Order, so that a prune killed at any point leaves a repository `check` passes: new packs,
//! their index, the new marks; then a new index without the deleted packs that supersedes
//! every index object it was built from; then those index objects; then the packs; last the
//! old marks. Nothing is ever deleted before what replaces it is stored. A prune killed on the
//! way is finished by the next one: the new index supersedes the stale index objects too
//! (those superseded but not yet deleted), and marked packs no index lists any more are
//! deleted from the marks alone. Pushes never index a marked pack (`recover_unindexed`), and
//! re-check the marks before writing their snapshot ([`crate::Writer::revalidate`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::id::Id;
use crate::index::{IndexFile, IndexedPack};
use crate::keys::Keyring;
use crate::object::{epoch_of, open_object, seal_object};
use crate::pack::{seal_blob, PackWriter};
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::storage::{Kind, Storage};
use crate::{Error, Result};

/// Packs marked for deletion.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    /// (pack, when it was marked, Unix milliseconds).
    pub marks: Vec<(Id, i64)>,
    /// Every pack marked (derived from `marks`, for callers).
    #[serde(skip)]
    pub packs: Vec<Id>,
}

impl Pending {
    /// Reads and opens `pending/name`.
    pub fn load(storage: &dyn Storage, keyring: &Keyring, name: &str) -> Result<Pending> {
        let bytes = storage.get(Kind::Pending, name)?;
        let plain = open_object(keyring, Kind::Pending, name, &bytes)?;
        Self::decode_plain(name, &plain)
    }

    /// Decodes an opened pending object's plaintext (postcard), filling in `packs`.
    pub fn decode_plain(name: &str, plain: &[u8]) -> Result<Pending> {
        let mut p: Pending = postcard::from_bytes(plain).map_err(|e| {
            Error::corrupt(Kind::Pending.show(name), format!("does not decode: {e}"))
        })?;
        p.packs = p.marks.iter().map(|(id, _)| *id).collect();
        Ok(p)
    }

    /// Its plaintext, as [`Pending::decode_plain`] reads it.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serializable")
    }

    /// Every pending object (one that vanishes between listing and reading, removed by a
    /// concurrent prune after it stored its successor, makes the listing be read again).
    pub fn load_all(storage: &dyn Storage, keyring: &Keyring) -> Result<Vec<(String, Pending)>> {
        crate::storage::read_listed(storage, Kind::Pending, |name| {
            Ok((name.to_string(), Pending::load(storage, keyring, name)?))
        })?
        .into_iter()
        .collect()
    }

    fn store(&self, storage: &dyn Storage, keyring: &Keyring) -> Result<Id> {
        let (id, sealed) = seal_object(keyring, Kind::Pending, &self.encode());
        storage.put(Kind::Pending, &id.to_hex(), &sealed)?;
        Ok(id)
    }
}

/// How to prune.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// How long a mark waits before its pack is deleted (default 24 h; must exceed the
    /// longest push that may run beside a prune).
    pub grace: Duration,
    /// A partly used pack is repacked when more than this fraction of it is unused.
    pub max_unused: f64,
    /// Also re-seal everything sealed under an older key epoch (after `key rotate`).
    pub reseal: bool,
    /// Only report what would be done.
    pub dry_run: bool,
    /// "Now", Unix milliseconds (tests); the clock when `None`.
    pub now_ms: Option<i64>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            grace: Duration::from_secs(24 * 3600),
            max_unused: 0.2,
            reseal: false,
            dry_run: false,
            now_ms: None,
        }
    }
}

/// What a prune did (or, dry, would do).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PruneReport {
    /// Packs indexed.
    pub packs: usize,
    /// Packs marked now.
    pub marked: usize,
    /// Marked packs some snapshot needs again: unmarked.
    pub unmarked: usize,
    /// Marked packs still inside their grace period.
    pub waiting: usize,
    /// Packs deleted.
    pub deleted: usize,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Packs whose used blobs were copied into new packs (then marked).
    pub repacked: usize,
    /// Snapshots re-sealed under the current key epoch.
    pub resealed_snapshots: usize,
    /// Stale temporary files of killed writers removed.
    pub temp_files_removed: usize,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Every chunk some snapshot needs (its tree and its files).
fn used_blobs(repo: &Repository, snaps: &[(Id, Snapshot)]) -> Result<HashSet<Id>> {
    let mut used = HashSet::new();
    for (id, s) in snaps {
        used.extend(s.tree.iter().copied());
        let tree = repo.tree(s).map_err(|e| {
            Error::Invalid(format!(
                "snapshots/{id}: its tree cannot be read ({e}); prune refuses to guess what is \
                 used: run `check` and repair first"
            ))
        })?;
        for n in tree.nodes {
            used.extend(n.chunks);
        }
    }
    Ok(used)
}

/// Prunes (see the module docs).
pub fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let now = opts.now_ms.unwrap_or_else(now_ms);
    let storage = repo.storage();
    let keyring = repo.keyring();
    let mut report = PruneReport {
        temp_files_removed: if opts.dry_run {
            0
        } else {
            storage.remove_stale_temps(Duration::from_secs(3600))
        },
        ..PruneReport::default()
    };
    // Snapshots first, then the index: a push writes its index object before its snapshot,
    // so every snapshot listed here has its chunks in the index loaded after (the other way
    // round, a push finishing in between would leave a snapshot whose tree is not indexed).
    let snaps = repo.snapshots()?;
    repo.reset_index();
    repo.load_index()?;
    let used = used_blobs(repo, &snaps)?;
    let pending = Pending::load_all(storage, keyring)?;
    let mut marked_at: HashMap<Id, i64> = HashMap::new();
    for (_, p) in &pending {
        for (id, t) in &p.marks {
            let e = marked_at.entry(*id).or_insert(*t);
            *e = (*e).min(*t);
        }
    }
    let current = keyring.current().epoch;

    // Which pack each used blob is counted in: an unmarked one if any.
    let (packs, index_files, stale_files, mut used_in): (
        Vec<_>,
        Vec<Id>,
        Vec<Id>,
        HashMap<u32, u64>,
    ) = {
        let ix = repo.index()?;
        let mut used_in: HashMap<u32, u64> = HashMap::new();
        for id in &used {
            let locs = ix.all(id);
            let best = locs
                .iter()
                .find(|l| !marked_at.contains_key(&ix.pack(l.pack).id))
                .or(locs.first());
            if let Some(l) = best {
                *used_in.entry(l.pack).or_default() += l.len as u64;
            }
        }
        (
            ix.packs().to_vec(),
            ix.files.clone(),
            ix.stale.clone(),
            used_in,
        )
    };
    report.packs = packs.len();

    let mut to_mark: Vec<Id> = Vec::new();
    let mut keep_marks: Vec<(Id, i64)> = Vec::new();
    let mut to_delete: Vec<(Id, u64)> = Vec::new();
    let mut to_repack: Vec<u32> = Vec::new();
    for (no, p) in packs.iter().enumerate() {
        let no = no as u32;
        let used_bytes = used_in.remove(&no).unwrap_or(0);
        match marked_at.get(&p.id) {
            Some(_) if used_bytes > 0 => report.unmarked += 1,
            Some(&t) if now - t >= opts.grace.as_millis() as i64 => to_delete.push((p.id, p.size)),
            Some(&t) => {
                report.waiting += 1;
                keep_marks.push((p.id, t));
            }
            None if used_bytes == 0 => to_mark.push(p.id),
            None => {
                let unused = 1.0 - used_bytes as f64 / p.size.max(1) as f64;
                if unused > opts.max_unused || (opts.reseal && p.epoch != current) {
                    to_repack.push(no);
                }
            }
        }
    }
    // Marked packs no index lists any more (a prune killed after writing the index without
    // them, before deleting them all): deleted once their grace period is over.
    let indexed: HashSet<Id> = packs.iter().map(|p| p.id).collect();
    for (name, size) in storage.list(Kind::Data)? {
        let Ok(id) = name.parse::<Id>() else {
            continue;
        };
        if indexed.contains(&id) {
            continue;
        }
        match marked_at.get(&id) {
            Some(&t) if now - t >= opts.grace.as_millis() as i64 => to_delete.push((id, size)),
            Some(&t) => {
                report.waiting += 1;
                keep_marks.push((id, t));
            }
            None => {}
        }
    }
    report.marked = to_mark.len();
    report.repacked = to_repack.len();
    report.deleted = to_delete.len();
    report.deleted_bytes = to_delete.iter().map(|(_, s)| s).sum();
    if opts.dry_run {
        return Ok(report);
    }

    // 1. Copy the used blobs of packs to repack, then mark those packs.
    if !to_repack.is_empty() {
        let new_packs = repack(repo, &to_repack, &used)?;
        if !new_packs.is_empty() {
            IndexFile {
                supersedes: Vec::new(),
                packs: new_packs,
            }
            .store(storage, keyring)?;
        }
        to_mark.extend(to_repack.iter().map(|no| packs[*no as usize].id));
    }
    // 2. The marks that remain, and the new ones.
    let old_pending: Vec<String> = pending.iter().map(|(n, _)| n.clone()).collect();
    let mut marks = keep_marks;
    marks.extend(to_mark.iter().map(|id| (*id, now)));
    if !marks.is_empty() {
        Pending {
            marks,
            packs: Vec::new(),
        }
        .store(storage, keyring)?;
    }
    // 3. Deletions, and re-sealing of the index under the current epoch.
    let old_epoch_index = opts.reseal
        && index_files.iter().any(|f| {
            storage
                .get(Kind::Index, &f.to_hex())
                .ok()
                .and_then(|b| epoch_of(&b))
                .is_some_and(|e| e != current)
        });
    if !to_delete.is_empty() || old_epoch_index {
        let gone: HashSet<Id> = to_delete.iter().map(|(id, _)| *id).collect();
        // The full index, re-read now (it includes what step 1 and concurrent pushes added).
        repo.reset_index();
        repo.load_index()?;
        // It supersedes every index object read, and the stale ones (superseded by one of
        // those, left by a killed prune): if a stale one outlived its superseder, it would
        // list deleted packs again.
        let (keep, files): (Vec<IndexedPack>, Vec<Id>) = {
            let ix = repo.index()?;
            let nos: Vec<u32> = (0..ix.packs().len() as u32)
                .filter(|no| !gone.contains(&ix.pack(*no).id))
                .collect();
            let mut files = ix.files.clone();
            files.extend(ix.stale.iter().copied());
            (ix.indexed_packs(&nos), files)
        };
        IndexFile {
            supersedes: files.clone(),
            packs: keep,
        }
        .store(storage, keyring)?;
        for f in files {
            storage.delete(Kind::Index, &f.to_hex())?;
        }
        for (id, _) in &to_delete {
            storage.delete(Kind::Data, &id.to_hex())?;
        }
    } else {
        // Stale index objects a killed prune left: their superseder is stored.
        for f in stale_files {
            storage.delete(Kind::Index, &f.to_hex())?;
        }
    }
    // 4. The old marks (their content is in the new pending object or was acted upon).
    for name in old_pending {
        storage.delete(Kind::Pending, &name)?;
    }
    if opts.reseal {
        report.resealed_snapshots = reseal_snapshots(repo, &snaps)?;
    }
    repo.reset_index();
    Ok(report)
}

/// Copies the used blobs of packs `nos` into new packs under the current epoch.
fn repack(repo: &Repository, nos: &[u32], used: &HashSet<Id>) -> Result<Vec<IndexedPack>> {
    let key = repo.keyring().current().clone();
    let target = repo.params().pack_target as usize;
    let mut out = Vec::new();
    let mut w = PackWriter::new(key.epoch).pad_below(target);
    let flush = |w: PackWriter, out: &mut Vec<IndexedPack>| -> Result<()> {
        if w.is_empty() {
            return Ok(());
        }
        let (name, bytes, blobs) = w.finish(&key);
        repo.storage().put(Kind::Data, &name.to_hex(), &bytes)?;
        out.push(IndexedPack {
            pack: name,
            epoch: key.epoch,
            size: bytes.len() as u64,
            blobs,
        });
        Ok(())
    };
    let entries: Vec<(Id, crate::index::Location, crate::index::PackInfo)> = {
        let ix = repo.index()?;
        let wanted: HashSet<u32> = nos.iter().copied().collect();
        let mut seen = HashSet::new();
        ix.entries()
            .filter(|(id, l)| wanted.contains(&l.pack) && used.contains(id))
            .filter(|(id, _)| seen.insert(**id))
            .map(|(id, l)| (*id, *l, ix.pack(l.pack)))
            .collect()
    };
    for (id, loc, pack) in entries {
        let data = repo.read_blob(&pack, &loc, &id)?;
        w.push(
            id,
            loc.kind,
            data.len() as u32,
            &seal_blob(&key, &id, loc.kind, &data),
        );
        if w.len() >= target {
            let full = std::mem::replace(&mut w, PackWriter::new(key.epoch).pad_below(target));
            flush(full, &mut out)?;
        }
    }
    flush(w, &mut out)?;
    Ok(out)
}

/// Re-stores snapshots sealed under an old epoch under the current one (new names), then
/// removes the old objects.
fn reseal_snapshots(repo: &Repository, snaps: &[(Id, Snapshot)]) -> Result<usize> {
    let current = repo.keyring().current().epoch;
    let mut n = 0;
    for (id, s) in snaps {
        let name = id.to_hex();
        let bytes = repo.storage().get(Kind::Snapshots, &name)?;
        if epoch_of(&bytes) == Some(current) {
            continue;
        }
        s.store(repo.storage(), repo.keyring())?;
        repo.storage().delete(Kind::Snapshots, &name)?;
        n += 1;
    }
    Ok(n)
}

/// Packs per key epoch (for `key rotate` progress reports).
pub fn packs_by_epoch(repo: &Repository) -> Result<BTreeMap<u32, usize>> {
    let ix = repo.index()?;
    let mut m = BTreeMap::new();
    for p in ix.packs() {
        *m.entry(p.epoch).or_default() += 1;
    }
    Ok(m)
}
