//! Secrets canary (issue 8, item 10): every command of the binary runs with known
//! passwords, passcodes, derived keys, device keys and keychain secrets, given only through
//! environment variables and files; none of them may appear in an argument, in the running
//! process's command line, on stdout or stderr (unless the command was asked to show it:
//! then it must), in any file keybag writes (except the keychain CSV made with
//! `--show-secrets`), or in a panic message. The kit is in `leak/mod.rs`; `docs/canary.md`
//! lists what runs and what is searched.

/// An argument list from strings and paths.
macro_rules! a {
    ($($x:expr),* $(,)?) => {
        vec![$(std::ffi::OsStr::new(&$x).to_os_string()),*]
    };
}

mod common;
mod leak;

use std::ffi::OsString;

use leak::known::*;
use leak::{Canary, Run, Session};

// ------------------------------------------------------------------ the backup commands

/// Every backup command, text and JSON, on a copy of the encrypted fixture: unlocked with
/// its derived key and device key from files (hex and raw bytes), with its password twice
/// (the real KDF), the real `passwd`; wrong, missing and malformed keys; and the demo.
#[test]
fn backup_commands_leak_no_secret() {
    let mut s = Session::new();
    let secrets = enc_canaries(&mut s);
    let all: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let migratory: Vec<&str> = ["ak", "ck", "dk"]
        .map(|c| {
            all.iter()
                .copied()
                .find(|n| n.ends_with(&format!(" {c}")))
                .unwrap()
        })
        .to_vec();
    s.canary(Canary::text("new password", NEW_PASSWORD));
    let k = keys(&mut s);
    let enc_pw = opt(
        "--password-file",
        &s.input("enc.password", format!("{}\n", common::PASSWORD).as_bytes()),
    );
    let b = s.path("enc");
    common::copy_dir(&common::enc(), &b);
    s.scan("copying the fixture");

    // info, ls, cat.
    s.run(Run::new(a!["info", b]).with(&k.passkey));
    s.run(
        Run::new(a!["info", b, "--json"])
            .with(&k.passkey_raw)
            .with(&k.device),
    );
    s.run(Run::new(a!["ls", b]).with(&k.passkey));
    s.run(
        Run::new(a!["ls", b, "--long"])
            .with(&k.passkey_raw)
            .with(&k.device_raw),
    );
    s.run(Run::new(a!["ls", b, "--json"]).with(&k.passkey));
    s.run(Run::new(a!["cat", b, "HomeDomain", "Library/Notes/readme.txt"]).with(&k.passkey));
    s.run(
        Run::new(a!["cat", b, "KeychainDomain", "keychain-backup.plist"])
            .with(&k.passkey)
            .with(&k.device),
    );

    // extract and decrypt (their outputs are scanned), and the decrypted copy.
    s.run(
        Run::new(a!["extract", b, s.path("x")])
            .with(&k.passkey)
            .with(&k.device),
    );
    s.run(Run::new(a!["extract", b, s.path("x-json"), "--json"]).with(&k.passkey_raw));
    let d = s.path("decrypted");
    s.run(
        Run::new(a!["decrypt", b, d])
            .with(&k.passkey)
            .with(&k.device),
    );
    s.run(Run::new(a!["decrypt", b, s.path("decrypted-json"), "--json"]).with(&k.passkey_raw));
    s.run(Run::new(a!["info", d]));
    s.run(Run::new(a!["keychain", d, "--show-secrets"]).note("unencrypted copy: sealed"));

    // verify and audit; the password given twice (the real KDF), once for its strength.
    s.run(Run::new(a!["verify", b]).with(&k.passkey));
    s.run(
        Run::new(a!["verify", b])
            .env("KEYBAG_PASSWORD", common::PASSWORD)
            .must_catch_cmdline(),
    );
    s.run(
        Run::new(a!["verify", b, "--deep"])
            .with(&k.passkey)
            .with(&k.device),
    );
    s.run(Run::new(a!["verify", b, "--deep", "--json"]).with(&k.passkey_raw));
    s.run(Run::new(a!["audit", b]).with(&k.passkey).with(&k.device));
    s.run(Run::new(a!["audit", b, "--quick", "--json"]).with(&k.passkey));
    let html = s.path("audit.html");
    s.run(
        Run::new(a!["audit", b, "--html", html])
            .with(&enc_pw)
            .must_catch_cmdline(),
    );
    assert!(html.is_file());

    // keychain: secrets hidden; asked for (then they must show); the CSV.
    s.run(Run::new(a!["keychain", b]).with(&k.passkey).with(&k.device));
    s.run(
        Run::new(a!["keychain", b, "--json"])
            .with(&k.passkey)
            .with(&k.device_raw),
    );
    let show = a!["keychain", b, "--show-secrets"];
    s.run(
        Run::new(show.clone())
            .with(&k.passkey)
            .with(&k.device)
            .shows(&all),
    );
    s.run(Run::new(show.clone()).with(&k.passkey).shows(&migratory));
    s.run(
        Run::new(show.clone())
            .with(["--json"])
            .with(&k.passkey_raw)
            .with(&k.device_raw)
            .shows(&all),
    );
    let csv = s.path("keychain.csv");
    s.allow_in_file(&csv, &all);
    s.run(
        Run::new(show)
            .with(["--format", "csv"])
            .with(&k.passkey)
            .with(&k.device)
            .shows(&all)
            .stdout_to(&csv),
    );
    s.assert_file_holds(&csv, &all);
    s.run(
        Run::new(a!["keychain", b, "--format", "csv"])
            .with(&k.passkey)
            .code(2),
    );

    // Wrong, missing and malformed secrets.
    s.run(Run::new(a!["info", b]).with(&k.wrong_passkey).code(5));
    s.run(
        Run::new(a!["keychain", b])
            .with(&k.passkey)
            .with(&k.wrong_device)
            .code(5),
    );
    s.run(Run::new(a!["info", b]).note("no password").code(1));
    s.run(Run::new(a!["ls", b]).env("KEYBAG_PASSWORD", "").code(1));
    for (what, file) in &k.malformed_passkeys {
        s.run(Run::new(a!["info", b]).with(file).note(what).code(2));
    }
    for (what, file) in &k.malformed_devices {
        s.run(
            Run::new(a!["keychain", b])
                .with(&k.passkey)
                .with(file)
                .note(what)
                .code(2),
        );
    }

    // passwd, for real: the old key from a file, the new password from the environment
    // (10,000,000 rounds).
    let pb = s.path("enc-passwd");
    common::copy_dir(&common::enc(), &pb);
    let passwd = a!["passwd", pb];
    let new_pw = ("KEYBAG_NEW_PASSWORD", NEW_PASSWORD);
    s.run(
        Run::new(passwd.clone())
            .with(&k.wrong_passkey)
            .env(new_pw.0, new_pw.1)
            .code(5),
    );
    s.run(
        Run::new(passwd.clone())
            .with(&k.passkey)
            .note("no new password")
            .code(1),
    );
    s.run(
        Run::new(passwd)
            .with(&k.passkey)
            .env(new_pw.0, new_pw.1)
            .must_catch_cmdline(),
    );

    // The demo, its temp folder inside the scanned tree, its own secrets canaries for its
    // output.
    s.run(
        Run::new(a!["demo"])
            .extra(Canary::text("demo backup password", "demo backup password"))
            .extra(Canary::text("demo keychain secret", "correct horse"))
            .extra(Canary::key("demo identity key", &[0x42; 32])),
    );
    finish(s);
}

