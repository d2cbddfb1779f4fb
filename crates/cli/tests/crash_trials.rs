//! Crash trials (issue 8, item 9): the real `keybag` binary is killed with SIGKILL at random
//! points of its writers, ≥ 50 times each, and what it left is checked:
//!
//! * `passwd`: the backup opens with exactly one of the old and the new password (after the
//!   recovery step `keybag passwd --help` documents, when one is needed), every file
//!   extracts to its original content, `verify --deep` passes, and the next `passwd` works;
//! * `device backup` into a new folder: OUT is absent or a complete backup of the device;
//!   the next run cleans any staging folder and succeeds;
//! * `device backup` updating an earlier backup in place after the device changed: OUT is the
//!   old backup or the new one (a half-applied update is finished by the next run);
//! * `device backup` replacing a backup made under other keys (an unencrypted one): OUT is
//!   the old backup or the new one, never missing;
//! * `device restore`: the device opens and is untouched or fully restored; the next open
//!   removes any staging or set-aside folder; the restore can be run again;
//! * `device import`: the new device folder is absent or complete; the next run cleans the
//!   staging folder and succeeds.
//!
//! Kill points: for each writer the uninterrupted run is timed once (T, only the range of the
//! delays, never asserted); each trial draws its delay uniformly from [0, T] with a seeded
//! generator (printed; KEYBAG_CRASH_SEED replays it), and two trials each kill at once and
//! after the exit. Each writer prints a summary line of outcomes (run with `--nocapture` to
//! see them) and must have left both the old and the new state at least once. A failure
//! names the writer, the trial, its kill point, the seed and what was found.
//!
//! The test data is small and its keybags cheap: the device's backup password is set once,
//! through the library, with 1,000 PBKDF2-SHA256 rounds instead of Apple's 10,000,000 (the
//! CLI has no such option; later backups reuse the device's keybag, as iOS does). Secrets
//! travel in KEYBAG_PASSWORD / KEYBAG_NEW_PASSWORD / KEYBAG_SECRET, never on argv.

mod crash;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crash::{
    copy, device_state, extract, keybag, keybag_ok, kill_points, names, p, run_and_kill, seed,
    siblings, timed, tree, trial_dirs, verify, Ctx, DeviceState, Outcome, Rng, Tally, TRIALS,
};

/// The backup password of every backup here.
const P0: &str = "crash trials: backup password";
/// The new password `passwd` sets.
const P1: &str = "crash trials: new password";
/// The password of the run after the trial.
const P2: &str = "crash trials: third password";
/// PBKDF2-SHA256 rounds of the test keybag (Apple: 10,000,000).
const DPIC: u32 = 1000;
const APP: &str = "com.example.notes";
const NOTES: &str = "AppDomain-com.example.notes";

// ---------------------------------------------------------------- test data

/// `(domain, path, class, size, extra flag)` of the phone's files.
const FILES: &[(&str, &str, &str, usize, Option<&str>)] = &[
    ("HomeDomain", "Library/SMS/sms.db", "A", 180_000, None),
    (
        "HomeDomain",
        "Library/Notes/notes.sqlite",
        "B",
        60_000,
        None,
    ),
    (
        "HomeDomain",
        "Library/Preferences/com.apple.springboard.plist",
        "C",
        3_000,
        None,
    ),
    ("HomeDomain", "Library/empty", "D", 0, None),
    (
        "CameraRollDomain",
        "Media/DCIM/100APPLE/IMG_0001.HEIC",
        "C",
        260_000,
        None,
    ),
    (
        "CameraRollDomain",
        "Media/DCIM/100APPLE/IMG_0002.HEIC",
        "C",
        90_000,
        None,
    ),
    (NOTES, "Documents/note-1.txt", "A", 700, None),
    (NOTES, "Documents/note-2.txt", "C", 40_000, None),
    (
        NOTES,
        "Library/Preferences/com.example.notes.plist",
        "D",
        900,
        None,
    ),
    ("HomeDomain", "Library/Caches/big.cache", "C", 50_000, None),
    (
        "HomeDomain",
        "Documents/excluded.bin",
        "C",
        10_000,
        Some("--exclude-from-backup"),
    ),
];

