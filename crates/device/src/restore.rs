//! `device restore`: a local backup onto a virtual device, per the outcome matrix of design §4.3.
//!
//! * Files (every class) are decrypted with the backup's keys and written anew, which re-keys
//!   them under the target's class keys. The target must be unlocked.
//! * Keychain items are imported when they open on the target: the backup is unlocked with the
//!   password *and the target's* key 0x835. Migratory items (ak/ck/dk) of encrypted backups
//!   open anywhere; ThisDeviceOnly items (aku/cku/dku) open only on the device that made the
//!   backup (on another device the 0x835 layer yields a wrong class key and the item key fails
//!   its RFC 3394 check). Unencrypted backups' keychains open only on the same device (its
//!   keybag's password layer is re-derived from the device's UID, see
//!   [`crate::backup::unencrypted_backup_passkey`]). akpu items are never in a backup. Nothing
//!   compares device names or UDIDs: what restores is decided by the keys alone.
//! * Nothing is half-restored: the target folder is copied to a staging folder beside it, the
//!   restore runs there, and only a complete restore is swapped in. A wrong password, a damaged
//!   blob or keychain, or any other error leaves the target untouched.
//! * Folders, symlinks and removals are done record by record; then every regular file is
//!   written in one [`Device::put_many`] batch (parallel encryption, one index transaction).
//! * Files already on the target and not in the backup are kept; items already on the target
//!   (same table, class and attributes) are not added twice.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use dataprotection::{KdfLimits, ProtectionClass};
use mobilebackup::blob::BlobReader;
use mobilebackup::keychain::{self, item, DerValue, ItemState, Keychain};
use mobilebackup::{Backup, Credentials, Record, RecordKind, Secret};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::backup::{
    class_name, describe_item, io_err, unencrypted_backup_passkey, OpError, OpResult, Skip,
};
use crate::shape::Shape;
use crate::{Device, EntryKind, LockState, PutItem, PutOptions};

/// How to restore.
#[derive(Default)]
pub struct RestoreOptions {
    /// The backup password (encrypted backups).
    pub password: Option<Zeroizing<Vec<u8>>>,
    /// Or the key it derives to (skips the KDF; used when given).
    pub passkey: Option<dataprotection::Passkey>,
    /// Caps on the KDF counts read from the backup's keybag.
    pub limits: KdfLimits,
    /// Restore a file without a `Digest` whose length differs from its record's `Size`
    /// (by default it is damage: see [`open_checked`]).
    pub accept_size_mismatch: bool,
}

/// What a restore did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    /// Whether the backup was encrypted.
    pub backup_encrypted: bool,
    /// Regular files restored (re-keyed under the target's class keys).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Directories.
    pub directories: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Keychain items restored: `(table, class, description)`.
    pub keychain_restored: Vec<(String, String, String)>,
    /// Keychain items that were already on the target (counted as restored, not added twice).
    pub keychain_present: Vec<(String, String, String)>,
    /// Keychain items that cannot be restored here, with the reason.
    pub lost: Vec<Skip>,
    /// How many of them are lost because they are damaged (not sealed by design).
    pub damaged_items: u64,
    /// Records not restored on purpose (the keychain file itself, foreign record kinds).
    pub skipped: Vec<Skip>,
}

/// What an item's attributes are compared by to spot one already on the device.
fn identity(table: &str, class: ProtectionClass, a: &BTreeMap<String, DerValue>) -> Vec<u8> {
    let mut m = a.clone();
    for volatile in ["persistref", "rowid", "pdmn", "cdat", "mdat"] {
        m.remove(volatile);
    }
    let mut out = table.as_bytes().to_vec();
    out.extend_from_slice(&class.0.to_le_bytes());
    out.extend(mobilebackup::keychain::der::encode(&DerValue::Dict(m)));
    out
}

/// The backup's keychain as the target device sees it (`None`: no keychain in the backup).
pub(crate) fn read_keychain(backup: &Backup, target: &Device) -> OpResult<Option<Keychain>> {
    let cat = backup.catalog()?;
    if backup.is_encrypted() {
        return Ok(keychain::read_from_catalog(backup, &cat)?);
    }
    let Some(rec) = cat
        .records
        .iter()
        .find(|r| r.domain == keychain::DOMAIN && r.relative_path == keychain::RELATIVE_PATH)
    else {
        return Ok(None);
    };
    let mut bytes = Zeroizing::new(Vec::new());
    let mut r = backup.open_file(rec)?;
    if r.len() > keychain::MAX_PLIST_BYTES {
        return Err(OpError::Damaged(format!(
            "{}: keychain-backup.plist is over the size cap",
            backup.root().display()
        )));
    }
    r.read_to_end(&mut bytes)
        .map_err(io_err(&backup.blob_path(rec)?))?;
    let kb = backup.keybag();
    let uuid = kb.and_then(|k| k.uuid_string());
    let dk = target.device_key();
    let keys = kb.and_then(|k| k.unlock(&unencrypted_backup_passkey(&dk), Some(&dk)).ok());
    keychain::parse(&bytes, keys.as_ref(), uuid.as_deref())
        .map(Some)
        .map_err(|e| OpError::Damaged(format!("{}: {e}", backup.root().display())))
}