// ------------------------------------------------------------------ the device commands

/// Every `device` subcommand on a phone with a passcode and four keychain items (ak, dku and
/// akpu secrets from KEYBAG_SECRET, ck from --secret-file); its backups (unencrypted, with a
/// cheap KDF through the library, then with the password the device keeps, and one real
/// `--encrypt`); every backup command on them, `passwd`; restore and import (password file,
/// derived key file, device key file); wrong, missing and malformed secrets along the way.
#[test]
fn device_commands_leak_no_secret() {
    let mut s = Session::new();
    for (name, value) in [
        ("password", PASSWORD),
        ("new password", NEW_PASSWORD),
        ("wrong password", WRONG_PASSWORD),
        ("passcode", PASSCODE),
        ("new passcode", NEW_PASSCODE),
        ("wrong passcode", WRONG_PASSCODE),
        ("secret ak", SECRET_AK),
        ("secret ck", SECRET_CK),
        ("secret dku", SECRET_DKU),
        ("secret akpu", SECRET_AKPU),
        ("second line", SECOND_LINE),
    ] {
        s.canary(Canary::text(name, value));
    }
    let enc_secrets = enc_canaries(&mut s);
    let k = keys(&mut s);
    let mut file = |option: &str, name: &str, contents: String| -> Vec<OsString> {
        opt(option, &s.input(name, contents.as_bytes()))
    };
    let pw = file("--password-file", "password", format!("{PASSWORD}\n"));
    let new_pw = file(
        "--new-password-file",
        "new.password",
        format!("{NEW_PASSWORD}\r\n{SECOND_LINE}\n"),
    );
    let pw_back = file(
        "--password-file",
        "new.password.2",
        format!("{NEW_PASSWORD}\n"),
    );
    let wrong_pw = file("--password-file", "wrong.password", WRONG_PASSWORD.into());
    let empty_pw = file(
        "--password-file",
        "empty.password",
        format!("\n{SECOND_LINE}\n"),
    );
    let pc = file("--passcode-file", "passcode", format!("{PASSCODE}\n"));
    let new_pc = file(
        "--new-passcode-file",
        "new.passcode",
        format!("{NEW_PASSCODE}\n"),
    );
    let pc_back = file(
        "--passcode-file",
        "new.passcode.2",
        format!("{NEW_PASSCODE}\n"),
    );
    let wrong_pc = file(
        "--passcode-file",
        "wrong.passcode",
        format!("{WRONG_PASSCODE}\n"),
    );
    let secret_ck = file("--secret-file", "secret.ck", SECRET_CK.into());
    let env_pc = ("KEYBAG_PASSCODE", PASSCODE);
    let env_pw = ("KEYBAG_PASSWORD", PASSWORD);

    // init, info, app install, put, rm, ls, get.
    let phone = s.path("phone");
    let dev = |args: Vec<OsString>| Run::new([a!["device"], args].concat());
    s.run(
        dev(a![
            "init",
            phone,
            "--name",
            "Canary phone",
            "--passcode-iterations",
            "1000"
        ])
        .with(&pc),
    );
    let phone_key = device_canaries(&mut s, &phone, "phone");
    let phone_key_file = s.input("phone.devkey", phone_key.to_hex().as_bytes());
    let phone_key = opt("--device-key-file", &phone_key_file);
    s.run(dev(a!["info", phone]));
    s.run(dev(a!["info", phone, "--json"]));
    let app = "AppDomain-com.example.canary";
    s.run(dev(a!["app", "install", phone, "com.example.canary"]));
    let content = s.path("content.txt");
    std::fs::write(&content, CONTENT).unwrap();
    s.run(dev(a!["put", phone, app, "Documents/a.txt", "--class", "A"]).stdin(CONTENT));
    s.run(dev(a![
        "put",
        phone,
        "HomeDomain",
        "b.txt",
        "--class",
        "B",
        "--from",
        content
    ]));
    s.run(dev(a!["put", phone, "HomeDomain", "Library/c.txt"]).stdin(CONTENT));
    s.run(
        dev(a![
            "put",
            phone,
            "HomeDomain",
            "d.txt",
            "--class",
            "D",
            "--exclude-from-backup"
        ])
        .stdin(CONTENT),
    );
    s.run(dev(a!["put", phone, "HomeDomain", "gone.txt"]).stdin(CONTENT));
    s.run(dev(a!["rm", phone, "HomeDomain", "gone.txt"]));
    s.run(dev(a!["ls", phone]));
    s.run(dev(a!["ls", phone, "--json"]));
    assert_eq!(
        s.run(dev(a!["get", phone, app, "Documents/a.txt"])).stdout,
        CONTENT
    );

    // Keychain: each secret shows only when got.
    let add = |class: &str, service: &str| {
        dev(a![
            "keychain", "add", phone, "--kind", "password", "--class", class
        ])
        .with(["--group", "com.example.canary", "--service", service])
        .with(["--account", "canary@example.com"])
    };
    let mut rows = Vec::new();
    for (class, secret) in [
        ("ak", SECRET_AK),
        ("dku", SECRET_DKU),
        ("akpu", SECRET_AKPU),
    ] {
        let out = s.run(add(class, class).env("KEYBAG_SECRET", secret));
        rows.push((class, out.text().trim().to_string()));
    }
    let out = s.run(add("ck", "ck").with(&secret_ck));
    rows.push(("ck", out.text().trim().to_string()));
    s.run(add("ck", "none").note("no secret").code(1));
    s.run(add("ck", "none").env("KEYBAG_SECRET", "").code(1));
    s.run(dev(a!["keychain", "ls", phone]));
    s.run(dev(a!["keychain", "ls", phone, "--json"]));
    for (class, row) in &rows {
        s.run(dev(a!["keychain", "get", phone, row]).shows(&[&format!("secret {class}")]));
    }

    // Lock states and passcodes, right and wrong, from the environment and files.
    s.run(dev(a!["lock", phone]));
    s.run(
        dev(a!["keychain", "get", phone, rows[0].1])
            .note("locked")
            .code(6),
    );
    s.run(
        dev(a!["unlock", phone])
            .env("KEYBAG_PASSCODE", WRONG_PASSCODE)
            .code(5),
    );
    s.run(dev(a!["unlock", phone]).with(&wrong_pc).code(5));
    s.run(dev(a!["unlock", phone]).note("no passcode").code(1));
    let key_as_passcode = opt("--passcode-file", &phone_key_file);
    s.run(
        dev(a!["unlock", phone])
            .with(&key_as_passcode)
            .note("a key file")
            .code(5),
    );
    s.run(dev(a!["unlock", phone]).env(env_pc.0, env_pc.1));
    s.run(dev(a!["restart", phone]));
    s.run(dev(a!["unlock", phone]).with(&pc));
    let passcode = a!["passcode", phone];
    s.run(
        dev(passcode.clone())
            .with(&new_pc)
            .env("KEYBAG_PASSCODE", WRONG_PASSCODE)
            .code(5),
    );
    s.run(
        dev(passcode.clone())
            .env(env_pc.0, env_pc.1)
            .note("no new one")
            .code(1),
    );
    s.run(dev(passcode.clone()).with(&new_pc).env(env_pc.0, env_pc.1));
    s.run(
        dev(passcode.clone())
            .with(&pc_back)
            .env("KEYBAG_NEW_PASSCODE", PASSCODE),
    );
    s.run(dev(a!["info", phone, "--json"]));

    // Backups: unencrypted first; then the backup password set through the library at a
    // cheap KDF (the device keeps it); then from the command line with the kept password.
    let plain = s.path("b-plain");
    s.run(dev(a!["backup", phone, plain]));
    s.run(dev(a!["backup", phone, s.path("b-plain-json"), "--json"]));
    let lib = s.path("b-lib");
    {
        let device = device::Device::open(&phone).unwrap();
        let opts = device::backup::BackupOptions {
            password: Some(zeroize::Zeroizing::new(PASSWORD.as_bytes().to_vec())),
            dpic: 10_000,
        };
        device::backup::backup(&device, &lib, &opts).unwrap();
        assert!(device.backup_encryption());
    }
    let derived = derived_key(&lib, PASSWORD);
    s.canary(Canary::key("derived key", derived.as_bytes()));
    s.scan("the library's encrypted backup");
    let derived_file = s.input(
        "b-lib.passkey",
        format!("{}\n", derived.to_hex()).as_bytes(),
    );
    let dk = opt("--derived-key-file", &derived_file);
    let dk_raw = opt(
        "--derived-key-file",
        &s.input("b-lib.passkey.bin", derived.as_bytes()),
    );
    let enc = s.path("b-enc");
    s.run(dev(a!["backup", phone, enc, "--encrypt"]).env(env_pw.0, env_pw.1));
    s.run(dev(a!["backup", phone, enc]).note("the kept password, an update"));
    s.run(
        dev(a![
            "backup",
            phone,
            s.path("b-enc-json"),
            "--encrypt",
            "--json"
        ])
        .with(&pw),
    );
    s.run(
        dev(a!["backup", phone, s.path("b-none"), "--encrypt"])
            .with(&empty_pw)
            .code(1),
    );

    // Every backup command on the encrypted backup: the password from the environment, a
    // file, stdin; the derived key from a file; the phone's device key for its dku item.
    let b = &lib;
    s.run(Run::new(a!["info", b]).env(env_pw.0, env_pw.1));
    s.run(Run::new(a!["info", b, "--json"]).with(&pw));
    s.run(
        Run::new(a!["ls", b, "--long", "--password-file", "-"])
            .stdin(format!("{PASSWORD}\n").as_bytes()),
    );
    s.run(Run::new(a!["ls", b, "--json"]).with(&dk_raw));
    let got = s.run(Run::new(a!["cat", b, "HomeDomain", "Library/c.txt"]).with(&dk));
    assert_eq!(got.stdout, CONTENT);
    s.run(
        Run::new(a!["extract", b, s.path("lib-x")])
            .with(&dk)
            .with(&phone_key),
    );
    s.run(Run::new(a!["extract", b, s.path("lib-x-json"), "--json"]).env(env_pw.0, env_pw.1));
    s.run(
        Run::new(a!["decrypt", b, s.path("lib-d")])
            .with(&pw)
            .with(&phone_key),
    );
    s.run(Run::new(a!["decrypt", b, s.path("lib-d-json"), "--json"]).with(&dk));
    s.run(Run::new(a!["verify", b]).env(env_pw.0, env_pw.1));
    s.run(Run::new(a!["verify", b, "--deep", "--json"]).with(&pw));
    s.run(Run::new(a!["audit", b]).env(env_pw.0, env_pw.1));
    s.run(
        Run::new(a!["audit", b, "--json"])
            .with(&pw)
            .with(&phone_key),
    );
    let html = s.path("lib-audit.html");
    s.run(Run::new(a!["audit", b, "--html", html]).env(env_pw.0, env_pw.1));
    assert!(html.is_file());
    s.run(Run::new(a!["keychain", b]).with(&dk).with(&phone_key));
    s.run(Run::new(a!["keychain", b, "--json"]).env(env_pw.0, env_pw.1));
    // akpu never leaves the phone; dku only opens with the phone's device key.
    let backed_up = ["secret ak", "secret ck", "secret dku"];
    let show = a!["keychain", b, "--show-secrets"];
    s.run(
        Run::new(show.clone())
            .with(&dk)
            .with(&phone_key)
            .shows(&backed_up),
    );
    let out = s.run(
        Run::new(show.clone())
            .with(["--json"])
            .with(&pw)
            .shows(&backed_up[..2]),
    );
    assert_eq!(out.json()["secrets_shown"], true);
    let csv = s.path("lib-keychain.csv");
    s.allow_in_file(&csv, &backed_up);
    s.run(
        Run::new(show)
            .with(["--format", "csv"])
            .with(&dk_raw)
            .with(&phone_key)
            .shows(&backed_up)
            .stdout_to(&csv),
    );
    s.assert_file_holds(&csv, &backed_up);
    // The unencrypted backup: its keychain stays sealed, even when asked.
    s.run(
        Run::new(a!["info", plain])
            .with(&pw)
            .note("a password given for nothing"),
    );
    s.run(Run::new(a!["keychain", plain, "--show-secrets"]).with(&phone_key));
    s.run(Run::new(a!["extract", plain, s.path("plain-x")]));
    // Wrong and malformed.
    s.run(
        Run::new(a!["verify", b])
            .env("KEYBAG_PASSWORD", WRONG_PASSWORD)
            .code(5),
    );
    s.run(Run::new(a!["verify", b]).with(&wrong_pw).code(5));
    s.run(Run::new(a!["verify", b]).with(&empty_pw).code(1));
    let key_as_password = opt("--password-file", &derived_file);
    s.run(
        Run::new(a!["verify", b])
            .with(&key_as_password)
            .note("a key file")
            .code(5),
    );
    s.run(Run::new(a!["ls", b]).with(&k.wrong_passkey).code(5));
    s.run(
        Run::new(a!["audit", b])
            .env("KEYBAG_PASSWORD", WRONG_PASSWORD)
            .code(5),
    );
    s.run(
        Run::new(a!["keychain", b])
            .with(&dk)
            .with(&k.wrong_device)
            .code(5),
    );

    // passwd on a copy (cheap: the copy's KDF count stays): there and back, right and wrong.
    let pb = s.path("b-passwd");
    common::copy_dir(&lib, &pb);
    let passwd = a!["passwd", pb];
    s.run(
        Run::new(passwd.clone())
            .with(&new_pw)
            .env("KEYBAG_PASSWORD", WRONG_PASSWORD)
            .code(5),
    );
    s.run(
        Run::new(passwd.clone())
            .with(&new_pw)
            .env(env_pw.0, env_pw.1),
    );
    s.canary(Canary::key(
        "derived key after passwd",
        derived_key(&pb, NEW_PASSWORD).as_bytes(),
    ));
    s.run(
        Run::new(passwd.clone())
            .with(["--json"])
            .with(&pw_back)
            .env("KEYBAG_NEW_PASSWORD", PASSWORD),
    );
    s.run(Run::new(a!["verify", pb]).env(env_pw.0, env_pw.1));

    // The same secrets typed at prompts on a terminal (where the spinners show too): the
    // terminal shows no secret, whether keybag or the terminal driver would echo it.
    let pw_prompt = "Password for";
    s.run(Run::new(a!["verify", b]).terminal(&[(pw_prompt, PASSWORD)]));
    s.run(
        Run::new(a!["verify", b])
            .terminal(&[(pw_prompt, WRONG_PASSWORD)])
            .code(5),
    );
    let new_prompt = "New password for";
    let again = "Repeat the new password";
    s.run(Run::new(a!["passwd", pb]).terminal(&[
        (pw_prompt, PASSWORD),
        (new_prompt, NEW_PASSWORD),
        (again, NEW_PASSWORD),
    ]));
    s.run(
        Run::new(a!["passwd", pb, "--json"])
            .terminal(&[
                (pw_prompt, NEW_PASSWORD),
                (new_prompt, PASSWORD),
                (again, WRONG_PASSWORD),
            ])
            .note("the two differ")
            .code(1),
    );
    s.run(dev(a!["lock", phone]));
    s.run(dev(a!["unlock", phone]).terminal(&[("Passcode for", PASSCODE)]));
    for (old, new) in [(PASSCODE, NEW_PASSCODE), (NEW_PASSCODE, PASSCODE)] {
        s.run(dev(a!["passcode", phone]).terminal(&[
            ("Passcode for", old),
            ("New passcode", new),
            ("Again", new),
        ]));
    }
    s.run(
        dev(a!["backup", phone, s.path("b-tty"), "--encrypt"])
            .terminal(&[(pw_prompt, PASSWORD), ("Again", PASSWORD)]),
    );

    // restore: onto a second phone, and onto the phone itself.
    let phone2 = s.path("phone2");
    s.run(dev(a![
        "init",
        phone2,
        "--name",
        "Second phone",
        "--passcode-iterations",
        "1000"
    ]));
    device_canaries(&mut s, &phone2, "phone2");
    let restore = a!["restore", phone2, b];
    s.run(
        dev(restore.clone())
            .env("KEYBAG_PASSWORD", WRONG_PASSWORD)
            .code(5),
    );
    s.run(dev(restore.clone()).with(&k.wrong_passkey).code(5));
    for (what, file) in &k.malformed_passkeys {
        s.run(dev(restore.clone()).with(file).note(what).code(2));
    }
    s.run(dev(restore.clone()).with(&pw));
    s.run(dev(restore.clone()).terminal(&[("Password for", PASSWORD)]));
    s.run(dev(restore).with(["--json"]).with(&dk));
    s.run(dev(a!["keychain", "ls", phone2]));
    s.run(dev(a!["restore", phone, enc]).env(env_pw.0, env_pw.1));
    s.run(dev(a!["restore", phone, plain, "--json"]));

    // import: the phone's backup (password file, passcode file); the enc fixture (derived
    // key and device key from files): its secrets are then on a device, which shows them
    // only when asked.
    let imp = s.path("imported");
    s.run(dev(a!["import", imp, b]).with(&pw).with(&pc));
    device_canaries(&mut s, &imp, "imported");
    let fixture = common::enc();
    let imp2 = s.path("imported-enc");
    let import = a!["import", imp2, fixture];
    s.run(dev(import.clone()).with(&k.wrong_passkey).code(5));
    for (what, file) in &k.malformed_devices {
        s.run(
            dev(import.clone())
                .with(&k.passkey)
                .with(file)
                .note(what)
                .code(2),
        );
    }
    let out = s.run(
        dev(import)
            .with(["--json"])
            .with(&k.passkey)
            .with(&k.device_raw),
    );
    assert_eq!(out.json()["keychain"].as_array().unwrap().len(), 6);
    device_canaries(&mut s, &imp2, "imported-enc");
    let listed = s.run(dev(a!["keychain", "ls", imp2, "--json"])).json();
    assert_eq!(listed.as_array().unwrap().len(), enc_secrets.len());
    for item in listed.as_array().unwrap() {
        let row = item["rowid"].to_string();
        let name = format!("enc secret {}", item["class"].as_str().unwrap());
        s.run(dev(a!["keychain", "get", imp2, row]).shows(&[&name]));
    }

    // The one real `device backup --encrypt`: a new password, so a new keybag at 10,000,000
    // rounds (the device keeps it, wrapped).
    let real = s.path("b-real");
    s.run(
        dev(a!["backup", phone, real, "--encrypt"])
            .env("KEYBAG_PASSWORD", NEW_PASSWORD)
            .must_catch_cmdline(),
    );
    s.canary(Canary::key(
        "derived key (real KDF)",
        derived_key(&real, NEW_PASSWORD).as_bytes(),
    ));
    s.run(
        Run::new(a!["keychain", real, "--show-secrets", "--json"])
            .with(&phone_key)
            .env("KEYBAG_PASSWORD", NEW_PASSWORD)
            .shows(&backed_up)
            .must_catch_cmdline(),
    );

    // The passcode removed (akpu items deleted), the device looked at once more.
    s.run(dev(a!["passcode", phone, "--remove"]).env(env_pc.0, env_pc.1));
    s.run(dev(a!["keychain", "ls", phone]));
    s.run(dev(a!["info", phone]));
    finish(s);
}
