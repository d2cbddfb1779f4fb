//! Files: the `store.db` index and the encrypted blobs under `store/`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use dataprotection::cbc::{pkcs7_pad_len, Decryptor, BLOCK};
use dataprotection::wrap::{unwrap_key, wrap_key};
use dataprotection::{Key256, ProtectionClass};
use mobilebackup::layout::{check_domain, check_relative_path};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{damaged, db, io, Error, Result};
use crate::sep::{class_b_unwrap, class_b_wrap};
use crate::{Device, Entry, EntryKind, PutOptions};

/// An entry, its blob id and its cloud wrap.
pub(crate) type EntryWithCloud = (Entry, Option<String>, Option<Vec<u8>>);

/// Streaming chunk size.
pub(crate) const CHUNK: usize = 1 << 20;

const KIND_FILE: i64 = 0;
const KIND_DIR: i64 = 1;
const KIND_LINK: i64 = 2;

/// Default owner (`mobile`).
const MOBILE: u32 = 501;

pub(crate) fn db_path(dir: &Path) -> PathBuf {
    dir.join("store.db")
}

pub(crate) fn open_db(dir: &Path) -> Result<Connection> {
    let path = db_path(dir);
    let conn = Connection::open(&path).map_err(db(&path))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE IF NOT EXISTS files(
            domain TEXT NOT NULL, path TEXT NOT NULL, kind INTEGER NOT NULL, target TEXT,
            mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
            mtime INTEGER NOT NULL, ctime INTEGER NOT NULL, birth INTEGER NOT NULL,
            class INTEGER NOT NULL, wrapped_key BLOB, exclude INTEGER NOT NULL,
            blob TEXT, size INTEGER NOT NULL,
            PRIMARY KEY(domain, path)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS changes(id INTEGER PRIMARY KEY CHECK (id = 0), token BLOB NOT NULL);
         INSERT OR IGNORE INTO changes VALUES (0, randomblob(16));
         CREATE TRIGGER IF NOT EXISTS files_ins AFTER INSERT ON files BEGIN UPDATE changes SET token = randomblob(16); END;
         CREATE TRIGGER IF NOT EXISTS files_upd AFTER UPDATE ON files BEGIN UPDATE changes SET token = randomblob(16); END;
         CREATE TRIGGER IF NOT EXISTS files_del AFTER DELETE ON files BEGIN UPDATE changes SET token = randomblob(16); END;",
    )
    .map_err(db(&path))?;
    crate::cloudbag::add_column(&conn, "files", &path)?;
    Ok(conn)
}

/// Validates a domain and a relative path (empty paths refused unless `allow_root`).
pub(crate) fn check(domain: &str, path: &str) -> Result<()> {
    let bad = |reason: String| Error::BadPath {
        domain: domain.into(),
        path: path.into(),
        reason,
    };
    check_domain(domain).map_err(bad)?;
    check_relative_path(path).map_err(bad)?;
    if path.is_empty() {
        return Err(bad("empty path (the domain root)".into()));
    }
    Ok(())
}

/// What opening a regular file needs, as the index holds it (nothing unwrapped).
pub(crate) struct FileRef {
    wrapped: Option<Vec<u8>>,
    blob: Option<String>,
}

/// A written blob as the index records it.
pub(crate) struct StoredBlob<'a> {
    /// The file key wrapped by the class key.
    pub(crate) wrapped: &'a [u8],
    /// The blob id (32 hex digits).
    pub(crate) id: &'a str,
    /// Plaintext length.
    pub(crate) size: u64,
    /// The file key wrapped to the cloud keybag (when cloud backup is on).
    pub(crate) cloud: Option<&'a [u8]>,
}

struct Row {
    entry: Entry,
    wrapped_key: Option<Vec<u8>>,
    blob: Option<String>,
}

const COLUMNS: &str =
    "domain, path, kind, target, mode, uid, gid, mtime, ctime, birth, class, exclude, size, wrapped_key, blob";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let kind: i64 = r.get(2)?;
    let target: Option<String> = r.get(3)?;
    Ok(Row {
        entry: Entry {
            domain: r.get(0)?,
            path: r.get(1)?,
            kind: match kind {
                KIND_DIR => EntryKind::Directory,
                KIND_LINK => EntryKind::Symlink {
                    target: target.unwrap_or_default(),
                },
                _ => EntryKind::File,
            },
            mode: r.get(4)?,
            uid: r.get(5)?,
            gid: r.get(6)?,
            mtime: r.get(7)?,
            ctime: r.get(8)?,
            birth: r.get(9)?,
            class: ProtectionClass(r.get(10)?),
            exclude_from_backup: r.get::<_, i64>(11)? != 0,
            size: r.get::<_, i64>(12)? as u64,
        },
        wrapped_key: r.get(13)?,
        blob: r.get(14)?,
    })
}

