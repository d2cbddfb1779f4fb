//! Push: a Finder/iTunes backup folder into a vault snapshot.
//!
//! Every regular file of the folder becomes a tree node. With the backup's password (or
//! derived key), the blobs of encrypted files and the encrypted `Manifest.db` are stored as
//! plaintext with their keys ([`Stored::Rekey`]): a new backup of the same phone, whose files
//! are all encrypted under fresh keys, then stores almost nothing new. A blob that would not
//! come back byte for byte that way (bad padding, empty, a length not a multiple of 16) and
//! every file of a backup pushed without the password are stored as they are. Each file's
//! SHA-1 is recorded, and pull writes nothing that does not match it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mobilebackup::blob::BlobReader;
use mobilebackup::layout::{is_valid_file_id, MANIFEST_DB};
use mobilebackup::safe_fs::open_regular;
use mobilebackup::{Backup, Catalog, Credentials, RecordKind};
use rayon::prelude::*;
use sha1::{Digest, Sha1};
use vault::tree::{Node, Tree};
use vault::{Id, Repository, SnapshotInfo, Writer};

use crate::model::{Annex, DeviceMeta, FileMeta, FileStat, Rec, RecKind, Stored};
use crate::{Error, Result};

/// How to push.
#[derive(Default)]
pub struct PushOptions<'a> {
    /// Unlocks an encrypted backup, so its files are stored re-keyable (deduplicated across
    /// backups). Without it they are stored as they are.
    pub credentials: Option<Credentials>,
    /// The pushing machine's name.
    pub host: String,
    /// The client's chain-state file (rollback detection), if any.
    pub state: Option<PathBuf>,
    /// Told the bytes of each chunk processed.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// What a push did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PushReport {
    /// The new snapshot.
    pub snapshot: Id,
    /// Its chain (the phone's UDID).
    pub chain: String,
    /// Its sequence number in the chain.
    pub seq: u64,
    /// The phone.
    pub device: DeviceMeta,
    /// Files of the backup folder stored.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of which stored as plaintext with their keys.
    pub rekeyed: u64,
    /// Of which stored as they are.
    pub raw: u64,
    /// Files taken from the previous snapshot of the phone without being read (their size,
    /// inode, mtime and ctime unchanged since it).
    pub unchanged: u64,
    /// Plaintext bytes of chunks the repository did not have.
    pub new_bytes: u64,
    /// Bytes of packs uploaded.
    pub stored_bytes: u64,
    /// What was not stored or not read, and why.
    pub notes: Vec<String>,
}

