//! The device's side of iCloud Backup: its iCloud Backup keybag (TYPE 3), the extra wrap every
//! file and keychain item gets when it is written, and what a backup ships without unwrapping
//! anything (spec §2 and §5.1).
//!
//! * `secure/cloud-keybag`: the keybag TLV. Files: an X25519 class key for each of A, B, C
//!   and D (`KTYP` 1, `PBKY` the public key, `WPKY` the private key RFC 3394-wrapped by the
//!   random *keybag key*, `WRAP` 2). The device keeps only the public keys usable: it never
//!   holds the keybag key, so it can wrap new file keys in any lock state and unwrap none.
//!   D is asymmetric too (Apple's D could be read at backup time) so that a backup never
//!   unwraps anything, whatever the class. Keychain: fresh AES keys for ak … dku (6–11),
//!   `WRAP` 1 (a UID-derived key), so the keychain of a cloud backup opens on this device only
//!   (spec §5.2); akpu items are never exported.
//! * `store.db` `cloud_key`: the file key wrapped to the cloud class key, added when the file
//!   is written, at enable time for files already there, and by a backup of an unlocked
//!   device for any file still without one. Files a backup leaves out (`Library/Caches`,
//!   `tmp`, flagged, inside a flagged folder) get none: a server dump plus this folder must
//!   not read them.
//! * `keychain.db` `cloud_key`: the item key wrapped by the cloud keychain class key.
//! * `secure/bound-<name>`: small records sealed (AES-GCM) under a UID-derived key
//!   ([`Device::bound_save`]): they open on this device only, in any lock state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dataprotection::keybag::{kind, ClassKeyRecord, Keybag, WRAP_DEVICE, WRAP_PASSCODE};
use dataprotection::wrap::{unwrap_key, wrap_key};
use dataprotection::{curve, Key256, ProtectionClass};
use rusqlite::params;
use zeroize::Zeroizing;

use crate::error::{damaged, db, io, Error, Result};
use crate::meta::write_atomic;
use crate::sep::label;
use crate::{Device, Entry, EntryKind, LockState};

/// File classes of the cloud keybag (all four: see the module docs).
pub const FILE_CLASSES: [u32; 4] = [1, 2, 3, 4];
/// Keychain classes of the cloud keybag (akpu, 12, is never exported).
pub const KEYCHAIN_CLASSES: [u32; 6] = [6, 7, 8, 9, 10, 11];

/// The cloud keybag as the device holds it: public file class keys, and the keychain class
/// keys (UID-wrapped, so unwrapped at load).
pub(crate) struct CloudBag {
    pub bytes: Vec<u8>,
    pub file_pubs: BTreeMap<u32, [u8; 32]>,
    pub keychain: BTreeMap<u32, Key256>,
}

pub(crate) fn path(dir: &Path) -> PathBuf {
    crate::device::secure(dir).join("cloud-keybag")
}

fn bound_path(dir: &Path, name: &str) -> PathBuf {
    crate::device::secure(dir).join(format!("bound-{name}"))
}

/// What [`Device::cloud_enable`] made.
pub struct CloudEnabled {
    /// The keybag TLV (to store with the backup set).
    pub keybag: Vec<u8>,
    /// The keybag key: it unwraps the file class private keys. The device does not keep it.
    pub keybag_key: Key256,
    /// Files given their cloud wrap now.
    pub files_wrapped: u64,
    /// Keychain items given theirs.
    pub items_wrapped: u64,
}

/// One file as a cloud backup ships it: the stored ciphertext and the cloud-wrapped key.
#[derive(Clone, Debug)]
pub struct CloudFile {
    /// Its metadata.
    pub entry: Entry,
    /// The encrypted blob (AES-256-CBC under the file key, PKCS7).
    pub blob: PathBuf,
    /// The blob's id (random, fixed while the content is unchanged).
    pub blob_id: String,
    /// The file key wrapped to the cloud keybag's class key (72 bytes).
    pub cloud_key: Vec<u8>,
}

