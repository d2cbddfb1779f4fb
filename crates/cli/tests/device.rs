//! `keybag device …`: the emulated iPhone from the command line. Passcodes and
//! secrets go through files and environment variables, never argv.

mod common;

use std::path::Path;
use std::process::Output;

use common::Keybag;
use serde_json::Value;

const PASSCODE: &str = "246810";

/// Runs keybag without the passcode and secret variables of the test's environment,
/// then `env`; stdin is a pipe fed `stdin` (if any), then closed.
fn keybag(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    // Nothing secret comes from the developer's shell: each test passes what it means to.
    Keybag::new(args)
        .env_remove("KEYBAG_PASSWORD")
        .env_remove("KEYBAG_PASSCODE")
        .env_remove("KEYBAG_NEW_PASSCODE")
        .env_remove("KEYBAG_SECRET")
        .envs(env)
        .stdin(stdin.unwrap_or_default())
        .output()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn info(dir: &Path) -> Value {
    serde_json::from_str(&ok(&keybag(
        &["device", "info", dir.to_str().unwrap(), "--json"],
        &[],
        None,
    )))
    .unwrap()
}

#[test]
fn device_lifecycle_from_the_command_line() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("phone");
    let d = dir.to_str().unwrap();
    let pcfile = t.path().join("pc");
    std::fs::write(&pcfile, format!("{PASSCODE}\n")).unwrap();
    let pc = pcfile.to_str().unwrap();
    ok(&keybag(
        &[
            "device",
            "init",
            d,
            "--name",
            "CLI phone",
            "--passcode-file",
            pc,
            "--model",
            "iPhone14,5",
            "--ios",
            "17.4",
            "--passcode-iterations",
            "1000",
        ],
        &[],
        None,
    ));
    let i = info(&dir);
    assert_eq!(i["name"], "CLI phone");
    assert_eq!(i["model"], "iPhone14,5");
    assert_eq!(i["ios_version"], "17.4");
    assert_eq!(i["state"], "unlocked");
    assert_eq!(i["passcode_set"], true);
    // The UID never appears in any output.
    let uid = hex::encode(std::fs::read(dir.join("secure/uid.key")).unwrap());
    let text = ok(&keybag(&["device", "info", d], &[], None));
    assert!(!text.to_lowercase().contains(&uid));
    assert!(!serde_json::to_string(&i).unwrap().contains(&uid));

    ok(&keybag(
        &["device", "app", "install", d, "com.example.notes"],
        &[],
        None,
    ));
    ok(&keybag(
        &[
            "device",
            "put",
            d,
            "AppDomain-com.example.notes",
            "Documents/a.txt",
            "--class",
            "A",
        ],
        &[],
        Some(b"class A secret"),
    ));
    ok(&keybag(
        &[
            "device",
            "put",
            d,
            "HomeDomain",
            "Library/c.txt",
            "--exclude-from-backup",
        ],
        &[],
        Some(b"class C"),
    ));
    let got = ok(&keybag(
        &[
            "device",
            "get",
            d,
            "AppDomain-com.example.notes",
            "Documents/a.txt",
        ],
        &[],
        None,
    ));
    assert_eq!(got, "class A secret");
    let ls: Value = serde_json::from_str(&ok(&keybag(
        &["device", "ls", d, "--domain", "HomeDomain", "--json"],
        &[],
        None,
    )))
    .unwrap();
    let c = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "Library/c.txt")
        .unwrap();
    assert_eq!(c["class"], "C");
    assert_eq!(c["exclude_from_backup"], true);
    assert_eq!(c["size"], 7);

    // Keychain: secret from the environment, never argv.
    let row = ok(&keybag(
        &[
            "device",
            "keychain",
            "add",
            d,
            "--kind",
            "password",
            "--class",
            "ak",
            "--group",
            "com.example.group",
            "--service",
            "mail",
            "--account",
            "alice",
        ],
        &[("KEYBAG_SECRET", "hunter2")],
        None,
    ));
    let row = row.trim().to_string();
    let secret_file = t.path().join("secret");
    std::fs::write(&secret_file, b"wifi-pass").unwrap();
    ok(&keybag(
        &[
            "device",
            "keychain",
            "add",
            d,
            "--kind",
            "internet",
            "--class",
            "ck",
            "--group",
            "g",
            "--server",
            "example.com",
            "--account",
            "bob",
            "--secret-file",
            secret_file.to_str().unwrap(),
        ],
        &[],
        None,
    ));
    assert_eq!(
        ok(&keybag(&["device", "keychain", "get", d, &row], &[], None)),
        "hunter2"
    );
    let kl = ok(&keybag(&["device", "keychain", "ls", d], &[], None));
    assert!(
        kl.contains("service=mail") && !kl.contains("hunter2"),
        "{kl}"
    );

    // Lock: class A and ak unavailable (exit 6), C still readable.
    ok(&keybag(&["device", "lock", d], &[], None));
    assert_eq!(info(&dir)["state"], "locked");
    let o = keybag(
        &[
            "device",
            "get",
            d,
            "AppDomain-com.example.notes",
            "Documents/a.txt",
        ],
        &[],
        None,
    );
    assert_eq!(code(&o), 6);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not available while the device is locked"));
    assert_eq!(
        code(&keybag(&["device", "keychain", "get", d, &row], &[], None)),
        6
    );
    assert_eq!(
        ok(&keybag(
            &["device", "get", d, "HomeDomain", "Library/c.txt"],
            &[],
            None
        )),
        "class C"
    );
    let kj: Value = serde_json::from_str(&ok(&keybag(
        &["device", "keychain", "ls", d, "--json"],
        &[],
        None,
    )))
    .unwrap();
    assert_eq!(kj[0]["available"], false);
    assert_eq!(kj[1]["available"], true);
    // Class B written while locked.
    ok(&keybag(
        &["device", "put", d, "HomeDomain", "b.bin", "--class", "B"],
        &[],
        Some(b"bbb"),
    ));
    assert_eq!(
        code(&keybag(
            &["device", "get", d, "HomeDomain", "b.bin"],
            &[],
            None
        )),
        6
    );

    // Wrong passcode: exit 5, counted.
    let o = keybag(
        &["device", "unlock", d],
        &[("KEYBAG_PASSCODE", "000000")],
        None,
    );
    assert_eq!(code(&o), 5);
    assert_eq!(info(&dir)["failed_attempts"], 1);
    // No passcode at all: exit 1, not counted.
    assert_eq!(code(&keybag(&["device", "unlock", d], &[], None)), 1);
    ok(&keybag(
        &["device", "unlock", d, "--passcode-file", pc],
        &[],
        None,
    ));
    assert_eq!(
        ok(&keybag(
            &["device", "get", d, "HomeDomain", "b.bin"],
            &[],
            None
        )),
        "bbb"
    );
    assert_eq!(info(&dir)["failed_attempts"], 0);

    // Restart: before first unlock, C unavailable.
    ok(&keybag(&["device", "restart", d], &[], None));
    assert_eq!(info(&dir)["state"], "before-first-unlock");
    assert_eq!(
        code(&keybag(
            &["device", "get", d, "HomeDomain", "Library/c.txt"],
            &[],
            None
        )),
        6
    );

    // Passcode change then removal.
    ok(&keybag(
        &["device", "passcode", d],
        &[
            ("KEYBAG_PASSCODE", PASSCODE),
            ("KEYBAG_NEW_PASSCODE", "13579"),
        ],
        None,
    ));
    ok(&keybag(&["device", "restart", d], &[], None));
    assert_eq!(
        code(&keybag(
            &["device", "unlock", d, "--passcode-file", pc],
            &[],
            None
        )),
        5
    );
    ok(&keybag(
        &["device", "unlock", d],
        &[("KEYBAG_PASSCODE", "13579")],
        None,
    ));
    ok(&keybag(
        &["device", "passcode", d, "--remove"],
        &[("KEYBAG_PASSCODE", "13579")],
        None,
    ));
    assert_eq!(info(&dir)["passcode_set"], false);

    // rm, bad paths (exit 2), not a device (exit 4), tampered keybag (exit 4).
    ok(&keybag(
        &["device", "rm", d, "HomeDomain", "b.bin"],
        &[],
        None,
    ));
    assert_eq!(
        code(&keybag(
            &["device", "get", d, "HomeDomain", "../x"],
            &[],
            None
        )),
        2
    );
    assert_eq!(
        code(&keybag(
            &["device", "put", d, "HomeDomain", "/etc/x"],
            &[],
            Some(b"x")
        )),
        2
    );
    let o = keybag(&["device", "info", t.path().to_str().unwrap()], &[], None);
    assert_eq!(code(&o), 4);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a device folder"));
    let kb = dir.join("secure/systembag.kb");
    let mut bytes = std::fs::read(&kb).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 1;
    std::fs::write(&kb, &bytes).unwrap();
    let o = keybag(&["device", "info", d], &[], None);
    assert_eq!(code(&o), 4);
    assert!(String::from_utf8_lossy(&o.stderr).contains("systembag.kb"));
}

