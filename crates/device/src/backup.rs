//! `device backup`: a real-format local backup of a virtual device (design §4.1, format §8.6–8.8,
//! §10), written with [`mobilebackup::writer::BackupWriter`].
//!
//! * Files are read through the device's class keys and re-encrypted under a fresh backup
//!   keybag (encrypted backups) or copied in the clear (unencrypted ones).
//! * Left out (format §10.1): `Library/Caches` and `tmp` of every domain, and every file or
//!   folder flagged "exclude from backup" (with everything under a flagged folder).
//! * The keychain becomes `KeychainDomain/keychain-backup.plist` with the export rules of §8.6:
//!   `akpu` items never, token-bound (`tkid`) and system-bound (`sysb`, `lockdown-identities`)
//!   items never; ThisDeviceOnly classes 9–11 under `WRAP=3` with this device's key 0x835.
//!   Unencrypted backups keep the keychain sealed to the device: their keybag's password layer
//!   is a key the device re-derives from its UID ([`unencrypted_backup_passkey`]) and classes
//!   5–11 are also sealed with 0x835, so only this device opens it again.
//! * A locked device backs up only what it can read now (class D always, C after the first
//!   unlock, A and B only while unlocked); everything else is listed in
//!   [`BackupReport::skipped`] with the reason.
//! * Into an existing backup folder of the same device and encryption, files whose
//!   (domain, path, size, mtime, class) did not change keep their blob
//!   ([`BackupReport::reused`]), so an unchanged device is re-backed up without re-encrypting
//!   anything. Under the same keys (the device's kept keybag, or unencrypted both times) the
//!   folder is updated in place ([`mobilebackup::update`]: unchanged blobs are not touched,
//!   the rest is committed like a journal, and an interrupted update is finished or undone
//!   by the next backup); under another keybag the kept blobs are hard-linked into a new
//!   folder with their keys re-wrapped, and that folder is swapped in.
//! * For a new keybag the password KDF runs on its own thread while files are encrypted
//!   (the writer seals the keybag at the end); a password given with a kept keybag is checked
//!   the same way, and a different one (a password change) redoes the backup under a fresh
//!   keybag.
//! * "Encrypt local backup" lives on the device, as on iOS: the first backup made with a
//!   password derives the backup keybag (one PBKDF2 run of `dpic` rounds) and the device
//!   keeps it in `secure/backup-keybag`, its passkey wrapped under a UID-derived key (like a
//!   ThisDeviceOnly keychain item: a copy of the folder on another UID cannot open it).
//!   [`backup_with_device_setting`] without a password then encrypts with that keybag and
//!   runs no KDF at all; with a password it runs one KDF to check it against the kept keybag
//!   and keeps it when it opens, or (another password: "changing the backup password on the
//!   phone") makes a fresh keybag and keeps that instead. An incremental backup under the
//!   same keybag opens the previous backup with the kept passkey (no KDF) and keeps every
//!   unchanged file's `EncryptionKey` as is. [`BackupReport::kdf_runs`] counts the KDF runs.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::SystemTime;

use dataprotection::keybag::Keybag;
use dataprotection::{DeviceKey, KdfLimits, Passkey, ProtectionClass};
use mobilebackup::blob::BlobReader;
use mobilebackup::keychain::{DerValue, NewKeychainItem};
use mobilebackup::plists::DeviceInfo;
use mobilebackup::writer::{
    BackupWriter, Content, Encryption, ExistingKeybag, Kind, NewRecord, UnencryptedKeybag,
    WriterOptions, DEFAULT_DPIC,
};
use mobilebackup::{Backup, Credentials, RecordKind, Secret};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::device::backup_keybag_path;
use crate::meta::write_atomic;
use crate::sep::label;
use crate::{Device, EntryKind};

