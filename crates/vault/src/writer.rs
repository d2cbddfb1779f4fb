//! A push: content is cut by a keyed content-defined chunker (FastCDC 2020, its gear table
//! XOR-ed with the epoch's secret seed), each chunk named by its keyed BLAKE3 hash, and only
//! chunks the repository does not hold are compressed, sealed and packed (a pack below its
//! target size is padded). Files may be added from many threads at once; a full pack is
//! sealed by the thread that filled it and stored by an upload thread.
//!
//! Write order: packs, then one index object for them, then the snapshot. A push killed at
//! any point leaves complete packs that no index lists; the next push finds them and indexes
//! them, so nothing already uploaded is uploaded again. Packs are stored by threads of
//! their own ([`crate::upload`]) while chunking goes on. It learns what such a pack holds from
//! the client's journal (one sealed index entry written locally after each pack is stored)
//! or, without one, by reading the pack's sealed header. The journal is what lets a device
//! whose token may not read data back (an append-only `backup` token) resume.
//!
//! A prune may run beside a push. The push reuses chunks of packs the index listed when it
//! started; before it writes its snapshot it re-reads the marks and the pack listing
//! ([`Writer::revalidate`], and again inside [`Writer::commit`] after its index object is
//! stored): every chunk the snapshot needs whose packs were since marked for deletion is
//! copied into a pack of this push, and one whose packs are gone is stored again from its
//! content. A prune therefore only has to wait (its grace period) longer than the moment
//! between that last check and the snapshot write, not longer than the whole push.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rayon::prelude::*;

use crate::chunker::Chunker;
use crate::crypto::EpochKey;
use crate::id::Id;
use crate::index::{IndexFile, IndexedPack};
use crate::object::open_object;
use crate::pack::{
    header_len, open_header, pack_epoch, seal_blob_with, BlobKind, PackWriter, HEAD_LEN,
};
use crate::repo::Repository;
use crate::snapshot::{ChainState, Snapshot, Summary};
use crate::storage::{Kind, Storage};
use crate::tree::Tree;
use crate::upload::{SealedPack, Uploader};
use crate::{Error, Result};

/// What a push adds on top of the tree.
#[derive(Clone, Debug, Default)]
pub struct SnapshotInfo {
    /// The chain (e.g. a device's UDID).
    pub chain: String,
    /// The pushing machine.
    pub host: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// When, Unix milliseconds (now if `None`).
    pub time_ms: Option<i64>,
}