/// `device put DIR DOMAIN PATH --class C [flag] --from FILE` with `size` pseudo-random bytes.
fn put(dir: &Path, scratch: &Path, rng: &mut Rng, f: (&str, &str, &str, usize, Option<&str>)) {
    let (domain, path, class, size, flag) = f;
    let src = scratch.join("content");
    std::fs::write(&src, rng.bytes(size)).unwrap();
    let mut args = vec![
        p("device"),
        p("put"),
        dir,
        p(domain),
        p(path),
        p("--class"),
        p(class),
        p("--from"),
        &src,
    ];
    if let Some(flag) = flag {
        args.push(p(flag));
    }
    keybag_ok(&args, &[]);
}

fn keychain_add(dir: &Path, kind: &str, class: &str, service: &str, secret: &str) {
    let key = if kind == "internet" {
        "--server"
    } else {
        "--service"
    };
    keybag_ok(
        &[
            p("device"),
            p("keychain"),
            p("add"),
            dir,
            p("--kind"),
            p(kind),
            p("--class"),
            p(class),
            p("--group"),
            p("group.example"),
            p(key),
            p(service),
            p("--account"),
            p("alice"),
        ],
        &[("KEYBAG_SECRET", secret)],
    );
}

/// A phone (no passcode, so always unlocked) with files of every class, an excluded file, a
/// cache, three keychain items, and backup encryption on: its backup password `P0` set
/// through the library at `DPIC` rounds (which also writes a first backup into `first`).
fn make_phone(dir: &Path, first: &Path, scratch: &Path) {
    let mut rng = Rng::new(7, "phone");
    keybag_ok(
        &[p("device"), p("init"), dir, p("--name"), p("Crash phone")],
        &[],
    );
    keybag_ok(&[p("device"), p("app"), p("install"), dir, p(APP)], &[]);
    for &f in FILES {
        put(dir, scratch, &mut rng, f);
    }
    keychain_add(dir, "password", "ak", "mail", "mail secret");
    keychain_add(dir, "internet", "ck", "example.com", "web secret");
    keychain_add(dir, "password", "dku", "vpn", "vpn secret");
    let dev = device::Device::open(dir).unwrap();
    let opts = device::backup::BackupOptions {
        password: Some(zeroize::Zeroizing::new(P0.as_bytes().to_vec())),
        dpic: DPIC,
    };
    device::backup::backup(&dev, first, &opts).unwrap();
    assert!(dev.backup_encryption(), "the phone keeps its backup keybag");
}

/// What changes on the phone between two backups: two files rewritten, one removed, two new
/// ones, a keychain item more.
fn change_phone(dir: &Path, scratch: &Path) {
    let mut rng = Rng::new(8, "change");
    put(
        dir,
        scratch,
        &mut rng,
        ("HomeDomain", "Library/SMS/sms.db", "A", 190_000, None),
    );
    put(
        dir,
        scratch,
        &mut rng,
        (NOTES, "Documents/note-1.txt", "A", 900, None),
    );
    keybag_ok(
        &[
            p("device"),
            p("rm"),
            dir,
            p(NOTES),
            p("Documents/note-2.txt"),
        ],
        &[],
    );
    put(
        dir,
        scratch,
        &mut rng,
        (NOTES, "Documents/note-3.txt", "B", 30_000, None),
    );
    put(
        dir,
        scratch,
        &mut rng,
        ("HomeDomain", "Library/new.db", "C", 120_000, None),
    );
    keychain_add(dir, "password", "ck", "chat", "chat secret");
}

/// `device backup DIR OUT` (encrypted with the device's keybag: no password, no KDF).
fn backup_cmd(dir: &Path, out: &Path) -> std::process::Command {
    crash::command(&[p("device"), p("backup"), dir, out], &[])
}

/// Checks a backup the way a user would: `verify --deep` exits 0 and every file extracts to
/// `expected` (`domain/relativePath` → sha256).
fn check_backup(ctx: &Ctx, out: &Path, pw: &str, aux: &Path, expected: &BTreeMap<String, String>) {
    let (code, err) = verify(out, pw, true);
    ctx.check(code == 0, format!("verify --deep exited {code}: {err}"));
    match extract(out, pw, aux) {
        Ok(files) => ctx.check(
            &files == expected,
            format!(
                "the files differ from what they should be: {}",
                diff(expected, &files)
            ),
        ),
        Err(e) => ctx.fail(e),
    }
}

