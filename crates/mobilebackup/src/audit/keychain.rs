//! The keychain part of the audit: facts about `keychain-backup.plist`'s items,
//! never their secrets.

use std::collections::BTreeMap;

use dataprotection::ProtectionClass;
use serde::Serialize;

use super::KEYCHAIN_RECORD;
use crate::reader::{Backup, Catalog, RecordKind};

/// Whether the keychain could be read.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeychainStatus {
    /// Read: items listed (some may be sealed).
    Read,
    /// The backup has no `keychain-backup.plist`.
    Absent,
    /// Listed but not readable (blob missing, damaged, …): see `reason`.
    Unavailable,
}

/// One keychain item as the audit shows it: the keychain module's summary, whose
/// `reason` for sealed items explains the seal in this backup's terms.
pub type KeychainItem = crate::keychain::ItemSummary;

/// Items of one class.
#[derive(Clone, Debug, Serialize)]
pub struct KeychainClassCount {
    /// Class id.
    pub class: Option<u32>,
    /// `ak`, …
    pub short_name: &'static str,
    /// `kSecAttrAccessible…`.
    pub name: &'static str,
    /// Items.
    pub items: u64,
    /// Of which open.
    pub open: u64,
}

/// Items of one table.
#[derive(Clone, Debug, Serialize)]
pub struct KeychainTableCount {
    /// `genp`, …
    pub table: String,
    /// Items.
    pub items: u64,
}

/// The keychain section.
#[derive(Clone, Debug, Serialize)]
pub struct KeychainSummary {
    /// Read, absent or unavailable.
    pub status: KeychainStatus,
    /// Why it is unavailable.
    pub reason: Option<String>,
    /// `KeychainDomain/keychain-backup.plist`.
    pub record: String,
    /// The plist's `keybag-uuid`.
    pub keybag_uuid: Option<String>,
    /// True when it equals the backup keybag's UUID.
    pub keybag_uuid_matches: Option<bool>,
    /// All items.
    pub items: u64,
    /// Decrypted.
    pub open: u64,
    /// Class key unavailable (device key needed).
    pub sealed: u64,
    /// Undecryptable although the key is known.
    pub damaged: u64,
    /// Classes 9–12.
    pub this_device_only: u64,
    /// Classes 6–8.
    pub migratory: u64,
    /// Class 12 (akpu), which the iPhone never exports.
    pub akpu: u64,
    /// Items by class.
    pub by_class: Vec<KeychainClassCount>,
    /// Items by table.
    pub by_table: Vec<KeychainTableCount>,
    /// Warnings of the keychain reader.
    pub warnings: Vec<String>,
}

/// The summary and every item.
pub(super) struct Facts {
    pub summary: KeychainSummary,
    pub items: Vec<KeychainItem>,
}

/// What the keychain reader produced.
struct Loaded {
    keybag_uuid: Option<String>,
    keybag_uuid_matches: Option<bool>,
    warnings: Vec<String>,
    items: Vec<KeychainItem>,
}

/// Reads the keychain through [`crate::keychain`]. Errors become a reason.
fn load(backup: &Backup, catalog: &Catalog) -> Result<Option<Loaded>, String> {
    let kc = crate::keychain::read_from_catalog(backup, catalog).map_err(|e| e.to_string())?;
    let Some(kc) = kc else { return Ok(None) };
    let mut warnings = kc.warnings.clone();
    if !kc.unknown_keys.is_empty() {
        warnings.push(format!(
            "unknown top-level keys: {}",
            kc.unknown_keys.join(", ")
        ));
    }
    if kc.wrong_device_key() {
        warnings.push(
            "no ThisDeviceOnly item opened with the device key given: it is probably not \
             this backup's iPhone's key 0x835"
                .into(),
        );
    }
    let items = kc
        .items
        .iter()
        .map(|it| {
            let mut summary = it.summary();
            if let crate::keychain::ItemState::Sealed { reason } = &it.state {
                summary.reason = Some(sealed_reason(backup, it.class, reason));
            }
            summary
        })
        .collect();
    Ok(Some(Loaded {
        keybag_uuid: kc.keybag_uuid.clone(),
        keybag_uuid_matches: kc.keybag_uuid_matches,
        warnings,
        items,
    }))
}

