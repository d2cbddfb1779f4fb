//! The table of spec §5.4 as a test: custody mode × who restores → whether the restore
//! succeeds, which files and keychain items come back, and that `audit` claims exactly that.

mod common;

use common::*;
use dataprotection::curve;
use device::Device;
use icloud::audit::{can_read, Category, Party};
use icloud::custody::{self, KeyPath};
use icloud::{Account, Mode, ServiceKey};

/// Who restores, and the audit party whose claims that restore checks.
#[derive(Clone, Copy, Debug)]
enum Restorer {
    SameDevice,
    AfterPasswordReset,
    RecoveryKey,
    ApprovedByTrustedDevice,
    ContactAlone,
    ContactAndOperator,
    OperatorWithDump,
}

impl Restorer {
    fn party(self) -> Party {
        match self {
            Restorer::SameDevice => Party::ThisDevice,
            Restorer::AfterPasswordReset => Party::AfterPasswordReset,
            Restorer::RecoveryKey => Party::RecoveryKey,
            Restorer::ApprovedByTrustedDevice => Party::OtherDevice,
            Restorer::ContactAlone => Party::RecoveryContact,
            Restorer::ContactAndOperator => Party::ContactAndOperator,
            Restorer::OperatorWithDump => Party::ServerDump,
        }
    }
}

/// Spec §5.4 (and §5.2 for the keychain): (restore succeeds, keychain comes back).
fn expected(mode: Mode, r: Restorer) -> (bool, bool) {
    match (mode, r) {
        (_, Restorer::SameDevice) => (true, true),
        (_, Restorer::RecoveryKey) | (_, Restorer::ApprovedByTrustedDevice) => (true, false),
        (_, Restorer::ContactAlone) => (false, false),
        (_, Restorer::ContactAndOperator) => (true, false),
        (Mode::Standard, Restorer::AfterPasswordReset | Restorer::OperatorWithDump) => {
            (true, false)
        }
        (Mode::EndToEnd, Restorer::AfterPasswordReset | Restorer::OperatorWithDump) => {
            (false, false)
        }
    }
}

struct World {
    _t: tempfile::TempDir,
    root: std::path::PathBuf,
    srv: TestServer,
    phone: Device,
    content: Content,
    rk: icloud::RecoveryKey,
    bob_identity: dataprotection::Key256,
}

const ALICE_PW: &str = "alice correct horse";
const BOB_PW: &str = "bob battery staple";

fn world(mode: Mode) -> World {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    let srv = serve(&root.join("srv"));
    let alice = account(&srv, "alice", ALICE_PW);
    let bob = account(&srv, "bob", BOB_PW);
    let mut phone = phone(&root.join("phone"), "Alice's iPhone");
    let content = fill(&mut phone);
    let en = icloud::enable(&mut phone, &alice, None).unwrap();
    assert!(en.created);
    // Bob publishes his contact key; Alice names him, and makes a recovery key.
    let bob_identity = curve::new_private();
    custody::publish_contact_key(&bob, &bob_identity).unwrap();
    let svk = icloud::device_service_key(&phone, &alice).unwrap();
    custody::add_contact(&alice, &svk, "bob").unwrap();
    let rk = custody::add_recovery_key(&alice, &svk).unwrap();
    phone.lock().unwrap();
    let rep = icloud::backup::backup(&phone, None).unwrap();
    assert_eq!(rep.lock_state, "locked");
    assert_eq!(rep.files as usize, content.files.len());
    if mode == Mode::EndToEnd {
        let new = custody::set_mode(&alice, &svk, Mode::EndToEnd).unwrap();
        assert_eq!(new.generation, svk.generation + 1);
        // The phone picks the rotated key up through its trusted-device record and backs up
        // again (locked) under it.
        icloud::backup::backup(&phone, None).unwrap();
        assert_eq!(
            icloud::device_service_key(&phone, &alice)
                .unwrap()
                .generation,
            2
        );
    }
    assert_eq!(alice.mode().unwrap().unwrap().0, mode);
    World {
        _t: t,
        root,
        srv,
        phone,
        content,
        rk,
        bob_identity,
    }
}

fn new_phone(w: &World, name: &str) -> Device {
    phone(&w.root.join(name), name)
}

