//! Many files at once ([`Device::put_many`]): blobs are encrypted by parallel workers, then
//! every row is indexed in one SQLite transaction. A restore of 10,000 files spent most of its
//! time in per-file key wrapping, AES and one commit per file, all on one core.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use dataprotection::cbc::{Encryptor, BLOCK};
use dataprotection::Key256;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{db, io, Error, Result};
use crate::store::{blob_path, check, check_blob_id, db_path, StoredBlob, CHUNK};
use crate::{Device, PutOptions};

/// A written blob: its wrapped key, its cloud wrap, its id and its plaintext length.
type WrittenBlob = (Vec<u8>, Option<Vec<u8>>, String, u64);

/// Most workers a batch starts (more only contend for the disk).
const MAX_WORKERS: usize = 8;

/// Opens one item's content. It is called once, by the worker that writes the item, so a
/// batch of thousands of files holds only one open source per worker.
pub type OpenContent<'a, E> =
    Box<dyn FnOnce() -> std::result::Result<Box<dyn Read + 'a>, E> + Send + 'a>;

/// One file of [`Device::put_many`]. `E` is the caller's error type, so a source can fail
/// with its own error (e.g. a damaged backup blob) and the batch hands it back unchanged.
pub struct PutItem<'a, E = Error> {
    /// Domain, e.g. `HomeDomain`.
    pub domain: String,
    /// Path relative to the domain root.
    pub path: String,
    /// Class, mode, owner, mtime, exclude flag (as for [`Device::put`]).
    pub opts: PutOptions,
    /// Opens the plaintext.
    pub open: OpenContent<'a, E>,
}

