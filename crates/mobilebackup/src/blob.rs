//! Streaming plaintext out of a blob (a file's content, or the encrypted `Manifest.db`).
//!
//! The plaintext length comes from the PKCS7 padding, not from MBFile `Size`
//! (spec §7.2): the last ciphertext block is decrypted first, with the block
//! before it as IV, so the length is known before any byte is streamed.
//!
//! A reader can also check the blob against the record's `Digest` (SHA-1 of the stored
//! bytes) as it streams, at no second read: [`BlobReader::check_digest`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use dataprotection::cbc::{pkcs7_pad_len, Decryptor, BLOCK};
use dataprotection::Key256;
use sha1::{Digest, Sha1};
use zeroize::Zeroize;

use crate::safe_fs::open_regular;
use crate::{Error, Result};

/// Chunk size for streaming: large enough for AES-NI pipelining and few syscalls.
pub const CHUNK: usize = 1 << 20;

/// A blob whose SHA-1 is not the record's `Digest`: what [`BlobReader::digest_mismatch`]
/// reports, and (in strict mode) the error inside the `io::Error` its final read returns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{path}: SHA-1 {actual} differs from the recorded Digest {expected} (changed after the backup)"
)]
pub struct DigestMismatch {
    /// The blob.
    pub path: PathBuf,
    /// The recorded `Digest`, hex.
    pub expected: String,
    /// The blob's SHA-1, hex.
    pub actual: String,
}

impl From<DigestMismatch> for Error {
    fn from(d: DigestMismatch) -> Self {
        Error::DigestMismatch {
            path: d.path,
            expected: d.expected,
            actual: d.actual,
        }
    }
}

/// The [`DigestMismatch`] carried by `e` (a strict reader's final read error), if any.
pub fn digest_mismatch_in(e: &std::io::Error) -> Option<&DigestMismatch> {
    e.get_ref().and_then(|inner| inner.downcast_ref())
}

/// A read error of the blob at `path` as this crate's error: a strict reader's
/// [`DigestMismatch`] becomes [`Error::DigestMismatch`], anything else [`Error::Io`].
pub fn read_error(path: &Path, e: std::io::Error) -> Error {
    match digest_mismatch_in(&e) {
        Some(d) => d.clone().into(),
        None => Error::Io {
            path: path.into(),
            source: e,
        },
    }
}

/// Checking the stored bytes against a `Digest` while they stream.
struct DigestCheck {
    hasher: Sha1,
    /// The record's `Digest`; `None` when the stored bytes are only hashed
    /// ([`BlobReader::hash_stored`]).
    expected: Option<[u8; 20]>,
    /// The SHA-1 of every stored byte, once read.
    actual: Option<[u8; 20]>,
    /// Fail the final read on a mismatch (restore, import) instead of only reporting it.
    strict: bool,
    /// Set once every stored byte was hashed.
    result: Option<Option<DigestMismatch>>,
}

