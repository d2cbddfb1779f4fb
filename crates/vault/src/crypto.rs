//! Sealing and naming: XChaCha20-Poly1305 with random 192-bit nonces (no nonce state to
//! share between devices writing one repository), keyed BLAKE3 chunk IDs, zstd, and PADME
//! padding so a blob's sealed length shows little of its content's length.
//!
//! Pure functions of bytes and keys: no I/O.

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::id::Id;

/// Bytes a seal adds: the 24-byte nonce and the 16-byte tag.
pub const SEAL_OVERHEAD: usize = 24 + 16;

/// A 256-bit secret, wiped on drop, never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop, serde::Serialize, serde::Deserialize)]
pub struct Key32(pub [u8; 32]);

impl Key32 {
    /// 32 random bytes from the OS generator.
    pub fn random() -> Key32 {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Key32(k)
    }
}

impl std::fmt::Debug for Key32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key32(redacted)")
    }
}

/// The keys of one key epoch: what seals data, what names chunks, what keys the chunker.
/// A repository starts at epoch 0; retiring a leaked master key adds an epoch.
#[derive(Clone, Zeroize, ZeroizeOnDrop, serde::Serialize, serde::Deserialize)]
pub struct EpochKey {
    /// Epoch number (stored in clear in front of every sealed object, to pick the key).
    pub epoch: u32,
    /// Seals blobs and objects.
    pub enc: Key32,
    /// Keys BLAKE3 for chunk IDs, so IDs say nothing about content to the store.
    pub id: Key32,
    /// XOR-ed into the chunker's gear table, so cut points depend on a secret.
    pub chunker_seed: u64,
}

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EpochKey({}, redacted)", self.epoch)
    }
}

impl EpochKey {
    /// Fresh random keys for `epoch`.
    pub fn random(epoch: u32) -> EpochKey {
        EpochKey {
            epoch,
            enc: Key32::random(),
            id: Key32::random(),
            chunker_seed: rand::rngs::OsRng.next_u64(),
        }
    }

    /// The keyed ID of a chunk's plaintext.
    pub fn chunk_id(&self, data: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id.0, data).as_bytes())
    }
}