fn lookup(conn: &Connection, dbp: &Path, domain: &str, path: &str) -> Result<Option<Row>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM files WHERE domain=?1 AND path=?2"),
        params![domain, path],
        row,
    )
    .optional()
    .map_err(db(dbp))
}

pub(crate) fn blob_path(dir: &Path, id: &str) -> PathBuf {
    dir.join("store").join(&id[..2]).join(id)
}

pub(crate) fn check_blob_id(dbp: &Path, id: &str) -> Result<()> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(damaged(dbp, format!("bad blob id {id:?}")));
    }
    Ok(())
}

/// An opened file: its metadata and unwrapped file key. It stays readable after the
/// device locks (an open class-B file stays usable until it is dropped).
pub struct OpenFile {
    entry: Entry,
    key: Key256,
    blob: PathBuf,
}

impl std::fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFile")
            .field("entry", &self.entry)
            .field("blob", &self.blob)
            .finish_non_exhaustive()
    }
}

impl OpenFile {
    /// The file's metadata.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }
    /// The per-file key (AES-256-CBC, zero IV, PKCS7: the backup blob format).
    pub fn file_key(&self) -> &Key256 {
        &self.key
    }
    /// The encrypted blob on disk.
    pub fn blob_path(&self) -> &Path {
        &self.blob
    }

    /// Decrypts the whole file to `out`, streaming; returns the plaintext length.
    pub fn read_to(&self, out: &mut dyn Write) -> Result<u64> {
        let p = &self.blob;
        let mut f = std::fs::File::open(p).map_err(io(p))?;
        let total = f.metadata().map_err(io(p))?.len();
        if total == 0 || total % BLOCK as u64 != 0 {
            return Err(damaged(
                p,
                format!("blob length {total} is not a positive multiple of 16"),
            ));
        }
        let mut dec = Decryptor::new(&self.key);
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0u64;
        let mut written = 0u64;
        while done < total {
            let n = ((total - done) as usize).min(CHUNK);
            f.read_exact(&mut buf[..n]).map_err(io(p))?;
            dec.decrypt(&mut buf[..n])
                .map_err(|e| damaged(p, e.to_string()))?;
            done += n as u64;
            let mut keep = n;
            if done == total {
                let pad = pkcs7_pad_len(&buf[n - BLOCK..n])
                    .map_err(|_| damaged(p, "bad padding (wrong key or damaged blob)"))?;
                keep = n - pad;
            }
            out.write_all(&buf[..keep]).map_err(io("<output>"))?;
            written += keep as u64;
        }
        zeroize::Zeroize::zeroize(&mut buf);
        if written != self.entry.size {
            return Err(damaged(
                p,
                format!("decrypted {written} bytes, index says {}", self.entry.size),
            ));
        }
        Ok(written)
    }
}

impl Device {
    pub(crate) fn store_db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wraps a fresh file key for `class`: 40 bytes (A, C, D) or 72 (B, public key only).
    pub(crate) fn wrap_file_key(&self, class: ProtectionClass, key: &Key256) -> Result<Vec<u8>> {
        let kb = crate::device::keybag_path(&self.dir);
        match class.0 {
            2 => Ok(class_b_wrap(
                &crate::bag::class_b_pub(&self.keybag, &kb)?,
                key,
            )),
            1 | 3 | 4 => Ok(wrap_key(self.class_key(class)?, key).to_vec()),
            _ => Err(Error::BadClass {
                class,
                reason: "files take classes A, B, C or D (1–4)",
            }),
        }
    }

    pub(crate) fn unwrap_file_key(
        &self,
        class: ProtectionClass,
        wrapped: &[u8],
        dbp: &Path,
    ) -> Result<Key256> {
        let ck = self.class_key(class)?;
        let r = if class.0 == 2 {
            class_b_unwrap(ck, wrapped)
        } else {
            unwrap_key(ck, wrapped)
        };
        r.map_err(|e| Error::Crypto {
            path: dbp.to_path_buf(),
            source: e,
        })
    }