/// Errors of backup, restore and import.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The device failed.
    #[error(transparent)]
    Device(#[from] crate::Error),
    /// The backup failed (not a backup, wrong password, damaged, …).
    #[error(transparent)]
    Backup(#[from] mobilebackup::Error),
    /// The backup is damaged (a blob, record or the keychain file); nothing was changed.
    #[error("damaged backup: {0}")]
    Damaged(String),
    /// The operation is refused as asked (device locked, folder exists, …).
    #[error("{0}")]
    Refused(String),
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OpError + '_ {
    move |source| OpError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Result of backup, restore and import.
pub type OpResult<T> = std::result::Result<T, OpError>;

/// How to back up.
pub struct BackupOptions {
    /// `Some(password)` for an encrypted backup.
    pub password: Option<Zeroizing<Vec<u8>>>,
    /// PBKDF2-SHA256 iterations of a new encrypted backup ([`DEFAULT_DPIC`]; small only in
    /// tests).
    pub dpic: u32,
}

impl Default for BackupOptions {
    fn default() -> Self {
        Self {
            password: None,
            dpic: DEFAULT_DPIC,
        }
    }
}

/// Something left out of a backup or a restore, and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Skip {
    /// `file`, `dir`, `symlink` or `keychain`.
    pub kind: String,
    /// `domain/path`, or for keychain items `table #rowid (description)`.
    pub what: String,
    /// Class short name (`A`, `cku`, …), when it has one.
    pub class: Option<String>,
    /// Why.
    pub reason: String,
}

/// What a backup wrote.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BackupReport {
    /// The backup folder.
    pub out: PathBuf,
    /// Encrypted or not.
    pub encrypted: bool,
    /// Regular files written.
    pub files: u64,
    /// Their plaintext bytes.
    pub bytes: u64,
    /// Directories.
    pub directories: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Files whose blob was kept from the previous backup in the folder.
    pub reused: u64,
    /// Keychain items exported, as `(table, class short name, description)`.
    pub keychain: Vec<(String, String, String)>,
    /// Left out, with reasons (excluded paths, classes unavailable while locked, keychain items
    /// that are never exported).
    pub skipped: Vec<Skip>,
    /// Backup-password KDF runs (PBKDF2, `dpic` rounds each) this backup performed: 0 when
    /// it used the keybag the device holds without a password, 1 when a password was
    /// checked against it or set for the first time, 2 when a new password replaced it.
    /// Opening the previous backup with a password (another keybag) counts too.
    pub kdf_runs: u32,
    /// Encrypted with the backup keybag the device holds, without being given the password.
    pub device_keybag: bool,
    /// This backup set the device's backup password (first time, or a different one): the
    /// device now holds the new backup keybag.
    pub backup_password_set: bool,
    /// Nothing changed since this device's last backup into this folder (no file, folder,
    /// keychain item, lock state or identity), so the backup was kept as it is and only its
    /// dates were refreshed.
    pub unchanged: bool,
}

/// What the device remembers of its last backup (`backup-state.json` in its folder; no
/// secrets: hashes and random change tokens), so that a backup of an unchanged device into
/// the same folder can keep it as it is.
#[derive(Serialize, serde::Deserialize, PartialEq, Eq)]
struct LastBackup {
    /// The backup folder, canonical.
    out: PathBuf,
    /// SHA-256 of its `Manifest.db`, `Manifest.plist`, `Info.plist` and `Status.plist` as
    /// this device left them.
    top_files: Vec<String>,
    /// [`Device::change_token`] then.
    changes: String,
    /// Name, model, iOS version, UDID, passcode set, lock state then.
    identity: String,
    /// The keybag UUID of an encrypted backup (`None`: unencrypted).
    keybag: Option<String>,
}

const LAST_BACKUP: &str = "backup-state.json";

fn sha256_file(path: &Path) -> OpResult<String> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

fn identity(device: &Device) -> String {
    let s = format!(
        "{}\0{}\0{}\0{}\0{}\0{:?}",
        device.name(),
        device.model(),
        device.ios_version(),
        device.udid(),
        device.passcode_set(),
        device.state()
    );
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The record of a backup just made into `out` under `keybag`.
fn last_backup(device: &Device, out: &Path, keybag: Option<String>) -> OpResult<LastBackup> {
    Ok(LastBackup {
        out: fs::canonicalize(out).map_err(io_err(out))?,
        top_files: mobilebackup::update::TOP_FILES
            .iter()
            .map(|f| sha256_file(&out.join(f)))
            .collect::<OpResult<_>>()?,
        changes: hex::encode(device.change_token()?),
        identity: identity(device),
        keybag,
    })
}

fn store_last_backup(device: &Device, rec: &LastBackup) -> OpResult<()> {
    let bytes = serde_json::to_vec_pretty(rec).expect("plain data");
    write_atomic(&device.dir().join(LAST_BACKUP), &bytes, 0o600)?;
    Ok(())
}

/// The record of this device's last backup when `out` holds it and nothing changed since:
/// the same folder, its top-level files as the device left them, the same change token,
/// identity, lock state and keybag. Any doubt (no record, unreadable files) is `None`.
fn unchanged_since_last(device: &Device, out: &Path, keybag: Option<String>) -> Option<LastBackup> {
    let bytes = fs::read(device.dir().join(LAST_BACKUP)).ok()?;
    let recorded = serde_json::from_slice::<LastBackup>(&bytes).ok()?;
    let now = last_backup(device, out, keybag).ok()?;
    (now == recorded).then_some(now)
}

/// The key of the password layer of this device's unencrypted backups' keybags: derived from
/// the device key 0x835 (itself derived from the UID), so it never needs storing and no other
/// device can re-derive it.
pub fn unencrypted_backup_passkey(device_key: &DeviceKey) -> Passkey {
    let mut h = Sha256::new();
    h.update(b"keybag device: unencrypted backup keybag v1\0");
    h.update(device_key.as_bytes());
    let out: [u8; 32] = h.finalize().into();
    Passkey::from_bytes(out)
}

/// `ak`, `A`, … for a class.
pub(crate) fn class_name(c: ProtectionClass) -> String {
    match c.0 {
        1 => "A".into(),
        2 => "B".into(),
        3 => "C".into(),
        4 => "D".into(),
        _ => c.short_name().to_string(),
    }
}

/// Why a path is excluded by rule (format §10.1), if it is.
pub(crate) fn excluded_by_rule(path: &str) -> Option<&'static str> {
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    if under("Library/Caches") {
        Some("Library/Caches is never backed up")
    } else if under("tmp") {
        Some("tmp is never backed up")
    } else {
        None
    }
}

