//! `Manifest.plist`, `Info.plist` and `Status.plist`: parsing and building.

use std::path::Path;
use std::time::SystemTime;

use plist::{Dictionary, Value};

use crate::{Error, Result};

/// Largest top-level plist we read; real ones are kilobytes to a few megabytes
/// (`Info.plist` can carry app icons and iTunes files).
pub const MAX_PLIST_BYTES: u64 = 256 << 20;

/// Reads a plist file (XML or binary) that must be a dictionary, with a size cap.
/// It must be a regular file (not a symlink, FIFO or folder: [`crate::safe_fs`]).
pub fn read_dict(path: &Path) -> Result<Dictionary> {
    let bytes = crate::safe_fs::read_regular(path, MAX_PLIST_BYTES).map_err(|e| match e {
        Error::DamagedBlob { path, reason } => Error::Malformed { path, reason },
        e => e,
    })?;
    dict_from_bytes(path, &bytes)
}

/// [`read_dict`] of bytes already in memory: a binary plist passes [`bplist_guard`] first,
/// then the bytes (XML or binary) must parse to a dictionary. `path` only names the file in
/// errors.
///
/// [`bplist_guard`]: crate::bplist_guard
pub fn dict_from_bytes(path: &Path, bytes: &[u8]) -> Result<Dictionary> {
    crate::bplist_guard::check(bytes).map_err(|e| Error::malformed(path, e))?;
    match Value::from_reader(std::io::Cursor::new(bytes)) {
        Ok(Value::Dictionary(d)) => Ok(d),
        Ok(_) => Err(Error::malformed(path, "not a plist dictionary")),
        Err(e) => Err(Error::malformed(path, format!("not a property list: {e}"))),
    }
}

fn string(d: &Dictionary, k: &str) -> Option<String> {
    d.get(k).and_then(Value::as_string).map(str::to_owned)
}

fn date(d: &Dictionary, k: &str) -> Option<SystemTime> {
    d.get(k).and_then(Value::as_date).map(SystemTime::from)
}

/// Device identity, as `Manifest.plist`'s `Lockdown` and `Info.plist` carry it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `DeviceName`.
    pub device_name: Option<String>,
    /// `ProductType`, e.g. `iPhone14,2`.
    pub product_type: Option<String>,
    /// `ProductVersion`, e.g. `17.5.1`.
    pub product_version: Option<String>,
    /// `BuildVersion`, e.g. `21F90`.
    pub build_version: Option<String>,
    /// `SerialNumber`.
    pub serial_number: Option<String>,
    /// `UniqueDeviceID` (UDID).
    pub udid: Option<String>,
}

/// The parts of `Manifest.plist` keybag needs; the whole dictionary is kept in `raw`.
#[derive(Clone, Debug, Default)]
pub struct ManifestPlist {
    /// `BackupKeyBag` (TLV bytes).
    pub keybag: Option<Vec<u8>>,
    /// `ManifestKey`: `u32le class ‖ 40-byte wrapped key`.
    pub manifest_key: Option<Vec<u8>>,
    /// `IsEncrypted`.
    pub is_encrypted: Option<bool>,
    /// `WasPasscodeSet`.
    pub was_passcode_set: Option<bool>,
    /// `Version`.
    pub version: Option<String>,
    /// `Date`.
    pub date: Option<SystemTime>,
    /// `Lockdown`.
    pub device: DeviceInfo,
    /// Bundle ids in `Applications`.
    pub applications: Vec<String>,
    /// Everything, as read.
    pub raw: Dictionary,
}