/// Seals `plain` under `key` with associated data `aad`: `nonce ‖ ciphertext ‖ tag`.
pub fn seal(key: &Key32, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
        .expect("XChaCha20-Poly1305 takes any length");
    let mut out = Vec::with_capacity(24 + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Opens what [`seal`] made; `None` when the key, the associated data or a byte is wrong.
pub fn open(key: &Key32, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD {
        return None;
    }
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    cipher
        .decrypt(
            XNonce::from_slice(&sealed[..24]),
            Payload {
                msg: &sealed[24..],
                aad,
            },
        )
        .ok()
}

/// PADME (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and Communication
/// with PURBs", 2019): rounds `len` up so that at most O(log log len) bits of it remain, at
/// most 12 % overhead (tarsnap pads its chunks the same way since 1.0.41).
pub fn padme(len: u64) -> u64 {
    let mask = padme_granule(len) - 1;
    (len + mask) & !mask
}

/// The power of two PADME rounds `len` to (1 below 2).
pub fn padme_granule(len: u64) -> u64 {
    if len < 2 {
        return 1;
    }
    let e = 63 - len.leading_zeros() as u64; // floor(log2(len))
    let s = 64 - e.leading_zeros() as u64; // floor(log2(e)) + 1
    1u64 << (e - s)
}

/// How a blob's payload is stored inside its seal.
const RAW: u8 = 0;
const ZSTD: u8 = 1;

/// Largest plaintext a blob may expand to (zstd bombs in a forged blob are refused).
pub const MAX_BLOB_PLAIN: usize = 64 << 20;

thread_local! {
    /// This thread's zstd context: making one per blob (zstd::bulk::compress) allocated and
    /// cleared its tables every time, 6 % of a push's CPU.
    static ZSTD_CTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd level 3 of `data`, on this thread's context (empty on failure: stored raw).
fn zstd_compress(data: &[u8]) -> Vec<u8> {
    let ctx = ZSTD_CTX.with(|c| c.borrow_mut().take());
    let Some(mut ctx) = ctx.or_else(|| zstd::bulk::Compressor::new(3).ok()) else {
        return Vec::new();
    };
    let out = ctx.compress(data).unwrap_or_default();
    ZSTD_CTX.with(|c| *c.borrow_mut() = Some(ctx));
    out
}

/// The plaintext of a sealed blob: `[u8 format][u32 LE length][payload]`, where the payload
/// is the data, zstd-compressed when that is smaller. Not padded: blob sizes are hidden by
/// the pack (whose sealed header alone says where blobs begin; a pack smaller than its
/// target is padded as a whole, see [`crate::pack::PackWriter::finish`]) and by reads in
/// PADME-aligned windows ([`crate::Repository::read_blob`]). Blobs written padded by earlier
/// versions (zeros after the payload) still unframe.
pub fn frame_blob(data: &[u8], compress: bool) -> Vec<u8> {
    let mut out = Vec::new();
    frame_into(&mut out, data, compress);
    out
}

/// Appends [`frame_blob`]`(data, compress)` to `out`.
fn frame_into(out: &mut Vec<u8>, data: &[u8], compress: bool) {
    let packed;
    let (format, payload): (u8, &[u8]) = if compress && data.len() >= 64 {
        packed = zstd_compress(data);
        if !packed.is_empty() && packed.len() < data.len() {
            (ZSTD, &packed)
        } else {
            (RAW, data)
        }
    } else {
        (RAW, data)
    };
    out.reserve(5 + payload.len() + 16);
    out.push(format);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// `seal(key, aad, &frame_blob(data, compress))`, framed and encrypted in one buffer: the
/// data is copied once (three copies and allocations per blob made 1 GB pushes pay for
/// 3 GB of memory traffic).
pub fn seal_framed(key: &Key32, aad: &[u8], data: &[u8], compress: bool) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(24 + 5 + data.len() + 16);
    out.extend_from_slice(&nonce);
    frame_into(&mut out, data, compress);
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, &mut out[24..])
        .expect("XChaCha20-Poly1305 takes any length");
    out.extend_from_slice(&tag);
    out
}

/// [`unframe_blob`] of an owned frame: a raw payload is moved to the front of the same
/// buffer rather than copied into a new one.
pub fn unframe_owned(mut framed: Vec<u8>, raw_len: usize) -> Result<Vec<u8>, String> {
    if framed.first() != Some(&RAW) || framed.len() < 5 {
        return unframe_blob(&framed, raw_len);
    }
    let len = u32::from_le_bytes(framed[1..5].try_into().expect("4")) as usize;
    if 5 + len > framed.len() {
        return Err("blob frame length runs past its end".into());
    }
    if len != raw_len {
        return Err(format!("blob holds {len} bytes, the index says {raw_len}"));
    }
    framed.copy_within(5..5 + len, 0);
    framed.truncate(len);
    Ok(framed)
}

/// The data of a framed blob ([`frame_blob`]); `raw_len` is what the index says it holds.
pub fn unframe_blob(framed: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    if framed.len() < 5 {
        return Err("blob shorter than its frame".into());
    }
    let len = u32::from_le_bytes(framed[1..5].try_into().expect("4")) as usize;
    let payload = framed
        .get(5..5 + len)
        .ok_or("blob frame length runs past its end")?;
    if raw_len > MAX_BLOB_PLAIN {
        return Err(format!("blob of {raw_len} bytes is over the cap"));
    }
    let data = match framed[0] {
        RAW => payload.to_vec(),
        ZSTD => zstd::bulk::decompress(payload, raw_len).map_err(|e| format!("zstd: {e}"))?,
        f => return Err(format!("unknown blob format {f}")),
    };
    if data.len() != raw_len {
        return Err(format!(
            "blob holds {} bytes, the index says {raw_len}",
            data.len()
        ));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {

    #[test]
    fn seal_framed_is_seal_of_the_frame() {
        let k = Key32([7; 32]);
        for (data, compress) in [
            (vec![1u8; 100_000], true),
            (vec![1u8; 100_000], false),
            (
                (0..70_000u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect(),
                true,
            ),
            (Vec::new(), true),
        ] {
            let s = seal_framed(&k, b"aad", &data, compress);
            let framed = open(&k, b"aad", &s).unwrap();
            assert_eq!(framed, frame_blob(&data, compress));
            assert_eq!(unframe_blob(&framed, data.len()).unwrap(), data);
            assert_eq!(unframe_owned(framed.clone(), data.len()).unwrap(), data);
            assert!(unframe_owned(framed, data.len() + 1).is_err());
            assert!(open(&k, b"other", &s).is_none());
        }
    }

    use super::*;

    #[test]
    fn seal_open_and_every_kind_of_tampering() {
        let k = Key32::random();
        let s = seal(&k, b"ad", b"hello");
        assert_eq!(s.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(open(&k, b"ad", &s).unwrap(), b"hello");
        assert!(open(&k, b"other", &s).is_none(), "associated data is bound");
        assert!(open(&Key32::random(), b"ad", &s).is_none());
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert!(open(&k, b"ad", &t).is_none(), "byte {i}");
        }
        assert!(open(&k, b"ad", &s[..10]).is_none());
        assert_ne!(seal(&k, b"ad", b"hello"), s, "random nonces");
    }

    #[test]
    fn padme_matches_the_paper() {
        // Values from the PURBs paper's definition: 9 → 10? (e=3, s=2, 1 bit cleared).
        assert_eq!(padme(0), 0);
        assert_eq!(padme(1), 1);
        assert_eq!(padme(9), 10);
        assert_eq!(padme(100), 104);
        assert_eq!(padme(1000), 1024);
        assert_eq!(padme(1_000_000), 1_015_808);
        assert_eq!(padme_granule(105_005), 2048);
        for n in (2..200_000u64).step_by(97) {
            let p = padme(n);
            assert!(
                p >= n && (p - n) as f64 <= 0.12 * n as f64 + 1.0,
                "{n} → {p}"
            );
        }
    }

    #[test]
    fn frames_round_trip_and_refuse_lies() {
        let k = EpochKey::random(0);
        for data in [
            vec![],
            vec![7u8; 10],
            vec![0u8; 100_000],
            (0..5000u32).flat_map(|i| i.to_le_bytes()).collect(),
        ] {
            let f = frame_blob(&data, true);
            assert!(f.len() <= 5 + data.len(), "no padding");
            assert_eq!(unframe_blob(&f, data.len()).unwrap(), data);
            assert!(unframe_blob(&f, data.len() + 1).is_err());
            // A frame padded as earlier versions wrote it still unframes.
            let mut padded = f.clone();
            padded.resize(padme(f.len() as u64) as usize + 64, 0);
            assert_eq!(unframe_blob(&padded, data.len()).unwrap(), data);
        }
        assert!(unframe_blob(&[1, 255, 255, 255, 255], 3).is_err());
        assert!(unframe_blob(&[9, 0, 0, 0, 0], 0).is_err());
        assert_ne!(
            k.chunk_id(b"x"),
            EpochKey::random(0).chunk_id(b"x"),
            "keyed"
        );
        assert_eq!(k.chunk_id(b"x"), k.chunk_id(b"x"));
    }
}