/// Why a keychain item is never exported (format §8.6), if it is not.
pub(crate) fn never_exported(
    class: ProtectionClass,
    attrs: &BTreeMap<String, DerValue>,
) -> Option<String> {
    if class == ProtectionClass::KC_PASSCODE_SET_TDO {
        return Some("akpu (WhenPasscodeSetThisDeviceOnly) items never leave the device".into());
    }
    if attrs.contains_key("tkid") {
        return Some("token-bound (Secure Enclave) keys are never exported".into());
    }
    let sysb = attrs.get("sysb").is_some_and(|v| match v {
        DerValue::Bool(b) => *b,
        other => other.as_i64().is_some_and(|n| n != 0),
    });
    if sysb || attrs.get("agrp").and_then(DerValue::as_str) == Some("lockdown-identities") {
        return Some("system-bound items are never exported".into());
    }
    None
}

/// A short description of a keychain item for reports (never its secret).
pub(crate) fn describe_item(table: &str, rowid: u64, attrs: &BTreeMap<String, DerValue>) -> String {
    let get = |k: &str| attrs.get(k).and_then(DerValue::as_str);
    let mut parts = Vec::new();
    for k in ["svce", "srvr", "acct", "labl", "agrp"] {
        if let Some(v) = get(k) {
            parts.push(format!("{k}={v}"));
        }
    }
    if parts.is_empty() {
        format!("{table} #{rowid}")
    } else {
        format!("{table} #{rowid} ({})", parts.join(", "))
    }
}

/// The backup keybag a device keeps once "encrypt local backup" is on, with the passkey
/// its password derived to.
struct KeptKeybag {
    keybag: Keybag,
    passkey: Passkey,
}

const KEPT_MAGIC: &[u8; 4] = b"KBBK";
const KEPT_VERSION: u32 = 1;
/// Magic, version, the wrapped passkey.
const KEPT_HEADER: usize = 4 + 4 + 40;

/// The kept backup keybag: `Ok(None)` when the device holds none; an error when it holds one
/// it cannot use (made on another UID, or damaged).
fn load_kept(device: &Device) -> OpResult<Option<KeptKeybag>> {
    let path = backup_keybag_path(device.dir());
    let bytes = match fs::read(&path) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let unusable = |why: &str| {
        OpError::Refused(format!(
            "{}: this device's backup password cannot be used ({why}); back up with the \
             password (--encrypt) to set it again",
            path.display()
        ))
    };
    if bytes.len() <= KEPT_HEADER
        || &bytes[..4] != KEPT_MAGIC
        || bytes[4..8] != KEPT_VERSION.to_be_bytes()
    {
        return Err(unusable("not a backup keybag file"));
    }
    let kek = device.uid.derive(label::BACKUP_KEYBAG);
    let passkey = dataprotection::wrap::unwrap_key(&kek, &bytes[8..KEPT_HEADER])
        .map_err(|_| unusable("it was made on another device, or is damaged"))?;
    let keybag =
        Keybag::parse(&bytes[KEPT_HEADER..]).map_err(|_| unusable("its keybag is damaged"))?;
    keybag
        .unlock(&passkey, Some(&device.device_key()))
        .map_err(|_| unusable("its keybag does not open"))?;
    Ok(Some(KeptKeybag { keybag, passkey }))
}

fn store_kept(device: &Device, kept: &KeptKeybag) -> OpResult<()> {
    let kek = device.uid.derive(label::BACKUP_KEYBAG);
    let mut bytes = Zeroizing::new(Vec::with_capacity(KEPT_HEADER + 1024));
    bytes.extend_from_slice(KEPT_MAGIC);
    bytes.extend_from_slice(&KEPT_VERSION.to_be_bytes());
    bytes.extend_from_slice(&dataprotection::wrap::wrap_key(&kek, &kept.passkey));
    bytes.extend_from_slice(&kept.keybag.to_bytes());
    write_atomic(&backup_keybag_path(device.dir()), &bytes, 0o600)?;
    Ok(())
}

const NO_KDF_LIMITS: KdfLimits = KdfLimits {
    max_dpic: u32::MAX,
    max_iter: u32::MAX,
};

