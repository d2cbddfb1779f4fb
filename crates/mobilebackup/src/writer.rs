//! Writing a complete backup folder, encrypted or not (spec §1–§7, §9, §11, §15).
//!
//! [`BackupWriter::create`] makes a fresh keybag (one KDF run for encrypted backups) and a
//! hidden staging folder next to the output folder. [`BackupWriter::add`] (thread-safe) and
//! [`BackupWriter::add_all`] (parallel) stream each file's content through AES-256-CBC into its
//! blob `xx/<fileID>`. [`BackupWriter::finish`] adds the parent-directory and domain-root rows
//! Apple backups always have, writes `Manifest.db` (encrypted in memory: its plaintext never
//! touches the disk), `Manifest.plist`, `Info.plist` and finally `Status.plist`, then renames the
//! staging folder into place. Until that rename nothing exists at the output path, and on any
//! failure (or when the writer is dropped unfinished) the staging folder is removed, so an
//! interrupted run never leaves something that looks like a backup.
//!
//! ```no_run
//! use mobilebackup::writer::{BackupWriter, Content, Encryption, NewRecord, WriterOptions};
//! # fn main() -> mobilebackup::Result<()> {
//! let opts = WriterOptions {
//!     encryption: Some(Encryption::new("secret")),
//!     ..WriterOptions::default()
//! };
//! let w = BackupWriter::create("/tmp/out/00008030-001229C01146402E".as_ref(), opts)?;
//! w.add(NewRecord::file("HomeDomain", "Library/Notes/a.txt", Content::Bytes(b"hi".to_vec())))?;
//! let folder = w.finish()?;
//! # let _ = folder; Ok(()) }
//! ```

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use dataprotection::{
    cbc, DeviceKey, KdfLimits, Key256, Keybag, PendingBackupKeybag, ProtectionClass, UnlockedKeybag,
};
use plist::{Dictionary, Value};
use rand::Rng;
use sha1::{Digest, Sha1};
use zeroize::Zeroizing;

use crate::layout;
use crate::manifestdb;
use crate::mbfile::{self, MbFile};
use crate::plists::DeviceInfo;
use crate::staging::Staging;
use crate::{Error, Record, Result};

/// Size of the chunks file contents are read, encrypted and written in (1 MiB).
pub const CHUNK: usize = 1 << 20;

thread_local! {
    /// The streaming buffer of [`BackupWriter::add`] on this thread (see `stream_blob`).
    static STREAM_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// No caps: the writer chose the KDF parameters itself.
const NO_KDF_LIMITS: KdfLimits = KdfLimits {
    max_dpic: u32::MAX,
    max_iter: u32::MAX,
};

/// Apple's PBKDF2-SHA256 iteration count (`DPIC`) for new encrypted backups.
pub const DEFAULT_DPIC: u32 = 10_000_000;

/// First `InodeNumber` handed out; every record gets the next one.
const INODE_BASE: u64 = 1_000_000;

/// uid/gid of `mobile`, used for the directory rows the writer adds itself.
const MOBILE: u32 = 501;

/// `st_mode` type bits.
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// Placeholder icon for `Info.plist` `Applications` entries: a valid 1×1 transparent PNG.
const PLACEHOLDER_PNG_HEX: &str = "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da636460f85f0f0002870180eb47ba920000000049454e44ae426082";

/// Options of a new backup.
#[derive(Debug)]
pub struct WriterOptions {
    /// Device identity, written to `Manifest.plist` `Lockdown` and to `Info.plist`. Fields
    /// left `None` get defaults: `"keybag virtual device"`, `"iPhone14,2"`, `"17.5.1"`,
    /// `"21F90"`, a random 12-character serial number and a random 40-hex-digit UDID.
    pub device: DeviceInfo,
    /// `Some` for an encrypted backup, `None` for an unencrypted one.
    pub encryption: Option<Encryption>,
    /// Backup date, truncated to whole seconds (`Manifest.plist` `Date`, `Info.plist` `Last Backup Date`,
    /// `Status.plist` `Date`, and the times of the directory rows the writer adds).
    pub date: SystemTime,
    /// `Manifest.plist` `WasPasscodeSet`.
    pub passcode_set: bool,
    /// Installed apps (bundle ids), listed in `Manifest.plist` `Applications` and
    /// `Info.plist` `Applications` / `Installed Applications`. Duplicates are ignored.
    pub applications: Vec<String>,
    /// Unencrypted backups only: the keys of the keybag's password and device layers. `None`
    /// (the default) uses a throwaway password layer and a random device key, so the keychain
    /// of the backup opens nowhere. A (virtual) device passes a password-layer key it can
    /// re-derive and its own key 0x835, so that it alone can restore that keychain, as iOS
    /// does (design §4.3: "Unenc. local → same device: keychain restored").
    pub unencrypted_keybag: Option<UnencryptedKeybag>,
    /// An encrypted backup under a keybag made earlier (with its passkey), instead of a fresh
    /// one: no KDF runs. This is how a phone with "encrypt local backup" on makes every
    /// backup after the first: it keeps the backup keybag and the key derived from the
    /// password, so incremental backups neither ask for the password nor re-derive it.
    /// Exclusive with [`encryption`](Self::encryption) (both set is an error).
    pub existing_keybag: Option<ExistingKeybag>,
}

/// A backup keybag made earlier, with the keys that open it (see
/// [`WriterOptions::existing_keybag`]).
pub struct ExistingKeybag {
    /// The keybag (as [`Keybag::new_backup_with_passkey`] made it); written unchanged as
    /// `Manifest.plist` `BackupKeyBag`.
    pub keybag: Keybag,
    /// The key the backup password derived to (the keybag's password layer).
    pub passkey: dataprotection::Passkey,
    /// The device key 0x835 sealing classes 5 and 9–11 (`WRAP=3`).
    pub device_key: DeviceKey,
}

impl fmt::Debug for ExistingKeybag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExistingKeybag")
            .field("uuid", &self.keybag.uuid_string())
            .field("passkey", &"(redacted)")
            .field("device_key", &self.device_key)
            .finish()
    }
}

/// The keys sealing an unencrypted backup's keybag (see [`WriterOptions::unencrypted_keybag`]).
pub struct UnencryptedKeybag {
    /// Wraps every class key (the password layer, `WRAP` bit 2).
    pub passkey: dataprotection::Passkey,
    /// The device key 0x835 that also seals classes 5–11 (`WRAP=3`).
    pub device_key: DeviceKey,
}

impl fmt::Debug for UnencryptedKeybag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnencryptedKeybag")
            .field("passkey", &"(redacted)")
            .field("device_key", &self.device_key)
            .finish()
    }
}

impl Default for WriterOptions {
    /// An unencrypted backup of a default virtual device, dated now, no apps.
    fn default() -> Self {
        Self {
            device: DeviceInfo::default(),
            encryption: None,
            date: SystemTime::now(),
            passcode_set: false,
            applications: Vec::new(),
            unencrypted_keybag: None,
            existing_keybag: None,
        }
    }
}

/// Encryption settings of a new backup.
pub struct Encryption {
    /// The backup password (UTF-8 bytes, as the device uses them). Wiped on drop.
    pub password: Zeroizing<Vec<u8>>,
    /// PBKDF2-SHA256 iterations (`DPIC`); Apple uses [`DEFAULT_DPIC`]. Small values are
    /// for tests only: they make the password cheap to guess.
    pub dpic: u32,
    /// The device key 0x835 that seals classes 5 and 9–11 (`WRAP=3`). `None` picks a random
    /// key that is then forgotten, so those classes are sealed to a device that does not
    /// exist, which is how a real backup looks off-device.
    pub device_key: Option<DeviceKey>,
}

impl Encryption {
    /// Encryption with `password`, Apple's [`DEFAULT_DPIC`] and a random device key.
    pub fn new(password: impl Into<Vec<u8>>) -> Self {
        Self {
            password: Zeroizing::new(password.into()),
            dpic: DEFAULT_DPIC,
            device_key: None,
        }
    }
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryption")
            .field("password", &"(redacted)")
            .field("dpic", &self.dpic)
            .field("device_key", &self.device_key)
            .finish()
    }
}

/// Where a regular file's content comes from. It is streamed in [`CHUNK`]s, never loaded whole
/// (except `Bytes`, which already is).
pub enum Content {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A file on the local file system, opened and read when the record is added.
    File(PathBuf),
    /// Any reader, read to its end.
    Reader(Box<dyn Read + Send>),
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Content::File(p) => f.debug_tuple("File").field(p).finish(),
            Content::Reader(_) => f.write_str("Reader(..)"),
        }
    }
}

/// What a record is.
#[derive(Debug)]
pub enum Kind {
    /// A regular file (`Files.flags = 1`) with a blob.
    File {
        /// The file's bytes.
        content: Content,
        /// Data-protection class, 1–4 (3 is iOS's default for app data, 4 = no protection).
        protection_class: u32,
    },
    /// A directory (`Files.flags = 2`).
    Directory,
    /// A symbolic link (`Files.flags = 4`).
    Symlink {
        /// The link target as stored in `Target` (Apple stores absolute device paths).
        target: String,
    },
}