/// The keys of two maps that differ, for failure messages.
fn diff(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>) -> String {
    let keys: std::collections::BTreeSet<_> = want.keys().chain(got.keys()).collect();
    let d: Vec<_> = keys
        .into_iter()
        .filter(|k| want.get(*k) != got.get(*k))
        .map(|k| match (want.contains_key(k), got.contains_key(k)) {
            (true, false) => format!("missing {k}"),
            (false, true) => format!("extra {k}"),
            _ => format!("changed {k}"),
        })
        .collect();
    d.join(", ")
}

/// The set of `names` as strings.
fn set(names: &[&str]) -> std::collections::BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Paths of every entry under `root` (no contents): a backup's layout.
fn layout(root: &Path) -> Vec<String> {
    tree(root).into_keys().collect()
}

/// The trials of one writer: its seed and a temp folder for its templates and trials.
struct Writer {
    name: &'static str,
    seed: u64,
    base: tempfile::TempDir,
}

impl Writer {
    fn new(name: &'static str) -> Self {
        let seed = seed();
        eprintln!("crash trials {name}: seed {seed}");
        Writer {
            name,
            seed,
            base: tempfile::tempdir().unwrap(),
        }
    }

    /// A folder for the templates.
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.base.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Runs the trials: for each kill point, `trial(ctx, ws, aux, tally)` in fresh `ws`
    /// (the writer's folders) and `aux` (logs, extractions) folders; then prints the summary
    /// line and asserts that both end states were seen.
    fn run(
        &self,
        t: std::time::Duration,
        mut trial: impl FnMut(&mut Ctx, &Path, &Path, &mut Tally) -> Outcome,
    ) {
        let mut rng = Rng::new(self.seed, self.name);
        let mut tally = Tally::default();
        let start = Instant::now();
        for (n, kill) in kill_points(&mut rng, TRIALS, t).into_iter().enumerate() {
            let (ws, aux) = trial_dirs(self.base.path(), n);
            let mut ctx = Ctx {
                writer: self.name,
                seed: self.seed,
                n,
                kill,
                notes: Vec::new(),
            };
            let outcome = trial(&mut ctx, &ws, &aux, &mut tally);
            tally.add(outcome);
            std::fs::remove_dir_all(ws.parent().unwrap()).unwrap();
        }
        println!("{}", tally.line(self.name, self.seed, t, start.elapsed()));
        tally.assert_both_seen(self.name);
    }
}

/// Runs the writer of a trial and records how it ended; fails the trial if it exited by
/// itself with an error.
fn kill_writer(ctx: &mut Ctx, cmd: std::process::Command, aux: &Path, tally: &mut Tally) -> bool {
    let k = run_and_kill(cmd, ctx.kill, &aux.join("stderr"));
    ctx.note(match k.code {
        Some(c) => format!("the writer exited by itself with {c}"),
        None => "the writer was killed".to_string(),
    });
    if let Some(c) = k.code {
        ctx.check(
            c == 0,
            format!("the writer failed on its own: {}", k.stderr),
        );
    }
    if k.finished() {
        tally.finished += 1;
    }
    k.finished()
}

// ---------------------------------------------------------------- passwd

