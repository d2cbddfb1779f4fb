//! What a cloud snapshot holds besides the file ciphertexts (postcard, inside the vault's
//! sealed tree: only holders of the service key read it).

use device::{Entry, EntryKind, ProtectionClass};

use crate::{Error, Result};

/// Node name prefix of files, folders and links (`e/<domain>/<path>`).
pub const ENTRY_PREFIX: &str = "e/";

/// One entry of the device, as a node's metadata.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntryMeta {
    /// Domain.
    pub domain: String,
    /// Path in the domain.
    pub path: String,
    /// 0 file, 1 folder, 2 link.
    pub kind: u8,
    /// A link's target.
    pub target: Option<String>,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modified (Unix seconds).
    pub mtime: i64,
    /// Changed.
    pub ctime: i64,
    /// Born.
    pub birth: i64,
    /// Protection class.
    pub class: u32,
    /// Plaintext length.
    pub size: u64,
    /// The device's blob id (fixed while the content is unchanged: lets the next backup
    /// reuse the chunks without reading).
    pub blob_id: Option<String>,
    /// The file key wrapped to the cloud keybag's class key.
    pub cloud_key: Option<Vec<u8>>,
}

impl EntryMeta {
    /// From a device entry.
    pub fn of(e: &Entry, blob_id: Option<String>, cloud_key: Option<Vec<u8>>) -> EntryMeta {
        let (kind, target) = match &e.kind {
            EntryKind::File => (0, None),
            EntryKind::Directory => (1, None),
            EntryKind::Symlink { target } => (2, Some(target.clone())),
        };
        EntryMeta {
            domain: e.domain.clone(),
            path: e.path.clone(),
            kind,
            target,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            ctime: e.ctime,
            birth: e.birth,
            class: e.class.0,
            size: e.size,
            blob_id,
            cloud_key,
        }
    }

    /// The node name.
    pub fn node_name(&self) -> String {
        format!("{ENTRY_PREFIX}{}/{}", self.domain, self.path)
    }

    /// Encoded.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serializable")
    }

    /// Decoded.
    pub fn decode(b: &[u8]) -> Result<EntryMeta> {
        postcard::from_bytes(b).map_err(|e| Error::Invalid(format!("snapshot entry: {e}")))
    }

    /// Its class.
    pub fn protection_class(&self) -> ProtectionClass {
        ProtectionClass(self.class)
    }
}

/// One keychain item as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ItemMeta {
    /// Row id on the source device.
    pub rowid: u64,
    /// Table.
    pub table: String,
    /// Keychain class.
    pub class: u32,
    /// Item key under the cloud keybag's (UID-wrapped) keychain class key.
    pub cloud_key: Vec<u8>,
    /// GCM IV.
    pub iv: Vec<u8>,
    /// Encrypted attributes.
    pub data: Vec<u8>,
}

impl ItemMeta {
    /// As the device takes it back.
    pub fn to_item(&self) -> device::CloudItem {
        device::CloudItem {
            rowid: self.rowid,
            table: self.table.clone(),
            class: ProtectionClass(self.class),
            cloud_key: self.cloud_key.clone(),
            iv: self.iv.clone(),
            data: self.data.clone(),
        }
    }
}

/// Something left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Left {
    /// `file`, `dir`, `symlink` or `keychain`.
    pub kind: String,
    /// What.
    pub what: String,
    /// Class short name.
    pub class: Option<String>,
    /// Why.
    pub reason: String,
}

/// The snapshot's annex.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CloudAnnex {
    /// Format version (1).
    pub version: u32,
    /// Source device name.
    pub device_name: String,
    /// Its UDID.
    pub udid: String,
    /// Its model.
    pub model: String,
    /// Its iOS version.
    pub ios: String,
    /// Its lock state during the backup.
    pub lock_state: String,
    /// The cloud keybag's UUID (hex).
    pub keybag_uuid: String,
    /// Keychain items.
    pub keychain: Vec<ItemMeta>,
    /// Left out at backup.
    pub left_out: Vec<Left>,
}

impl CloudAnnex {
    /// Encoded.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serializable")
    }

    /// Decoded.
    pub fn decode(b: &[u8]) -> Result<CloudAnnex> {
        let a: CloudAnnex = postcard::from_bytes(b).map_err(|e| {
            Error::Invalid(format!("not a device cloud backup snapshot (annex: {e})"))
        })?;
        if a.version != 1 {
            return Err(Error::Invalid(format!(
                "annex version {} unknown",
                a.version
            )));
        }
        Ok(a)
    }
}
