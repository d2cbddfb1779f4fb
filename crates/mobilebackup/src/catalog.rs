//! `Manifest.db` → [`Catalog`]: loading a hostile SQLite image safely and reading its rows.
//!
//! `Manifest.db` comes from the backup, so its schema is attacker-chosen. A `Files` that is a
//! view over an endless recursive query once made SQLite write an endless temp file, so the
//! image is checked before anything is queried, and SQLite runs fenced in:
//!
//! * `Files` must be an ordinary table with the five columns Apple writes (none of them
//!   generated); the database may hold no view, trigger or virtual table at all.
//! * Views, triggers and schema functions are switched off (`SQLITE_DBCONFIG_ENABLE_VIEW`,
//!   `…ENABLE_TRIGGER`, `…TRUSTED_SCHEMA`), defensive mode on, the connection read-only.
//! * Temp storage is memory only (never a file) and the main and temp databases may not grow
//!   (`max_page_count`); strings and blobs are capped ([`MAX_VALUE_BYTES`]); a progress
//!   handler stops any statement that runs far longer than a scan of the image could.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::config::DbConfig;
use rusqlite::limits::Limit;
use rusqlite::{Connection, OpenFlags};

use crate::layout;
use crate::mbfile;
use crate::reader::{Catalog, Record};
use crate::{Error, Result};

/// SQLite's file magic.
pub(crate) const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Largest string or blob a row may hold (real MBFiles are a few kilobytes).
pub const MAX_VALUE_BYTES: i32 = 16 << 20;

/// Virtual-machine steps a statement may take per page of the image, plus a fixed allowance:
/// a full scan and sort of `Files` takes a few hundred per page; a runaway query is stopped.
const STEPS_PER_PAGE: u64 = 20_000;
const STEPS_BASE: u64 = 50_000_000;
/// How often (in VM steps) the progress handler runs.
const STEP_GRANULE: i32 = 10_000;

/// The columns `Files` must have (Apple's schema, [`layout::SCHEMA`]).
const COLUMNS: [&str; 5] = ["fileID", "domain", "relativePath", "flags", "file"];

/// Loads the SQLite image streamed by `reader` (`len` bytes, whole pages only) into a fenced
/// in-memory connection and checks its schema. `path` names it in errors.
pub(crate) fn load(path: &Path, mut reader: impl Read, len: u64) -> Result<Connection> {
    let mut head = [0u8; 100];
    if len < 100 || reader.read_exact(&mut head).is_err() || &head[..16] != SQLITE_MAGIC {
        return Err(Error::malformed(
            path,
            "Manifest.db is not a SQLite database",
        ));
    }
    // SQLite's in-memory VFS rejects a trailing partial page, and Apple's Manifest.db of an
    // unencrypted backup keeps the 16-byte padding block (spec §5.3): load whole pages
    // only. Page size 1 means 65536.
    let page = match u16::from_be_bytes([head[16], head[17]]) {
        1 => 65536,
        p => p as u64,
    };
    if page < 512 || !page.is_power_of_two() {
        return Err(Error::malformed(
            path,
            format!("Manifest.db has an invalid page size {page}"),
        ));
    }
    let pages = len / page;
    let whole = usize::try_from(pages * page)
        .map_err(|_| Error::malformed(path, "Manifest.db is too large for this machine"))?;
    let sql = |e: rusqlite::Error| Error::malformed(path, format!("SQLite: {e}"));
    let mut conn = Connection::open_with_flags(
        ":memory:",
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    fence(&conn, pages).map_err(sql)?;
    // A WAL-mode header (bytes 18–19 = 2, as in real iOS 14 backups) cannot be opened from
    // memory; mark it rollback-journal in our copy only.
    head[18] = 1;
    head[19] = 1;
    let stream = std::io::Cursor::new(head).chain(reader);
    conn.deserialize_read_exact(rusqlite::MAIN_DB, stream, whole, true)
        .map_err(|e| Error::malformed(path, format!("cannot load Manifest.db: {e}")))?;
    // The image may not grow, whatever a statement tries.
    conn.pragma_update(None, "max_page_count", pages.max(1))
        .map_err(sql)?;
    conn.pragma_update(None, "query_only", true).map_err(sql)?;
    check_schema(&conn, path)?;
    budget(&conn, pages);
    Ok(conn)
}

/// Switches off what a hostile schema could make SQLite do before anything is read.
fn fence(conn: &Connection, pages: u64) -> rusqlite::Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    conn.set_limit(Limit::SQLITE_LIMIT_EXPR_DEPTH, 100)?;
    conn.set_limit(Limit::SQLITE_LIMIT_COMPOUND_SELECT, 10)?;
    // Temp b-trees (sorting, DISTINCT) in memory, never in a file, and bounded.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(Some("temp"), "max_page_count", (pages * 2).max(1024))?;
    conn.pragma_update(None, "cell_size_check", true)?;
    Ok(())
}

