//! The keychain of a backup: `KeychainDomain/keychain-backup.plist` (spec §8).
//!
//! * [`read`] finds the file in a backup, decrypts it like any other file and [`parse`]s it.
//! * [`parse`] reads the binary plist (`genp`, `inet`, `cert`, `keys` arrays of
//!   `{v_Data, v_PersistentRef}`, `keybag-uuid`; other top-level keys are listed in
//!   [`Keychain::unknown_keys`]) and opens each item's blob ([`item`]): versions 0–1
//!   (AES-CBC, raw secret), 2 (AES-GCM, bplist attributes) and 3 (AES-GCM with the empty IV,
//!   [`der`] attributes).
//! * [`writer`] builds a `keychain-backup.plist` of version-3 items, and
//!   [`crate::writer::BackupWriter::add_keychain`] adds one to a new backup.
//!
//! Items are never an error: an item whose class key is sealed to the original device
//! (ThisDeviceOnly classes 9–11 without the device key 0x835, and every item of an
//! unencrypted backup) is [`ItemState::Sealed`]; a truncated, oversized, tampered or
//! undecodable item is [`ItemState::Damaged`], and the others are still listed. A problem
//! with the whole file is an error instead: [`parse`] fails on bytes that are not a
//! plist dictionary, and [`read`] fails with an [`Error`](crate::Error) naming the file
//! when its blob is missing, does not decrypt, or is not a keychain plist (the CLI maps
//! these to exit codes 3 and 4 like any other damaged file). [`Keychain::warnings`] are
//! therefore only notes (the keybag UUID does not match, the plist's padding was invalid).

pub mod der;
pub mod item;
pub mod writer;

use std::io::Read;

use dataprotection::UnlockedKeybag;
use rayon::prelude::*;
use zeroize::Zeroizing;

pub use der::{DerDate, DerValue};
pub use item::{Item, ItemState, ItemSummary, MAX_ITEM_BYTES, TABLES};
pub use writer::NewKeychainItem;

use crate::reader::{Backup, Catalog};
use crate::{bplist_guard, Error, Result};

/// The domain of the keychain file.
pub const DOMAIN: &str = "KeychainDomain";
/// Its relative path.
pub const RELATIVE_PATH: &str = "keychain-backup.plist";
/// Largest `keychain-backup.plist` read (real ones: kilobytes to a few megabytes).
pub const MAX_PLIST_BYTES: u64 = 256 << 20;
/// The top-level key naming the keybag the items are encrypted to.
pub const KEYBAG_UUID_KEY: &str = "keybag-uuid";

/// A decoded `keychain-backup.plist`.
#[derive(Clone, Debug, Default)]
pub struct Keychain {
    /// `keybag-uuid`, as stored.
    pub keybag_uuid: Option<String>,
    /// Whether it names the backup's keybag (case-insensitive); `None` when either is unknown.
    pub keybag_uuid_matches: Option<bool>,
    /// Items of `genp`, `inet`, `cert` and `keys`, in that order and in file order.
    pub items: Vec<Item>,
    /// Notes about the whole file (never about a single item: see [`Item::warnings`]).
    pub warnings: Vec<String>,
    /// Top-level keys other than the four tables and `keybag-uuid`, sorted.
    pub unknown_keys: Vec<String>,
}

impl Keychain {
    /// Number of items that are open, sealed and damaged.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for i in &self.items {
            match i.state {
                ItemState::Open => c.0 += 1,
                ItemState::Sealed { .. } => c.1 += 1,
                ItemState::Damaged { .. } => c.2 += 1,
            }
        }
        c
    }

    /// True when ThisDeviceOnly items exist whose class keys were unsealed with a device key,
    /// none of them opened, and every one failed the item-key check: the device key given is
    /// wrong (the device layer has no integrity check of its own).
    pub fn wrong_device_key(&self) -> bool {
        let tdo: Vec<&Item> = self
            .items
            .iter()
            .filter(|i| i.class.is_some_and(|c| c.is_this_device_only()))
            .collect();
        !tdo.is_empty()
            && tdo.iter().all(|i| {
                i.state
                    .reason()
                    .is_some_and(|r| r.starts_with(item::UNWRAP_FAILED))
            })
    }
}

/// Why bytes are not a keychain plist.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a keychain plist: {0}")]
pub struct ParseError(pub String);