/// A reader of one blob's plaintext.
pub struct BlobReader {
    path: PathBuf,
    file: File,
    dec: Option<Decryptor>,
    /// Ciphertext bytes not read yet.
    cipher_left: u64,
    /// Plaintext bytes not returned yet.
    plain_left: u64,
    plain_len: u64,
    padding_ok: bool,
    digest: Option<DigestCheck>,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl BlobReader {
    /// Opens a raw (unencrypted) blob.
    pub fn plain(path: &Path) -> Result<Self> {
        let file = open_regular(path)?;
        let len = file.metadata().map_err(Error::io(path))?.len();
        Ok(Self::new(path, file, None, len, len, true))
    }

    /// Opens a blob encrypted with AES-256-CBC (zero IV) and PKCS7.
    ///
    /// A 0-byte blob is an empty file (seen in the wild). A length that is not a
    /// multiple of 16 is damage. Invalid padding is not an error here: the reader
    /// then yields every decrypted byte and [`BlobReader::padding_ok`] is false,
    /// so a caller can keep the data and report the file as suspect.
    pub fn encrypted(path: &Path, key: &Key256) -> Result<Self> {
        let mut file = open_regular(path)?;
        let len = file.metadata().map_err(Error::io(path))?.len();
        if len == 0 {
            return Ok(Self::new(path, file, None, 0, 0, true));
        }
        if len % BLOCK as u64 != 0 {
            return Err(Error::DamagedBlob {
                path: path.into(),
                reason: format!("length {len} is not a multiple of 16 (truncated?)"),
            });
        }
        // Last block, with the previous ciphertext block (or the zero IV) as IV.
        let tail_len = if len >= 32 { 32 } else { 16 };
        let mut tail = [0u8; 32];
        file.seek(SeekFrom::Start(len - tail_len))
            .map_err(Error::io(path))?;
        file.read_exact(&mut tail[..tail_len as usize])
            .map_err(Error::io(path))?;
        let (iv, mut last) = if tail_len == 32 {
            (
                tail[..16].try_into().expect("16"),
                <[u8; 16]>::try_from(&tail[16..]).expect("16"),
            )
        } else {
            ([0u8; 16], <[u8; 16]>::try_from(&tail[..16]).expect("16"))
        };
        Decryptor::with_iv(key, &iv)
            .decrypt(&mut last)
            .expect("one block");
        let pad = pkcs7_pad_len(&last);
        last.zeroize();
        let (plain, ok) = match pad {
            Ok(p) => (len - p as u64, true),
            Err(_) => (len, false),
        };
        file.seek(SeekFrom::Start(0)).map_err(Error::io(path))?;
        Ok(Self::new(
            path,
            file,
            Some(Decryptor::new(key)),
            len,
            plain,
            ok,
        ))
    }

    fn new(
        path: &Path,
        file: File,
        dec: Option<Decryptor>,
        cipher: u64,
        plain: u64,
        ok: bool,
    ) -> Self {
        Self {
            path: path.into(),
            file,
            dec,
            cipher_left: cipher,
            plain_left: plain,
            plain_len: plain,
            padding_ok: ok,
            digest: None,
            buf: Vec::new(),
            pos: 0,
            end: 0,
        }
    }

    /// Plaintext length (from the padding; or the blob length when padding is bad).
    pub fn len(&self) -> u64 {
        self.plain_len
    }

    /// True for an empty plaintext.
    pub fn is_empty(&self) -> bool {
        self.plain_len == 0
    }

    /// False when the final block's PKCS7 padding was invalid.
    pub fn padding_ok(&self) -> bool {
        self.padding_ok
    }

    /// Checks the stored bytes against `expected` (a record's 20-byte `Digest`; any other
    /// length is ignored, as real records without one) while they stream. When the last
    /// byte was read, [`BlobReader::digest_mismatch`] tells the outcome; with `strict`, a
    /// mismatch also fails that final read with an `io::Error` carrying the
    /// [`DigestMismatch`] (see [`read_error`]), so a consumer cannot take the data as good.
    pub fn check_digest(mut self, expected: &[u8], strict: bool) -> Self {
        if let Ok(expected) = <[u8; 20]>::try_from(expected) {
            self.digest = Some(DigestCheck {
                hasher: Sha1::new(),
                expected: Some(expected),
                actual: None,
                strict,
                result: None,
            });
        }
        self
    }

    /// Hashes the stored bytes (SHA-1) as they stream, without comparing them to anything:
    /// [`BlobReader::stored_sha1`] gives the hash once the last byte was read. Replaces a
    /// [`BlobReader::check_digest`] set before.
    pub fn hash_stored(mut self) -> Self {
        self.digest = Some(DigestCheck {
            hasher: Sha1::new(),
            expected: None,
            actual: None,
            strict: false,
            result: None,
        });
        self
    }

    /// The SHA-1 of the stored bytes, once every one was read (with [`BlobReader::hash_stored`]
    /// or [`BlobReader::check_digest`]).
    pub fn stored_sha1(&self) -> Option<[u8; 20]> {
        self.digest.as_ref()?.actual
    }

    /// After the whole plaintext was read: the mismatch, if the blob was checked against a
    /// `Digest` that it does not match. `None` also when no `Digest` was checked.
    pub fn digest_mismatch(&self) -> Option<&DigestMismatch> {
        self.digest.as_ref()?.result.as_ref()?.as_ref()
    }

    /// True when a `Digest` was checked and matched (every stored byte was read).
    pub fn digest_verified(&self) -> bool {
        self.digest
            .as_ref()
            .is_some_and(|d| matches!(d.result, Some(None)))
    }

    fn hash(&mut self, raw: &[u8]) {
        if let Some(d) = self.digest.as_mut() {
            d.hasher.update(raw);
        }
    }

    /// At the end of the plaintext: hashes the stored bytes not read yet (the padding
    /// block), then settles the digest check. Runs once.
    fn finish(&mut self) -> std::io::Result<()> {
        let Some(d) = self.digest.as_mut() else {
            return Ok(());
        };
        if d.result.is_some() {
            return Ok(());
        }
        let mut rest = [0u8; 4096];
        while self.cipher_left > 0 {
            let n = (rest.len() as u64).min(self.cipher_left) as usize;
            self.file.read_exact(&mut rest[..n]).map_err(shrank)?;
            d.hasher.update(&rest[..n]);
            self.cipher_left -= n as u64;
        }
        let actual: [u8; 20] = std::mem::take(&mut d.hasher).finalize().into();
        d.actual = Some(actual);
        let mismatch = d.expected.filter(|e| *e != actual).map(|e| DigestMismatch {
            path: self.path.clone(),
            expected: hex::encode(e),
            actual: hex::encode(actual),
        });
        d.result = Some(mismatch.clone());
        match mismatch {
            Some(m) if d.strict => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, m)),
            _ => Ok(()),
        }
    }

    /// Decrypts the next chunk into the internal buffer; false at the end.
    fn refill(&mut self) -> std::io::Result<bool> {
        if self.plain_left == 0 {
            self.finish()?;
            return Ok(false);
        }
        if self.buf.is_empty() {
            self.buf = vec![0u8; CHUNK.min(self.cipher_left as usize)];
        }
        let n = CHUNK.min(self.cipher_left as usize);
        self.file.read_exact(&mut self.buf[..n]).map_err(shrank)?;
        if let Some(d) = self.digest.as_mut() {
            d.hasher.update(&self.buf[..n]);
        }
        if let Some(dec) = self.dec.as_mut() {
            dec.decrypt(&mut self.buf[..n])
                .map_err(std::io::Error::other)?;
        }
        self.cipher_left -= n as u64;
        let out = (n as u64).min(self.plain_left) as usize;
        self.plain_left -= out as u64;
        self.pos = 0;
        self.end = out;
        Ok(true)
    }

    /// Reads and decrypts whole blocks straight into `out` (at least one block long): no
    /// second buffer to copy through and wipe, which for 100 kB files cost as much as the
    /// decryption itself. Padding bytes decrypted into `out` past the returned length are
    /// zeroed.
    fn read_direct(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = (out.len() / BLOCK * BLOCK)
            .min(CHUNK)
            .min(self.cipher_left as usize);
        self.file.read_exact(&mut out[..n]).map_err(shrank)?;
        self.hash(&out[..n]);
        if let Some(dec) = self.dec.as_mut() {
            dec.decrypt(&mut out[..n]).map_err(std::io::Error::other)?;
        }
        self.cipher_left -= n as u64;
        let give = (n as u64).min(self.plain_left) as usize;
        self.plain_left -= give as u64;
        out[give..n].zeroize();
        Ok(give)
    }

    /// Streams the whole plaintext into `w`, returning the byte count.
    pub fn copy_to(&mut self, w: &mut dyn Write) -> Result<u64> {
        let mut total = 0u64;
        loop {
            if self.pos == self.end && !self.refill().map_err(|e| read_error(&self.path, e))? {
                break;
            }
            w.write_all(&self.buf[self.pos..self.end])
                .map_err(Error::io(&self.path))?;
            total += (self.end - self.pos) as u64;
            self.pos = self.end;
        }
        Ok(total)
    }
}

