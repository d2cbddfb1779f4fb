//! Writes the seed inputs of every fuzz target into `<out>/<target>/` (default
//! `fuzz/seeds`), from the fixtures in `testdata/` and from keybag's own writers.
//!
//! ```text
//! cargo run --release -p keybag-fuzzing --example seeds -- fuzz/seeds
//! ```
//!
//! `scripts/fuzz.sh --seed` runs it and minimizes the result into `fuzz/corpus` with
//! `cargo fuzz cmin`; the seeds themselves are not committed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use dataprotection::{DeviceKey, Keybag, Passkey, ProtectionClass};
use keybag_fuzzing::fixture;
use mobilebackup::keychain::{self, der, writer, DerDate, DerValue, NewKeychainItem};
use mobilebackup::{layout, manifestdb, mbfile, Backup};

struct Out {
    root: PathBuf,
    n: usize,
}

impl Out {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}-{}", self.n)), bytes).unwrap();
        self.n += 1;
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .map_or_else(|| repo().join("fuzz/seeds"), PathBuf::from);
    let mut out = Out { root, n: 0 };
    let enc = repo().join("testdata/enc-small-public");
    let mvt = repo().join("testdata/mvt-ios-backup");

    // Top-level plists of both fixtures, and an XML rendering of each.
    for p in [
        enc.join("Manifest.plist"),
        enc.join("Info.plist"),
        enc.join("Status.plist"),
        mvt.join("Info.plist"),
    ] {
        let bytes = std::fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        out.put("top_plists", &name, &bytes);
        out.put("bplist_guard", &name, &bytes);
        let v = plist::Value::from_reader(std::io::Cursor::new(&bytes)).unwrap();
        let mut xml = Vec::new();
        v.to_writer_xml(&mut xml).unwrap();
        out.put("top_plists", &format!("{name}.xml"), &xml);
        out.put("bplist_guard", &format!("{name}.xml"), &xml);
    }
    out.put(
        "bplist_guard",
        "ascii",
        b"{ a = (1, <0102>, \"x\"); b = { c = d; }; }",
    );

    // Keybags: the fixture's, fresh writer-made ones (encrypted and unencrypted).
    let kb = fixture::keybag();
    out.put("keybag_tlv", "fixture", &kb.to_bytes());
    let dk = DeviceKey::from_hex(fixture::DEVICE_KEY_HEX).unwrap();
    let (pending, _) = Keybag::new_backup_pending(&dk, 10_000_000);
    out.put(
        "keybag_tlv",
        "writer",
        &pending.seal(&Passkey::from_bytes([0x42; 32])).to_bytes(),
    );
    out.put(
        "keybag_tlv",
        "unencrypted",
        &Keybag::new_unencrypted_backup(&dk).to_bytes(),
    );

    // MBFile blobs: every distinct shape of both fixtures' Manifest.db, and encode()'s output.
    let mut backup = Backup::open(&enc).unwrap();
    backup
        .unlock_with_passkey(&Passkey::from_hex(fixture::PASSKEY_HEX).unwrap(), Some(&dk))
        .unwrap();
    let catalog = backup.catalog().unwrap();
    let mut blobs: Vec<Vec<u8>> = catalog.records.iter().map(|r| r.raw.clone()).collect();
    // immutable: SQLite must not create -shm/-wal files next to the fixture.
    let conn = rusqlite::Connection::open_with_flags(
        format!("file:{}?immutable=1", mvt.join("Manifest.db").display()),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let mut stmt = conn.prepare("SELECT file FROM Files").unwrap();
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
    blobs.extend(rows.map(Result::unwrap));
    // One blob per (key set, flags) shape is plenty before cmin.
    let mut shapes = BTreeMap::new();
    for b in blobs {
        let f = mbfile::decode(&b).unwrap();
        let shape = (
            f.target.is_some(),
            f.digest.is_some(),
            f.encryption_key.is_some(),
            f.extended_attributes.is_some(),
            f.mode >> 12,
            f.relative_path.is_empty(),
            f.flags,
        );
        shapes.entry(shape).or_insert(b);
    }
    for b in shapes.values() {
        out.put("mbfile", "fixture", b);
        out.put(
            "mbfile",
            "encoded",
            &mbfile::encode(&mbfile::decode(b).unwrap()),
        );
    }
    out.put("bplist_guard", "mbfile", shapes.values().next().unwrap());

    // The fixture's keychain-backup.plist (decrypted), its item blobs and their DER plaintext.
    let rec = catalog
        .records
        .iter()
        .find(|r| r.domain == keychain::DOMAIN && r.relative_path == keychain::RELATIVE_PATH)
        .unwrap();
    let mut kc_bytes = Vec::new();
    backup
        .open_file(rec)
        .unwrap()
        .read_to_end(&mut kc_bytes)
        .unwrap();
    out.put("keychain_plist", "fixture", &kc_bytes);
    let top = plist::Value::from_reader(std::io::Cursor::new(&kc_bytes)).unwrap();
    for table in keychain::TABLES {
        let Some(items) = top.as_dictionary().unwrap().get(table) else {
            continue;
        };
        for entry in items.as_array().unwrap() {
            let blob = entry
                .as_dictionary()
                .unwrap()
                .get("v_Data")
                .unwrap()
                .as_data()
                .unwrap();
            out.put("keychain_item", "fixture", &[&[0u8][..], blob].concat());
        }
    }
    let kc = keychain::parse(
        &kc_bytes,
        Some(fixture::keys(true)),
        Some(fixture::KEYBAG_UUID),
    )
    .unwrap();
    for it in &kc.items {
        let plain = der::encode(&DerValue::Dict(it.attributes.clone()));
        out.put("der", "fixture-item", &plain);
        let class = it.class.unwrap().0 as u8;
        // Synthesized v3 (mode 3) and v3 static IV (0x43) items around that plaintext.
        out.put("keychain_item", "v3", &[&[3u8, class][..], &plain].concat());
        out.put(
            "keychain_item",
            "v3-static",
            &[&[0x43u8, class][..], &plain].concat(),
        );
    }

    // Writer-made keychain: every DER type, every table, classes 6–11.
    let date = DerValue::Date(DerDate::new(1_700_000_000, 123_000_000).unwrap());
    let mut items = Vec::new();
    for (i, table) in keychain::TABLES.iter().enumerate() {
        let class = ProtectionClass(6 + i as u32);
        items.push(
            NewKeychainItem::new(table, class)
                .string("agrp", "com.example")
                .string("svce", "service")
                .string("acct", "me@example.com")
                .string("ptcl", "htps")
                .string("srvr", "example.com")
                .attr("port", DerValue::Integer(443))
                .attr("cdat", date.clone())
                .attr("mdat", date.clone())
                .attr("tomb", DerValue::Bool(false))
                .attr("null", DerValue::Null)
                .attr(
                    "list",
                    DerValue::Array(vec![DerValue::Integer(-1), DerValue::string("é")]),
                )
                .secret(b"hunter2"),
        );
    }
    items.push(NewKeychainItem::new("genp", ProtectionClass(11)).secret(b"tdo"));
    let built =
        writer::build_plist(&items, Some(fixture::keys(true)), fixture::KEYBAG_UUID).unwrap();
    out.put("keychain_plist", "writer", &built);
    out.put("bplist_guard", "keychain", &built);
    let attrs = &items[0].attributes;
    let plain = der::encode(&DerValue::Dict(attrs.clone()));
    out.put("der", "writer", &plain);
    out.put(
        "keychain_item",
        "writer",
        &[
            &[0u8][..],
            &writer::encrypt_item(
                7,
                fixture::keys(true).key(ProtectionClass(7)).unwrap(),
                attrs,
            ),
        ]
        .concat(),
    );
    // v2: a bplist dictionary of attributes; v0/v1: a PKCS7-padded secret.
    let mut d = plist::Dictionary::new();
    d.insert("acct".into(), plist::Value::String("me".into()));
    d.insert("v_Data".into(), plist::Value::Data(b"secret".to_vec()));
    d.insert(
        "cdat".into(),
        plist::Value::Date(std::time::SystemTime::UNIX_EPOCH.into()),
    );
    d.insert("port".into(), plist::Value::Integer(8080.into()));
    let mut bp = Vec::new();
    plist::Value::Dictionary(d)
        .to_writer_binary(&mut bp)
        .unwrap();
    out.put("keychain_item", "v2", &[&[2u8, 6][..], &bp].concat());
    let mut padded = b"hunter2".to_vec();
    padded.extend_from_slice(&[9; 9]);
    out.put("keychain_item", "v0", &[&[4u8, 7][..], &padded].concat());
    out.put("keychain_item", "v1", &[&[5u8, 8][..], &padded].concat());
    out.put("der", "date", b"20240102030405.5Z");
    out.put("der", "date-der", &der::encode(&date));

    // Manifest.db: keybag's writer (4096-byte pages), then tiny 512-byte-page databases of a
    // few rows: good rows, a symlink and a directory, a duplicate fileID (no PRIMARY KEY),
    // NULL and non-text columns, an unsafe path, a mismatched RelativePath, WAL mode, a view.
    let shaped: Vec<&Vec<u8>> = shapes.values().collect();
    let row = |domain: &str, rel: &str, flags: i64, blob: &[u8]| manifestdb::Row {
        file_id: layout::file_id(domain, rel),
        domain: domain.into(),
        relative_path: rel.into(),
        flags,
        file: blob.to_vec(),
    };
    let mb = |rel: &str, mode: u32| {
        mbfile::encode(&mbfile::MbFile {
            relative_path: rel.into(),
            mode,
            size: 3,
            protection_class: 3,
            ..Default::default()
        })
    };
    let good = [
        row("HomeDomain", "Library/a", 1, &mb("Library/a", 0o100644)),
        row("HomeDomain", "Library", 2, &mb("Library", 0o40755)),
        row("AppDomain-x", "l", 4, &mb("l", 0o120755)),
    ];
    out.put("manifest_db", "writer", &manifestdb::build(&good).unwrap());
    let tiny = |setup: &str, rows: &[manifestdb::Row]| {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA page_size = 512;").unwrap();
        conn.execute_batch(setup).unwrap();
        for r in rows {
            conn.execute(
                "INSERT INTO Files (fileID, domain, relativePath, flags, file) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![r.file_id, r.domain, r.relative_path, r.flags, r.file],
            )
            .unwrap();
        }
        conn.serialize(rusqlite::MAIN_DB).unwrap().to_vec()
    };
    out.put("manifest_db", "tiny", &tiny(layout::SCHEMA, &good));
    let loose = "CREATE TABLE Files (fileID TEXT, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB);";
    let mut dup = good.to_vec();
    dup.push(row(
        "HomeDomain",
        "Library/a",
        1,
        &mb("Library/a", 0o100600),
    ));
    out.put("manifest_db", "duplicate", &tiny(loose, &dup));
    let odd = [
        row("HomeDomain", "../escape", 1, &mb("../escape", 0o100644)),
        row("HomeDomain", "b", 1, &mb("not-b", 0o100644)),
        manifestdb::Row {
            file_id: "NOT-HEX".into(),
            ..row("HomeDomain", "c", 1, shaped[0])
        },
        row("HomeDomain", "d", 1, b"bplist00 broken"),
    ];
    let mut db = tiny(loose, &odd);
    out.put("manifest_db", "odd-rows", &db);
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch(&format!(
        "PRAGMA page_size = 512; {loose} INSERT INTO Files VALUES (NULL, 'D', 'p', 1, x'00'); \
         INSERT INTO Files VALUES ('{}', 'D', 5, 'x', NULL);",
        "a".repeat(40)
    ))
    .unwrap();
    out.put(
        "manifest_db",
        "nulls",
        &conn.serialize(rusqlite::MAIN_DB).unwrap(),
    );
    db[18] = 2;
    db[19] = 2;
    out.put("manifest_db", "wal", &db);
    out.put(
        "manifest_db",
        "view",
        &tiny(
            &format!("{loose} CREATE VIEW v AS SELECT * FROM Files;"),
            &good[..1],
        ),
    );
    eprintln!("wrote {} seeds under {}", out.n, out.root.display());
}
