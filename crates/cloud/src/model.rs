//! What a phone-backup snapshot holds beyond the vault's generic tree: how each file of the
//! backup folder was stored (so pull rebuilds it byte for byte), and the backup's records and
//! device (so `ls`, `cat` and `diff` need no `Manifest.db`).

use zeroize::Zeroize;

use crate::{Error, Result};

/// How a file of the backup folder is stored.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, Zeroize)]
pub enum Stored {
    /// The file's bytes as they are.
    Raw,
    /// The plaintext of an AES-256-CBC (zero IV, PKCS7) blob, with its key: pull encrypts it
    /// again, which gives back the same bytes (CBC with a fixed IV is deterministic), and a
    /// backup whose files were all re-keyed stores the same chunks as the one before.
    Rekey {
        /// The file's own key (in the sealed tree only).
        key: [u8; 32],
    },
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stored::Raw => f.write_str("Raw"),
            Stored::Rekey { .. } => f.write_str("Rekey(redacted)"),
        }
    }
}

/// A tree node's metadata: one file of the backup folder.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileMeta {
    /// How it is stored.
    pub stored: Stored,
    /// Its length in the backup folder.
    pub len: u64,
    /// SHA-1 of its bytes in the backup folder: pull writes nothing else.
    pub sha1: [u8; 20],
    /// Its modification time (Unix seconds).
    pub mtime: i64,
    /// What the file system said of it at push (absent in snapshots of keybag before 0.5,
    /// and where the platform has no inode): a later push of the same folder reuses this
    /// node for a file whose identity is unchanged, without reading it.
    pub stat: Option<FileStat>,
}

/// A file's identity on the pushing machine, as restic's parent-snapshot check uses it: a
/// rewrite changes its ctime (which no tool can set back) and a new copy its inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStat {
    /// Device number of its file system.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Length.
    pub len: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status-change time, nanoseconds since the epoch.
    pub ctime_ns: i128,
}

impl FileStat {
    /// The identity of an open file (`None` where the platform has no inodes).
    pub fn of(meta: &std::fs::Metadata) -> Option<FileStat> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
            Some(FileStat {
                dev: meta.dev(),
                ino: meta.ino(),
                len: meta.len(),
                mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
                ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            None
        }
    }
}

/// [`FileMeta`] as the first keybag cloud snapshots stored it (no `stat`).
#[derive(serde::Deserialize)]
struct FileMetaV1 {
    stored: Stored,
    len: u64,
    sha1: [u8; 20],
    mtime: i64,
}

impl FileMeta {
    /// Encoded for a tree node.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serializable")
    }

    /// Decodes a node's metadata (either layout).
    pub fn decode(name: &str, b: &[u8]) -> Result<FileMeta> {
        match postcard::from_bytes::<FileMeta>(b) {
            Ok(m) => Ok(m),
            Err(e) => match postcard::from_bytes::<FileMetaV1>(b) {
                Ok(v1) => Ok(FileMeta {
                    stored: v1.stored,
                    len: v1.len,
                    sha1: v1.sha1,
                    mtime: v1.mtime,
                    stat: None,
                }),
                Err(_) => Err(Error::Invalid(format!(
                    "{name:?}: file metadata does not decode: {e}"
                ))),
            },
        }
    }
}

/// Kind of a record.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RecKind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (`flags` as stored).
    Other(i64),
}

impl RecKind {
    /// `file`, `dir`, `symlink` or `flags=N`.
    pub fn name(&self) -> String {
        match self {
            RecKind::File => "file".into(),
            RecKind::Dir => "dir".into(),
            RecKind::Symlink => "symlink".into(),
            RecKind::Other(f) => format!("flags={f}"),
        }
    }
}

/// One `Manifest.db` row, as browsing needs it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rec {
    /// Domain.
    pub domain: String,
    /// Relative path.
    pub path: String,
    /// Kind.
    pub kind: RecKind,
    /// fileID (its blob is the node `xx/fileID`).
    pub file_id: String,
    /// Recorded `Size`.
    pub size: u64,
    /// Modification time.
    pub mtime: i64,
    /// Protection class.
    pub class: u32,
    /// Mode bits.
    pub mode: u32,
    /// Symlink target.
    pub target: Option<String>,
}

