//! `keybag device cloud backup`: what the device ships (stored ciphertexts and their cloud
//! wraps, read without unwrapping a key) into the account's repository, one snapshot per
//! backup on the device's own chain. Files whose blob is unchanged since the previous backup
//! reuse its chunks unread (a device-bound cache: a `backup` token may not read trees back).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use device::Device;
use rayon::prelude::*;
use vault::tree::{Node, Tree};
use vault::{Id, Repository, SnapshotInfo, Writer};

use crate::custody::{open_repo, service_key, KeyPath};
use crate::model::{CloudAnnex, EntryMeta, ItemMeta, Left};
use crate::state::CloudState;
use crate::{Error, Result};

const CACHE: &str = "icloud-chunks";

/// What a cloud backup did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BackupReport {
    /// The snapshot (short id).
    pub snapshot: String,
    /// Its sequence number in the device's chain.
    pub seq: u64,
    /// Lock state during the backup.
    pub lock_state: String,
    /// Files.
    pub files: u64,
    /// Their bytes (ciphertext as stored on the device).
    pub bytes: u64,
    /// Files unchanged since the previous backup (chunks reused, not read).
    pub unchanged: u64,
    /// Folders and links.
    pub others: u64,
    /// Keychain items.
    pub keychain: u64,
    /// Bytes stored on the service by this backup.
    pub stored_bytes: u64,
    /// Left out, with reasons.
    pub left_out: Vec<Left>,
}

/// Chunk lists of the previous backup's files, by blob id.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct ChunkCache {
    files: HashMap<String, (u64, Vec<[u8; 32]>)>,
}

fn load_cache(device: &Device) -> ChunkCache {
    match device.bound_load(CACHE) {
        Ok(Some(b)) => postcard::from_bytes(&b).unwrap_or_default(),
        _ => ChunkCache::default(),
    }
}

/// Backs up `device` to its account (as enabled by [`crate::enable`]).
pub fn backup(device: &Device, progress: Option<&(dyn Fn(u64) + Sync)>) -> Result<BackupReport> {
    let mut state = CloudState::require(device)?;
    let acct = state.account()?;
    let mut svk = state.service_key()?;
    let repo = match open_repo(acct.storage()?, &svk) {
        Ok(r) => r,
        Err(Error::NoKey(_)) => {
            // Rotated by another trusted device: this device's record carries the new key.
            let identity = state.identity()?;
            svk = service_key(
                &acct,
                &KeyPath::Trusted {
                    device: &state.device_id,
                    identity: &identity,
                },
            )?;
            state.set_service_key(&svk);
            state.save(device)?;
            open_repo(acct.storage()?, &svk)?
        }
        Err(e) => return Err(e),
    };
    let kb = acct.keybag(&svk, &state.device_id)?.ok_or_else(|| {
        Error::Rollback("the service has no keybag record for this device".into())
    })?;
    if kb.generation < state.keybag_generation {
        return Err(Error::Rollback(format!(
            "the service serves keybag generation {} of this device; {} was seen",
            kb.generation, state.keybag_generation
        )));
    }
    let local = device
        .cloud_keybag()
        .ok_or_else(|| Error::Invalid("iCloud Backup is off on this device".into()))?;
    if keybag_uuid(local)? != keybag_uuid(&kb.keybag)? {
        return Err(Error::Invalid(
            "the service's keybag record is not this device's keybag".into(),
        ));
    }
    let newer_keybag = kb.generation != state.keybag_generation;
    state.keybag_generation = kb.generation;
    // The vault refuses to commit on a chain older than this device saw (rollback).
    let chains = chain_state_path(device);
    let report = backup_to(
        &repo,
        device,
        &state.device_id,
        local,
        progress,
        Some(&chains),
    )?;
    if newer_keybag {
        state.save(device)?;
    }
    Ok(report)
}

/// Where the device keeps the newest snapshot of each chain it has seen (not secret:
/// snapshot ids and sequence numbers).
pub fn chain_state_path(device: &Device) -> std::path::PathBuf {
    device.dir().join("secure").join("icloud-chains.json")
}

/// The UUID of a keybag TLV (hex).
pub fn keybag_uuid(tlv: &[u8]) -> Result<String> {
    dataprotection::Keybag::parse(tlv)
        .ok()
        .and_then(|k| k.uuid_string())
        .ok_or_else(|| Error::Crypto("a cloud keybag without a UUID".into()))
}