    /// Creates missing parent directories of `path` (mode 0755, class C).
    fn ensure_parents(&self, conn: &Connection, domain: &str, path: &str, now: i64) -> Result<()> {
        let dbp = db_path(&self.dir);
        let mut idx = 0;
        while let Some(off) = path[idx..].find('/') {
            let parent = &path[..idx + off];
            match lookup(conn, &dbp, domain, parent)? {
                Some(r) if r.entry.kind == EntryKind::Directory => {}
                Some(_) => {
                    return Err(Error::WrongKind {
                        domain: domain.into(),
                        path: parent.into(),
                        reason: "is not a directory",
                    })
                }
                None => self.insert_dir(conn, domain, parent, 0o755, now, false)?,
            }
            idx += off + 1;
        }
        Ok(())
    }

    fn insert_dir(
        &self,
        conn: &Connection,
        domain: &str,
        path: &str,
        mode: u32,
        now: i64,
        exclude: bool,
    ) -> Result<()> {
        conn.execute(
            "INSERT INTO files(domain, path, kind, target, mode, uid, gid, mtime, ctime, birth,
                class, wrapped_key, exclude, blob, size)
             VALUES(?1, ?2, ?3, NULL, ?4, ?5, ?5, ?6, ?6, ?6, 3, NULL, ?7, NULL, 0)",
            params![
                domain,
                path,
                KIND_DIR,
                mode & 0o7777,
                MOBILE,
                now,
                exclude as i64
            ],
        )
        .map_err(db(db_path(&self.dir)))?;
        Ok(())
    }

    /// Stores a file (creating parent directories, replacing an existing file). Class B
    /// works while locked (only the class public key is needed); A needs the device
    /// unlocked, C after first unlock.
    pub fn put(
        &mut self,
        domain: &str,
        path: &str,
        data: &mut dyn Read,
        opts: &PutOptions,
    ) -> Result<()> {
        check(domain, path)?;
        let key = Key256::random();
        let wrapped = self.wrap_file_key(opts.class, &key)?;
        let cloud = self.cloud_wrap(opts.class, &key);
        let id = hex::encode(&Key256::random().as_bytes()[..16]);
        let blob = blob_path(&self.dir, &id);
        let parent = blob.parent().expect("store/xx");
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let tmp = blob.with_extension("tmp");
        // One file: a buffer of its own (the batch path reuses one per worker).
        let mut buf = vec![0u8; CHUNK];
        let size = match crate::batch::encrypt_with(&key, data, &tmp, domain, path, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, &blob).map_err(io(&blob))?;
        let res = self.index_file(domain, path, opts, &wrapped, cloud.as_deref(), &id, size);
        match res {
            Ok(old) => {
                if let Some(old) = old {
                    let _ = std::fs::remove_file(blob_path(&self.dir, &old));
                }
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&blob);
                Err(e)
            }
        }
    }

    /// Inserts or replaces the row; returns the replaced blob id.
    #[allow(clippy::too_many_arguments)]
    fn index_file(
        &self,
        domain: &str,
        path: &str,
        opts: &PutOptions,
        wrapped: &[u8],
        cloud: Option<&[u8]>,
        id: &str,
        size: u64,
    ) -> Result<Option<String>> {
        let dbp = db_path(&self.dir);
        let now = self.now();
        let mut conn = self.store_db();
        let tx = conn.transaction().map_err(db(&dbp))?;
        let blob = StoredBlob {
            wrapped,
            id,
            size,
            cloud,
        };
        let old = self.index_file_in(&tx, now, domain, path, opts, &blob)?;
        tx.commit().map_err(db(&dbp))?;
        Ok(old)
    }

    /// [`Device::index_file`] inside the caller's transaction (a batch indexes many files
    /// in one); returns the replaced blob id.
    pub(crate) fn index_file_in(
        &self,
        tx: &Connection,
        now: i64,
        domain: &str,
        path: &str,
        opts: &PutOptions,
        blob: &StoredBlob<'_>,
    ) -> Result<Option<String>> {
        let dbp = db_path(&self.dir);
        let StoredBlob {
            wrapped,
            id,
            size,
            cloud,
        } = *blob;
        let old = lookup(tx, &dbp, domain, path)?;
        let birth = match &old {
            Some(r) if r.entry.kind != EntryKind::File => {
                return Err(Error::WrongKind {
                    domain: domain.into(),
                    path: path.into(),
                    reason: "exists and is not a regular file",
                })
            }
            Some(r) => r.entry.birth,
            None => now,
        };
        self.ensure_parents(tx, domain, path, now)?;
        // A file a backup leaves out gets no cloud wrap (see `cloudbag`).
        let cloud = match cloud {
            Some(c)
                if !crate::cloudbag::left_out(
                    tx,
                    &dbp,
                    domain,
                    path,
                    opts.exclude_from_backup,
                )? =>
            {
                Some(c)
            }
            _ => None,
        };
        tx.execute(
            "INSERT OR REPLACE INTO files(domain, path, kind, target, mode, uid, gid, mtime,
                ctime, birth, class, wrapped_key, exclude, blob, size, cloud_key)
             VALUES(?1, ?2, ?3, NULL, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                domain,
                path,
                KIND_FILE,
                opts.mode & 0o7777,
                opts.uid,
                opts.gid,
                opts.mtime.unwrap_or(now),
                now,
                birth,
                opts.class.0,
                wrapped,
                opts.exclude_from_backup as i64,
                id,
                size as i64,
                cloud
            ],
        )
        .map_err(db(&dbp))?;
        Ok(old.and_then(|r| r.blob))
    }

    /// Creates a directory (and its parents). An existing directory is kept.
    pub fn mkdir(&mut self, domain: &str, path: &str, mode: u32) -> Result<()> {
        self.mkdir_with(domain, path, mode, false)
    }

    fn mkdir_with(&mut self, domain: &str, path: &str, mode: u32, exclude: bool) -> Result<()> {
        check(domain, path)?;
        let dbp = db_path(&self.dir);
        let now = self.now();
        let mut conn = self.store_db();
        let tx = conn.transaction().map_err(db(&dbp))?;
        match lookup(&tx, &dbp, domain, path)? {
            Some(r) if r.entry.kind == EntryKind::Directory => return Ok(()),
            Some(_) => {
                return Err(Error::WrongKind {
                    domain: domain.into(),
                    path: path.into(),
                    reason: "exists and is not a directory",
                })
            }
            None => {}
        }
        self.ensure_parents(&tx, domain, path, now)?;
        self.insert_dir(&tx, domain, path, mode, now, exclude)?;
        tx.commit().map_err(db(&dbp))
    }

    /// Creates a symbolic link (no blob; the target is stored as given, NUL refused).
    pub fn symlink(&mut self, domain: &str, path: &str, target: &str) -> Result<()> {
        check(domain, path)?;
        if target.is_empty() || target.contains('\0') {
            return Err(Error::BadPath {
                domain: domain.into(),
                path: path.into(),
                reason: "symlink target is empty or contains NUL".into(),
            });
        }
        let dbp = db_path(&self.dir);
        let now = self.now();
        let mut conn = self.store_db();
        let tx = conn.transaction().map_err(db(&dbp))?;
        if lookup(&tx, &dbp, domain, path)?.is_some() {
            return Err(Error::WrongKind {
                domain: domain.into(),
                path: path.into(),
                reason: "already exists",
            });
        }
        self.ensure_parents(&tx, domain, path, now)?;
        tx.execute(
            "INSERT INTO files(domain, path, kind, target, mode, uid, gid, mtime, ctime, birth,
                class, wrapped_key, exclude, blob, size)
             VALUES(?1, ?2, ?3, ?4, 493, ?5, ?5, ?6, ?6, ?6, 3, NULL, 0, NULL, 0)",
            params![domain, path, KIND_LINK, target, MOBILE, now],
        )
        .map_err(db(&dbp))?;
        tx.commit().map_err(db(&dbp))
    }

    /// Opens a regular file: unwraps its key (fails with [`Error::ClassUnavailable`] when
    /// the class key is not held in the current lock state).
    pub fn open_file(&self, domain: &str, path: &str) -> Result<OpenFile> {
        check(domain, path)?;
        let dbp = db_path(&self.dir);
        let r = lookup(&self.store_db(), &dbp, domain, path)?.ok_or_else(|| Error::NotFound {
            domain: domain.into(),
            path: path.into(),
        })?;
        if r.entry.kind != EntryKind::File {
            return Err(Error::WrongKind {
                domain: domain.into(),
                path: path.into(),
                reason: "is not a regular file",
            });
        }
        let fref = FileRef {
            wrapped: r.wrapped_key,
            blob: r.blob,
        };
        self.open_ref(r.entry, &fref)
    }

    /// Every entry, sorted by domain and path, with what opening a regular file needs
    /// (read in the same query, so that a backup's workers open files without going back
    /// to the index, whose connection is shared).
    pub(crate) fn entries_with_refs(&self) -> Result<Vec<(Entry, Option<FileRef>)>> {
        let dbp = db_path(&self.dir);
        let conn = self.store_db();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM files ORDER BY domain, path"
            ))
            .map_err(db(&dbp))?;
        let rows = stmt
            .query_map([], row)
            .map_err(db(&dbp))?
            .map(|r| {
                r.map(|r| {
                    let fref = (r.entry.kind == EntryKind::File).then_some(FileRef {
                        wrapped: r.wrapped_key,
                        blob: r.blob,
                    });
                    (r.entry, fref)
                })
            })
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db(&dbp))?;
        Ok(rows)
    }

    /// Opens the regular file `entry` listed by [`entries_with_refs`](Self::entries_with_refs):
    /// unwraps its key (fails with [`Error::ClassUnavailable`] when the class key is not held).
    pub(crate) fn open_ref(&self, entry: Entry, fref: &FileRef) -> Result<OpenFile> {
        let dbp = db_path(&self.dir);
        let (domain, path) = (&entry.domain, &entry.path);
        let wrapped = fref
            .wrapped
            .as_ref()
            .ok_or_else(|| damaged(&dbp, format!("{domain}/{path} has no file key")))?;
        let id = fref
            .blob
            .as_ref()
            .ok_or_else(|| damaged(&dbp, format!("{domain}/{path} has no blob")))?;
        check_blob_id(&dbp, id)?;
        let key = self.unwrap_file_key(entry.class, wrapped, &dbp)?;
        let blob = blob_path(&self.dir, id);
        Ok(OpenFile { entry, key, blob })
    }

    /// Decrypts a file to `out`; returns its length.
    pub fn get(&self, domain: &str, path: &str, out: &mut dyn Write) -> Result<u64> {
        self.open_file(domain, path)?.read_to(out)
    }

    /// A token that changes with every change to the files or the keychain (random, set by
    /// SQLite triggers on every insert, update and delete, so no code path can forget it;
    /// a copied folder changed differently gets another token). Lets a backup see that
    /// nothing changed since the last one without reading anything else.
    pub(crate) fn change_token(&self) -> Result<Vec<u8>> {
        let get = |conn: &Connection, path: &Path| -> Result<Vec<u8>> {
            conn.query_row("SELECT token FROM changes WHERE id = 0", [], |r| r.get(0))
                .map_err(db(path))
        };
        let mut t = get(&self.store_db(), &db_path(&self.dir))?;
        let kc = crate::keychain::db_path(&self.dir);
        t.extend(get(&self.keychain_db(), &kc)?);
        Ok(t)
    }

    /// Metadata of every entry (of one domain), sorted by domain and path. Needs no class key.
    pub fn entries(&self, domain: Option<&str>) -> Result<Vec<Entry>> {
        let dbp = db_path(&self.dir);
        let conn = self.store_db();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM files WHERE ?1 IS NULL OR domain = ?1 ORDER BY domain, path"
            ))
            .map_err(db(&dbp))?;
        let rows = stmt
            .query_map(params![domain], row)
            .map_err(db(&dbp))?
            .map(|r| r.map(|r| r.entry))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db(&dbp))?;
        Ok(rows)
    }

    /// Every entry with its blob id and cloud wrap, in domain and path order.
    pub(crate) fn entries_with_cloud_keys(&self) -> Result<Vec<EntryWithCloud>> {
        let dbp = db_path(&self.dir);
        let conn = self.store_db();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS}, cloud_key FROM files ORDER BY domain, path"
            ))
            .map_err(db(&dbp))?;
        let rows = stmt
            .query_map([], |r| {
                let x = row(r)?;
                Ok((x.entry, x.blob, r.get::<_, Option<Vec<u8>>>(15)?))
            })
            .map_err(db(&dbp))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db(&dbp))?;
        for (_, blob, _) in &rows {
            if let Some(id) = blob {
                check_blob_id(&dbp, id)?;
            }
        }
        Ok(rows)
    }

    /// Removes a file, a symlink or an empty directory.
    pub fn remove(&mut self, domain: &str, path: &str) -> Result<()> {
        check(domain, path)?;
        let dbp = db_path(&self.dir);
        let mut conn = self.store_db();
        let tx = conn.transaction().map_err(db(&dbp))?;
        let r = lookup(&tx, &dbp, domain, path)?.ok_or_else(|| Error::NotFound {
            domain: domain.into(),
            path: path.into(),
        })?;
        if r.entry.kind == EntryKind::Directory {
            let children: i64 = tx
                .query_row(
                    "SELECT count(*) FROM files WHERE domain = ?1 AND substr(path, 1, ?3) = ?2",
                    params![domain, format!("{path}/"), path.len() as i64 + 1],
                    |r| r.get(0),
                )
                .map_err(db(&dbp))?;
            if children > 0 {
                return Err(Error::WrongKind {
                    domain: domain.into(),
                    path: path.into(),
                    reason: "directory is not empty",
                });
            }
        }
        tx.execute(
            "DELETE FROM files WHERE domain=?1 AND path=?2",
            params![domain, path],
        )
        .map_err(db(&dbp))?;
        tx.commit().map_err(db(&dbp))?;
        if let Some(id) = r.blob {
            if check_blob_id(&dbp, &id).is_ok() {
                let p = blob_path(&self.dir, &id);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&p)(e)),
                }
            }
        }
        Ok(())
    }

    /// Sets or clears the "exclude from backup" flag.
    pub fn set_exclude_from_backup(
        &mut self,
        domain: &str,
        path: &str,
        exclude: bool,
    ) -> Result<()> {
        check(domain, path)?;
        let dbp = db_path(&self.dir);
        let conn = self.store_db();
        let n = conn
            .execute(
                "UPDATE files SET exclude=?3 WHERE domain=?1 AND path=?2",
                params![domain, path, exclude as i64],
            )
            .map_err(db(&dbp))?;
        if n == 0 {
            return Err(Error::NotFound {
                domain: domain.into(),
                path: path.into(),
            });
        }
        if exclude {
            // Left out of backups from now on: its cloud wraps (and those of everything
            // under a folder) go, so a server's keybag opens none of them.
            conn.execute(
                "UPDATE files SET cloud_key = NULL WHERE domain=?1
                 AND (path=?2 OR substr(path, 1, length(?2) + 1) = ?2 || '/')",
                params![domain, path],
            )
            .map_err(db(&dbp))?;
        } else {
            drop(conn);
            self.cloud_add_missing_wraps()?;
        }
        Ok(())
    }

    /// Changes a file's class: one rewrap of its key; the blob is untouched. Needs the
    /// old class key (to unwrap) and the new one (B: its public key).
    pub fn set_class(&mut self, domain: &str, path: &str, class: ProtectionClass) -> Result<()> {
        let file = self.open_file(domain, path)?;
        let wrapped = self.wrap_file_key(class, &file.key)?;
        let dbp = db_path(&self.dir);
        let conn = self.store_db();
        let left_out =
            crate::cloudbag::left_out(&conn, &dbp, domain, path, file.entry.exclude_from_backup)?;
        let cloud = self.cloud_wrap(class, &file.key).filter(|_| !left_out);
        conn.execute(
            "UPDATE files SET class=?3, wrapped_key=?4, cloud_key=?5 WHERE domain=?1 AND path=?2",
            params![domain, path, class.0, wrapped, cloud],
        )
        .map_err(db(&dbp))?;
        Ok(())
    }

    /// Creates the container `AppDomain-<bundle>` with `Documents`, `Library`,
    /// `Library/Preferences`, `Library/Caches` and `tmp` (the last two excluded from backup).
    pub fn install_app(&mut self, bundle: &str) -> Result<()> {
        let domain = format!("AppDomain-{bundle}");
        if bundle.is_empty()
            || !bundle
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            || bundle.starts_with('.')
        {
            return Err(Error::BadPath {
                domain,
                path: String::new(),
                reason: "a bundle id is letters, digits, '.', '-' and '_'".into(),
            });
        }
        for (p, exclude) in [
            ("Documents", false),
            ("Library", false),
            ("Library/Preferences", false),
            ("Library/Caches", true),
            ("tmp", true),
        ] {
            self.mkdir_with(&domain, p, 0o755, exclude)?;
        }
        Ok(())
    }

    /// Bundle ids of installed apps (domains `AppDomain-*`), sorted.
    pub fn apps(&self) -> Result<Vec<String>> {
        let dbp = db_path(&self.dir);
        let conn = self.store_db();
        let mut stmt = conn
            .prepare(
                "SELECT DISTINCT domain FROM files WHERE substr(domain, 1, 10) = 'AppDomain-' ORDER BY domain",
            )
            .map_err(db(&dbp))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(db(&dbp))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db(&dbp))?;
        Ok(rows
            .into_iter()
            .map(|d| d["AppDomain-".len()..].to_string())
            .collect())
    }
}
