//! The repository: one type over any [`Storage`] (rustic_core's shape). Opening reads the plain
//! `config` and finds the key file the secret opens; reading goes snapshots → index → packs,
//! writing packs → index → snapshot (restic's order), so an interrupted writer never leaves a
//! snapshot naming what is not stored.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use rand::RngCore;

use crate::id::Id;
use crate::index::{Index, Location, PackInfo};
use crate::keys::{Argon2Params, KeyFile, KeyKind, Keyring, Params, RecoveryKey, Secret};
use crate::pack::open_blob;
use crate::prune::Pending;
use crate::snapshot::Snapshot;
use crate::storage::{Kind, Storage};
use crate::tree::Tree;
use crate::{Error, Result};

/// Snapshots with their names, oldest first.
pub type Snapshots = Vec<(Id, Snapshot)>;

/// The plain `config` object: what the location holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// `keybag-vault`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// The repository's random ID.
    pub id: Id,
}

const FORMAT: &str = "keybag-vault";

/// A key file as `key list` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyInfo {
    /// Its object name.
    pub id: Id,
    /// `password` or `recovery`.
    pub kind: &'static str,
    /// Its label.
    pub label: String,
    /// When it was made (Unix seconds).
    pub created: i64,
    /// True for the key this session opened the repository with.
    pub current: bool,
}

/// An open repository.
pub struct Repository {
    storage: Arc<dyn Storage>,
    keyring: Keyring,
    key_name: String,
    index: RwLock<Option<Index>>,
    index_problems: RwLock<Vec<Error>>,
    marked: RwLock<HashSet<Id>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.storage.location())
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn read_config(storage: &dyn Storage) -> Result<Config> {
    let bytes = match storage.get(Kind::Config, "config") {
        Ok(b) => b,
        Err(Error::Missing { .. }) => {
            return Err(Error::NotARepository {
                location: storage.location(),
                reason: "no config (run `keybag cloud init` first)".into(),
            })
        }
        Err(e) => return Err(e),
    };
    Config::from_bytes(&storage.location(), &bytes)
}

impl Config {
    /// Parses the plain `config` object read from `location` (JSON; format `keybag-vault`,
    /// version 1), [`Error::NotARepository`] otherwise.
    pub fn from_bytes(location: &str, bytes: &[u8]) -> Result<Config> {
        let c: Config = serde_json::from_slice(bytes).map_err(|e| Error::NotARepository {
            location: location.to_string(),
            reason: format!("config does not decode: {e}"),
        })?;
        if c.format != FORMAT || c.version != 1 {
            return Err(Error::NotARepository {
                location: location.to_string(),
                reason: format!(
                    "config says {} version {}",
                    c.format.escape_debug(),
                    c.version
                ),
            });
        }
        Ok(c)
    }
}

impl Repository {
    /// Makes a repository at an empty location, with a key file for `password` and one for a
    /// new recovery key (returned: show it once). `argon2` fixes the password's costs (tests);
    /// `None` calibrates them.
    pub fn init(
        storage: Arc<dyn Storage>,
        password: &[u8],
        argon2: Option<Argon2Params>,
        params: Params,
    ) -> Result<(Repository, RecoveryKey)> {
        params.check()?;
        if !storage.list(Kind::Config)?.is_empty() || !storage.list(Kind::Keys)?.is_empty() {
            return Err(Error::AlreadyExists {
                location: storage.location(),
            });
        }
        let mut id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let config = Config {
            format: FORMAT.into(),
            version: 1,
            id: Id(id),
        };
        let keyring = Keyring::new(config.id, params);
        let recovery = RecoveryKey::generate();
        let pw = KeyFile::seal(
            &keyring,
            &Secret::Password(password),
            "password",
            argon2,
            now_secs(),
        )?;
        let rk = KeyFile::seal(
            &keyring,
            &Secret::Recovery(&recovery),
            "recovery",
            None,
            now_secs(),
        )?;
        let mut key_name = String::new();
        for kf in [&pw, &rk] {
            let bytes = kf.to_bytes();
            let name = Id::of_bytes(&bytes).to_hex();
            storage.put(Kind::Keys, &name, &bytes)?;
            if key_name.is_empty() {
                key_name = name;
            }
        }
        // The config last: a location with keys but no config is an unfinished init.
        storage.put(
            Kind::Config,
            "config",
            &serde_json::to_vec_pretty(&config).expect("json"),
        )?;
        // No conditional write makes the config "create only" (some S3-compatible servers
        // ignore If-None-Match): read it back, and if another init's config replaced ours, give
        // way (our key files go; the other repository stands). An init whose read-back passes
        // just before a rival's write lands leaves key files `open` skips (another repository's).
        let stored = read_config(storage.as_ref())?;
        if stored.id != config.id {
            for kf in [&pw, &rk] {
                let _ = storage.delete(Kind::Keys, &Id::of_bytes(&kf.to_bytes()).to_hex());
            }
            return Err(Error::AlreadyExists {
                location: storage.location(),
            });
        }
        Ok((Repository::with(storage, keyring, key_name), recovery))
    }

