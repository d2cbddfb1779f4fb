//! Browsing snapshots without pulling them: the records of a backup (`ls`), one file's
//! content (`cat`: only that file's chunks are fetched), and what changed between two
//! backups of a phone (`diff`).

use std::collections::BTreeMap;
use std::io::Write;

use vault::snapshot::Snapshot;
use vault::tree::Tree;
use vault::{Id, Repository};

use crate::model::{Annex, FileMeta, Rec, RecKind, Stored};
use crate::{Error, Result};

/// A snapshot with its tree and annex.
pub struct Opened {
    /// Its ID.
    pub id: Id,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Its files.
    pub tree: Tree,
    /// Its phone-backup facts.
    pub annex: Annex,
}

/// Opens snapshot `spec` (an ID prefix or `latest`).
pub fn open(repo: &Repository, spec: &str) -> Result<Opened> {
    let (id, snapshot) = repo.find_snapshot(spec)?;
    let tree = repo.tree(&snapshot)?;
    let annex = Annex::decode(&tree.annex)?;
    Ok(Opened {
        id,
        snapshot,
        tree,
        annex,
    })
}

impl Opened {
    /// The metadata of the node holding `rec`'s blob, if the snapshot has it.
    pub fn blob_meta(&self, rec: &Rec) -> Option<(FileMeta, &vault::tree::Node)> {
        let node = self.tree.node(&Annex::blob_node(&rec.file_id))?;
        Some((FileMeta::decode(&node.name, &node.meta).ok()?, node))
    }

    /// What identifies a record's content: its plaintext chunks when the snapshot holds
    /// them (re-keyed or unencrypted), else the SHA-1 of its stored blob; `None` when absent.
    fn content(&self, rec: &Rec) -> Option<Vec<u8>> {
        let (meta, node) = self.blob_meta(rec)?;
        Some(match meta.stored {
            Stored::Rekey { .. } => node.chunks.iter().flat_map(|c| c.0).collect(),
            Stored::Raw if !self.annex.encrypted => node.chunks.iter().flat_map(|c| c.0).collect(),
            Stored::Raw => meta.sha1.to_vec(),
        })
    }
}

/// Writes the content of `domain/path` of snapshot `spec` to `out`; returns its length.
/// Only that file's chunks are read.
pub fn cat(
    repo: &Repository,
    o: &Opened,
    domain: &str,
    path: &str,
    out: &mut dyn Write,
) -> Result<u64> {
    let rec = o
        .annex
        .records
        .iter()
        .find(|r| r.domain == domain && r.path == path)
        .ok_or_else(|| {
            Error::Invalid(format!("{domain}/{path}: no such record in the snapshot"))
        })?;
    if rec.kind != RecKind::File {
        return Err(Error::Invalid(format!(
            "{domain}/{path}: is a {}, not a file",
            rec.kind.name()
        )));
    }
    let (meta, node) = o.blob_meta(rec).ok_or_else(|| {
        Error::Invalid(format!(
            "{domain}/{path}: its blob was not in the backup when it was pushed"
        ))
    })?;
    if matches!(meta.stored, Stored::Raw) && o.annex.encrypted {
        return Err(Error::Invalid(format!(
            "{domain}/{path}: stored encrypted (the backup was pushed without its password); \
             pull the snapshot and read it with `keybag cat` and the password"
        )));
    }
    Ok(repo.read_chunks(&node.chunks, out)?)
}

/// What changed between two snapshots.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Diff {
    /// Records only in the second.
    pub added: Vec<Rec>,
    /// Records only in the first.
    pub removed: Vec<Rec>,
    /// Records in both whose content (or kind, or symlink target) differs: (first, second).
    pub changed: Vec<(Rec, Rec)>,
    /// Records in both with the same content but other metadata (mode, mtime).
    pub metadata_changed: Vec<(Rec, Rec)>,
}

impl Diff {
    /// Counts per domain: (added, removed, changed).
    pub fn by_domain(&self) -> BTreeMap<String, (usize, usize, usize)> {
        let mut m: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        for r in &self.added {
            m.entry(r.domain.clone()).or_default().0 += 1;
        }
        for r in &self.removed {
            m.entry(r.domain.clone()).or_default().1 += 1;
        }
        for (r, _) in &self.changed {
            m.entry(r.domain.clone()).or_default().2 += 1;
        }
        m
    }
}

/// Compares two snapshots' records.
pub fn diff(a: &Opened, b: &Opened) -> Diff {
    let key = |r: &Rec| (r.domain.clone(), r.path.clone());
    let ma: BTreeMap<_, &Rec> = a.annex.records.iter().map(|r| (key(r), r)).collect();
    let mb: BTreeMap<_, &Rec> = b.annex.records.iter().map(|r| (key(r), r)).collect();
    let mut d = Diff::default();
    for (k, ra) in &ma {
        match mb.get(k) {
            None => d.removed.push((*ra).clone()),
            Some(rb) => {
                let same = ra.kind == rb.kind
                    && ra.target == rb.target
                    && (ra.kind != RecKind::File || a.content(ra) == b.content(rb));
                if !same {
                    d.changed.push(((*ra).clone(), (*rb).clone()));
                } else if ra.mode != rb.mode || ra.mtime != rb.mtime {
                    d.metadata_changed.push(((*ra).clone(), (*rb).clone()));
                }
            }
        }
    }
    for (k, rb) in &mb {
        if !ma.contains_key(k) {
            d.added.push((*rb).clone());
        }
    }
    d
}
