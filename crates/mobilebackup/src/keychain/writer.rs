//! Writing `keychain-backup.plist` (spec §8.8): version-3 item blobs
//! `u32le 3 | u32le class | u32le 40 | KW(classkey, bulk) | AES-256-GCM(bulk, empty IV, no AAD)
//! over the sorted DER attributes | 16-byte tag`, in `genp`/`inet`/`cert`/`keys` arrays of
//! `{v_Data, v_PersistentRef}` (`table ‖ u64be rowid`), plus `keybag-uuid`.
//!
//! [`BackupWriter::add_keychain`] adds the file to a new backup as a regular file of
//! `KeychainDomain`, the way devices store it (class 1, mode `0400`, owner root, with a
//! `Digest`).
//!
//! **Encrypted backups:** the writer knows every class key it made (1–11, including the
//! ThisDeviceOnly classes 9–11 that the keybag seals with the device key, just as a device
//! exporting its keychain does), so items of classes 6–11 are written readable: 6–8 with the
//! password, 9–11 with the password and the writer's device key.
//!
//! **Unencrypted backups:** on a device the keychain classes of an unencrypted backup's keybag
//! are sealed with the device key under a password layer nobody else holds, so nothing in that
//! keychain opens off the device. The writer's unencrypted keybag throws that layer away, so
//! it cannot know those class keys either: items are encrypted (same v3 layout) under fresh
//! class keys that are discarded at once. Every reader — keybag, other tools, a device —
//! sees them sealed, exactly as in a device-made unencrypted backup. With
//! [`WriterOptions::unencrypted_keybag`](crate::writer::WriterOptions::unencrypted_keybag) the
//! writer knows both layers instead (a virtual device backing itself up): items are encrypted
//! under the real class keys, so that device, and only it, can open them again on restore by
//! unlocking the keybag with the same two keys and calling [`super::parse`] with them.

use std::collections::{BTreeMap, BTreeSet};

use dataprotection::{gcm, wrap, Key256, ProtectionClass, UnlockedKeybag};
use plist::{Dictionary, Value};
use zeroize::Zeroizing;

use super::der::{self, DerValue};
use super::item::{TABLES, WRAPPED_KEY_LEN};
use super::{DOMAIN, KEYBAG_UUID_KEY, RELATIVE_PATH};
use crate::writer::{BackupWriter, Content, Kind, NewRecord};
use crate::{Error, Result};

/// One item to write. `Debug` hides its secret ([`der::RedactedAttributes`]).
#[derive(Clone)]
pub struct NewKeychainItem {
    /// `genp`, `inet`, `cert` or `keys`.
    pub table: String,
    /// Keychain class, 6–11 (12, `akpu`, is never exported to backups).
    pub class: ProtectionClass,
    /// Attributes, including the secret `v_Data`. `pdmn` is added from `class` when absent.
    pub attributes: BTreeMap<String, DerValue>,
    /// The rowid in `v_PersistentRef`; `None` takes the next free one of the table.
    pub rowid: Option<u64>,
}

impl std::fmt::Debug for NewKeychainItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKeychainItem")
            .field("table", &self.table)
            .field("class", &self.class)
            .field("attributes", &der::RedactedAttributes(&self.attributes))
            .field("rowid", &self.rowid)
            .finish()
    }
}

impl NewKeychainItem {
    /// An item of `table` and `class` with no attributes yet.
    pub fn new(table: &str, class: ProtectionClass) -> Self {
        Self {
            table: table.to_string(),
            class,
            attributes: BTreeMap::new(),
            rowid: None,
        }
    }

    /// Sets a string attribute.
    pub fn string(mut self, name: &str, value: &str) -> Self {
        self.attributes
            .insert(name.to_string(), DerValue::string(value));
        self
    }

    /// Sets any attribute.
    pub fn attr(mut self, name: &str, value: DerValue) -> Self {
        self.attributes.insert(name.to_string(), value);
        self
    }

    /// Sets the secret, `v_Data`.
    pub fn secret(self, secret: &[u8]) -> Self {
        self.attr("v_Data", DerValue::data(secret.to_vec()))
    }
}

/// A version-3 item blob of `attributes` (DER-encoded and sorted), with a fresh bulk key
/// wrapped under `class_key`. `class_raw` is written as given (tests use odd values).
pub fn encrypt_item(
    class_raw: u32,
    class_key: &Key256,
    attributes: &BTreeMap<String, DerValue>,
) -> Vec<u8> {
    let plain = Zeroizing::new(der::encode(&DerValue::Dict(attributes.clone())));
    seal_v3(class_raw, class_key, &plain)
}