    fn with(storage: Arc<dyn Storage>, keyring: Keyring, key_name: String) -> Repository {
        Repository {
            storage,
            keyring,
            key_name,
            index: RwLock::new(None),
            index_problems: RwLock::new(Vec::new()),
            marked: RwLock::new(HashSet::new()),
        }
    }

    /// Opens a repository with a password or a recovery key ([`Error::WrongSecret`] when no
    /// key file opens with it). A key file that opens but belongs to another repository (left
    /// by an `init` that lost a race for the config, or copied in) is passed over; if no other
    /// key opens, that is the error.
    pub fn open(storage: Arc<dyn Storage>, secret: &Secret<'_>) -> Result<Repository> {
        let config = read_config(storage.as_ref())?;
        let mut foreign = None;
        for (name, _) in storage.list(Kind::Keys)? {
            let bytes = storage.get(Kind::Keys, &name)?;
            let Ok(kf) = KeyFile::from_bytes(&Kind::Keys.show(&name), &bytes) else {
                continue; // a damaged key file does not stop the others
            };
            if let Some(keyring) = kf.open(&Kind::Keys.show(&name), secret)? {
                if keyring.repo_id != config.id {
                    foreign.get_or_insert_with(|| {
                        Error::corrupt(Kind::Keys.show(&name), "belongs to another repository")
                    });
                    continue;
                }
                keyring.params.check()?;
                return Ok(Repository::with(storage, keyring, name));
            }
        }
        Err(foreign.unwrap_or(Error::WrongSecret))
    }

    /// The storage.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// The storage, shared.
    pub fn storage_arc(&self) -> Arc<dyn Storage> {
        self.storage.clone()
    }

    /// The keys.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The repository's ID.
    pub fn id(&self) -> Id {
        self.keyring.repo_id
    }

    /// Chunking and packing parameters.
    pub fn params(&self) -> &Params {
        &self.keyring.params
    }

    // ------------------------------------------------------------------ keys

