//! Opening, unlocking and reading a backup folder.

use std::io::Read;
use std::path::{Path, PathBuf};

use dataprotection::{DeviceKey, KdfLimits, Keybag, Passkey, ProtectionClass, UnlockedKeybag};
use rusqlite::Connection;
use zeroize::Zeroizing;

use crate::blob::BlobReader;
use crate::catalog::{self, SQLITE_MAGIC};
use crate::layout::{
    self, FLAG_DIR, FLAG_FILE, FLAG_SYMLINK, INFO_PLIST, MANIFEST_DB, MANIFEST_PLIST, STATUS_PLIST,
};
use crate::mbfile::MbFile;
use crate::plists::{read_dict, DeviceInfo, InfoPlist, ManifestPlist, StatusPlist};
use crate::safe_fs::open_regular;
use crate::{Error, Result};

/// Largest `Manifest.db` loaded into memory (real ones are up to a few hundred MB).
pub const MAX_MANIFEST_DB_BYTES: u64 = 4 << 30;

/// What unlocks an encrypted backup.
pub enum Secret {
    /// The backup password (UTF-8 bytes).
    Password(Zeroizing<Vec<u8>>),
    /// The 32-byte derived key (skips the KDF).
    Passkey(Passkey),
}

/// A secret plus the optional device key 0x835 and the KDF caps.
pub struct Credentials {
    /// Password or derived key.
    pub secret: Secret,
    /// Device key 0x835, to open classes sealed to the original device.
    pub device_key: Option<DeviceKey>,
    /// Caps on KDF iteration counts read from the keybag.
    pub limits: KdfLimits,
}

/// Which kind of secret, never the secret (a derived `Debug` would print the password).
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Password(_) => f.write_str("Password(redacted)"),
            Secret::Passkey(_) => f.write_str("Passkey(redacted)"),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("secret", &self.secret)
            .field("device_key", &self.device_key)
            .field("limits", &self.limits)
            .finish()
    }
}

/// The kind of a `Files` row.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    /// `flags = 1`.
    File,
    /// `flags = 2`.
    Directory,
    /// `flags = 4`.
    Symlink,
    /// Anything else (early iOS 10 wrote `flags = 16` rows).
    Other(i64),
}

impl RecordKind {
    /// Short name: `file`, `dir`, `symlink` or `flags=N`.
    pub fn name(&self) -> String {
        match self {
            Self::File => "file".into(),
            Self::Directory => "dir".into(),
            Self::Symlink => "symlink".into(),
            Self::Other(f) => format!("flags={f}"),
        }
    }
}

/// One row of `Manifest.db`.
#[derive(Clone, Debug)]
pub struct Record {
    /// `fileID`.
    pub file_id: String,
    /// `domain`.
    pub domain: String,
    /// `relativePath`.
    pub relative_path: String,
    /// `flags`.
    pub flags: i64,
    /// The decoded MBFile, when it decodes.
    pub file: Option<MbFile>,
    /// The `file` column as stored (the MBFile keyed archive's bytes; empty when NULL), so
    /// an in-place update can keep an unchanged row without re-encoding it.
    pub raw: Vec<u8>,
    /// Why this record cannot be used safely (bad path, bad fileID, undecodable MBFile).
    pub problem: Option<String>,
}

impl Record {
    /// File, directory, symlink or other.
    pub fn kind(&self) -> RecordKind {
        match self.flags {
            FLAG_FILE => RecordKind::File,
            FLAG_DIR => RecordKind::Directory,
            FLAG_SYMLINK => RecordKind::Symlink,
            f => RecordKind::Other(f),
        }
    }

    /// MBFile `ProtectionClass` (0 when unknown).
    pub fn protection_class(&self) -> ProtectionClass {
        ProtectionClass(self.file.as_ref().map_or(0, |f| f.protection_class))
    }

    /// MBFile `Size` (0 when unknown).
    pub fn size(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.size)
    }

    /// `domain/relativePath`, for messages and listings.
    pub fn display_path(&self) -> String {
        if self.relative_path.is_empty() {
            self.domain.clone()
        } else {
            format!("{}/{}", self.domain, self.relative_path)
        }
    }

    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::BadRecord {
            domain: self.domain.clone(),
            relative_path: self.relative_path.clone(),
            reason: reason.into(),
        }
    }
}

/// All rows of `Manifest.db`.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Rows in `domain, relativePath` order.
    pub records: Vec<Record>,
    /// Rows that could not be read at all (NULL columns), described.
    pub skipped: Vec<String>,
}