/// A push in progress.
pub struct Writer<'r> {
    repo: &'r Repository,
    key: EpochKey,
    packer: Mutex<PackWriter>,
    /// Chunks stored (or being stored) by this push, so two threads never store one twice.
    taken: Mutex<HashSet<Id>>,
    /// Packs marked for deletion (or found deleted): their blobs are not reused.
    marked: RwLock<HashSet<Id>>,
    /// Chunks found in the repository (not stored again): checked before the snapshot.
    reused: Mutex<HashSet<Id>>,
    /// Chunks to store even though the index lists them (their packs vanished).
    force: Mutex<HashSet<Id>>,
    uploader: Uploader,
    chunker: Chunker,
    new_blobs: AtomicU64,
    new_bytes: AtomicU64,
    progress: Option<&'r (dyn Fn(u64) + Sync)>,
    journal: Option<Arc<dyn Storage>>,
    /// Try zstd on data chunks (trees always are).
    compress: std::sync::atomic::AtomicBool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl<'r> Writer<'r> {
    /// Starts a push: loads the index and indexes packs an interrupted push left unindexed.
    /// `progress` is told the plaintext bytes of every chunk processed.
    pub fn new(
        repo: &'r Repository,
        progress: Option<&'r (dyn Fn(u64) + Sync)>,
    ) -> Result<Writer<'r>> {
        Writer::with_journal(repo, progress, None)
    }

    /// [`Writer::new`] with a client-side journal (a private local store, e.g. a folder
    /// beside the client's state file): each stored pack's index entry is written there,
    /// sealed, as soon as the pack is stored, so a push interrupted before its index object
    /// can be resumed without reading anything back from the repository.
    pub fn with_journal(
        repo: &'r Repository,
        progress: Option<&'r (dyn Fn(u64) + Sync)>,
        journal: Option<Arc<dyn Storage>>,
    ) -> Result<Writer<'r>> {
        repo.load_index()?;
        recover_unindexed_with(repo, journal.as_deref())?;
        let key = repo.keyring().current().clone();
        let p = repo.params();
        let chunker = Chunker::new(
            p.chunk_min as usize,
            p.chunk_avg as usize,
            p.chunk_max as usize,
            key.chunker_seed,
        );
        Ok(Writer {
            repo,
            packer: Mutex::new(
                PackWriter::new(key.epoch).pad_below(repo.params().pack_target as usize),
            ),
            key,
            taken: Mutex::new(HashSet::new()),
            marked: RwLock::new(repo.marked()),
            reused: Mutex::new(HashSet::new()),
            force: Mutex::new(HashSet::new()),
            uploader: Uploader::start(repo.storage_arc(), journal.clone(), repo.keyring().clone()),
            chunker,
            new_blobs: AtomicU64::new(0),
            new_bytes: AtomicU64::new(0),
            progress,
            journal,
            compress: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// True when the repository already holds the chunk in a pack not marked for deletion.
    fn known(&self, id: &Id) -> bool {
        let Ok(ix) = self.repo.index() else {
            return false;
        };
        let marked = self.marked.read().expect("lock");
        ix.all(id)
            .iter()
            .any(|l| !marked.contains(&ix.pack(l.pack).id))
    }

    /// Stores one chunk unless the repository has it; returns its ID.
    pub fn add_chunk(&self, kind: BlobKind, data: &[u8]) -> Result<Id> {
        let id = self.key.chunk_id(data);
        if let Some(p) = self.progress {
            p(data.len() as u64);
        }
        let forced = self.force.lock().expect("lock").contains(&id);
        if !forced && self.known(&id) {
            self.reused.lock().expect("lock").insert(id);
            return Ok(id);
        }
        if !self.taken.lock().expect("lock").insert(id) {
            return Ok(id);
        }
        self.store(id, kind, data)?;
        Ok(id)
    }

    /// Whether data chunks are offered to zstd (on by default). A caller that stores
    /// ciphertext turns it off: nothing would shrink, and trying costs a pass over every byte.
    pub fn set_compression(&self, on: bool) {
        self.compress.store(on, Ordering::Relaxed);
    }

    /// Takes the chunks of an unchanged file from an earlier snapshot without reading the
    /// file: true when the repository holds every one of them in a pack not marked for
    /// deletion (they are then checked again before the snapshot, like every chunk found in
    /// the repository); false, and nothing recorded, when one is missing: the caller stores
    /// the file from its content instead. `bytes` (the file's size) goes to the progress.
    pub fn reuse(&self, chunks: &[Id], bytes: u64) -> bool {
        {
            let force = self.force.lock().expect("lock");
            if chunks.iter().any(|c| force.contains(c) || !self.known(c)) {
                return false;
            }
        }
        self.reused
            .lock()
            .expect("lock")
            .extend(chunks.iter().copied());
        if let Some(p) = self.progress {
            p(bytes);
        }
        true
    }

    /// Seals and packs one chunk (uploading the pack when full).
    fn store(&self, id: Id, kind: BlobKind, data: &[u8]) -> Result<()> {
        let compress = kind == BlobKind::Tree || self.compress.load(Ordering::Relaxed);
        let sealed = seal_blob_with(&self.key, &id, kind, data, compress);
        self.new_blobs.fetch_add(1, Ordering::Relaxed);
        self.new_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut p = self.packer.lock().expect("lock");
        p.push(id, kind, data.len() as u32, &sealed);
        if p.len() >= self.repo.params().pack_target as usize {
            // Handed over under the lock, and the next pack started only once the upload
            // thread took it (it then is done with the one before, whose buffer the next
            // pack reuses): two packs in memory, one filling and one being stored. Other
            // threads wait meanwhile; storing a pack is faster than filling one.
            let full = std::mem::replace(&mut *p, PackWriter::with_capacity(self.key.epoch, 0));
            self.upload(full)?;
            *p = self.new_pack();
        }
        Ok(())
    }

    /// Checks, against the marks and the pack listing as they are now, every chunk of
    /// `ids`: one that has a copy in a stored, unmarked pack is fine; one whose packs are
    /// all marked (by a concurrent prune) but still stored is copied into this push's packs;
    /// one whose packs are all gone is returned (and will be stored again when added).
    fn check_ids(&self, ids: &HashSet<Id>) -> Result<Vec<Id>> {
        let marks = self.repo.reload_marks()?;
        let stored: HashSet<Id> = self
            .repo
            .storage()
            .list(Kind::Data)?
            .into_iter()
            .filter_map(|(n, _)| n.parse().ok())
            .collect();
        let mut copy = Vec::new();
        let mut lost = Vec::new();
        {
            let ix = self.repo.index()?;
            let mut marked = self.marked.write().expect("lock");
            marked.extend(marks.iter().copied());
            marked.extend(
                ix.packs()
                    .iter()
                    .filter(|p| !stored.contains(&p.id))
                    .map(|p| p.id),
            );
            for id in ids {
                let locs = ix.all(id);
                if locs.iter().any(|l| !marked.contains(&ix.pack(l.pack).id)) {
                    continue;
                }
                match locs.iter().find(|l| stored.contains(&ix.pack(l.pack).id)) {
                    Some(l) => copy.push((*id, ix.pack(l.pack), *l)),
                    None => lost.push(*id),
                }
            }
        }
        for (id, pack, loc) in copy {
            match self.repo.read_blob(&pack, &loc, &id) {
                Ok(data) => {
                    self.taken.lock().expect("lock").insert(id);
                    self.store(id, loc.kind, &data)?;
                }
                // Gone meanwhile, or not readable with this token (a `backup` token may not
                // read data): stored again from its content instead, which is always right.
                Err(_) => lost.push(id),
            }
        }
        {
            let mut reused = self.reused.lock().expect("lock");
            let mut force = self.force.lock().expect("lock");
            let mut taken = self.taken.lock().expect("lock");
            for id in &lost {
                reused.remove(id);
                taken.remove(id);
                force.insert(*id);
            }
        }
        Ok(lost)
    }

    /// Re-checks the chunks this push reused from the repository against a concurrent
    /// prune: those in packs marked since the push started are copied into this push's
    /// packs; those whose packs were deleted are returned, and the caller must add their
    /// content again ([`Writer::add_reader`] / [`Writer::add_chunk`] then store them) before
    /// [`Writer::commit`]. Call it once everything is added (commit checks again, but can
    /// only re-store the tree itself).
    pub fn revalidate(&self) -> Result<Vec<Id>> {
        let reused = self.reused.lock().expect("lock").clone();
        self.check_ids(&reused)
    }

    /// Waits until every full pack handed to the upload threads is stored. Packs are stored
    /// while chunking goes on, so a failed upload shows in a later [`Writer::add_reader`],
    /// here, or in [`Writer::commit`] at the latest (which fails the push).
    pub fn flush(&self) -> Result<()> {
        self.uploader.flush()
    }

    /// An empty pack with room for a full one (its target size, one largest chunk past it,
    /// and its header), in the buffer of a stored pack when there is one.
    fn new_pack(&self) -> PackWriter {
        let p = self.repo.params();
        let room = p.pack_target as usize + p.chunk_max as usize + (256 << 10);
        PackWriter::with_buffer(self.key.epoch, self.uploader.buffer(room))
            .pad_below(p.pack_target as usize)
    }

    /// Seals a full pack and hands it to an upload thread.
    fn upload(&self, pack: PackWriter) -> Result<()> {
        if pack.is_empty() {
            return Ok(());
        }
        let (name, bytes, blobs) = pack.finish(&self.key);
        self.uploader.send(SealedPack {
            name,
            epoch: self.key.epoch,
            bytes,
            blobs,
        })
    }

    /// Chunks and stores everything `r` yields; returns the chunk list and the byte count.
    pub fn add_reader(&self, r: &mut dyn Read) -> Result<(Vec<Id>, u64)> {
        let mut chunks = Vec::new();
        let size = self.chunker.chunk(
            r,
            |c| {
                chunks.push(self.add_chunk(BlobKind::Data, c)?);
                Ok(())
            },
            Error::io("push source"),
        )?;
        Ok((chunks, size))
    }

    /// Finishes the push: stores the tree, uploads the last pack, writes the index object
    /// for every pack of this push, then the snapshot (its parent: the newest of its chain).
    /// `state` (a client-side file) records the new snapshot as the newest seen.
    pub fn commit(
        self,
        tree: &Tree,
        info: SnapshotInfo,
        state: Option<&std::path::Path>,
    ) -> Result<(Id, Snapshot)> {
        // The tree, cut like content, so an unchanged part is stored once.
        let bytes = tree.to_bytes();
        let mut tree_chunks: HashMap<Id, Vec<u8>> = HashMap::new();
        let mut tree_ids = Vec::new();
        self.chunker.chunk(
            &mut &bytes[..],
            |c| {
                let id = self.add_chunk(BlobKind::Tree, c)?;
                tree_chunks.insert(id, c.to_vec());
                tree_ids.push(id);
                Ok(())
            },
            Error::io("tree"),
        )?;
        // Parent: the newest snapshot of the chain now in the repository. The client state
        // is read before the listing: a push of this client finishing in between has saved
        // its snapshot in the state only after storing it, so the listing shows it (the other
        // way round, it would look like a rollback). Done before the last check below, so
        // that the snapshot is written right after that check.
        let mut state_file = match state {
            Some(p) => Some((p, ChainState::load(p)?)),
            None => None,
        };
        let snaps = self.repo.snapshots()?;
        let parent = snaps
            .iter()
            .filter(|(_, s)| s.chain == info.chain)
            .max_by_key(|(id, s)| (s.seq, s.time_ms, *id));
        if let Some((_, st)) = state_file.as_mut() {
            st.observe(&snaps)?;
        }
        // Upload and index what is left, then check that every chunk the snapshot needs
        // (reused or stored by this push) is in a stored pack no prune has marked since;
        // what had to be copied or stored again is uploaded and indexed in turn.
        let mut rounds = 0;
        loop {
            let last = std::mem::replace(&mut *self.packer.lock().expect("lock"), self.new_pack());
            self.upload(last)?;
            self.uploader.flush()?;
            let packs = self.uploader.take_uploaded();
            if packs.is_empty() && rounds > 0 {
                break;
            }
            if !packs.is_empty() {
                IndexFile {
                    supersedes: Vec::new(),
                    packs: packs.clone(),
                }
                .store(self.repo.storage(), self.repo.keyring())?;
                let mut ix = self.repo.index_mut();
                if let Some(ix) = ix.as_mut() {
                    for p in packs {
                        ix.add_pack(p);
                    }
                }
            }
            rounds += 1;
            if rounds > 8 {
                return Err(Error::Invalid(
                    "a concurrent prune keeps marking the packs of this push; run the push \
                     again (and give prune a longer grace period)"
                        .into(),
                ));
            }
            let needed: HashSet<Id> = {
                let reused = self.reused.lock().expect("lock");
                let taken = self.taken.lock().expect("lock");
                reused.union(&taken).copied().collect()
            };
            let lost = self.check_ids(&needed)?;
            let mut gone = 0usize;
            for id in lost {
                match tree_chunks.get(&id) {
                    Some(data) => {
                        self.taken.lock().expect("lock").insert(id);
                        self.store(id, BlobKind::Tree, data)?;
                    }
                    None => gone += 1,
                }
            }
            if gone > 0 {
                return Err(Error::Invalid(format!(
                    "a concurrent prune deleted the packs of {gone} chunk(s) this push needs \
                     after it checked them; run the push again (and give prune a longer grace \
                     period)"
                )));
            }
        }
        let snapshot = Snapshot {
            version: 1,
            time_ms: info.time_ms.unwrap_or_else(now_ms),
            chain: info.chain,
            parent: parent.map(|(id, _)| *id),
            seq: parent.map_or(0, |(_, s)| s.seq + 1),
            host: info.host,
            tags: info.tags,
            tree: tree_ids,
            summary: Summary {
                files: tree.nodes.len() as u64,
                bytes: tree.nodes.iter().map(|n| n.size).sum(),
                new_blobs: self.new_blobs.load(Ordering::Relaxed),
                new_bytes: self.new_bytes.load(Ordering::Relaxed),
                stored_bytes: self.uploader.stored_bytes(),
            },
        };
        let id = snapshot.store(self.repo.storage(), self.repo.keyring())?;
        // Every pack of this push is indexed now: the journal has nothing left to tell.
        if let Some(j) = &self.journal {
            clear_journal(j.as_ref());
        }
        if let Some((path, mut st)) = state_file {
            st.record(id, &snapshot);
            st.save(path)?;
        }
        Ok((id, snapshot))
    }
}

/// Indexes packs that no index object lists (left by a push killed after uploading them):
/// their sealed headers are read and one index object is written for them. Returns how many.
///
/// A pack marked for deletion is never indexed again: a prune killed while deleting (or
/// deleting right now) leaves marked packs no index lists, and indexing one would make a
/// later push reuse, or `check` expect, a pack about to vanish. The marks are read after the
/// headers, and each pack is looked up once more after that: prune deletes a pack before
/// its mark, so a pack still stored whose mark is gone was not being deleted.
pub fn recover_unindexed(repo: &Repository) -> Result<usize> {
    recover_unindexed_with(repo, None)
}

/// The journal's entries: pack name → its index entry. Entries that do not open under this
/// repository's keys (another repository's, damaged) are ignored.
fn journal_entries(repo: &Repository, journal: &dyn Storage) -> HashMap<Id, IndexedPack> {
    let mut out = HashMap::new();
    for (name, _) in journal.list(Kind::Index).unwrap_or_default() {
        let entry = journal
            .get(Kind::Index, &name)
            .and_then(|b| open_object(repo.keyring(), Kind::Index, &name, &b))
            .and_then(|plain| IndexFile::decode(&name, &plain));
        if let Ok(f) = entry {
            for p in f.packs {
                out.insert(p.pack, p);
            }
        }
    }
    out
}

/// Forgets every journal entry (their packs are indexed in the repository now).
fn clear_journal(journal: &dyn Storage) {
    for (name, _) in journal.list(Kind::Index).unwrap_or_default() {
        let _ = journal.delete(Kind::Index, &name);
    }
}

/// [`recover_unindexed`], taking what an unindexed pack holds from `journal` (see
/// [`Writer::with_journal`]) when it has the pack at the size listed, else from the pack's
/// header; a pack whose header cannot be read (not allowed, damaged) is left alone: its
/// chunks are stored again. The journal is cleared once the recovered packs are indexed.
pub fn recover_unindexed_with(repo: &Repository, journal: Option<&dyn Storage>) -> Result<usize> {
    let listed = repo.storage().list(Kind::Data)?;
    let orphans: Vec<(String, u64)> = {
        let ix = repo.index()?;
        listed
            .into_iter()
            .filter(|(name, _)| {
                name.parse::<Id>()
                    .map(|id| ix.pack_no(&id).is_none())
                    .unwrap_or(false)
            })
            .collect()
    };
    let marks = repo.reload_marks()?;
    if orphans.is_empty() {
        if let Some(j) = journal {
            clear_journal(j);
        }
        return Ok(0);
    }
    let journaled = journal
        .map(|j| journal_entries(repo, j))
        .unwrap_or_default();
    let headers: Vec<IndexedPack> = orphans
        .par_iter()
        .filter(|(name, _)| name.parse::<Id>().is_ok_and(|id| !marks.contains(&id)))
        .filter_map(|(name, size)| {
            let id: Id = name.parse().ok()?;
            match journaled.get(&id) {
                Some(p) if p.size == *size => Some(p.clone()),
                _ => read_pack_header(repo, name, *size).ok(),
            }
        })
        .collect();
    if headers.is_empty() {
        return Ok(0);
    }
    // A prune may have marked or deleted some meanwhile. One listing rather than a request
    // per pack (and a `backup` token may list data but not read it, not even its size).
    let marks = repo.reload_marks()?;
    let still: HashSet<String> = repo
        .storage()
        .list(Kind::Data)?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let found: Vec<IndexedPack> = headers
        .into_iter()
        .filter(|p| !marks.contains(&p.pack) && still.contains(&p.pack.to_hex()))
        .collect();
    if found.is_empty() {
        return Ok(0);
    }
    IndexFile {
        supersedes: Vec::new(),
        packs: found.clone(),
    }
    .store(repo.storage(), repo.keyring())?;
    if let Some(j) = journal {
        clear_journal(j);
    }
    let n = found.len();
    let mut ix = repo.index_mut();
    if let Some(ix) = ix.as_mut() {
        for p in found {
            ix.add_pack(p);
        }
    }
    Ok(n)
}

/// A pack's header, read with two range requests.
pub fn read_pack_header(repo: &Repository, name: &str, size: u64) -> Result<IndexedPack> {
    let id: Id = name
        .parse()
        .map_err(|e: String| Error::corrupt(Kind::Data.show(name), e))?;
    let s = repo.storage();
    if size < HEAD_LEN + 4 {
        return Err(Error::corrupt(
            Kind::Data.show(name),
            "too short for a pack",
        ));
    }
    let head = s.get_range(Kind::Data, name, 0, HEAD_LEN)?;
    let epoch = pack_epoch(&id, &head)?;
    let tail = s.get_range(Kind::Data, name, size - 4, 4)?;
    let hl = header_len(&id, size, &tail)?;
    let sealed = s.get_range(Kind::Data, name, size - 4 - hl as u64, hl as u64)?;
    let blobs = open_header(repo.keyring(), &id, epoch, size, &sealed)?;
    Ok(IndexedPack {
        pack: id,
        epoch,
        size,
        blobs,
    })
}
