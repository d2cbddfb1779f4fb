//! `keybag device cloud …`, `keybag cloud custody|recovery-key|audit` and `keybag serve admin
//! restore` through the binaries, against a `keybag serve` process: a locked phone backs up,
//! the operator restores it in standard custody and cannot after `custody e2e`, a new phone
//! restores with the recovery key. Secrets go through files, never argv; the server's log
//! names no file, account or secret.

mod common;

use std::path::Path;

use common::serve_proc::Serve;
use common::{Keybag, Out};

const ACCOUNT_PW: &str = "alice's account password";
const PASSCODE: &str = "246810";

fn run(cfg: &Path, args: &[&str]) -> Out {
    Keybag::new(args)
        .password(None)
        .env_remove("KEYBAG_ACCOUNT_PASSWORD")
        .env_remove("KEYBAG_PASSCODE")
        .env_remove("KEYBAG_SERVER")
        .envs(&[("KEYBAG_CONFIG_DIR", cfg.to_str().unwrap())])
        .run()
}

fn ok(cfg: &Path, args: &[&str]) -> String {
    let o = run(cfg, args);
    assert_eq!(o.code, 0, "keybag {}: {}", args.join(" "), o.stderr);
    String::from_utf8(o.stdout).unwrap()
}

fn json(cfg: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(cfg, args)).unwrap()
}

