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
    vault_seeds(&mut out);
    server_seeds(&mut out);
    eprintln!("wrote {} seeds under {}", out.n, out.root.display());
}

/// `[mode] ‖ bytes`.
fn moded(mode: u8, bytes: &[u8]) -> Vec<u8> {
    [&[mode][..], bytes].concat()
}

/// Vault objects made by the vault's own writers under the fixed keyring, the plaintexts
/// inside them, cloud's snapshot metadata, and a real repository's key files and config.
fn vault_seeds(out: &mut Out) {
    use cloud::model::{Annex, DeviceMeta, FileMeta, FileStat, Rec, RecKind, Stored};
    use keybag_fuzzing::vault_fixture;
    use vault::index::{IndexFile, IndexedPack};
    use vault::keys::{Argon2Params, KeyFile, Params, Secret};
    use vault::pack::{self, BlobKind, Entry, PackWriter};
    use vault::snapshot::{Snapshot, Summary};
    use vault::storage::{Kind, LocalStorage, Storage};
    use vault::tree::{Node, Tree};
    use vault::Id;

    let kr = vault_fixture::keyring();
    let key = kr.current();
    // A pack of three blobs (short, compressible, empty) and a tree blob.
    let datas: [&[u8]; 3] = [b"one", &[7u8; 300], b""];
    let mut w = PackWriter::new(key.epoch);
    for d in datas {
        let id = key.chunk_id(d);
        w.push(
            id,
            BlobKind::Data,
            d.len() as u32,
            &pack::seal_blob(key, &id, BlobKind::Data, d),
        );
    }
    let tree_id = key.chunk_id(b"tree");
    w.push(
        tree_id,
        BlobKind::Tree,
        4,
        &pack::seal_blob(key, &tree_id, BlobKind::Tree, b"tree"),
    );
    let (pack_id, pack_bytes, entries) = w.finish(key);
    out.put("vault_sealed", "pack", &moded(1, &pack_bytes));
    let header = postcard::to_stdvec(&entries).unwrap();
    out.put("vault_plain", "header", &moded(7, &header));
    // Entries that fit the target's 256 filler bytes, one that does not.
    let fit = |offset: u32, len: u32| Entry {
        id: Id([9; 32]),
        kind: BlobKind::Data,
        offset,
        len,
        raw_len: len,
    };
    for e in [vec![fit(9, 100), fit(109, 156)], vec![fit(9, 300)], vec![]] {
        out.put(
            "vault_sealed",
            "header",
            &moded(3, &postcard::to_stdvec(&e).unwrap()),
        );
    }

    let index = IndexFile {
        supersedes: vec![Id([3; 32])],
        packs: vec![IndexedPack {
            pack: pack_id,
            epoch: key.epoch,
            size: pack_bytes.len() as u64,
            blobs: entries,
        }],
    };
    let index_plain = postcard::to_stdvec(&index).unwrap();
    let mut tags = BTreeMap::new();
    tags.insert("device".to_string(), "iPhone".to_string());
    let snap = Snapshot {
        version: 1,
        time_ms: 1_700_000_000_000,
        chain: "00008110-000A1B2C3D4E5F60".into(),
        parent: Some(Id([4; 32])),
        seq: 3,
        host: "host".into(),
        tags,
        tree: vec![tree_id],
        summary: Summary {
            files: 2,
            bytes: 300,
            new_blobs: 1,
            new_bytes: 300,
            stored_bytes: 400,
        },
    };
    let snap_plain = serde_json::to_vec(&snap).unwrap();
    let pending = vault::prune::Pending {
        marks: vec![(pack_id, 1_700_000_000_000)],
        packs: vec![],
    };
    let pending_plain = pending.encode();
    for (kind, mode, plain) in [
        (Kind::Index, 0u8, &index_plain),
        (Kind::Snapshots, 1, &snap_plain),
        (Kind::Pending, 6, &pending_plain),
    ] {
        let (_, sealed) = vault::object::seal_object(kr, kind, plain);
        out.put("vault_sealed", "object", &moded(0, &sealed));
        out.put("vault_plain", "object", &moded(mode, plain));
    }
    out.put("vault_sealed", "plain", &moded(2, b"hello"));
    out.put("vault_sealed", "plain", &moded(2, &snap_plain));

    // A phone backup's tree: file metadata of both kinds, an annex with records of each kind.
    let metas = [
        FileMeta {
            stored: Stored::Raw,
            len: 3,
            sha1: [1; 20],
            mtime: 1_700_000_000,
            stat: None,
        },
        FileMeta {
            stored: Stored::Rekey { key: [2; 32] },
            len: 300,
            sha1: [3; 20],
            mtime: -1,
            stat: Some(FileStat {
                dev: 1,
                ino: 2,
                len: 300,
                mtime_ns: -1,
                ctime_ns: 5,
            }),
        },
    ];
    let rec = |path: &str, kind: RecKind, target: Option<&str>| Rec {
        domain: "HomeDomain".into(),
        path: path.into(),
        kind,
        file_id: mobilebackup::layout::file_id("HomeDomain", path),
        size: 3,
        mtime: 1_700_000_000,
        class: 3,
        mode: 0o100644,
        target: target.map(str::to_string),
    };
    let annex = Annex {
        version: 1,
        device: DeviceMeta {
            name: Some("iPhone".into()),
            udid: Some("00008110".into()),
            product: Some("iPhone14,2".into()),
            ios: Some("17.4".into()),
        },
        backup_date: Some(1_700_000_000),
        encrypted: true,
        unlocked: true,
        records: vec![
            rec("Library/a", RecKind::File, None),
            rec("Library", RecKind::Dir, None),
            rec("l", RecKind::Symlink, Some("a")),
            rec("x", RecKind::Other(9), None),
        ],
        notes: vec!["a note".into()],
    };
    let tree = Tree {
        nodes: metas
            .iter()
            .enumerate()
            .map(|(i, m)| Node {
                name: format!("ab/{i}"),
                size: m.len,
                meta: m.encode(),
                chunks: vec![key.chunk_id(b"one")],
            })
            .collect(),
        annex: annex.encode(),
    };
    out.put("vault_plain", "tree", &moded(2, &tree.to_bytes()));
    out.put("vault_plain", "annex", &moded(3, &annex.encode()));
    for m in &metas {
        out.put("vault_plain", "meta", &moded(4, &m.encode()));
    }
    for (d, compress) in [(&b"hello"[..], false), (&[0u8; 200][..], true)] {
        let framed = vault::crypto::frame_blob(d, compress);
        out.put(
            "vault_plain",
            "frame",
            &moded(5, &[&(d.len() as u32).to_le_bytes()[..], &framed].concat()),
        );
    }

    // Key material: a real repository's key files (password, recovery) and config, the
    // fixture keyring's key file, recovery key texts, keyring plaintexts.
    let dir = tempfile::tempdir().unwrap();
    let storage = std::sync::Arc::new(LocalStorage::new(dir.path()));
    let cheap = Argon2Params {
        m_kib: vault::keys::MIN_MEMORY_KIB,
        t: 1,
        p: 1,
    };
    let (_repo, rk) =
        vault::Repository::init(storage.clone(), b"pw", Some(cheap), Params::default()).unwrap();
    for (name, _) in storage.list(Kind::Keys).unwrap() {
        out.put(
            "vault_keys",
            "keyfile",
            &moded(0, &storage.get(Kind::Keys, &name).unwrap()),
        );
    }
    out.put(
        "vault_keys",
        "config",
        &moded(3, &storage.get(Kind::Config, "config").unwrap()),
    );
    let fixture_rk = vault_fixture::recovery_key();
    let kf = KeyFile::seal(kr, &Secret::Recovery(&fixture_rk), "recovery", None, 0).unwrap();
    out.put("vault_keys", "keyfile", &moded(0, &kf.to_bytes()));
    for text in [
        vault_fixture::RECOVERY_KEY.to_string(),
        rk.display().to_lowercase().replace('-', " "),
    ] {
        out.put("vault_keys", "recovery", &moded(1, text.as_bytes()));
    }
    out.put(
        "vault_keys",
        "keyring",
        &moded(2, &postcard::to_stdvec(kr).unwrap()),
    );
}