/// Outcome of reading one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    /// Plaintext bytes produced.
    pub bytes: u64,
    /// MBFile `Size`, which real backups sometimes get wrong (spec §7.2).
    pub recorded_size: u64,
    /// False when PKCS7 padding was invalid (all decrypted bytes were kept).
    pub padding_ok: bool,
    /// The blob's SHA-1 against the record's `Digest`, when it has one and they differ.
    pub digest_mismatch: Option<crate::blob::DigestMismatch>,
}

impl FileReport {
    /// True when the recorded `Size` disagrees with the plaintext length.
    pub fn size_mismatch(&self) -> bool {
        self.bytes != self.recorded_size
    }
}

/// An opened backup folder.
pub struct Backup {
    root: PathBuf,
    manifest: Option<ManifestPlist>,
    info: Option<InfoPlist>,
    status: Option<StatusPlist>,
    keybag: Option<Keybag>,
    encrypted: bool,
    keys: Option<UnlockedKeybag>,
}

impl std::fmt::Debug for Backup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backup")
            .field("root", &self.root)
            .field("encrypted", &self.encrypted)
            .finish()
    }
}

impl Backup {
    /// Opens a backup folder: reads its plists and decides whether it is encrypted.
    /// Nothing secret is needed yet.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let meta = std::fs::metadata(&root).map_err(|e| Error::NotABackup {
            path: root.clone(),
            reason: format!("cannot open the folder ({e})"),
        })?;
        if !meta.is_dir() {
            return Err(Error::NotABackup {
                path: root,
                reason: "not a folder".into(),
            });
        }
        if crate::update::pending(&root) {
            return Err(Error::NotABackup {
                path: root.join(crate::update::UPDATE_DIR),
                reason: "an interrupted keybag update is half applied here; run the same \
                         `keybag device backup` again to finish it"
                    .into(),
            });
        }
        let db = root.join(MANIFEST_DB);
        let mplist = root.join(MANIFEST_PLIST);
        // Every top-level file must be a regular file: a symlink could read a file from
        // elsewhere (another backup's Manifest.db), a FIFO would block forever.
        let present = |p: &Path| std::fs::symlink_metadata(p).is_ok();
        let mut db_file = match open_regular(&db) {
            Ok(f) => f,
            Err(Error::MissingBlob { .. }) => {
                if present(&root.join("Manifest.mbdb")) {
                    return Err(Error::Unsupported {
                        path: root.join("Manifest.mbdb"),
                        reason:
                            "backups made by iOS 9 and earlier (Manifest.mbdb) are not supported"
                                .into(),
                    });
                }
                let reason = if present(&mplist) {
                    "Manifest.db is missing (an iCloud download or an unfinished backup?)"
                } else {
                    "no Manifest.db or Manifest.plist here"
                };
                return Err(Error::NotABackup {
                    path: root,
                    reason: reason.into(),
                });
            }
            Err(Error::DamagedBlob { path, reason }) => {
                return Err(Error::Malformed { path, reason })
            }
            Err(e) => return Err(e),
        };
        let manifest = if present(&mplist) {
            Some(ManifestPlist::from_dict(&mplist, read_dict(&mplist)?)?)
        } else {
            None
        };
        let info_path = root.join(INFO_PLIST);
        let info = if present(&info_path) {
            Some(InfoPlist::from_dict(read_dict(&info_path)?))
        } else {
            None
        };
        let status_path = root.join(STATUS_PLIST);
        let status = if present(&status_path) {
            Some(StatusPlist::from_dict(&read_dict(&status_path)?))
        } else {
            None
        };
        let keybag = match manifest.as_ref().and_then(|m| m.keybag.as_ref()) {
            Some(bytes) => Some(Keybag::parse(bytes).map_err(|e| Error::Crypto {
                path: mplist.clone(),
                source: e,
            })?),
            None => None,
        };
        // Trust the data over the flag: an encrypted Manifest.db does not start with SQLite's magic.
        let mut head = [0u8; 16];
        let db_plain = db_file
            .read_exact(&mut head)
            .map(|_| &head == SQLITE_MAGIC)
            .unwrap_or(false);
        drop(db_file);
        let flagged = manifest.as_ref().and_then(|m| m.is_encrypted);
        let encrypted = match (flagged, db_plain) {
            (_, false) => true,
            (Some(true), true) => {
                return Err(Error::malformed(
                    &mplist,
                    "IsEncrypted is true but Manifest.db is plain SQLite",
                ));
            }
            (_, true) => false,
        };
        if encrypted {
            let m = manifest.as_ref().ok_or_else(|| Error::NotABackup {
                path: db.clone(),
                reason:
                    "Manifest.db is not SQLite and there is no Manifest.plist to decrypt it with"
                        .into(),
            })?;
            if m.manifest_key.is_none() {
                return Err(Error::Unsupported {
                    path: mplist,
                    reason: "Manifest.db is encrypted but Manifest.plist has no ManifestKey \
                             (iOS 10.0/10.1 backups are not supported)"
                        .into(),
                });
            }
            if keybag.is_none() {
                return Err(Error::malformed(
                    &mplist,
                    "encrypted backup without a BackupKeyBag",
                ));
            }
        }
        Ok(Self {
            root,
            manifest,
            info,
            status,
            keybag,
            encrypted,
            keys: None,
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True when the backup is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// `Manifest.plist`, if present (the mvt sample has none).
    pub fn manifest(&self) -> Option<&ManifestPlist> {
        self.manifest.as_ref()
    }

    /// `Info.plist`, if present.
    pub fn info(&self) -> Option<&InfoPlist> {
        self.info.as_ref()
    }

    /// `Status.plist`, if present.
    pub fn status(&self) -> Option<&StatusPlist> {
        self.status.as_ref()
    }

    /// The backup keybag, if `Manifest.plist` has one.
    pub fn keybag(&self) -> Option<&Keybag> {
        self.keybag.as_ref()
    }

    /// Class keys, once unlocked.
    pub fn keys(&self) -> Option<&UnlockedKeybag> {
        self.keys.as_ref()
    }

    /// Device identity: `Manifest.plist` `Lockdown`, completed from `Info.plist`.
    pub fn device(&self) -> DeviceInfo {
        let a = self
            .manifest
            .as_ref()
            .map(|m| m.device.clone())
            .unwrap_or_default();
        let b = self
            .info
            .as_ref()
            .map(|i| i.device.clone())
            .unwrap_or_default();
        DeviceInfo {
            device_name: a.device_name.or(b.device_name),
            product_type: a.product_type.or(b.product_type),
            product_version: a.product_version.or(b.product_version),
            build_version: a.build_version.or(b.build_version),
            serial_number: a.serial_number.or(b.serial_number),
            udid: a.udid.or(b.udid),
        }
    }

    fn manifest_plist_path(&self) -> PathBuf {
        self.root.join(MANIFEST_PLIST)
    }

    /// Derives the passkey from a password (the slow step: 10M PBKDF2-SHA256 rounds).
    pub fn derive_passkey(&self, password: &[u8], limits: &KdfLimits) -> Result<Passkey> {
        let kb = self
            .keybag
            .as_ref()
            .ok_or_else(|| Error::malformed(self.manifest_plist_path(), "no BackupKeyBag"))?;
        kb.derive_passkey(password, limits)
            .map_err(|e| Error::Crypto {
                path: self.manifest_plist_path(),
                source: e,
            })
    }

    /// Unlocks the class keys. Unencrypted backups need nothing and accept anything.
    pub fn unlock(&mut self, creds: &Credentials) -> Result<()> {
        if !self.encrypted {
            return Ok(());
        }
        let derived;
        let passkey = match &creds.secret {
            Secret::Password(pw) => {
                derived = self.derive_passkey(pw, &creds.limits)?;
                &derived
            }
            Secret::Passkey(pk) => pk,
        };
        self.unlock_with_passkey(passkey, creds.device_key.as_ref())
    }

    /// Unlocks with an already derived passkey.
    pub fn unlock_with_passkey(
        &mut self,
        passkey: &Passkey,
        device_key: Option<&DeviceKey>,
    ) -> Result<()> {
        let path = self.manifest_plist_path();
        let kb = self
            .keybag
            .as_ref()
            .ok_or_else(|| Error::malformed(&path, "no BackupKeyBag"))?;
        let keys = kb.unlock(passkey, device_key).map_err(|e| match e {
            dataprotection::Error::WrongPassword => Error::WrongPassword { path: path.clone() },
            e => Error::Crypto {
                path: path.clone(),
                source: e,
            },
        })?;
        self.keys = Some(keys);
        Ok(())
    }

    fn require_keys(&self) -> Result<&UnlockedKeybag> {
        self.keys.as_ref().ok_or_else(|| Error::Locked {
            path: self.root.clone(),
        })
    }

    /// A reader over `Manifest.db`'s plaintext (decrypted in memory when encrypted).
    pub fn manifest_db_reader(&self) -> Result<BlobReader> {
        let path = self.root.join(MANIFEST_DB);
        let reader = if self.encrypted {
            let keys = self.require_keys()?;
            let mk = self
                .manifest
                .as_ref()
                .and_then(|m| m.manifest_key.as_ref())
                .expect("checked in open");
            // The password was right (the keybag unlocked): a ManifestKey that does not
            // unwrap is a malformed Manifest.plist, whatever the cause.
            let dbkey = keys.unwrap_persistent(mk).map_err(|e| {
                let class = mk
                    .get(..4)
                    .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")) & 0xf_ffff);
                Error::malformed(
                    self.manifest_plist_path(),
                    format!(
                        "ManifestKey (class {}) does not unwrap: {e}",
                        class.map_or_else(|| "?".into(), |c| c.to_string())
                    ),
                )
            })?;
            // Without valid padding (tools that re-encrypt without it, spec P18) the whole
            // length is read; the loader takes whole pages only, so SQLite never sees junk.
            BlobReader::encrypted(&path, &dbkey)
        } else {
            BlobReader::plain(&path)
        }
        .map_err(|e| match e {
            Error::DamagedBlob { path, reason } => Error::Malformed { path, reason },
            e => e,
        })?;
        if reader.len() > MAX_MANIFEST_DB_BYTES {
            return Err(Error::malformed(
                &path,
                format!(
                    "{} bytes is beyond the {} GiB cap",
                    reader.len(),
                    MAX_MANIFEST_DB_BYTES >> 30
                ),
            ));
        }
        Ok(reader)
    }

    /// Loads `Manifest.db` into a fenced in-memory SQLite connection: plaintext never
    /// touches the disk, and a hostile schema or runaway query is refused (see
    /// [`crate::catalog`]).
    pub fn manifest_db(&self) -> Result<Connection> {
        let path = self.root.join(MANIFEST_DB);
        let reader = self.manifest_db_reader()?;
        let len = reader.len();
        catalog::load(&path, reader, len).map_err(|e| match e {
            Error::Malformed { path, reason } if self.encrypted && reason.ends_with("not a SQLite database") => {
                Error::Malformed {
                    path,
                    reason: "Manifest.db did not decrypt to a SQLite database (damaged, or ManifestKey does not match)".into(),
                }
            }
            e => e,
        })
    }

    /// Reads every row of `Manifest.db`. Rows that fail to decode are kept with a `problem`.
    pub fn catalog(&self) -> Result<Catalog> {
        let conn = self.manifest_db()?;
        catalog::read(&conn, &self.root.join(MANIFEST_DB))
    }

    /// Where a record's blob lives; an error for records that cannot have one.
    pub fn blob_path(&self, rec: &Record) -> Result<PathBuf> {
        layout::blob_path(&self.root, &rec.file_id)
            .ok_or_else(|| rec.bad("fileID is not 40 hex digits"))
    }

    /// [`Backup::blob_path`], refusing a shard folder (`xx/`) that is not a real folder: a
    /// symlinked one could lead into another backup.
    pub fn checked_blob_path(&self, rec: &Record) -> Result<PathBuf> {
        let path = self.blob_path(rec)?;
        let shard = path.parent().expect("root/xx/id");
        match std::fs::symlink_metadata(shard) {
            Ok(m) if !m.is_dir() => Err(Error::DamagedBlob {
                path: shard.into(),
                reason: "the blob's folder is not a folder (a symlink?); not followed".into(),
            }),
            _ => Ok(path),
        }
    }

    /// Opens a regular file's plaintext as a stream. When the record has a `Digest`, the
    /// reader checks the stored bytes against it as they stream (reported, not an error:
    /// [`BlobReader::digest_mismatch`]; see [`BlobReader::check_digest`] for strict mode).
    pub fn open_file(&self, rec: &Record) -> Result<BlobReader> {
        if rec.kind() != RecordKind::File {
            return Err(rec.bad(format!("is a {}, not a file", rec.kind().name())));
        }
        if let Some(p) = &rec.problem {
            return Err(rec.bad(p.clone()));
        }
        let path = self.checked_blob_path(rec)?;
        let reader = if !self.encrypted {
            BlobReader::plain(&path)?
        } else {
            let keys = self.require_keys()?;
            let wrapped = rec
                .file
                .as_ref()
                .and_then(|f| f.encryption_key.as_ref())
                .ok_or_else(|| rec.bad("no EncryptionKey in an encrypted backup"))?;
            let key = keys.unwrap_persistent(wrapped).map_err(|e| Error::Crypto {
                path: path.clone(),
                source: e,
            })?;
            BlobReader::encrypted(&path, &key)?
        };
        Ok(match rec.file.as_ref().and_then(|f| f.digest.as_deref()) {
            Some(d) => reader.check_digest(d, false),
            None => reader,
        })
    }

    /// Streams a regular file's plaintext into `w`.
    pub fn copy_file(&self, rec: &Record, w: &mut dyn std::io::Write) -> Result<FileReport> {
        let mut reader = self.open_file(rec)?;
        let padding_ok = reader.padding_ok();
        let bytes = reader.copy_to(w)?;
        Ok(FileReport {
            bytes,
            recorded_size: rec.size(),
            padding_ok,
            digest_mismatch: reader.digest_mismatch().cloned(),
        })
    }
}