/// Device and backup facts.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceMeta {
    /// Device name.
    pub name: Option<String>,
    /// UDID.
    pub udid: Option<String>,
    /// Model, e.g. `iPhone14,2`.
    pub product: Option<String>,
    /// iOS version.
    pub ios: Option<String>,
}

/// What a snapshot of a phone backup carries besides its files.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Annex {
    /// Format version (1).
    pub version: u32,
    /// The phone.
    pub device: DeviceMeta,
    /// When the backup was made (Unix seconds), if its plists say.
    pub backup_date: Option<i64>,
    /// True for an encrypted backup.
    pub encrypted: bool,
    /// True when the backup was unlocked at push (files stored as plaintext, re-keyable).
    pub unlocked: bool,
    /// The backup's records, in `Manifest.db` order.
    pub records: Vec<Rec>,
    /// What could not be read at push (the files concerned were stored as they were, or
    /// are absent from the snapshot as from the backup).
    pub notes: Vec<String>,
}

impl Annex {
    /// Encoded for the tree.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serializable")
    }

    /// Decodes a tree's annex.
    pub fn decode(b: &[u8]) -> Result<Annex> {
        let a: Annex = postcard::from_bytes(b).map_err(|e| {
            Error::Invalid(format!(
                "the snapshot is not a phone backup pushed by keybag (annex: {e})"
            ))
        })?;
        if a.version != 1 {
            return Err(Error::Invalid(format!("annex version {}", a.version)));
        }
        Ok(a)
    }

    /// The node name of a record's blob: `xx/fileID` (a fileID is 40 hex digits; one that is
    /// shorter than two bytes, or whose second byte is inside a character, is its own prefix).
    pub fn blob_node(file_id: &str) -> String {
        let prefix = file_id.get(..2).unwrap_or(file_id);
        format!("{prefix}/{file_id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_keys_stay_out_of_debug() {
        let m = FileMeta {
            stored: Stored::Rekey { key: [7; 32] },
            len: 32,
            sha1: [1; 20],
            mtime: 5,
            stat: None,
        };
        assert_eq!(FileMeta::decode("x", &m.encode()).unwrap(), m);
        let with_stat = FileMeta {
            stat: Some(FileStat {
                dev: 1,
                ino: 2,
                len: 32,
                mtime_ns: -3,
                ctime_ns: 1 << 70,
            }),
            ..m.clone()
        };
        assert_eq!(
            FileMeta::decode("x", &with_stat.encode()).unwrap(),
            with_stat
        );
        assert!(!format!("{m:?}").contains("7, 7"));
        assert!(FileMeta::decode("x", b"\xff\xff").is_err());
        // The first layout (no stat) still decodes.
        #[derive(serde::Serialize)]
        struct V1 {
            stored: Stored,
            len: u64,
            sha1: [u8; 20],
            mtime: i64,
        }
        let v1 = postcard::to_stdvec(&V1 {
            stored: Stored::Raw,
            len: 9,
            sha1: [2; 20],
            mtime: 7,
        })
        .unwrap();
        let got = FileMeta::decode("x", &v1).unwrap();
        assert_eq!((got.len, got.mtime, got.stat), (9, 7, None));
        assert!(Annex::decode(b"").is_err());
        let a = Annex {
            version: 1,
            ..Default::default()
        };
        assert_eq!(Annex::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn blob_nodes_of_odd_file_ids_do_not_panic() {
        assert_eq!(Annex::blob_node("ab12"), "ab/ab12");
        assert_eq!(Annex::blob_node("a"), "a/a");
        assert_eq!(Annex::blob_node(""), "/");
        // Found by the vault_plain fuzz target: byte 2 inside '€'.
        assert_eq!(Annex::blob_node("a€"), "a€/a€");
    }
}