impl<'a, E> PutItem<'a, E> {
    /// An item whose content `open` opens when a worker gets to it.
    pub fn new<R, F>(
        domain: impl Into<String>,
        path: impl Into<String>,
        opts: PutOptions,
        open: F,
    ) -> Self
    where
        F: FnOnce() -> std::result::Result<R, E> + Send + 'a,
        R: Read + 'a,
    {
        PutItem {
            domain: domain.into(),
            path: path.into(),
            opts,
            open: Box::new(move || open().map(|r| Box::new(r) as Box<dyn Read + 'a>)),
        }
    }

    /// An item whose content is an already open reader (fine for a few items; for many
    /// files prefer [`PutItem::new`], which opens each one only when it is written).
    pub fn from_reader<R>(
        domain: impl Into<String>,
        path: impl Into<String>,
        opts: PutOptions,
        reader: R,
    ) -> Self
    where
        R: Read + Send + 'a,
    {
        Self::new(domain, path, opts, move || Ok(reader))
    }
}

impl<E> fmt::Debug for PutItem<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutItem")
            .field("domain", &self.domain)
            .field("path", &self.path)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// A blob a worker wrote, not indexed yet.
struct Written {
    index: usize,
    wrapped: Vec<u8>,
    cloud: Option<Vec<u8>>,
    id: String,
    size: u64,
}

/// What the workers share.
struct Shared<'m, 'a, E> {
    items: &'m [(String, String, PutOptions)],
    queue: Mutex<std::iter::Enumerate<std::vec::IntoIter<OpenContent<'a, E>>>>,
    /// Blobs on disk so far; kept outside the workers so a panicking one loses none.
    done: Mutex<Vec<Written>>,
    /// Items left out, with the failure `skip` accepted.
    skipped: Mutex<Vec<(usize, E)>>,
    skip: &'m (dyn Fn(&E) -> bool + Sync),
    /// The failure of the lowest item index: the one sequential puts would have reported.
    error: Mutex<Option<(usize, E)>>,
    failed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes a temporary blob unless it was renamed into place (also on panic).
struct TmpBlob(Option<PathBuf>);

impl Drop for TmpBlob {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Device {
    /// Stores many files: as [`Device::put`] for each item in order (parents created,
    /// existing files replaced keeping their `birth`, a directory or symlink in the way is
    /// an error), but the blobs are written by up to 8 threads and the index is updated in
    /// one transaction. Returns each item's plaintext length, in item order.
    ///
    /// All or nothing: on any error (a refused path, an unavailable class, a source that
    /// fails to open or read, the index) every blob written so far is removed and the
    /// index is unchanged. With several failures, the one of the first item is returned.
    pub fn put_many<E>(&mut self, items: Vec<PutItem<'_, E>>) -> Result<Vec<u64>, E>
    where
        E: From<Error> + Send,
    {
        let done = self.put_many_skipping(items, &|_| false)?;
        Ok(done
            .into_iter()
            .map(|r| r.unwrap_or_else(|_| unreachable!("nothing is skipped")))
            .collect())
    }

    /// [`Device::put_many`], except that an item whose failure `skip` accepts (a damaged
    /// source, typically: see [`Error::Source`]) is left out instead of failing the batch:
    /// its result is that error, and the other items are stored. Any other failure is fatal
    /// and undoes the whole batch, as in `put_many`.
    pub fn put_many_skipping<E>(
        &mut self,
        items: Vec<PutItem<'_, E>>,
        skip: &(dyn Fn(&E) -> bool + Sync),
    ) -> Result<Vec<Result<u64, E>>, E>
    where
        E: From<Error> + Send,
    {
        for it in &items {
            check(&it.domain, &it.path)?;
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (meta, opens): (Vec<_>, Vec<_>) = items
            .into_iter()
            .map(|it| ((it.domain, it.path, it.opts), it.open))
            .unzip();
        let (mut written, skipped) = self.write_blobs(&meta, opens, skip)?;
        written.sort_by_key(|w| w.index);
        let replaced = match self.index_many(&meta, &written) {
            Ok(r) => r,
            Err(e) => {
                remove_blobs(&self.dir, &written);
                return Err(e.into());
            }
        };
        let dbp = db_path(&self.dir);
        for id in replaced {
            // A malformed id in a damaged index must not become a path.
            if check_blob_id(&dbp, &id).is_ok() {
                let _ = std::fs::remove_file(blob_path(&self.dir, &id));
            }
        }
        let mut out: Vec<Option<Result<u64, E>>> = (0..meta.len()).map(|_| None).collect();
        for w in &written {
            out[w.index] = Some(Ok(w.size));
        }
        for (index, e) in skipped {
            out[index] = Some(Err(e));
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every item was written or skipped"))
            .collect())
    }

    /// Runs the workers; on failure removes every blob they wrote.
    #[allow(clippy::type_complexity)]
    fn write_blobs<'a, E>(
        &self,
        items: &[(String, String, PutOptions)],
        opens: Vec<OpenContent<'a, E>>,
        skip: &(dyn Fn(&E) -> bool + Sync),
    ) -> Result<(Vec<Written>, Vec<(usize, E)>), E>
    where
        E: From<Error> + Send,
    {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_WORKERS)
            .min(opens.len());
        let shared = Shared {
            items,
            queue: Mutex::new(opens.into_iter().enumerate()),
            done: Mutex::new(Vec::new()),
            skipped: Mutex::new(Vec::new()),
            skip,
            error: Mutex::new(None),
            failed: AtomicBool::new(false),
        };
        let panic = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| s.spawn(|| self.blob_worker(&shared)))
                .collect();
            // Join all before acting on a panic, so no worker is still writing.
            let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
            joined.into_iter().find_map(|r| r.err())
        });
        let done = shared.done.into_inner().unwrap_or_else(|e| e.into_inner());
        let skipped = shared
            .skipped
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let error = shared.error.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = panic {
            remove_blobs(&self.dir, &done);
            std::panic::resume_unwind(p);
        }
        if let Some((_, e)) = error {
            remove_blobs(&self.dir, &done);
            return Err(e);
        }
        Ok((done, skipped))
    }

    /// One worker: takes items until the queue is empty or some item failed.
    fn blob_worker<E>(&self, sh: &Shared<'_, '_, E>)
    where
        E: From<Error>,
    {
        // Reused for every file of this worker; it holds plaintext, so it is wiped on drop
        // (and the used part after each file, in `encrypt_with`).
        let mut buf = Zeroizing::new(vec![0u8; CHUNK]);
        while !sh.failed.load(Ordering::Relaxed) {
            let Some((index, open)) = lock(&sh.queue).next() else {
                break;
            };
            let (domain, path, opts) = &sh.items[index];
            match self.write_blob(domain, path, opts, open, &mut buf) {
                Ok((wrapped, cloud, id, size)) => lock(&sh.done).push(Written {
                    cloud,
                    index,
                    wrapped,
                    id,
                    size,
                }),
                Err(e) if (sh.skip)(&e) => lock(&sh.skipped).push((index, e)),
                Err(e) => {
                    sh.failed.store(true, Ordering::Relaxed);
                    let mut slot = lock(&sh.error);
                    match &*slot {
                        Some((first, _)) if *first < index => {}
                        _ => *slot = Some((index, e)),
                    }
                    break;
                }
            }
        }
    }

    /// Key, wrap, open the source, encrypt to `<id>.tmp`, rename: what [`Device::put`]
    /// does before indexing. Returns the wrapped key, the blob id and the plaintext length.
    fn write_blob<E>(
        &self,
        domain: &str,
        path: &str,
        opts: &PutOptions,
        open: OpenContent<'_, E>,
        buf: &mut [u8],
    ) -> Result<WrittenBlob, E>
    where
        E: From<Error>,
    {
        let key = Key256::random();
        let wrapped = self.wrap_file_key(opts.class, &key)?;
        let cloud = self.cloud_wrap(opts.class, &key);
        let id = hex::encode(&Key256::random().as_bytes()[..16]);
        let blob = blob_path(&self.dir, &id);
        let parent = blob.parent().expect("store/xx");
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let mut src = open()?;
        let mut tmp = TmpBlob(Some(blob.with_extension("tmp")));
        let tmp_path = tmp.0.as_deref().expect("set above");
        let size = encrypt_with(&key, &mut *src, tmp_path, domain, path, buf)?;
        std::fs::rename(tmp_path, &blob).map_err(io(&blob))?;
        tmp.0 = None;
        Ok((wrapped, cloud, id, size))
    }

    /// Indexes every written blob in one transaction, in item order; returns the ids of
    /// the blobs the new rows replaced (to remove once committed).
    fn index_many(
        &self,
        items: &[(String, String, PutOptions)],
        written: &[Written],
    ) -> Result<Vec<String>> {
        let dbp = db_path(&self.dir);
        let now = self.now();
        let mut conn = self.store_db();
        let tx = conn.transaction().map_err(db(&dbp))?;
        let mut replaced = Vec::new();
        for w in written {
            let (domain, path, opts) = &items[w.index];
            let blob = StoredBlob {
                wrapped: &w.wrapped,
                id: &w.id,
                size: w.size,
                cloud: w.cloud.as_deref(),
            };
            if let Some(old) = self.index_file_in(&tx, now, domain, path, opts, &blob)? {
                replaced.push(old);
            }
        }
        tx.commit().map_err(db(&dbp))?;
        Ok(replaced)
    }
}

fn remove_blobs(dir: &Path, written: &[Written]) {
    for w in written {
        let _ = std::fs::remove_file(blob_path(dir, &w.id));
    }
}

/// Encrypts `data` to a new file `dst` through `buf` (at least one chunk long); returns the
/// plaintext length. The part of `buf` that was used is wiped before returning, also on
/// error (whatever of it is not ciphertext yet is plaintext).
pub(crate) fn encrypt_with(
    key: &Key256,
    data: &mut dyn Read,
    dst: &Path,
    domain: &str,
    path: &str,
    buf: &mut [u8],
) -> Result<u64> {
    let mut used = 0;
    let r = encrypt_chunks(key, data, dst, domain, path, &mut buf[..CHUNK], &mut used);
    buf[..used].zeroize();
    r
}

fn encrypt_chunks(
    key: &Key256,
    data: &mut dyn Read,
    dst: &Path,
    domain: &str,
    path: &str,
    buf: &mut [u8],
    used: &mut usize,
) -> Result<u64> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(dst).map_err(io(dst))?;
    let mut enc = Encryptor::new(key);
    let mut filled = 0usize;
    let mut size = 0u64;
    loop {
        let n = match data.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Source {
                    what: format!("content of {domain}/{path}"),
                    source: e,
                })
            }
        };
        if n == 0 {
            break;
        }
        filled += n;
        *used = (*used).max(filled);
        size += n as u64;
        if filled == buf.len() {
            enc.encrypt(buf).expect("aligned");
            f.write_all(buf).map_err(io(dst))?;
            filled = 0;
        }
    }
    let full = filled / BLOCK * BLOCK;
    enc.encrypt(&mut buf[..full]).expect("aligned");
    f.write_all(&buf[..full]).map_err(io(dst))?;
    let last = enc.finish(&buf[full..filled]).expect("short tail");
    f.write_all(&last).map_err(io(dst))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Broken;

    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("broken"))
        }
    }

    #[test]
    fn encrypt_with_wipes_the_plaintext_it_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key256::random();
        let data = vec![0xa5u8; CHUNK + 1000];
        let mut buf = vec![0u8; CHUNK];
        let n = encrypt_with(
            &key,
            &mut &data[..],
            &dir.path().join("ok"),
            "D",
            "p",
            &mut buf,
        )
        .unwrap();
        assert_eq!(n, data.len() as u64);
        assert!(buf.iter().all(|&b| b == 0), "plaintext left after success");
        let mut failing = (&data[..5000]).chain(Broken);
        let dst = dir.path().join("failed");
        assert!(encrypt_with(&key, &mut failing, &dst, "D", "p", &mut buf).is_err());
        assert!(buf.iter().all(|&b| b == 0), "plaintext left after an error");
    }
}
