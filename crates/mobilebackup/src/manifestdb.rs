//! Building a `Manifest.db` in memory (its plaintext must not touch the disk
//! when the backup is encrypted).

use rusqlite::Connection;
use zeroize::Zeroizing;

use crate::layout::SCHEMA;

/// One `Files` row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// `fileID`.
    pub file_id: String,
    /// `domain`.
    pub domain: String,
    /// `relativePath`.
    pub relative_path: String,
    /// `flags` (1 file, 2 dir, 4 symlink).
    pub flags: i64,
    /// `file`: the MBFile keyed archive.
    pub file: Vec<u8>,
}

/// The bytes of a SQLite database with Apple's schema holding `rows`, in
/// rollback-journal mode with 4096-byte pages, as iOS writes it.
pub fn build(rows: &[Row]) -> rusqlite::Result<Zeroizing<Vec<u8>>> {
    let mut conn = Connection::open_in_memory()?;
    // temp_store: SQLite must not spill plaintext to a temp file.
    conn.execute_batch(
        "PRAGMA page_size = 4096; PRAGMA temp_store = MEMORY; PRAGMA journal_mode = DELETE;",
    )?;
    // The Files table, its rows, then the rest of the schema in order (its indexes and
    // Properties): SQLite builds an index from sorted keys far faster than it maintains
    // three through 10,000 inserts, and `sqlite_master` keeps Apple's order. Rows go in
    // fileID order for the same reason.
    let mut statements = SCHEMA.split(';').map(str::trim).filter(|s| !s.is_empty());
    let files_table = statements.next().expect("the schema starts with Files");
    debug_assert!(files_table.starts_with("CREATE TABLE Files"));
    conn.execute_batch(files_table)?;
    let mut order: Vec<&Row> = rows.iter().collect();
    order.sort_unstable_by(|a, b| a.file_id.cmp(&b.file_id));
    let tx = conn.transaction()?;
    {
        let mut stmt =
            tx.prepare("INSERT INTO Files (fileID, domain, relativePath, flags, file) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for r in order {
            stmt.execute(rusqlite::params![
                r.file_id,
                r.domain,
                r.relative_path,
                r.flags,
                r.file
            ])?;
        }
        for rest in statements {
            tx.execute_batch(rest)?;
        }
    }
    tx.commit()?;
    let data = conn.serialize(rusqlite::MAIN_DB)?;
    Ok(Zeroizing::new(data.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_page_aligned_rollback_database() {
        let rows = vec![Row {
            file_id: "a".repeat(40),
            domain: "HomeDomain".into(),
            relative_path: "x".into(),
            flags: 1,
            file: vec![1, 2, 3],
        }];
        let db = build(&rows).unwrap();
        assert_eq!(&db[..16], b"SQLite format 3\0");
        assert_eq!(db.len() % 4096, 0);
        assert_eq!(u16::from_be_bytes([db[16], db[17]]), 4096);
        assert_eq!((db[18], db[19]), (1, 1), "rollback journal, not WAL");
        let mut conn = Connection::open_in_memory().unwrap();
        conn.deserialize_read_exact(rusqlite::MAIN_DB, &db[..], db.len(), true)
            .unwrap();
        let (n, f): (i64, Vec<u8>) = conn
            .query_row(
                "SELECT count(*), file FROM Files WHERE domain='HomeDomain'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((n, f), (1, vec![1, 2, 3]));
        let idx: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='index' AND name LIKE 'Files%Idx'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(idx, 3);
    }
}
