//! The upload threads of a push: full packs are handed to them and stored while the
//! chunking threads go on. Storing a pack waits on the disk (an fsync) or the network, and a
//! chunking thread that did it itself left a core idle for that long.
//!
//! One thread for a local folder, as many as the storage asks for otherwise
//! ([`Storage::concurrent_puts`]: two for a server, so that the next pack travels while the
//! server writes the one before). A pack is handed over only to an idle thread, so memory
//! stays at a few packs whatever the data; their buffers come back for the next packs (a
//! fresh 16 MiB buffer per pack costs page faults, and glibc keeps freed ones around in
//! per-thread arenas: the push's peak RSS went from 90 to 165 MiB without this). After each stored pack the thread writes its index entry
//! to the client's journal (if any) and adds it to the push's list, in that order, as the
//! push did before. The first failure is kept; every later call reports it and the push
//! fails: a pack that did not reach the store must never be named by a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::id::Id;
use crate::index::{IndexFile, IndexedPack};
use crate::keys::Keyring;
use crate::pack::Entry;
use crate::storage::{Kind, Storage};
use crate::{Error, Result};

/// A sealed pack: its name, bytes and blobs.
pub(crate) struct SealedPack {
    pub name: Id,
    pub epoch: u32,
    pub bytes: Vec<u8>,
    pub blobs: Vec<Entry>,
}

/// Pack buffers kept for reuse, beyond one per thread.
const POOL: usize = 1;

/// What the thread shares with the push.
struct Shared {
    /// Buffers of stored packs, for the next ones.
    pool: Mutex<Vec<Vec<u8>>>,
    /// How many buffers the pool keeps.
    pool_max: usize,
    uploaded: Mutex<Vec<IndexedPack>>,
    stored_bytes: AtomicU64,
    /// Packs handed over and not yet stored (or failed), with its condition.
    pending: Mutex<usize>,
    idle: Condvar,
    /// The first failure, if any.
    failed: Mutex<Option<Failure>>,
}

/// The first failed upload: the error itself (handed to the first caller that asks; errors
/// are not `Clone`) and its text (for every later caller).
struct Failure {
    error: Option<Error>,
    text: String,
}

/// The upload threads and their queue.
pub(crate) struct Uploader {
    tx: Option<SyncSender<SealedPack>>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Uploader {
    /// Starts the threads (as many as `storage` asks for, 1 to 4).
    pub fn start(
        storage: Arc<dyn Storage>,
        journal: Option<Arc<dyn Storage>>,
        keyring: Keyring,
    ) -> Uploader {
        let n = storage.concurrent_puts().clamp(1, 4);
        let shared = Arc::new(Shared {
            pool: Mutex::new(Vec::new()),
            pool_max: POOL + n,
            uploaded: Mutex::new(Vec::new()),
            stored_bytes: AtomicU64::new(0),
            pending: Mutex::new(0),
            idle: Condvar::new(),
            failed: Mutex::new(None),
        });
        // A rendezvous channel: a pack is handed over only when a thread is free to take it.
        let (tx, rx) = sync_channel::<SealedPack>(0);
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..n)
            .map(|_| {
                let (s, rx, st, j, k) = (
                    shared.clone(),
                    rx.clone(),
                    storage.clone(),
                    journal.clone(),
                    keyring.clone(),
                );
                std::thread::Builder::new()
                    .name("vault-upload".into())
                    .spawn(move || run(&rx, st.as_ref(), j.as_deref(), &k, &s))
                    .expect("spawn an upload thread")
            })
            .collect();
        Uploader {
            tx: Some(tx),
            threads,
            shared,
        }
    }

    /// The failure so far, if any: the error itself the first time, then its text.
    fn check(&self) -> Result<()> {
        match self.shared.failed.lock().expect("lock").as_mut() {
            None => Ok(()),
            Some(f) => Err(f.error.take().unwrap_or_else(|| {
                Error::Invalid(format!("an earlier upload failed: {}", f.text))
            })),
        }
    }