/// Decodes a `keychain-backup.plist` and opens its items.
///
/// `keys`: the class keys of an unlocked encrypted backup; `None` for an **unencrypted**
/// backup, whose items are then all sealed ([`item::UNENCRYPTED_SEALED`]).
/// `backup_keybag_uuid`: the backup keybag's UUID, compared with `keybag-uuid`.
/// Items are decrypted in parallel.
pub fn parse(
    bytes: &[u8],
    keys: Option<&UnlockedKeybag>,
    backup_keybag_uuid: Option<&str>,
) -> std::result::Result<Keychain, ParseError> {
    bplist_guard::check(bytes).map_err(ParseError)?;
    let value = plist::Value::from_reader(std::io::Cursor::new(bytes))
        .map_err(|e| ParseError(e.to_string()))?;
    let plist::Value::Dictionary(top) = value else {
        return Err(ParseError("the top level is not a dictionary".into()));
    };
    let mut kc = Keychain::default();
    match top.get(KEYBAG_UUID_KEY) {
        Some(plist::Value::String(s)) => kc.keybag_uuid = Some(s.clone()),
        Some(_) => kc
            .warnings
            .push(format!("{KEYBAG_UUID_KEY} is not a string")),
        None => kc.warnings.push(format!("no {KEYBAG_UUID_KEY}")),
    }
    if let (Some(theirs), Some(ours)) = (&kc.keybag_uuid, backup_keybag_uuid) {
        let matches = theirs.eq_ignore_ascii_case(ours);
        kc.keybag_uuid_matches = Some(matches);
        if !matches {
            kc.warnings.push(format!(
                "{KEYBAG_UUID_KEY} {theirs} is not the backup keybag's UUID {ours}: the items \
                 were encrypted to another keybag"
            ));
        }
    }
    kc.unknown_keys = top
        .keys()
        .filter(|k| k.as_str() != KEYBAG_UUID_KEY && !TABLES.contains(&k.as_str()))
        .cloned()
        .collect();
    kc.unknown_keys.sort();

    // (table, index, entry) for every listed item; tables that are not arrays become one
    // damaged item each.
    let mut entries: Vec<(&str, usize, &plist::Value)> = Vec::new();
    let mut broken: Vec<(usize, Item)> = Vec::new();
    for table in TABLES {
        match top.get(table) {
            None => {}
            Some(plist::Value::Array(a)) => {
                entries.extend(a.iter().enumerate().map(|(i, v)| (table, i, v)));
            }
            Some(other) => {
                let mut it = Item::new(table);
                it.state = ItemState::Damaged {
                    reason: format!("{table} is a {}, not an array of items", kind_of(other)),
                };
                broken.push((entries.len(), it));
            }
        }
    }
    let keys = match keys {
        Some(k) => item::Keys::Unlocked(k),
        None => item::Keys::Unencrypted,
    };
    let mut items: Vec<Item> = entries
        .par_iter()
        .map(|(table, index, entry)| decode_entry(table, *index, entry, keys))
        .collect();
    for (at, it) in broken.into_iter().rev() {
        items.insert(at, it);
    }
    kc.items = items;
    Ok(kc)
}

fn kind_of(v: &plist::Value) -> &'static str {
    match v {
        plist::Value::Array(_) => "array",
        plist::Value::Dictionary(_) => "dictionary",
        plist::Value::Boolean(_) => "boolean",
        plist::Value::Data(_) => "data",
        plist::Value::Date(_) => "date",
        plist::Value::Real(_) => "real",
        plist::Value::Integer(_) => "integer",
        plist::Value::String(_) => "string",
        _ => "value",
    }
}

fn decode_entry(table: &str, index: usize, entry: &plist::Value, keys: item::Keys<'_>) -> Item {
    let mut it = Item::new(table);
    let plist::Value::Dictionary(d) = entry else {
        it.state = ItemState::Damaged {
            reason: format!(
                "entry {index} of {table} is a {}, not a dictionary",
                kind_of(entry)
            ),
        };
        return it;
    };
    match d.get("v_PersistentRef") {
        Some(plist::Value::Data(r)) => item::set_persistent_ref(&mut it, r),
        Some(other) => it
            .warnings
            .push(format!("v_PersistentRef is a {}, not data", kind_of(other))),
        None => it.warnings.push("no v_PersistentRef".into()),
    }
    let extra: Vec<&str> = d
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "v_Data" && *k != "v_PersistentRef")
        .collect();
    if !extra.is_empty() {
        it.warnings.push(format!(
            "unexpected keys in the item dictionary: {}",
            extra.join(", ")
        ));
    }
    match d.get("v_Data") {
        Some(plist::Value::Data(blob)) => item::open_blob(&mut it, blob, keys),
        Some(other) => {
            it.state = ItemState::Damaged {
                reason: format!("v_Data is a {}, not data", kind_of(other)),
            }
        }
        None => {
            it.state = ItemState::Damaged {
                reason: "no v_Data".into(),
            }
        }
    }
    it
}

/// Reads the backup's keychain: `Ok(None)` when `KeychainDomain/keychain-backup.plist` is not
/// in the backup. Encrypted backups must be unlocked first ([`Error::Locked`] otherwise).
/// A missing, undecryptable or unparseable file is an error naming it (see the module docs).
pub fn read(backup: &Backup) -> Result<Option<Keychain>> {
    read_from_catalog(backup, &backup.catalog()?)
}

/// [`read`] with a catalog the caller already has.
pub fn read_from_catalog(backup: &Backup, catalog: &Catalog) -> Result<Option<Keychain>> {
    let Some(rec) = catalog
        .records
        .iter()
        .find(|r| r.domain == DOMAIN && r.relative_path == RELATIVE_PATH)
    else {
        return Ok(None);
    };
    let path = backup.blob_path(rec)?;
    let named = |reason: String| Error::Malformed {
        path: path.clone(),
        reason: format!("{DOMAIN}/{RELATIVE_PATH}: {reason}"),
    };
    let mut reader = backup.open_file(rec)?;
    if reader.len() > MAX_PLIST_BYTES {
        return Err(named(format!(
            "{} bytes is over the {} MiB cap",
            reader.len(),
            MAX_PLIST_BYTES >> 20
        )));
    }
    let padding_ok = reader.padding_ok();
    let mut bytes = Zeroizing::new(Vec::with_capacity(reader.len() as usize));
    reader.read_to_end(&mut bytes).map_err(Error::io(&path))?;
    let uuid = backup.keybag().and_then(|k| k.uuid_string());
    let keys = if backup.is_encrypted() {
        Some(backup.keys().ok_or_else(|| Error::Locked {
            path: backup.root().to_path_buf(),
        })?)
    } else {
        None
    };
    let mut kc = parse(&bytes, keys, uuid.as_deref()).map_err(|e| named(e.to_string()))?;
    if !padding_ok {
        kc.warnings.push(format!(
            "{}: invalid PKCS7 padding; the plist decoded all the same",
            path.display()
        ));
    }
    Ok(Some(kc))
}