/// Runs one restore; `Ok((files restored, keychain secrets))` or the error.
fn run(w: &mut World, r: Restorer) -> Result<(Device, usize), icloud::Error> {
    let restore = |acct: &Account, svk: &ServiceKey, dev: &mut Device| {
        icloud::restore::restore(acct, svk, dev, None, None).map(|rep| rep.keychain.len())
    };
    match r {
        Restorer::SameDevice => {
            let alice = login(&w.srv, "alice", ALICE_PW);
            let svk = icloud::device_service_key(&w.phone, &alice)?;
            let mut dev = Device::open(w.phone.dir()).unwrap();
            dev.unlock(PASSCODE).unwrap();
            // Erase what the backup holds (files and keychain), then restore.
            for (d, p, _, _) in &w.content.files {
                dev.remove(d, p).unwrap();
            }
            for (d, p, _) in &w.content.left_out {
                dev.remove(d, p).unwrap();
            }
            for (rowid, ..) in dev.keychain_all().unwrap() {
                dev.keychain_remove(rowid).unwrap();
            }
            let n = restore(&alice, &svk, &mut dev)?;
            Ok((dev, n))
        }
        Restorer::RecoveryKey => {
            let alice = login(&w.srv, "alice", ALICE_PW);
            let svk = custody::service_key(&alice, &KeyPath::RecoveryKey(&w.rk))?;
            let mut dev = new_phone(w, "rk-phone");
            let n = restore(&alice, &svk, &mut dev)?;
            Ok((dev, n))
        }
        Restorer::ApprovedByTrustedDevice => {
            let alice = login(&w.srv, "alice", ALICE_PW);
            let mut dev = new_phone(w, "approved-phone");
            let id = "new-phone-1";
            let identity = curve::new_private();
            custody::request_approval(&alice, id, &curve::public_of(&identity))?;
            // The trusted phone (locked: the service key is device-bound, not class-keyed).
            let svk_trusted = icloud::device_service_key(&w.phone, &alice)?;
            assert_eq!(
                custody::approve_pending(&alice, &svk_trusted)?,
                vec![id.to_string()]
            );
            let svk = custody::service_key(
                &alice,
                &KeyPath::Trusted {
                    device: id,
                    identity: &identity,
                },
            )?;
            let n = restore(&alice, &svk, &mut dev)?;
            Ok((dev, n))
        }
        Restorer::ContactAlone => {
            // Bob holds his packet and his own account; Alice's records and repository are
            // not his to read, and the code alone is not a key.
            let bob = login(&w.srv, "bob", BOB_PW);
            let code = custody::contact_code(&bob, &w.bob_identity, "alice")?;
            // His account holds his published key and Alice's packet, nothing of hers else.
            let mut names = bob.records().unwrap();
            names.sort();
            assert_eq!(names, ["contact-key", "packet.alice"]);
            assert!(icloud::keys::contact_recover(&[0u8; 120], &code).is_err());
            let guess = ServiceKey {
                key: dataprotection::Key256::from_slice(&code[12..44]).unwrap(),
                generation: 1,
            };
            let alice = login(&w.srv, "alice", ALICE_PW);
            custody::open_repo(alice.storage().unwrap(), &guess)?;
            unreachable!("the contact's code opened the repository");
        }
        Restorer::ContactAndOperator => {
            let bob = login(&w.srv, "bob", BOB_PW);
            let code = custody::contact_code(&bob, &w.bob_identity, "alice")?;
            let alice = login(&w.srv, "alice", ALICE_PW);
            let svk = custody::service_key(
                &alice,
                &KeyPath::Contact {
                    contact: "bob",
                    code: &code,
                },
            )?;
            let mut dev = new_phone(w, "contact-phone");
            let n = restore(&alice, &svk, &mut dev)?;
            Ok((dev, n))
        }
        Restorer::OperatorWithDump => {
            let (secret, records, storage) =
                server::ops::custody(&w.srv.opts, "alice").expect("operator's view");
            let mut dev = new_phone(w, "operator-phone");
            let rep =
                icloud::operator::restore(&secret, &records, storage, "alice", None, &mut dev)?;
            Ok((dev, rep.keychain.len()))
        }
        Restorer::AfterPasswordReset => {
            // The operator resets the password; whoever re-registers gets the account.
            let code = server::ops::reset_account(&w.srv.opts, "alice").unwrap();
            let c = w.srv.client();
            c.register("alice", &code, b"new password after reset")
                .unwrap();
            let alice = login(&w.srv, "alice", "new password after reset");
            let svk = custody::service_key(&alice, &KeyPath::Escrow)?;
            let mut dev = new_phone(w, "reset-phone");
            let n = restore(&alice, &svk, &mut dev)?;
            Ok((dev, n))
        }
    }
}

