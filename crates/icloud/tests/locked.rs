//! Spec §7 items 16 and 23: a locked device (class A keys gone) backs up every class A, B
//! and C file through its cloud keybag, unwrapping nothing, and a new device restores them
//! byte for byte; a server that serves an older keybag or snapshot is caught.

mod common;

use common::*;
use device::{LockState, ProtectionClass as PC, PutOptions};
use icloud::custody::{self, KeyPath};

#[test]
fn a_locked_phone_backs_up_every_class_and_a_new_phone_restores_it() {
    let t = tempfile::tempdir().unwrap();
    let srv = serve(&t.path().join("srv"));
    let alice = account(&srv, "alice", "pw one two three");
    let mut phone = phone(&t.path().join("phone"), "Alice's iPhone");
    let mut content = fill(&mut phone);
    icloud::enable(&mut phone, &alice, None).unwrap();
    let rk =
        custody::add_recovery_key(&alice, &icloud::device_service_key(&phone, &alice).unwrap())
            .unwrap();
    phone.lock().unwrap();
    assert_eq!(phone.state(), LockState::Locked);
    assert!(!phone.class_key_available(PC(1)), "class A key gone");
    assert!(
        !phone.class_key_available(PC(2)),
        "class B private key gone"
    );
    // Written while locked: class B (its public key suffices), and its cloud wrap with it.
    let mail = canary("mail-while-locked");
    phone
        .put(
            "AppDomain-com.example.notes",
            "Documents/received.eml",
            &mut &mail[..],
            &PutOptions {
                class: PC(2),
                ..Default::default()
            },
        )
        .unwrap();
    content.files.push((
        "AppDomain-com.example.notes".into(),
        "Documents/received.eml".into(),
        2,
        mail,
    ));
    let rep = icloud::backup::backup(&phone, None).unwrap();
    assert_eq!(rep.lock_state, "locked");
    assert_eq!(
        rep.files as usize,
        content.files.len(),
        "{:?}",
        rep.left_out
    );
    for class in [1, 2, 3] {
        assert!(content.files.iter().any(|f| f.2 == class));
    }
    // Only what a backup leaves out by rule or flag, and akpu, were left out.
    for l in &rep.left_out {
        assert!(
            l.reason.contains("never backed up")
                || l.reason.contains("exclude-from-backup")
                || l.reason.contains("akpu"),
            "{l:?}"
        );
    }
    assert_eq!(rep.keychain, 6, "ak … dku, not akpu");
    // Still locked; nothing was unwrapped into the session.
    let reopened = device::Device::open(phone.dir()).unwrap();
    assert_eq!(reopened.state(), LockState::Locked);
    assert!(!reopened.class_key_available(PC(1)));

    // After a restart (before first unlock: only D keys) it still backs up, unchanged.
    let mut phone = reopened;
    phone.restart().unwrap();
    assert_eq!(phone.state(), LockState::BeforeFirstUnlock);
    let again = icloud::backup::backup(&phone, None).unwrap();
    assert_eq!(again.files, rep.files);
    assert_eq!(
        again.unchanged, rep.files,
        "unchanged files are not read again"
    );
    assert!(
        again.stored_bytes < rep.stored_bytes / 20,
        "{} vs {}",
        again.stored_bytes,
        rep.stored_bytes
    );

    let svk = custody::service_key(&alice, &KeyPath::RecoveryKey(&rk)).unwrap();
    let mut new = common::phone(&t.path().join("new"), "new phone");
    let r = icloud::restore::restore(&alice, &svk, &mut new, None, None).unwrap();
    assert_eq!(r.source_lock_state, "before-first-unlock");
    assert_files(&new, &content);
    assert!(r.keychain.is_empty());
    assert!(r
        .lost
        .iter()
        .any(|l| l.kind == "keychain" && l.reason.contains("UID")));
}

#[test]
fn a_server_serving_an_older_keybag_or_snapshot_is_caught() {
    let t = tempfile::tempdir().unwrap();
    let srv = serve(&t.path().join("srv"));
    let alice = account(&srv, "alice", "pw one two three");
    let mut phone = phone(&t.path().join("phone"), "p");
    fill(&mut phone);
    let en = icloud::enable(&mut phone, &alice, None).unwrap();
    let svk = icloud::device_service_key(&phone, &alice).unwrap();
    let name = format!("keybag.{}", en.device_id);
    let old_keybag = alice.get(&name).unwrap().unwrap();
    icloud::backup::backup(&phone, None).unwrap();
    // Turning e2e on rewraps the keybag (generation 2); the phone sees it at its next backup.
    custody::add_recovery_key(&alice, &svk).unwrap();
    custody::set_mode(&alice, &svk, icloud::Mode::EndToEnd).unwrap();
    icloud::backup::backup(&phone, None).unwrap();
    let newer = alice.get(&name).unwrap().unwrap();
    // The server (or whoever controls it) puts generation 1 back.
    alice.put(&name, &old_keybag).unwrap();
    let e = icloud::backup::backup(&phone, None).unwrap_err();
    assert!(
        matches!(e, icloud::Error::Rollback(_) | icloud::Error::Crypto(_)),
        "{e}"
    );
    alice.put(&name, &newer).unwrap();
    icloud::backup::backup(&phone, None).unwrap();

    // Snapshot rollback: the newest snapshot object disappears from the store.
    let blobs = srv.opts.data_dir.join("blobs");
    let account_dir = std::fs::read_dir(&blobs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let snaps = account_dir.join("snapshots");
    let mut newest: Vec<(std::time::SystemTime, std::path::PathBuf)> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.metadata().unwrap().modified().unwrap(), e.path())
        })
        .collect();
    newest.sort();
    std::fs::remove_file(&newest.last().unwrap().1).unwrap();
    let e = icloud::backup::backup(&phone, None).unwrap_err();
    assert!(
        matches!(e, icloud::Error::Vault(vault::Error::Rollback(_))),
        "{e}"
    );
}