/// Which keybag a backup is made under.
enum Plan {
    /// No encryption.
    Unencrypted,
    /// The keybag the device keeps, without a password: no KDF.
    Kept(KeptKeybag),
    /// The kept keybag, with a password to check against it. The check (one KDF run) runs
    /// on its own thread beside the file work; a different password means "change the
    /// backup password": the work is discarded and redone as [`Plan::Fresh`].
    Check(KeptKeybag, Zeroizing<Vec<u8>>),
    /// A new keybag for the password, its KDF run by the writer beside the file work; the
    /// device keeps it afterwards. `replaced`: the kept keybag it replaces (it still opens
    /// the previous backup without a KDF).
    Fresh {
        password: Zeroizing<Vec<u8>>,
        replaced: Option<KeptKeybag>,
    },
}

fn choose_keybag(
    device: &Device,
    opts: &BackupOptions,
    use_device_setting: bool,
    force_fresh: bool,
    report: &mut BackupReport,
) -> OpResult<Plan> {
    let Some(pw) = &opts.password else {
        if !use_device_setting {
            return Ok(Plan::Unencrypted);
        }
        let kept = load_kept(device)?;
        report.device_keybag = kept.is_some();
        return Ok(kept.map_or(Plan::Unencrypted, Plan::Kept));
    };
    // A kept keybag is checked against the password; an unusable one is replaced.
    let kept = load_kept(device).ok().flatten();
    Ok(match kept {
        Some(kept) if !force_fresh => Plan::Check(kept, pw.clone()),
        replaced => Plan::Fresh {
            password: pw.clone(),
            replaced,
        },
    })
}

/// A previous backup in the output folder whose blobs can be reused.
struct Previous {
    /// Every record of its `Manifest.db` (for an in-place update).
    records: Vec<mobilebackup::Record>,
    backup: Backup,
    /// Made under the same keybag as the new backup: wrapped file keys are kept as they are.
    same_keybag: bool,
    /// domain → path → index in `records`, for its usable regular files (nested so that a
    /// lookup borrows both strings instead of allocating a key per device file).
    files: HashMap<String, HashMap<String, usize>>,
}

impl Previous {
    /// The usable regular file `domain/path` of the previous backup.
    fn file(&self, domain: &str, path: &str) -> Option<&mobilebackup::Record> {
        let i = *self.files.get(domain)?.get(path)?;
        Some(&self.records[i])
    }
}

fn open_previous(
    device: &Device,
    out: &Path,
    opts: &BackupOptions,
    encrypted: bool,
    this: Option<&KeptKeybag>,
    replaced: Option<&KeptKeybag>,
    kdf_runs: &mut u32,
) -> Option<Previous> {
    let mut b = Backup::open(out).ok()?;
    if b.device().udid.as_deref() != Some(device.udid()) {
        return None;
    }
    if b.is_encrypted() != encrypted {
        return None;
    }
    let mut same_keybag = false;
    if encrypted {
        let made_under = |k: &KeptKeybag| {
            b.keybag().is_some_and(|kb| {
                kb.uuid.is_some()
                    && kb.uuid == k.keybag.uuid
                    && kb.to_bytes() == k.keybag.to_bytes()
            })
        };
        let (same, under_replaced) = (
            this.is_some_and(made_under),
            replaced.is_some_and(made_under),
        );
        let device_key = device.device_key();
        if same
            && b.unlock_with_passkey(&this.expect("checked").passkey, Some(&device_key))
                .is_ok()
        {
            same_keybag = true;
        } else if under_replaced
            && b.unlock_with_passkey(&replaced.expect("checked").passkey, Some(&device_key))
                .is_ok()
        {
            // Made under the keybag a new password replaces: it still opens it, no KDF.
        } else {
            // Made under another keybag: only the password opens it (one KDF run).
            let pw = opts.password.as_ref()?;
            let creds = Credentials {
                secret: Secret::Password(pw.clone()),
                device_key: None,
                limits: NO_KDF_LIMITS,
            };
            *kdf_runs += 1;
            b.unlock(&creds).ok()?;
        }
    }
    let cat = b.catalog().ok()?;
    let mut files: HashMap<String, HashMap<String, usize>> = HashMap::new();
    for (i, r) in cat.records.iter().enumerate() {
        if r.kind() == RecordKind::File && r.problem.is_none() {
            files
                .entry(r.domain.clone())
                .or_default()
                .insert(r.relative_path.clone(), i);
        }
    }
    Some(Previous {
        records: cat.records,
        backup: b,
        same_keybag,
        files,
    })
}

/// Backs `device` up into the folder `out` (created, or replaced when it holds an older backup).
///
/// `opts.password` `Some`: an encrypted backup under that password; the device keeps its
/// backup keybag (see the module docs), so later backups need no KDF. `None`: an unencrypted
/// backup, as the caller asks, even when the device has backup encryption on (see
/// [`backup_with_device_setting`] for what a phone does).
pub fn backup(device: &Device, out: &Path, opts: &BackupOptions) -> OpResult<BackupReport> {
    backup_inner(device, out, opts, false, false)
}

