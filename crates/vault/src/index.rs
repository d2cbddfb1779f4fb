//! The index: which pack holds which blob.
//!
//! Stored as sealed index objects (`index/`), each listing some packs and their blobs, and
//! the older index objects it replaces (`supersedes`: prune writes one index for many). In
//! memory, one sorted array of 52-byte entries (ID, pack number, offset, lengths, kind) plus a
//! hash map for what a push adds, so a repository of N chunks needs about 52·N bytes, not a
//! hash map's 100+ per chunk.

use std::collections::{HashMap, HashSet};

use crate::id::Id;
use crate::keys::Keyring;
use crate::object::{open_object, seal_object};
use crate::pack::{BlobKind, Entry};
use crate::storage::{Kind, Storage};
use crate::{Error, Result};

/// One pack as an index object lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexedPack {
    /// The pack's name.
    pub pack: Id,
    /// The key epoch it is sealed under.
    pub epoch: u32,
    /// Its size in bytes.
    pub size: u64,
    /// Its blobs.
    pub blobs: Vec<Entry>,
}

/// An index object's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexFile {
    /// Index objects this one replaces (they may be deleted once it is stored).
    pub supersedes: Vec<Id>,
    /// Packs.
    pub packs: Vec<IndexedPack>,
}

impl IndexFile {
    /// Decodes an opened index object.
    pub fn decode(name: &str, plain: &[u8]) -> Result<IndexFile> {
        postcard::from_bytes(plain)
            .map_err(|e| Error::corrupt(Kind::Index.show(name), format!("does not decode: {e}")))
    }

    /// Seals and stores it; returns its name.
    pub fn store(&self, storage: &dyn Storage, keyring: &Keyring) -> Result<Id> {
        let bytes = postcard::to_stdvec(self).expect("serializable");
        let (id, sealed) = seal_object(keyring, Kind::Index, &bytes);
        storage.put(Kind::Index, &id.to_hex(), &sealed)?;
        Ok(id)
    }
}

/// A pack the index knows.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PackInfo {
    /// Its name.
    pub id: Id,
    /// Its key epoch.
    pub epoch: u32,
    /// Its size.
    pub size: u64,
}

/// Where a blob is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// Number of its pack in [`Index::pack`].
    pub pack: u32,
    /// Offset of its seal.
    pub offset: u32,
    /// Length of its seal.
    pub len: u32,
    /// Length of its plaintext.
    pub raw_len: u32,
    /// Data or tree.
    pub kind: BlobKind,
}

impl Location {
    /// The pack entry it stands for.
    pub fn entry(&self, id: Id) -> Entry {
        Entry {
            id,
            kind: self.kind,
            offset: self.offset,
            len: self.len,
            raw_len: self.raw_len,
        }
    }
}

/// The in-memory index.
#[derive(Default)]
pub struct Index {
    packs: Vec<PackInfo>,
    pack_no: HashMap<Id, u32>,
    sorted: Vec<(Id, Location)>,
    added: HashMap<Id, Location>,
    /// Index objects read (and not superseded).
    pub files: Vec<Id>,
    /// Index objects still stored that another one supersedes (left by a prune killed
    /// before it deleted them; the next prune deletes them).
    pub stale: Vec<Id>,
}

