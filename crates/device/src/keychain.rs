//! The device keychain: `keychain.db`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dataprotection::wrap::{unwrap_key, wrap_key};
use dataprotection::{Key256, ProtectionClass};
use mobilebackup::keychain::{der, DerDate, DerValue, TABLES};
use rusqlite::{params, Connection};

use crate::error::{damaged, db, Error, Result};
use crate::{Device, KeychainItem};

pub(crate) fn db_path(dir: &Path) -> PathBuf {
    dir.join("keychain.db")
}

pub(crate) fn open_db(dir: &Path) -> Result<Connection> {
    let path = db_path(dir);
    let conn = Connection::open(&path).map_err(db(&path))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE IF NOT EXISTS items(
            rowid INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, class INTEGER NOT NULL,
            wrapped_key BLOB NOT NULL, iv BLOB NOT NULL, data BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS changes(id INTEGER PRIMARY KEY CHECK (id = 0), token BLOB NOT NULL);
         INSERT OR IGNORE INTO changes VALUES (0, randomblob(16));
         CREATE TRIGGER IF NOT EXISTS items_ins AFTER INSERT ON items BEGIN UPDATE changes SET token = randomblob(16); END;
         CREATE TRIGGER IF NOT EXISTS items_upd AFTER UPDATE ON items BEGIN UPDATE changes SET token = randomblob(16); END;
         CREATE TRIGGER IF NOT EXISTS items_del AFTER DELETE ON items BEGIN UPDATE changes SET token = randomblob(16); END;",
    )
    .map_err(db(&path))?;
    crate::cloudbag::add_column(&conn, "items", &path)?;
    Ok(conn)
}

fn aad(table: &str, class: u32) -> Vec<u8> {
    let mut a = table.as_bytes().to_vec();
    a.extend_from_slice(&class.to_be_bytes());
    a
}

/// Decrypts an item's attributes with its item key (AAD = table ‖ class).
pub(crate) fn open_attributes(
    item_key: &Key256,
    table: &str,
    class: ProtectionClass,
    iv: &[u8],
    data: &[u8],
) -> std::result::Result<BTreeMap<String, DerValue>, String> {
    if data.len() < 16 {
        return Err("too short".into());
    }
    let (ct, tag) = data.split_at(data.len() - 16);
    let plain = dataprotection::gcm::decrypt(item_key, iv, &aad(table, class.0), ct, tag)
        .map_err(|e| e.to_string())?;
    match der::decode(&plain) {
        Ok((DerValue::Dict(d), _)) => Ok(d),
        Ok(_) => Err("not a dictionary".into()),
        Err(e) => Err(e.to_string()),
    }
}

type RawItem = (u64, String, u32, Vec<u8>, Vec<u8>, Vec<u8>);

impl Device {
    pub(crate) fn keychain_db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.keychain.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an item to `table` (`genp`, `inet`, `cert`, `keys`) in keychain class 6–12.
    /// `pdmn`, `cdat` and `mdat` are filled in when absent. The class key must be
    /// available; akpu (12) needs a passcode. Returns the new row id.
    pub fn keychain_add(
        &mut self,
        table: &str,
        class: ProtectionClass,
        mut attributes: BTreeMap<String, DerValue>,
    ) -> Result<u64> {
        if !TABLES.contains(&table) {
            return Err(Error::Keychain(format!(
                "unknown table {table:?} (genp, inet, cert or keys)"
            )));
        }
        if !(6..=12).contains(&class.0) {
            return Err(Error::BadClass {
                class,
                reason: "keychain items take classes 6–12 (ak … akpu)",
            });
        }
        if class.0 == 12 && !self.passcode_set() {
            return Err(Error::PasscodeRequired {
                what: "an akpu (WhenPasscodeSetThisDeviceOnly) item".into(),
            });
        }
        let class_key = self.class_key(class)?.clone();
        attributes
            .entry("pdmn".into())
            .or_insert_with(|| DerValue::String(class.short_name().into()));
        let now = DerDate::new(self.now(), 0).unwrap_or_else(|| DerDate::new(0, 0).expect("epoch"));
        attributes
            .entry("cdat".into())
            .or_insert_with(|| DerValue::Date(now));
        attributes
            .entry("mdat".into())
            .or_insert_with(|| DerValue::Date(now));
        let plain = zeroize::Zeroizing::new(der::encode(&DerValue::Dict(attributes)));
        let item_key = Key256::random();
        let iv = Key256::random().as_bytes()[..12].to_vec();
        let (mut ct, tag) =
            dataprotection::gcm::encrypt(&item_key, &iv, &aad(table, class.0), &plain)
                .map_err(|e| Error::Keychain(e.to_string()))?;
        ct.extend_from_slice(&tag);
        let wrapped = wrap_key(&class_key, &item_key);
        let cloud = self.cloud_item_wrap(class, &item_key);
        let dbp = db_path(&self.dir);
        let conn = self.keychain_db();
        conn.execute(
            "INSERT INTO items(tbl, class, wrapped_key, iv, data, cloud_key)
             VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
            params![table, class.0, wrapped.to_vec(), iv, ct, cloud],
        )
        .map_err(db(&dbp))?;
        Ok(conn.last_insert_rowid() as u64)
    }