/// One snapshot of `device` into `repo` on `chain` (the device's cloud keybag is `keybag`);
/// `chains` is the client's record of the newest snapshot of each chain (rollback check).
pub fn backup_to(
    repo: &Repository,
    device: &Device,
    chain: &str,
    keybag: &[u8],
    progress: Option<&(dyn Fn(u64) + Sync)>,
    chains: Option<&std::path::Path>,
) -> Result<BackupReport> {
    let export = device.cloud_export()?;
    let cache = load_cache(device);
    let writer = Writer::new(repo, progress)?;
    // What is stored is the device's ciphertext: incompressible.
    writer.set_compression(false);
    let failures = Mutex::new(Vec::new());
    let stored: Vec<Option<(Node, bool)>> = export
        .files
        .par_iter()
        .map(|f| {
            let meta = EntryMeta::of(&f.entry, Some(f.blob_id.clone()), Some(f.cloud_key.clone()));
            if let Some((size, chunks)) = cache.files.get(&f.blob_id) {
                let chunks: Vec<Id> = chunks.iter().map(|c| Id(*c)).collect();
                if writer.reuse(&chunks, *size) {
                    return Some((
                        Node {
                            name: meta.node_name(),
                            size: *size,
                            meta: meta.encode(),
                            chunks,
                        },
                        true,
                    ));
                }
            }
            let r = std::fs::File::open(&f.blob)
                .map_err(|e| Error::Invalid(format!("{}: {e}", f.blob.display())))
                .and_then(|mut file| Ok(writer.add_reader(&mut file)?));
            match r {
                Ok((chunks, size)) => Some((
                    Node {
                        name: meta.node_name(),
                        size,
                        meta: meta.encode(),
                        chunks,
                    },
                    false,
                )),
                Err(e) => {
                    failures.lock().expect("lock").push(Left {
                        kind: "file".into(),
                        what: format!("{}/{}", f.entry.domain, f.entry.path),
                        class: Some(f.entry.class.short_name().to_string()),
                        reason: format!("not read: {e}"),
                    });
                    None
                }
            }
        })
        .collect();
    writer.flush()?;
    let mut tree = Tree::default();
    let mut report = BackupReport {
        lock_state: device.state().as_str().into(),
        ..Default::default()
    };
    let mut next = ChunkCache::default();
    for (f, s) in export.files.iter().zip(stored) {
        let Some((node, unchanged)) = s else { continue };
        report.files += 1;
        report.bytes += node.size;
        report.unchanged += u64::from(unchanged);
        next.files.insert(
            f.blob_id.clone(),
            (node.size, node.chunks.iter().map(|c| c.0).collect()),
        );
        tree.nodes.push(node);
    }
    for e in &export.others {
        let meta = EntryMeta::of(e, None, None);
        tree.nodes.push(Node {
            name: meta.node_name(),
            size: 0,
            meta: meta.encode(),
            chunks: Vec::new(),
        });
        report.others += 1;
    }
    let mut left_out: Vec<Left> = export
        .skipped
        .iter()
        .map(|s| Left {
            kind: s.kind.clone(),
            what: s.what.clone(),
            class: s.class.clone(),
            reason: s.reason.clone(),
        })
        .collect();
    left_out.extend(failures.into_inner().expect("lock"));
    report.keychain = export.keychain.len() as u64;
    let annex = CloudAnnex {
        version: 1,
        device_name: device.name().to_string(),
        udid: device.udid().to_string(),
        model: device.model().to_string(),
        ios: device.ios_version().to_string(),
        lock_state: report.lock_state.clone(),
        keybag_uuid: keybag_uuid(keybag)?,
        keychain: export
            .keychain
            .iter()
            .map(|i| ItemMeta {
                rowid: i.rowid,
                table: i.table.clone(),
                class: i.class.0,
                cloud_key: i.cloud_key.clone(),
                iv: i.iv.clone(),
                data: i.data.clone(),
            })
            .collect(),
        left_out: left_out.clone(),
    };
    tree.annex = annex.encode();
    let mut tags = BTreeMap::new();
    tags.insert("kind".to_string(), "icloud-device".to_string());
    tags.insert("lock_state".to_string(), report.lock_state.clone());
    let (id, snap) = writer.commit(
        &tree,
        SnapshotInfo {
            chain: chain.to_string(),
            host: String::new(),
            tags,
            time_ms: None,
        },
        chains,
    )?;
    // Unchanged: nothing to rewrite (and no fsync).
    if next.files != cache.files {
        device.bound_save(CACHE, &postcard::to_stdvec(&next).expect("serializable"))?;
    }
    report.snapshot = id.short();
    report.seq = snap.seq;
    report.stored_bytes = snap.summary.stored_bytes;
    report.left_out = left_out;
    Ok(report)
}
