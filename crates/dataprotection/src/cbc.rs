//! AES-256-CBC with a zero IV and PKCS7 padding, streamed in chunks.
//!
//! Backup blobs and the encrypted `Manifest.db` use this cipher. Files can be
//! many gigabytes, so both directions work chunk by chunk: the caller feeds
//! block-aligned buffers and deals with padding on the final block only.

use aes::cipher::inout::InOutBuf;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};

use crate::{Error, Key256, Result};

/// AES block size.
pub const BLOCK: usize = 16;

/// Size of the ciphertext for `n` plaintext bytes: PKCS7 always adds 1–16 bytes.
pub fn padded_len(n: u64) -> u64 {
    (n / BLOCK as u64) * BLOCK as u64 + BLOCK as u64
}

/// Streaming CBC decryption; the IV chain carries over between calls.
pub struct Decryptor(cbc::Decryptor<aes::Aes256>);

impl Decryptor {
    /// A decryptor with the all-zero IV.
    pub fn new(key: &Key256) -> Self {
        Self::with_iv(key, &[0u8; BLOCK])
    }

    /// A decryptor starting at an arbitrary chaining value: to decrypt block `i`
    /// alone, pass ciphertext block `i - 1` (how a reader learns the padding, and
    /// so the plaintext length, before streaming a large blob).
    pub fn with_iv(key: &Key256, iv: &[u8; BLOCK]) -> Self {
        Self(cbc::Decryptor::new(key.as_bytes().into(), iv.into()))
    }

    /// Decrypts `buf` in place; its length must be a multiple of 16.
    pub fn decrypt(&mut self, buf: &mut [u8]) -> Result<()> {
        let (blocks, tail) = InOutBuf::from(buf).into_chunks();
        if !tail.is_empty() {
            return Err(Error::CiphertextLength(
                (blocks.len() * BLOCK + tail.len()) as u64,
            ));
        }
        self.0.decrypt_blocks_inout_mut(blocks);
        Ok(())
    }
}

/// Streaming CBC encryption; the IV chain carries over between calls.
pub struct Encryptor(cbc::Encryptor<aes::Aes256>);

impl Encryptor {
    /// An encryptor with the all-zero IV.
    pub fn new(key: &Key256) -> Self {
        Self(cbc::Encryptor::new(
            key.as_bytes().into(),
            &[0u8; 16].into(),
        ))
    }

    /// Encrypts `buf` in place; its length must be a multiple of 16.
    pub fn encrypt(&mut self, buf: &mut [u8]) -> Result<()> {
        let (blocks, tail) = InOutBuf::from(buf).into_chunks();
        if !tail.is_empty() {
            return Err(Error::CiphertextLength(
                (blocks.len() * BLOCK + tail.len()) as u64,
            ));
        }
        self.0.encrypt_blocks_inout_mut(blocks);
        Ok(())
    }

    /// Pads the final `tail` (fewer than 16 bytes, possibly none) and encrypts
    /// it, consuming the encryptor. Returns the final ciphertext block.
    pub fn finish(mut self, tail: &[u8]) -> Result<[u8; BLOCK]> {
        if tail.len() >= BLOCK {
            return Err(Error::CiphertextLength(tail.len() as u64));
        }
        let mut block = pad_block(tail);
        self.encrypt(&mut block)?;
        Ok(block)
    }
}

/// The final PKCS7 block for a tail of fewer than 16 bytes.
fn pad_block(tail: &[u8]) -> [u8; BLOCK] {
    let pad = (BLOCK - tail.len()) as u8;
    let mut block = [pad; BLOCK];
    block[..tail.len()].copy_from_slice(tail);
    block
}

/// Number of PKCS7 padding bytes in a decrypted final block (1–16), or an error.
pub fn pkcs7_pad_len(last_block: &[u8]) -> Result<usize> {
    let n = *last_block.last().ok_or(Error::BadPadding)? as usize;
    if n == 0 || n > BLOCK || n > last_block.len() {
        return Err(Error::BadPadding);
    }
    if last_block[last_block.len() - n..]
        .iter()
        .any(|&b| b as usize != n)
    {
        return Err(Error::BadPadding);
    }
    Ok(n)
}

