//! Spec §7 items 17, 18 and seed 001: what a full dump of the service reads, alone and
//! together with the device's flash without its UID.
//!
//! * End-to-end custody, after the switch (escrow deleted, keys rotated): no canary (file
//!   contents, file names, keychain secrets) in the database or the object store, and no key
//!   the service holds opens anything.
//! * The same dump in standard custody does restore the files; the keychain stays unreadable.
//! * Seed 001: standard dump + the phone's folder without `secure/uid.key` read the files the
//!   backup holds, and nothing else: not the files left out of backups, not the keychain, not
//!   a file written after backup was turned off; the phone's own class keys are in no backup.

mod common;

use common::*;
use dataprotection::keybag::Keybag;
use dataprotection::wrap::unwrap_key;
use dataprotection::{curve, Key256};
use device::{Device, PutOptions};
use icloud::audit::{can_read, Category, Party};
use icloud::{custody, keys, Mode};

/// Everything the service stores: its data folder (SQLite database, objects).
fn dump(srv: &TestServer) -> Vec<u8> {
    slurp(&srv.opts.data_dir)
}

/// Every 32-byte value in the account's records and the service's own escrow key: what the
/// service holds that might be a key.
fn candidate_keys(secret: &Key256, records: &[(String, Vec<u8>)]) -> Vec<Key256> {
    let mut out = vec![secret.clone()];
    for (_, v) in records {
        for w in v.chunks(32).filter(|c| c.len() == 32) {
            out.push(Key256::from_slice(w).unwrap());
        }
        for w in v.windows(32).step_by(4) {
            out.push(Key256::from_slice(w).unwrap());
        }
    }
    out
}

#[test]
fn end_to_end_dump_holds_no_canary_and_no_key_opens_anything() {
    let t = tempfile::tempdir().unwrap();
    let srv = serve(&t.path().join("srv"));
    let alice = account(&srv, "alice", "alice pw 1234");
    let bob = account(&srv, "bob", "bob pw 1234");
    let mut phone = phone(&t.path().join("phone"), "Alice's iPhone");
    let c = fill(&mut phone);
    icloud::enable(&mut phone, &alice, None).unwrap();
    let svk = icloud::device_service_key(&phone, &alice).unwrap();
    let bob_id = curve::new_private();
    custody::publish_contact_key(&bob, &bob_id).unwrap();
    custody::add_contact(&alice, &svk, "bob").unwrap();
    custody::add_recovery_key(&alice, &svk).unwrap();
    phone.lock().unwrap();
    icloud::backup::backup(&phone, None).unwrap();
    // Standard custody first: the dump of this moment restores the files, not the keychain.
    {
        let (secret, records, storage) = server::ops::custody(&srv.opts, "alice").unwrap();
        let mut op = common::phone(&t.path().join("operator"), "operator");
        let r =
            icloud::operator::restore(&secret, &records, storage, "alice", None, &mut op).unwrap();
        assert_files(&op, &c);
        assert!(r.keychain.is_empty());
        assert!(secrets(&op).is_empty());
        assert!(can_read(Mode::Standard, Party::ServerDump, Category::Files).0);
        assert!(!can_read(Mode::Standard, Party::ServerDump, Category::Keychain).0);
        // The keychain records are in the dump, and no key it holds opens one: the
        // keychain class keys of the cloud keybag are wrapped with the phone's UID.
        let svk_op = icloud::operator::service_key(&secret, &records, "alice").unwrap();
        let kbrec = records
            .iter()
            .find(|(n, _)| n.starts_with("keybag."))
            .unwrap();
        let kb = keys::open_keybag(&svk_op, &kbrec.1).unwrap();
        let bag = Keybag::parse(&kb.keybag).unwrap();
        let mut cands = candidate_keys(&secret, &records);
        cands.push(svk_op.key.clone());
        cands.push(kb.keybag_key.clone());
        cands.extend(
            keys::file_class_keys(&kb.keybag, &kb.keybag_key)
                .unwrap()
                .into_values(),
        );
        for rec in bag.classes.iter().filter(|r| r.class().0 >= 6) {
            for k in &cands {
                assert!(
                    unwrap_key(k, &rec.wpky).is_err(),
                    "a keychain class key opened"
                );
            }
        }
    }
    let new = custody::set_mode(&alice, &svk, Mode::EndToEnd).unwrap();
    icloud::backup::backup(&phone, None).unwrap();
    drop(new);

    let (secret, records, storage) = server::ops::custody(&srv.opts, "alice").unwrap();
    let mut op = common::phone(&t.path().join("operator2"), "operator");
    let e = icloud::operator::restore(&secret, &records, storage.clone(), "alice", None, &mut op)
        .unwrap_err();
    assert!(matches!(e, icloud::Error::NoKey(_)), "{e}");
    assert!(!can_read(Mode::EndToEnd, Party::ServerDump, Category::Files).0);

    // No canary anywhere in what the service stores.
    let d = dump(&srv);
    assert!(
        d.len() > 3 << 20,
        "the dump holds the backups ({} bytes)",
        d.len()
    );
    for (dom, path, _, body) in &c.files {
        assert!(
            !contains(&d, &body[..body.len().min(40)]),
            "content of {dom}/{path}"
        );
        let name = path.rsplit('/').next().unwrap();
        assert!(!contains(&d, name.as_bytes()), "name {path}");
    }
    for (_, _, body) in &c.left_out {
        assert!(!contains(&d, body));
    }
    for (class, secret_bytes) in &c.keychain {
        assert!(
            !contains(&d, secret_bytes),
            "keychain secret of class {class}"
        );
    }

    // Every key the service holds, tried on everything.
    let cands = candidate_keys(&secret, &records);
    let repo_keys: Vec<_> = storage
        .list(vault::storage::Kind::Keys)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        repo_keys.len(),
        1,
        "the service key's key file is the only one"
    );
    for k in &cands {
        let as_svk = icloud::ServiceKey {
            key: k.clone(),
            generation: 0,
        };
        assert!(custody::open_repo(storage.clone(), &as_svk).is_err());
        for (name, v) in &records {
            if name.starts_with("keybag.") {
                assert!(keys::open_keybag(&as_svk, v).is_err(), "{name}");
            }
            for aad in [
                keys::aad::TRUSTED,
                keys::aad::RECOVERY_KEY,
                keys::aad::CONTACT,
            ] {
                if v.len() > 32 {
                    assert!(keys::open_service_key(k, aad, &v[32..]).is_err(), "{name}");
                }
                assert!(keys::open_service_key(k, aad, v).is_err(), "{name}");
            }
            assert!(
                curve::open(k, &server::custody_escrow_aad("alice"), v).is_err(),
                "{name}"
            );
        }
    }
    // The escrowed key of before the switch (if the operator had kept a copy) opens nothing
    // either: its key file is gone and a new key epoch seals what came after.
    assert!(custody::open_repo(storage, &svk).is_err());
}