/// Request bytes as `keybag serve`'s client sends them, with real OPAQUE messages of a
/// registration and a login against the fixed server setup.
fn server_seeds(out: &mut Out) {
    use base64::Engine;
    use opaque_ke::{
        ClientLogin, ClientLoginFinishParameters, ClientRegistration,
        ClientRegistrationFinishParameters, ServerLogin, ServerLoginParameters, ServerRegistration,
    };
    use server::auth::Suite;

    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let put = |out: &mut Out, name: &str, mode: u8, b: &[u8]| {
        out.put("server_requests", name, &moded(mode, b))
    };
    for s in [
        "keys",
        "data",
        "index",
        "snapshots",
        "pending",
        "config",
        &"0f".repeat(32),
    ] {
        put(out, "name", 0, s.as_bytes());
    }
    for s in ["bytes=0-99", "bytes=9-9"] {
        put(out, "range", 1, s.as_bytes());
    }
    let (token, _) = server::auth::new_token();
    put(out, "bearer", 2, format!("Bearer {token}").as_bytes());

    let setup = keybag_fuzzing::server_setup();
    let mut rng = rand::rngs::OsRng;
    let pw = b"correct horse";
    let reg = ClientRegistration::<Suite>::start(&mut rng, pw).unwrap();
    let req = reg.message.serialize();
    let resp = ServerRegistration::start(setup, reg.message, b"account").unwrap();
    let fin = reg
        .state
        .finish(
            &mut rng,
            pw,
            resp.message,
            ClientRegistrationFinishParameters::default(),
        )
        .unwrap();
    let upload = fin.message.serialize();
    let file = ServerRegistration::finish(fin.message);
    let login = ClientLogin::<Suite>::start(&mut rng, pw).unwrap();
    let cred = login.message.serialize();
    let start = ServerLogin::start(
        &mut rng,
        setup,
        Some(file.clone()),
        login.message,
        b"account",
        ServerLoginParameters::default(),
    )
    .unwrap();
    let state = start.state.serialize();
    let done = login
        .state
        .finish(
            &mut rng,
            pw,
            start.message,
            ClientLoginFinishParameters::default(),
        )
        .unwrap();
    let finalization = done.message.serialize();
    put(out, "registration-request", 4, &req);
    put(out, "registration-upload", 5, &upload);
    put(out, "credential-request", 6, &cred);
    put(out, "finalization", 7, &finalization);
    put(out, "password-file", 7, &file.serialize());
    put(out, "login-state", 7, &state);
    for body in [
        serde_json::json!({"account": "alice", "code": "0123456789abcdef", "message": b64(&req)}),
        serde_json::json!({"account": "alice", "code": "0123456789abcdef", "message": b64(&upload)}),
        serde_json::json!({"account": "alice", "message": b64(&cred)}),
        serde_json::json!({"login": "0123456789abcdef", "message": b64(&finalization)}),
        serde_json::json!({"name": "Alice's iPhone", "scope": "restore"}),
        serde_json::json!({"name": "iPad"}),
        serde_json::json!({"name": "bob", "quota_bytes": 1_000_000}),
        serde_json::json!({"bytes": 5}),
    ] {
        put(out, "json", 3, &serde_json::to_vec(&body).unwrap());
    }
}
