//! `keybag device cloud restore`: a snapshot back onto a device. Each file key comes out of
//! its cloud wrap (the keybag key unwraps the cloud keybag's class private keys), the stored
//! ciphertext is decrypted as it streams out of the repository, and the file is written anew
//! under the target device's own class keys. Keychain items come back only to the device
//! that made the backup: their class keys are wrapped with its UID (spec §5.2).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use rayon::prelude::*;

use dataprotection::cbc::{pkcs7_pad_len, Decryptor, BLOCK};
use dataprotection::{curve, Key256};
use device::{Device, PutItem, PutOptions};
use vault::{Id, Repository};

use crate::custody::{open_repo, Account};
use crate::keys::{file_class_keys, KeybagRecord, ServiceKey};
use crate::model::{CloudAnnex, EntryMeta, Left, ENTRY_PREFIX};
use crate::{Error, Result};

/// What a restore did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    /// The snapshot (short id).
    pub snapshot: String,
    /// The device that made it (name, UDID).
    pub source: (String, String),
    /// Its lock state when it backed up.
    pub source_lock_state: String,
    /// Files restored.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Folders and links restored.
    pub others: u64,
    /// Keychain items restored (`table #rowid`).
    pub keychain: Vec<String>,
    /// Not restored, with reasons (and what the backup itself left out).
    pub lost: Vec<Left>,
}

/// Picks the snapshot: `spec` (an id prefix), else the newest of `chain`, else the newest
/// device snapshot of the account.
pub fn pick(
    repo: &Repository,
    spec: Option<&str>,
    chain: Option<&str>,
) -> Result<(Id, vault::snapshot::Snapshot)> {
    if let Some(s) = spec {
        return Ok(repo.find_snapshot(s)?);
    }
    repo.snapshots()?
        .into_iter()
        .filter(|(_, s)| s.tags.get("kind").map(String::as_str) == Some("icloud-device"))
        .filter(|(_, s)| chain.is_none_or(|c| s.chain == c))
        .max_by_key(|(id, s)| (s.time_ms, s.seq, *id))
        .ok_or_else(|| Error::Invalid("the account holds no device cloud backup".into()))
}

/// Restores through `acct` with the service key `svk`.
pub fn restore(
    acct: &Account,
    svk: &ServiceKey,
    target: &mut Device,
    spec: Option<&str>,
    chain: Option<&str>,
) -> Result<RestoreReport> {
    let repo = open_repo(acct.storage()?, svk)?;
    // Restoring onto the device that made the backups: it knows how far its chain went, and
    // an older "latest" is a rollback.
    let chains = crate::backup::chain_state_path(target);
    if chains.is_file() {
        vault::snapshot::ChainState::load(&chains)?.observe(&repo.snapshots()?)?;
    }
    let (id, snap) = pick(&repo, spec, chain)?;
    let kb = acct.keybag(svk, &snap.chain)?.ok_or_else(|| {
        Error::Invalid(format!(
            "the account has no keybag record for the device of snapshot {}",
            id.short()
        ))
    })?;
    restore_snapshot(&repo, &id, &snap, &kb, target)
}

