//! Streaming plaintext out of a blob (a file's content, or the encrypted `Manifest.db`).
//!
//! The plaintext length comes from the PKCS7 padding, not from MBFile `Size`
//! (spec §7.2): the last ciphertext block is decrypted first, with the block
//! before it as IV, so the length is known before any byte is streamed.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use dataprotection::cbc::{pkcs7_pad_len, Decryptor, BLOCK};
use dataprotection::Key256;
use zeroize::Zeroize;

use crate::{Error, Result};

/// Chunk size for streaming: large enough for AES-NI pipelining and few syscalls.
pub const CHUNK: usize = 1 << 20;

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
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl BlobReader {
    /// Opens a raw (unencrypted) blob.
    pub fn plain(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| open_err(path, e))?;
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
        let mut file = File::open(path).map_err(|e| open_err(path, e))?;
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

    /// Decrypts the next chunk into the internal buffer; false at the end.
    fn refill(&mut self) -> std::io::Result<bool> {
        if self.plain_left == 0 {
            return Ok(false);
        }
        if self.buf.is_empty() {
            self.buf = vec![0u8; CHUNK.min(self.cipher_left as usize)];
        }
        let n = CHUNK.min(self.cipher_left as usize);
        self.file.read_exact(&mut self.buf[..n]).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                std::io::Error::new(e.kind(), "blob shrank while it was being read")
            } else {
                e
            }
        })?;
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
        self.file.read_exact(&mut out[..n]).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                std::io::Error::new(e.kind(), "blob shrank while it was being read")
            } else {
                e
            }
        })?;
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
    pub fn copy_to(mut self, w: &mut dyn Write) -> Result<u64> {
        let mut total = 0u64;
        loop {
            if self.pos == self.end && !self.refill().map_err(Error::io(&self.path))? {
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

fn open_err(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::MissingBlob { path: path.into() }
    } else {
        Error::Io {
            path: path.into(),
            source: e,
        }
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
            let r = BlobReader::encrypted(&p, &key).unwrap();
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
}