/// Encrypts a whole buffer with PKCS7 padding (for small things like `Manifest.db`).
pub fn encrypt_padded(key: &Key256, data: &[u8]) -> Vec<u8> {
    let full = data.len() / BLOCK * BLOCK;
    let mut out = Vec::with_capacity(padded_len(data.len() as u64) as usize);
    out.extend_from_slice(&data[..full]);
    let mut enc = Encryptor::new(key);
    enc.encrypt(&mut out).expect("block-aligned");
    out.extend_from_slice(&enc.finish(&data[full..]).expect("short tail"));
    out
}

/// Decrypts a whole buffer and strips PKCS7 padding.
pub fn decrypt_padded(key: &Key256, mut data: Vec<u8>) -> Result<Vec<u8>> {
    if data.is_empty() || !data.len().is_multiple_of(BLOCK) {
        return Err(Error::CiphertextLength(data.len() as u64));
    }
    Decryptor::new(key).decrypt(&mut data)?;
    let pad = pkcs7_pad_len(&data[data.len() - BLOCK..])?;
    data.truncate(data.len() - pad);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    // NIST SP 800-38A F.2.5 (CBC-AES256.Encrypt), first two blocks.
    #[test]
    fn nist_cbc_aes256() {
        let key =
            Key256::from_hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
                .unwrap();
        let iv = hex::decode("000102030405060708090a0b0c0d0e0f").unwrap();
        let mut buf =
            hex::decode("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
                .unwrap();
        let mut enc =
            cbc::Encryptor::<aes::Aes256>::new(key.as_bytes().into(), iv.as_slice().into());
        let (blocks, _) = InOutBuf::from(&mut buf[..]).into_chunks();
        enc.encrypt_blocks_inout_mut(blocks);
        assert_eq!(
            hex::encode(&buf),
            "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
        );
    }

    // Spec §13 vector 2: ciphertext decrypts (zero key, zero IV) to "Test data" + 7×07.
    #[test]
    fn spec_padding_vector() {
        let key = Key256::from_bytes([0; 32]);
        let ct = hex::decode("78b51ca5374c3ad575174288688cda49").unwrap();
        assert_eq!(decrypt_padded(&key, ct).unwrap(), b"Test data");
        assert_eq!(
            hex::encode(encrypt_padded(&key, b"Test data")),
            "78b51ca5374c3ad575174288688cda49"
        );
    }

    #[test]
    fn padding_edges() {
        let key = Key256::random();
        for n in [0usize, 1, 15, 16, 17, 32, 1000] {
            let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let ct = encrypt_padded(&key, &data);
            assert_eq!(ct.len() as u64, padded_len(n as u64));
            assert_eq!(decrypt_padded(&key, ct).unwrap(), data);
        }
        assert!(matches!(pkcs7_pad_len(&[0u8; 16]), Err(Error::BadPadding)));
        assert!(matches!(pkcs7_pad_len(&[17u8; 16]), Err(Error::BadPadding)));
        let mut b = [3u8; 16];
        b[14] = 2;
        assert!(matches!(pkcs7_pad_len(&b), Err(Error::BadPadding)));
        assert_eq!(pkcs7_pad_len(&[16u8; 16]).unwrap(), 16);
        assert!(matches!(
            decrypt_padded(&key, vec![0; 15]),
            Err(Error::CiphertextLength(15))
        ));
        assert!(matches!(
            decrypt_padded(&key, vec![]),
            Err(Error::CiphertextLength(0))
        ));
    }

    #[test]
    fn streaming_equals_one_shot() {
        let key = Key256::random();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let one = encrypt_padded(&key, &data);
        let mut streamed = one.clone();
        let mut dec = Decryptor::new(&key);
        for chunk in streamed.chunks_mut(48) {
            dec.decrypt(chunk).unwrap();
        }
        let pad = pkcs7_pad_len(&streamed[streamed.len() - 16..]).unwrap();
        assert_eq!(&streamed[..streamed.len() - pad], &data[..]);
        assert!(Decryptor::new(&key).decrypt(&mut [0u8; 17]).is_err());
    }
}
