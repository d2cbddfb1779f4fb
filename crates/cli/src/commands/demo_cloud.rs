//! `keybag demo`, part three: iCloud-style backup on a `keybag serve` embedded on loopback
//! (SQLite and a folder in the demo's temporary folder).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Result;
use device::{DerValue, Device, InitOptions, ProtectionClass, PutOptions};
use icloud::custody::{self, KeyPath};
use icloud::{Account, Mode};
use zeroize::Zeroizing;

use crate::output::{plural, sanitize};

const PASSCODE: &[u8] = b"123456";
const ALICE_PW: &[u8] = b"demo account password";

fn phone(dir: &Path, name: &str) -> Result<Device> {
    Ok(Device::init(
        dir,
        InitOptions {
            name: name.into(),
            passcode: Some(Zeroizing::new(PASSCODE.to_vec())),
            passcode_iterations: Some(20_000),
            ..InitOptions::default()
        },
    )?)
}

fn item(label: &str, secret: &[u8]) -> std::collections::BTreeMap<String, DerValue> {
    let mut a = std::collections::BTreeMap::new();
    a.insert("labl".to_string(), DerValue::string(label));
    a.insert("v_Data".to_string(), DerValue::data(secret.to_vec()));
    a
}

/// The act: a phone backed up while locked; the operator reading a standard-custody backup;
/// end-to-end custody turned on; the operator failing; a new phone restoring with the
/// recovery key; the keychain not coming back to it.
pub fn tour(out: &mut dyn Write, root: &Path) -> Result<()> {
    writeln!(
        out,
        "Part three: iCloud-style backup to your own `keybag serve` (here embedded on loopback).\n"
    )?;
    let mut opts = server::ServeOptions::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        root.join("serve-data"),
    );
    opts.log_requests = false;
    let srv = server::Background::start(opts.clone())?;
    let base = srv.base();
    let fp = srv.ready.fingerprint.clone();
    let (_, code) = server::ops::add_account(&opts, "alice", None)?;
    let c = server::client::ServerClient::new(&base, fp.as_deref())?;
    c.register("alice", &code, ALICE_PW)?;
    let alice = Account::login(&base, fp.as_deref(), "alice", ALICE_PW)?;

    let mut d = phone(&root.join("cloud-iphone"), "Alice's iPhone")?;
    let dom = "AppDomain-com.apple.mobilenotes";
    d.install_app("com.apple.mobilenotes")?;
    for (path, class, body) in [
        (
            "Documents/diary.txt",
            1u32,
            &b"Dear diary: the server must not read this."[..],
        ),
        ("Documents/shopping.txt", 3, b"milk, eggs"),
    ] {
        d.put(
            dom,
            path,
            &mut &body[..],
            &PutOptions {
                class: ProtectionClass(class),
                ..PutOptions::default()
            },
        )?;
    }
    d.keychain_add(
        "genp",
        ProtectionClass::KC_WHEN_UNLOCKED,
        item("Mail password", b"hunter2"),
    )?;
    d.keychain_add(
        "keys",
        ProtectionClass::KC_AFTER_FIRST_UNLOCK_TDO,
        item("Messenger identity key", &[0x42; 32]),
    )?;
    icloud::enable(&mut d, &alice, None)?;
    writeln!(
        out,
        "[11] Turn on backup (`keybag device cloud enable DIR --server URL --account alice`): the"
    )?;
    writeln!(
        out,
        "     phone makes its iCloud Backup keybag (TYPE 3: X25519 class keys) and wraps every file"
    )?;
    writeln!(
        out,
        "     key to it; the account starts in standard custody, as iCloud does."
    )?;
    d.lock()?;
    d.put(
        dom,
        "Documents/mail-received-while-locked.eml",
        &mut &b"From: bob"[..],
        &PutOptions {
            class: ProtectionClass(2),
            ..PutOptions::default()
        },
    )?;
    let r = icloud::backup::backup(&d, None)?;
    writeln!(
        out,
        "[12] Lock it, receive a mail (class B), back up while {} (`keybag device cloud backup`):",
        r.lock_state
    )?;
    writeln!(
        out,
        "     {} and {} uploaded, no class key unwrapped.\n",
        plural(r.files, "file", "files"),
        plural(r.keychain, "keychain item", "keychain items")
    )?;

    let op_dir = root.join("operator-device");
    let (secret, records, storage) = server::ops::custody(&opts, "alice")?;
    let mut op = Device::init(&op_dir, InitOptions::default())?;
    let rep = icloud::operator::restore(&secret, &records, storage, "alice", None, &mut op)?;
    let mut diary = Vec::new();
    op.get(dom, "Documents/diary.txt", &mut diary)?;
    writeln!(
        out,
        "[13] The operator restores it from the server's own stores (`keybag serve admin restore`):"
    )?;
    writeln!(
        out,
        "     {}; it reads the diary: \"{}\". Keychain: {} (bound to the phone's UID).",
        plural(rep.files, "file", "files"),
        sanitize(&String::from_utf8_lossy(&diary)),
        plural(rep.keychain.len() as u64, "item", "items")
    )?;
    let (v, why) = icloud::audit::mud_puddle(Mode::Standard);
    writeln!(out, "     Mud-puddle test: {v}: {why}.\n")?;

    let svk = icloud::device_service_key(&d, &alice)?;
    let rk = custody::add_recovery_key(&alice, &svk)?;
    let new = custody::set_mode(&alice, &svk, Mode::EndToEnd)?;
    icloud::backup::backup(&d, None)?;
    writeln!(
        out,
        "[14] Make a recovery key (`keybag cloud recovery-key`; shown once: {}…) and turn on",
        &rk.display()[..9]
    )?;
    writeln!(
        out,
        "     end-to-end custody (`keybag cloud custody e2e`): escrow deleted, service key rotated"
    )?;
    writeln!(
        out,
        "     (generation {}), keybag key rotated; the locked phone backs up again.",
        new.generation
    )?;
    let (secret, records, storage) = server::ops::custody(&opts, "alice")?;
    let mut op2 = Device::init(&root.join("operator-device-2"), InitOptions::default())?;
    match icloud::operator::restore(&secret, &records, storage, "alice", None, &mut op2) {
        Ok(_) => anyhow::bail!("the operator restored an end-to-end backup"),
        Err(e) => writeln!(
            out,
            "[15] The operator tries again and fails: {}",
            sanitize(&e.to_string())
        )?,
    }
    let (v, why) = icloud::audit::mud_puddle(Mode::EndToEnd);
    writeln!(out, "     Mud-puddle test: {v}: {why}.\n")?;

    let mut np = phone(&root.join("cloud-new-iphone"), "Alice's new iPhone")?;
    let svk = custody::service_key(&alice, &KeyPath::RecoveryKey(&rk))?;
    let rep = icloud::restore::restore(&alice, &svk, &mut np, None, None)?;
    writeln!(
        out,
        "[16] A new iPhone restores with the recovery key (`keybag device cloud restore DIR \
         --recovery-key-file F`):"
    )?;
    writeln!(
        out,
        "     {} back; keychain: {} restored.",
        plural(rep.files, "file", "files"),
        rep.keychain.len()
    )?;
    for l in rep.lost.iter().filter(|l| l.kind == "keychain") {
        writeln!(
            out,
            "     lost: keychain {} [{}]: {}",
            sanitize(&l.what),
            l.class.as_deref().unwrap_or("?"),
            l.reason
        )?;
    }
    writeln!(
        out,
        "     The keychain of a cloud backup opens only on the phone that made it; migratory"
    )?;
    writeln!(
        out,
        "     items travel by iCloud Keychain, which is not part of this demo.\n"
    )?;
    drop(srv);
    Ok(())
}