fn table(mode: Mode) {
    let mut w = world(mode);
    // The reset revokes every token: it goes last.
    for r in [
        Restorer::SameDevice,
        Restorer::RecoveryKey,
        Restorer::ApprovedByTrustedDevice,
        Restorer::ContactAlone,
        Restorer::ContactAndOperator,
        Restorer::OperatorWithDump,
        Restorer::AfterPasswordReset,
    ] {
        let (ok, keychain) = expected(mode, r);
        let party = r.party();
        assert_eq!(
            can_read(mode, party, Category::Files).0,
            ok,
            "{mode:?} {r:?}: audit claim on files"
        );
        assert_eq!(
            can_read(mode, party, Category::Keychain).0,
            keychain,
            "{mode:?} {r:?}: audit claim on the keychain"
        );
        match run(&mut w, r) {
            Ok((dev, items)) => {
                assert!(ok, "{mode:?} {r:?}: restore succeeded, spec says it fails");
                assert_files(&dev, &w.content);
                if keychain {
                    // Every item but akpu (never exported) comes back, secrets intact.
                    let want: Vec<(u32, Vec<u8>)> = w
                        .content
                        .keychain
                        .iter()
                        .filter(|(c, _)| *c != 12)
                        .cloned()
                        .collect();
                    assert_eq!(items, want.len(), "{mode:?} {r:?}");
                    assert_eq!(secrets(&dev), want, "{mode:?} {r:?}");
                } else {
                    assert_eq!(items, 0, "{mode:?} {r:?}: no keychain item comes back");
                    assert!(secrets(&dev).is_empty(), "{mode:?} {r:?}");
                }
            }
            Err(e) => {
                assert!(
                    !ok,
                    "{mode:?} {r:?}: restore failed, spec says it succeeds: {e}"
                );
                assert!(
                    matches!(e, icloud::Error::NoKey(_) | icloud::Error::Crypto(_)),
                    "{mode:?} {r:?}: fails for want of a key, not by accident: {e}"
                );
            }
        }
    }
    let (verdict, _) = icloud::audit::mud_puddle(mode);
    assert_eq!(
        verdict,
        if mode == Mode::Standard {
            "FAILS"
        } else {
            "PASSES"
        }
    );
}

#[test]
fn standard_custody_restore_table() {
    table(Mode::Standard);
}

#[test]
fn end_to_end_custody_restore_table() {
    table(Mode::EndToEnd);
}

#[test]
fn end_to_end_needs_a_recovery_path_and_switching_back_escrows_again() {
    let t = tempfile::tempdir().unwrap();
    let srv = serve(&t.path().join("srv"));
    let alice = account(&srv, "alice", ALICE_PW);
    let mut phone = phone(&t.path().join("phone"), "p");
    let c = fill(&mut phone);
    icloud::enable(&mut phone, &alice, None).unwrap();
    let svk = icloud::device_service_key(&phone, &alice).unwrap();
    let e = custody::set_mode(&alice, &svk, Mode::EndToEnd).unwrap_err();
    assert!(
        e.to_string().contains("recovery key or a recovery contact"),
        "{e}"
    );
    assert!(alice.get("escrow").unwrap().is_some());
    custody::add_recovery_key(&alice, &svk).unwrap();
    let svk2 = custody::set_mode(&alice, &svk, Mode::EndToEnd).unwrap();
    assert!(alice.get("escrow").unwrap().is_none());
    assert!(custody::service_key(&alice, &KeyPath::Escrow).is_err());
    // The old key opens nothing any more.
    assert!(custody::open_repo(alice.storage().unwrap(), &svk).is_err());
    icloud::backup::backup(&phone, None).unwrap();
    custody::set_mode(&alice, &svk2, Mode::Standard).unwrap();
    let via_escrow = custody::service_key(&alice, &KeyPath::Escrow).unwrap();
    assert_eq!(via_escrow.key.as_bytes(), svk2.key.as_bytes());
    let mut dev = phone_at(&t.path().join("p2"));
    icloud::restore::restore(&alice, &via_escrow, &mut dev, None, None).unwrap();
    assert_files(&dev, &c);
}

fn phone_at(dir: &std::path::Path) -> Device {
    phone(dir, "another")
}

/// The custody records and the escrow on the scaled deployment (PostgreSQL + S3, started
/// here): a locked backup, end-to-end custody turned on, a restore with the recovery key.
#[test]
fn custody_on_postgres_and_s3() {
    let t = tempfile::tempdir().unwrap();
    let d = Deployment::scaled();
    let srv = TestServer::start(d.options(t.path().join("srv")));
    let alice = account(&srv, "alice", ALICE_PW);
    let mut phone = phone(&t.path().join("phone"), "p");
    let c = fill(&mut phone);
    icloud::enable(&mut phone, &alice, None).unwrap();
    let svk = icloud::device_service_key(&phone, &alice).unwrap();
    let rk = custody::add_recovery_key(&alice, &svk).unwrap();
    phone.lock().unwrap();
    icloud::backup::backup(&phone, None).unwrap();
    assert!(custody::service_key(&alice, &KeyPath::Escrow).is_ok());
    custody::set_mode(&alice, &svk, Mode::EndToEnd).unwrap();
    assert!(alice.get("escrow").unwrap().is_none());
    assert!(custody::service_key(&alice, &KeyPath::Escrow).is_err());
    icloud::backup::backup(&phone, None).unwrap();
    let svk2 = custody::service_key(&alice, &KeyPath::RecoveryKey(&rk)).unwrap();
    assert_eq!(svk2.generation, 2);
    let mut dev = phone_at(&t.path().join("p2"));
    icloud::restore::restore(&alice, &svk2, &mut dev, None, None).unwrap();
    assert_files(&dev, &c);
    drop(srv);
    drop(d);
}
