//! Pull: a snapshot back into a backup folder, byte for byte.
//!
//! The folder is built in a staging folder beside OUT and renamed into place. Every file is
//! written to a temp name, checked against the SHA-1 and length recorded at push, and only
//! then renamed: a file whose chunks are missing or damaged is reported (and left out), never
//! written wrong; the rest comes back. The folder is synced to disk once, before the rename.

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use dataprotection::cbc::{Encryptor, BLOCK};
use dataprotection::Key256;
use mobilebackup::staging::Staging;
use rayon::prelude::*;
use sha1::{Digest, Sha1};
use vault::tree::Node;
use vault::{Id, Repository};

use crate::model::{Annex, FileMeta, Stored};
use crate::{Error, Result};

/// How to pull.
#[derive(Default)]
pub struct PullOptions<'a> {
    /// Told the bytes of each file written.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// What a pull did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PullReport {
    /// The snapshot.
    pub snapshot: Id,
    /// The folder made.
    pub out: PathBuf,
    /// Files written (each checked against its recorded SHA-1).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files not written, and why.
    pub failed: Vec<(String, String)>,
}

/// Checks a node name is a plain relative path (it comes from a snapshot, sealed, but a
/// pull never writes outside OUT whatever it reads).
fn safe_rel(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains('\0') || name.contains('\\') {
        return None;
    }
    let p = Path::new(name);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            _ => return None,
        }
    }
    Some(out)
}

/// Streams plaintext through AES-256-CBC (zero IV) with PKCS7, as the backup stored it.
struct CbcWriter<W: Write> {
    out: W,
    enc: Option<Encryptor>,
    pending: Vec<u8>,
}

impl<W: Write> CbcWriter<W> {
    fn new(key: &Key256, out: W) -> Self {
        CbcWriter {
            out,
            enc: Some(Encryptor::new(key)),
            pending: Vec::with_capacity(1 << 20),
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.pending.extend_from_slice(data);
        let whole = self.pending.len() / BLOCK * BLOCK;
        if whole > 0 {
            let enc = self.enc.as_mut().expect("open until finish");
            enc.encrypt(&mut self.pending[..whole])
                .map_err(std::io::Error::other)?;
            self.out.write_all(&self.pending[..whole])?;
            self.pending.drain(..whole);
        }
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<W> {
        let last = self
            .enc
            .take()
            .expect("open until finish")
            .finish(&self.pending)
            .map_err(std::io::Error::other)?;
        self.out.write_all(&last)?;
        zeroize::Zeroize::zeroize(&mut self.pending);
        Ok(self.out)
    }
}

/// A writer that hashes and counts what passes.
struct Hashing<W> {
    inner: W,
    sha1: Sha1,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha1.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one node under `root`; returns its length.
fn write_node(repo: &Repository, root: &Path, node: &Node) -> Result<u64> {
    let rel = safe_rel(&node.name)
        .ok_or_else(|| Error::Invalid(format!("{:?}: not a plain relative path", node.name)))?;
    let meta = FileMeta::decode(&node.name, &node.meta)?;
    let dest = root.join(&rel);
    let parent = dest.parent().expect("under root");
    std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
    let tmp = tempfile::NamedTempFile::new_in(parent).map_err(Error::io(parent))?;
    let mut out = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, tmp),
        sha1: Sha1::new(),
        len: 0,
    };
    match &meta.stored {
        Stored::Raw => {
            for c in &node.chunks {
                out.write_all(&repo.blob(c)?).map_err(Error::io(&dest))?;
            }
        }
        Stored::Rekey { key } => {
            let key = Key256::from_bytes(*key);
            let mut w = CbcWriter::new(&key, &mut out);
            for c in &node.chunks {
                let mut plain = repo.blob(c)?;
                w.write(&plain).map_err(Error::io(&dest))?;
                zeroize::Zeroize::zeroize(&mut plain);
            }
            w.finish().map_err(Error::io(&dest))?;
        }
    }
    let got: [u8; 20] = out.sha1.finalize().into();
    if got != meta.sha1 || out.len != meta.len {
        return Err(Error::Invalid(format!(
            "{}: rebuilt {} bytes with SHA-1 {} but {} bytes with SHA-1 {} were pushed; not written",
            node.name,
            out.len,
            hex::encode(got),
            meta.len,
            hex::encode(meta.sha1)
        )));
    }
    let tmp = out
        .inner
        .into_inner()
        .map_err(|e| Error::io(&dest)(e.into_error()))?;
    let t = filetime::FileTime::from_unix_time(meta.mtime, 0);
    filetime::set_file_handle_times(tmp.as_file(), Some(t), Some(t)).map_err(Error::io(&dest))?;
    tmp.persist(&dest).map_err(|e| Error::io(&dest)(e.error))?;
    Ok(meta.len)
}

/// Pulls snapshot `spec` (an ID prefix or `latest`) into the new folder `out`.
pub fn pull(
    repo: &Repository,
    spec: &str,
    out: &Path,
    opts: &PullOptions<'_>,
) -> Result<PullReport> {
    let (id, snap) = repo.find_snapshot(spec)?;
    let tree = repo.tree(&snap)?;
    Annex::decode(&tree.annex)?;
    repo.load_index()?;
    let staging = Staging::new(out)?;
    let root = staging.path().to_path_buf();
    let failed = Mutex::new(Vec::new());
    let written: Vec<u64> = tree
        .nodes
        .par_iter()
        .filter_map(|n| match write_node(repo, &root, n) {
            Ok(len) => {
                if let Some(p) = opts.progress {
                    p(len);
                }
                Some(len)
            }
            Err(e) => {
                failed
                    .lock()
                    .expect("lock")
                    .push((n.name.clone(), e.to_string()));
                None
            }
        })
        .collect();
    // Durable before it appears under its name; one sync for the folder, not one per file.
    staging.sync()?;
    let dest = staging.commit()?;
    let mut failed = failed.into_inner().expect("lock");
    failed.sort();
    Ok(PullReport {
        snapshot: id,
        out: dest,
        files: written.len() as u64,
        bytes: written.iter().sum(),
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside() {
        assert!(safe_rel("ab/abcdef").is_some());
        assert!(safe_rel("Manifest.db").is_some());
        for bad in [
            "",
            "../x",
            "/etc/passwd",
            "a/../../b",
            "a\\b",
            "a\0b",
            "./.",
        ] {
            assert!(safe_rel(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn cbc_writer_matches_the_one_shot_encryption() {
        let key = Key256::random();
        for n in [0usize, 1, 15, 16, 17, 100_000] {
            let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut out = Vec::new();
            let mut w = CbcWriter::new(&key, &mut out);
            for part in data.chunks(7) {
                w.write(part).unwrap();
            }
            w.finish().unwrap();
            assert_eq!(out, dataprotection::cbc::encrypt_padded(&key, &data), "{n}");
        }
    }
}
