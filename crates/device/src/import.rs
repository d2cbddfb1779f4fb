//! `device import`: a real iOS backup turned into a new virtual device, so a real phone's data
//! can be played with (locked, unlocked, backed up again, restored elsewhere).
//!
//! The new device has its own fresh UID: files are written under its class keys with the
//! classes the backup recorded, and every keychain item that opens is added with its class.
//! ThisDeviceOnly items (classes 9–11) open only with the original phone's key 0x835
//! ([`ImportOptions::device_key`]); without it they stay sealed and are listed, not imported.
//! The device folder is built beside `dir` and renamed into place only when complete.

use std::path::Path;

use dataprotection::{DeviceKey, KdfLimits};
use mobilebackup::keychain::{self, ItemState};
use mobilebackup::{Backup, Credentials, RecordKind};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::backup::{class_name, describe_item, io_err, OpError, OpResult, Skip};
use crate::restore::{backup_item, backup_secret, is_damage, sibling, source_damage};
use crate::shape::{Fit, Shape};
use crate::{Device, InitOptions, LockState};

/// How to import.
#[derive(Default)]
pub struct ImportOptions {
    /// The backup password (encrypted backups).
    pub password: Option<Zeroizing<Vec<u8>>>,
    /// Or the key it derives to (skips the KDF; used when given).
    pub passkey: Option<dataprotection::Passkey>,
    /// The original phone's key 0x835, to open ThisDeviceOnly keychain items.
    pub device_key: Option<DeviceKey>,
    /// Caps on the KDF counts read from the backup's keybag.
    pub limits: KdfLimits,
    /// The new device's passcode (none by default).
    pub passcode: Option<Zeroizing<Vec<u8>>>,
    /// Passcode KDF iterations of the new device (`None` calibrates).
    pub passcode_iterations: Option<u32>,
    /// Import a file without a `Digest` whose length differs from its record's `Size`
    /// (by default it is skipped as damaged).
    pub accept_size_mismatch: bool,
}

/// What an import did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    /// Device name taken from the backup.
    pub name: String,
    /// Regular files imported.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Directories.
    pub directories: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Keychain items imported: `(table, class, description)`.
    pub keychain: Vec<(String, String, String)>,
    /// Records and items not imported, with the reason (damaged files, sealed items).
    pub skipped: Vec<Skip>,
    /// Keychain items not imported because they are damaged (not sealed by design).
    pub damaged_items: u64,
}