#[test]
fn device_cloud_from_the_command_line() {
    let t = tempfile::tempdir().unwrap();
    let p = |s: &str| t.path().join(s).display().to_string();
    let cfg = t.path().join("config");
    let srv = Serve::start(&t.path().join("data"), &[], &[]);
    std::fs::write(p("pw"), format!("{ACCOUNT_PW}\n")).unwrap();
    std::fs::write(p("pc"), format!("{PASSCODE}\n")).unwrap();
    let o = srv.admin(&["account", "add", "alice", "--code-file", &p("code")]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    ok(
        &cfg,
        &[
            "cloud",
            "register",
            "--server",
            &srv.url,
            "--account",
            "alice",
            "--enrollment-code-file",
            &p("code"),
            "--password-file",
            &p("pw"),
        ],
    );

    // A phone with a passcode and a diary (class A).
    ok(
        &cfg,
        &[
            "device",
            "init",
            &p("phone"),
            "--name",
            "Alice's iPhone",
            "--passcode-file",
            &p("pc"),
            "--passcode-iterations",
            "1000",
        ],
    );
    let diary = "Dear diary: nobody else reads this. 7f3a";
    std::fs::write(p("diary.txt"), diary).unwrap();
    ok(
        &cfg,
        &[
            "device",
            "put",
            &p("phone"),
            "HomeDomain",
            "Library/Notes/secret-diary.txt",
            "--class",
            "A",
            "--from",
            &p("diary.txt"),
        ],
    );
    ok(
        &cfg,
        &[
            "device",
            "cloud",
            "enable",
            &p("phone"),
            "--server",
            &srv.url,
            "--account",
            "alice",
            "--password-file",
            &p("pw"),
        ],
    );
    ok(&cfg, &["device", "lock", &p("phone")]);
    let b = json(&cfg, &["device", "cloud", "backup", &p("phone"), "--json"]);
    assert_eq!(b["lock_state"], "locked");
    assert_eq!(b["files"], 1);

    let login = ["--device", &p("phone"), "--password-file", &p("pw")];
    let mut a = vec!["cloud", "audit", "--json"];
    a.extend(login);
    let audit = json(&cfg, &a);
    assert_eq!(audit["mode"], "standard");
    assert_eq!(audit["escrow"], true);
    assert_eq!(audit["mud_puddle"]["verdict"], "FAILS");

    // The operator reads it.
    let o = srv.admin(&["restore", "--account", "alice", "--device", &p("operator")]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let got = ok(
        &cfg,
        &[
            "device",
            "get",
            &p("operator"),
            "HomeDomain",
            "Library/Notes/secret-diary.txt",
        ],
    );
    assert_eq!(got, diary);

    // A recovery key, then end-to-end custody: the operator is out.
    let rk_file = p("rk");
    let mut a = vec!["cloud", "recovery-key", "--out", &rk_file];
    a.extend(login);
    ok(&cfg, &a);
    let rk = std::fs::read_to_string(p("rk")).unwrap();
    assert_eq!(rk.trim().len(), 34);
    let mut a = vec!["cloud", "custody", "e2e"];
    a.extend(login);
    ok(&cfg, &a);
    let b = json(&cfg, &["device", "cloud", "backup", &p("phone"), "--json"]);
    assert_eq!(b["unchanged"], 1, "the unchanged diary is not read again");
    let mut a = vec!["cloud", "audit", "--json"];
    a.extend(login);
    let audit = json(&cfg, &a);
    assert_eq!(audit["mode"], "e2e");
    assert_eq!(audit["escrow"], false);
    assert_eq!(audit["mud_puddle"]["verdict"], "PASSES");
    let o = srv.admin(&["restore", "--account", "alice", "--device", &p("operator2")]);
    assert_eq!(o.code, 5, "the operator has no key: {}", o.stderr);
    assert!(o.stderr.contains("no escrow"), "{}", o.stderr);

    // A new phone: the wrong recovery key fails (exit 5), the right one restores.
    ok(
        &cfg,
        &[
            "device",
            "init",
            &p("new"),
            "--name",
            "new",
            "--passcode-file",
            &p("pc"),
            "--passcode-iterations",
            "1000",
        ],
    );
    std::fs::write(p("bad-rk"), "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA\n").unwrap();
    let restore = |rk: &str| {
        run(
            &cfg,
            &[
                "device",
                "cloud",
                "restore",
                &p("new"),
                "--server",
                &srv.url,
                "--account",
                "alice",
                "--password-file",
                &p("pw"),
                "--recovery-key-file",
                rk,
                "--json",
            ],
        )
    };
    assert_eq!(restore(&p("bad-rk")).code, 5);
    let o = restore(&p("rk"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["files"], 1);
    let got = ok(
        &cfg,
        &[
            "device",
            "get",
            &p("new"),
            "HomeDomain",
            "Library/Notes/secret-diary.txt",
        ],
    );
    assert_eq!(got, diary);

    // Another new phone, approved by the trusted one (which is locked: its key is
    // device-bound, not class-keyed).
    ok(
        &cfg,
        &[
            "device",
            "init",
            &p("new2"),
            "--name",
            "second",
            "--passcode-file",
            &p("pc"),
            "--passcode-iterations",
            "1000",
        ],
    );
    let restore2 = || {
        run(
            &cfg,
            &[
                "device",
                "cloud",
                "restore",
                &p("new2"),
                "--server",
                &srv.url,
                "--account",
                "alice",
                "--password-file",
                &p("pw"),
                "--approved",
            ],
        )
    };
    ok(
        &cfg,
        &[
            "device",
            "cloud",
            "request-approval",
            &p("new2"),
            "--server",
            &srv.url,
            "--account",
            "alice",
            "--password-file",
            &p("pw"),
        ],
    );
    let o = restore2();
    assert_eq!(o.code, 5, "not approved yet: {}", o.stderr);
    assert!(o.stderr.contains("not approved yet"), "{}", o.stderr);
    let mut a = vec!["device", "cloud", "approve"];
    a.extend(login);
    assert!(ok(&cfg, &a).contains("approved: new-"));
    let o = restore2();
    assert_eq!(o.code, 0, "{}", o.stderr);
    let got = ok(
        &cfg,
        &[
            "device",
            "get",
            &p("new2"),
            "HomeDomain",
            "Library/Notes/secret-diary.txt",
        ],
    );
    assert_eq!(got, diary);

    // Not enrolled: a clear error naming the device and what to do.
    let o = run(&cfg, &["device", "cloud", "backup", &p("new")]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("not enabled"), "{}", o.stderr);

    // The service's log names no secret, account or file.
    let log = srv.log();
    for f in [
        ACCOUNT_PW,
        rk.trim(),
        "secret-diary",
        diary,
        "alice",
        "Alice's iPhone",
    ] {
        assert!(!log.contains(f), "the log contains {f:?}");
    }
}