/// Stops any statement after a number of VM steps proportional to the image's size.
fn budget(conn: &Connection, pages: u64) {
    let limit = STEPS_BASE + STEPS_PER_PAGE * pages;
    let steps = Arc::new(AtomicU64::new(0));
    conn.progress_handler(
        STEP_GRANULE,
        Some(move || steps.fetch_add(STEP_GRANULE as u64, Ordering::Relaxed) > limit),
    );
}

/// `Files` must be a plain table with Apple's columns; no view, trigger or virtual table may
/// exist (Apple writes none, and each can run code when `Files` is read).
fn check_schema(conn: &Connection, path: &Path) -> Result<()> {
    let sql = |e: rusqlite::Error| Error::malformed(path, format!("Manifest.db schema: {e}"));
    let mut stmt = conn
        .prepare("SELECT type, name, sql FROM sqlite_schema")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let mut files = None;
    while let Some(r) = rows.next().map_err(sql)? {
        let kind: String = r.get(0).map_err(sql)?;
        let name: String = r.get(1).map_err(sql)?;
        let text: Option<String> = r.get(2).map_err(sql)?;
        let text = text.unwrap_or_default();
        let shown = name.escape_debug().to_string();
        if kind == "view" || kind == "trigger" {
            return Err(Error::malformed(
                path,
                format!(
                    "Manifest.db has a {kind} ({shown}); Apple's has none, refusing to read it"
                ),
            ));
        }
        let upper = text.trim_start().to_ascii_uppercase();
        if kind == "table" && upper.starts_with("CREATE VIRTUAL") {
            return Err(Error::malformed(
                path,
                format!("Manifest.db has a virtual table ({shown}); refusing to read it"),
            ));
        }
        if name.eq_ignore_ascii_case("Files") {
            files = Some(kind);
        }
    }
    match files.as_deref() {
        Some("table") => {}
        Some(other) => {
            return Err(Error::malformed(
                path,
                format!("Manifest.db: Files is a {other}, not a table"),
            ))
        }
        None => return Err(Error::malformed(path, "Manifest.db has no Files table")),
    }
    // table_xinfo's `hidden`: 0 ordinary, 1 hidden (virtual tables), 2/3 generated columns.
    let mut stmt = conn
        .prepare("SELECT name, hidden FROM pragma_table_xinfo('Files')")
        .map_err(sql)?;
    let cols: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sql)?
        .collect::<rusqlite::Result<_>>()
        .map_err(sql)?;
    for want in COLUMNS {
        match cols.iter().find(|(n, _)| n.eq_ignore_ascii_case(want)) {
            None => {
                return Err(Error::malformed(
                    path,
                    format!("Manifest.db: Files has no {want} column"),
                ))
            }
            Some((_, hidden)) if *hidden != 0 => {
                return Err(Error::malformed(
                    path,
                    format!("Manifest.db: Files.{want} is a generated column; refusing to read it"),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Reads every row of a loaded `Manifest.db`. Rows that fail to decode are kept with a
/// `problem`; so is every row after the first with the same fileID (both would name one
/// blob, so the later one is not trusted); rows with NULL or non-text key columns are
/// listed in `skipped`.
pub(crate) fn read(conn: &Connection, path: &Path) -> Result<Catalog> {
    let sql_err = |e: rusqlite::Error| {
        let why = if matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::OperationInterrupted)
        ) {
            "a query over it ran far longer than its size allows (hostile or corrupt)".to_string()
        } else {
            e.to_string()
        };
        Error::malformed(path, format!("Manifest.db is corrupt: {why}"))
    };
    let mut stmt = conn
        .prepare("SELECT fileID, domain, relativePath, flags, file FROM Files ORDER BY domain, relativePath")
        .map_err(sql_err)?;
    let mut rows = stmt.query([]).map_err(sql_err)?;
    let mut cat = Catalog::default();
    let mut first_of: HashMap<String, usize> = HashMap::new();
    while let Some(row) = rows.next().map_err(sql_err)? {
        let file_id: Option<String> = row.get(0).ok();
        let domain: Option<String> = row.get(1).ok();
        let rel: Option<String> = row.get(2).ok();
        let flags: Option<i64> = row.get(3).ok();
        let blob: Option<Vec<u8>> = row.get(4).ok();
        let (Some(file_id), Some(domain), Some(relative_path), Some(flags)) =
            (file_id.clone(), domain, rel, flags)
        else {
            cat.skipped.push(format!(
                "row with fileID {:?} has NULL or non-text columns",
                file_id.unwrap_or_default()
            ));
            continue;
        };
        let mut rec = Record {
            file_id,
            domain,
            relative_path,
            flags,
            file: None,
            problem: None,
            raw: Vec::new(),
        };
        rec.problem = check_record(&mut rec, blob.as_deref());
        if let Some(&first) = first_of.get(&rec.file_id) {
            rec.problem.get_or_insert_with(|| {
                format!(
                    "fileID {} is also the row of {}; only the first is trusted",
                    rec.file_id,
                    cat.records[first].display_path()
                )
            });
        } else {
            first_of.insert(rec.file_id.clone(), cat.records.len());
        }
        rec.raw = blob.unwrap_or_default();
        cat.records.push(rec);
    }
    Ok(cat)
}

impl Catalog {
    /// The rows that could not be read at all ([`Catalog::skipped`]) as problems: damage,
    /// reported under the path `Manifest.db`.
    pub fn skipped_problems(&self) -> Vec<crate::extract::Problem> {
        self.skipped
            .iter()
            .map(|why| crate::extract::Problem {
                path: layout::MANIFEST_DB.into(),
                kind: crate::extract::ProblemKind::BadRecord,
                message: format!("a row left out: {why}"),
            })
            .collect()
    }
}

/// The catalog of a plain (unencrypted or already decrypted) `Manifest.db` image, with every
/// check that [`crate::Backup::catalog`] applies. Used by the fuzzers and by callers that hold
/// the bytes already.
pub fn catalog_from_db_bytes(bytes: &[u8]) -> Result<Catalog> {
    let path = Path::new(layout::MANIFEST_DB);
    let conn = load(path, bytes, bytes.len() as u64)?;
    read(&conn, path)
}

/// Validates a row and decodes its MBFile; returns the problem, if any.
fn check_record(rec: &mut Record, blob: Option<&[u8]>) -> Option<String> {
    if let Err(e) = layout::check_domain(&rec.domain) {
        return Some(format!("unsafe domain: {e}"));
    }
    if let Err(e) = layout::check_relative_path(&rec.relative_path) {
        return Some(format!("unsafe relativePath: {e}"));
    }
    if !layout::is_valid_file_id(&rec.file_id) {
        return Some(format!(
            "fileID {:?} is not 40 lowercase hex digits",
            rec.file_id.escape_debug().to_string()
        ));
    }
    let Some(blob) = blob else {
        return Some("no MBFile (file column is NULL)".into());
    };
    match mbfile::decode(blob) {
        Ok(f) => {
            let problem = if f.relative_path != rec.relative_path {
                Some(format!(
                    "MBFile RelativePath {:?} differs from the row's",
                    f.relative_path
                ))
            } else {
                None
            };
            rec.file = Some(f);
            problem
        }
        Err(e) => Some(format!("MBFile does not decode: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifestdb::{build, Row};

    fn rows(n: usize) -> Vec<Row> {
        (0..n)
            .map(|i| {
                let rel = format!("Library/f{i}");
                Row {
                    file_id: layout::file_id("HomeDomain", &rel),
                    domain: "HomeDomain".into(),
                    relative_path: rel.clone(),
                    flags: 1,
                    file: mbfile::encode(&mbfile::MbFile {
                        relative_path: rel,
                        mode: 0o100644,
                        ..Default::default()
                    }),
                }
            })
            .collect()
    }

    /// A database made by `setup` (SQL run on a fresh in-memory database), as bytes.
    fn image(setup: &str) -> Vec<u8> {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(setup).unwrap();
        conn.serialize(rusqlite::MAIN_DB).unwrap().to_vec()
    }

    fn refused(bytes: &[u8]) -> String {
        catalog_from_db_bytes(bytes).unwrap_err().to_string()
    }

    #[test]
    fn reads_what_the_writer_builds() {
        let db = build(&rows(50)).unwrap();
        let cat = catalog_from_db_bytes(&db).unwrap();
        assert_eq!(cat.records.len(), 50);
        assert!(cat.records.iter().all(|r| r.problem.is_none()));
    }

    #[test]
    fn views_triggers_virtual_tables_and_generated_columns_are_refused() {
        let endless = image(
            "CREATE TABLE real(fileID TEXT, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB);
             CREATE VIEW Files AS WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n + 1 FROM r)
               SELECT hex(n) AS fileID, 'D' AS domain, hex(n) AS relativePath, 1 AS flags,
                      NULL AS file FROM r;",
        );
        let e = refused(&endless);
        assert!(e.contains("view (Files)"), "{e}");
        let trigger = image(
            "CREATE TABLE Files(fileID TEXT, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB);
             CREATE TABLE log(x);
             CREATE TRIGGER t AFTER INSERT ON Files BEGIN INSERT INTO log VALUES (1); END;",
        );
        assert!(refused(&trigger).contains("trigger (t)"));
        let fts = image(
            "CREATE VIRTUAL TABLE Files USING fts5(fileID, domain, relativePath, flags, file);",
        );
        assert!(refused(&fts).contains("virtual table"));
        let generated = image(
            "CREATE TABLE Files(fileID TEXT, domain TEXT, relativePath TEXT, flags INTEGER,
                 file BLOB GENERATED ALWAYS AS (zeroblob(1000000 * flags)) VIRTUAL);
             INSERT INTO Files(fileID, domain, relativePath, flags) VALUES ('a', 'b', 'c', 1);",
        );
        assert!(refused(&generated).contains("generated column"));
        let missing = image("CREATE TABLE Files(fileID TEXT, domain TEXT, flags INTEGER);");
        assert!(refused(&missing).contains("no relativePath column"));
        let none = image("CREATE TABLE Other(x);");
        assert!(refused(&none).contains("no Files table"));
    }

    #[test]
    fn oversized_values_are_refused() {
        let db = image(
            "CREATE TABLE Files(fileID TEXT, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB);",
        );
        // A value over the cap, written with a connection that has no cap.
        let conn = {
            let mut c = Connection::open_in_memory().unwrap();
            c.deserialize_read_exact(rusqlite::MAIN_DB, &db[..], db.len(), false)
                .unwrap();
            c
        };
        conn.execute(
            "INSERT INTO Files VALUES ('a', 'HomeDomain', 'x', 1, zeroblob(?1))",
            [MAX_VALUE_BYTES as i64 + 1],
        )
        .unwrap();
        let big = conn.serialize(rusqlite::MAIN_DB).unwrap().to_vec();
        let e = refused(&big);
        assert!(e.contains("too big") || e.contains("corrupt"), "{e}");
    }

    #[test]
    fn runaway_statements_are_stopped() {
        let db = build(&rows(3)).unwrap();
        let conn = load(Path::new("Manifest.db"), &db[..], db.len() as u64).unwrap();
        // Views are off, but a statement of our own can still loop: the budget stops it.
        let e = conn
            .query_row(
                "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_err();
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::OperationInterrupted),
            "{e}"
        );
    }

    #[test]
    fn duplicate_file_ids_keep_the_first_row() {
        let mut r = rows(2);
        r[1].file_id = r[0].file_id.clone();
        // The writer's schema has fileID as PRIMARY KEY; a hostile one does not.
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE Files(fileID TEXT, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB);",
        )
        .unwrap();
        for row in &r {
            conn.execute(
                "INSERT INTO Files VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    row.file_id,
                    row.domain,
                    row.relative_path,
                    row.flags,
                    row.file
                ],
            )
            .unwrap();
        }
        let bytes = conn.serialize(rusqlite::MAIN_DB).unwrap().to_vec();
        let cat = catalog_from_db_bytes(&bytes).unwrap();
        assert!(cat.records[0].problem.is_none());
        let p = cat.records[1].problem.as_deref().unwrap();
        assert!(p.contains("also the row of HomeDomain/Library/f0"), "{p}");
    }
}
