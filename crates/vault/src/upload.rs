//! The upload thread of a push: full packs are handed to it and stored one after the other
//! while the chunking threads go on. Storing a pack waits on the disk (an fsync) or the
//! network, and a chunking thread that did it itself left a core idle for that long.
//!
//! At most one pack waits in the queue besides the one being stored, so memory stays at a
//! few packs whatever the data; their buffers come back for the next packs (a fresh 16 MiB
//! buffer per pack costs page faults, and glibc keeps freed ones around in per-thread
//! arenas: the push's peak RSS went from 90 to 165 MiB without this). After each stored pack the thread writes its index entry
//! to the client's journal (if any) and adds it to the push's list, in that order, as the
//! push did before. The first failure is kept; every later call reports it and the push
//! fails: a pack that did not reach the store must never be named by a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
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

enum Msg {
    Pack(SealedPack),
    /// Answered once everything sent before it is stored (or failed).
    Flush(SyncSender<()>),
}

/// Pack buffers kept for reuse.
const POOL: usize = 2;

/// What the thread shares with the push.
struct Shared {
    /// Buffers of stored packs, for the next ones.
    pool: Mutex<Vec<Vec<u8>>>,
    uploaded: Mutex<Vec<IndexedPack>>,
    stored_bytes: AtomicU64,
    /// The first failure, as text (errors are not `Clone`; the first caller gets it whole).
    failed: Mutex<Option<Error>>,
    failed_text: Mutex<Option<String>>,
}

/// The upload thread and its queue.
pub(crate) struct Uploader {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Uploader {
    /// Starts the thread.
    pub fn start(
        storage: Arc<dyn Storage>,
        journal: Option<Arc<dyn Storage>>,
        keyring: Keyring,
    ) -> Uploader {
        let shared = Arc::new(Shared {
            pool: Mutex::new(Vec::new()),
            uploaded: Mutex::new(Vec::new()),
            stored_bytes: AtomicU64::new(0),
            failed: Mutex::new(None),
            failed_text: Mutex::new(None),
        });
        let (tx, rx) = sync_channel::<Msg>(0);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vault-upload".into())
            .spawn(move || run(rx, storage.as_ref(), journal.as_deref(), &keyring, &s))
            .expect("spawn the upload thread");
        Uploader {
            tx: Some(tx),
            thread: Some(thread),
            shared,
        }
    }

    /// The failure so far, if any: the error itself the first time, then its text.
    fn check(&self) -> Result<()> {
        if let Some(e) = self.shared.failed.lock().expect("lock").take() {
            return Err(e);
        }
        match self.shared.failed_text.lock().expect("lock").as_ref() {
            Some(t) => Err(Error::Invalid(format!("an earlier upload failed: {t}"))),
            None => Ok(()),
        }
    }

    /// Queues a pack (waits while the queue is full).
    pub fn send(&self, pack: SealedPack) -> Result<()> {
        self.check()?;
        let tx = self.tx.as_ref().expect("open until drop");
        if tx.send(Msg::Pack(pack)).is_err() {
            self.check()?;
            return Err(Error::Invalid("the upload thread stopped".into()));
        }
        Ok(())
    }

    /// Waits until everything queued is stored; the first failure if one was not.
    pub fn flush(&self) -> Result<()> {
        let (done_tx, done_rx) = sync_channel(1);
        let tx = self.tx.as_ref().expect("open until drop");
        if tx.send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
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
    /// Lets the thread store what is queued and end: nothing keeps writing after the push
    /// that started it has returned.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    rx: Receiver<Msg>,
    storage: &dyn Storage,
    journal: Option<&dyn Storage>,
    keyring: &Keyring,
    shared: &Shared,
) {
    for msg in rx {
        let pack = match msg {
            Msg::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Msg::Pack(p) => p,
        };
        // After a failure the rest is dropped: the push is failing.
        if shared.failed_text.lock().expect("lock").is_some() {
            continue;
        }
        if let Err(e) = storage.put(Kind::Data, &pack.name.to_hex(), &pack.bytes) {
            *shared.failed_text.lock().expect("lock") = Some(e.to_string());
            *shared.failed.lock().expect("lock") = Some(e);
            continue;
        }
        shared
            .stored_bytes
            .fetch_add(pack.bytes.len() as u64, Ordering::Relaxed);
        let entry = IndexedPack {
            pack: pack.name,
            epoch: pack.epoch,
            size: pack.bytes.len() as u64,
            blobs: pack.blobs,
        };
        {
            let mut pool = shared.pool.lock().expect("lock");
            if pool.len() < POOL {
                pool.push(pack.bytes);
            }
        }
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
}