#[test]
fn akpu_needs_a_passcode_from_the_command_line() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("phone");
    let d = dir.to_str().unwrap();
    ok(&keybag(
        &[
            "device",
            "init",
            d,
            "--name",
            "n",
            "--passcode-iterations",
            "1000",
        ],
        &[],
        None,
    ));
    assert_eq!(info(&dir)["passcode_set"], false);
    let o = keybag(
        &[
            "device",
            "keychain",
            "add",
            d,
            "--kind",
            "password",
            "--class",
            "akpu",
            "--group",
            "g",
            "--service",
            "s",
            "--account",
            "a",
        ],
        &[("KEYBAG_SECRET", "x")],
        None,
    );
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs a passcode"));
}

#[test]
fn device_backup_keeps_the_backup_password_on_the_device() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("phone");
    let d = dir.to_str().unwrap();
    ok(&keybag(
        &["device", "init", d, "--name", "enc phone"],
        &[],
        None,
    ));
    let out = t.path().join("backup");
    let o = out.to_str().unwrap();
    let pw = [("KEYBAG_PASSWORD", "cli backup pw")];
    let first: Value = serde_json::from_str(&ok(&keybag(
        &["device", "backup", d, o, "--encrypt", "--json"],
        &pw,
        None,
    )))
    .unwrap();
    assert_eq!(first["encrypted"], true);
    assert_eq!(first["backup_password_set"], true);
    assert_eq!(first["kdf_runs"], 1);
    // No --encrypt, no password anywhere: still encrypted, with the device's keybag, no KDF.
    let text = ok(&keybag(&["device", "backup", d, o], &[], None));
    assert!(text.starts_with("Encrypted backup"), "{text}");
    assert!(
        text.contains("encrypted with the backup password held by the device"),
        "{text}"
    );
    assert!(
        text.contains("nothing changed since this device's last backup"),
        "{text}"
    );
    let again: Value = serde_json::from_str(&ok(&keybag(
        &["device", "backup", d, o, "--json"],
        &[],
        None,
    )))
    .unwrap();
    assert_eq!(again["encrypted"], true);
    assert_eq!(again["device_keybag"], true);
    assert_eq!(again["kdf_runs"], 0);
    assert_eq!(again["unchanged"], true);
    // The backup still opens with the password set the first time.
    let listed = keybag(&["verify", o], &pw, None);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let wrong = keybag(&["verify", o], &[("KEYBAG_PASSWORD", "not it")], None);
    assert!(!wrong.status.success());
}
