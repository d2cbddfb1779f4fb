//! One keychain item: its encrypted blob (`v_Data`, spec §8.3), persistent reference and
//! decrypted attributes.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use dataprotection::{cbc, gcm, wrap, Error as DpError, ProtectionClass, UnlockedKeybag};
use zeroize::Zeroizing;

use super::der::{self, DerDate, DerValue};
use crate::bplist_guard;

/// Largest item blob opened (real items are well under 64 KiB; certificates a few KiB).
pub const MAX_ITEM_BYTES: usize = 1 << 20;

/// Length of the wrapped bulk key (RFC 3394 of 32 bytes).
pub const WRAPPED_KEY_LEN: usize = wrap::WRAPPED_LEN;

/// Bit 31 of the version: use the static 12-byte IV and the header as AAD (spec §8.3).
pub const STATIC_IV_FLAG: u32 = 0x8000_0000;

/// The reason of items whose bulk key fails its RFC 3394 check; it starts every such
/// [`ItemState::Damaged`] reason (see [`super::Keychain::wrong_device_key`]).
pub const UNWRAP_FAILED: &str = "the item key does not unwrap under its class key";

/// The reason of every item of an unencrypted backup.
pub const UNENCRYPTED_SEALED: &str = "unencrypted backup: items are sealed to the original device";

/// The four item tables, in the order they are listed.
pub const TABLES: [&str; 4] = ["genp", "inet", "cert", "keys"];

/// Whether an item could be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemState {
    /// Decrypted; [`Item::attributes`] holds its attributes (and the secret `v_Data`).
    Open,
    /// Intact but sealed: its class key needs the original device (key 0x835), or the
    /// backup is not encrypted. Not an error.
    Sealed {
        /// Why, for people.
        reason: String,
    },
    /// Truncated, oversized, tampered, undecodable or of an unknown layout or class.
    Damaged {
        /// What is wrong, for people.
        reason: String,
    },
}

impl ItemState {
    /// `open`, `sealed` or `damaged`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Sealed { .. } => "sealed",
            Self::Damaged { .. } => "damaged",
        }
    }

    /// The reason of a sealed or damaged item.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Open => None,
            Self::Sealed { reason } | Self::Damaged { reason } => Some(reason),
        }
    }
}

/// A keychain item of `keychain-backup.plist`.
///
/// Secrets (`v_Data` and every other data attribute) are wiped from memory on drop, and
/// `Debug` never prints them ([`der::RedactedAttributes`]).
#[derive(Clone)]
pub struct Item {
    /// The table: `genp`, `inet`, `cert` or `keys`.
    pub table: String,
    /// `v_PersistentRef`: table name and big-endian rowid, or table name and a UUID.
    pub persistent_ref: Vec<u8>,
    /// The rowid from a 12-byte persistent reference.
    pub rowid: Option<u64>,
    /// Blob version (bit 31, the static-IV flag, masked off).
    pub version: Option<u32>,
    /// Protection class from the blob header (high "generation" bits masked off).
    pub class: Option<ProtectionClass>,
    /// Open, sealed or damaged.
    pub state: ItemState,
    /// Decrypted attributes (empty unless open). Versions 0 and 1 carry only the secret,
    /// as `v_Data`.
    pub attributes: BTreeMap<String, DerValue>,
    /// Problems that did not stop decoding (non-canonical DER, odd persistent refs, …).
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Item")
            .field("table", &self.table)
            .field("persistent_ref", &self.persistent_ref)
            .field("rowid", &self.rowid)
            .field("version", &self.version)
            .field("class", &self.class)
            .field("state", &self.state)
            .field("attributes", &der::RedactedAttributes(&self.attributes))
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl Item {
    pub(crate) fn new(table: &str) -> Self {
        Self {
            table: table.to_string(),
            persistent_ref: Vec::new(),
            rowid: None,
            version: None,
            class: None,
            state: ItemState::Damaged {
                reason: "not decoded".into(),
            },
            attributes: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }

    /// `password`, `internet password`, `certificate` or `key` (from the table).
    pub fn kind_name(&self) -> &'static str {
        match self.table.as_str() {
            "genp" => "password",
            "inet" => "internet password",
            "cert" => "certificate",
            "keys" => "key",
            _ => "unknown",
        }
    }

    /// A string attribute.
    pub fn attr_str(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).and_then(DerValue::as_str)
    }

    /// `agrp`, the access group (the app or app group that owns the item).
    pub fn access_group(&self) -> Option<&str> {
        self.attr_str("agrp")
    }

    /// `svce`, the service of a generic password.
    pub fn service(&self) -> Option<&str> {
        self.attr_str("svce")
    }