/// [`backup`] as a phone does it: without a password, a device with backup encryption on
/// ([`Device::backup_encryption`]) makes an encrypted backup with the keybag it holds (no
/// password asked, no KDF); one without makes an unencrypted backup. A device holding a
/// backup keybag it cannot open (its folder was copied onto another UID) is refused: give the
/// password to set it again. With a password, the same as [`backup`].
pub fn backup_with_device_setting(
    device: &Device,
    out: &Path,
    opts: &BackupOptions,
) -> OpResult<BackupReport> {
    backup_inner(device, out, opts, true, false)
}

fn backup_inner(
    device: &Device,
    out: &Path,
    opts: &BackupOptions,
    use_device_setting: bool,
    force_fresh: bool,
) -> OpResult<BackupReport> {
    // What a killed earlier backup left beside `out` goes first (a backup set aside by an
    // interrupted swap is put back).
    mobilebackup::staging::clean_stale(out)?;
    let existing = fs::symlink_metadata(out).is_ok();
    if existing && !out.join("Manifest.plist").is_file() {
        return Err(OpError::Refused(format!(
            "{}: exists and is not a backup; refusing to replace it",
            out.display()
        )));
    }
    let mut report = BackupReport {
        out: out.to_path_buf(),
        ..BackupReport::default()
    };
    let plan = choose_keybag(device, opts, use_device_setting, force_fresh, &mut report)?;
    report.encrypted = !matches!(plan, Plan::Unencrypted);
    let (this, replaced) = match &plan {
        Plan::Kept(k) | Plan::Check(k, _) => (Some(k), None),
        Plan::Fresh { replaced, .. } => (None, replaced.as_ref()),
        Plan::Unencrypted => (None, None),
    };
    if existing {
        // A crash during an earlier update of `out` is finished (or undone) first.
        mobilebackup::update::recover(out)?;
        // Nothing changed since the last backup into `out` (and no password to check): keep
        // it, refresh its dates. The report is computed as a full backup's would be.
        // Some(keybag UUID or None for unencrypted) when the shortcut may apply: never with
        // a password to check or set.
        let keybag = match &plan {
            Plan::Kept(k) => Some(k.keybag.uuid_string()),
            Plan::Unencrypted => Some(None),
            Plan::Check(..) | Plan::Fresh { .. } => None,
        };
        if let Some(keybag) = keybag {
            if let Some(mut record) = unchanged_since_last(device, out, keybag) {
                let entries = device.entries_with_refs()?;
                let flagged = flagged_dirs(&entries);
                for (e, _) in &entries {
                    match decide(device, e, &flagged) {
                        Decision::Skip(skip) => report.skipped.push(skip),
                        Decision::Take => match e.kind {
                            EntryKind::File => {
                                report.files += 1;
                                report.bytes += e.size;
                                report.reused += 1;
                            }
                            EntryKind::Directory => report.directories += 1,
                            EntryKind::Symlink { .. } => report.symlinks += 1,
                        },
                    }
                }
                export_keychain(device, &mut report)?;
                // A refresh that fails (it left nothing behind) falls back to a real backup.
                if mobilebackup::update::refresh(out, SystemTime::now()).is_ok() {
                    // Only the plists changed: Manifest.db (the big one) keeps its hash.
                    for (hash, name) in record
                        .top_files
                        .iter_mut()
                        .zip(mobilebackup::update::TOP_FILES)
                        .filter(|(_, n)| *n != mobilebackup::layout::MANIFEST_DB)
                    {
                        *hash = sha256_file(&out.join(name))?;
                    }
                    store_last_backup(device, &record)?;
                    report.unchanged = true;
                    return Ok(report);
                }
                report = BackupReport {
                    out: out.to_path_buf(),
                    encrypted: report.encrypted,
                    device_keybag: report.device_keybag,
                    ..BackupReport::default()
                };
            }
        }
    }
    let previous = if existing {
        open_previous(
            device,
            out,
            opts,
            report.encrypted,
            this,
            replaced,
            &mut report.kdf_runs,
        )
    } else {
        None
    };
    // Under the same keys (same keybag, or unencrypted both times) the previous backup is
    // updated in place: unchanged blobs stay where they are, the rest is committed like a
    // journal (mobilebackup::update). Otherwise the new backup is built beside `out` and
    // swapped in.
    let in_place = previous
        .as_ref()
        .is_some_and(|p| p.same_keybag || !report.encrypted);
    let target = if existing && !in_place {
        mobilebackup::staging::sibling(out, "new")
    } else {
        out.to_path_buf()
    };

    let device_key = device.device_key();
    let existing_keybag = this.map(|k| ExistingKeybag {
        keybag: k.keybag.clone(),
        passkey: k.passkey.clone(),
        device_key: device_key.clone(),
    });
    let encryption = match &plan {
        Plan::Fresh { password, .. } => Some(Encryption {
            password: password.clone(),
            dpic: opts.dpic,
            device_key: Some(device_key.clone()),
        }),
        _ => None,
    };
    // The password check of `Plan::Check` runs beside the file work.
    let check = match &plan {
        Plan::Check(kept, pw) => {
            let (keybag, pw, dk) = (kept.keybag.clone(), pw.clone(), device_key.clone());
            Some(std::thread::spawn(move || {
                keybag
                    .derive_passkey(&pw, &NO_KDF_LIMITS)
                    .is_ok_and(|pk| keybag.unlock(&pk, Some(&dk)).is_ok())
            }))
        }
        _ => None,
    };
    let unencrypted_keybag = matches!(plan, Plan::Unencrypted).then(|| UnencryptedKeybag {
        passkey: unencrypted_backup_passkey(&device_key),
        device_key: device_key.clone(),
    });
    let wopts = WriterOptions {
        device: DeviceInfo {
            device_name: Some(device.name().to_string()),
            product_type: Some(device.model().to_string()),
            product_version: Some(device.ios_version().to_string()),
            udid: Some(device.udid().to_string()),
            ..DeviceInfo::default()
        },
        encryption,
        date: SystemTime::now(),
        passcode_set: device.passcode_set(),
        applications: device.apps()?,
        unencrypted_keybag,
        existing_keybag,
    };
    let mut writer = match previous.as_ref().filter(|_| in_place) {
        Some(prev) => BackupWriter::update(out, wopts, &prev.records)?,
        None => BackupWriter::create(&target, wopts)?,
    };

    // Files. The producer only decides (exclusions, lock state, reuse); opening each file
    // (its key unwrap: X25519 for class B) and copying or linking its blob run in the
    // workers, so nothing per-file is serial.
    let entries = device.entries_with_refs()?;
    let flagged = flagged_dirs(&entries);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    type Job<'a> = Box<dyn FnOnce() -> OpResult<bool> + Send + 'a>;
    // Jobs travel in batches: one channel hand-off per file cost more than keeping an
    // unchanged file does.
    const BATCH: usize = 32;
    let (tx, rx) = mpsc::sync_channel::<Vec<Job<'_>>>(workers * 2);
    let rx = Mutex::new(rx);
    let first_error: Mutex<Option<OpError>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    let reused = AtomicU64::new(0);
    let (writer_ref, previous_ref) = (&writer, previous.as_ref());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok(jobs) = next else { break };
                for job in jobs {
                    if failed.load(Ordering::Relaxed) {
                        break; // drain: the backup is abandoned anyway
                    }
                    match job() {
                        Ok(true) => {
                            reused.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                        }
                    }
                }
            });
        }
        {
            let mut batch: Vec<Job<'_>> = Vec::with_capacity(BATCH);
            for (e, fref) in entries {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                if let Decision::Skip(skip) = decide(device, &e, &flagged) {
                    report.skipped.push(skip);
                    continue;
                }
                let job: Job<'_> = match &e.kind {
                    EntryKind::Directory | EntryKind::Symlink { .. } => {
                        let mut rec = match &e.kind {
                            EntryKind::Symlink { target } => {
                                report.symlinks += 1;
                                NewRecord::symlink(&e.domain, &e.path, target)
                            }
                            _ => {
                                report.directories += 1;
                                NewRecord::directory(&e.domain, &e.path)
                            }
                        };
                        fill_meta(&mut rec, &e);
                        Box::new(move || {
                            writer_ref.add(rec)?;
                            Ok(false)
                        })
                    }
                    EntryKind::File => {
                        let fref = fref.expect("files have a ref");
                        report.files += 1;
                        report.bytes += e.size;
                        let old = previous_ref.and_then(|prev| {
                            prev.file(&e.domain, &e.path)
                                .filter(|old| {
                                    old.file.as_ref().is_some_and(|f| {
                                        f.size == e.size
                                            && f.mtime == e.mtime
                                            && f.protection_class == e.class.0
                                    })
                                })
                                .map(|old| (prev, old))
                        });
                        Box::new(move || {
                            if let Some((prev, old)) = old {
                                if reuse_blob(writer_ref, prev, old, &e, in_place)? {
                                    return Ok(true);
                                }
                            }
                            copy_file(writer_ref, device, e, &fref)?;
                            Ok(false)
                        })
                    }
                };
                batch.push(job);
                if batch.len() == BATCH
                    && tx
                        .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                        .is_err()
                {
                    break;
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
        }
        drop(tx);
    });
    drop(rx); // ends the jobs' borrows of `writer` and `previous`
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    report.reused = reused.into_inner();

    if let Some(check) = check {
        report.kdf_runs += 1;
        let same_password = check
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        if !same_password {
            // Another password: the backup password changes, which takes a new keybag
            // (fresh class keys, so the old password opens nothing new). The work done
            // under the kept keybag is dropped with its staging folder and redone.
            drop(writer);
            drop(previous);
            let mut again = backup_inner(device, out, opts, use_device_setting, true)?;
            again.kdf_runs += report.kdf_runs;
            return Ok(again);
        }
    }

    // Keychain.
    let items = export_keychain(device, &mut report)?;
    writer.add_keychain(items)?;
    drop(previous);
    // A new keybag (first password, or a changed one) is kept by the device from now on.
    let to_keep = match &plan {
        Plan::Fresh { .. } => writer.kept_keybag()?.map(|k| KeptKeybag {
            keybag: k.keybag,
            passkey: k.passkey,
        }),
        _ => None,
    };
    if to_keep.is_some() {
        report.kdf_runs += 1;
    }
    let written = writer.finish()?;

    if !in_place && written != out {
        // Swap: one atomic exchange where available (else two renames, the old backup set
        // aside as `.OUT.keybag-old-…`, which the next run puts back if they were cut in
        // two), then the old backup is removed.
        mobilebackup::staging::replace_dir(&written, out, "old")?;
    }
    if let Some(kept) = &to_keep {
        store_kept(device, kept)?;
        report.backup_password_set = true;
    }
    let keybag = match (&plan, &to_keep) {
        (_, Some(k)) | (Plan::Kept(k) | Plan::Check(k, _), None) => k.keybag.uuid_string(),
        _ => None,
    };
    store_last_backup(device, &last_backup(device, out, keybag)?)?;
    Ok(report)
}