/// Why an item that did not open is lost.
fn lost_reason(encrypted: bool, class: Option<ProtectionClass>, state: &ItemState) -> String {
    let tdo = class.is_some_and(|c| c.is_this_device_only());
    match state {
        ItemState::Sealed { .. } if !encrypted => {
            "unencrypted backup made by another device: its keychain is sealed to that device"
                .into()
        }
        ItemState::Sealed { reason } => format!("sealed: {reason}"),
        ItemState::Damaged { reason } if tdo && reason.starts_with(item::UNWRAP_FAILED) => {
            "ThisDeviceOnly item from another device: its class key needs that device's key 0x835"
                .into()
        }
        ItemState::Damaged { reason } if !encrypted && reason.starts_with(item::UNWRAP_FAILED) => {
            "unencrypted backup made by another device: its keychain is sealed to that device"
                .into()
        }
        ItemState::Damaged { reason } => format!("damaged: {reason}"),
        ItemState::Open => "not restored".into(),
    }
}

/// True for an item lost to damage, not to where it is restored (sealed to another device,
/// from an unencrypted backup of another device): [`lost_reason`]'s "damaged" case.
pub(crate) fn item_damaged(
    encrypted: bool,
    class: Option<ProtectionClass>,
    state: &ItemState,
) -> bool {
    let tdo = class.is_some_and(|c| c.is_this_device_only());
    matches!(state, ItemState::Damaged { reason }
        if !((tdo || !encrypted) && reason.starts_with(item::UNWRAP_FAILED)))
}

/// Copies a folder tree (files, folders, symlinks; permissions kept). A copy of a device folder
/// is the same hardware (same UID): the demo uses one as "the same phone, erased".
pub fn copy_tree(from: &Path, to: &Path) -> OpResult<()> {
    fs::create_dir(to).map_err(io_err(to))?;
    let perms = fs::metadata(from).map_err(io_err(from))?.permissions();
    for entry in fs::read_dir(from).map_err(io_err(from))? {
        let entry = entry.map_err(io_err(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ft = entry.file_type().map_err(io_err(&src))?;
        if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            let t = fs::read_link(&src).map_err(io_err(&src))?;
            #[cfg(unix)]
            std::os::unix::fs::symlink(&t, &dst).map_err(io_err(&dst))?;
            #[cfg(not(unix))]
            let _ = t;
        } else {
            fs::copy(&src, &dst).map_err(io_err(&src))?;
        }
    }
    fs::set_permissions(to, perms).map_err(io_err(to))?;
    Ok(())
}

/// A sibling path of `dir` named `.<name>.<tag>-<pid>-<n>` that does not exist.
pub(crate) fn sibling(dir: &Path, tag: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "device".into());
    let mut n = 0u32;
    loop {
        let p = dir.with_file_name(format!(".{name}.{tag}-{}-{n}", std::process::id()));
        if fs::symlink_metadata(&p).is_err() {
            return p;
        }
        n += 1;
    }
}