    /// `srvr`, the server of an internet password.
    pub fn server(&self) -> Option<&str> {
        self.attr_str("srvr")
    }

    /// `acct`, the account.
    pub fn account(&self) -> Option<&str> {
        self.attr_str("acct")
    }

    /// `labl`, the label.
    pub fn label(&self) -> Option<&str> {
        self.attr_str("labl")
    }

    /// `path` of an internet password.
    pub fn path(&self) -> Option<&str> {
        self.attr_str("path")
    }

    /// `pdmn`, the accessibility as the item records it (`ak`, `cku`, …).
    pub fn pdmn(&self) -> Option<&str> {
        self.attr_str("pdmn")
    }

    /// The secret, `v_Data` (a password, or the DER of a certificate or key).
    pub fn secret(&self) -> Option<&[u8]> {
        match self.attributes.get("v_Data")? {
            DerValue::Data(d) => Some(d),
            DerValue::String(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    fn date(&self, name: &str) -> Option<String> {
        self.attributes
            .get(name)
            .and_then(DerValue::as_date)
            .map(|d| d.to_iso8601())
    }

    /// `cdat`, creation time, ISO 8601 UTC.
    pub fn created(&self) -> Option<String> {
        self.date("cdat")
    }

    /// `mdat`, modification time, ISO 8601 UTC.
    pub fn modified(&self) -> Option<String> {
        self.date("mdat")
    }

    /// True for ThisDeviceOnly items: by the blob's class (9–12) when it is a keychain
    /// class, else by the `pdmn` attribute.
    pub fn this_device_only(&self) -> bool {
        match self.class {
            Some(c) if (6..=12).contains(&c.0) => c.is_this_device_only(),
            _ => matches!(self.pdmn(), Some("aku" | "cku" | "dku" | "akpu")),
        }
    }

    /// `ptcl`: a four-character code such as `htps` or `imap` (trailing spaces dropped),
    /// or the number when it is not printable.
    pub fn protocol(&self) -> Option<String> {
        match self.attributes.get("ptcl")? {
            DerValue::Integer(i) => {
                let bytes = u32::try_from(*i).ok().map(u32::to_be_bytes);
                match bytes {
                    Some(b) if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') => {
                        let s: String = b.iter().map(|&c| c as char).collect();
                        Some(s.trim_end().to_string())
                    }
                    _ => Some(i.to_string()),
                }
            }
            DerValue::String(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// `port`.
    pub fn port(&self) -> Option<i64> {
        self.attributes.get("port").and_then(DerValue::as_i64)
    }

    /// For internet passwords: `scheme://server[:port][/path]`, the scheme from `ptcl`
    /// (`htps` → `https`, …; absent: no scheme). `None` for other items or without a server.
    pub fn url(&self) -> Option<String> {
        if self.table != "inet" {
            return None;
        }
        let server = self.server().filter(|s| !s.is_empty())?;
        let mut url = match self.protocol() {
            Some(p) => format!("{}://{server}", url_scheme(&p)),
            None => server.to_string(),
        };
        if let Some(port) = self.port().filter(|p| *p > 0) {
            url.push_str(&format!(":{port}"));
        }
        if let Some(path) = self.path().filter(|p| !p.is_empty()) {
            if !path.starts_with('/') {
                url.push('/');
            }
            url.push_str(path);
        }
        Some(url)
    }
}

/// The URL scheme of a `kSecAttrProtocol` four-character code.
pub fn url_scheme(fourcc: &str) -> String {
    match fourcc {
        "htps" => "https",
        "http" => "http",
        "ftps" => "ftps",
        "ftpa" => "ftp",
        "teln" => "telnet",
        "tels" => "telnets",
        "imps" => "imaps",
        "pops" => "pop3s",
        "ldps" => "ldaps",
        "ntps" => "nntps",
        "ircs" => "ircs",
        "htpx" | "htsx" | "ftpx" | "rtsx" => "proxy",
        other => return other.to_ascii_lowercase(),
    }
    .to_string()
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Parses `v_PersistentRef` into the item.
pub(crate) fn set_persistent_ref(item: &mut Item, r: &[u8]) {
    item.persistent_ref = r.to_vec();
    match r.len() {
        12 => item.rowid = Some(u64::from_be_bytes(r[4..].try_into().expect("8 bytes"))),
        20 => {}
        n => {
            item.warnings.push(format!(
                "v_PersistentRef has {n} bytes (expected 12: table + rowid, or 20: table + UUID)"
            ));
            return;
        }
    }
    if &r[..4] != item.table.as_bytes() {
        item.warnings.push(format!(
            "v_PersistentRef names table {:?} but the item is listed under {}",
            String::from_utf8_lossy(&r[..4]),
            item.table
        ));
    }
}

/// Where class keys come from.
#[derive(Copy, Clone)]
pub(crate) enum Keys<'a> {
    /// An unlocked encrypted backup.
    Unlocked(&'a UnlockedKeybag),
    /// An unencrypted backup: every class is sealed to the device.
    Unencrypted,
}

/// Opens one `v_Data` blob listed under `table`, as [`parse`](super::parse) does for every
/// item: `keys` are the class keys of an unlocked encrypted backup, `None` for an unencrypted
/// backup (every item is then sealed). The persistent reference is left empty. Never panics:
/// every problem becomes the item's state or a warning.
pub fn open(table: &str, blob: &[u8], keys: Option<&UnlockedKeybag>) -> Item {
    let mut item = Item::new(table);
    let keys = match keys {
        Some(k) => Keys::Unlocked(k),
        None => Keys::Unencrypted,
    };
    open_blob(&mut item, blob, keys);
    item
}

/// Opens `blob` into `item` (version, class, state, attributes, warnings). Never panics:
/// every problem becomes the item's state or a warning.
pub(crate) fn open_blob(item: &mut Item, blob: &[u8], keys: Keys<'_>) {
    item.state = match open_inner(item, blob, keys) {
        Ok(()) => ItemState::Open,
        Err(state) => {
            item.attributes.clear();
            state
        }
    };
}

fn damaged(reason: impl Into<String>) -> ItemState {
    ItemState::Damaged {
        reason: reason.into(),
    }
}

fn open_inner(item: &mut Item, blob: &[u8], keys: Keys<'_>) -> Result<(), ItemState> {
    if blob.len() > MAX_ITEM_BYTES {
        return Err(damaged(format!(
            "blob of {} bytes is over the {} MiB cap",
            blob.len(),
            MAX_ITEM_BYTES >> 20
        )));
    }
    if blob.len() < 8 {
        return Err(damaged(format!(
            "blob of {} bytes is truncated (no header)",
            blob.len()
        )));
    }
    let raw_version = le32(blob, 0);
    let static_iv = raw_version & STATIC_IV_FLAG != 0;
    let version = raw_version & !STATIC_IV_FLAG;
    item.version = Some(version);
    let class = ProtectionClass::masked(le32(blob, 4));
    item.class = Some(class);

    // Layout: header, wrapped key, ciphertext, tag.
    let (header_len, tag_len) = match version {
        0 => (8, 0),
        1 => (12, 0),
        2 | 3 => (12, gcm::TAG_LEN),
        4..=6 => {
            return Err(damaged(format!(
                "blob version {version} (items with access control) is not supported; \
                 devices do not export these to backups"
            )))
        }
        _ => return Err(damaged(format!("unknown blob version {version}"))),
    };
    if blob.len() < header_len {
        return Err(damaged(format!(
            "blob of {} bytes is truncated (version {version} header is {header_len} bytes)",
            blob.len()
        )));
    }
    if header_len == 12 {
        let n = le32(blob, 8);
        if n as usize != WRAPPED_KEY_LEN {
            return Err(damaged(format!(
                "wrapped key length is {n}, expected {WRAPPED_KEY_LEN}"
            )));
        }
    }
    let min = header_len + WRAPPED_KEY_LEN + tag_len;
    if blob.len() < min {
        return Err(damaged(format!(
            "blob of {} bytes is truncated (version {version} needs at least {min})",
            blob.len()
        )));
    }
    let wrapped = &blob[header_len..header_len + WRAPPED_KEY_LEN];
    let body = &blob[header_len + WRAPPED_KEY_LEN..blob.len() - tag_len];
    let tag = &blob[blob.len() - tag_len..];

    if !(6..=12).contains(&class.0) {
        return Err(damaged(format!(
            "class id {} is not a keychain class (6-12)",
            class.0
        )));
    }
    let keys = match keys {
        Keys::Unencrypted => {
            return Err(ItemState::Sealed {
                reason: UNENCRYPTED_SEALED.into(),
            })
        }
        Keys::Unlocked(k) => k,
    };
    let class_key = keys.key(class).map_err(|e| match e {
        DpError::NeedsDeviceKey(_) => ItemState::Sealed {
            reason: format!(
                "needs the original device's key 0x835 (class {}, ThisDeviceOnly)",
                class.short_name()
            ),
        },
        DpError::UnsupportedKeyType { ktyp, .. } => ItemState::Sealed {
            reason: format!(
                "class {} uses key type {ktyp}, which keybag cannot open",
                class.short_name()
            ),
        },
        DpError::NoClassKey(_) => damaged(format!(
            "the backup keybag has no key for class {} ({})",
            class.0,
            class.short_name()
        )),
        e => damaged(format!("class key {} is unusable: {e}", class.short_name())),
    })?;
    let bulk = wrap::unwrap_key(class_key, wrapped).map_err(|_| {
        let hint = if class.is_this_device_only() {
            " (a wrong device key, or a damaged item)"
        } else {
            " (a damaged item, or one encrypted to another keybag)"
        };
        damaged(format!("{UNWRAP_FAILED}{hint}"))
    })?;

    match version {
        0 | 1 => {
            if body.is_empty() || !body.len().is_multiple_of(cbc::BLOCK) {
                return Err(damaged(format!(
                    "CBC ciphertext of {} bytes is not a positive multiple of 16",
                    body.len()
                )));
            }
            let secret = cbc::decrypt_padded(&bulk, body.to_vec())
                .map(Zeroizing::new)
                .map_err(|_| damaged("invalid PKCS7 padding (damaged item)"))?;
            item.attributes
                .insert("v_Data".into(), DerValue::Data(secret));
        }
        _ => {
            let (iv, aad): (&[u8], &[u8]) = if static_iv {
                (&gcm::KEYCHAIN_STATIC_IV, &blob[..header_len])
            } else {
                (&[], &[])
            };
            let plain = gcm::decrypt(&bulk, iv, aad, body, tag)
                .map_err(|_| damaged("AES-GCM tag mismatch (damaged or tampered item)"))?;
            let attrs = if version == 3 {
                decode_der(&plain, &mut item.warnings)?
            } else {
                decode_bplist(&plain, &mut item.warnings)?
            };
            item.attributes = attrs;
        }
    }
    Ok(())
}

fn decode_der(
    plain: &[u8],
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, DerValue>, ItemState> {
    let (value, w) =
        der::decode(plain).map_err(|e| damaged(format!("attributes do not decode: {e}")))?;
    warnings.extend(w.into_iter().map(|w| format!("attributes: {w}")));
    match value {
        DerValue::Dict(d) => Ok(d),
        other => Err(damaged(format!(
            "attributes are a DER {}, not a dictionary",
            other.type_name()
        ))),
    }
}

fn decode_bplist(
    plain: &[u8],
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, DerValue>, ItemState> {
    bplist_guard::check(plain).map_err(|e| damaged(format!("attributes: {e}")))?;
    let value = plist::Value::from_reader(std::io::Cursor::new(plain))
        .map_err(|e| damaged(format!("attributes are not a plist: {e}")))?;
    let plist::Value::Dictionary(d) = value else {
        return Err(damaged("attributes are a plist but not a dictionary"));
    };
    Ok(d.into_iter()
        .filter_map(|(k, v)| {
            let converted = from_plist(v, warnings, &k);
            converted.map(|c| (k, c))
        })
        .collect())
}

/// A plist value as a DER value (data moved into wiped buffers, not copied); `None` (with
/// a warning) for types DER plists lack.
fn from_plist(v: plist::Value, warnings: &mut Vec<String>, key: &str) -> Option<DerValue> {
    use plist::Value as V;
    Some(match v {
        V::String(s) => DerValue::String(s),
        V::Data(d) => DerValue::Data(Zeroizing::new(d)),
        V::Boolean(b) => DerValue::Bool(b),
        V::Integer(i) => match i.as_signed() {
            Some(i) => DerValue::Integer(i),
            None => {
                warnings.push(format!("attribute {key:?}: integer over 64 bits dropped"));
                return None;
            }
        },
        V::Real(r) => {
            warnings.push(format!("attribute {key:?}: real number kept as text"));
            DerValue::String(r.to_string())
        }
        V::Date(d) => {
            let t = SystemTime::from(d);
            let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
                Err(e) => {
                    let d = e.duration();
                    let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
                    if n == 0 {
                        (-s, 0)
                    } else {
                        (-s - 1, 1_000_000_000 - n)
                    }
                }
            };
            match DerDate::new(secs, nanos) {
                Some(d) => DerValue::Date(d),
                None => {
                    warnings.push(format!("attribute {key:?}: date out of range dropped"));
                    return None;
                }
            }
        }
        V::Array(a) => DerValue::Array(
            a.into_iter()
                .filter_map(|x| from_plist(x, warnings, key))
                .collect(),
        ),
        V::Dictionary(d) => DerValue::Dict(
            d.into_iter()
                .filter_map(|(k, x)| from_plist(x, warnings, &k).map(|c| (k, c)))
                .collect(),
        ),
        _ => {
            warnings.push(format!("attribute {key:?}: unsupported plist type dropped"));
            return None;
        }
    })
}

/// What listings and reports show of an item: every descriptive field, never the
/// secret. One shape for `keybag keychain --json` and the audit.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ItemSummary {
    /// `genp`, `inet`, `cert` or `keys`.
    pub table: String,
    /// `password`, `internet password`, `certificate` or `key`.
    pub kind: &'static str,
    /// `v_PersistentRef`, hex.
    pub persistent_ref: String,
    /// Row id from the persistent ref.
    pub rowid: Option<u64>,
    /// Blob version.
    pub version: Option<u32>,
    /// Protection class id (from the blob header, known even when sealed).
    pub class: Option<u32>,
    /// `ak`, `cku`, …
    pub class_short: Option<&'static str>,
    /// `kSecAttrAccessible…`.
    pub class_name: Option<&'static str>,
    /// Classes 9–12: bound to the original device.
    pub this_device_only: bool,
    /// Classes 6–8: move to another device with an encrypted backup.
    pub migratory: bool,
    /// `open`, `sealed` or `damaged`.
    pub state: &'static str,
    /// Why it is sealed or damaged.
    pub reason: Option<String>,
    /// `agrp`: the app (access group).
    pub access_group: Option<String>,
    /// `svce` (passwords).
    pub service: Option<String>,
    /// `srvr` (internet passwords).
    pub server: Option<String>,
    /// `acct`.
    pub account: Option<String>,
    /// `labl`.
    pub label: Option<String>,
    /// `ptcl` as text (e.g. `imap`).
    pub protocol: Option<String>,
    /// `port`.
    pub port: Option<i64>,
    /// `path`.
    pub path: Option<String>,
    /// `scheme://server[:port]/path` of internet passwords.
    pub url: Option<String>,
    /// `cdat`, ISO 8601.
    pub created: Option<String>,
    /// `mdat`, ISO 8601.
    pub modified: Option<String>,
}

impl Item {
    /// The item's description without its secret.
    pub fn summary(&self) -> ItemSummary {
        let owned = |s: Option<&str>| s.map(str::to_owned);
        ItemSummary {
            table: self.table.clone(),
            kind: self.kind_name(),
            persistent_ref: hex::encode(&self.persistent_ref),
            rowid: self.rowid,
            version: self.version,
            class: self.class.map(|c| c.0),
            class_short: self.class.map(|c| c.short_name()),
            class_name: self.class.map(|c| c.name()),
            this_device_only: self.this_device_only(),
            migratory: self.class.is_some_and(|c| matches!(c.0, 6..=8)),
            state: self.state.name(),
            reason: self.state.reason().map(str::to_owned),
            access_group: owned(self.access_group()),
            service: owned(self.service()),
            server: owned(self.server()),
            account: owned(self.account()),
            label: owned(self.label()),
            protocol: self.protocol(),
            port: self.port(),
            path: owned(self.path()),
            url: self.url(),
            created: self.created(),
            modified: self.modified(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataprotection::{DeviceKey, Key256, Keybag};

    /// A version-2 blob (plist attributes; AES-GCM with the empty IV, so the header is not
    /// authenticated and a v3 blob relabelled 2 is one) of `plain`.
    fn seal_v2(class: u32, class_key: &Key256, plain: &[u8]) -> Vec<u8> {
        let mut blob = super::super::writer::seal_v3(class, class_key, plain);
        blob[0] = 2;
        blob
    }

    #[test]
    fn deeply_nested_v2_attributes_are_damaged_not_a_stack_overflow() {
        let (_, keys) = Keybag::new_backup_pending(&DeviceKey::from_bytes([1; 16]), 1);
        let key = keys.key(ProtectionClass(6)).unwrap();
        let n = 60_000;
        let xml = format!(
            "<?xml version=\"1.0\"?><plist><dict><key>a</key>{}{}</dict></plist>",
            "<array>".repeat(n),
            "</array>".repeat(n)
        );
        let item = open("genp", &seal_v2(6, key, xml.as_bytes()), Some(&keys));
        let reason = item.state.reason().unwrap_or_default();
        assert!(reason.contains("deeper"), "{reason}");
        let shallow = "<plist><dict><key>a</key><array><string>x</string></array></dict></plist>";
        let item = open("genp", &seal_v2(6, key, shallow.as_bytes()), Some(&keys));
        assert_eq!(item.state, ItemState::Open);
    }
}