/// A version-3 blob of arbitrary plaintext bytes (for tests that need malformed DER).
pub fn seal_v3(class_raw: u32, class_key: &Key256, plaintext: &[u8]) -> Vec<u8> {
    let bulk = Key256::random();
    let mut out = Vec::with_capacity(12 + WRAPPED_KEY_LEN + plaintext.len() + gcm::TAG_LEN);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&class_raw.to_le_bytes());
    out.extend_from_slice(&(WRAPPED_KEY_LEN as u32).to_le_bytes());
    out.extend_from_slice(&wrap::wrap_key(class_key, &bulk));
    let start = out.len();
    out.extend_from_slice(plaintext);
    let tag = gcm::Gcm::new(&bulk)
        .encrypt_in_place(&[], &[], &mut out[start..])
        .expect("item under the GCM length limit");
    out.extend_from_slice(&tag);
    out
}

/// Persistent reference: table name and big-endian rowid.
pub fn persistent_ref(table: &str, rowid: u64) -> Vec<u8> {
    let mut r = table.as_bytes().to_vec();
    r.extend_from_slice(&rowid.to_be_bytes());
    r
}

/// Builds `keychain-backup.plist` (binary) for `items`.
///
/// `keys`: the class keys of an encrypted backup; `None` encrypts under throwaway class keys
/// (an unencrypted backup, see the module docs). Errors (as text) for a table other than the
/// four, a class outside 6–11, a class the keybag has no key for, or a duplicate rowid.
pub fn build_plist(
    items: &[NewKeychainItem],
    keys: Option<&UnlockedKeybag>,
    keybag_uuid: &str,
) -> std::result::Result<Vec<u8>, String> {
    let mut throwaway: BTreeMap<ProtectionClass, Key256> = BTreeMap::new();
    let mut used: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for it in items {
        if !TABLES.contains(&it.table.as_str()) {
            return Err(format!(
                "keychain table {:?} is not one of {}",
                it.table,
                TABLES.join(", ")
            ));
        }
        if !(6..=11).contains(&it.class.0) {
            return Err(format!(
                "class {} is not an exportable keychain class (6-11)",
                it.class.0
            ));
        }
        if let Some(r) = it.rowid {
            if !used.entry(&it.table).or_default().insert(r) {
                return Err(format!("rowid {r} appears twice in {}", it.table));
            }
        }
    }
    let mut tables: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for it in items {
        let rowid = match it.rowid {
            Some(r) => r,
            None => {
                let set = used.entry(&it.table).or_default();
                let r = set.last().map_or(1, |m| m + 1);
                set.insert(r);
                r
            }
        };
        let class_key = match keys {
            Some(k) => k
                .key(it.class)
                .map_err(|e| format!("cannot encrypt a {} item: {e}", it.class.short_name()))?,
            None => throwaway.entry(it.class).or_insert_with(Key256::random),
        };
        let mut attrs = it.attributes.clone();
        attrs
            .entry("pdmn".into())
            .or_insert_with(|| DerValue::string(it.class.short_name()));
        let blob = encrypt_item(it.class.0, class_key, &attrs);
        let mut entry = Dictionary::new();
        entry.insert("v_Data".into(), Value::Data(blob));
        entry.insert(
            "v_PersistentRef".into(),
            Value::Data(persistent_ref(&it.table, rowid)),
        );
        tables
            .entry(it.table.as_str())
            .or_default()
            .push(Value::Dictionary(entry));
    }
    let mut top = Dictionary::new();
    for t in TABLES {
        if let Some(v) = tables.remove(t) {
            top.insert(t.into(), Value::Array(v));
        }
    }
    top.insert(
        KEYBAG_UUID_KEY.into(),
        Value::String(keybag_uuid.to_ascii_lowercase()),
    );
    let mut out = Vec::new();
    Value::Dictionary(top)
        .to_writer_binary(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

impl BackupWriter {
    /// Adds `KeychainDomain/keychain-backup.plist` holding `items` as version-3 blobs
    /// (see [`build_plist`] and the module docs for unencrypted backups), as a regular file
    /// of class 1, mode `0400`, owner root, dated like the backup. Call it at most once (a
    /// second call is a duplicate record).
    pub fn add_keychain(&self, items: Vec<NewKeychainItem>) -> Result<()> {
        let bad = |reason: String| Error::BadRecord {
            domain: DOMAIN.into(),
            relative_path: RELATIVE_PATH.into(),
            reason,
        };
        let uuid = self
            .keybag_uuid()
            .ok_or_else(|| bad("the keybag has no UUID".into()))?;
        let plist = build_plist(&items, self.class_keys(), &uuid).map_err(bad)?;
        let t = self.backup_date_unix();
        let mut rec = NewRecord::file(DOMAIN, RELATIVE_PATH, Content::Bytes(Vec::new()));
        rec.kind = Kind::File {
            content: Content::Bytes(plist),
            protection_class: 1,
        };
        rec.mode = 0o400;
        rec.uid = 0;
        rec.gid = 0;
        rec.mtime = t;
        rec.ctime = t;
        rec.birth = t;
        self.add(rec)
    }
}