/// One keychain item as a cloud backup ships it.
#[derive(Clone, Debug)]
pub struct CloudItem {
    /// Row id on this device.
    pub rowid: u64,
    /// `genp`, `inet`, `cert` or `keys`.
    pub table: String,
    /// Keychain class (6–11).
    pub class: ProtectionClass,
    /// The item key wrapped by the cloud keybag's keychain class key.
    pub cloud_key: Vec<u8>,
    /// GCM IV of the attributes.
    pub iv: Vec<u8>,
    /// The encrypted attributes (ciphertext ‖ tag; AAD = table ‖ class).
    pub data: Vec<u8>,
}

/// Everything a cloud backup ships, read without unwrapping a key.
#[derive(Debug, Default)]
pub struct CloudExport {
    /// Folders and symbolic links.
    pub others: Vec<Entry>,
    /// Regular files.
    pub files: Vec<CloudFile>,
    /// Keychain items.
    pub keychain: Vec<CloudItem>,
    /// Left out, with reasons.
    pub skipped: Vec<crate::backup::Skip>,
}

fn rand16() -> Vec<u8> {
    Key256::random().as_bytes()[..16].to_vec()
}

/// Loads `secure/cloud-keybag` (absent: cloud backup is off).
pub(crate) fn load(dir: &Path, uid: &crate::sep::Uid) -> Result<Option<CloudBag>> {
    let p = path(dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&p)(e)),
    };
    let kb = Keybag::parse(&bytes).map_err(|e| damaged(&p, e.to_string()))?;
    if kb.kind() != Some(kind::ICLOUD) {
        return Err(damaged(&p, "not an iCloud Backup (TYPE 3) keybag"));
    }
    let kek = uid.derive(label::CLOUD_KEYCHAIN);
    let mut file_pubs = BTreeMap::new();
    let mut keychain = BTreeMap::new();
    for rec in &kb.classes {
        let c = rec.class().0;
        if FILE_CLASSES.contains(&c) {
            let pk: [u8; 32] = rec
                .pbky
                .as_deref()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| damaged(&p, format!("class {c} has no 32-byte PBKY")))?;
            file_pubs.insert(c, pk);
        } else if KEYCHAIN_CLASSES.contains(&c) {
            let k = unwrap_key(&kek, &rec.wpky).map_err(|e| Error::Crypto {
                path: p.clone(),
                source: e,
            })?;
            keychain.insert(c, k);
        }
    }
    if file_pubs.len() != FILE_CLASSES.len() || keychain.len() != KEYCHAIN_CLASSES.len() {
        return Err(damaged(&p, "a class key is missing"));
    }
    Ok(Some(CloudBag {
        bytes,
        file_pubs,
        keychain,
    }))
}

