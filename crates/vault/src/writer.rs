//! A push: content is cut by a keyed content-defined chunker (FastCDC 2020, its gear table
//! XOR-ed with the epoch's secret seed), each chunk named by its keyed BLAKE3 hash, and only
//! chunks the repository does not hold are compressed, padded, sealed and packed. Files may be
//! added from many threads at once; a full pack is uploaded by the thread that filled it.
//!
//! Write order: packs, then one index object for them, then the snapshot. A push killed at
//! any point leaves complete packs that no index lists; the next push finds them and indexes
//! them, so nothing already uploaded is uploaded again. It learns what such a pack holds from
//! the client's journal (one sealed index entry written locally after each pack is stored)
//! or, without one, by reading the pack's sealed header. The journal is what lets a device
//! whose token may not read data back (an append-only `backup` token) resume.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fastcdc::v2020::{Normalization, StreamCDC};
use rayon::prelude::*;

use crate::crypto::EpochKey;
use crate::id::Id;
use crate::index::{IndexFile, IndexedPack};
use crate::object::open_object;
use crate::pack::{header_len, open_header, pack_epoch, seal_blob, BlobKind, PackWriter, HEAD_LEN};
use crate::repo::Repository;
use crate::snapshot::{ChainState, Snapshot, Summary};
use crate::storage::{Kind, Storage};
use crate::tree::Tree;
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
    /// Packs marked for deletion: their blobs are not reused.
    marked: HashSet<Id>,
    uploaded: Mutex<Vec<IndexedPack>>,
    new_blobs: AtomicU64,
    new_bytes: AtomicU64,
    stored_bytes: AtomicU64,
    progress: Option<&'r (dyn Fn(u64) + Sync)>,
    journal: Option<Arc<dyn Storage>>,
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
        Ok(Writer {
            repo,
            packer: Mutex::new(PackWriter::new(key.epoch)),
            key,
            taken: Mutex::new(HashSet::new()),
            marked: repo.marked(),
            uploaded: Mutex::new(Vec::new()),
            new_blobs: AtomicU64::new(0),
            new_bytes: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            progress,
            journal,
        })
    }

    /// True when the repository already holds the chunk in a pack not marked for deletion.
    fn known(&self, id: &Id) -> bool {
        let Ok(ix) = self.repo.index() else {
            return false;
        };
        ix.all(id)
            .iter()
            .any(|l| !self.marked.contains(&ix.pack(l.pack).id))
    }

    /// Stores one chunk unless the repository has it; returns its ID.
    pub fn add_chunk(&self, kind: BlobKind, data: &[u8]) -> Result<Id> {
        let id = self.key.chunk_id(data);
        if let Some(p) = self.progress {
            p(data.len() as u64);
        }
        if self.known(&id) || !self.taken.lock().expect("lock").insert(id) {
            return Ok(id);
        }
        let sealed = seal_blob(&self.key, &id, kind, data);
        self.new_blobs.fetch_add(1, Ordering::Relaxed);
        self.new_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let full = {
            let mut p = self.packer.lock().expect("lock");
            p.push(id, kind, data.len() as u32, &sealed);
            if p.len() >= self.repo.params().pack_target as usize {
                Some(std::mem::replace(&mut *p, PackWriter::new(self.key.epoch)))
            } else {
                None
            }
        };
        if let Some(pack) = full {
            self.upload(pack)?;
        }
        Ok(id)
    }

    fn upload(&self, pack: PackWriter) -> Result<()> {
        if pack.is_empty() {
            return Ok(());
        }
        let (name, bytes, blobs) = pack.finish(&self.key);
        self.repo
            .storage()
            .put(Kind::Data, &name.to_hex(), &bytes)?;
        self.stored_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let entry = IndexedPack {
            pack: name,
            epoch: self.key.epoch,
            size: bytes.len() as u64,
            blobs,
        };
        if let Some(j) = &self.journal {
            // Best effort: without the entry a resumed push reads the header, or stores the
            // pack's chunks again; never wrong, only slower.
            let _ = IndexFile {
                supersedes: Vec::new(),
                packs: vec![entry.clone()],
            }
            .store(j.as_ref(), self.repo.keyring());
        }
        self.uploaded.lock().expect("lock").push(entry);
        Ok(())
    }

    /// Chunks and stores everything `r` yields; returns the chunk list and the byte count.
    pub fn add_reader(&self, r: &mut dyn Read) -> Result<(Vec<Id>, u64)> {
        let p = self.repo.params();
        let cdc = StreamCDC::with_level_and_seed(
            r,
            p.chunk_min as usize,
            p.chunk_avg as usize,
            p.chunk_max as usize,
            Normalization::Level1,
            self.key.chunker_seed,
        );
        let mut chunks = Vec::new();
        let mut size = 0u64;
        for c in cdc {
            let c = c.map_err(|e| match e {
                fastcdc::v2020::Error::IoError(io) => Error::io("push source")(io),
                other => Error::Io {
                    path: "push source".into(),
                    source: std::io::Error::other(other.to_string()),
                },
            })?;
            size += c.length as u64;
            chunks.push(self.add_chunk(BlobKind::Data, &c.data)?);
        }
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
        let (tree_ids, _) = {
            let p = self.repo.params();
            let mut ids = Vec::new();
            for c in StreamCDC::with_level_and_seed(
                &bytes[..],
                p.chunk_min as usize,
                p.chunk_avg as usize,
                p.chunk_max as usize,
                Normalization::Level1,
                self.key.chunker_seed,
            ) {
                let c = c.map_err(|e| Error::Invalid(format!("tree chunking: {e}")))?;
                ids.push(self.add_chunk(BlobKind::Tree, &c.data)?);
            }
            (ids, bytes.len())
        };
        let last = std::mem::replace(
            &mut *self.packer.lock().expect("lock"),
            PackWriter::new(self.key.epoch),
        );
        self.upload(last)?;
        let packs = std::mem::take(&mut *self.uploaded.lock().expect("lock"));
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
        if let Some(j) = &self.journal {
            clear_journal(j.as_ref());
        }
        // Parent: the newest snapshot of the chain now in the repository.
        let snaps = self.repo.snapshots()?;
        let parent = snaps
            .iter()
            .filter(|(_, s)| s.chain == info.chain)
            .max_by_key(|(id, s)| (s.seq, s.time_ms, *id));
        let mut state_file = match state {
            Some(p) => Some((p, ChainState::load(p)?)),
            None => None,
        };
        if let Some((_, st)) = state_file.as_mut() {
            st.observe(&snaps)?;
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
                stored_bytes: self.stored_bytes.load(Ordering::Relaxed),
            },
        };
        let id = snapshot.store(self.repo.storage(), self.repo.keyring())?;
        if let Some((path, mut st)) = state_file {
            st.record(id, &snapshot);
            st.save(path)?;
        }
        Ok((id, snapshot))
    }
}

/// Indexes packs that no index object lists (left by a push killed after uploading them):
/// their sealed headers are read and one index object is written for them. Returns how many.
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
    if orphans.is_empty() {
        if let Some(j) = journal {
            clear_journal(j);
        }
        return Ok(0);
    }
    let journaled = journal
        .map(|j| journal_entries(repo, j))
        .unwrap_or_default();
    let found: Vec<IndexedPack> = orphans
        .par_iter()
        .filter_map(|(name, size)| {
            let id: Id = name.parse().ok()?;
            match journaled.get(&id) {
                Some(p) if p.size == *size => Some(p.clone()),
                _ => read_pack_header(repo, name, *size).ok(),
            }
        })
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