impl ManifestPlist {
    /// Interprets a `Manifest.plist` dictionary; wrong types are errors naming the key.
    pub fn from_dict(path: &Path, d: Dictionary) -> Result<Self> {
        let data = |k: &str| -> Result<Option<Vec<u8>>> {
            match d.get(k) {
                None => Ok(None),
                Some(Value::Data(v)) => Ok(Some(v.clone())),
                Some(_) => Err(Error::malformed(path, format!("{k} is not data"))),
            }
        };
        let boolean = |k: &str| -> Result<Option<bool>> {
            match d.get(k) {
                None => Ok(None),
                Some(Value::Boolean(b)) => Ok(Some(*b)),
                Some(_) => Err(Error::malformed(path, format!("{k} is not a boolean"))),
            }
        };
        let lockdown = d.get("Lockdown").and_then(Value::as_dictionary);
        let device = lockdown
            .map(|l| DeviceInfo {
                device_name: string(l, "DeviceName"),
                product_type: string(l, "ProductType"),
                product_version: string(l, "ProductVersion"),
                build_version: string(l, "BuildVersion"),
                serial_number: string(l, "SerialNumber"),
                udid: string(l, "UniqueDeviceID"),
            })
            .unwrap_or_default();
        let applications = d
            .get("Applications")
            .and_then(Value::as_dictionary)
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default();
        Ok(Self {
            keybag: data("BackupKeyBag")?,
            manifest_key: data("ManifestKey")?,
            is_encrypted: boolean("IsEncrypted")?,
            was_passcode_set: boolean("WasPasscodeSet")?,
            version: string(&d, "Version"),
            date: date(&d, "Date"),
            device,
            applications,
            raw: d,
        })
    }
}

/// The parts of `Info.plist` shown to users.
#[derive(Clone, Debug, Default)]
pub struct InfoPlist {
    /// Device identity (`Device Name`, `Product Type`, …, `Target Identifier`).
    pub device: DeviceInfo,
    /// `Last Backup Date`.
    pub last_backup_date: Option<SystemTime>,
    /// `Installed Applications`.
    pub installed_applications: Vec<String>,
    /// Everything, as read.
    pub raw: Dictionary,
}

impl InfoPlist {
    /// Interprets an `Info.plist` dictionary (lenient: every key is optional).
    pub fn from_dict(d: Dictionary) -> Self {
        Self {
            device: DeviceInfo {
                device_name: string(&d, "Device Name").or_else(|| string(&d, "Display Name")),
                product_type: string(&d, "Product Type"),
                product_version: string(&d, "Product Version"),
                build_version: string(&d, "Build Version"),
                serial_number: string(&d, "Serial Number"),
                udid: string(&d, "Target Identifier").or_else(|| string(&d, "Unique Identifier")),
            },
            last_backup_date: date(&d, "Last Backup Date"),
            installed_applications: d
                .get("Installed Applications")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_string)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            raw: d,
        }
    }
}

/// The parts of `Status.plist` that matter.
#[derive(Clone, Debug, Default)]
pub struct StatusPlist {
    /// `SnapshotState`: `finished` when the backup completed.
    pub snapshot_state: Option<String>,
    /// `Date`.
    pub date: Option<SystemTime>,
    /// `IsFullBackup`.
    pub is_full_backup: Option<bool>,
    /// `Version`.
    pub version: Option<String>,
}

impl StatusPlist {
    /// Interprets a `Status.plist` dictionary (lenient).
    pub fn from_dict(d: &Dictionary) -> Self {
        Self {
            snapshot_state: string(d, "SnapshotState"),
            date: date(d, "Date"),
            is_full_backup: d.get("IsFullBackup").and_then(Value::as_boolean),
            version: string(d, "Version"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_plists_are_refused_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("Manifest.plist");
        // 2^41 nodes once expanded: the plist crate alone would never finish.
        std::fs::write(&p, crate::bplist_guard::tests::doubling(40)).unwrap();
        let e = read_dict(&p).unwrap_err().to_string();
        assert!(e.contains("Manifest.plist") && e.contains("expands"), "{e}");
        std::fs::write(&p, b"not a plist").unwrap();
        assert!(read_dict(&p)
            .unwrap_err()
            .to_string()
            .contains("not a property list"));
        std::fs::write(&p, b"<?xml version=\"1.0\"?><plist><array/></plist>").unwrap();
        assert!(read_dict(&p)
            .unwrap_err()
            .to_string()
            .contains("not a plist dictionary"));
    }
}