#[test]
fn seed_001_standard_dump_and_flash_without_uid_read_only_what_the_backup_holds() {
    let t = tempfile::tempdir().unwrap();
    let srv = serve(&t.path().join("srv"));
    let alice = account(&srv, "alice", "alice pw 1234");
    let mut phone = phone(&t.path().join("phone"), "Alice's iPhone");
    let c = fill(&mut phone);
    icloud::enable(&mut phone, &alice, None).unwrap();
    icloud::backup::backup(&phone, None).unwrap();
    // Backup turned off; a file written afterwards is in no backup.
    icloud::disable(&mut phone).unwrap();
    let later = canary("after-backup-off");
    phone
        .put(
            "AppDomain-com.example.notes",
            "Documents/later.txt",
            &mut &later[..],
            &PutOptions::default(),
        )
        .unwrap();
    phone.lock().unwrap();
    drop(phone);

    // The flash: the phone's folder without its UID.
    let nand = t.path().join("nand");
    copy_dir(&t.path().join("phone"), &nand);
    std::fs::remove_file(nand.join("secure/uid.key")).unwrap();
    assert!(
        Device::open(&nand).is_err(),
        "without the UID the device does not open"
    );

    // The service's dump: standard custody, so the escrow yields the service key.
    let (secret, records, storage) = server::ops::custody(&srv.opts, "alice").unwrap();
    let svk = icloud::operator::service_key(&secret, &records, "alice").unwrap();
    let kbrec = records
        .iter()
        .find(|(n, _)| n.starts_with("keybag."))
        .unwrap();
    let kb = keys::open_keybag(&svk, &kbrec.1).unwrap();
    let class_keys = keys::file_class_keys(&kb.keybag, &kb.keybag_key).unwrap();
    let mut cands: Vec<Key256> = candidate_keys(&secret, &records);
    cands.push(svk.key.clone());
    cands.push(kb.keybag_key.clone());
    cands.extend(class_keys.values().cloned());

    // Every row of the flash's store.db: which blobs does the pair decrypt?
    let db = rusqlite_rows(&nand.join("store.db"));
    let mut read = std::collections::BTreeSet::new();
    for (domain, path, wrapped, cloud, blob) in &db {
        let Some(blob) = blob else { continue };
        let mut key = None;
        for w in [cloud.as_deref(), wrapped.as_deref()].into_iter().flatten() {
            for k in &cands {
                let r = if w.len() == 72 {
                    curve::unwrap_with(k, w)
                } else {
                    unwrap_key(k, w)
                };
                if let Ok(fk) = r {
                    key = Some(fk);
                }
            }
        }
        if let Some(fk) = key {
            let ct = std::fs::read(nand.join("store").join(&blob[..2]).join(blob)).unwrap();
            let pt = dataprotection::cbc::decrypt_padded(&fk, ct).unwrap();
            read.insert((format!("{domain}/{path}"), pt));
        }
    }
    // After backup was turned off the flash holds no cloud wraps at all; the backup's copies
    // of them (in the snapshot) open the blobs the backup holds, and only those.
    let repo = custody::open_repo(storage, &svk).unwrap();
    let (_, snap) = icloud::restore::pick(&repo, None, None).unwrap();
    let tree = repo.tree(&snap).unwrap();
    for n in &tree.nodes {
        let m = icloud::model::EntryMeta::decode(&n.meta).unwrap();
        let (Some(blob), Some(ck)) = (m.blob_id.as_ref(), m.cloud_key.as_ref()) else {
            continue;
        };
        let fk = curve::unwrap_with(&class_keys[&m.class], ck).unwrap();
        let p = nand.join("store").join(&blob[..2]).join(blob);
        if let Ok(ct) = std::fs::read(&p) {
            let pt = dataprotection::cbc::decrypt_padded(&fk, ct).unwrap();
            read.insert((format!("{}/{}", m.domain, m.path), pt));
        }
    }
    let want: std::collections::BTreeSet<(String, Vec<u8>)> = c
        .files
        .iter()
        .map(|(d, p, _, b)| (format!("{d}/{p}"), b.clone()))
        .collect();
    assert_eq!(read, want, "exactly the files the backup holds");
    assert!(!read.iter().any(|(_, b)| *b == later));

    // The keychain: neither the flash's items nor the backup's open with any key of the pair.
    let annex = icloud::model::CloudAnnex::decode(&tree.annex).unwrap();
    assert_eq!(annex.keychain.len(), 6);
    let bag = Keybag::parse(&kb.keybag).unwrap();
    for rec in bag.classes.iter().filter(|r| r.class().0 >= 6) {
        for k in &cands {
            assert!(unwrap_key(k, &rec.wpky).is_err());
        }
    }
    for item in &annex.keychain {
        for k in &cands {
            assert!(unwrap_key(k, &item.cloud_key).is_err());
        }
    }
    // The phone's own class keys are in no backup: neither its wrapped class keys nor its
    // class B public key appear in the service's dump.
    let sys = std::fs::read(nand.join("secure/systembag.kb")).unwrap();
    let (data, _) = device::split_envelope(&sys).unwrap();
    let sysbag = Keybag::parse(data).unwrap();
    assert!(
        sysbag.classes.len() >= 10,
        "the system keybag's class keys were found"
    );
    let d = dump(&srv);
    for rec in &sysbag.classes {
        assert!(!contains(&d, &rec.wpky));
        if let Some(pk) = &rec.pbky {
            assert!(!contains(&d, pk));
        }
    }
    assert!(can_read(Mode::Standard, Party::ServerDumpAndNand, Category::Files).0);
    assert!(!can_read(Mode::Standard, Party::ServerDumpAndNand, Category::LeftOut).0);
    assert!(!can_read(Mode::Standard, Party::ServerDumpAndNand, Category::Keychain).0);
}

type Row = (
    String,
    String,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<String>,
);

fn rusqlite_rows(p: &std::path::Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open(p).unwrap();
    let mut st = conn
        .prepare("SELECT domain, path, wrapped_key, cloud_key, blob FROM files WHERE kind = 0")
        .unwrap();
    st.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<rusqlite::Result<Vec<_>>>()
    .unwrap()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}