impl Read for BlobReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.end && out.len() >= BLOCK && self.plain_left > 0 {
            return self.read_direct(out);
        }
        if self.pos == self.end && !self.refill()? {
            return Ok(0);
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for BlobReader {
    fn drop(&mut self) {
        // Plaintext of an encrypted blob should not linger in freed memory.
        if self.dec.is_some() {
            self.buf.zeroize();
        }
    }
}

fn shrank(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        std::io::Error::new(e.kind(), "blob shrank while it was being read")
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataprotection::cbc::encrypt_padded;

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn streams_exact_plaintext_for_many_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key256::random();
        for n in [
            0usize,
            1,
            15,
            16,
            17,
            31,
            32,
            CHUNK - 1,
            CHUNK,
            CHUNK + 16,
            3 * CHUNK + 5,
        ] {
            let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let p = write(dir.path(), &format!("b{n}"), &encrypt_padded(&key, &data));
            let mut r = BlobReader::encrypted(&p, &key).unwrap();
            assert_eq!(r.len(), n as u64);
            assert!(r.padding_ok());
            let mut out = Vec::new();
            assert_eq!(r.copy_to(&mut out).unwrap(), n as u64);
            assert_eq!(out, data, "size {n}");
            let mut via_read = Vec::new();
            BlobReader::encrypted(&p, &key)
                .unwrap()
                .read_to_end(&mut via_read)
                .unwrap();
            assert_eq!(via_read, data);
        }
    }

    /// Reads of every size mix the direct path (≥ one block, decrypted in the caller's
    /// buffer) with the buffered one (shorter reads); both must give the same bytes, for
    /// encrypted and plain blobs, and a short final read must not leak padding.
    #[test]
    fn reads_of_any_size_give_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key256::random();
        for n in [0usize, 1, 15, 16, 17, 33, 100_000, CHUNK + 21] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 % 253) as u8).collect();
            let enc = write(dir.path(), &format!("e{n}"), &encrypt_padded(&key, &data));
            let plain = write(dir.path(), &format!("p{n}"), &data);
            for sizes in [&[1usize][..], &[16], &[17, 3, 40], &[4096, 5], &[CHUNK * 2]] {
                for r in [
                    BlobReader::encrypted(&enc, &key).unwrap(),
                    BlobReader::plain(&plain).unwrap(),
                ] {
                    let mut r = r;
                    let mut out = Vec::new();
                    let mut k = 0;
                    loop {
                        let want = sizes[k % sizes.len()];
                        k += 1;
                        let mut buf = vec![0xAAu8; want];
                        let got = r.read(&mut buf).unwrap();
                        if got == 0 {
                            break;
                        }
                        assert!(
                            buf[got..].iter().all(|&b| b == 0xAA || b == 0),
                            "bytes past the returned length are untouched or zeroed (n={n})"
                        );
                        out.extend_from_slice(&buf[..got]);
                    }
                    assert_eq!(out, data, "size {n}, reads {sizes:?}");
                }
            }
        }
    }

    #[test]
    fn damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key256::random();
        let ct = encrypt_padded(&key, b"hello world, this is 33 bytes lo");
        let p = write(dir.path(), "trunc", &ct[..ct.len() - 5]);
        let e = BlobReader::encrypted(&p, &key).err().unwrap();
        assert!(e.to_string().contains("not a multiple of 16"), "{e}");
        assert!(e.to_string().contains("trunc"), "{e}");
        let p = write(dir.path(), "badpad", &ct);
        let r = BlobReader::encrypted(&p, &Key256::random()).unwrap();
        assert!(!r.padding_ok());
        assert_eq!(r.len(), ct.len() as u64);
        let e = BlobReader::encrypted(&dir.path().join("absent"), &key)
            .err()
            .unwrap();
        assert!(matches!(e, Error::MissingBlob { .. }));
        let p = write(dir.path(), "empty", b"");
        assert_eq!(BlobReader::encrypted(&p, &key).unwrap().len(), 0);
    }

    /// The digest is of the stored bytes, padding block included, whatever the read sizes;
    /// a non-strict reader reports a mismatch, a strict one fails its final read.
    #[test]
    fn digest_is_checked_while_streaming() {
        use sha1::{Digest, Sha1};
        let dir = tempfile::tempdir().unwrap();
        let key = Key256::random();
        for n in [0usize, 1, 16, 31, CHUNK, CHUNK + 3] {
            let data: Vec<u8> = (0..n).map(|i| (i % 249) as u8).collect();
            let ct = encrypt_padded(&key, &data);
            let good = Sha1::digest(&ct);
            for (name, bytes) in [("e", ct.clone()), ("p", data.clone())] {
                let p = write(dir.path(), &format!("{name}{n}"), &bytes);
                let open = || {
                    if name == "e" {
                        BlobReader::encrypted(&p, &key).unwrap()
                    } else {
                        BlobReader::plain(&p).unwrap()
                    }
                };
                let right = Sha1::digest(&bytes);
                assert!(name == "p" || right == good);
                // Matching, read through `Read` with a buffer of exactly the plaintext size.
                let mut r = open().check_digest(&right, true);
                let mut out = vec![0u8; n];
                let mut got = 0;
                loop {
                    let k = r.read(&mut out[got..]).unwrap();
                    if k == 0 {
                        break;
                    }
                    got += k;
                    if got == n {
                        assert_eq!(r.read(&mut [0u8; 32]).unwrap(), 0);
                        break;
                    }
                }
                assert!(
                    r.digest_verified() && r.digest_mismatch().is_none(),
                    "{name}{n}"
                );
                // Not matching: reported, or (strict) the final read fails.
                let mut wrong = right.to_vec();
                wrong[0] ^= 1;
                let mut r = open().check_digest(&wrong, false);
                assert_eq!(r.copy_to(&mut Vec::new()).unwrap(), n as u64);
                let m = r.digest_mismatch().expect("mismatch reported");
                assert_eq!(m.actual, hex::encode(right));
                let e = open()
                    .check_digest(&wrong, true)
                    .copy_to(&mut Vec::new())
                    .unwrap_err();
                assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
                let mut sink = Vec::new();
                let e = open()
                    .check_digest(&wrong, true)
                    .read_to_end(&mut sink)
                    .unwrap_err();
                assert!(digest_mismatch_in(&e).is_some(), "{e}");
            }
        }
    }
}