/// Creates the device folder `dir` (which must not exist) from the backup at `backup_dir`.
pub fn import(dir: &Path, backup_dir: &Path, opts: &ImportOptions) -> OpResult<ImportReport> {
    crate::staging::clean(dir)?; // what a killed import left beside it
    if std::fs::symlink_metadata(dir).is_ok() {
        return Err(OpError::Refused(format!(
            "{}: already exists; import creates a new device folder",
            dir.display()
        )));
    }
    let mut backup = Backup::open(backup_dir)?;
    if backup.is_encrypted() {
        let secret =
            backup_secret(opts.passkey.as_ref(), opts.password.as_ref()).ok_or_else(|| {
                OpError::Refused(format!(
                    "{}: the backup is encrypted and no password was given",
                    backup_dir.display()
                ))
            })?;
        backup.unlock(&Credentials {
            secret,
            device_key: opts.device_key.clone(),
            limits: opts.limits,
        })?;
    }
    let catalog = backup.catalog()?;
    // A keychain export that cannot be read is one damaged record: the files still come over.
    let mut keychain_damage = None;
    let kc = if backup.is_encrypted() {
        keychain::read_from_catalog(&backup, &catalog).unwrap_or_else(|e| {
            keychain_damage = Some(Skip {
                kind: "file".into(),
                what: format!("{}/{}", keychain::DOMAIN, keychain::RELATIVE_PATH),
                class: None,
                reason: format!("the keychain export cannot be read: {e}"),
            });
            None
        })
    } else {
        None
    };
    let info = backup.device();

    let staging = sibling(dir, "keybag-import");
    let cleanup = |e: OpError| {
        let _ = std::fs::remove_dir_all(&staging);
        e
    };
    let mut dev = Device::init(
        &staging,
        InitOptions {
            name: info
                .device_name
                .clone()
                .unwrap_or_else(|| "imported iPhone".into()),
            passcode: opts.passcode.clone(),
            model: info.product_type.clone(),
            ios_version: info.product_version.clone(),
            passcode_iterations: opts.passcode_iterations,
            wipe_after_10: false,
        },
    )
    .map_err(|e| cleanup(e.into()))?;
    let mut run = || -> OpResult<ImportReport> {
        let dev = &mut dev;
        if let (Some(p), true) = (&opts.passcode, dev.state() != LockState::Unlocked) {
            dev.unlock(p)?;
        }
        let mut report = ImportReport {
            name: dev.name().to_string(),
            ..ImportReport::default()
        };
        report.skipped.extend(keychain_damage.take());
        for why in &catalog.skipped {
            report.skipped.push(Skip {
                kind: "row".into(),
                what: "Manifest.db".into(),
                class: None,
                reason: why.clone(),
            });
        }
        let apps: std::collections::BTreeSet<&str> = catalog
            .records
            .iter()
            .filter_map(|r| r.domain.strip_prefix("AppDomain-"))
            .collect();
        for app in apps {
            dev.install_app(app)?;
        }
        // The device's own folders (app containers) and every record taken so far: a record
        // that does not fit (under a file, a path given twice) is skipped, not fatal.
        let mut shape = Shape::new();
        for e in dev.entries(None)? {
            shape.existing(&e.domain, &e.path, &e.kind);
        }
        // Regular files, written in one batch after the folders and symlinks.
        let mut files = Vec::new();
        let mut file_records = Vec::new();
        for rec in &catalog.records {
            let what = rec.display_path();
            let skip = |reason: String| Skip {
                kind: rec.kind().name(),
                what: what.clone(),
                class: None,
                reason,
            };
            if let Some(p) = &rec.problem {
                report.skipped.push(skip(p.clone()));
                continue;
            }
            if rec.domain == keychain::DOMAIN && rec.relative_path == keychain::RELATIVE_PATH {
                continue;
            }
            if !rec.relative_path.is_empty() {
                if let Err(e) = crate::store::check(&rec.domain, &rec.relative_path) {
                    report.skipped.push(skip(e.to_string()));
                    continue;
                }
            }
            let fit = match shape.take(&rec.domain, &rec.relative_path, rec.kind()) {
                Ok(fit) => fit,
                Err(reason) => {
                    report.skipped.push(skip(reason));
                    continue;
                }
            };
            let f = rec.file.as_ref().expect("decoded");
            // Device-side refusals of one record (a path it will not hold) skip that record.
            let refused = |e: crate::Error| match e {
                crate::Error::WrongKind { .. } | crate::Error::BadPath { .. } => Ok(e.to_string()),
                e => Err(OpError::from(e)),
            };
            match rec.kind() {
                RecordKind::Directory => {
                    if rec.relative_path.is_empty() || fit == Fit::ExistingFolder {
                        continue;
                    }
                    match dev.mkdir(&rec.domain, &rec.relative_path, f.mode & 0o7777) {
                        Ok(()) => report.directories += 1,
                        Err(e) => report.skipped.push(skip(refused(e)?)),
                    }
                }
                RecordKind::Symlink => match &f.target {
                    Some(t) => match dev.symlink(&rec.domain, &rec.relative_path, t) {
                        Ok(()) => report.symlinks += 1,
                        Err(e) => report.skipped.push(skip(refused(e)?)),
                    },
                    None => report.skipped.push(skip("symlink without a target".into())),
                },
                // Opened (size, padding and Digest checked) by the batch worker that writes
                // it; a damaged one is skipped there.
                RecordKind::File => {
                    files.push(backup_item(&backup, rec, opts.accept_size_mismatch, |e| e)?);
                    file_records.push(rec);
                }
                RecordKind::Other(_) => unreachable!("refused by Shape::take"),
            }
        }
        let results = dev.put_many_skipping(files, &is_damage)?;
        for (rec, r) in file_records.into_iter().zip(results) {
            match r {
                Ok(size) => {
                    report.files += 1;
                    report.bytes += size;
                }
                Err(e) => report.skipped.push(Skip {
                    kind: rec.kind().name(),
                    what: rec.display_path(),
                    class: None,
                    reason: source_damage(e).to_string(),
                }),
            }
        }
        if let Some(kc) = &kc {
            for it in &kc.items {
                let rowid = it.rowid.unwrap_or(0);
                match (&it.state, it.class) {
                    (ItemState::Open, Some(class)) if (6..=12).contains(&class.0) => {
                        dev.keychain_add(&it.table, class, it.attributes.clone())?;
                        report.keychain.push((
                            it.table.clone(),
                            class_name(class),
                            describe_item(&it.table, rowid, &it.attributes),
                        ));
                    }
                    (state, class) => {
                        let tdo = class.is_some_and(|c| c.is_this_device_only());
                        let reason = match state {
                            ItemState::Sealed { .. } if tdo => {
                                "ThisDeviceOnly: sealed to the original phone (give its key 0x835 to open it)".to_string()
                            }
                            ItemState::Damaged { reason }
                                if tdo && reason.starts_with(keychain::item::UNWRAP_FAILED) =>
                            {
                                "ThisDeviceOnly: the device key given is not the original phone's"
                                    .into()
                            }
                            s => s.reason().unwrap_or("not importable").to_string(),
                        };
                        if crate::restore::item_damaged(true, class, state) {
                            report.damaged_items += 1;
                        }
                        report.skipped.push(Skip {
                            kind: "keychain".into(),
                            what: format!("{} #{rowid}", it.table),
                            class: class.map(class_name),
                            reason,
                        });
                    }
                }
            }
        } else if !backup.is_encrypted() {
            report.skipped.push(Skip {
                kind: "keychain".into(),
                what: "KeychainDomain/keychain-backup.plist".into(),
                class: None,
                reason: "unencrypted backup: its keychain is sealed to the original phone".into(),
            });
        }
        Ok(report)
    };
    let report = run().map_err(cleanup)?;
    drop(dev);
    std::fs::rename(&staging, dir)
        .map_err(io_err(dir))
        .map_err(cleanup)?;
    Ok(report)
}