/// Column `cloud_key` in a table made before cloud backup existed.
pub(crate) fn add_column(conn: &rusqlite::Connection, table: &str, dbp: &Path) -> Result<()> {
    let has: bool = conn
        .query_row(
            &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = 'cloud_key'"),
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(db(dbp))?
        > 0;
    if !has {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN cloud_key BLOB"))
            .map_err(db(dbp))?;
    }
    Ok(())
}

/// Whether a backup leaves this path out by rule or flag (its own flag, or a flagged folder
/// above it), so that it must not get a cloud wrap.
pub(crate) fn left_out(
    conn: &rusqlite::Connection,
    dbp: &Path,
    domain: &str,
    path: &str,
    own_flag: bool,
) -> Result<bool> {
    if own_flag || crate::backup::excluded_by_rule(path).is_some() {
        return Ok(true);
    }
    let mut idx = 0;
    while let Some(off) = path[idx..].find('/') {
        let parent = &path[..idx + off];
        let flagged: Option<i64> = conn
            .query_row(
                "SELECT exclude FROM files WHERE domain=?1 AND path=?2",
                params![domain, parent],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(db(dbp))?;
        if flagged == Some(1) {
            return Ok(true);
        }
        idx += off + 1;
    }
    Ok(false)
}

impl Device {
    /// Whether iCloud Backup is on (the device holds a cloud keybag).
    pub fn cloud_enabled(&self) -> bool {
        self.cloud.is_some()
    }

    /// The cloud keybag TLV, when on.
    pub fn cloud_keybag(&self) -> Option<&[u8]> {
        self.cloud.as_ref().map(|c| c.bytes.as_slice())
    }

    /// A new file key's cloud wrap (`None` when cloud backup is off).
    pub(crate) fn cloud_wrap(&self, class: ProtectionClass, key: &Key256) -> Option<Vec<u8>> {
        let c = self.cloud.as_ref()?;
        c.file_pubs.get(&class.0).map(|pk| curve::wrap_to(pk, key))
    }

    /// A new keychain item key's cloud wrap (`None` when off, and for akpu).
    pub(crate) fn cloud_item_wrap(&self, class: ProtectionClass, key: &Key256) -> Option<Vec<u8>> {
        let c = self.cloud.as_ref()?;
        c.keychain.get(&class.0).map(|k| wrap_key(k, key).to_vec())
    }

    /// Turns iCloud Backup on: makes the cloud keybag (fresh class keys, a random keybag key
    /// returned and not kept) and gives every file a backup takes, and every keychain item
    /// but akpu, its cloud wrap. Needs the device unlocked (the existing keys must be
    /// unwrapped once). Already on: the old keybag and its wraps are replaced (its keybag key
    /// was not kept, so it cannot be handed out again).
    pub fn cloud_enable(&mut self) -> Result<CloudEnabled> {
        if self.state != LockState::Unlocked {
            return Err(Error::ClassUnavailable {
                class: ProtectionClass(1),
                state: self.state,
            });
        }
        if self.cloud.is_some() {
            self.cloud_disable()?;
        }
        let keybag_key = Key256::random();
        {
            let kek = self.uid.derive(label::CLOUD_KEYCHAIN);
            let mut kb = Keybag {
                version: Some(4),
                type_raw: Some(kind::ICLOUD),
                uuid: Some(rand16()),
                wrap: Some(WRAP_DEVICE | WRAP_PASSCODE),
                ..Default::default()
            };
            for c in FILE_CLASSES {
                let private = curve::new_private();
                kb.classes.push(ClassKeyRecord {
                    uuid: Some(rand16()),
                    class_raw: c,
                    wrap: WRAP_PASSCODE,
                    ktyp: Some(1),
                    wpky: wrap_key(&keybag_key, &private).to_vec(),
                    pbky: Some(curve::public_of(&private).to_vec()),
                    extra: Vec::new(),
                });
            }
            for c in KEYCHAIN_CLASSES {
                kb.classes.push(ClassKeyRecord {
                    uuid: Some(rand16()),
                    class_raw: c,
                    wrap: WRAP_DEVICE,
                    ktyp: Some(0),
                    wpky: wrap_key(&kek, &Key256::random()).to_vec(),
                    pbky: None,
                    extra: Vec::new(),
                });
            }
            let bytes = kb.to_bytes();
            let p = path(&self.dir);
            write_atomic(&p, &bytes, 0o600)?;
            self.cloud = load(&self.dir, &self.uid)?;
        }
        let files_wrapped = self.cloud_add_missing_wraps()?;
        let items_wrapped = self.cloud_wrap_items()?;
        Ok(CloudEnabled {
            keybag: self.cloud.as_ref().expect("on").bytes.clone(),
            keybag_key,
            files_wrapped,
            items_wrapped,
        })
    }

    /// Gives every file a backup takes and whose class key is available now its cloud wrap,
    /// if it has none; returns how many got one.
    pub(crate) fn cloud_add_missing_wraps(&self) -> Result<u64> {
        if self.cloud.is_none() {
            return Ok(0);
        }
        let dbp = crate::store::db_path(&self.dir);
        let todo: Vec<(String, String, u32, Vec<u8>, bool)> = {
            let conn = self.store_db();
            let mut st = conn
                .prepare(
                    "SELECT domain, path, class, wrapped_key, exclude FROM files
                     WHERE kind = 0 AND cloud_key IS NULL AND wrapped_key IS NOT NULL",
                )
                .map_err(db(&dbp))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get::<_, i64>(4)? != 0,
                    ))
                })
                .map_err(db(&dbp))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db(&dbp))?;
            rows
        };
        let mut n = 0;
        let mut conn = self.store_db();
        let tx = conn.transaction().map_err(db(&dbp))?;
        for (domain, path, class, wrapped, flag) in todo {
            let class = ProtectionClass(class);
            if !self.class_key_available(class) || left_out(&tx, &dbp, &domain, &path, flag)? {
                continue;
            }
            let key = self.unwrap_file_key(class, &wrapped, &dbp)?;
            if let Some(w) = self.cloud_wrap(class, &key) {
                tx.execute(
                    "UPDATE files SET cloud_key=?3 WHERE domain=?1 AND path=?2",
                    params![domain, path, w],
                )
                .map_err(db(&dbp))?;
                n += 1;
            }
        }
        tx.commit().map_err(db(&dbp))?;
        Ok(n)
    }

    fn cloud_wrap_items(&self) -> Result<u64> {
        let dbp = crate::keychain::db_path(&self.dir);
        let conn = self.keychain_db();
        let rows: Vec<(i64, u32, Vec<u8>)> = {
            let mut st = conn
                .prepare("SELECT rowid, class, wrapped_key FROM items WHERE cloud_key IS NULL")
                .map_err(db(&dbp))?;
            let r = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(db(&dbp))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db(&dbp))?;
            r
        };
        let mut n = 0;
        for (rowid, class, wrapped) in rows {
            let class = ProtectionClass(class);
            let Ok(ck) = self.class_key(class) else {
                continue;
            };
            let item_key = unwrap_key(ck, &wrapped).map_err(|e| Error::Crypto {
                path: dbp.clone(),
                source: e,
            })?;
            if let Some(w) = self.cloud_item_wrap(class, &item_key) {
                conn.execute(
                    "UPDATE items SET cloud_key=?2 WHERE rowid=?1",
                    params![rowid, w],
                )
                .map_err(db(&dbp))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Turns iCloud Backup off: the cloud keybag and every cloud wrap are deleted, so files
    /// and items written from now on are in no cloud backup (and a server's copy of the old
    /// keybag opens none of them).
    pub fn cloud_disable(&mut self) -> Result<()> {
        let dbp = crate::store::db_path(&self.dir);
        self.store_db()
            .execute("UPDATE files SET cloud_key = NULL", [])
            .map_err(db(&dbp))?;
        let kp = crate::keychain::db_path(&self.dir);
        self.keychain_db()
            .execute("UPDATE items SET cloud_key = NULL", [])
            .map_err(db(&kp))?;
        let p = path(&self.dir);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&p)(e)),
        }
        self.cloud = None;
        Ok(())
    }

    /// What a cloud backup ships: stored ciphertexts with their cloud-wrapped keys, folders,
    /// links, keychain items with theirs. Unwraps nothing, so it works in every lock state;
    /// an unlocked device first gives files still without a cloud wrap theirs.
    pub fn cloud_export(&self) -> Result<CloudExport> {
        if self.cloud.is_none() {
            return Err(Error::CloudOff {
                path: self.dir.clone(),
            });
        }
        if self.state == LockState::Unlocked {
            self.cloud_add_missing_wraps()?;
            self.cloud_wrap_items()?;
        }
        let mut out = CloudExport::default();
        let rows = self.entries_with_cloud_keys()?;
        let flagged: Vec<(String, String)> = rows
            .iter()
            .filter(|(e, ..)| e.exclude_from_backup && e.kind == EntryKind::Directory)
            .map(|(e, ..)| (e.domain.clone(), e.path.clone()))
            .collect();
        for (e, blob, cloud_key) in rows {
            if let Some(skip) = crate::backup::left_out_skip(&e, &flagged) {
                out.skipped.push(skip);
                continue;
            }
            match e.kind {
                EntryKind::File => match (blob, cloud_key) {
                    (Some(id), Some(k)) => out.files.push(CloudFile {
                        blob: crate::store::blob_path(&self.dir, &id),
                        blob_id: id,
                        cloud_key: k,
                        entry: e,
                    }),
                    _ => out.skipped.push(crate::backup::Skip {
                        kind: "file".into(),
                        what: format!("{}/{}", e.domain, e.path),
                        class: Some(crate::backup::class_name(e.class)),
                        reason: "no cloud wrap yet (written while it was left out of backups, \
                                 or before cloud backup and the device has not been unlocked \
                                 since): unlock the device once"
                            .into(),
                    }),
                },
                _ => out.others.push(e),
            }
        }
        let kp = crate::keychain::db_path(&self.dir);
        let conn = self.keychain_db();
        let mut st = conn
            .prepare("SELECT rowid, tbl, class, cloud_key, iv, data FROM items ORDER BY rowid")
            .map_err(db(&kp))?;
        let items = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                ))
            })
            .map_err(db(&kp))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db(&kp))?;
        for (rowid, table, class, ck, iv, data) in items {
            let class = ProtectionClass(class);
            match ck {
                Some(cloud_key) => out.keychain.push(CloudItem {
                    rowid,
                    table,
                    class,
                    cloud_key,
                    iv,
                    data,
                }),
                None => out.skipped.push(crate::backup::Skip {
                    kind: "keychain".into(),
                    what: format!("{table} #{rowid}"),
                    class: Some(class.short_name().to_string()),
                    reason: if class.0 == 12 {
                        "akpu items are never exported (format §8.6)".into()
                    } else {
                        "no cloud wrap yet: unlock the device once".into()
                    },
                }),
            }
        }
        Ok(out)
    }

    /// Opens a keychain item of a cloud backup made by this device (`keybag` is that backup's
    /// cloud keybag): its class key is UID-wrapped, so on any other device this fails with
    /// [`Error::Crypto`]. Returns the item's attributes.
    pub fn cloud_open_item(
        &self,
        keybag: &[u8],
        item: &CloudItem,
    ) -> Result<BTreeMap<String, crate::DerValue>> {
        let here = PathBuf::from("<cloud keybag>");
        let kb = Keybag::parse(keybag).map_err(|e| damaged(&here, e.to_string()))?;
        let rec = kb
            .classes
            .iter()
            .find(|r| r.class().0 == item.class.0 && r.wrap == WRAP_DEVICE)
            .ok_or_else(|| damaged(&here, format!("no class {} key", item.class.0)))?;
        let crypto = |e| Error::Crypto {
            path: here.clone(),
            source: e,
        };
        let ck = unwrap_key(&self.uid.derive(label::CLOUD_KEYCHAIN), &rec.wpky).map_err(crypto)?;
        let item_key = unwrap_key(&ck, &item.cloud_key).map_err(crypto)?;
        crate::keychain::open_attributes(&item_key, &item.table, item.class, &item.iv, &item.data)
            .map_err(|reason| damaged(&here, format!("item {}: {reason}", item.rowid)))
    }

    /// Saves `bytes` as `secure/bound-<name>`, sealed under a UID-derived key: it opens on
    /// this device only, in every lock state (like a `dku` keychain item).
    pub fn bound_save(&self, name: &str, bytes: &[u8]) -> Result<()> {
        check_bound_name(name)?;
        let key = self.uid.derive(label::BOUND);
        let iv = Key256::random().as_bytes()[..12].to_vec();
        let (mut ct, tag) = dataprotection::gcm::encrypt(&key, &iv, name.as_bytes(), bytes)
            .map_err(|e| Error::Keychain(e.to_string()))?;
        ct.extend_from_slice(&tag);
        let mut out = iv;
        out.extend_from_slice(&ct);
        write_atomic(&bound_path(&self.dir, name), &out, 0o600)
    }

    /// Reads what [`Device::bound_save`] saved (`None` if nothing was).
    pub fn bound_load(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        check_bound_name(name)?;
        let p = bound_path(&self.dir, name);
        let b = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&p)(e)),
        };
        if b.len() < 28 {
            return Err(damaged(&p, "too short"));
        }
        let key = self.uid.derive(label::BOUND);
        let (iv, rest) = b.split_at(12);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        dataprotection::gcm::decrypt(&key, iv, name.as_bytes(), ct, tag)
            .map(Some)
            .map_err(|e| Error::Crypto { path: p, source: e })
    }

    /// Deletes `secure/bound-<name>`.
    pub fn bound_delete(&self, name: &str) -> Result<()> {
        check_bound_name(name)?;
        let p = bound_path(&self.dir, name);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&p)(e)),
        }
    }
}

fn check_bound_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Error::Keychain(format!(
            "{name:?}: a bound record's name is 1–64 of a-z, 0-9 and '-'"
        )));
    }
    Ok(())
}
