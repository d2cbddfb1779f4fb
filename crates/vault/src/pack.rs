//! Packs: many independently sealed blobs in one object, so the store sees a few large
//! uploads instead of one per chunk, and a blob's size hides in its pack's.
//!
//! ```text
//! "KBVP" ‖ version ‖ epoch (u32 LE) ‖ blob₁ … blobₙ ‖ sealed header ‖ header length (u32 LE)
//! ```
//!
//! Each blob is `seal(frame(data))` with its ID and kind as associated data (a blob cannot be
//! passed off as another). The header (the list of blobs: ID, kind, offset, sealed length,
//! plain length) is sealed too and sits at the end, so a writer streams blobs out and a reader
//! finds the header with two range reads. A pack is named by the BLAKE3 hash of its bytes.

use crate::crypto::{open, padme, seal, EpochKey, SEAL_OVERHEAD};
use crate::id::Id;
use crate::keys::Keyring;
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"KBVP";
const VERSION: u8 = 1;
/// Bytes before the first blob.
pub const HEAD_LEN: u64 = 9;
/// Largest header accepted (a pack of 16 MiB holds at most a few thousand blobs).
pub const MAX_HEADER: u32 = 16 << 20;

/// What a blob holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BlobKind {
    /// File content.
    Data,
    /// A serialized tree (the file list of a snapshot).
    Tree,
}

/// One blob of a pack, as its header lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The chunk's keyed ID.
    pub id: Id,
    /// Data or tree.
    pub kind: BlobKind,
    /// Offset of its seal in the pack.
    pub offset: u32,
    /// Length of its seal.
    pub len: u32,
    /// Length of the chunk's plaintext.
    pub raw_len: u32,
}

fn blob_aad(id: &Id, kind: BlobKind) -> [u8; 33] {
    let mut a = [0u8; 33];
    a[..32].copy_from_slice(&id.0);
    a[32] = kind as u8;
    a
}

fn header_aad(epoch: u32) -> Vec<u8> {
    let mut a = b"keybag vault pack header ".to_vec();
    a.extend_from_slice(&epoch.to_le_bytes());
    a
}

/// Seals one chunk as a blob (the expensive part, done outside any lock).
pub fn seal_blob(key: &EpochKey, id: &Id, kind: BlobKind, data: &[u8]) -> Vec<u8> {
    seal_blob_with(key, id, kind, data, true)
}

/// [`seal_blob`], zstd-compressed only when `compress` (and smaller).
pub fn seal_blob_with(
    key: &EpochKey,
    id: &Id,
    kind: BlobKind,
    data: &[u8],
    compress: bool,
) -> Vec<u8> {
    crate::crypto::seal_framed(&key.enc, &blob_aad(id, kind), data, compress)
}

/// Opens a blob read from a pack sealed under `epoch`.
pub fn open_blob(
    keyring: &Keyring,
    epoch: u32,
    pack: &Id,
    e: &Entry,
    sealed: &[u8],
) -> Result<Vec<u8>> {
    let what = format!("data/{pack} blob {}", e.id.short());
    let key = keyring
        .epoch(epoch)
        .ok_or_else(|| Error::corrupt(&what, format!("key epoch {epoch} is not in the keyring")))?;
    let framed = open(&key.enc, &blob_aad(&e.id, e.kind), sealed)
        .ok_or_else(|| Error::corrupt(&what, "seal does not open (damaged or forged)"))?;
    // The seal binds the content to its ID and kind (associated data), and only a holder of
    // the keys can seal: no second hash of the plaintext is needed (and a blob re-sealed under
    // a newer epoch keeps the ID its first epoch's key gave it).
    crate::crypto::unframe_owned(framed, e.raw_len as usize).map_err(|r| Error::corrupt(&what, r))
}

/// A pack being filled.
pub struct PackWriter {
    epoch: u32,
    buf: Vec<u8>,
    entries: Vec<Entry>,
    pad_below: usize,
}

impl PackWriter {
    /// An empty pack for the keys of `epoch`.
    pub fn new(epoch: u32) -> PackWriter {
        PackWriter::with_capacity(epoch, 1 << 20)
    }

    /// [`PackWriter::new`] with room for `bytes` (a pack filled to its target size is not
    /// copied as it grows; untouched room costs address space, not memory).
    pub fn with_capacity(epoch: u32, bytes: usize) -> PackWriter {
        PackWriter::with_buffer(epoch, Vec::with_capacity(bytes))
    }