    /// Hands a pack to an upload thread (waits until one is free).
    pub fn send(&self, pack: SealedPack) -> Result<()> {
        self.check()?;
        let tx = self.tx.as_ref().expect("open until drop");
        *self.shared.pending.lock().expect("lock") += 1;
        if tx.send(pack).is_err() {
            done(&self.shared);
            self.check()?;
            return Err(Error::Invalid("the upload threads stopped".into()));
        }
        Ok(())
    }

    /// Waits until every pack handed over is stored; the first failure if one was not.
    pub fn flush(&self) -> Result<()> {
        let mut pending = self.shared.pending.lock().expect("lock");
        while *pending > 0 {
            pending = self.shared.idle.wait(pending).expect("lock");
        }
        drop(pending);
        self.check()
    }

    /// A buffer of a stored pack with room for `bytes`, or a new one.
    pub fn buffer(&self, bytes: usize) -> Vec<u8> {
        let mut pool = self.shared.pool.lock().expect("lock");
        match pool.iter().position(|b| b.capacity() >= bytes) {
            Some(i) => pool.swap_remove(i),
            None => Vec::with_capacity(bytes),
        }
    }

    /// Takes the packs stored since the last call.
    pub fn take_uploaded(&self) -> Vec<IndexedPack> {
        std::mem::take(&mut *self.shared.uploaded.lock().expect("lock"))
    }

    /// Bytes of packs stored.
    pub fn stored_bytes(&self) -> u64 {
        self.shared.stored_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Uploader {
    /// Lets the threads store what was handed over and end: nothing keeps writing after the
    /// push that started them has returned.
    fn drop(&mut self) {
        drop(self.tx.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One pack handed over is done with (stored or failed).
fn done(shared: &Shared) {
    let mut pending = shared.pending.lock().expect("lock");
    *pending -= 1;
    if *pending == 0 {
        shared.idle.notify_all();
    }
}

fn run(
    rx: &Mutex<Receiver<SealedPack>>,
    storage: &dyn Storage,
    journal: Option<&dyn Storage>,
    keyring: &Keyring,
    shared: &Shared,
) {
    loop {
        // One thread waits on the channel at a time; the others wait for the lock.
        let Ok(pack) = rx.lock().expect("lock").recv() else {
            return;
        };
        store(pack, storage, journal, keyring, shared);
        done(shared);
    }
}

fn store(
    pack: SealedPack,
    storage: &dyn Storage,
    journal: Option<&dyn Storage>,
    keyring: &Keyring,
    shared: &Shared,
) {
    // After a failure the rest is dropped: the push is failing.
    if shared.failed.lock().expect("lock").is_some() {
        return;
    }
    let size = pack.bytes.len() as u64;
    let (r, back) = storage.put_buf(Kind::Data, &pack.name.to_hex(), pack.bytes);
    if let Some(buf) = back {
        let mut pool = shared.pool.lock().expect("lock");
        if pool.len() < shared.pool_max {
            pool.push(buf);
        }
    }
    if let Err(e) = r {
        shared
            .failed
            .lock()
            .expect("lock")
            .get_or_insert_with(|| Failure {
                text: e.to_string(),
                error: Some(e),
            });
        return;
    }
    shared.stored_bytes.fetch_add(size, Ordering::Relaxed);
    let entry = IndexedPack {
        pack: pack.name,
        epoch: pack.epoch,
        size,
        blobs: pack.blobs,
    };
    if let Some(j) = journal {
        // Best effort: without the entry a resumed push reads the header, or stores the
        // pack's chunks again; never wrong, only slower.
        let _ = IndexFile {
            supersedes: Vec::new(),
            packs: vec![entry.clone()],
        }
        .store(j, keyring);
    }
    shared.uploaded.lock().expect("lock").push(entry);
}