impl Index {
    /// Reads every index object (in parallel; one that vanishes between listing and reading
    /// makes the listing be read again), drops those another supersedes, and builds the index. An index object that does not open or decode is left out and returned as a
    /// problem naming it (its packs are then unknown until a push re-indexes them).
    pub fn load_lenient(storage: &dyn Storage, keyring: &Keyring) -> Result<(Index, Vec<Error>)> {
        let results = crate::storage::read_listed(storage, Kind::Index, |name| {
            let bytes = storage.get(Kind::Index, name)?;
            let plain = open_object(keyring, Kind::Index, name, &bytes)?;
            Ok((
                name.parse::<Id>().expect("listed names are ids"),
                IndexFile::decode(name, &plain)?,
            ))
        })?;
        let mut files = Vec::new();
        let mut problems = Vec::new();
        for r in results {
            match r {
                Ok(f) => files.push(f),
                Err(e) => problems.push(e),
            }
        }
        let superseded: HashSet<Id> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().copied())
            .collect();
        let mut index = Index::default();
        for (name, f) in files {
            if superseded.contains(&name) {
                index.stale.push(name);
                continue;
            }
            index.files.push(name);
            for p in f.packs {
                index.insert_pack(p, false);
            }
        }
        index.sorted.sort_unstable_by_key(|e| e.0);
        Ok((index, problems))
    }

    fn insert_pack(&mut self, p: IndexedPack, into_added: bool) {
        if self.pack_no.contains_key(&p.pack) {
            return;
        }
        let no = self.packs.len() as u32;
        self.packs.push(PackInfo {
            id: p.pack,
            epoch: p.epoch,
            size: p.size,
        });
        self.pack_no.insert(p.pack, no);
        for e in p.blobs {
            let loc = Location {
                pack: no,
                offset: e.offset,
                len: e.len,
                raw_len: e.raw_len,
                kind: e.kind,
            };
            if into_added {
                self.added.entry(e.id).or_insert(loc);
            } else {
                self.sorted.push((e.id, loc));
            }
        }
    }

    /// Adds a pack uploaded during this session.
    pub fn add_pack(&mut self, p: IndexedPack) {
        self.insert_pack(p, true);
    }

    /// Where a blob is (the first copy, if concurrent writers stored it twice).
    pub fn get(&self, id: &Id) -> Option<Location> {
        if let Some(l) = self.added.get(id) {
            return Some(*l);
        }
        let i = self.sorted.partition_point(|(k, _)| k < id);
        self.sorted.get(i).filter(|(k, _)| k == id).map(|(_, l)| *l)
    }

    /// Every location of a blob (more than one when two writers stored it at once).
    pub fn all(&self, id: &Id) -> Vec<Location> {
        let i = self.sorted.partition_point(|(k, _)| k < id);
        let mut v: Vec<Location> = self.sorted[i..]
            .iter()
            .take_while(|(k, _)| k == id)
            .map(|(_, l)| *l)
            .collect();
        v.extend(self.added.get(id));
        v
    }

    /// A pack by number.
    pub fn pack(&self, no: u32) -> PackInfo {
        self.packs[no as usize]
    }

    /// The number of a pack, if indexed.
    pub fn pack_no(&self, id: &Id) -> Option<u32> {
        self.pack_no.get(id).copied()
    }

    /// Every indexed pack.
    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    /// Every (blob, location), stored ones first.
    pub fn entries(&self) -> impl Iterator<Item = (&Id, &Location)> {
        self.sorted
            .iter()
            .map(|(i, l)| (i, l))
            .chain(self.added.iter())
    }

    /// Blobs indexed.
    pub fn len(&self) -> usize {
        self.sorted.len() + self.added.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The packs' blob lists, for writing one index object of them.
    pub fn indexed_packs(&self, which: &[u32]) -> Vec<IndexedPack> {
        let wanted: HashSet<u32> = which.iter().copied().collect();
        let mut by_pack: HashMap<u32, Vec<Entry>> = HashMap::new();
        for (id, l) in self.entries() {
            if wanted.contains(&l.pack) {
                by_pack.entry(l.pack).or_default().push(l.entry(*id));
            }
        }
        let mut out: Vec<IndexedPack> = which
            .iter()
            .map(|no| {
                let p = self.pack(*no);
                let mut blobs = by_pack.remove(no).unwrap_or_default();
                blobs.sort_by_key(|e| e.offset);
                IndexedPack {
                    pack: p.id,
                    epoch: p.epoch,
                    size: p.size,
                    blobs,
                }
            })
            .collect();
        out.sort_by_key(|p| p.pack);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_small_and_found() {
        assert!(
            std::mem::size_of::<(Id, Location)>() <= 64,
            "{} bytes per chunk",
            std::mem::size_of::<(Id, Location)>()
        );
        let mut ix = Index::default();
        let e = |n: u8| Entry {
            id: Id([n; 32]),
            kind: BlobKind::Data,
            offset: 9 + n as u32,
            len: 1,
            raw_len: 1,
        };
        ix.insert_pack(
            IndexedPack {
                pack: Id([1; 32]),
                epoch: 0,
                size: 100,
                blobs: vec![e(3), e(1)],
            },
            false,
        );
        ix.sorted.sort_unstable_by_key(|e| e.0);
        ix.add_pack(IndexedPack {
            pack: Id([2; 32]),
            epoch: 0,
            size: 100,
            blobs: vec![e(1), e(7)],
        });
        assert_eq!(ix.get(&Id([3; 32])).unwrap().offset, 12);
        assert_eq!(ix.all(&Id([1; 32])).len(), 2);
        assert!(ix.get(&Id([9; 32])).is_none());
        assert_eq!(ix.indexed_packs(&[1])[0].blobs.len(), 2);
    }
}