#[test]
fn passwd_crash_trials() {
    let w = Writer::new("passwd");
    let setup = w.dir("setup");
    let backup = setup.join("backup");
    make_phone(&setup.join("phone"), &backup, &setup);
    let before = tree(&backup);
    let files = extract(&backup, P0, &setup).unwrap();
    assert!(files.len() >= 8, "{files:?}");
    let passwd = |b: &Path, old: &str, new: &str| {
        crash::command(
            &[p("passwd"), b],
            &[("KEYBAG_PASSWORD", old), ("KEYBAG_NEW_PASSWORD", new)],
        )
    };
    let reference = setup.join("reference");
    copy(&backup, &reference);
    let (t, _) = timed(passwd(&reference, P0, P1));

    w.run(t, |ctx, ws, aux, tally| {
        let b = ws.join("backup");
        copy(&backup, &b);
        kill_writer(ctx, passwd(&b, P0, P1), aux, tally);
        let found = tree(&b);
        let untouched = found == before;
        let changed: Vec<_> = found
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        ctx.note(format!("new or changed files: {changed:?}"));
        let temps: Vec<_> = names(&b)
            .into_iter()
            .filter(|n| n.starts_with(".Manifest.plist"))
            .collect();
        if !temps.is_empty() {
            tally.leftovers += 1;
        }
        // Exactly one password opens it (readers ignore Manifest.plist.bak).
        let opens = |ctx: &mut Ctx| -> &'static str {
            let (old, new) = (verify(&b, P0, false).0, verify(&b, P1, false).0);
            ctx.note(format!(
                "verify exits {old} with the old password, {new} with the new"
            ));
            match (old, new) {
                (0, 5) => P0,
                (5, 0) => P1,
                _ => ctx.fail("not exactly one of the two passwords opens the backup"),
            }
        };
        let mut pw = opens(ctx);
        let bak = b.join("Manifest.plist.bak");
        let mut outcome = None;
        if bak.exists() {
            let same =
                std::fs::read(&bak).unwrap() == std::fs::read(b.join("Manifest.plist")).unwrap();
            ctx.note(format!("Manifest.plist.bak left, identical: {same}"));
            ctx.check(
                !same || pw == P0,
                "an identical .bak, yet the old password fails",
            );
            if !same {
                // The recovery `keybag passwd --help` documents: if the new password opens
                // it, delete Manifest.plist.bak; if only the old one does, rename it back.
                if verify(&b, P1, false).0 == 0 {
                    std::fs::remove_file(&bak).unwrap();
                } else if verify(&b, P0, false).0 == 0 {
                    std::fs::rename(&bak, b.join("Manifest.plist")).unwrap();
                }
                pw = opens(ctx);
                outcome = Some(if pw == P0 {
                    Outcome::RecoveredOld
                } else {
                    Outcome::RecoveredNew
                });
            }
        }
        check_backup(ctx, &b, pw, aux, &files);
        let outcome = outcome.unwrap_or(match (untouched, pw == P0) {
            (true, _) => Outcome::Untouched,
            (false, true) => Outcome::Old,
            (false, false) => Outcome::New,
        });
        // The next password change works and leaves nothing behind.
        let o = passwd(&b, pw, P2).output().unwrap();
        ctx.check(
            o.status.success(),
            format!(
                "the next passwd failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        );
        ctx.check(
            verify(&b, P2, false).0 == 0,
            "the third password does not open it",
        );
        ctx.check(
            verify(&b, pw, false).0 == 5,
            "the previous password still opens it",
        );
        ctx.check(
            names(&b) == names(&backup),
            format!("left in the backup folder: {:?}", names(&b)),
        );
        outcome
    });
}

// ---------------------------------------------------------------- device backup (new)

#[test]
fn device_backup_new_crash_trials() {
    let w = Writer::new("device backup (new folder)");
    let setup = w.dir("setup");
    let phone = setup.join("phone");
    make_phone(&phone, &setup.join("first"), &setup);
    let phone_before = tree(&phone);
    let reference = setup.join("reference");
    copy(&phone, &reference.join("phone"));
    let out_ref = reference.join("out");
    let (t, _) = timed(backup_cmd(&reference.join("phone"), &out_ref));
    let files = extract(&out_ref, P0, &setup).unwrap();
    let out_layout = layout(&out_ref);

    w.run(t, |ctx, ws, aux, tally| {
        let (dir, out) = (ws.join("phone"), ws.join("out"));
        copy(&phone, &dir);
        kill_writer(ctx, backup_cmd(&dir, &out), aux, tally);
        let stray = siblings(ws, "out");
        ctx.note(format!("in the parent folder: {:?}", names(ws)));
        if !stray.is_empty() {
            tally.leftovers += 1;
        }
        let o = keybag(&[p("device"), p("info"), &dir], &[]);
        ctx.check(o.status.success(), "the device does not open");
        let outcome = if out.exists() {
            check_backup(ctx, &out, P0, aux, &files);
            Outcome::New
        } else if stray.is_empty() && tree(&dir) == phone_before {
            Outcome::Untouched
        } else {
            Outcome::Old
        };
        // The same command again: succeeds, cleans up, and leaves the complete backup.
        let o = backup_cmd(&dir, &out).output().unwrap();
        ctx.check(
            o.status.success(),
            format!(
                "the next backup failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        );
        ctx.check(
            names(ws) == set(&["out", "phone"]),
            format!("left beside the backup after the next run: {:?}", names(ws)),
        );
        check_backup(ctx, &out, P0, aux, &files);
        ctx.check(
            layout(&out) == out_layout,
            format!("the backup folder's layout differs: {:?}", names(&out)),
        );
        outcome
    });
}

// ---------------------------------------------------------------- device backup (replace)

#[test]
fn device_backup_replace_crash_trials() {
    // Not one of the five writers, but the switch restore had (two renames, no
    // folder between them) was here too: a backup under other keys (here an unencrypted
    // one, the device now encrypting) is rebuilt beside OUT and switched in.
    let w = Writer::new("device backup (replacing a backup under other keys)");
    let setup = w.dir("setup");
    let phone = setup.join("phone");
    make_phone(&phone, &setup.join("first"), &setup);
    let old = setup.join("out");
    let dev = device::Device::open(&phone).unwrap();
    device::backup::backup(&dev, &old, &device::backup::BackupOptions::default()).unwrap();
    drop(dev);
    let encrypted = |b: &Path| mobilebackup::Backup::open(b).unwrap().is_encrypted();
    assert!(!encrypted(&old));
    let old_tree = tree(&old);
    let old_layout = layout(&old);
    // Its keychain is sealed to the device (unencrypted backup): listed, not opened.
    let old_files = extract(&old, P0, &setup).unwrap();
    let reference = setup.join("reference");
    copy(&phone, &reference.join("phone"));
    copy(&old, &reference.join("out"));
    let out_ref = reference.join("out");
    let (t, _) = timed(backup_cmd(&reference.join("phone"), &out_ref));
    assert!(encrypted(&out_ref));
    let files = extract(&out_ref, P0, &setup).unwrap();
    let out_layout = layout(&out_ref);

    w.run(t, |ctx, ws, aux, tally| {
        let (dir, out) = (ws.join("phone"), ws.join("out"));
        copy(&phone, &dir);
        copy(&old, &out);
        kill_writer(ctx, backup_cmd(&dir, &out), aux, tally);
        let stray = siblings(ws, "out");
        ctx.note(format!("beside the backup: {:?}", names(ws)));
        if !stray.is_empty() {
            tally.leftovers += 1;
        }
        ctx.check(out.exists(), "no backup at OUT");
        let enc = encrypted(&out);
        ctx.note(format!("OUT is encrypted: {enc}"));
        check_backup(ctx, &out, P0, aux, if enc { &files } else { &old_files });
        let outcome = match (enc, tree(&out) == old_tree) {
            (true, _) => Outcome::New,
            (false, true) if stray.is_empty() => Outcome::Untouched,
            (false, true) => Outcome::Old,
            (false, false) => ctx.fail("the old backup was modified"),
        };
        if !enc {
            ctx.check(
                layout(&out) == old_layout,
                "the old backup's layout changed",
            );
        }
        let o = backup_cmd(&dir, &out).output().unwrap();
        ctx.check(
            o.status.success(),
            format!(
                "the next backup failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        );
        ctx.check(
            names(ws) == set(&["out", "phone"]),
            format!("left beside the backup after the next run: {:?}", names(ws)),
        );
        ctx.check(encrypted(&out), "the next backup is not encrypted");
        check_backup(ctx, &out, P0, aux, &files);
        ctx.check(
            layout(&out) == out_layout,
            format!("the backup folder's layout differs: {:?}", names(&out)),
        );
        outcome
    });
}

// ---------------------------------------------------------------- device backup (update)

/// The phone after a change and its backup from before it: (phone, backup).
fn changed_phone_and_old_backup(setup: &Path) -> (PathBuf, PathBuf) {
    let phone = setup.join("phone");
    make_phone(&phone, &setup.join("first"), setup);
    let old = setup.join("out");
    keybag_ok(&[p("device"), p("backup"), &phone, &old], &[]);
    change_phone(&phone, setup);
    (phone, old)
}

#[test]
fn device_backup_update_crash_trials() {
    let w = Writer::new("device backup (in-place update)");
    let setup = w.dir("setup");
    let (phone, old) = changed_phone_and_old_backup(&setup);
    let old_tree = tree(&old);
    let old_files = extract(&old, P0, &setup).unwrap();
    let reference = setup.join("reference");
    copy(&phone, &reference.join("phone"));
    copy(&old, &reference.join("out"));
    let out_ref = reference.join("out");
    let (t, _) = timed(backup_cmd(&reference.join("phone"), &out_ref));
    let new_files = extract(&out_ref, P0, &setup).unwrap();
    assert_ne!(old_files, new_files, "the change must show in the backup");
    let out_layout = layout(&out_ref);

    w.run(t, |ctx, ws, aux, tally| {
        let (dir, out) = (ws.join("phone"), ws.join("out"));
        copy(&phone, &dir);
        copy(&old, &out);
        kill_writer(ctx, backup_cmd(&dir, &out), aux, tally);
        let update = out.join(".keybag-update");
        let committed = update.join("COMMIT").exists();
        ctx.note(format!(
            "beside the backup: {:?}; update folder: {}, committed: {committed}",
            names(ws),
            update.exists()
        ));
        if update.exists() || !siblings(ws, "out").is_empty() {
            tally.leftovers += 1;
        }
        let outcome = if committed {
            // Half applied: readers refuse it and say to run the backup again, which first
            // finishes it (`update::recover`, tried here on a copy to see what it yields).
            let (code, err) = verify(&out, P0, false);
            ctx.check(
                code == 4 && err.contains("device backup"),
                format!("a half-applied update is not refused as it should be ({code}): {err}"),
            );
            let probe = aux.join("probe");
            copy(&out, &probe);
            let r = mobilebackup::update::recover(&probe);
            ctx.check(
                matches!(r, Ok(mobilebackup::update::Recovery::Finished)),
                format!("recover: {r:?}"),
            );
            check_backup(ctx, &probe, P0, aux, &new_files);
            Outcome::RecoveredNew
        } else {
            let (code, err) = verify(&out, P0, true);
            ctx.check(code == 0, format!("verify --deep exited {code}: {err}"));
            let files = extract(&out, P0, aux).unwrap_or_else(|e| ctx.fail(e));
            if files == old_files {
                if tree(&out) == old_tree {
                    Outcome::Untouched
                } else {
                    Outcome::Old
                }
            } else if files == new_files {
                Outcome::New
            } else {
                ctx.fail(format!(
                    "neither the old nor the new backup: vs old {}; vs new {}",
                    diff(&old_files, &files),
                    diff(&new_files, &files)
                ))
            }
        };
        let o = backup_cmd(&dir, &out).output().unwrap();
        ctx.check(
            o.status.success(),
            format!(
                "the next backup failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        );
        ctx.check(
            names(ws) == set(&["out", "phone"]),
            format!("left beside the backup after the next run: {:?}", names(ws)),
        );
        check_backup(ctx, &out, P0, aux, &new_files);
        ctx.check(
            layout(&out) == out_layout,
            format!("the backup folder's layout differs: {:?}", names(&out)),
        );
        outcome
    });
}

// ---------------------------------------------------------------- device restore

#[test]
fn device_restore_crash_trials() {
    let w = Writer::new("device restore");
    let setup = w.dir("setup");
    let (phone, backup) = changed_phone_and_old_backup(&setup);
    let backup_tree = tree(&backup);
    let before = device_state(&phone).unwrap();
    let phone_tree = tree(&phone);
    let restore = |dir: &Path| {
        crash::command(
            &[p("device"), p("restore"), dir, &backup],
            &[("KEYBAG_PASSWORD", P0)],
        )
    };
    let reference = setup.join("reference");
    copy(&phone, &reference);
    let (t, _) = timed(restore(&reference));
    let after = device_state(&reference).unwrap();
    assert_ne!(before, after, "the restore must change the device");

    let classify = |ctx: &Ctx, st: &DeviceState| {
        if *st == before {
            Outcome::Old
        } else if *st == after {
            Outcome::New
        } else {
            ctx.fail(format!(
                "neither untouched nor restored: vs before {}; vs after {}",
                diff(&before.contents, &st.contents),
                diff(&after.contents, &st.contents)
            ))
        }
    };
    w.run(t, |ctx, ws, aux, tally| {
        let dir = ws.join("phone");
        copy(&phone, &dir);
        kill_writer(ctx, restore(&dir), aux, tally);
        let stray = siblings(ws, "phone");
        ctx.note(format!(
            "in the parent folder after the kill: {:?}",
            names(ws)
        ));
        if !stray.is_empty() {
            tally.leftovers += 1;
        }
        let untouched = stray.is_empty() && dir.exists() && tree(&dir) == phone_tree;
        // The next open (`device ls`, the first command of device_state) finds the device
        // and clears what the killed run left.
        let st = device_state(&dir).unwrap_or_else(|e| ctx.fail(e));
        ctx.check(
            names(ws) == set(&["phone"]),
            format!(
                "left beside the device after the next open: {:?}",
                names(ws)
            ),
        );
        let outcome = match classify(ctx, &st) {
            Outcome::Old if untouched => Outcome::Untouched,
            o => o,
        };
        let o = restore(&dir).output().unwrap();
        ctx.check(
            o.status.success(),
            format!(
                "the next restore failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        );
        ctx.check(
            names(ws) == set(&["phone"]),
            format!(
                "left beside the device after the next restore: {:?}",
                names(ws)
            ),
        );
        let st = device_state(&dir).unwrap_or_else(|e| ctx.fail(e));
        ctx.check(
            st == after,
            "the next restore did not leave the restored device",
        );
        outcome
    });
    assert_eq!(
        tree(&backup),
        backup_tree,
        "restores never write to the backup"
    );
}

// ---------------------------------------------------------------- device import

#[test]
fn device_import_crash_trials() {
    let w = Writer::new("device import");
    let setup = w.dir("setup");
    let backup = setup.join("backup");
    make_phone(&setup.join("phone"), &backup, &setup);
    let import = |dir: &Path| {
        crash::command(
            &[p("device"), p("import"), dir, &backup],
            &[("KEYBAG_PASSWORD", P0)],
        )
    };
    let reference = setup.join("reference");
    let (t, _) = timed(import(&reference));
    let imported = device_state(&reference).unwrap();
    assert!(imported.contents.len() >= 8, "{:?}", imported.contents);

    w.run(t, |ctx, ws, aux, tally| {
        let dir = ws.join("new");
        kill_writer(ctx, import(&dir), aux, tally);
        let stray = siblings(ws, "new");
        ctx.note(format!(
            "in the parent folder after the kill: {:?}",
            names(ws)
        ));
        if !stray.is_empty() {
            tally.leftovers += 1;
        }
        if dir.exists() {
            // Complete, and a second import into it is refused without touching it.
            let st = device_state(&dir).unwrap_or_else(|e| ctx.fail(e));
            ctx.check(
                st == imported,
                "the imported device differs from an uninterrupted import",
            );
            let o = import(&dir).output().unwrap();
            ctx.check(
                o.status.code() == Some(1)
                    && String::from_utf8_lossy(&o.stderr).contains("already exists"),
                format!("a second import: {}", String::from_utf8_lossy(&o.stderr)),
            );
            ctx.check(
                names(ws) == set(&["new"]),
                format!("left beside the device: {:?}", names(ws)),
            );
            return Outcome::New;
        }
        let outcome = if stray.is_empty() {
            Outcome::Untouched
        } else {
            Outcome::Old
        };
        let o = import(&dir).output().unwrap();
        ctx.check(
            o.status.success(),
            format!(
                "the next import failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        );
        ctx.check(
            names(ws) == set(&["new"]),
            format!(
                "left beside the device after the next import: {:?}",
                names(ws)
            ),
        );
        let st = device_state(&dir).unwrap_or_else(|e| ctx.fail(e));
        ctx.check(
            st == imported,
            "the next import differs from an uninterrupted one",
        );
        outcome
    });
}
