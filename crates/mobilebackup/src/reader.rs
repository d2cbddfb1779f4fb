//! Opening, unlocking and reading a backup folder.

use std::io::Read;
use std::path::{Path, PathBuf};

use dataprotection::{DeviceKey, KdfLimits, Keybag, Passkey, ProtectionClass, UnlockedKeybag};
use rusqlite::{Connection, OpenFlags};
use zeroize::Zeroizing;

use crate::blob::BlobReader;
use crate::layout::{
    self, FLAG_DIR, FLAG_FILE, FLAG_SYMLINK, INFO_PLIST, MANIFEST_DB, MANIFEST_PLIST, STATUS_PLIST,
};
use crate::mbfile::{self, MbFile};
use crate::plists::{read_dict, DeviceInfo, InfoPlist, ManifestPlist, StatusPlist};
use crate::{Error, Result};

/// Largest `Manifest.db` loaded into memory (real ones are up to a few hundred MB).
pub const MAX_MANIFEST_DB_BYTES: u64 = 4 << 30;

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

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
        if !db.is_file() {
            if root.join("Manifest.mbdb").is_file() {
                return Err(Error::Unsupported {
                    path: root.join("Manifest.mbdb"),
                    reason: "backups made by iOS 9 and earlier (Manifest.mbdb) are not supported"
                        .into(),
                });
            }
            let reason = if mplist.is_file() {
                "Manifest.db is missing (an iCloud download or an unfinished backup?)"
            } else {
                "no Manifest.db or Manifest.plist here"
            };
            return Err(Error::NotABackup {
                path: root,
                reason: reason.into(),
            });
        }
        let manifest = if mplist.is_file() {
            Some(ManifestPlist::from_dict(&mplist, read_dict(&mplist)?)?)
        } else {
            None
        };
        let info_path = root.join(INFO_PLIST);
        let info = if info_path.is_file() {
            Some(InfoPlist::from_dict(read_dict(&info_path)?))
        } else {
            None
        };
        let status_path = root.join(STATUS_PLIST);
        let status = if status_path.is_file() {
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
        let db_plain = std::fs::File::open(&db)
            .and_then(|mut f| f.read_exact(&mut head))
            .map(|_| &head == SQLITE_MAGIC)
            .unwrap_or(false);
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
        let len = std::fs::metadata(&path).map_err(Error::io(&path))?.len();
        if len > MAX_MANIFEST_DB_BYTES {
            return Err(Error::malformed(
                &path,
                format!(
                    "{len} bytes is beyond the {} GiB cap",
                    MAX_MANIFEST_DB_BYTES >> 30
                ),
            ));
        }
        if !self.encrypted {
            return BlobReader::plain(&path);
        }
        let keys = self.require_keys()?;
        let mk = self
            .manifest
            .as_ref()
            .and_then(|m| m.manifest_key.as_ref())
            .expect("checked in open");
        let dbkey = keys.unwrap_persistent(mk).map_err(|e| Error::Crypto {
            path: self.manifest_plist_path(),
            source: e,
        })?;
        // Without valid padding (tools that re-encrypt without it, spec P18) the whole
        // length is read; `manifest_db` loads whole pages only, so SQLite never sees junk.
        let reader = BlobReader::encrypted(&path, &dbkey).map_err(|e| match e {
            Error::DamagedBlob { path, reason } => Error::Malformed { path, reason },
            e => e,
        })?;
        Ok(reader)
    }

    /// Loads `Manifest.db` into an in-memory SQLite connection: plaintext never touches the disk.
    pub fn manifest_db(&self) -> Result<Connection> {
        let path = self.root.join(MANIFEST_DB);
        let mut reader = self.manifest_db_reader()?;
        let mut head = [0u8; 100];
        let mut check = self.manifest_db_reader()?;
        if check.read_exact(&mut head).is_err() || &head[..16] != SQLITE_MAGIC {
            let why = if self.encrypted {
                "did not decrypt to a SQLite database (damaged, or ManifestKey does not match)"
            } else {
                "is not a SQLite database"
            };
            return Err(Error::malformed(&path, format!("Manifest.db {why}")));
        }
        // SQLite's in-memory VFS rejects a trailing partial page, and Apple's
        // Manifest.db of an unencrypted backup keeps the 16-byte padding block
        // (spec §5.3): load whole pages only. Page size 1 means 65536.
        let page = match u16::from_be_bytes([head[16], head[17]]) {
            1 => 65536,
            p => p as usize,
        };
        if page < 512 || !page.is_power_of_two() {
            return Err(Error::malformed(
                &path,
                format!("Manifest.db has an invalid page size {page}"),
            ));
        }
        let len = reader.len() as usize / page * page;
        let mut conn = Connection::open_with_flags(
            ":memory:",
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::malformed(&path, format!("SQLite: {e}")))?;
        // A WAL-mode header (bytes 18–19 = 2, as in real iOS 14 backups) cannot be
        // opened from memory; mark it rollback-journal in our copy only.
        let mut first = [0u8; 100];
        reader.read_exact(&mut first).map_err(Error::io(&path))?;
        first[18] = 1;
        first[19] = 1;
        let stream = std::io::Cursor::new(first).chain(reader);
        conn.deserialize_read_exact(rusqlite::MAIN_DB, stream, len, true)
            .map_err(|e| Error::malformed(&path, format!("cannot load Manifest.db: {e}")))?;
        Ok(conn)
    }

    /// Reads every row of `Manifest.db`. Rows that fail to decode are kept with a `problem`.
    pub fn catalog(&self) -> Result<Catalog> {
        let path = self.root.join(MANIFEST_DB);
        let conn = self.manifest_db()?;
        let sql_err =
            |e: rusqlite::Error| Error::malformed(&path, format!("Manifest.db is corrupt: {e}"));
        let mut stmt = conn
            .prepare("SELECT fileID, domain, relativePath, flags, file FROM Files ORDER BY domain, relativePath")
            .map_err(sql_err)?;
        let mut rows = stmt.query([]).map_err(sql_err)?;
        let mut cat = Catalog::default();
        while let Some(row) = rows.next().map_err(sql_err)? {
            let file_id: Option<String> = row.get(0).ok();
            let domain: Option<String> = row.get(1).ok();
            let rel: Option<String> = row.get(2).ok();
            let flags: Option<i64> = row.get(3).ok();
            let blob: Option<Vec<u8>> = row.get(4).ok();
            let (Some(file_id), Some(domain), Some(relative_path), Some(flags)) =
                (file_id.clone(), domain, rel, flags)
            else {
                cat.skipped.push(format!(
                    "row with fileID {:?} has NULL or non-text columns",
                    file_id.unwrap_or_default()
                ));
                continue;
            };
            let mut rec = Record {
                file_id,
                domain,
                relative_path,
                flags,
                file: None,
                problem: None,
                raw: Vec::new(),
            };
            rec.problem = check_record(&mut rec, blob.as_deref());
            rec.raw = blob.unwrap_or_default();
            cat.records.push(rec);
        }
        Ok(cat)
    }

    /// Where a record's blob lives; an error for records that cannot have one.
    pub fn blob_path(&self, rec: &Record) -> Result<PathBuf> {
        layout::blob_path(&self.root, &rec.file_id)
            .ok_or_else(|| rec.bad("fileID is not 40 hex digits"))
    }

    /// Opens a regular file's plaintext as a stream.
    pub fn open_file(&self, rec: &Record) -> Result<BlobReader> {
        if rec.kind() != RecordKind::File {
            return Err(rec.bad(format!("is a {}, not a file", rec.kind().name())));
        }
        if let Some(p) = &rec.problem {
            return Err(rec.bad(p.clone()));
        }
        let path = self.blob_path(rec)?;
        if !self.encrypted {
            return BlobReader::plain(&path);
        }
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
        BlobReader::encrypted(&path, &key)
    }

    /// Streams a regular file's plaintext into `w`.
    pub fn copy_file(&self, rec: &Record, w: &mut dyn std::io::Write) -> Result<FileReport> {
        let reader = self.open_file(rec)?;
        let padding_ok = reader.padding_ok();
        let bytes = reader.copy_to(w)?;
        Ok(FileReport {
            bytes,
            recorded_size: rec.size(),
            padding_ok,
        })
    }
}

/// Validates a row and decodes its MBFile; returns the problem, if any.
fn check_record(rec: &mut Record, blob: Option<&[u8]>) -> Option<String> {
    if let Err(e) = layout::check_domain(&rec.domain) {
        return Some(format!("unsafe domain: {e}"));
    }
    if let Err(e) = layout::check_relative_path(&rec.relative_path) {
        return Some(format!("unsafe relativePath: {e}"));
    }
    if !layout::is_valid_file_id(&rec.file_id) {
        return Some(format!(
            "fileID {:?} is not 40 lowercase hex digits",
            rec.file_id.escape_debug().to_string()
        ));
    }
    let Some(blob) = blob else {
        return Some("no MBFile (file column is NULL)".into());
    };
    match mbfile::decode(blob) {
        Ok(f) => {
            let problem = if f.relative_path != rec.relative_path {
                Some(format!(
                    "MBFile RelativePath {:?} differs from the row's",
                    f.relative_path
                ))
            } else {
                None
            };
            rec.file = Some(f);
            problem
        }
        Err(e) => Some(format!("MBFile does not decode: {e}")),
    }
}