/// Restores one snapshot with its device's keybag record onto `target` (unlocked).
pub fn restore_snapshot(
    repo: &Repository,
    id: &Id,
    snap: &vault::snapshot::Snapshot,
    kb: &KeybagRecord,
    target: &mut Device,
) -> Result<RestoreReport> {
    if target.state() != device::LockState::Unlocked {
        return Err(Error::Invalid(format!(
            "{}: unlock the device to restore onto it",
            target.dir().display()
        )));
    }
    let class_keys = file_class_keys(&kb.keybag, &kb.keybag_key)?;
    let tree = repo.tree(snap)?;
    let annex = CloudAnnex::decode(&tree.annex)?;
    if crate::backup::keybag_uuid(&kb.keybag)? != annex.keybag_uuid {
        return Err(Error::Rollback(format!(
            "snapshot {} was made with keybag {}, the service serves {}",
            id.short(),
            annex.keybag_uuid,
            crate::backup::keybag_uuid(&kb.keybag)?
        )));
    }
    let mut report = RestoreReport {
        snapshot: id.short(),
        source: (annex.device_name.clone(), annex.udid.clone()),
        source_lock_state: annex.lock_state.clone(),
        lost: annex.left_out.clone(),
        ..Default::default()
    };
    let mut metas = Vec::new();
    for n in &tree.nodes {
        if !n.name.starts_with(ENTRY_PREFIX) {
            continue;
        }
        metas.push((EntryMeta::decode(&n.meta)?, n));
    }
    // Folders first (with their modes), then files, then links.
    metas.sort_by_key(|(m, _)| (m.kind != 1, m.path.matches('/').count()));
    // File keys out of their cloud wraps (an X25519 agreement each), on every core.
    let keys: Vec<Option<Key256>> = metas
        .par_iter()
        .map(|(m, _)| (m.kind == 0).then(|| file_key(&class_keys, m)).flatten())
        .collect();
    let mut files = Vec::new();
    let mut links = Vec::new();
    for ((m, node), key) in metas.iter().zip(keys) {
        match m.kind {
            1 => {
                target.mkdir(&m.domain, &m.path, m.mode)?;
                report.others += 1;
            }
            2 => links.push(m),
            _ => match key {
                Some(key) => files.push((m, *node, key)),
                None => report.lost.push(Left {
                    kind: "file".into(),
                    what: format!("{}/{}", m.domain, m.path),
                    class: Some(m.protection_class().short_name().to_string()),
                    reason: "its cloud-wrapped key does not unwrap with this keybag".into(),
                }),
            },
        }
    }
    // Each group's packs are read (one request per pack, not one per chunk) by a thread of
    // its own while the group before is decrypted and written by the device's parallel
    // writers: at most three groups in memory.
    let groups = groups(repo, files)?;
    let groups = &groups;
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<vault::Result<HashMap<Id, Vec<u8>>>>(1);
        scope.spawn(move || {
            for g in groups {
                let got = g
                    .packs
                    .par_iter()
                    .map(|(pack, wanted)| repo.read_pack_blobs(pack, wanted))
                    .collect::<vault::Result<Vec<_>>>()
                    .map(|v| v.into_iter().flatten().collect());
                let failed = got.is_err();
                if tx.send(got).is_err() || failed {
                    return;
                }
            }
        });
        for group in groups {
            let blobs = rx
                .recv()
                .map_err(|_| Error::Invalid("the pack reader stopped".into()))??;
            restore_group(repo, group, &blobs, target, &mut report)?;
        }
        Ok(())
    })?;
    for m in links {
        target.symlink(&m.domain, &m.path, m.target.as_deref().unwrap_or_default())?;
        report.others += 1;
    }
    for item in &annex.keychain {
        let it = item.to_item();
        match target.cloud_open_item(&kb.keybag, &it) {
            Ok(attrs) => {
                target.keychain_add(&it.table, it.class, attrs)?;
                report.keychain.push(format!("{} #{}", it.table, it.rowid));
            }
            Err(_) => report.lost.push(Left {
                kind: "keychain".into(),
                what: format!("{} #{}", it.table, it.rowid),
                class: Some(it.class.short_name().to_string()),
                reason: "the keychain of a cloud backup is bound to the UID of the device that \
                         made it (spec §5.2): it does not open on this device"
                    .into(),
            }),
        }
    }
    Ok(report)
}

/// Most packs one group of files is read from (each up to the pack target, 16 MiB).
const GROUP_PACKS: usize = 2;

/// Decrypts and writes one group's files (their blobs read ahead into `blobs`).
fn restore_group(
    repo: &Repository,
    group: &Group<'_>,
    blobs: &HashMap<Id, Vec<u8>>,
    target: &mut Device,
    report: &mut RestoreReport,
) -> Result<()> {
    let mut items = Vec::new();
    for (m, node, key) in &group.files {
        let chunks = node.chunks.clone();
        let opts = PutOptions {
            class: m.protection_class(),
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            mtime: Some(m.mtime),
            exclude_from_backup: false,
        };
        let key = key.clone();
        let size = m.size;
        items.push(PutItem::<Error>::new(
            m.domain.clone(),
            m.path.clone(),
            opts,
            move || Ok(Plaintext::new(repo, blobs, chunks, key, size)),
        ));
    }
    // A file whose content does not decrypt is reported and the others restored; anything
    // else (the target's disk, its database) fails the restore.
    let skip = |e: &Error| matches!(e, Error::Device(device::Error::Source { .. }));
    let done = target.put_many_skipping(items, &skip)?;
    for ((m, _, _), r) in group.files.iter().zip(done.iter()) {
        match r {
            Ok(_) => {
                report.files += 1;
                report.bytes += m.size;
            }
            Err(e) => report.lost.push(Left {
                kind: "file".into(),
                what: format!("{}/{}", m.domain, m.path),
                class: Some(m.protection_class().short_name().to_string()),
                reason: e.to_string(),
            }),
        }
    }
    Ok(())
}

type FileJob<'a> = (&'a EntryMeta, &'a vault::tree::Node, Key256);

/// Files read from a few packs, and those packs' wanted blobs.
struct Group<'a> {
    files: Vec<FileJob<'a>>,
    packs: Vec<(vault::index::PackInfo, Vec<(Id, vault::index::Location)>)>,
}

