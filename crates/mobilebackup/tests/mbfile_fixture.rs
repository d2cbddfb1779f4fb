//! `mbfile` against every `Files.file` blob of the MVT iOS 14.3 fixture (unencrypted Manifest.db
//! of an encrypted backup: 3,721 rows).

use std::collections::BTreeMap;
use std::path::PathBuf;

use mobilebackup::mbfile::{decode, encode, MbFile};
use plist::Value;
use rusqlite::{Connection, OpenFlags};

struct Row {
    file_id: String,
    relative_path: String,
    flags: i64,
    blob: Vec<u8>,
}

fn fixture_rows() -> Vec<Row> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/mvt-ios-backup/Manifest.db");
    let path = path.canonicalize().expect("fixture Manifest.db exists");
    // Read-only and immutable: the file is in WAL mode, and a plain read-only open would leave
    // Manifest.db-shm / -wal next to the fixture. (It also carries a trailing 16-byte padding
    // block, which SQLite ignores.)
    let uri = format!("file:{}?immutable=1", path.display());
    let conn = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .expect("open fixture Manifest.db");
    let mut stmt = conn
        .prepare("SELECT fileID, relativePath, flags, file FROM Files ORDER BY fileID")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| {
            Ok(Row {
                file_id: r.get(0)?,
                relative_path: r.get(1)?,
                flags: r.get(2)?,
                blob: r.get(3)?,
            })
        })
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    rows
}

/// `$objects[1]` of a raw blob, read with plist::Value only (independent of the decoder).
fn raw_objects(blob: &[u8]) -> Vec<Value> {
    let v: Value = plist::from_bytes(blob).expect("raw plist");
    v.as_dictionary()
        .and_then(|d| d.get("$objects"))
        .and_then(Value::as_array)
        .expect("$objects")
        .clone()
}

fn raw_uid_target<'a>(objects: &'a [Value], key: &str) -> Option<&'a Value> {
    let file = objects[1].as_dictionary().expect("MBFile dict");
    let uid = file
        .get(key)?
        .as_uid()
        .expect("object field is a UID")
        .get();
    Some(&objects[uid as usize])
}

#[test]
fn decodes_every_fixture_row() {
    let rows = fixture_rows();
    assert_eq!(rows.len(), 3721);

    let mut decoded = Vec::new();
    let mut errors = Vec::new();
    for row in &rows {
        match decode(&row.blob) {
            Ok(f) => decoded.push((row, f)),
            Err(e) => errors.push(format!("{}: {e}", row.file_id)),
        }
    }
    assert!(errors.is_empty(), "decode errors: {errors:?}");

    // Files.flags vs the mode type bits decoded from the blob.
    let mut by_kind: BTreeMap<(i64, u32), usize> = BTreeMap::new();
    for (row, f) in &decoded {
        *by_kind.entry((row.flags, f.mode & 0xF000)).or_default() += 1;
        assert_eq!(f.relative_path, row.relative_path, "{}", row.file_id);
        assert_eq!(f.target.is_some(), row.flags == 4, "{}", row.file_id);
        if row.flags != 1 {
            assert_eq!(f.size, 0, "non-file with size: {}", row.file_id);
        }
    }
    let expected: BTreeMap<(i64, u32), usize> =
        [((1, 0x8000), 1089), ((2, 0x4000), 2618), ((4, 0xA000), 14)].into();
    assert_eq!(by_kind, expected);
    for (row, f) in &decoded {
        if let Some(t) = &f.target {
            assert!(t.starts_with('/'), "{}: target {t:?}", row.file_id);
        }
    }
}