/// The keychain items a backup exports (format §8.6), with the report's lines for them and
/// for those it leaves out.
fn export_keychain(device: &Device, report: &mut BackupReport) -> OpResult<Vec<NewKeychainItem>> {
    let mut items = Vec::new();
    let open = device.keychain_items()?;
    let open_rows: std::collections::HashSet<(String, u64)> =
        open.iter().map(|i| (i.table.clone(), i.rowid)).collect();
    for it in open {
        let what = describe_item(&it.table, it.rowid, &it.attributes);
        if let Some(reason) = never_exported(it.class, &it.attributes) {
            report.skipped.push(Skip {
                kind: "keychain".into(),
                what,
                class: Some(class_name(it.class)),
                reason,
            });
            continue;
        }
        report
            .keychain
            .push((it.table.clone(), class_name(it.class), what));
        let mut n = NewKeychainItem::new(&it.table, it.class);
        n.attributes = it.attributes;
        n.rowid = Some(it.rowid);
        items.push(n);
    }
    for (rowid, table, class, _) in device.keychain_all()? {
        if open_rows.contains(&(table.clone(), rowid)) {
            continue;
        }
        let reason = if class == ProtectionClass::KC_PASSCODE_SET_TDO {
            "akpu (WhenPasscodeSetThisDeviceOnly) items never leave the device".to_string()
        } else {
            format!(
                "class {} ({}) is not readable while the device is {:?}",
                class_name(class),
                class.name(),
                device.state()
            )
        };
        report.skipped.push(Skip {
            kind: "keychain".into(),
            what: format!("{table} #{rowid}"),
            class: Some(class_name(class)),
            reason,
        });
    }
    Ok(items)
}