/// Orders files by where their content is and cuts them into groups of at most
/// [`GROUP_PACKS`] packs. A file spread over more packs than that is a group of its own
/// whose chunks are read one by one (they are large: the requests are few).
fn groups<'a>(repo: &Repository, files: Vec<FileJob<'a>>) -> Result<Vec<Group<'a>>> {
    repo.load_index()?;
    let ix = repo.index()?;
    let mut located = Vec::with_capacity(files.len());
    for f in files {
        let mut locs = Vec::with_capacity(f.1.chunks.len());
        for c in &f.1.chunks {
            let l = ix.get(c).ok_or_else(|| vault::Error::Missing {
                object: format!("blob {c}"),
            })?;
            locs.push((*c, l));
        }
        let key = locs.first().map(|(_, l)| (l.pack, l.offset));
        located.push((key, f, locs));
    }
    located.sort_by_key(|(k, f, _)| (*k, f.0.domain.clone(), f.0.path.clone()));
    let mut out: Vec<Group<'a>> = Vec::new();
    let mut cur_files = Vec::new();
    let mut cur: BTreeMap<u32, Vec<(Id, vault::index::Location)>> = BTreeMap::new();
    let close = |files: &mut Vec<FileJob<'a>>,
                 packs: &mut BTreeMap<u32, Vec<(Id, vault::index::Location)>>,
                 out: &mut Vec<Group<'a>>| {
        if files.is_empty() {
            return;
        }
        out.push(Group {
            files: std::mem::take(files),
            packs: std::mem::take(packs)
                .into_iter()
                .map(|(p, mut w)| {
                    w.sort_by_key(|(id, l)| (l.offset, *id));
                    w.dedup_by_key(|(id, _)| *id);
                    (ix.pack(p), w)
                })
                .collect(),
        });
    };
    for (_, f, locs) in located {
        let packs: std::collections::BTreeSet<u32> = locs.iter().map(|(_, l)| l.pack).collect();
        if packs.len() > GROUP_PACKS {
            close(&mut cur_files, &mut cur, &mut out);
            out.push(Group {
                files: vec![f],
                packs: Vec::new(),
            });
            continue;
        }
        let after = packs.iter().filter(|p| !cur.contains_key(p)).count() + cur.len();
        if after > GROUP_PACKS {
            close(&mut cur_files, &mut cur, &mut out);
        }
        for (id, l) in locs {
            cur.entry(l.pack).or_default().push((id, l));
        }
        cur_files.push(f);
    }
    close(&mut cur_files, &mut cur, &mut out);
    Ok(out)
}

fn file_key(class_keys: &BTreeMap<u32, Key256>, m: &EntryMeta) -> Option<Key256> {
    let ck = class_keys.get(&m.class)?;
    curve::unwrap_with(ck, m.cloud_key.as_deref()?).ok()
}

/// A file's plaintext, decrypted (AES-256-CBC, PKCS7) as its chunks come out of the
/// repository: one chunk in memory at a time.
struct Plaintext<'r> {
    repo: &'r Repository,
    /// Blobs read ahead for this file's group (else each is read on its own).
    ahead: &'r HashMap<Id, Vec<u8>>,
    chunks: std::vec::IntoIter<Id>,
    dec: Decryptor,
    /// Ciphertext not yet decrypted (less than a block, or the held-back last block).
    raw: Vec<u8>,
    /// Decrypted, not yet handed out.
    out: Vec<u8>,
    pos: usize,
    expected: u64,
    given: u64,
    done: bool,
}

impl<'r> Plaintext<'r> {
    fn new(
        repo: &'r Repository,
        ahead: &'r HashMap<Id, Vec<u8>>,
        chunks: Vec<Id>,
        key: Key256,
        expected: u64,
    ) -> Self {
        Plaintext {
            repo,
            ahead,
            chunks: chunks.into_iter(),
            dec: Decryptor::new(&key),
            raw: Vec::new(),
            out: Vec::new(),
            pos: 0,
            expected,
            given: 0,
            done: false,
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        self.out.clear();
        self.pos = 0;
        match self.chunks.next() {
            Some(id) => {
                match self.ahead.get(&id) {
                    Some(data) => self.raw.extend_from_slice(data),
                    None => {
                        let data = self.repo.blob(&id).map_err(|e| bad(e.to_string()))?;
                        self.raw.extend_from_slice(&data);
                    }
                }
                // Keep the last block back: it carries the padding.
                let take = (self.raw.len().saturating_sub(1) / BLOCK) * BLOCK;
                let mut ready: Vec<u8> = self.raw.drain(..take).collect();
                self.dec
                    .decrypt(&mut ready)
                    .map_err(|e| bad(e.to_string()))?;
                self.out = ready;
            }
            None => {
                self.done = true;
                if self.raw.is_empty() || !self.raw.len().is_multiple_of(BLOCK) {
                    return Err(bad("the stored ciphertext is not whole blocks".into()));
                }
                let mut last = std::mem::take(&mut self.raw);
                self.dec
                    .decrypt(&mut last)
                    .map_err(|e| bad(e.to_string()))?;
                let pad = pkcs7_pad_len(&last[last.len() - BLOCK..])
                    .map_err(|_| bad("bad padding (wrong key or damaged data)".into()))?;
                last.truncate(last.len() - pad);
                self.out = last;
            }
        }
        Ok(())
    }
}

impl Read for Plaintext<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.out.len() {
            if self.done {
                if self.given != self.expected {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "decrypted {} bytes, the backup says {}",
                            self.given, self.expected
                        ),
                    ));
                }
                return Ok(0);
            }
            self.fill()?;
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        self.given += n as u64;
        Ok(n)
    }
}

impl Drop for Plaintext<'_> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.out);
    }
}