    /// Every key file.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for (name, _) in self.storage.list(Kind::Keys)? {
            let bytes = self.storage.get(Kind::Keys, &name)?;
            let kf = KeyFile::from_bytes(&Kind::Keys.show(&name), &bytes)?;
            out.push(KeyInfo {
                id: name.parse().expect("listed names are ids"),
                kind: match kf.kdf {
                    KeyKind::Password { .. } => "password",
                    KeyKind::Recovery => "recovery",
                },
                label: kf.label,
                created: kf.created,
                current: name == self.key_name,
            });
        }
        Ok(out)
    }

    /// Adds a way in; returns its key file's name.
    pub fn add_key(
        &self,
        secret: &Secret<'_>,
        label: &str,
        argon2: Option<Argon2Params>,
    ) -> Result<Id> {
        let kf = KeyFile::seal(&self.keyring, secret, label, argon2, now_secs())?;
        let bytes = kf.to_bytes();
        let id = Id::of_bytes(&bytes);
        self.storage.put(Kind::Keys, &id.to_hex(), &bytes)?;
        Ok(id)
    }

    /// Removes a way in (never the last one, nor the one this session opened with).
    pub fn remove_key(&self, id: &Id) -> Result<()> {
        let keys = self.keys()?;
        let Some(k) = keys.iter().find(|k| k.id == *id) else {
            return Err(Error::Missing {
                object: Kind::Keys.show(&id.to_hex()),
            });
        };
        if k.current {
            return Err(Error::Invalid(
                "this is the key the repository was opened with; open it with another to remove this one".into(),
            ));
        }
        if keys.len() < 2 {
            return Err(Error::Invalid("the last key cannot be removed".into()));
        }
        self.storage.delete(Kind::Keys, &id.to_hex())
    }

    /// Retires a leaked master key: a new key epoch seals everything written from now on; key
    /// files are written for `password` and a new recovery key (returned), and every other key
    /// file (they open the leaked keyring) is removed. `prune --reseal` then re-seals the old
    /// packs under the new epoch.
    pub fn rotate(&mut self, password: &[u8], argon2: Option<Argon2Params>) -> Result<RecoveryKey> {
        let old: Vec<String> = self
            .storage
            .list(Kind::Keys)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        self.keyring.rotate();
        let recovery = RecoveryKey::generate();
        let pw = self.add_key(&Secret::Password(password), "password", argon2)?;
        self.add_key(&Secret::Recovery(&recovery), "recovery", None)?;
        for name in old {
            self.storage.delete(Kind::Keys, &name)?;
        }
        self.key_name = pw.to_hex();
        Ok(recovery)
    }

    // ------------------------------------------------------------------ index

    /// Loads the index and the pending-deletion marks (once; later calls reuse them). An
    /// index object that does not open is skipped and remembered ([`Repository::index_problems`]):
    /// blobs only it lists are then unknown, and their files are reported, not the whole
    /// repository refused.
    pub fn load_index(&self) -> Result<()> {
        if self.index.read().expect("lock").is_some() {
            return Ok(());
        }
        let (index, problems) = Index::load_lenient(self.storage.as_ref(), &self.keyring)?;
        let marked = Pending::load_all(self.storage.as_ref(), &self.keyring)?
            .into_iter()
            .flat_map(|(_, p)| p.packs)
            .collect();
        *self.marked.write().expect("lock") = marked;
        *self.index_problems.write().expect("lock") = problems;
        *self.index.write().expect("lock") = Some(index);
        Ok(())
    }

    /// Drops the loaded index (the next use reloads it).
    pub fn reset_index(&self) {
        *self.index.write().expect("lock") = None;
    }

    /// The loaded index (loading it first).
    pub fn index(&self) -> Result<IndexGuard<'_>> {
        self.load_index()?;
        Ok(IndexGuard(self.index.read().expect("lock")))
    }

    pub(crate) fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Option<Index>> {
        self.index.write().expect("lock")
    }

    /// Index objects that could not be read at the last load.
    pub fn index_problems(&self) -> Vec<String> {
        self.index_problems
            .read()
            .expect("lock")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    /// Packs marked for deletion by a prune.
    pub fn marked(&self) -> HashSet<Id> {
        self.marked.read().expect("lock").clone()
    }

    /// Re-reads the pending-deletion marks (a prune may have run since the index was
    /// loaded) and returns them.
    pub fn reload_marks(&self) -> Result<HashSet<Id>> {
        let marked: HashSet<Id> = Pending::load_all(self.storage.as_ref(), &self.keyring)?
            .into_iter()
            .flat_map(|(_, p)| p.packs)
            .collect();
        *self.marked.write().expect("lock") = marked.clone();
        Ok(marked)
    }

    // ------------------------------------------------------------------ reading

    /// A blob's plaintext.
    pub fn blob(&self, id: &Id) -> Result<Vec<u8>> {
        let (pack, loc) = {
            let ix = self.index()?;
            let loc = ix.get(id).ok_or_else(|| Error::Missing {
                object: format!("blob {id}"),
            })?;
            (ix.pack(loc.pack), loc)
        };
        self.read_blob(&pack, &loc, id)
    }

    /// Reads a blob from a known place. The range asked of the store is widened to multiples
    /// of the blob's PADME granule (within the pack), so that a store watching reads learns
    /// of a blob's size what a padded blob would show, and no more; it costs at most two
    /// granules (1/16 of the blob) of extra reading.
    pub fn read_blob(&self, pack: &PackInfo, loc: &Location, id: &Id) -> Result<Vec<u8>> {
        let (off, len) = (loc.offset as u64, loc.len as u64);
        let (start, end) = read_window(off, len, pack.size);
        let window = self
            .storage
            .get_range(Kind::Data, &pack.id.to_hex(), start, end - start)?;
        let at = (off - start) as usize;
        let sealed = window.get(at..at + len as usize).ok_or_else(|| {
            Error::corrupt(format!("data/{}", pack.id), "shorter than its index says")
        })?;
        open_blob(&self.keyring, pack.epoch, &pack.id, &loc.entry(*id), sealed)
    }

    /// Reads the blobs `wanted`, all in `pack`, with one request for the span that holds them
    /// (widened like [`Repository::read_blob`]'s): a restore that needs most of a pack reads
    /// it once rather than blob by blob.
    pub fn read_pack_blobs(
        &self,
        pack: &PackInfo,
        wanted: &[(Id, Location)],
    ) -> Result<Vec<(Id, Vec<u8>)>> {
        let Some(first) = wanted.iter().map(|(_, l)| l.offset as u64).min() else {
            return Ok(Vec::new());
        };
        let last = wanted
            .iter()
            .map(|(_, l)| l.offset as u64 + l.len as u64)
            .max()
            .expect("not empty");
        let (start, end) = read_window(first, last - first, pack.size);
        let window = self
            .storage
            .get_range(Kind::Data, &pack.id.to_hex(), start, end - start)?;
        wanted
            .iter()
            .map(|(id, loc)| {
                let at = (loc.offset as u64 - start) as usize;
                let sealed = window.get(at..at + loc.len as usize).ok_or_else(|| {
                    Error::corrupt(format!("data/{}", pack.id), "shorter than its index says")
                })?;
                Ok((
                    *id,
                    open_blob(&self.keyring, pack.epoch, &pack.id, &loc.entry(*id), sealed)?,
                ))
            })
            .collect()
    }

    /// Writes the content of `chunks` to `out`, in order; returns the byte count.
    pub fn read_chunks(&self, chunks: &[Id], out: &mut dyn Write) -> Result<u64> {
        let mut n = 0;
        for c in chunks {
            let data = self.blob(c)?;
            out.write_all(&data).map_err(Error::io("output"))?;
            n += data.len() as u64;
        }
        Ok(n)
    }

    /// Every snapshot that opens, with the ones that do not as errors (read in parallel).
    /// A snapshot listed but gone when read (a concurrent `forget`, or `prune --reseal`
    /// replacing it) is not an error: the listing is read again, and after a few tries such a
    /// snapshot is left out.
    pub fn snapshots_lenient(&self) -> Result<(Snapshots, Vec<Error>)> {
        let results = crate::storage::read_listed(self.storage.as_ref(), Kind::Snapshots, |n| {
            let s = Snapshot::load(self.storage.as_ref(), &self.keyring, n)?;
            Ok((n.parse::<Id>().expect("listed names are ids"), s))
        })?;
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for r in results {
            match r {
                Ok(s) => ok.push(s),
                Err(e) => bad.push(e),
            }
        }
        ok.sort_by(|a, b| a.1.time_ms.cmp(&b.1.time_ms).then(a.0.cmp(&b.0)));
        Ok((ok, bad))
    }

    /// Every snapshot, oldest first; an error if one does not open.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let (ok, mut bad) = self.snapshots_lenient()?;
        match bad.pop() {
            Some(e) => Err(e),
            None => Ok(ok),
        }
    }

    /// A snapshot's tree.
    pub fn tree(&self, snapshot: &Snapshot) -> Result<Tree> {
        let mut bytes = Vec::new();
        for id in &snapshot.tree {
            bytes.extend(self.blob(id)?);
        }
        Tree::from_bytes("tree", &bytes)
    }

    /// Resolves a snapshot by a unique prefix of its ID, or `latest` (of any chain).
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        let all = self.snapshots()?;
        if spec == "latest" {
            return all.last().cloned().ok_or_else(|| Error::Missing {
                object: "snapshots/latest (the repository has no snapshot)".into(),
            });
        }
        let matching: Vec<_> = all
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(spec))
            .collect();
        match matching.len() {
            1 => Ok(matching.into_iter().next().expect("one")),
            0 => Err(Error::Missing {
                object: format!("snapshots/{spec}"),
            }),
            n => Err(Error::Invalid(format!(
                "{spec}: {n} snapshots start with it; give more digits"
            ))),
        }
    }
}