#[test]
fn optional_fields_match_raw_plist() {
    let rows = fixture_rows();
    let (mut digests, mut keys, mut xattrs) = (0, 0, 0);
    for row in &rows {
        let f = decode(&row.blob).expect("decode");
        let objects = raw_objects(&row.blob);

        let raw_digest = raw_uid_target(&objects, "Digest").map(|v| v.as_data().unwrap().to_vec());
        assert_eq!(f.digest, raw_digest, "{}", row.file_id);
        if let Some(d) = &f.digest {
            assert_eq!(d.len(), 20);
            digests += 1;
        }

        let raw_key = raw_uid_target(&objects, "EncryptionKey").map(|v| {
            v.as_dictionary().unwrap()["NS.data"]
                .as_data()
                .unwrap()
                .to_vec()
        });
        assert_eq!(f.encryption_key, raw_key, "{}", row.file_id);
        if let Some(k) = &f.encryption_key {
            assert_eq!(k.len(), 44);
            // The wrapped key is prefixed with the file's protection class (u32le).
            assert_eq!(
                u32::from_le_bytes([k[0], k[1], k[2], k[3]]),
                f.protection_class
            );
            assert_eq!(row.flags, 1, "key on a non-file {}", row.file_id);
            keys += 1;
        }

        let raw_x =
            raw_uid_target(&objects, "ExtendedAttributes").map(|v| v.as_data().unwrap().to_vec());
        assert_eq!(f.extended_attributes, raw_x, "{}", row.file_id);
        if let Some(x) = &f.extended_attributes {
            let inner: Value = plist::from_bytes(x).expect("xattrs are a plist");
            assert!(inner.as_dictionary().is_some());
            xattrs += 1;
        }
    }
    assert_eq!(digests, 477);
    assert_eq!(keys, 1089); // every regular file of this encrypted backup
    assert_eq!(xattrs, 77);
}

#[test]
fn signed_ids_decode_as_u32() {
    // uid/gid "nobody" (4294967294) is archived as Int32 -2 in 98 / 112 rows.
    let rows = fixture_rows();
    let files: Vec<MbFile> = rows.iter().map(|r| decode(&r.blob).unwrap()).collect();
    assert_eq!(files.iter().filter(|f| f.uid == 4_294_967_294).count(), 98);
    assert_eq!(files.iter().filter(|f| f.gid == 4_294_967_294).count(), 112);
}

#[test]
fn round_trip_and_byte_identity() {
    let rows = fixture_rows();
    let mut identical = 0;
    let mut first_diff = None;
    for row in &rows {
        let f = decode(&row.blob).expect("decode");
        let again = encode(&f);
        assert_eq!(decode(&again).expect("re-decode"), f, "{}", row.file_id);
        if again == row.blob {
            identical += 1;
        } else if first_diff.is_none() {
            first_diff = Some(row.file_id.clone());
        }
    }
    assert_eq!(
        identical,
        rows.len(),
        "encode(decode(x)) differs from x, first at {first_diff:?}"
    );
}

#[test]
fn mutated_fixture_blobs_never_panic() {
    // Deterministic byte mutations of a few representative rows (dir, file with digest + key +
    // xattrs, symlink): decode must return Ok or Err, never panic.
    let rows = fixture_rows();
    let mut picks: Vec<&Row> = Vec::new();
    for want in [2, 4] {
        picks.extend(rows.iter().find(|r| r.flags == want));
    }
    picks.extend(rows.iter().find(|r| {
        let o = raw_objects(&r.blob);
        let d = o[1].as_dictionary().unwrap();
        d.contains_key("Digest") && d.contains_key("ExtendedAttributes")
    }));
    assert_eq!(picks.len(), 3);
    let mut errs = 0usize;
    for row in picks {
        let blob = &row.blob;
        for i in 0..blob.len() {
            for val in [0x00u8, 0x01, 0x7F, 0x80, 0xFF, blob[i] ^ 0x10] {
                let mut m = blob.clone();
                m[i] = val;
                if decode(&m).is_err() {
                    errs += 1;
                }
            }
        }
        for len in 0..blob.len() {
            assert!(decode(&blob[..len]).is_err(), "truncated to {len} decoded");
        }
    }
    assert!(errs > 0);
}