/// The keychain facts of `backup`.
pub(super) fn read(backup: &Backup, catalog: &Catalog) -> Facts {
    let (domain, rel) = KEYCHAIN_RECORD;
    let record = catalog
        .records
        .iter()
        .find(|r| r.domain == domain && r.relative_path == rel && r.kind() == RecordKind::File);
    let mut summary = KeychainSummary {
        status: KeychainStatus::Absent,
        reason: None,
        record: format!("{domain}/{rel}"),
        keybag_uuid: None,
        keybag_uuid_matches: None,
        items: 0,
        open: 0,
        sealed: 0,
        damaged: 0,
        this_device_only: 0,
        migratory: 0,
        akpu: 0,
        by_class: Vec::new(),
        by_table: Vec::new(),
        warnings: Vec::new(),
    };
    let Some(record) = record else {
        summary.reason = Some(format!("Manifest.db has no {domain}/{rel}"));
        return Facts {
            summary,
            items: Vec::new(),
        };
    };
    // A missing blob is the common case (partial copies): say so plainly.
    if let Ok(p) = backup.blob_path(record) {
        if std::fs::symlink_metadata(&p).is_err() {
            summary.status = KeychainStatus::Unavailable;
            summary.reason = Some(format!(
                "{domain}/{rel} is listed in Manifest.db but its blob {} is missing",
                p.display()
            ));
            return Facts {
                summary,
                items: Vec::new(),
            };
        }
    }
    let loaded = match load(backup, catalog) {
        Ok(Some(l)) => l,
        Ok(None) => {
            summary.reason = Some(format!("no {domain}/{rel}"));
            return Facts {
                summary,
                items: Vec::new(),
            };
        }
        Err(reason) => {
            summary.status = KeychainStatus::Unavailable;
            summary.reason = Some(reason);
            return Facts {
                summary,
                items: Vec::new(),
            };
        }
    };
    let items = loaded.items;
    summary.status = KeychainStatus::Read;
    summary.keybag_uuid = loaded.keybag_uuid;
    summary.keybag_uuid_matches = loaded.keybag_uuid_matches;
    summary.warnings = loaded.warnings;
    summary.items = items.len() as u64;
    let mut by_class: BTreeMap<Option<u32>, (u64, u64)> = BTreeMap::new();
    let mut by_table: BTreeMap<String, u64> = BTreeMap::new();
    for i in &items {
        match i.state {
            "open" => summary.open += 1,
            "sealed" => summary.sealed += 1,
            _ => summary.damaged += 1,
        }
        summary.this_device_only += u64::from(i.this_device_only);
        summary.migratory += u64::from(i.migratory);
        summary.akpu += u64::from(i.class == Some(12));
        let e = by_class.entry(i.class).or_default();
        e.0 += 1;
        e.1 += u64::from(i.state == "open");
        *by_table.entry(i.table.clone()).or_default() += 1;
    }
    summary.by_class = by_class
        .into_iter()
        .map(|(class, (items, open))| {
            let c = ProtectionClass(class.unwrap_or(u32::MAX));
            KeychainClassCount {
                class,
                short_name: if class.is_some() { c.short_name() } else { "?" },
                name: if class.is_some() {
                    c.name()
                } else {
                    "unknown class"
                },
                items,
                open,
            }
        })
        .collect();
    summary.by_table = by_table
        .into_iter()
        .map(|(table, items)| KeychainTableCount { table, items })
        .collect();
    Facts { summary, items }
}

fn sealed_reason(backup: &Backup, class: Option<ProtectionClass>, own: &str) -> String {
    let tdo = class.is_some_and(|c| c.is_this_device_only());
    if !backup.is_encrypted() {
        "sealed by the original iPhone's UID key 0x835 (an unencrypted backup seals every \
         keychain item with it)"
            .into()
    } else if tdo {
        "sealed by the original iPhone's UID key 0x835: app, account and secret are inside \
         the encryption (--device-key opens it)"
            .into()
    } else {
        own.to_string()
    }
}