/// The range read for a blob of `len` bytes at `off` in a pack of `size` bytes: widened to
/// multiples of its PADME granule, and kept inside the pack (a `size` the index got wrong
/// leaves the blob's own range).
fn read_window(off: u64, len: u64, size: u64) -> (u64, u64) {
    let g = crate::crypto::padme_granule(len);
    let start = off / g * g;
    let end = (off + len).div_ceil(g).saturating_mul(g).min(size);
    if end < off + len {
        return (off, off + len);
    }
    (start, end)
}

/// The loaded index, borrowed.
pub struct IndexGuard<'a>(RwLockReadGuard<'a, Option<Index>>);

impl std::ops::Deref for IndexGuard<'_> {
    type Target = Index;
    fn deref(&self) -> &Index {
        self.0.as_ref().expect("loaded")
    }
}

#[cfg(test)]
mod tests {
    use super::read_window;

    #[test]
    fn reads_are_widened_to_the_granule_inside_the_pack() {
        // 105,000 bytes: granule 2,048.
        let (s, e) = read_window(10_000, 105_000, 1 << 24);
        assert_eq!((s % 2048, e % 2048), (0, 0));
        assert!(s <= 10_000 && e >= 115_000 && e - s <= 105_000 + 2 * 2048);
        // Never past the pack's end.
        assert_eq!(read_window(10_000, 105_000, 115_500), (8192, 115_500));
        // A pack size the index got wrong (shorter than the blob's end): the blob's own range.
        assert_eq!(read_window(10_000, 105_000, 100), (10_000, 115_000));
        assert_eq!(read_window(9, 1, 100), (9, 10));
    }
}