/// Removes a folder on drop unless disarmed.
struct Cleanup(Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

/// Restores the backup at `backup_dir` onto the device at `dir` (see the module docs).
pub fn restore(dir: &Path, backup_dir: &Path, opts: &RestoreOptions) -> OpResult<RestoreReport> {
    let target = Device::open(dir)?;
    if target.state() != LockState::Unlocked {
        return Err(OpError::Refused(format!(
            "{}: the device is {:?}; unlock it first (a restore writes files of every class)",
            dir.display(),
            target.state()
        )));
    }
    let mut backup = Backup::open(backup_dir)?;
    let encrypted = backup.is_encrypted();
    if encrypted {
        let secret =
            backup_secret(opts.passkey.as_ref(), opts.password.as_ref()).ok_or_else(|| {
                OpError::Refused(format!(
                    "{}: the backup is encrypted and no password was given",
                    backup_dir.display()
                ))
            })?;
        backup.unlock(&Credentials {
            secret,
            device_key: Some(target.device_key()),
            limits: opts.limits,
        })?;
    }
    let catalog = backup.catalog()?;
    if let Some(s) = catalog.skipped.first() {
        return Err(OpError::Damaged(format!(
            "{}: Manifest.db: {s}",
            backup_dir.display()
        )));
    }
    // A keychain export that cannot be read is a damaged backup, like a damaged blob.
    let kc = read_keychain(&backup, &target).map_err(|e| match e {
        OpError::Backup(e) => OpError::Damaged(format!("keychain: {e}")),
        e => e,
    })?;
    drop(target);

    // Stage: a copy of the target, restored into, then swapped in.
    let staging = sibling(dir, "keybag-restore");
    let cleanup = Cleanup(Some(staging.clone()));
    copy_tree(dir, &staging)?;
    let mut dev = Device::open(&staging)?;
    let mut report = RestoreReport {
        backup_encrypted: encrypted,
        ..RestoreReport::default()
    };

    let existing: BTreeMap<(String, String), EntryKind> = dev
        .entries(None)?
        .into_iter()
        .map(|e| ((e.domain, e.path), e.kind))
        .collect();
    // Regular files are written together once the loop has made the folders (and removed
    // what files replace): in parallel, and indexed in one transaction.
    let mut files = Vec::new();
    // The backup's own tree: a record under one of its files, or a path given twice, is a
    // damaged backup (checked before the device is touched).
    let mut shape = Shape::new();
    for rec in &catalog.records {
        let what = rec.display_path();
        if let Some(p) = &rec.problem {
            return Err(OpError::Damaged(format!(
                "{}: {what}: {p}",
                backup_dir.display()
            )));
        }
        let f = rec.file.as_ref().expect("no problem means decoded");
        if rec.domain == keychain::DOMAIN && rec.relative_path == keychain::RELATIVE_PATH {
            continue;
        }
        if let RecordKind::Other(flags) = rec.kind() {
            report.skipped.push(Skip {
                kind: format!("flags={flags}"),
                what,
                class: None,
                reason: "not a file, folder or symlink".into(),
            });
            continue;
        }
        if let Err(reason) = shape.take(&rec.domain, &rec.relative_path, rec.kind()) {
            return Err(OpError::Damaged(format!(
                "{}: {what}: {reason}",
                backup_dir.display()
            )));
        }
        let key = (rec.domain.clone(), rec.relative_path.clone());
        let present = existing.get(&key);
        match rec.kind() {
            RecordKind::Directory => {
                if rec.relative_path.is_empty() || matches!(present, Some(EntryKind::Directory)) {
                    continue;
                }
                if present.is_some() {
                    dev.remove(&rec.domain, &rec.relative_path)?;
                }
                dev.mkdir(&rec.domain, &rec.relative_path, f.mode & 0o7777)?;
                report.directories += 1;
            }
            RecordKind::Symlink => {
                let Some(t) = &f.target else {
                    return Err(OpError::Damaged(format!(
                        "{}: {what}: symlink without a target",
                        backup_dir.display()
                    )));
                };
                if present.is_some() {
                    dev.remove(&rec.domain, &rec.relative_path)?;
                }
                dev.symlink(&rec.domain, &rec.relative_path, t)?;
                report.symlinks += 1;
            }
            RecordKind::File => {
                // Before the batch: the file takes this path's place.
                if matches!(
                    present,
                    Some(EntryKind::Directory | EntryKind::Symlink { .. })
                ) {
                    dev.remove(&rec.domain, &rec.relative_path)?;
                }
                files.push(backup_item(
                    &backup,
                    rec,
                    opts.accept_size_mismatch,
                    move |e| match e {
                        OpError::Backup(mobilebackup::Error::DamagedBlob { path, reason }) => {
                            OpError::Damaged(format!("{}: {what}: {reason}", path.display()))
                        }
                        e => e,
                    },
                )?);
            }
            RecordKind::Other(_) => unreachable!("skipped above"),
        }
    }
    let sizes = dev.put_many(files).map_err(source_damage)?;
    report.files += sizes.len() as u64;
    report.bytes += sizes.iter().sum::<u64>();

    if let Some(kc) = kc {
        let mut have: std::collections::HashSet<Vec<u8>> = dev
            .keychain_items()?
            .iter()
            .map(|i| identity(&i.table, i.class, &i.attributes))
            .collect();
        for it in kc.items {
            let rowid = it.rowid.unwrap_or(0);
            let class = it.class;
            match (&it.state, class) {
                (ItemState::Open, Some(class)) if class.0 != 12 => {
                    let what = describe_item(&it.table, rowid, &it.attributes);
                    let line = (it.table.clone(), class_name(class), what);
                    if !have.insert(identity(&it.table, class, &it.attributes)) {
                        report.keychain_present.push(line);
                        continue;
                    }
                    dev.keychain_add(&it.table, class, it.attributes.clone())?;
                    report.keychain_restored.push(line);
                }
                (state, _) => {
                    let reason = match (state, class) {
                        (ItemState::Open, _) => {
                            "akpu items are never restored from a backup".into()
                        }
                        _ => lost_reason(encrypted, class, state),
                    };
                    if item_damaged(encrypted, class, state) {
                        report.damaged_items += 1;
                    }
                    report.lost.push(Skip {
                        kind: "keychain".into(),
                        what: format!("{} #{rowid}", it.table),
                        class: class.map(class_name),
                        reason,
                    });
                }
            }
        }
    }
    drop(dev);

    // Switch: one atomic exchange where available, then the old device is removed.
    crate::staging::switch(&staging, dir)?;
    drop(cleanup);
    Ok(report)
}

/// Opens a regular file of `backup` for a restore or an import, checked as a device checks
/// what it restores: the padding must be valid (before anything of the file is written); the
/// stored bytes must match the record's `Digest` where it has one (checked as they stream:
/// the reader's final read fails otherwise, see [`source_damage`]); without a `Digest`, the
/// length must equal the record's `Size`. (Real backups get `Size` wrong for files that
/// changed while they were copied, spec §7.2, but those carry no proof of their bytes either;
/// where a matching `Digest` proves them, `Size` is not held against them.)
pub(crate) fn open_checked(
    backup: &Backup,
    rec: &Record,
    accept_size_mismatch: bool,
) -> OpResult<BlobReader> {
    let reader = backup.open_file(rec)?;
    if !reader.padding_ok() {
        return Err(OpError::Backup(mobilebackup::Error::DamagedBlob {
            path: backup.blob_path(rec)?,
            reason: "bad padding (damaged blob or wrong key)".into(),
        }));
    }
    match rec.file.as_ref().and_then(|f| f.digest.as_deref()) {
        Some(d) if d.len() == 20 => Ok(reader.check_digest(d, true)),
        _ if reader.len() != rec.size() && !accept_size_mismatch => {
            Err(OpError::Backup(mobilebackup::Error::DamagedBlob {
                path: backup.blob_path(rec)?,
                reason: format!(
                    "holds {} bytes of content but the record's Size is {} (cut short or \
                     changed?  A real phone's database that changed while it was copied can \
                     do this too: --accept-size-mismatch takes it as it is)",
                    reader.len(),
                    rec.size()
                ),
            }))
        }
        _ => Ok(reader),
    }
}

/// What unlocks an encrypted backup: the derived key when given, else the password.
pub(crate) fn backup_secret(
    passkey: Option<&dataprotection::Passkey>,
    password: Option<&Zeroizing<Vec<u8>>>,
) -> Option<Secret> {
    match (passkey, password) {
        (Some(pk), _) => Some(Secret::Passkey(pk.clone())),
        (None, Some(pw)) => Some(Secret::Password(pw.clone())),
        (None, None) => None,
    }
}

/// A failure of a file's content while a batch read it (see [`open_checked`]): a `Digest`
/// mismatch becomes [`OpError::Damaged`] naming the blob; anything else is returned as is.
pub(crate) fn source_damage(e: OpError) -> OpError {
    if let OpError::Device(crate::Error::Source { what, source }) = &e {
        if let Some(m) = mobilebackup::blob::digest_mismatch_in(source) {
            return OpError::Damaged(format!("{what}: {m}"));
        }
    }
    e
}

/// True for what makes one file of a backup unusable, not the whole operation: a blob that
/// is missing, not a regular file, badly padded, of the wrong length or content, or that
/// fails while it is read. (A device that fails is not one of them.)
pub(crate) fn is_damage(e: &OpError) -> bool {
    matches!(
        e,
        OpError::Backup(_) | OpError::Damaged(_) | OpError::Device(crate::Error::Source { .. })
    )
}

/// One regular file of `backup` as a [`Device::put_many`] item, under its recorded class
/// (class C when the record has none usable), mode, owner and mtime. The worker that writes
/// it opens it with [`open_checked`]; `map_err` turns that failure into the caller's error.
pub(crate) fn backup_item<'a>(
    backup: &'a Backup,
    rec: &'a Record,
    accept_size_mismatch: bool,
    map_err: impl FnOnce(OpError) -> OpError + Send + 'a,
) -> OpResult<PutItem<'a, OpError>> {
    let f = rec
        .file
        .as_ref()
        .ok_or_else(|| OpError::Damaged(format!("{}: undecodable record", rec.display_path())))?;
    let class = ProtectionClass(f.protection_class);
    let class = if class.is_file_class() {
        class
    } else {
        ProtectionClass::UNTIL_FIRST_AUTH
    };
    let put = PutOptions {
        class,
        mode: f.mode & 0o7777,
        uid: f.uid,
        gid: f.gid,
        mtime: Some(f.mtime),
        exclude_from_backup: false,
    };
    Ok(PutItem::new(
        rec.domain.clone(),
        rec.relative_path.clone(),
        put,
        move || open_checked(backup, rec, accept_size_mismatch).map_err(map_err),
    ))
}
