//! RFC 3394 AES key wrap and the device-key (0x835) layer.

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use aes_kw::KekAes256;

use crate::{DeviceKey, Error, Key256, Result};

/// Length of a 32-byte key wrapped with RFC 3394.
pub const WRAPPED_LEN: usize = 40;

/// Unwraps a 40-byte RFC 3394 blob under a 256-bit KEK into a 256-bit key.
pub fn unwrap_key(kek: &Key256, wrapped: &[u8]) -> Result<Key256> {
    if wrapped.len() != WRAPPED_LEN {
        return Err(Error::WrappedKeyLength(wrapped.len()));
    }
    let mut out = [0u8; 32];
    let res = KekAes256::from(*kek.as_bytes()).unwrap(wrapped, &mut out);
    let key = Key256::from_bytes(out);
    zeroize::Zeroize::zeroize(&mut out);
    res.map_err(|_| Error::UnwrapFailed)?;
    Ok(key)
}

/// Wraps a 256-bit key under a 256-bit KEK (RFC 3394, default IV).
pub fn wrap_key(kek: &Key256, key: &Key256) -> [u8; WRAPPED_LEN] {
    let mut out = [0u8; WRAPPED_LEN];
    KekAes256::from(*kek.as_bytes())
        .wrap(key.as_bytes(), &mut out)
        .expect("a 32-byte key always wraps into 40 bytes");
    out
}

type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;
type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;

/// Removes the device layer: AES-128-CBC decrypt with key 0x835, zero IV, no padding.
pub fn device_unseal(device_key: &DeviceKey, key: &Key256) -> Key256 {
    let mut buf = *key.as_bytes();
    let mut dec = Aes128CbcDec::new(device_key.as_bytes().into(), &[0u8; 16].into());
    for block in buf.chunks_exact_mut(16) {
        dec.decrypt_block_mut(block.into());
    }
    let out = Key256::from_bytes(buf);
    zeroize::Zeroize::zeroize(&mut buf);
    out
}

/// Adds the device layer: AES-128-CBC encrypt with key 0x835, zero IV, no padding.
pub fn device_seal(device_key: &DeviceKey, key: &Key256) -> Key256 {
    let mut buf = *key.as_bytes();
    let mut enc = Aes128CbcEnc::new(device_key.as_bytes().into(), &[0u8; 16].into());
    for block in buf.chunks_exact_mut(16) {
        enc.encrypt_block_mut(block.into());
    }
    let out = Key256::from_bytes(buf);
    zeroize::Zeroize::zeroize(&mut buf);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(hex: &str) -> Key256 {
        Key256::from_hex(hex).unwrap()
    }

    // RFC 3394 §4.6: 256-bit key data with a 256-bit KEK.
    #[test]
    fn rfc3394_4_6() {
        let kek = k("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F");
        let data = k("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F");
        let want =
            "28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326cbc7f0e71a99f43bfb988b9b7a02dd21";
        assert_eq!(hex::encode(wrap_key(&kek, &data)), want);
        let back = unwrap_key(&kek, &hex::decode(want).unwrap()).unwrap();
        assert_eq!(back, data);
    }

    // RFC 3394 §4.1–4.5 use other key sizes; check them through aes-kw directly so
    // the dependency is pinned to the RFC as a whole.
    #[test]
    fn rfc3394_other_sizes() {
        let kek = aes_kw::KekAes128::from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        let data = hex::decode("00112233445566778899AABBCCDDEEFF").unwrap();
        assert_eq!(
            hex::encode(kek.wrap_vec(&data).unwrap()),
            "1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5"
        );
        let kek = KekAes256::from(
            *k("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F").as_bytes(),
        );
        let data = hex::decode("00112233445566778899AABBCCDDEEFF0001020304050607").unwrap();
        assert_eq!(
            hex::encode(kek.wrap_vec(&data).unwrap()),
            "a8f9bc1612c68b3ff6e6f4fbe30e71e4769c8b80a32cb8958cd5d17d6b254da1"
        );
    }

    #[test]
    fn unwrap_rejects_tampering_and_lengths() {
        let kek = Key256::random();
        let key = Key256::random();
        let mut w = wrap_key(&kek, &key);
        w[10] ^= 1;
        assert!(matches!(unwrap_key(&kek, &w), Err(Error::UnwrapFailed)));
        assert!(matches!(
            unwrap_key(&kek, &w[..39]),
            Err(Error::WrappedKeyLength(39))
        ));
        assert!(matches!(
            unwrap_key(&Key256::random(), &wrap_key(&kek, &key)),
            Err(Error::UnwrapFailed)
        ));
    }

    #[test]
    fn device_layer_round_trip() {
        let dk = DeviceKey::random();
        let key = Key256::random();
        let sealed = device_seal(&dk, &key);
        assert_ne!(sealed, key);
        assert_eq!(device_unseal(&dk, &sealed), key);
        assert_ne!(device_unseal(&DeviceKey::random(), &sealed), key);
    }
}