/// What a backup does with one device entry.
enum Decision {
    /// Left out, with the reason.
    Skip(Skip),
    /// Backed up (a directory, a symlink, or a file the device can read now).
    Take,
}

/// Exclusions (format §10.1), "exclude from backup" flags (also on a parent folder) and
/// the lock state, for one entry.
fn decide(device: &Device, e: &crate::Entry, flagged_dirs: &[(String, String)]) -> Decision {
    let kind_name = match e.kind {
        EntryKind::File => "file",
        EntryKind::Directory => "dir",
        EntryKind::Symlink { .. } => "symlink",
    };
    let skip = |reason: String| {
        Decision::Skip(Skip {
            kind: kind_name.into(),
            what: format!("{}/{}", e.domain, e.path),
            class: matches!(e.kind, EntryKind::File).then(|| class_name(e.class)),
            reason,
        })
    };
    if let Some(s) = left_out_skip(e, flagged_dirs) {
        return Decision::Skip(s);
    }
    if matches!(e.kind, EntryKind::File) && !device.class_key_available(e.class) {
        return skip(format!(
            "class {} ({}) is not readable while the device is {:?}",
            class_name(e.class),
            e.class.name(),
            device.state()
        ));
    }
    Decision::Take
}

/// Why an entry is left out of every backup by rule or flag (format §10.1), if it is.
pub(crate) fn left_out_skip(e: &crate::Entry, flagged_dirs: &[(String, String)]) -> Option<Skip> {
    let skip = |reason: String| {
        Some(Skip {
            kind: match e.kind {
                EntryKind::File => "file",
                EntryKind::Directory => "dir",
                EntryKind::Symlink { .. } => "symlink",
            }
            .into(),
            what: format!("{}/{}", e.domain, e.path),
            class: matches!(e.kind, EntryKind::File).then(|| class_name(e.class)),
            reason,
        })
    };
    if let Some(r) = excluded_by_rule(&e.path) {
        return skip(r.into());
    }
    if e.exclude_from_backup {
        return skip("flagged exclude-from-backup".into());
    }
    // No allocation per pair: a device has thousands of entries and every app two flagged
    // folders (Library/Caches, tmp).
    let in_flagged = flagged_dirs.iter().any(|(d, p)| {
        *d == e.domain
            && (p.is_empty()
                || (e.path.len() > p.len()
                    && e.path.starts_with(p.as_str())
                    && e.path.as_bytes()[p.len()] == b'/'))
    });
    if in_flagged {
        return skip("inside a folder flagged exclude-from-backup".into());
    }
    None
}

