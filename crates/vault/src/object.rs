//! Sealed objects (index, snapshot, pending-deletion marks): `magic ‖ version ‖ epoch ‖ seal`,
//! the sealed plaintext zstd-compressed, the object's kind bound as associated data (an index
//! cannot be served as a snapshot), and the object named by the BLAKE3 hash of its bytes (a
//! swapped object is caught before anything is opened).

use crate::crypto::{open, seal};
use crate::id::Id;
use crate::keys::Keyring;
use crate::storage::Kind;
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"KBVO";
const VERSION: u8 = 1;
/// Largest object plaintext accepted (an index of millions of blobs fits).
pub const MAX_OBJECT_PLAIN: usize = 512 << 20;

fn aad(kind: Kind) -> Vec<u8> {
    let mut a = b"keybag vault object ".to_vec();
    a.extend_from_slice(kind.dir().as_bytes());
    a
}

/// Seals `data` for storage as a `kind` object under the keyring's current epoch; returns the
/// bytes and their name.
pub fn seal_object(keyring: &Keyring, kind: Kind, data: &[u8]) -> (Id, Vec<u8>) {
    let key = keyring.current();
    let packed = zstd::bulk::compress(data, 3).expect("zstd compresses any input");
    let mut out = Vec::with_capacity(9 + packed.len() + 40);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&key.epoch.to_le_bytes());
    out.extend_from_slice(&seal(&key.enc, &aad(kind), &packed));
    (Id::of_bytes(&out), out)
}

/// Opens an object read from storage under `name`: its name must be its hash, its epoch one
/// the keyring holds, its seal intact.
pub fn open_object(keyring: &Keyring, kind: Kind, name: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    let what = kind.show(name);
    if Id::of_bytes(bytes).to_hex() != name {
        return Err(Error::corrupt(
            &what,
            "content does not match its name (changed or swapped)",
        ));
    }
    if bytes.len() < 9 || &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return Err(Error::corrupt(&what, "not a sealed vault object"));
    }
    let epoch = u32::from_le_bytes(bytes[5..9].try_into().expect("4"));
    let key = keyring.epoch(epoch).ok_or_else(|| {
        Error::corrupt(
            &what,
            format!("sealed under key epoch {epoch}, which this keyring does not hold"),
        )
    })?;
    let packed = open(&key.enc, &aad(kind), &bytes[9..])
        .ok_or_else(|| Error::corrupt(&what, "seal does not open (damaged or forged)"))?;
    let mut dec =
        zstd::bulk::Decompressor::new().map_err(|e| Error::corrupt(&what, format!("zstd: {e}")))?;
    dec.decompress(&packed, MAX_OBJECT_PLAIN)
        .map_err(|e| Error::corrupt(&what, format!("zstd: {e}")))
}

/// The epoch an object or pack is sealed under (from its clear header), if it has one.
pub fn epoch_of(bytes: &[u8]) -> Option<u32> {
    (bytes.len() >= 9).then(|| u32::from_le_bytes(bytes[5..9].try_into().expect("4")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Params;

    #[test]
    fn objects_are_bound_to_name_kind_and_key() {
        let kr = Keyring::new(Id::of_bytes(b"r"), Params::default());
        let (id, bytes) = seal_object(&kr, Kind::Index, b"payload");
        let name = id.to_hex();
        assert_eq!(
            open_object(&kr, Kind::Index, &name, &bytes).unwrap(),
            b"payload"
        );
        let e = open_object(&kr, Kind::Snapshots, &name, &bytes).unwrap_err();
        assert!(e.to_string().contains("does not open"), "{e}");
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        let e = open_object(&kr, Kind::Index, &name, &bad).unwrap_err();
        assert!(e.to_string().contains("does not match its name"), "{e}");
        let other = Keyring::new(Id::of_bytes(b"r"), Params::default());
        assert!(open_object(&other, Kind::Index, &name, &bytes).is_err());
        assert_eq!(epoch_of(&bytes), Some(0));
    }
}