/// A reader that hashes what passes.
struct Hashing<R> {
    inner: R,
    sha1: Sha1,
    len: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha1.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Every regular file under `root` (relative, `/`-separated), never following a symlink;
/// anything else is noted.
fn walk(root: &Path, notes: &mut Vec<String>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = root.join(&rel);
        for e in std::fs::read_dir(&dir).map_err(Error::io(&dir))? {
            let e = e.map_err(Error::io(&dir))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                notes.push(format!(
                    "{}: name is not UTF-8; not stored",
                    dir.join(e.file_name()).display()
                ));
                continue;
            };
            let r = rel.join(name);
            let t = e.file_type().map_err(Error::io(e.path()))?;
            if t.is_dir() {
                todo.push(r);
            } else if t.is_file() {
                out.push(r.to_string_lossy().replace('\\', "/"));
            } else {
                notes.push(format!(
                    "{}: not a regular file (symlink, FIFO, socket or device); not stored",
                    r.display()
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn records(cat: &Catalog) -> Vec<Rec> {
    cat.records
        .iter()
        .map(|r| {
            let f = r.file.as_ref();
            Rec {
                domain: r.domain.clone(),
                path: r.relative_path.clone(),
                kind: match r.kind() {
                    RecordKind::File => RecKind::File,
                    RecordKind::Directory => RecKind::Dir,
                    RecordKind::Symlink => RecKind::Symlink,
                    RecordKind::Other(f) => RecKind::Other(f),
                },
                file_id: r.file_id.clone(),
                size: r.size(),
                mtime: f.map_or(0, |f| f.mtime),
                class: r.protection_class().0,
                mode: f.map_or(0, |f| f.mode),
                target: f.and_then(|f| f.target.clone()),
            }
        })
        .collect()
}

fn unix(t: Option<std::time::SystemTime>) -> Option<i64> {
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
}

/// A backup folder opened for a push (and unlocked, given credentials), with what was noted
/// on the way. Opening runs the backup's KDF (10 million PBKDF2 rounds for a real one): a
/// caller may do it on a thread of its own while it opens the repository.
pub struct Opened {
    backup: Backup,
    notes: Vec<String>,
}

/// Opens the backup folder `dir` and unlocks it with `credentials` if it is encrypted.
pub fn open_backup(dir: &Path, credentials: Option<&Credentials>) -> Result<Opened> {
    let mut backup = Backup::open(dir)?;
    let mut notes = Vec::new();
    if backup.is_encrypted() {
        if let Some(c) = credentials {
            backup.unlock(c)?;
        } else {
            notes.push(
                "encrypted backup pushed without its password: files stored as they are (a \
                 later backup of the phone, encrypted under new keys, will not deduplicate)"
                    .into(),
            );
        }
    }
    Ok(Opened { backup, notes })
}

/// Pushes the backup folder `dir` into `repo` as one snapshot.
pub fn push(repo: &Repository, dir: &Path, opts: &PushOptions<'_>) -> Result<PushReport> {
    let opened = open_backup(dir, opts.credentials.as_ref())?;
    push_opened(repo, dir, opened, opts)
}

/// [`push`] of a backup opened by [`open_backup`] (`opts.credentials` is not used again).
pub fn push_opened(
    repo: &Repository,
    dir: &Path,
    opened: Opened,
    opts: &PushOptions<'_>,
) -> Result<PushReport> {
    let Opened { backup, mut notes } = opened;
    let unlocked = backup.is_encrypted() && backup.keys().is_some();
    let catalog = match backup.catalog() {
        Ok(c) => Some(c),
        Err(e) => {
            notes.push(format!(
                "Manifest.db cannot be read ({e}): every file stored as it is, no records listed"
            ));
            None
        }
    };
    // The record (and its key) of each blob: the first row with that fileID.
    let mut by_id: HashMap<&str, &mobilebackup::Record> = HashMap::new();
    if let Some(cat) = &catalog {
        for r in &cat.records {
            if r.problem.is_none() && r.kind() == RecordKind::File {
                by_id.entry(r.file_id.as_str()).or_insert(r);
            }
        }
    }
    let info = backup.device();
    let device = DeviceMeta {
        name: info.device_name.clone(),
        udid: info.udid.clone(),
        product: info.product_type.clone(),
        ios: info.product_version.clone(),
    };
    let backup_date = unix(backup.status().and_then(|s| s.date))
        .or_else(|| unix(backup.manifest().and_then(|m| m.date)))
        .or_else(|| unix(backup.info().and_then(|i| i.last_backup_date)));

    let chain = device
        .udid
        .clone()
        .unwrap_or_else(|| "unknown-device".into());
    let parent = parent_nodes(repo, &chain, backup.is_encrypted(), unlocked, &mut notes);
    let files = walk(dir, &mut notes)?;
    // The journal beside the state file lets an interrupted push resume even where it may
    // not read back what it stored (a `backup` token on a server).
    let journal = opts.state.as_ref().map(|s| {
        let mut dir = s.clone().into_os_string();
        dir.push(".journal");
        Arc::new(vault::storage::LocalStorage::new(PathBuf::from(dir)))
            as Arc<dyn vault::storage::Storage>
    });
    let writer = Writer::with_journal(repo, opts.progress, journal)?;
    let ctx = Ctx {
        backup: &backup,
        writer: &writer,
        unlocked,
        by_id: &by_id,
        parent: Some(&parent),
    };
    let notes = Mutex::new(notes);
    let nodes: Vec<Option<Stored1>> = files
        .par_iter()
        .map(|rel| {
            let path = dir.join(rel);
            let note = |m: String| notes.lock().expect("lock").push(m);
            match store_file(&ctx, &path, rel) {
                Ok(n) => Some(n),
                Err(e) => {
                    note(format!("{rel}: not stored: {e}"));
                    None
                }
            }
        })
        .collect::<Vec<_>>();
    // A prune running beside this push may have deleted packs whose chunks this push found
    // in the repository: the files holding such chunks are stored again (the writer then
    // stores those chunks anew).
    let mut nodes = nodes;
    for _ in 0..4 {
        let lost: HashSet<Id> = writer.revalidate()?.into_iter().collect();
        if lost.is_empty() {
            break;
        }
        for (rel, slot) in files.iter().zip(nodes.iter_mut()) {
            let Some(Stored1 { node, .. }) = slot else {
                continue;
            };
            if !node.chunks.iter().any(|c| lost.contains(c)) {
                continue;
            }
            // From its content this time: the parent's chunks are what went missing.
            let fresh = Ctx {
                parent: None,
                ..ctx
            };
            *slot = match store_file(&fresh, &dir.join(rel), rel) {
                Ok(n) => Some(n),
                Err(e) => {
                    notes
                        .lock()
                        .expect("lock")
                        .push(format!("{rel}: not stored: {e}"));
                    None
                }
            };
        }
    }
    let mut tree = Tree::default();
    let (mut rekeyed, mut raw, mut unchanged) = (0u64, 0u64, 0u64);
    for s in nodes.into_iter().flatten() {
        if s.rekeyed {
            rekeyed += 1;
        } else {
            raw += 1;
        }
        unchanged += u64::from(s.unchanged);
        tree.nodes.push(s.node);
    }
    let notes = notes.into_inner().expect("lock");
    let annex = Annex {
        version: 1,
        device: device.clone(),
        backup_date,
        encrypted: backup.is_encrypted(),
        unlocked,
        records: catalog.as_ref().map(records).unwrap_or_default(),
        notes: notes.clone(),
    };
    tree.annex = annex.encode();
    let mut tags = BTreeMap::new();
    for (k, v) in [
        ("device_name", &device.name),
        ("udid", &device.udid),
        ("product", &device.product),
        ("ios", &device.ios),
    ] {
        if let Some(v) = v {
            tags.insert(k.to_string(), v.clone());
        }
    }
    if let Some(d) = backup_date {
        tags.insert("backup_date".into(), d.to_string());
    }
    let (id, snap) = writer.commit(
        &tree,
        SnapshotInfo {
            chain: chain.clone(),
            host: opts.host.clone(),
            tags,
            time_ms: None,
        },
        opts.state.as_deref(),
    )?;
    Ok(PushReport {
        snapshot: id,
        chain,
        seq: snap.seq,
        device,
        files: snap.summary.files,
        bytes: snap.summary.bytes,
        rekeyed,
        raw,
        unchanged,
        new_bytes: snap.summary.new_bytes,
        stored_bytes: snap.summary.stored_bytes,
        notes,
    })
}

/// The nodes of the newest snapshot of `chain` pushed the same way (encrypted or not,
/// unlocked or not: a node says how its file was stored, and that must be how this push
/// would store it), by name. Empty when there is none or it does not read (noted: every
/// file is then read).
fn parent_nodes(
    repo: &Repository,
    chain: &str,
    encrypted: bool,
    unlocked: bool,
    notes: &mut Vec<String>,
) -> HashMap<String, Node> {
    let newest = match repo.snapshots_lenient() {
        Ok((snaps, _)) => snaps.into_iter().rev().find(|(_, s)| s.chain == chain),
        Err(_) => None,
    };
    let Some((id, snap)) = newest else {
        return HashMap::new();
    };
    let tree = match repo.tree(&snap) {
        Ok(t) => t,
        Err(e) => {
            notes.push(format!(
                "the previous snapshot {} does not read ({e}): every file read again",
                id.short()
            ));
            return HashMap::new();
        }
    };
    match Annex::decode(&tree.annex) {
        Ok(a) if a.encrypted == encrypted && a.unlocked == unlocked => tree
            .nodes
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect(),
        _ => HashMap::new(),
    }
}

/// What storing one file needs.
#[derive(Clone, Copy)]
struct Ctx<'a, 'w> {
    backup: &'a Backup,
    writer: &'a Writer<'w>,
    unlocked: bool,
    by_id: &'a HashMap<&'a str, &'a mobilebackup::Record>,
    /// The previous snapshot's nodes, when a file unchanged since may be taken from it.
    parent: Option<&'a HashMap<String, Node>>,
}

/// The key of a file that can be stored re-keyable, if it can.
fn rekey_key(
    backup: &Backup,
    rel: &str,
    unlocked: bool,
    by_id: &HashMap<&str, &mobilebackup::Record>,
) -> Option<dataprotection::Key256> {
    if !unlocked {
        return None;
    }
    let keys = backup.keys()?;
    if rel == MANIFEST_DB {
        let mk = backup.manifest()?.manifest_key.as_ref()?;
        return keys.unwrap_persistent(mk).ok();
    }
    let (shard, id) = rel.split_once('/')?;
    if !is_valid_file_id(id) || shard != &id[..2] {
        return None;
    }
    let rec = by_id.get(id)?;
    let wrapped = rec.file.as_ref()?.encryption_key.as_ref()?;
    keys.unwrap_persistent(wrapped).ok()
}

/// One file as stored.
struct Stored1 {
    node: Node,
    /// Stored as plaintext with its key.
    rekeyed: bool,
    /// Taken from the previous snapshot, unread.
    unchanged: bool,
}

/// Stores one file; returns its node and how. A file whose identity
/// (device, inode, length, mtime and ctime) is the one recorded in the previous snapshot is
/// not read: its node is taken as it was, as restic does with its parent snapshot.
fn store_file(ctx: &Ctx<'_, '_>, path: &Path, rel: &str) -> Result<Stored1> {
    let Ctx {
        backup,
        writer,
        unlocked,
        by_id,
        parent,
    } = *ctx;
    // One lstat decides whether an unchanged file is taken as it was (a symlink, or
    // anything not a regular file, never matches, and is refused by open_regular below).
    if let Some(prev) = parent.and_then(|p| p.get(rel)) {
        let now = std::fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.file_type().is_file())
            .and_then(|m| FileStat::of(&m));
        if let (Some(st), Ok(pm)) = (now, FileMeta::decode(rel, &prev.meta)) {
            if pm.stat == Some(st) && writer.reuse(&prev.chunks, prev.size) {
                return Ok(Stored1 {
                    node: prev.clone(),
                    rekeyed: matches!(pm.stored, Stored::Rekey { .. }),
                    unchanged: true,
                });
            }
        }
    }
    let file = open_regular(path)?;
    let meta = file.metadata().map_err(Error::io(path))?;
    let mtime = filetime::FileTime::from_last_modification_time(&meta).unix_seconds();
    let len = meta.len();
    let stat = FileStat::of(&meta);
    drop(file);
    if let Some(key) = rekey_key(backup, rel, unlocked, by_id) {
        // Only a blob that re-encrypts to the very same bytes: whole blocks, valid padding.
        if len > 0 && len % 16 == 0 {
            let r = BlobReader::encrypted(path, &key)?;
            if r.padding_ok() {
                let mut r = r.hash_stored();
                let (chunks, size) = writer.add_reader(&mut r)?;
                if let Some(sha1) = r.stored_sha1() {
                    let node = Node {
                        name: rel.to_string(),
                        size,
                        meta: FileMeta {
                            stored: Stored::Rekey {
                                key: *key.as_bytes(),
                            },
                            len,
                            sha1,
                            mtime,
                            stat,
                        }
                        .encode(),
                        chunks,
                    };
                    return Ok(Stored1 {
                        node,
                        rekeyed: true,
                        unchanged: false,
                    });
                }
            }
        }
    }
    let mut r = Hashing {
        inner: open_regular(path)?,
        sha1: Sha1::new(),
        len: 0,
    };
    let (chunks, size) = writer.add_reader(&mut r)?;
    let node = Node {
        name: rel.to_string(),
        size,
        meta: FileMeta {
            stored: Stored::Raw,
            len: r.len,
            sha1: r.sha1.finalize().into(),
            mtime,
            stat,
        }
        .encode(),
        chunks,
    };
    Ok(Stored1 {
        node,
        rekeyed: false,
        unchanged: false,
    })
}
