//! Snapshots: small sealed documents, one per push, naming their tree, their chain (e.g. a
//! device) and their parent, with a sequence number that grows along the chain.
//!
//! A store cannot forge a snapshot (it cannot seal), but it could hide the newest ones and
//! serve an older chain as the latest. Each client remembers, per repository and chain, the
//! highest sequence number it has seen ([`ChainState`], a small file of its own); a listing
//! whose newest snapshot of a chain is below that is refused as a rollback. `forget` never
//! removes the newest snapshot of a chain, so the number never goes down honestly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::id::Id;
use crate::keys::Keyring;
use crate::object::{open_object, seal_object};
use crate::storage::{Kind, Storage};
use crate::{Error, Result};

/// Counts of a push.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Files (tree nodes).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Blobs this push added.
    pub new_blobs: u64,
    /// Their plaintext bytes.
    pub new_bytes: u64,
    /// Bytes of packs this push uploaded.
    pub stored_bytes: u64,
}

/// A snapshot's content.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// Format version (1).
    pub version: u32,
    /// When the push finished, Unix milliseconds.
    pub time_ms: i64,
    /// What it belongs to (a device's UDID for phone backups).
    pub chain: String,
    /// The newest snapshot of the chain the writer knew, if any.
    pub parent: Option<Id>,
    /// Parent's `seq` + 1 (0 for the first).
    pub seq: u64,
    /// The machine that pushed.
    pub host: String,
    /// Free-form tags (device name, backup date, …).
    pub tags: BTreeMap<String, String>,
    /// The tree's blobs, in order.
    pub tree: Vec<Id>,
    /// Counts.
    pub summary: Summary,
}

impl Snapshot {
    /// Seals and stores it; returns its name.
    pub fn store(&self, storage: &dyn Storage, keyring: &Keyring) -> Result<Id> {
        let json = serde_json::to_vec(self).expect("serializable");
        let (id, sealed) = seal_object(keyring, Kind::Snapshots, &json);
        storage.put(Kind::Snapshots, &id.to_hex(), &sealed)?;
        Ok(id)
    }

    /// Reads and opens `snapshots/name`.
    pub fn load(storage: &dyn Storage, keyring: &Keyring, name: &str) -> Result<Snapshot> {
        let bytes = storage.get(Kind::Snapshots, name)?;
        Self::decode(keyring, name, &bytes)
    }

    /// Opens stored bytes.
    pub fn decode(keyring: &Keyring, name: &str, bytes: &[u8]) -> Result<Snapshot> {
        let plain = open_object(keyring, Kind::Snapshots, name, bytes)?;
        Self::decode_plain(name, &plain)
    }

    /// Decodes an opened snapshot object's plaintext (JSON, version 1).
    pub fn decode_plain(name: &str, plain: &[u8]) -> Result<Snapshot> {
        let s: Snapshot = serde_json::from_slice(plain).map_err(|e| {
            Error::corrupt(Kind::Snapshots.show(name), format!("does not decode: {e}"))
        })?;
        if s.version != 1 {
            return Err(Error::corrupt(
                Kind::Snapshots.show(name),
                format!("version {}", s.version),
            ));
        }
        Ok(s)
    }
}

/// What a client last saw of each chain of one repository: the highest sequence number and
/// the snapshot that had it. Kept in a JSON file outside the repository.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainState {
    /// Chain → (highest seq seen, its snapshot).
    pub chains: BTreeMap<String, (u64, Id)>,
}

impl ChainState {
    /// The state file of repository `repo` under `dir`.
    pub fn path(dir: &Path, repo: &Id) -> PathBuf {
        dir.join(format!("{}.json", repo.to_hex()))
    }

    /// Reads it (empty when absent).
    pub fn load(path: &Path) -> Result<ChainState> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                Error::Invalid(format!(
                    "{}: damaged client state ({e}); remove it to trust the repository afresh",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ChainState::default()),
            Err(e) => Err(Error::io(path.display())(e)),
        }
    }

    /// Writes it atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().expect("a state file is in a folder");
        std::fs::create_dir_all(dir).map_err(Error::io(dir.display()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(Error::io(dir.display()))?;
        std::io::Write::write_all(&mut tmp, &serde_json::to_vec_pretty(self).expect("json"))
            .map_err(Error::io(path.display()))?;
        tmp.persist(path)
            .map_err(|e| Error::io(path.display())(e.error))?;
        Ok(())
    }

    /// Records a snapshot this client has just written as the newest of its chain.
    pub fn record(&mut self, id: Id, s: &Snapshot) {
        let e = self.chains.entry(s.chain.clone()).or_insert((s.seq, id));
        if s.seq >= e.0 {
            *e = (s.seq, id);
        }
    }

    /// Refuses a listing that shows any chain older than seen before; then records what it
    /// shows.
    pub fn observe(&mut self, snapshots: &[(Id, Snapshot)]) -> Result<()> {
        let mut newest: BTreeMap<&str, (u64, Id)> = BTreeMap::new();
        for (id, s) in snapshots {
            let e = newest.entry(&s.chain).or_insert((s.seq, *id));
            if s.seq > e.0 {
                *e = (s.seq, *id);
            }
        }
        for (chain, (seen, seen_id)) in &self.chains {
            match newest.get(chain.as_str()) {
                Some((seq, _)) if seq >= seen => {}
                Some((seq, id)) => {
                    return Err(Error::Rollback(format!(
                        "rollback detected: chain {chain} was at snapshot {} (#{seen}) when this \
                         client last looked; the repository now shows #{seq} ({}) as its newest. \
                         The store is serving an older state; nothing was changed",
                        seen_id.short(),
                        id.short()
                    )))
                }
                None => {
                    return Err(Error::Rollback(format!(
                        "rollback detected: chain {chain} had snapshot {} (#{seen}) when this \
                         client last looked; the repository now shows none of it",
                        seen_id.short()
                    )))
                }
            }
        }
        for (chain, (seq, id)) in newest {
            let e = self.chains.entry(chain.to_string()).or_insert((seq, id));
            if seq >= e.0 {
                *e = (seq, id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(chain: &str, seq: u64) -> Snapshot {
        Snapshot {
            version: 1,
            time_ms: 0,
            chain: chain.into(),
            parent: None,
            seq,
            host: "h".into(),
            tags: BTreeMap::new(),
            tree: vec![],
            summary: Summary::default(),
        }
    }

    #[test]
    fn an_older_chain_is_a_rollback() {
        let mut st = ChainState::default();
        let a0 = (Id([0; 32]), snap("A", 0));
        let a1 = (Id([1; 32]), snap("A", 1));
        st.observe(&[a0.clone(), a1.clone()]).unwrap();
        st.observe(std::slice::from_ref(&a1)).unwrap(); // a forgotten older one is fine
        let e = st
            .observe(std::slice::from_ref(&a0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rollback"), "{e}");
        assert!(st.observe(&[]).is_err());
        let b = (Id([2; 32]), snap("B", 0));
        st.observe(&[a1.clone(), b]).unwrap();
        // Two snapshots of one seq (concurrent pushes) are fine.
        let a1b = (Id([3; 32]), snap("A", 1));
        st.observe(&[a1, a1b, (Id([2; 32]), snap("B", 0))]).unwrap();
    }
}