/// Folders flagged "exclude from backup", as (domain, path).
fn flagged_dirs(
    entries: &[(crate::Entry, Option<crate::store::FileRef>)],
) -> Vec<(String, String)> {
    entries
        .iter()
        .filter(|(e, _)| e.exclude_from_backup && matches!(e.kind, EntryKind::Directory))
        .map(|(e, _)| (e.domain.clone(), e.path.clone()))
        .collect()
}

/// An unchanged file's blob from the previous backup, linked with its key kept (same
/// keybag) or re-wrapped. `Ok(false)` when it cannot be reused (the caller copies instead).
fn reuse_blob(
    writer: &BackupWriter,
    prev: &Previous,
    old: &mobilebackup::Record,
    e: &crate::Entry,
    in_place: bool,
) -> OpResult<bool> {
    let mut meta = NewRecord::file(&e.domain, &e.path, Content::Bytes(Vec::new()));
    fill_meta(&mut meta, e);
    meta.kind = Kind::File {
        content: Content::Bytes(Vec::new()),
        protection_class: e.class.0,
    };
    let Some(f) = old.file.as_ref() else {
        return Ok(false);
    };
    if in_place {
        // Same keys: the blob stays where it is and keeps its wrapped key.
        return Ok(writer.keep_blob(meta, old).is_ok());
    }
    let digest = f.digest.clone();
    let blob = prev.backup.blob_path(old)?;
    if prev.same_keybag {
        // Same keybag: the wrapped key is kept as it is.
        let Some(w) = f.encryption_key.as_ref() else {
            return Ok(false);
        };
        return Ok(writer
            .add_existing_blob_wrapped(meta, &blob, w, e.size, digest)
            .is_ok());
    }
    let key = match (f.encryption_key.as_ref(), prev.backup.keys()) {
        (Some(k), Some(keys)) => keys.unwrap_persistent(k).ok(),
        _ => None,
    };
    if key.is_some() != prev.backup.is_encrypted() {
        return Ok(false);
    }
    Ok(writer
        .add_existing_blob(meta, &blob, key.as_ref(), e.size, digest)
        .is_ok())
}

/// Streams one device file into the backup: its key is unwrapped here and its blob
/// decrypted inside the writer (same CBC+PKCS7 format as backup blobs), next to the
/// re-encryption, without holding the file in memory.
fn copy_file(
    writer: &BackupWriter,
    device: &Device,
    e: crate::Entry,
    fref: &crate::store::FileRef,
) -> OpResult<()> {
    let (domain, path, size) = (e.domain.clone(), e.path.clone(), e.size);
    let mut rec = NewRecord::file(&domain, &path, Content::Bytes(Vec::new()));
    fill_meta(&mut rec, &e);
    let class = e.class.0;
    let of = device.open_ref(e, fref)?;
    let reader = BlobReader::encrypted(of.blob_path(), of.file_key())?;
    if !reader.padding_ok() || reader.len() != size {
        return Err(OpError::Refused(format!(
            "{}: damaged file on the device ({domain}/{path}): {}",
            of.blob_path().display(),
            if reader.padding_ok() {
                format!("{} bytes, index says {size}", reader.len())
            } else {
                "bad padding".to_string()
            }
        )));
    }
    rec.kind = Kind::File {
        content: Content::Reader(Box::new(reader)),
        protection_class: class,
    };
    writer.add(rec)?;
    Ok(())
}

fn fill_meta(rec: &mut NewRecord, e: &crate::Entry) {
    rec.mode = e.mode & 0o7777;
    rec.uid = e.uid;
    rec.gid = e.gid;
    rec.mtime = e.mtime;
    rec.ctime = e.ctime;
    rec.birth = e.birth;
}