/// One file, directory or symlink to put into the backup.
#[derive(Debug)]
pub struct NewRecord {
    /// Domain, e.g. `HomeDomain` or `AppDomain-com.example.app` (no `/`, `\` or NUL).
    pub domain: String,
    /// Path inside the domain, `/`-separated, no leading `/`, no `.`/`..`/empty components.
    /// `""` is the domain root, which may only be a directory.
    pub relative_path: String,
    /// File, directory or symlink.
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777` is kept); the type bits come from `kind`.
    pub mode: u32,
    /// Owner uid (501 = mobile, 0 = root).
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time, Unix seconds.
    pub mtime: i64,
    /// Status change time, Unix seconds.
    pub ctime: i64,
    /// Creation time, Unix seconds.
    pub birth: i64,
    /// `ExtendedAttributes`: a binary plist dictionary (attribute name → data), stored as is.
    pub extended_attributes: Option<Vec<u8>>,
}

impl NewRecord {
    fn with_kind(domain: impl Into<String>, relative_path: impl Into<String>, kind: Kind) -> Self {
        let now = unix_seconds(SystemTime::now());
        let mode = match kind {
            Kind::File { .. } => 0o644,
            _ => 0o755,
        };
        Self {
            domain: domain.into(),
            relative_path: relative_path.into(),
            kind,
            mode,
            uid: MOBILE,
            gid: MOBILE,
            mtime: now,
            ctime: now,
            birth: now,
            extended_attributes: None,
        }
    }

    /// A regular file of protection class 3, mode 0644, owned by mobile (501), times = now.
    pub fn file(
        domain: impl Into<String>,
        relative_path: impl Into<String>,
        content: Content,
    ) -> Self {
        Self::with_kind(
            domain,
            relative_path,
            Kind::File {
                content,
                protection_class: 3,
            },
        )
    }

    /// A directory, mode 0755, owned by mobile (501), times = now.
    pub fn directory(domain: impl Into<String>, relative_path: impl Into<String>) -> Self {
        Self::with_kind(domain, relative_path, Kind::Directory)
    }

    /// A symbolic link to `target`, mode 0755, owned by mobile (501), times = now.
    pub fn symlink(
        domain: impl Into<String>,
        relative_path: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self::with_kind(
            domain,
            relative_path,
            Kind::Symlink {
                target: target.into(),
            },
        )
    }
}

/// Device identity with the defaults filled in.
#[derive(Debug, Clone)]
struct Device {
    name: String,
    product_type: String,
    product_version: String,
    build_version: String,
    serial: String,
    udid: String,
}

impl Device {
    fn resolve(d: DeviceInfo) -> Self {
        let mut rng = rand::thread_rng();
        const SERIAL_CHARS: &[u8] = b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ";
        Self {
            name: d
                .device_name
                .unwrap_or_else(|| "keybag virtual device".into()),
            product_type: d.product_type.unwrap_or_else(|| "iPhone14,2".into()),
            product_version: d.product_version.unwrap_or_else(|| "17.5.1".into()),
            build_version: d.build_version.unwrap_or_else(|| "21F90".into()),
            serial: d.serial_number.unwrap_or_else(|| {
                (0..12)
                    .map(|_| SERIAL_CHARS[rng.gen_range(0..SERIAL_CHARS.len())] as char)
                    .collect()
            }),
            udid: d.udid.unwrap_or_else(|| random_hex(20)),
        }
    }
}

/// A finished row of `Manifest.db`.
#[derive(Debug, Clone)]
struct Row {
    domain: String,
    flags: i64,
    file: MbFile,
    /// `file` encoded already: a row an in-place update keeps exactly as it was.
    encoded: Option<Vec<u8>>,
}

/// An existing blob to link instead of writing one.
struct Existing<'a> {
    blob: &'a Path,
    file_key: ExistingKey<'a>,
    size: u64,
    digest: Option<Vec<u8>>,
    /// In-place updates: the record's row in the backup being updated, decoded and as stored.
    /// Its blob already is this record's blob there: nothing to link.
    kept_row: Option<(&'a MbFile, &'a [u8])>,
}

/// The key of an existing blob.
enum ExistingKey<'a> {
    /// Unencrypted backups.
    None,
    /// The plain per-file key, wrapped under this backup's class key.
    Plain(&'a Key256),
    /// `EncryptionKey` as already wrapped under this backup's keybag: kept as is.
    Wrapped(&'a [u8]),
}

/// What writing a blob produced.
struct BlobInfo {
    size: u64,
    digest: Option<Vec<u8>>,
    encryption_key: Option<Vec<u8>>,
}

/// The backup keybag: final, or waiting for the password KDF running on another thread.
enum WriterKeybag {
    Ready(Keybag),
    Pending(
        PendingBackupKeybag,
        std::thread::JoinHandle<dataprotection::Result<dataprotection::Passkey>>,
    ),
    /// Only while `resolve_keybag` swaps the state.
    Taken,
}

impl WriterKeybag {
    fn uuid_string(&self) -> Option<String> {
        match self {
            WriterKeybag::Ready(kb) => kb.uuid_string(),
            WriterKeybag::Pending(p, _) => p.uuid_string(),
            WriterKeybag::Taken => None,
        }
    }
}

/// Builds one backup folder. `Sync`: records may be added from many threads at once.
///
/// Dropping a writer without a successful [`finish`](Self::finish) removes its staging folder.
pub struct BackupWriter {
    out_dir: PathBuf,
    /// `None` only after `finish` handed it on.
    staging: Option<Staging>,
    device: Device,
    date: SystemTime,
    passcode_set: bool,
    applications: Vec<String>,
    keybag: WriterKeybag,
    /// The passkey opening `keybag` (encrypted backups, once known).
    passkey: Option<dataprotection::Passkey>,
    /// Class keys, for encrypted backups.
    unlocked: Option<UnlockedKeybag>,
    /// Class keys of an unencrypted backup made with [`WriterOptions::unencrypted_keybag`]
    /// (used for the keychain only; file blobs of unencrypted backups stay plain).
    unencrypted_keys: Option<UnlockedKeybag>,
    device_key: DeviceKey,
    /// Rows by fileID; `None` while a record's blob is being written (reserves the fileID).
    rows: Mutex<BTreeMap<String, Option<Row>>>,
    next_inode: AtomicU64,
    /// Which of the 256 `xx` blob folders exist already.
    dirs_made: Vec<AtomicBool>,
    /// In-place updates: the fileIDs of the files the backup being updated lists.
    previous_blobs: Option<Vec<String>>,
}

impl fmt::Debug for BackupWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupWriter")
            .field("out_dir", &self.out_dir)
            .field("staging", &self.staging.as_ref().map(Staging::path))
            .field("encrypted", &self.unlocked.is_some())
            .finish_non_exhaustive()
    }
}

impl BackupWriter {
    /// Starts a backup that [`finish`](Self::finish) will place at `out_dir`.
    ///
    /// `out_dir` must not exist (an [`Error::Io`] with kind `AlreadyExists` naming it
    /// otherwise) and its parent must be an existing folder. Work happens in the staging
    /// folder `<parent>/.<name>.keybag-partial-<random>`. For encrypted backups this runs the
    /// password KDF once (`dpic` PBKDF2-SHA256 iterations, seconds at Apple's count), unless
    /// [`WriterOptions::existing_keybag`] gives the keybag and its passkey (no KDF).
    pub fn create(out_dir: &Path, opts: WriterOptions) -> Result<Self> {
        let staging = Staging::new(out_dir)?;
        Self::with_staging(out_dir, staging, opts, None)
    }

    /// Starts an in-place update of the backup at `out_dir` (an incremental backup, see
    /// [`crate::update`]): records whose blob is unchanged are kept where they are with
    /// [`keep_blob`](Self::keep_blob); everything else is added as usual and staged in
    /// `out_dir/.keybag-update`, and [`finish`](Self::finish) commits it. `previous`: the
    /// records of the current `Manifest.db`; the blobs of its regular files that the new
    /// backup no longer has are deleted when it commits, and new rows get inode numbers
    /// above its own. A leftover update folder is an error: run
    /// [`crate::update::recover`] first.
    pub fn update(out_dir: &Path, opts: WriterOptions, previous: &[Record]) -> Result<Self> {
        if !out_dir.join(layout::MANIFEST_PLIST).is_file() {
            return Err(Error::NotABackup {
                path: out_dir.to_path_buf(),
                reason: "no Manifest.plist: only an existing backup can be updated".into(),
            });
        }
        let previous_blobs = previous
            .iter()
            .filter(|r| r.kind() == crate::RecordKind::File)
            .map(|r| r.file_id.clone())
            .collect();
        let max_inode = previous
            .iter()
            .filter_map(|r| r.file.as_ref().map(|f| f.inode))
            .max()
            .unwrap_or(0);
        let staging = Staging::update(out_dir)?;
        let w = Self::with_staging(out_dir, staging, opts, Some(previous_blobs))?;
        w.next_inode.store(
            max_inode.saturating_add(1).max(INODE_BASE),
            Ordering::Relaxed,
        );
        Ok(w)
    }

    fn with_staging(
        out_dir: &Path,
        staging: Staging,
        opts: WriterOptions,
        previous_blobs: Option<Vec<String>>,
    ) -> Result<Self> {
        let WriterOptions {
            device,
            encryption,
            date,
            passcode_set,
            applications,
            unencrypted_keybag,
            existing_keybag,
        } = opts;
        // Whole seconds: Python's plistlib (mvt) rejects fractional seconds in XML dates.
        let date = UNIX_EPOCH + std::time::Duration::from_secs(unix_seconds(date).max(0) as u64);
        let mut unencrypted_keys = None;
        let mut passkey = None;
        let (keybag, unlocked, device_key) = match (encryption, existing_keybag) {
            (Some(_), Some(_)) => {
                return Err(Error::Malformed {
                    path: out_dir.to_path_buf(),
                    reason: "writer options: `encryption` and `existing_keybag` are exclusive"
                        .into(),
                })
            }
            (None, Some(ex)) => {
                passkey = Some(ex.passkey.clone());
                let unlocked = ex
                    .keybag
                    .unlock(&ex.passkey, Some(&ex.device_key))
                    .map_err(|source| match source {
                        dataprotection::Error::WrongPassword => Error::WrongPassword {
                            path: out_dir.to_path_buf(),
                        },
                        source => Error::Crypto {
                            path: out_dir.to_path_buf(),
                            source,
                        },
                    })?;
                (
                    WriterKeybag::Ready(ex.keybag),
                    Some(unlocked),
                    ex.device_key,
                )
            }
            (Some(enc), None) => {
                // The class keys exist at once; the password KDF (a second at Apple's
                // count) runs on its own thread while files are encrypted, and `finish`
                // waits for it to seal the keybag.
                let device_key = enc.device_key.clone().unwrap_or_else(DeviceKey::random);
                let (pending, unlocked) = Keybag::new_backup_pending(&device_key, enc.dpic);
                let params = pending.kdf_params();
                let password = enc.password;
                let kdf = std::thread::Builder::new()
                    .name("backup-kdf".into())
                    .spawn(move || params.derive(&password, &NO_KDF_LIMITS))
                    .map_err(Error::io(out_dir))?;
                (
                    WriterKeybag::Pending(pending, kdf),
                    Some(unlocked),
                    device_key,
                )
            }
            (None, None) => match unencrypted_keybag {
                Some(UnencryptedKeybag {
                    passkey,
                    device_key,
                }) => {
                    let (kb, keys) = Keybag::new_unencrypted_backup_keyed(&passkey, &device_key);
                    unencrypted_keys = Some(keys);
                    (WriterKeybag::Ready(kb), None, device_key)
                }
                None => {
                    let device_key = DeviceKey::random();
                    (
                        WriterKeybag::Ready(Keybag::new_unencrypted_backup(&device_key)),
                        None,
                        device_key,
                    )
                }
            },
        };
        let mut seen = BTreeSet::new();
        let applications = applications
            .into_iter()
            .filter(|a| seen.insert(a.clone()))
            .collect();

        Ok(Self {
            out_dir: out_dir.to_path_buf(),
            staging: Some(staging),
            device: Device::resolve(device),
            date,
            passcode_set,
            applications,
            keybag,
            passkey,
            unlocked,
            unencrypted_keys,
            device_key,
            rows: Mutex::new(BTreeMap::new()),
            next_inode: AtomicU64::new(INODE_BASE),
            dirs_made: (0..256).map(|_| AtomicBool::new(false)).collect(),
            previous_blobs,
        })
    }

    /// The final keybag, waiting for the background password KDF if it still runs.
    fn resolve_keybag(&mut self) -> Result<&Keybag> {
        if let WriterKeybag::Pending(..) = self.keybag {
            let WriterKeybag::Pending(pending, kdf) =
                std::mem::replace(&mut self.keybag, WriterKeybag::Taken)
            else {
                unreachable!("checked just above")
            };
            let crypto = |source| Error::Crypto {
                path: self.out_dir.clone(),
                source,
            };
            let passkey = match kdf.join() {
                Ok(r) => r.map_err(crypto)?,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            self.keybag = WriterKeybag::Ready(pending.seal(&passkey));
            self.passkey = Some(passkey);
        }
        match &self.keybag {
            WriterKeybag::Ready(kb) => Ok(kb),
            _ => unreachable!("resolved just above"),
        }
    }

    /// The keybag of this encrypted backup with the passkey and device key that open it
    /// (waiting for the background password KDF if it still runs): what a device keeps
    /// so that later backups need neither the password nor a KDF run
    /// ([`WriterOptions::existing_keybag`]). `None` for unencrypted backups.
    pub fn kept_keybag(&mut self) -> Result<Option<ExistingKeybag>> {
        if self.unlocked.is_none() {
            return Ok(None);
        }
        let keybag = self.resolve_keybag()?.clone();
        Ok(self.passkey.clone().map(|passkey| ExistingKeybag {
            keybag,
            passkey,
            device_key: self.device_key.clone(),
        }))
    }

    /// The keybag UUID (lowercase, hyphenated), as a keychain's `keybag-uuid` refers to it.
    pub fn keybag_uuid(&self) -> Option<String> {
        self.keybag.uuid_string()
    }

    /// For tests: the device key 0x835 that seals classes 5 and 9–11 of an encrypted backup
    /// (classes 5–11 of an unencrypted one, whose password layer is a random key that is
    /// thrown away). It is the one from [`Encryption::device_key`], or the random one picked
    /// in its place.
    pub fn device_key(&self) -> Option<&DeviceKey> {
        Some(&self.device_key)
    }

    /// Class keys of an encrypted backup (all of 1–11), or of an unencrypted one made with
    /// [`WriterOptions::unencrypted_keybag`]; `None` for other unencrypted ones.
    pub(crate) fn class_keys(&self) -> Option<&UnlockedKeybag> {
        self.unlocked.as_ref().or(self.unencrypted_keys.as_ref())
    }

    /// The backup date, Unix seconds.
    pub(crate) fn backup_date_unix(&self) -> i64 {
        unix_seconds(self.date)
    }

    /// The staging folder this writer works in (removed on failure or drop).
    pub fn staging_dir(&self) -> &Path {
        self.staging.as_ref().expect("present until finish").path()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Option<Row>>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one record. Thread-safe.
    ///
    /// The domain and path are checked with [`layout::check_domain`] and
    /// [`layout::check_relative_path`]; a hostile or invalid record, a second record with the
    /// same fileID, a file or symlink at a domain root, a file class outside 1–4 or an empty
    /// symlink target is an [`Error::BadRecord`]. File content is streamed in [`CHUNK`]s through
    /// AES-256-CBC under a fresh random key into `xx/<fileID>` (written to a temporary name,
    /// then renamed); `Size` is the plaintext length and `Digest` (in the domains of
    /// [`layout::domain_has_digest`]) the SHA-1 of the stored blob.
    ///
    /// A failed `add` leaves nothing of that record behind and the writer usable; drop it to
    /// abandon the whole backup.
    pub fn add(&self, rec: NewRecord) -> Result<()> {
        self.add_inner(rec, None)
    }

    /// Adds a regular file whose encrypted blob already exists (incremental backups): `blob` is
    /// hard-linked (or copied, across file systems) into the backup instead of re-encrypting
    /// the content. `rec` gives the metadata and the class (its content is ignored);
    /// `file_key` is the blob's per-file key (required for encrypted backups, re-wrapped
    /// under this backup's class key; must be `None` for unencrypted ones), `size` its
    /// plaintext length and `digest` its `Digest` (computed from the blob when `None` and the
    /// domain has digests). The blob is not checked: the caller vouches that it decrypts under
    /// `file_key` to `size` bytes.
    pub fn add_existing_blob(
        &self,
        rec: NewRecord,
        blob: &Path,
        file_key: Option<&Key256>,
        size: u64,
        digest: Option<Vec<u8>>,
    ) -> Result<()> {
        if file_key.is_some() != self.unlocked.is_some() {
            return Err(Error::BadRecord {
                domain: rec.domain,
                relative_path: rec.relative_path,
                reason: "an existing blob needs its file key exactly when the backup is encrypted"
                    .into(),
            });
        }
        self.add_inner(
            rec,
            Some(Existing {
                blob,
                file_key: file_key.map_or(ExistingKey::None, ExistingKey::Plain),
                size,
                digest,
                kept_row: None,
            }),
        )
    }

    /// [`add_existing_blob`](Self::add_existing_blob) for an encrypted backup made under the
    /// same keybag as the blob's previous backup ([`WriterOptions::existing_keybag`]):
    /// `wrapped_key` is the blob's `EncryptionKey` from that backup and is kept as is (no
    /// re-wrap). It must name the record's class and open under this backup's keybag (checked;
    /// an [`Error::BadRecord`] otherwise).
    pub fn add_existing_blob_wrapped(
        &self,
        rec: NewRecord,
        blob: &Path,
        wrapped_key: &[u8],
        size: u64,
        digest: Option<Vec<u8>>,
    ) -> Result<()> {
        let bad = |reason: &str| Error::BadRecord {
            domain: rec.domain.clone(),
            relative_path: rec.relative_path.clone(),
            reason: reason.into(),
        };
        let Some(unlocked) = &self.unlocked else {
            return Err(bad("a wrapped file key needs an encrypted backup"));
        };
        self.check_wrapped(&rec, unlocked, wrapped_key)?;
        self.add_inner(
            rec,
            Some(Existing {
                blob,
                file_key: ExistingKey::Wrapped(wrapped_key),
                size,
                digest,
                kept_row: None,
            }),
        )
    }

    /// Checks that `wrapped_key` names `rec`'s class (a regular file) and opens under this
    /// backup's keybag.
    fn check_wrapped(
        &self,
        rec: &NewRecord,
        unlocked: &UnlockedKeybag,
        wrapped_key: &[u8],
    ) -> Result<()> {
        let bad = |reason: &str| Error::BadRecord {
            domain: rec.domain.clone(),
            relative_path: rec.relative_path.clone(),
            reason: reason.into(),
        };
        let class = match &rec.kind {
            Kind::File {
                protection_class, ..
            } => *protection_class,
            _ => return Err(bad("an existing blob must be a regular file")),
        };
        if wrapped_key.len() < 4
            || ProtectionClass::masked(u32::from_le_bytes(
                wrapped_key[..4].try_into().expect("4 bytes"),
            )) != ProtectionClass(class)
        {
            return Err(bad("the wrapped file key names another protection class"));
        }
        if unlocked.unwrap_persistent(wrapped_key).is_err() {
            return Err(bad(
                "the wrapped file key does not open under this backup's keybag",
            ));
        }
        Ok(())
    }

    /// In-place updates ([`update`](Self::update)): keeps the record's blob where the
    /// backup being updated has it, untouched, as `previous` (that backup's record of the
    /// same domain and path) describes it: its `EncryptionKey` (kept as is; required exactly
    /// when the backup is encrypted, and checked as by
    /// [`add_existing_blob_wrapped`](Self::add_existing_blob_wrapped), so the writer must
    /// use the same keybag), `Size`, `Digest` and `InodeNumber`. `rec` gives the metadata;
    /// when it matches too, the row's stored bytes are kept without re-encoding.
    pub fn keep_blob(&self, rec: NewRecord, previous: &Record) -> Result<()> {
        let bad = |reason: &str| Error::BadRecord {
            domain: rec.domain.clone(),
            relative_path: rec.relative_path.clone(),
            reason: reason.into(),
        };
        if self.previous_blobs.is_none() {
            return Err(bad("keep_blob needs a writer made by BackupWriter::update"));
        }
        let Some(old) = previous
            .file
            .as_ref()
            .filter(|_| previous.problem.is_none())
        else {
            return Err(bad("the previous record is not usable"));
        };
        if previous.domain != rec.domain
            || previous.relative_path != rec.relative_path
            || previous.kind() != crate::RecordKind::File
        {
            return Err(bad("the previous record is another file"));
        }
        layout::check_domain(&rec.domain).map_err(|r| bad(&r))?;
        layout::check_relative_path(&rec.relative_path).map_err(|r| bad(&r))?;
        let blob = layout::blob_path(&self.out_dir, &previous.file_id)
            .ok_or_else(|| bad("the previous record's fileID is not 40 hex digits"))?;
        if !fs::symlink_metadata(&blob).is_ok_and(|m| m.is_file()) {
            return Err(bad("the blob to keep is not in the backup"));
        }
        let file_key = match (&self.unlocked, old.encryption_key.as_deref()) {
            (None, None) => ExistingKey::None,
            (Some(unlocked), Some(w)) => {
                self.check_wrapped(&rec, unlocked, w)?;
                ExistingKey::Wrapped(w)
            }
            _ => {
                return Err(bad(
                    "a kept blob needs its wrapped key exactly when the backup is encrypted",
                ))
            }
        };
        self.add_inner(
            rec,
            Some(Existing {
                blob: &blob,
                file_key,
                size: old.size,
                digest: old.digest.clone(),
                kept_row: Some((old, &previous.raw)),
            }),
        )
    }

    fn add_inner(&self, rec: NewRecord, existing: Option<Existing<'_>>) -> Result<()> {
        let NewRecord {
            domain,
            relative_path,
            kind,
            mode,
            uid,
            gid,
            mtime,
            ctime,
            birth,
            extended_attributes,
        } = rec;
        let bad = |reason: String| Error::BadRecord {
            domain: domain.clone(),
            relative_path: relative_path.clone(),
            reason,
        };
        layout::check_domain(&domain).map_err(bad)?;
        layout::check_relative_path(&relative_path).map_err(bad)?;
        match &kind {
            Kind::File {
                protection_class, ..
            } => {
                if relative_path.is_empty() {
                    return Err(bad("a domain root must be a directory".into()));
                }
                if !(1..=4).contains(protection_class) {
                    return Err(bad(format!(
                        "protection class {protection_class} is not a file class (1-4)"
                    )));
                }
            }
            Kind::Symlink { target } => {
                if relative_path.is_empty() {
                    return Err(bad("a domain root must be a directory".into()));
                }
                if target.is_empty() || target.contains('\0') {
                    return Err(bad("symlink target is empty or contains NUL".into()));
                }
            }
            Kind::Directory => {}
        }

        let file_id = layout::file_id(&domain, &relative_path);
        match self.lock().entry(file_id.clone()) {
            Entry::Occupied(_) => {
                return Err(bad(format!(
                    "duplicate record (fileID {file_id} is already in the backup)"
                )))
            }
            Entry::Vacant(v) => {
                v.insert(None);
            }
        }

        let perm = mode & 0o7777;
        // A row kept by an in-place update keeps its inode number (and, when nothing else
        // changed either, its encoded bytes).
        let kept_row = existing.as_ref().and_then(|ex| ex.kept_row);
        let inode = match kept_row {
            Some((old, _)) => old.inode,
            None => self.next_inode.fetch_add(1, Ordering::Relaxed),
        };
        let mut file = MbFile {
            relative_path: relative_path.clone(),
            target: None,
            digest: None,
            encryption_key: None,
            extended_attributes,
            mode: 0,
            inode,
            uid,
            gid,
            mtime,
            ctime,
            birth,
            size: 0,
            protection_class: 0,
            flags: 0,
        };
        let flags = match kind {
            Kind::File {
                content,
                protection_class,
            } => {
                let written = match existing {
                    None => self.write_blob(
                        &file_id,
                        &domain,
                        &relative_path,
                        content,
                        protection_class,
                    ),
                    Some(ex) => self.link_blob(&file_id, &domain, ex, protection_class),
                };
                match written {
                    Ok(info) => {
                        file.size = info.size;
                        file.digest = info.digest;
                        file.encryption_key = info.encryption_key;
                    }
                    Err(e) => {
                        self.lock().remove(&file_id);
                        return Err(e);
                    }
                }
                file.mode = S_IFREG | perm;
                file.protection_class = protection_class;
                layout::FLAG_FILE
            }
            Kind::Directory => {
                file.mode = S_IFDIR | perm;
                layout::FLAG_DIR
            }
            Kind::Symlink { target } => {
                file.mode = S_IFLNK | perm;
                file.target = Some(target);
                layout::FLAG_SYMLINK
            }
        };
        self.lock().insert(
            file_id,
            Some(Row {
                domain,
                flags,
                encoded: kept_row
                    .filter(|(old, _)| **old == file)
                    .map(|(_, raw)| raw.to_vec()),
                file,
            }),
        );
        Ok(())
    }

    /// Adds many records in parallel (one worker per available CPU, pulling from a shared
    /// queue). Stops at the first error and returns it; records already added stay added.
    pub fn add_all(&self, recs: Vec<NewRecord>) -> Result<()> {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(recs.len());
        if workers <= 1 {
            return recs.into_iter().try_for_each(|r| self.add(r));
        }
        let queue = Mutex::new(recs.into_iter());
        let stop = AtomicBool::new(false);
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                        let Some(rec) = next else { break };
                        if let Err(e) = self.add(rec) {
                            stop.store(true, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                        }
                    }
                });
            }
        });
        match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Links (or copies) an existing blob to the blob of `file_id` and re-wraps its key.
    fn link_blob(
        &self,
        file_id: &str,
        domain: &str,
        ex: Existing<'_>,
        class: u32,
    ) -> Result<BlobInfo> {
        let in_place = ex.kept_row.is_some();
        let final_path = if in_place {
            ex.blob.to_path_buf()
        } else {
            self.blob_dir(file_id)?
        };
        let dir = final_path.parent().expect("blob path has a parent");
        if !in_place && fs::hard_link(ex.blob, &final_path).is_err() {
            let tmp = dir.join(format!(".{file_id}.partial"));
            let copied = fs::copy(ex.blob, &tmp)
                .and_then(|_| fs::rename(&tmp, &final_path))
                .map_err(Error::io(ex.blob));
            if copied.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            copied?;
        }
        let encryption_key = match (&self.unlocked, ex.file_key) {
            (Some(_), ExistingKey::Wrapped(w)) => Some(w.to_vec()),
            (Some(unlocked), ExistingKey::Plain(key)) => Some(
                unlocked
                    .wrap_persistent(ProtectionClass(class), key)
                    .map_err(|source| Error::Crypto {
                        path: final_path.clone(),
                        source,
                    })?
                    .to_vec(),
            ),
            _ => None,
        };
        let digest = if layout::domain_has_digest(domain) {
            match ex.digest {
                Some(d) => Some(d),
                None => {
                    let mut h = Sha1::new();
                    let mut f = File::open(&final_path).map_err(Error::io(&final_path))?;
                    io::copy(&mut f, &mut h).map_err(Error::io(&final_path))?;
                    Some(h.finalize().to_vec())
                }
            }
        } else {
            None
        };
        Ok(BlobInfo {
            size: ex.size,
            digest,
            encryption_key,
        })
    }

    /// Streams `content` into the blob of `file_id` (temporary name, then rename).
    fn write_blob(
        &self,
        file_id: &str,
        domain: &str,
        relative_path: &str,
        content: Content,
        class: u32,
    ) -> Result<BlobInfo> {
        let final_path = self.blob_dir(file_id)?;
        // Written under its final name: the whole staging folder is the unit that appears
        // or not (a per-blob temp name and rename cost 10,000 renames per 10,000 files).
        // The fileID is reserved in `rows`, so nothing else writes this name meanwhile.
        let result = self.stream_blob(&final_path, domain, relative_path, content, class);
        if result.is_err() {
            let _ = fs::remove_file(&final_path);
        }
        result
    }

    /// The blob path of `file_id` in the staging folder, its `xx` folder created once.
    fn blob_dir(&self, file_id: &str) -> Result<PathBuf> {
        let final_path = layout::blob_path(self.staging_dir(), file_id).expect("file_id is valid");
        let dir = final_path.parent().expect("blob path has a parent");
        let slot = usize::from_str_radix(&file_id[..2], 16).expect("file_id is hex");
        if !self.dirs_made[slot].load(Ordering::Acquire) {
            fs::create_dir_all(dir).map_err(Error::io(dir))?;
            self.dirs_made[slot].store(true, Ordering::Release);
        }
        Ok(final_path)
    }

    fn stream_blob(
        &self,
        dst: &Path,
        domain: &str,
        relative_path: &str,
        content: Content,
        class: u32,
    ) -> Result<BlobInfo> {
        let (mut reader, src): (Box<dyn Read + Send>, PathBuf) = match content {
            Content::Bytes(b) => (
                Box::new(io::Cursor::new(b)),
                record_path(domain, relative_path),
            ),
            Content::File(p) => {
                let f = File::open(&p).map_err(Error::io(&p))?;
                (Box::new(f), p)
            }
            Content::Reader(r) => (r, record_path(domain, relative_path)),
        };
        let crypto_err = |source| Error::Crypto {
            path: dst.to_path_buf(),
            source,
        };
        let (mut encryptor, encryption_key) = match &self.unlocked {
            Some(unlocked) => {
                let key = Key256::random();
                let wrapped = unlocked
                    .wrap_persistent(ProtectionClass(class), &key)
                    .map_err(crypto_err)?;
                (Some(cbc::Encryptor::new(&key)), Some(wrapped.to_vec()))
            }
            None => (None, None),
        };
        let mut hasher = layout::domain_has_digest(domain).then(Sha1::new);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dst)
            .map_err(Error::io(dst))?;
        let mut emit = |bytes: &[u8]| -> Result<()> {
            if let Some(h) = hasher.as_mut() {
                h.update(bytes);
            }
            out.write_all(bytes).map_err(Error::io(dst))
        };

        // One buffer per thread, reused across blobs: a fresh zeroed 1 MiB buffer per
        // file (calloc + zeroize) cost more than encrypting a typical 100 kB file.
        // After each blob the bytes it used are wiped, so no plaintext stays behind.
        let mut size = 0u64;
        let streamed = STREAM_BUF.with(|cell| -> Result<()> {
            let mut guard = cell.borrow_mut();
            if guard.len() < CHUNK {
                guard.resize(CHUNK, 0);
            }
            let buf = &mut guard[..CHUNK];
            let mut used = 0usize;
            let result = (|| -> Result<()> {
                loop {
                    let n = read_full(&mut reader, buf).map_err(Error::io(&src))?;
                    used = used.max(n);
                    size += n as u64;
                    let eof = n < CHUNK;
                    match encryptor.take() {
                        None => emit(&buf[..n])?,
                        Some(mut enc) => {
                            let full = n / cbc::BLOCK * cbc::BLOCK;
                            enc.encrypt(&mut buf[..full]).map_err(crypto_err)?;
                            emit(&buf[..full])?;
                            if eof {
                                let last = enc.finish(&buf[full..n]).map_err(crypto_err)?;
                                emit(&last)?;
                            } else {
                                encryptor = Some(enc);
                            }
                        }
                    }
                    if eof {
                        return Ok(());
                    }
                }
            })();
            zeroize::Zeroize::zeroize(&mut buf[..used]);
            result
        });
        streamed?;
        drop(out);
        Ok(BlobInfo {
            size,
            digest: hasher.map(|h| h.finalize().to_vec()),
            encryption_key,
        })
    }

    /// Writes `Manifest.db`, `Manifest.plist`, `Info.plist` and `Status.plist` (last), then
    /// renames the staging folder to the output folder and returns its path.
    ///
    /// Fails (removing the staging folder) when a record's parent is a file or symlink, or
    /// when the output folder appeared in the meantime. The final rename is atomic on one
    /// file system; the existence check just before it leaves a tiny window in which an
    /// *empty* folder created at the output path would be replaced (a non-empty one makes the
    /// rename fail).
    pub fn finish(mut self) -> Result<PathBuf> {
        self.finish_inner(true, &mut Vec::new())
    }

    /// For tests: does everything [`finish`](Self::finish) does except the final rename, and
    /// returns the staging folder, which then belongs to the caller (it is not removed).
    pub fn finish_staged(mut self) -> Result<PathBuf> {
        self.finish_inner(false, &mut Vec::new())
    }

    /// `finish` with the names of the top-level files appended to `log` in write order.
    fn finish_inner(&mut self, rename: bool, log: &mut Vec<&'static str>) -> Result<PathBuf> {
        self.resolve_keybag()?;
        // In-place updates drop the blobs of files the new backup no longer has.
        let dropped: Vec<String> = match &self.previous_blobs {
            None => Vec::new(),
            Some(prev) => {
                let rows = self.lock();
                prev.iter()
                    .filter(|id| {
                        !rows.get(*id).is_some_and(|r| {
                            r.as_ref().is_some_and(|r| r.flags == layout::FLAG_FILE)
                        })
                    })
                    .cloned()
                    .collect()
            }
        };
        let rows = self.complete_rows()?;
        let encrypted = self.unlocked.is_some();

        // Manifest.db, built and (for encrypted backups) encrypted in memory.
        let db = build_manifest_db(&rows)
            .map_err(|e| io_other(self.staging_dir().join(layout::MANIFEST_DB), e))?;
        let manifest_key = match &self.unlocked {
            Some(unlocked) => {
                let db_key = Key256::random();
                let wrapped = unlocked
                    .wrap_persistent(ProtectionClass::NONE, &db_key)
                    .map_err(|source| Error::Crypto {
                        path: self.staging_dir().join(layout::MANIFEST_PLIST),
                        source,
                    })?;
                let ciphertext = cbc::encrypt_padded(&db_key, &db);
                self.write_top(layout::MANIFEST_DB, &ciphertext, log)?;
                Some(wrapped.to_vec())
            }
            None => {
                self.write_top(layout::MANIFEST_DB, &db, log)?;
                None
            }
        };
        drop(db);

        let manifest = self.manifest_plist(manifest_key, encrypted);
        let bytes = plist_bytes(&manifest, true)
            .map_err(|e| io_other(self.staging_dir().join(layout::MANIFEST_PLIST), e))?;
        self.write_top(layout::MANIFEST_PLIST, &bytes, log)?;

        let info = self.info_plist()?;
        let bytes = plist_bytes(&info, false)
            .map_err(|e| io_other(self.staging_dir().join(layout::INFO_PLIST), e))?;
        self.write_top(layout::INFO_PLIST, &bytes, log)?;

        let status = self.status_plist();
        let bytes = plist_bytes(&status, true)
            .map_err(|e| io_other(self.staging_dir().join(layout::STATUS_PLIST), e))?;
        self.write_top(layout::STATUS_PLIST, &bytes, log)?;

        let staging = self.staging.take().expect("present until finish");
        if !rename {
            return Ok(staging.keep());
        }
        if self.previous_blobs.is_some() {
            return staging.commit_update(&dropped);
        }
        staging.commit()
    }

    /// All rows, sorted by (domain, relativePath), plus the missing parent-directory and
    /// domain-root rows. Errors when a parent is not a directory.
    fn complete_rows(&mut self) -> Result<BTreeMap<(String, String), Row>> {
        let slots = std::mem::take(&mut *self.lock());
        let mut rows: BTreeMap<(String, String), Row> = slots
            .into_values()
            .flatten()
            .map(|r| ((r.domain.clone(), r.file.relative_path.clone()), r))
            .collect();
        let mut missing = BTreeSet::new();
        for (domain, path) in rows.keys() {
            if path.is_empty() {
                continue;
            }
            let mut parents = vec![String::new()];
            parents.extend(path.match_indices('/').map(|(i, _)| path[..i].to_string()));
            for parent in parents {
                let key = (domain.clone(), parent);
                match rows.get(&key) {
                    Some(r) if r.flags != layout::FLAG_DIR => {
                        return Err(Error::BadRecord {
                            domain: domain.clone(),
                            relative_path: path.clone(),
                            reason: format!("parent {:?} is not a directory", key.1),
                        });
                    }
                    Some(_) => {}
                    None => {
                        missing.insert(key);
                    }
                }
            }
        }
        let t = unix_seconds(self.date);
        for (domain, path) in missing {
            let file = MbFile {
                relative_path: path.clone(),
                mode: S_IFDIR | 0o755,
                inode: self.next_inode.fetch_add(1, Ordering::Relaxed),
                uid: MOBILE,
                gid: MOBILE,
                mtime: t,
                ctime: t,
                birth: t,
                ..MbFile::default()
            };
            rows.insert(
                (domain.clone(), path),
                Row {
                    domain,
                    flags: layout::FLAG_DIR,
                    file,
                    encoded: None,
                },
            );
        }
        Ok(rows)
    }

    /// Writes a top-level file under a temporary name and renames it into place.
    fn write_top(
        &self,
        name: &'static str,
        bytes: &[u8],
        log: &mut Vec<&'static str>,
    ) -> Result<()> {
        self.staging
            .as_ref()
            .expect("present until finish")
            .write(name, bytes)?;
        log.push(name);
        Ok(())
    }

    fn manifest_plist(&self, manifest_key: Option<Vec<u8>>, encrypted: bool) -> Dictionary {
        let d = &self.device;
        let mut lockdown = Dictionary::new();
        lockdown.insert("BuildVersion".into(), d.build_version.clone().into());
        lockdown.insert("DeviceName".into(), d.name.clone().into());
        lockdown.insert("ProductType".into(), d.product_type.clone().into());
        lockdown.insert("ProductVersion".into(), d.product_version.clone().into());
        lockdown.insert("SerialNumber".into(), d.serial.clone().into());
        lockdown.insert("UniqueDeviceID".into(), d.udid.clone().into());

        let mut apps = Dictionary::new();
        for bundle in &self.applications {
            let mut a = Dictionary::new();
            a.insert("CFBundleIdentifier".into(), bundle.clone().into());
            a.insert("CFBundleVersion".into(), "1.0".into());
            a.insert("ContainerContentClass".into(), "Data/Application".into());
            a.insert(
                "Path".into(),
                format!(
                    "/var/containers/Bundle/Application/{}/{}.app",
                    uuid::Uuid::new_v4().to_string().to_uppercase(),
                    app_name(bundle)
                )
                .into(),
            );
            apps.insert(bundle.clone(), Value::Dictionary(a));
        }

        let mut m = Dictionary::new();
        let WriterKeybag::Ready(keybag) = &self.keybag else {
            unreachable!("finish resolves the keybag first")
        };
        m.insert("BackupKeyBag".into(), Value::Data(keybag.to_bytes()));
        if let Some(k) = manifest_key {
            m.insert("ManifestKey".into(), Value::Data(k));
        }
        m.insert("IsEncrypted".into(), Value::Boolean(encrypted));
        m.insert("WasPasscodeSet".into(), Value::Boolean(self.passcode_set));
        m.insert("Version".into(), "10.0".into());
        m.insert("SystemDomainsVersion".into(), "24.0".into());
        m.insert("Date".into(), Value::Date(self.date.into()));
        m.insert("Lockdown".into(), Value::Dictionary(lockdown));
        m.insert("Applications".into(), Value::Dictionary(apps));
        m
    }

    fn info_plist(&self) -> Result<Dictionary> {
        let d = &self.device;
        let icon = hex::decode(PLACEHOLDER_PNG_HEX).expect("constant is hex");
        let mut apps = Dictionary::new();
        for bundle in &self.applications {
            let mut meta = Dictionary::new();
            meta.insert("softwareVersionBundleId".into(), bundle.clone().into());
            meta.insert("itemName".into(), app_name(bundle).into());
            meta.insert("bundleShortVersionString".into(), "1.0".into());
            meta.insert("bundleVersion".into(), "1.0".into());
            let meta = plist_bytes(&meta, true)
                .map_err(|e| io_other(self.staging_dir().join(layout::INFO_PLIST), e))?;
            let mut a = Dictionary::new();
            a.insert(
                "ApplicationSINF".into(),
                Value::Data(b"keybag: no SINF".to_vec()),
            );
            a.insert("iTunesMetadata".into(), Value::Data(meta));
            a.insert("PlaceholderIcon".into(), Value::Data(icon.clone()));
            apps.insert(bundle.clone(), Value::Dictionary(a));
        }
        let mut i = Dictionary::new();
        i.insert("Applications".into(), Value::Dictionary(apps));
        i.insert("Build Version".into(), d.build_version.clone().into());
        i.insert("Device Name".into(), d.name.clone().into());
        i.insert("Display Name".into(), d.name.clone().into());
        i.insert("GUID".into(), random_hex(16).to_uppercase().into());
        i.insert(
            "Installed Applications".into(),
            Value::Array(self.applications.iter().cloned().map(Value::from).collect()),
        );
        i.insert("Last Backup Date".into(), Value::Date(self.date.into()));
        i.insert("Product Name".into(), "iPhone".into());
        i.insert("Product Type".into(), d.product_type.clone().into());
        i.insert("Product Version".into(), d.product_version.clone().into());
        i.insert("Serial Number".into(), d.serial.clone().into());
        i.insert("Target Identifier".into(), d.udid.clone().into());
        i.insert("Target Type".into(), "Device".into());
        i.insert("Unique Identifier".into(), d.udid.to_uppercase().into());
        i.insert("iTunes Version".into(), "12.13.0.9".into());
        Ok(i)
    }

    fn status_plist(&self) -> Dictionary {
        let mut s = Dictionary::new();
        s.insert("BackupState".into(), "new".into());
        s.insert("Date".into(), Value::Date(self.date.into()));
        s.insert("IsFullBackup".into(), Value::Boolean(true));
        s.insert("SnapshotState".into(), "finished".into());
        s.insert(
            "UUID".into(),
            uuid::Uuid::new_v4().to_string().to_uppercase().into(),
        );
        s.insert("Version".into(), "3.3".into());
        s
    }
}

/// Builds `Manifest.db` in memory (nothing touches the disk) and returns the SQLite file bytes.
fn build_manifest_db(
    rows: &BTreeMap<(String, String), Row>,
) -> rusqlite::Result<Zeroizing<Vec<u8>>> {
    use rayon::prelude::*;
    // Encoding the MBFile archives is most of the CPU time of an unchanged incremental
    // backup; rows are independent.
    let rows: Vec<(&(String, String), &Row)> = rows.iter().collect();
    let rows: Vec<manifestdb::Row> = rows
        .into_par_iter()
        .map(|((domain, path), row)| manifestdb::Row {
            file_id: layout::file_id(domain, path),
            domain: domain.clone(),
            relative_path: path.clone(),
            flags: row.flags,
            file: row
                .encoded
                .clone()
                .unwrap_or_else(|| mbfile::encode(&row.file)),
        })
        .collect();
    manifestdb::build(&rows)
}

/// Serialises a dictionary as a binary or XML plist.
pub(crate) fn plist_bytes(
    d: &Dictionary,
    binary: bool,
) -> std::result::Result<Vec<u8>, plist::Error> {
    let mut out = Vec::new();
    let v = Value::Dictionary(d.clone());
    if binary {
        v.to_writer_binary(&mut out)?;
    } else {
        v.to_writer_xml(&mut out)?;
    }
    Ok(out)
}

/// Reads until `buf` is full or the reader is exhausted; returns the number of bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn io_other(path: PathBuf, e: impl fmt::Display) -> Error {
    Error::Io {
        path,
        source: io::Error::other(e.to_string()),
    }
}

/// `domain/relative_path`, to name a record's content source in errors.
fn record_path(domain: &str, relative_path: &str) -> PathBuf {
    PathBuf::from(format!("{domain}/{relative_path}"))
}

/// The last component of a bundle id (`com.example.Notes` → `Notes`).
fn app_name(bundle: &str) -> &str {
    match bundle.rsplit('.').next() {
        Some(n) if !n.is_empty() => n,
        _ => "App",
    }
}

fn random_hex(bytes: usize) -> String {
    let mut v = vec![0u8; bytes];
    rand::thread_rng().fill(&mut v[..]);
    hex::encode(v)
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plists::{read_dict, InfoPlist, ManifestPlist, StatusPlist};
    use dataprotection::keybag::Sealed;
    use dataprotection::KdfLimits;
    use rusqlite::Connection;
    use std::collections::HashMap;
    use std::time::Duration;

    const PW: &[u8] = b"correct horse \xe2\x9c\x93";
    const UDID: &str = "00008030-001229c01146402e";
    const APPS: [&str; 2] = ["com.example.Notes", "net.whatsapp.WhatsApp"];

    fn date() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn opts(encrypted: bool) -> WriterOptions {
        WriterOptions {
            device: DeviceInfo {
                device_name: Some("Test Phone".into()),
                udid: Some(UDID.into()),
                ..DeviceInfo::default()
            },
            encryption: encrypted.then(|| Encryption {
                password: Zeroizing::new(PW.to_vec()),
                dpic: 1000,
                device_key: None,
            }),
            date: date(),
            passcode_set: true,
            applications: APPS
                .iter()
                .map(|s| s.to_string())
                .chain(["com.example.Notes".into()])
                .collect(),
            unencrypted_keybag: None,
            existing_keybag: None,
        }
    }

    fn rec(domain: &str, path: &str, kind: Kind) -> NewRecord {
        NewRecord {
            domain: domain.into(),
            relative_path: path.into(),
            kind,
            mode: 0o644,
            uid: 501,
            gid: 20,
            mtime: 1_600_000_000,
            ctime: 1_600_000_001,
            birth: 1_600_000_002,
            extended_attributes: None,
        }
    }

    fn file(domain: &str, path: &str, data: Vec<u8>, class: u32) -> NewRecord {
        rec(
            domain,
            path,
            Kind::File {
                content: Content::Bytes(data),
                protection_class: class,
            },
        )
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    /// A reader that hands out at most `step` bytes per call.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    /// A reader that fails after `ok` bytes.
    struct Failing {
        ok: usize,
    }
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.ok == 0 {
                return Err(io::Error::other("simulated read failure"));
            }
            let n = self.ok.min(buf.len());
            buf[..n].fill(7);
            self.ok -= n;
            Ok(n)
        }
    }

    struct LoadedRow {
        file_id: String,
        flags: i64,
        file: MbFile,
    }

    struct Loaded {
        manifest: Dictionary,
        unlocked: Option<UnlockedKeybag>,
        db: Vec<u8>,
        rows: HashMap<(String, String), LoadedRow>,
    }

    /// Reads a written backup back without the crate's reader.
    fn load(dir: &Path, password: Option<&[u8]>) -> Loaded {
        let manifest = Value::from_file(dir.join("Manifest.plist"))
            .unwrap()
            .into_dictionary()
            .unwrap();
        let raw_db = fs::read(dir.join("Manifest.db")).unwrap();
        let (unlocked, db) = match password {
            Some(pw) => {
                let kb = Keybag::parse(manifest["BackupKeyBag"].as_data().unwrap()).unwrap();
                let passkey = kb.derive_passkey(pw, &KdfLimits::default()).unwrap();
                let unlocked = kb.unlock(&passkey, None).unwrap();
                let mk = manifest["ManifestKey"].as_data().unwrap();
                assert_eq!(mk.len(), 44);
                assert_eq!(&mk[..4], &4u32.to_le_bytes(), "ManifestKey class 4");
                let key = unlocked.unwrap_persistent(mk).unwrap();
                assert!(!raw_db.starts_with(b"SQLite format 3\0"));
                let db = cbc::decrypt_padded(&key, raw_db.clone()).unwrap();
                assert_eq!(raw_db.len() as u64, cbc::padded_len(db.len() as u64));
                assert_eq!(
                    raw_db.len(),
                    db.len() + 16,
                    "page-aligned DB gains one block"
                );
                (Some(unlocked), db)
            }
            None => (None, raw_db),
        };
        assert!(db.starts_with(b"SQLite format 3\0"));
        assert_eq!(u16::from_be_bytes([db[16], db[17]]), 4096, "page size");
        assert_eq!((db[18], db[19]), (1, 1), "rollback journal, not WAL");
        assert_eq!(db.len() % 4096, 0);
        let mut conn = Connection::open_in_memory().unwrap();
        conn.deserialize_read_exact("main", &db[..], db.len(), true)
            .unwrap();
        let schema: Vec<String> = conn
            .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(schema.join(";\n") + ";", layout::SCHEMA);
        let mut rows = HashMap::new();
        let mut stmt = conn
            .prepare("SELECT fileID, domain, relativePath, flags, file FROM Files")
            .unwrap();
        let mut q = stmt.query([]).unwrap();
        while let Some(r) = q.next().unwrap() {
            let domain: String = r.get(1).unwrap();
            let path: String = r.get(2).unwrap();
            let blob: Vec<u8> = r.get(4).unwrap();
            let file = mbfile::decode(&blob).unwrap();
            assert_eq!(file.relative_path, path);
            let old = rows.insert(
                (domain, path),
                LoadedRow {
                    file_id: r.get(0).unwrap(),
                    flags: r.get(3).unwrap(),
                    file,
                },
            );
            assert!(old.is_none());
        }
        Loaded {
            manifest,
            unlocked,
            db,
            rows,
        }
    }

    fn blob_bytes(dir: &Path, row: &LoadedRow) -> Vec<u8> {
        fs::read(layout::blob_path(dir, &row.file_id).unwrap()).unwrap()
    }

    fn plaintext(dir: &Path, row: &LoadedRow, unlocked: Option<&UnlockedKeybag>) -> Vec<u8> {
        let blob = blob_bytes(dir, row);
        match unlocked {
            Some(u) => {
                let ek = row.file.encryption_key.as_ref().expect("EncryptionKey");
                cbc::decrypt_padded(&u.unwrap_persistent(ek).unwrap(), blob).unwrap()
            }
            None => blob,
        }
    }

    /// All files (not folders) under `dir`, relative.
    fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
        let mut out = BTreeSet::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(p.strip_prefix(dir).unwrap().to_path_buf());
                }
            }
        }
        out
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn sha1(data: &[u8]) -> Vec<u8> {
        Sha1::digest(data).to_vec()
    }

    #[test]
    fn writer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<BackupWriter>();
        fn send<T: Send>() {}
        send::<NewRecord>();
    }

    /// The full encrypted round trip, verified with dataprotection and rusqlite only.
    #[test]
    fn encrypted_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join(UDID);
        let big = pattern(CHUNK + 3, 9);
        let big_src = tmp.path().join("big-source.bin");
        fs::write(&big_src, &big).unwrap();
        let trickled = pattern(100_000, 77);
        let xattrs = {
            let mut d = Dictionary::new();
            d.insert("com.apple.test".into(), Value::Data(b"x".to_vec()));
            plist_bytes(&d, true).unwrap()
        };

        let w = BackupWriter::create(&out, opts(true)).unwrap();
        assert!(w.staging_dir().is_dir());
        assert!(!out.exists(), "nothing at the output path before finish");
        let kb_uuid = w.keybag_uuid().unwrap();

        // Expected contents: (domain, path) -> (bytes, class).
        let mut expected: BTreeMap<(String, String), (Vec<u8>, u32)> = BTreeMap::new();
        let mut batch = Vec::new();
        for (i, n) in [0usize, 1, 15, 16, 17, 32].into_iter().enumerate() {
            let class = 1 + (i as u32 % 4);
            let data = pattern(n, i as u8);
            let path = format!("Library/Sizes/size-{n}.bin");
            expected.insert(("HomeDomain".into(), path.clone()), (data.clone(), class));
            batch.push(file("HomeDomain", &path, data, class));
        }
        w.add_all(batch).unwrap();
        w.add(rec(
            "HomeDomain",
            "Library/big.bin",
            Kind::File {
                content: Content::File(big_src.clone()),
                protection_class: 3,
            },
        ))
        .unwrap();
        expected.insert(
            ("HomeDomain".into(), "Library/big.bin".into()),
            (big.clone(), 3),
        );
        let uni = "Library/Notes/Résumé ✓ 日本語 🎉.txt";
        let mut r = file("HomeDomain", uni, "héllo".as_bytes().to_vec(), 2);
        r.extended_attributes = Some(xattrs.clone());
        r.mode = 0o170600; // type bits must be replaced
        w.add(r).unwrap();
        expected.insert(
            ("HomeDomain".into(), uni.into()),
            ("héllo".as_bytes().to_vec(), 2),
        );
        let mut d = rec("HomeDomain", "Library/Preferences", Kind::Directory);
        d.mode = 0o700;
        w.add(d).unwrap();
        w.add(rec(
            "HomeDomain",
            "Library/Notes/latest",
            Kind::Symlink {
                target: "/var/mobile/Library/Sizes/size-1.bin".into(),
            },
        ))
        .unwrap();
        let app = "AppDomain-com.example.Notes";
        w.add(file(app, "Documents/note.txt", b"app data".to_vec(), 3))
            .unwrap();
        expected.insert(
            (app.into(), "Documents/note.txt".into()),
            (b"app data".to_vec(), 3),
        );
        w.add(rec(
            "MediaDomain",
            "DCIM/100APPLE/IMG_0001.JPG",
            Kind::File {
                content: Content::Reader(Box::new(Trickle {
                    data: trickled.clone(),
                    pos: 0,
                    step: 17,
                })),
                protection_class: 4,
            },
        ))
        .unwrap();
        expected.insert(
            ("MediaDomain".into(), "DCIM/100APPLE/IMG_0001.JPG".into()),
            (trickled, 4),
        );
        let staging = w.staging_dir().to_path_buf();
        let done = w.finish().unwrap();
        assert_eq!(done, out);
        assert!(!staging.exists());
        assert_eq!(
            entries(tmp.path()),
            vec![UDID.to_string(), "big-source.bin".to_string()]
        );

        let l = load(&out, Some(PW));
        let unlocked = l.unlocked.as_ref().unwrap();

        // Manifest.plist
        assert_eq!(
            fs::read(out.join("Manifest.plist")).unwrap()[..8],
            *b"bplist00"
        );
        let m = ManifestPlist::from_dict(&out, l.manifest.clone()).unwrap();
        assert_eq!(m.is_encrypted, Some(true));
        assert_eq!(m.was_passcode_set, Some(true));
        assert_eq!(m.version.as_deref(), Some("10.0"));
        assert_eq!(l.manifest["SystemDomainsVersion"].as_string(), Some("24.0"));
        assert_eq!(m.date, Some(date()));
        assert_eq!(m.device.udid.as_deref(), Some(UDID));
        assert_eq!(m.device.device_name.as_deref(), Some("Test Phone"));
        assert_eq!(m.device.product_type.as_deref(), Some("iPhone14,2"));
        assert_eq!(m.device.product_version.as_deref(), Some("17.5.1"));
        assert_eq!(m.device.build_version.as_deref(), Some("21F90"));
        let serial = m.device.serial_number.clone().unwrap();
        assert_eq!(serial.len(), 12);
        assert!(serial
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
        assert_eq!(m.applications, APPS.to_vec(), "deduplicated, in order");
        for a in APPS {
            let e = l.manifest["Applications"].as_dictionary().unwrap()[a]
                .as_dictionary()
                .unwrap();
            assert_eq!(e["CFBundleIdentifier"].as_string(), Some(a));
            assert_eq!(
                e["ContainerContentClass"].as_string(),
                Some("Data/Application")
            );
            let p = e["Path"].as_string().unwrap();
            assert!(
                p.starts_with("/var/containers/Bundle/Application/") && p.ends_with(".app"),
                "{p}"
            );
        }
        let kb = Keybag::parse(m.keybag.as_ref().unwrap()).unwrap();
        assert_eq!(kb.uuid_string().unwrap(), kb_uuid);
        assert_eq!(kb.dpic, Some(1000));

        // Info.plist (XML) and Status.plist (binary)
        let info_bytes = fs::read(out.join("Info.plist")).unwrap();
        assert!(info_bytes.starts_with(b"<?xml"));
        let info_d = read_dict(&out.join("Info.plist")).unwrap();
        let info = InfoPlist::from_dict(info_d.clone());
        assert_eq!(info.device.udid.as_deref(), Some(UDID));
        assert_eq!(info.device.serial_number.as_deref(), Some(serial.as_str()));
        assert_eq!(info.installed_applications, APPS.to_vec());
        assert_eq!(info.last_backup_date, Some(date()));
        assert_eq!(
            info_d["Unique Identifier"].as_string(),
            Some(UDID.to_uppercase().as_str())
        );
        assert_eq!(info_d["Target Type"].as_string(), Some("Device"));
        assert_eq!(info_d["Product Name"].as_string(), Some("iPhone"));
        assert!(info_d["GUID"].as_string().is_some());
        for a in APPS {
            let e = info_d["Applications"].as_dictionary().unwrap()[a]
                .as_dictionary()
                .unwrap();
            let meta = Value::from_reader(io::Cursor::new(e["iTunesMetadata"].as_data().unwrap()))
                .unwrap()
                .into_dictionary()
                .unwrap();
            assert_eq!(meta["softwareVersionBundleId"].as_string(), Some(a));
            assert!(e["ApplicationSINF"].as_data().is_some());
            assert!(e["PlaceholderIcon"]
                .as_data()
                .unwrap()
                .starts_with(b"\x89PNG\r\n\x1a\n"));
        }
        assert_eq!(
            fs::read(out.join("Status.plist")).unwrap()[..8],
            *b"bplist00"
        );
        let status_d = read_dict(&out.join("Status.plist")).unwrap();
        let status = StatusPlist::from_dict(&status_d);
        assert_eq!(status.snapshot_state.as_deref(), Some("finished"));
        assert_eq!(status.is_full_backup, Some(true));
        assert_eq!(status.version.as_deref(), Some("3.3"));
        assert_eq!(status.date, Some(date()));
        assert_eq!(status_d["BackupState"].as_string(), Some("new"));
        let uuid = status_d["UUID"].as_string().unwrap();
        assert_eq!(uuid, uuid.to_uppercase());
        assert!(uuid::Uuid::parse_str(uuid).is_ok());

        // Rows: every file decrypts to its original bytes, with the right metadata.
        for ((domain, path), (data, class)) in &expected {
            let row = &l.rows[&(domain.clone(), path.clone())];
            assert_eq!(row.file_id, layout::file_id(domain, path));
            assert_eq!(row.flags, layout::FLAG_FILE);
            assert_eq!(row.file.size, data.len() as u64, "{path}");
            assert_eq!(row.file.protection_class, *class);
            let ek = row.file.encryption_key.as_ref().unwrap();
            assert_eq!(ek.len(), 44);
            assert_eq!(&ek[..4], &class.to_le_bytes());
            let blob = blob_bytes(&out, row);
            assert_eq!(
                blob.len() as u64,
                cbc::padded_len(data.len() as u64),
                "{path}"
            );
            assert_eq!(&plaintext(&out, row, Some(unlocked)), data, "{path}");
            if layout::domain_has_digest(domain) {
                assert_eq!(row.file.digest.as_deref(), Some(&sha1(&blob)[..]), "{path}");
            } else {
                assert_eq!(row.file.digest, None, "{path}");
            }
            assert_eq!(row.file.mode & 0o170000, 0o100000);
            assert_eq!((row.file.uid, row.file.gid), (501, 20));
            assert_eq!(
                (row.file.mtime, row.file.ctime, row.file.birth),
                (1_600_000_000, 1_600_000_001, 1_600_000_002)
            );
            assert_eq!(row.file.target, None);
        }
        let u = &l.rows[&("HomeDomain".into(), uni.into())];
        assert_eq!(u.file.mode, 0o100600);
        assert_eq!(u.file.extended_attributes.as_deref(), Some(&xattrs[..]));
        let d = &l.rows[&("HomeDomain".into(), "Library/Preferences".into())];
        assert_eq!(
            (d.flags, d.file.mode, d.file.size),
            (layout::FLAG_DIR, 0o40700, 0)
        );
        assert_eq!(
            (d.file.protection_class, d.file.encryption_key.is_none()),
            (0, true)
        );
        let s = &l.rows[&("HomeDomain".into(), "Library/Notes/latest".into())];
        assert_eq!(s.flags, layout::FLAG_SYMLINK);
        assert_eq!(s.file.mode, 0o120644);
        assert_eq!(
            s.file.target.as_deref(),
            Some("/var/mobile/Library/Sizes/size-1.bin")
        );
        assert_eq!((s.file.size, s.file.protection_class), (0, 0));
        assert!(s.file.encryption_key.is_none() && s.file.digest.is_none());

        // Parent and domain-root rows were added.
        for (domain, path) in [
            ("HomeDomain", ""),
            ("HomeDomain", "Library"),
            ("HomeDomain", "Library/Sizes"),
            ("HomeDomain", "Library/Notes"),
            (app, ""),
            (app, "Documents"),
            ("MediaDomain", ""),
            ("MediaDomain", "DCIM"),
            ("MediaDomain", "DCIM/100APPLE"),
        ] {
            let r = &l.rows[&(domain.to_string(), path.to_string())];
            assert_eq!(r.flags, layout::FLAG_DIR, "{domain}/{path}");
            assert_eq!(r.file.mode, 0o40755);
            assert_eq!((r.file.uid, r.file.gid), (501, 501));
            assert_eq!(r.file.mtime, 1_700_000_000);
        }
        assert_eq!(l.rows.len(), expected.len() + 2 + 9);
        // fileIDs and inodes are all as required, blobs exist only for files.
        let mut inodes = BTreeSet::new();
        let mut blobs = BTreeSet::new();
        for ((domain, path), r) in &l.rows {
            assert_eq!(r.file_id, layout::file_id(domain, path));
            assert!(inodes.insert(r.file.inode));
            if r.flags == layout::FLAG_FILE {
                blobs.insert(PathBuf::from(&r.file_id[..2]).join(&r.file_id));
            }
        }
        let mut on_disk = files_under(&out);
        for top in [
            "Manifest.db",
            "Manifest.plist",
            "Info.plist",
            "Status.plist",
        ] {
            assert!(on_disk.remove(Path::new(top)), "{top}");
        }
        assert_eq!(on_disk, blobs, "exactly one blob per file, nothing else");
    }

    #[test]
    fn device_key_opens_sealed_classes() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("b");
        let dk = DeviceKey::random();
        let mut o = opts(true);
        o.encryption.as_mut().unwrap().device_key = Some(dk.clone());
        let w = BackupWriter::create(&out, o).unwrap();
        assert_eq!(w.device_key(), Some(&dk));
        let probe_key = Key256::random();
        let probes: Vec<_> = (1..=11)
            .map(|c| {
                w.unlocked
                    .as_ref()
                    .unwrap()
                    .wrap_persistent(ProtectionClass(c), &probe_key)
                    .unwrap()
            })
            .collect();
        w.finish().unwrap();
        let m = read_dict(&out.join("Manifest.plist")).unwrap();
        let kb = Keybag::parse(m["BackupKeyBag"].as_data().unwrap()).unwrap();
        let passkey = kb.derive_passkey(PW, &KdfLimits::default()).unwrap();
        let without = kb.unlock(&passkey, None).unwrap();
        let sealed: Vec<u32> = without
            .sealed()
            .filter(|(_, s)| **s == Sealed::NeedsDeviceKey)
            .map(|(c, _)| c.0)
            .collect();
        assert_eq!(sealed, vec![5, 9, 10, 11]);
        let with = kb.unlock(&passkey, Some(&dk)).unwrap();
        for p in &probes {
            assert_eq!(with.unwrap_persistent(p).unwrap(), probe_key);
        }
        assert!(kb
            .derive_passkey(b"wrong", &KdfLimits::default())
            .map(|k| kb.unlock(&k, None))
            .unwrap()
            .is_err());
    }

    #[test]
    fn unencrypted_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join(UDID);
        let w = BackupWriter::create(&out, opts(false)).unwrap();
        assert!(w.device_key().is_some());
        let files = [
            ("HomeDomain", "Library/SMS/sms.db", pattern(5000, 1)),
            ("HomeDomain", "empty", Vec::new()),
            (
                "AppDomain-net.whatsapp.WhatsApp",
                "Documents/ChatStorage.sqlite",
                pattern(33, 2),
            ),
            (
                "CameraRollDomain",
                "Media/DCIM/IMG_1.HEIC",
                pattern(CHUNK * 2, 3),
            ),
        ];
        for (d, p, data) in &files {
            w.add(file(d, p, data.clone(), 3)).unwrap();
        }
        w.finish().unwrap();

        let l = load(&out, None);
        assert!(l.manifest.get("ManifestKey").is_none());
        assert_eq!(l.manifest["IsEncrypted"].as_boolean(), Some(false));
        let kb = Keybag::parse(l.manifest["BackupKeyBag"].as_data().unwrap()).unwrap();
        assert_eq!((kb.dpic, kb.dpsl.is_none()), (None, true));
        assert_eq!(kb.classes.len(), 11);
        // Manifest.db on disk is the plain SQLite file.
        assert_eq!(fs::read(out.join("Manifest.db")).unwrap(), l.db);
        for (d, p, data) in &files {
            let row = &l.rows[&(d.to_string(), p.to_string())];
            assert_eq!(row.file.encryption_key, None);
            assert_eq!(row.file.size, data.len() as u64);
            assert_eq!(row.file.protection_class, 3);
            let blob = blob_bytes(&out, row);
            assert_eq!(&blob, data, "raw blob");
            let want = layout::domain_has_digest(d).then(|| sha1(data));
            assert_eq!(row.file.digest, want, "{d}/{p}");
        }
        assert!(l.rows.contains_key(&("CameraRollDomain".into(), "".into())));
        let names = entries(&out);
        assert!(
            names.iter().all(|n| !n.contains("-wal")
                && !n.contains("-shm")
                && !n.contains("journal")
                && !n.contains("partial")),
            "{names:?}"
        );
        assert!(out.join("Info.plist").is_file() && out.join("Status.plist").is_file());
    }

    #[test]
    fn create_refuses_existing_output_and_missing_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("exists-dir");
        fs::create_dir(&dir).unwrap();
        let f = tmp.path().join("exists-file");
        fs::write(&f, b"keep").unwrap();
        for target in [&dir, &f] {
            match BackupWriter::create(target, opts(false)) {
                Err(Error::Io { path, source }) => {
                    assert_eq!(&path, target);
                    assert_eq!(source.kind(), io::ErrorKind::AlreadyExists);
                }
                other => panic!("expected AlreadyExists, got {other:?}"),
            }
        }
        assert_eq!(fs::read(&f).unwrap(), b"keep");
        let missing = tmp.path().join("no/such/parent/out");
        let err = BackupWriter::create(&missing, opts(false)).unwrap_err();
        assert!(
            matches!(err, Error::Io { ref path, .. } if path == &tmp.path().join("no/such/parent")),
            "{err}"
        );
        assert_eq!(
            entries(tmp.path()),
            vec!["exists-dir".to_string(), "exists-file".to_string()]
        );
    }

    #[test]
    fn hostile_and_duplicate_records_are_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("b");
        let w = BackupWriter::create(&out, opts(true)).unwrap();
        let hostile = [
            ("HomeDomain", "../x"),
            ("HomeDomain", "/abs"),
            ("HomeDomain", "a\\b"),
            ("HomeDomain", "a/../../b"),
            ("HomeDomain", "a//b"),
            ("Home/Domain", "x"),
            ("..", "x"),
            ("", "x"),
            ("HomeDomain", ""), // a file at the domain root
        ];
        for (d, p) in hostile {
            match w.add(file(d, p, b"evil".to_vec(), 3)) {
                Err(Error::BadRecord {
                    domain,
                    relative_path,
                    ..
                }) => {
                    assert_eq!((domain.as_str(), relative_path.as_str()), (d, p));
                }
                other => panic!("{d:?}/{p:?}: expected BadRecord, got {other:?}"),
            }
        }
        for class in [0, 5, 11] {
            let e = w
                .add(file("HomeDomain", "c", b"x".to_vec(), class))
                .unwrap_err();
            assert!(matches!(e, Error::BadRecord { .. }), "{e}");
        }
        let e = w
            .add(rec(
                "HomeDomain",
                "l",
                Kind::Symlink {
                    target: String::new(),
                },
            ))
            .unwrap_err();
        assert!(matches!(e, Error::BadRecord { .. }), "{e}");

        w.add(file("HomeDomain", "Library/a.txt", b"first".to_vec(), 3))
            .unwrap();
        let e = w
            .add(file("HomeDomain", "Library/a.txt", b"second".to_vec(), 3))
            .unwrap_err();
        assert!(
            matches!(&e, Error::BadRecord { reason, .. } if reason.contains("duplicate")),
            "{e}"
        );
        let e = w
            .add(rec("HomeDomain", "Library/a.txt", Kind::Directory))
            .unwrap_err();
        assert!(matches!(e, Error::BadRecord { .. }), "{e}");
        // Duplicates inside add_all are caught too.
        let e = w
            .add_all(vec![
                file("HomeDomain", "dup", b"1".to_vec(), 3),
                file("HomeDomain", "dup", b"2".to_vec(), 3),
            ])
            .unwrap_err();
        assert!(matches!(e, Error::BadRecord { .. }), "{e}");
        // Nothing escaped the staging folder; only the two accepted blobs exist.
        assert_eq!(entries(tmp.path()).len(), 1);
        assert_eq!(files_under(w.staging_dir()).len(), 2);
        w.finish().unwrap();

        let l = load(&out, Some(PW));
        let row = &l.rows[&("HomeDomain".into(), "Library/a.txt".into())];
        assert_eq!(plaintext(&out, row, l.unlocked.as_ref()), b"first");
        let mut keys: Vec<_> = l.rows.keys().map(|(d, p)| format!("{d}/{p}")).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "HomeDomain/",
                "HomeDomain/Library",
                "HomeDomain/Library/a.txt",
                "HomeDomain/dup"
            ]
        );
    }

    #[test]
    fn staging_is_removed_after_failures_and_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("b");
        let w = BackupWriter::create(&out, opts(false)).unwrap();
        let staging = w.staging_dir().to_path_buf();
        let name = staging.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".b.keybag-partial-"), "{name}");

        // A missing source file: an Io error naming it, nothing left behind.
        let missing = tmp.path().join("missing.bin");
        let e = w
            .add(rec(
                "HomeDomain",
                "x",
                Kind::File {
                    content: Content::File(missing.clone()),
                    protection_class: 3,
                },
            ))
            .unwrap_err();
        assert!(
            matches!(&e, Error::Io { path, .. } if path == &missing),
            "{e}"
        );
        // A reader failing after 3 MiB: the partial blob is removed.
        let e = w
            .add(rec(
                "HomeDomain",
                "y",
                Kind::File {
                    content: Content::Reader(Box::new(Failing { ok: 3 * CHUNK + 5 })),
                    protection_class: 3,
                },
            ))
            .unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        assert!(files_under(&staging).is_empty());
        // The failed records are not reserved: they can be added again.
        w.add(file("HomeDomain", "y", b"ok".to_vec(), 3)).unwrap();
        assert_eq!(files_under(&staging).len(), 1);
        drop(w);
        assert!(!staging.exists());
        assert!(entries(tmp.path()).is_empty());

        // A failure in finish (a file used as a parent folder) removes staging too.
        let w = BackupWriter::create(&out, opts(false)).unwrap();
        let staging = w.staging_dir().to_path_buf();
        w.add(file("HomeDomain", "a", b"file".to_vec(), 3)).unwrap();
        w.add(file("HomeDomain", "a/b", b"child".to_vec(), 3))
            .unwrap();
        let e = w.finish().unwrap_err();
        assert!(
            matches!(&e, Error::BadRecord { reason, .. } if reason.contains("not a directory")),
            "{e}"
        );
        assert!(!staging.exists() && !out.exists());
        assert!(entries(tmp.path()).is_empty());
    }

    #[test]
    fn output_appearing_before_rename_is_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("b");
        let w = BackupWriter::create(&out, opts(false)).unwrap();
        w.add(file("HomeDomain", "f", b"x".to_vec(), 3)).unwrap();
        fs::create_dir(&out).unwrap();
        fs::write(out.join("precious"), b"mine").unwrap();
        let e = w.finish().unwrap_err();
        assert!(
            matches!(&e, Error::Io { path, source } if path == &out && source.kind() == io::ErrorKind::AlreadyExists),
            "{e}"
        );
        assert_eq!(entries(&out), vec!["precious".to_string()]);
        assert_eq!(
            entries(tmp.path()),
            vec!["b".to_string()],
            "staging removed"
        );
    }

    #[test]
    fn status_plist_is_written_last() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("b");
        let mut w = BackupWriter::create(&out, opts(true)).unwrap();
        w.add(file("HomeDomain", "f", pattern(100, 1), 3)).unwrap();
        let mut log = Vec::new();
        w.finish_inner(true, &mut log).unwrap();
        drop(w);
        assert!(
            out.join("Status.plist").is_file(),
            "not removed by drop after finishing"
        );
        assert_eq!(
            log,
            [
                "Manifest.db",
                "Manifest.plist",
                "Info.plist",
                "Status.plist"
            ]
        );
        let mtime = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
        let status = mtime(&out.join("Status.plist"));
        for p in files_under(&out) {
            assert!(mtime(&out.join(&p)) <= status, "{p:?}");
        }
    }

    #[test]
    fn finish_staged_stops_before_the_rename() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("b");
        let w = BackupWriter::create(&out, opts(false)).unwrap();
        w.add(file("HomeDomain", "f", b"x".to_vec(), 3)).unwrap();
        let staged = w.finish_staged().unwrap();
        assert!(!out.exists());
        assert!(staged.join("Status.plist").is_file());
        let l = load(&staged, None);
        assert_eq!(l.rows.len(), 2);
        fs::remove_dir_all(staged).unwrap();
    }

    /// add_all from many threads gives the same rows and blobs as adding one by one.
    #[test]
    fn add_all_matches_sequential_adds() {
        let make = || -> Vec<NewRecord> {
            let mut v = Vec::new();
            for i in 0..300usize {
                let domain = match i % 3 {
                    0 => "HomeDomain".to_string(),
                    1 => format!("AppDomain-com.example.app{}", i % 7),
                    _ => "MediaDomain".to_string(),
                };
                let path = format!("dir{}/sub{}/file{i}.bin", i % 5, i % 11);
                v.push(file(
                    &domain,
                    &path,
                    pattern(i * 37 % 5000, i as u8),
                    1 + (i as u32 % 4),
                ));
                if i % 50 == 0 {
                    v.push(rec(
                        &domain,
                        &format!("dir{}/link{i}", i % 5),
                        Kind::Symlink {
                            target: "/var/mobile/x".into(),
                        },
                    ));
                }
            }
            v
        };
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let wa = BackupWriter::create(&a, opts(false)).unwrap();
        for r in make() {
            wa.add(r).unwrap();
        }
        wa.finish().unwrap();
        let wb = BackupWriter::create(&b, opts(false)).unwrap();
        wb.add_all(make()).unwrap();
        wb.finish().unwrap();

        let (la, lb) = (load(&a, None), load(&b, None));
        assert_eq!(la.rows.len(), lb.rows.len());
        assert!(la.rows.len() > 300);
        let mut inodes = BTreeSet::new();
        for (k, ra) in &la.rows {
            let rb = &lb.rows[k];
            assert!(inodes.insert(rb.file.inode));
            let (mut fa, mut fb) = (ra.file.clone(), rb.file.clone());
            fa.inode = 0;
            fb.inode = 0;
            assert_eq!((&ra.file_id, ra.flags, fa), (&rb.file_id, rb.flags, fb));
            if ra.flags == layout::FLAG_FILE {
                assert_eq!(blob_bytes(&a, ra), blob_bytes(&b, rb));
            }
        }
        assert_eq!(files_under(&a), files_under(&b));

        // Encrypted add_all: every blob decrypts.
        let c = tmp.path().join("c");
        let wc = BackupWriter::create(&c, opts(true)).unwrap();
        wc.add_all(make()).unwrap();
        wc.finish().unwrap();
        let lc = load(&c, Some(PW));
        let mut n = 0;
        for (k, r) in &lc.rows {
            if r.flags == layout::FLAG_FILE {
                let want = blob_bytes(&a, &la.rows[k]);
                assert_eq!(plaintext(&c, r, lc.unlocked.as_ref()), want);
                n += 1;
            }
        }
        assert_eq!(n, 300);
    }

    #[test]
    fn plist_dates_are_whole_seconds_for_python_readers() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("b");
        let opts = WriterOptions {
            date: UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            ..WriterOptions::default()
        };
        BackupWriter::create(&out, opts).unwrap().finish().unwrap();
        let info = std::fs::read_to_string(out.join(layout::INFO_PLIST)).unwrap();
        assert!(info.contains("<date>2023-11-14T22:13:20Z</date>"), "{info}");
    }

    #[test]
    fn existing_blob_is_linked_and_its_key_rewrapped() {
        let tmp = tempfile::tempdir().unwrap();
        for encrypted in [true, false] {
            let a = tmp.path().join(format!("a{encrypted}"));
            let w = BackupWriter::create(&a, opts(encrypted)).unwrap();
            let content = b"reuse me, 33 bytes of plaintext!!".to_vec();
            let mut rec =
                NewRecord::file("HomeDomain", "Library/x", Content::Bytes(content.clone()));
            rec.kind = Kind::File {
                content: Content::Bytes(content.clone()),
                protection_class: 2,
            };
            w.add(rec).unwrap();
            w.finish().unwrap();
            let mut old = crate::Backup::open(&a).unwrap();
            if encrypted {
                let pk = old.derive_passkey(PW, &KdfLimits::default()).unwrap();
                old.unlock_with_passkey(&pk, None).unwrap();
            }
            let cat = old.catalog().unwrap();
            let r = cat
                .records
                .iter()
                .find(|r| r.relative_path == "Library/x")
                .unwrap();
            let key = r
                .file
                .as_ref()
                .unwrap()
                .encryption_key
                .as_ref()
                .map(|k| old.keys().unwrap().unwrap_persistent(k).unwrap());

            let b = tmp.path().join(format!("b{encrypted}"));
            let w = BackupWriter::create(&b, opts(encrypted)).unwrap();
            let mut meta = NewRecord::file("HomeDomain", "Library/x", Content::Bytes(Vec::new()));
            meta.kind = Kind::File {
                content: Content::Bytes(Vec::new()),
                protection_class: 2,
            };
            // The key must be given exactly for encrypted backups.
            let wrong = if encrypted {
                None
            } else {
                Some(Key256::random())
            };
            let meta2 = NewRecord::file("HomeDomain", "Library/y", Content::Bytes(Vec::new()));
            assert!(w
                .add_existing_blob(meta2, &old.blob_path(r).unwrap(), wrong.as_ref(), 33, None)
                .is_err());
            w.add_existing_blob(meta, &old.blob_path(r).unwrap(), key.as_ref(), 33, None)
                .unwrap();
            w.finish().unwrap();
            let mut new = crate::Backup::open(&b).unwrap();
            if encrypted {
                let pk = new.derive_passkey(PW, &KdfLimits::default()).unwrap();
                new.unlock_with_passkey(&pk, None).unwrap();
            }
            let cat = new.catalog().unwrap();
            let r = cat
                .records
                .iter()
                .find(|r| r.relative_path == "Library/x")
                .unwrap();
            assert_eq!(r.protection_class(), ProtectionClass(2));
            assert_eq!(r.size(), 33);
            let mut got = Vec::new();
            new.copy_file(r, &mut got).unwrap();
            assert_eq!(got, content);
            assert!(r.file.as_ref().unwrap().digest.is_some());
        }
    }

    /// The password KDF runs beside the file work: files added before it finished open
    /// with the password, and `kept_keybag` hands out exactly the keybag that was written,
    /// with a passkey that opens it and makes a second backup without any KDF.
    #[test]
    fn background_kdf_keybag_opens_and_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = BackupWriter::create(&tmp.path().join("a"), opts(true)).unwrap();
        w.add(file("HomeDomain", "Library/a", b"first".to_vec(), 1))
            .unwrap();
        let kept = w.kept_keybag().unwrap().expect("encrypted");
        // Added after the keybag was sealed: same class keys.
        w.add(file("HomeDomain", "Library/b", b"second".to_vec(), 3))
            .unwrap();
        let a = w.finish().unwrap();
        let mut b = crate::Backup::open(&a).unwrap();
        assert_eq!(b.keybag().unwrap().to_bytes(), kept.keybag.to_bytes());
        let pk = b.derive_passkey(PW, &KdfLimits::default()).unwrap();
        assert_eq!(pk, kept.passkey);
        b.unlock_with_passkey(&pk, None).unwrap();
        let cat = b.catalog().unwrap();
        for (path, want) in [("Library/a", &b"first"[..]), ("Library/b", b"second")] {
            let r = cat
                .records
                .iter()
                .find(|r| r.relative_path == path)
                .unwrap();
            let mut got = Vec::new();
            b.copy_file(r, &mut got).unwrap();
            assert_eq!(got, want, "{path}");
        }
        let mut o = opts(false);
        o.existing_keybag = Some(kept);
        let w = BackupWriter::create(&tmp.path().join("b"), o).unwrap();
        w.add(file("HomeDomain", "Library/c", b"third".to_vec(), 3))
            .unwrap();
        let mut b2 = crate::Backup::open(w.finish().unwrap()).unwrap();
        let pk = b2.derive_passkey(PW, &KdfLimits::default()).unwrap();
        b2.unlock_with_passkey(&pk, None).unwrap();
        // Unencrypted: nothing to keep.
        let mut w = BackupWriter::create(&tmp.path().join("c"), opts(false)).unwrap();
        assert!(w.kept_keybag().unwrap().is_none());
    }

    /// In-place updates: kept blobs are not touched, changed ones replaced, dropped ones
    /// deleted; until the commit marker the old backup stands (a crash discards the
    /// update), after it the backup is refused until `recover` finishes it, even from a
    /// partly applied state.
    #[test]
    fn in_place_update_commits_like_a_journal() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dk = DeviceKey::random();
        let (kb, _, pk) = Keybag::new_backup_with_passkey(PW, &dk, 1000).unwrap();
        let existing = || {
            let mut o = opts(false);
            o.existing_keybag = Some(ExistingKeybag {
                keybag: kb.clone(),
                passkey: pk.clone(),
                device_key: dk.clone(),
            });
            o
        };
        let out = tmp.path().join("b");
        let w = BackupWriter::create(&out, existing()).unwrap();
        for (p, d) in [("x", "keep me"), ("y", "old y"), ("z", "drop me")] {
            w.add(file(
                "HomeDomain",
                &format!("Library/{p}"),
                d.as_bytes().to_vec(),
                3,
            ))
            .unwrap();
        }
        w.finish().unwrap();
        let read = |out: &Path| -> BTreeMap<String, Vec<u8>> {
            let mut b = crate::Backup::open(out).unwrap();
            b.unlock_with_passkey(&pk, None).unwrap();
            let cat = b.catalog().unwrap();
            cat.records
                .iter()
                .filter(|r| r.kind() == crate::RecordKind::File)
                .map(|r| {
                    let mut v = Vec::new();
                    b.copy_file(r, &mut v).unwrap();
                    (r.relative_path.clone(), v)
                })
                .collect()
        };
        let old = read(&out);
        let ids = |names: &[&str]| -> Vec<String> {
            names
                .iter()
                .map(|n| layout::file_id("HomeDomain", &format!("Library/{n}")))
                .collect()
        };
        let blob = |n: &str| layout::blob_path(&out, &ids(&[n])[0]).unwrap();
        let x_inode = fs::metadata(blob("x")).unwrap().ino();
        let records = |out: &Path| -> Vec<Record> {
            let mut b = crate::Backup::open(out).unwrap();
            b.unlock_with_passkey(&pk, None).unwrap();
            b.catalog().unwrap().records
        };
        let prev = records(&out);
        let x_rec = prev
            .iter()
            .find(|r| r.relative_path == "Library/x")
            .unwrap()
            .clone();
        // x kept, y changed, z gone, w new.
        let stage = || {
            let w = BackupWriter::update(&out, existing(), &prev).unwrap();
            let keep = || file("HomeDomain", "Library/x", Vec::new(), 3);
            let mut keyless = x_rec.clone();
            keyless.file.as_mut().unwrap().encryption_key = None;
            assert!(
                w.keep_blob(keep(), &keyless).is_err(),
                "an encrypted backup needs the wrapped key"
            );
            assert!(
                w.keep_blob(file("HomeDomain", "Library/y", Vec::new(), 3), &x_rec)
                    .is_err(),
                "the previous record must be the same file"
            );
            w.keep_blob(keep(), &x_rec).unwrap();
            w.add(file("HomeDomain", "Library/y", b"new y".to_vec(), 3))
                .unwrap();
            w.add(file("HomeDomain", "Library/w", b"new w".to_vec(), 3))
                .unwrap();
            w.finish_staged().unwrap()
        };
        // A crash before the commit marker: the old backup stands; recover discards.
        let staged = stage();
        assert_eq!(staged, out.join(crate::update::UPDATE_DIR));
        assert_eq!(read(&out), old);
        assert_eq!(
            crate::update::recover(&out).unwrap(),
            crate::update::Recovery::Discarded
        );
        assert!(!staged.exists());
        assert_eq!(read(&out), old);
        // A crash after the marker, with the update partly applied: refused, then finished.
        stage();
        crate::update::commit(&out, &ids(&["z"])).unwrap();
        let y_staged = layout::blob_path(&staged, &ids(&["y"])[0]).unwrap();
        fs::rename(&y_staged, blob("y")).unwrap();
        let e = crate::Backup::open(&out).err().unwrap();
        assert!(e.to_string().contains("interrupted keybag update"), "{e}");
        assert_eq!(
            crate::update::recover(&out).unwrap(),
            crate::update::Recovery::Finished
        );
        let want: BTreeMap<String, Vec<u8>> = [
            ("Library/w", &b"new w"[..]),
            ("Library/x", b"keep me"),
            ("Library/y", b"new y"),
        ]
        .into_iter()
        .map(|(p, d)| (p.to_string(), d.to_vec()))
        .collect();
        assert_eq!(read(&out), want);
        assert!(!blob("z").exists(), "the dropped blob is deleted");
        assert_eq!(
            fs::metadata(blob("x")).unwrap().ino(),
            x_inode,
            "x untouched"
        );
        assert!(!staged.exists());
        // The kept row is the stored one, byte for byte (not re-encoded).
        let now = records(&out);
        let x_now = now.iter().find(|r| r.relative_path == "Library/x").unwrap();
        assert_eq!(x_now.raw, x_rec.raw);
        let inodes: std::collections::BTreeSet<u64> =
            now.iter().map(|r| r.file.as_ref().unwrap().inode).collect();
        assert_eq!(inodes.len(), now.len(), "inode numbers stay unique");
        // The normal path: finish commits and applies at once.
        let w = BackupWriter::update(&out, existing(), &now).unwrap();
        w.add(file("HomeDomain", "Library/x", b"x again".to_vec(), 3))
            .unwrap();
        assert_eq!(w.finish().unwrap(), out);
        let got = read(&out);
        assert_eq!(got.keys().collect::<Vec<_>>(), vec!["Library/x"]);
        assert_eq!(got["Library/x"], b"x again");
        assert!(!blob("w").exists() && !blob("y").exists());
        assert_eq!(blob_count(&out), 1, "one blob file left");
        // keep_blob needs an update writer, and the blob in place.
        let w = BackupWriter::create(&tmp.path().join("c"), existing()).unwrap();
        assert!(w
            .keep_blob(file("HomeDomain", "Library/x", Vec::new(), 3), &x_rec)
            .is_err());
        let now = records(&out);
        let w = BackupWriter::update(&out, existing(), &now).unwrap();
        let mut q = x_rec.clone();
        q.relative_path = "Library/q".into();
        q.file_id = layout::file_id("HomeDomain", "Library/q");
        assert!(w
            .keep_blob(file("HomeDomain", "Library/q", Vec::new(), 3), &q)
            .is_err());
        drop(w);
        assert!(
            !out.join(crate::update::UPDATE_DIR).exists(),
            "dropped writer cleans up"
        );
    }

    /// Blob files under the `xx` folders of a backup.
    fn blob_count(root: &Path) -> usize {
        fs::read_dir(root)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().len() == 2 && e.path().is_dir())
            .map(|e| fs::read_dir(e.path()).unwrap().count())
            .sum()
    }

    #[test]
    fn existing_keybag_needs_no_kdf_and_opens_with_the_original_password() {
        let tmp = tempfile::tempdir().unwrap();
        let dk = DeviceKey::random();
        // The one KDF run: what a device does when the backup password is set.
        let (kb, _, pk) = Keybag::new_backup_with_passkey(PW, &dk, 1000).unwrap();
        let existing = || ExistingKeybag {
            keybag: kb.clone(),
            passkey: pk.clone(),
            device_key: dk.clone(),
        };
        let content = b"written under a kept keybag".to_vec();
        let rec = |c: Vec<u8>| {
            let mut r = NewRecord::file("HomeDomain", "Library/x", Content::Bytes(c.clone()));
            r.kind = Kind::File {
                content: Content::Bytes(c),
                protection_class: 3,
            };
            r
        };
        let write = |name: &str, reuse: Option<(&Path, Vec<u8>)>| {
            let out = tmp.path().join(name);
            let mut o = opts(false);
            o.existing_keybag = Some(existing());
            let w = BackupWriter::create(&out, o).unwrap();
            match reuse {
                None => w.add(rec(content.clone())).unwrap(),
                Some((blob, wrapped)) => {
                    // A key of another class, or garbage, is refused.
                    let mut other = wrapped.clone();
                    other[0] = 2;
                    assert!(w
                        .add_existing_blob_wrapped(rec(Vec::new()), blob, &other, 27, None)
                        .is_err());
                    let mut garbage = wrapped.clone();
                    garbage[10] ^= 1;
                    assert!(w
                        .add_existing_blob_wrapped(rec(Vec::new()), blob, &garbage, 27, None)
                        .is_err());
                    w.add_existing_blob_wrapped(rec(Vec::new()), blob, &wrapped, 27, None)
                        .unwrap()
                }
            }
            w.finish().unwrap()
        };
        let read = |out: &Path| {
            let mut b = crate::Backup::open(out).unwrap();
            assert_eq!(b.keybag().unwrap().to_bytes(), kb.to_bytes());
            let pk = b.derive_passkey(PW, &KdfLimits::default()).unwrap();
            b.unlock_with_passkey(&pk, None).unwrap();
            let cat = b.catalog().unwrap();
            let r = cat
                .records
                .into_iter()
                .find(|r| r.relative_path == "Library/x")
                .unwrap();
            let mut got = Vec::new();
            b.copy_file(&r, &mut got).unwrap();
            assert_eq!(got, content);
            (b, r)
        };
        let a = write("a", None);
        let (old, r) = read(&a);
        let wrapped = r.file.as_ref().unwrap().encryption_key.clone().unwrap();
        let b = write("b", Some((&old.blob_path(&r).unwrap(), wrapped.clone())));
        let (_, r2) = read(&b);
        // Kept as is, not re-wrapped.
        assert_eq!(r2.file.unwrap().encryption_key.unwrap(), wrapped);
        // A wrong passkey is refused; so is giving both a password and a kept keybag.
        let mut o = opts(false);
        o.existing_keybag = Some(ExistingKeybag {
            passkey: dataprotection::Passkey::random(),
            ..existing()
        });
        assert!(matches!(
            BackupWriter::create(&tmp.path().join("c"), o),
            Err(Error::WrongPassword { .. })
        ));
        let mut o = opts(true);
        o.existing_keybag = Some(existing());
        assert!(BackupWriter::create(&tmp.path().join("d"), o).is_err());
        // Not encrypted: a wrapped key is refused.
        let w = BackupWriter::create(&tmp.path().join("e"), opts(false)).unwrap();
        assert!(w
            .add_existing_blob_wrapped(
                rec(Vec::new()),
                &old.blob_path(&r).unwrap(),
                &wrapped,
                27,
                None
            )
            .is_err());
    }
}