    /// [`PackWriter::new`] in a buffer that held an earlier pack (cleared here).
    pub fn with_buffer(epoch: u32, mut buf: Vec<u8>) -> PackWriter {
        buf.clear();
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        buf.extend_from_slice(&epoch.to_le_bytes());
        PackWriter {
            epoch,
            buf,
            entries: Vec::new(),
            pad_below: 0,
        }
    }

    /// Appends an already sealed blob.
    pub fn push(&mut self, id: Id, kind: BlobKind, raw_len: u32, sealed: &[u8]) {
        self.entries.push(Entry {
            id,
            kind,
            offset: self.buf.len() as u32,
            len: sealed.len() as u32,
            raw_len,
        });
        self.buf.extend_from_slice(sealed);
    }

    /// Pads the finished pack to its PADME size when it is smaller than `bytes` (a push's or
    /// a prune's target pack size): a pack holding a few blobs (the last of a push) would
    /// otherwise give their sizes away, blobs being unpadded. Full packs are not padded
    /// (the sum of many blobs says nothing of one).
    pub fn pad_below(mut self, bytes: usize) -> PackWriter {
        self.pad_below = bytes;
        self
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The finished pack: its name, bytes and entries.
    pub fn finish(mut self, key: &EpochKey) -> (Id, Vec<u8>, Vec<Entry>) {
        debug_assert_eq!(key.epoch, self.epoch);
        let mut header = postcard::to_stdvec(&self.entries).expect("serializable");
        // Padding goes inside the sealed header, after the entries (whose decoder ignores
        // what follows them): the pack keeps its layout, and old readers read it.
        let total = (self.buf.len() + header.len() + SEAL_OVERHEAD + 4) as u64;
        if (total as usize) < self.pad_below {
            header.resize(header.len() + (padme(total) - total) as usize, 0);
        }
        let sealed = seal(&key.enc, &header_aad(self.epoch), &header);
        self.buf.extend_from_slice(&sealed);
        self.buf
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        (Id::of_bytes(&self.buf), self.buf, self.entries)
    }
}

/// The epoch of a pack from its first bytes.
pub fn pack_epoch(pack: &Id, head: &[u8]) -> Result<u32> {
    if head.len() < HEAD_LEN as usize || &head[..4] != MAGIC || head[4] != VERSION {
        return Err(Error::corrupt(format!("data/{pack}"), "not a vault pack"));
    }
    Ok(u32::from_le_bytes(head[5..9].try_into().expect("4")))
}

/// The length of a pack's sealed header, from its last four bytes, checked against the
/// pack's size.
pub fn header_len(pack: &Id, size: u64, tail: &[u8]) -> Result<u32> {
    let n = u32::from_le_bytes(
        tail.try_into()
            .map_err(|_| Error::corrupt(format!("data/{pack}"), "pack too short for a header"))?,
    );
    if n > MAX_HEADER || (n as u64) + 4 + HEAD_LEN > size {
        return Err(Error::corrupt(
            format!("data/{pack}"),
            format!("header length {n} does not fit a pack of {size} bytes"),
        ));
    }
    Ok(n)
}

/// Opens a pack's sealed header and checks every entry lies within the blob area.
pub fn open_header(
    keyring: &Keyring,
    pack: &Id,
    epoch: u32,
    size: u64,
    sealed: &[u8],
) -> Result<Vec<Entry>> {
    let what = format!("data/{pack}");
    let key = keyring
        .epoch(epoch)
        .ok_or_else(|| Error::corrupt(&what, format!("key epoch {epoch} is not in the keyring")))?;
    let plain = open(&key.enc, &header_aad(epoch), sealed)
        .ok_or_else(|| Error::corrupt(&what, "header seal does not open"))?;
    let entries: Vec<Entry> =
        postcard::from_bytes(&plain).map_err(|e| Error::corrupt(&what, format!("header: {e}")))?;
    let blob_end = size - 4 - sealed.len() as u64;
    for e in &entries {
        if (e.offset as u64) < HEAD_LEN || e.offset as u64 + e.len as u64 > blob_end {
            return Err(Error::corrupt(
                &what,
                "header lists a blob outside the pack",
            ));
        }
    }
    Ok(entries)
}

/// The epoch and header of a whole pack held in memory.
pub fn parse(keyring: &Keyring, pack: &Id, bytes: &[u8]) -> Result<(u32, Vec<Entry>)> {
    let size = bytes.len() as u64;
    if size < HEAD_LEN + 4 {
        return Err(Error::corrupt(
            format!("data/{pack}"),
            "too short for a pack",
        ));
    }
    let epoch = pack_epoch(pack, &bytes[..HEAD_LEN as usize])?;
    let hl = header_len(pack, size, &bytes[bytes.len() - 4..])? as usize;
    let sealed = &bytes[bytes.len() - 4 - hl..bytes.len() - 4];
    Ok((epoch, open_header(keyring, pack, epoch, size, sealed)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Params;

    #[test]
    fn a_small_pack_is_padded_and_parses_the_same() {
        let kr = Keyring::new(Id::of_bytes(b"r"), Params::default());
        let key = kr.current();
        for n in [1usize, 777, 105_000] {
            let data = vec![3u8; n];
            let id = key.chunk_id(&data);
            let sealed = seal_blob(key, &id, BlobKind::Data, &data);
            let mut plain = PackWriter::new(key.epoch);
            plain.push(id, BlobKind::Data, n as u32, &sealed);
            let mut padded = PackWriter::new(key.epoch).pad_below(16 << 20);
            padded.push(id, BlobKind::Data, n as u32, &sealed);
            let (_, pb, pe) = plain.finish(key);
            let (name, bytes, entries) = padded.finish(key);
            assert_eq!(bytes.len() as u64, padme(pb.len() as u64), "{n}");
            assert_eq!(entries, pe);
            let (_, got) = parse(&kr, &name, &bytes).unwrap();
            assert_eq!(got, entries);
            let e = &got[0];
            let blob = &bytes[e.offset as usize..(e.offset + e.len) as usize];
            assert_eq!(open_blob(&kr, key.epoch, &name, e, blob).unwrap(), data);
        }
        // A full pack (over the threshold) is not padded.
        let mut w = PackWriter::new(key.epoch).pad_below(10);
        let id = key.chunk_id(b"x");
        w.push(
            id,
            BlobKind::Data,
            1,
            &seal_blob(key, &id, BlobKind::Data, b"x"),
        );
        let mut w2 = PackWriter::new(key.epoch);
        w2.push(
            id,
            BlobKind::Data,
            1,
            &seal_blob(key, &id, BlobKind::Data, b"x"),
        );
        assert_eq!(w.finish(key).1.len(), w2.finish(key).1.len());
    }

    #[test]
    fn a_pack_round_trips_and_binds_its_blobs() {
        let kr = Keyring::new(Id::of_bytes(b"r"), Params::default());
        let key = kr.current();
        let mut w = PackWriter::new(key.epoch);
        let datas: Vec<Vec<u8>> = vec![b"one".to_vec(), vec![5; 100_000], vec![]];
        for d in &datas {
            let id = key.chunk_id(d);
            w.push(
                id,
                BlobKind::Data,
                d.len() as u32,
                &seal_blob(key, &id, BlobKind::Data, d),
            );
        }
        let (name, bytes, entries) = w.finish(key);
        assert_eq!(name, Id::of_bytes(&bytes));
        let size = bytes.len() as u64;
        let hl = header_len(&name, size, &bytes[bytes.len() - 4..]).unwrap();
        let hstart = bytes.len() - 4 - hl as usize;
        let epoch = pack_epoch(&name, &bytes[..9]).unwrap();
        let got = open_header(&kr, &name, epoch, size, &bytes[hstart..bytes.len() - 4]).unwrap();
        assert_eq!(got, entries);
        for (e, d) in got.iter().zip(&datas) {
            let sealed = &bytes[e.offset as usize..(e.offset + e.len) as usize];
            assert_eq!(&open_blob(&kr, epoch, &name, e, sealed).unwrap(), d);
            // The same seal under another ID or kind does not open.
            let mut lie = e.clone();
            lie.id = Id::of_bytes(b"other");
            assert!(open_blob(&kr, epoch, &name, &lie, sealed).is_err());
            lie = e.clone();
            lie.kind = BlobKind::Tree;
            assert!(open_blob(&kr, epoch, &name, &lie, sealed).is_err());
        }
        assert!(header_len(&name, 10, &u32::MAX.to_le_bytes()).is_err());
    }
}