    fn raw_items(&self, rowid: Option<u64>) -> Result<Vec<RawItem>> {
        let dbp = db_path(&self.dir);
        let conn = self.keychain_db();
        let mut stmt = conn
            .prepare(
                "SELECT rowid, tbl, class, wrapped_key, iv, data FROM items
                 WHERE ?1 IS NULL OR rowid = ?1 ORDER BY rowid",
            )
            .map_err(db(&dbp))?;
        let rows = stmt
            .query_map(params![rowid.map(|r| r as i64)], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .map_err(db(&dbp))?
            .collect::<rusqlite::Result<Vec<RawItem>>>()
            .map_err(db(&dbp))?;
        Ok(rows)
    }

    fn decrypt_item(&self, raw: RawItem) -> Result<KeychainItem> {
        let (rowid, table, class, wrapped, iv, data) = raw;
        let dbp = db_path(&self.dir);
        let class = ProtectionClass(class);
        let item_key = unwrap_key(self.class_key(class)?, &wrapped).map_err(|e| Error::Crypto {
            path: dbp.clone(),
            source: e,
        })?;
        let attributes = open_attributes(&item_key, &table, class, &iv, &data)
            .map_err(|e| damaged(&dbp, format!("item {rowid}: {e}")))?;
        Ok(KeychainItem {
            table,
            rowid,
            class,
            attributes,
        })
    }

    /// Every item whose class key is available now, decrypted.
    pub fn keychain_items(&self) -> Result<Vec<KeychainItem>> {
        self.raw_items(None)?
            .into_iter()
            .filter(|r| self.class_key_available(ProtectionClass(r.2)))
            .map(|r| self.decrypt_item(r))
            .collect()
    }

    /// One item; [`Error::ClassUnavailable`] when its class key is not held now.
    pub fn keychain_item(&self, rowid: u64) -> Result<KeychainItem> {
        let raw = self
            .raw_items(Some(rowid))?
            .pop()
            .ok_or_else(|| Error::Keychain(format!("no item with rowid {rowid}")))?;
        self.decrypt_item(raw)
    }

    /// Every item as `(rowid, table, class, available now)`; needs no class key.
    pub fn keychain_all(&self) -> Result<Vec<(u64, String, ProtectionClass, bool)>> {
        Ok(self
            .raw_items(None)?
            .into_iter()
            .map(|(rowid, table, class, ..)| {
                let c = ProtectionClass(class);
                (rowid, table, c, self.class_key_available(c))
            })
            .collect())
    }

    /// Deletes one item.
    pub fn keychain_remove(&mut self, rowid: u64) -> Result<()> {
        let dbp = db_path(&self.dir);
        let n = self
            .keychain_db()
            .execute("DELETE FROM items WHERE rowid = ?1", params![rowid as i64])
            .map_err(db(&dbp))?;
        if n == 0 {
            return Err(Error::Keychain(format!("no item with rowid {rowid}")));
        }
        Ok(())
    }

    pub(crate) fn delete_akpu_items(&mut self) -> Result<()> {
        let dbp = db_path(&self.dir);
        self.keychain_db()
            .execute("DELETE FROM items WHERE class = 12", [])
            .map_err(db(&dbp))?;
        Ok(())
    }
}
