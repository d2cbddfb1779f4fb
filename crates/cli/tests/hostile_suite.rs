//! The hostile-backup suite (issue 8, item 8): every command over every hostile backup of
//! `hostile/mod.rs`, each run in a sandbox of its own. For every run it asserts:
//!
//! * no panic and no signal (a crash, a stack overflow, an abort);
//! * no hang on a FIFO: every FIFO of the sandbox (the trap outside the backup that hostile
//!   symlinks point at, and any the case plants) is watched, and keybag opening one both
//!   fails the run and lets it go on;
//! * nothing written outside the output: the sandbox, but for the chosen output folder and
//!   device folder, is byte-for-byte what it was (`passwd` may only replace Manifest.plist);
//! * no file outside the backup read: the trap FIFO is never opened, and the canary's content
//!   appears in no output, on stdout or stderr;
//! * the documented exit code.
//!
//! Failures are collected over the whole matrix and reported together.

mod common;
mod hostile;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use common::forge::{keybag_command, run_watching_fifos};
use hostile::{cases, Case, Sandbox, CANARY, COMMANDS};

/// Every entry under `root` (not following symlinks, skipping `skip`), walked without
/// recursion: a hostile backup can make folders thousands of levels deep.
fn entries(root: &Path, skip: &[&Path]) -> Vec<(std::path::PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if skip.iter().any(|s| p == *s) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                todo.push(p.clone());
            }
            out.push((p, m));
        }
    }
    out
}

/// What a tree holds: path → kind and content.
fn snapshot(root: &Path, skip: &[&Path]) -> BTreeMap<String, String> {
    entries(root, skip)
        .into_iter()
        .map(|(p, m)| {
            let t = m.file_type();
            let what = if t.is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if t.is_dir() {
                "dir".into()
            } else if t.is_file() {
                format!("file {}", common::sha256_hex(&std::fs::read(&p).unwrap()))
            } else {
                "special".into()
            };
            (
                p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                what,
            )
        })
        .collect()
}

/// True when any regular file under `root` contains `needle`.
fn tree_contains(root: &Path, needle: &[u8]) -> bool {
    entries(root, &[]).into_iter().any(|(p, m)| {
        m.is_file()
            && std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
    })
}

/// keybag's arguments for `cmd` on the sandbox.
fn args(cmd: &str, sb: &Sandbox, case: &Case) -> Vec<OsString> {
    let b = sb.backup.as_os_str().to_owned();
    let key = || {
        [
            "--derived-key-file".into(),
            sb.key_file.as_os_str().to_owned(),
        ]
    };
    let mut a: Vec<OsString> = match cmd {
        "info" | "ls" | "audit" | "keychain" => vec![cmd.into(), b, "--json".into()],
        "extract" | "decrypt" => vec![cmd.into(), b, sb.out.clone().into(), "--json".into()],
        "verify" => vec![cmd.into(), b, "--deep".into(), "--json".into()],
        "cat" => vec![cmd.into(), b, case.cat.0.into(), case.cat.1.into()],
        "passwd" => vec![
            cmd.into(),
            b,
            "--new-password-file".into(),
            sb.new_password_file.clone().into(),
        ],
        "import" | "restore" => vec![
            "device".into(),
            cmd.into(),
            sb.phone.clone().into(),
            b,
            "--json".into(),
        ],
        other => panic!("unknown command {other}"),
    };
    a.extend(key());
    a
}

/// Runs one command over one case; the problems found, if any.
fn run_one(case: &Case, ci: usize) -> Vec<String> {
    let cmd = COMMANDS[ci];
    let t = tempfile::tempdir().unwrap();
    let mut sb = Sandbox::new(t.path(), &case.base.path());
    (case.build)(&mut sb);
    if cmd == "restore" && std::fs::symlink_metadata(&sb.phone).is_err() {
        let o = common::keybag([
            OsString::from("device"),
            "init".into(),
            sb.phone.clone().into(),
            "--name".into(),
            "Target".into(),
        ]);
        assert_eq!(o.code, 0, "device init: {}", o.stderr);
    }
    let skip = [sb.out.as_path(), sb.phone.as_path()];
    let before = snapshot(&sb.root, &skip);
    let (out, opened) = run_watching_fifos(keybag_command(args(cmd, &sb, case)), &sb.fifos);
    let mut problems = Vec::new();
    let mut fail = |what: String| problems.push(format!("{} / {cmd}: {what}", case.name));
    if opened {
        fail("opened a FIFO (a hang, or a file outside the backup read)".into());
    }
    if out.code != case.expect[ci] {
        let first = out.stderr.lines().next().unwrap_or("").to_string();
        fail(format!(
            "exit {} (expected {}): {}",
            out.code,
            case.expect[ci],
            first.chars().take(300).collect::<String>()
        ));
    }
    let mut after = snapshot(&sb.root, &skip);
    if cmd == "passwd" {
        // The one file passwd replaces; its .bak must be gone again.
        let m = "backup/Manifest.plist".to_string();
        if let Some(v) = before.get(&m) {
            after.entry(m).and_modify(|a| *a = v.clone());
        }
    }
    if before != after {
        let changed: Vec<_> = before
            .iter()
            .filter(|(k, v)| after.get(*k) != Some(v))
            .map(|(k, _)| format!("-{k}"))
            .chain(
                after
                    .iter()
                    .filter(|(k, v)| before.get(*k) != Some(v))
                    .map(|(k, _)| format!("+{k}")),
            )
            .take(6)
            .collect();
        fail(format!("changed outside its output: {changed:?}"));
    }
    let canary = CANARY.as_bytes();
    if out.stdout.windows(canary.len()).any(|w| w == canary) || out.stderr.contains(CANARY) {
        fail("printed the canary".into());
    }
    if tree_contains(&sb.out, canary) {
        fail("copied the canary into its output".into());
    }
    for p in [
        "/tmp/keybag-hostile-fileid",
        "/tmp/keybag-hostile-dotdot",
        "/tmp/keybag-hostile-absolute",
    ] {
        if Path::new(p).exists() {
            fail(format!("wrote {p}"));
        }
    }
    problems
}

#[test]
fn every_command_over_every_hostile_backup() {
    let all = cases();
    let hostile = all.iter().filter(|c| c.category != "control").count();
    assert!(hostile >= 40, "{hostile} hostile cases");
    let jobs: Vec<(usize, usize)> = (0..all.len())
        .flat_map(|c| (0..COMMANDS.len()).map(move |k| (c, k)))
        .collect();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(c, k)) = jobs.get(i) else {
                    break;
                };
                let p = run_one(&all[c], k);
                failures.lock().unwrap().extend(p);
            });
        }
    });
    let mut by_category: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &all {
        *by_category.entry(c.category).or_default() += 1;
    }
    println!(
        "{} cases ({hostile} hostile) × {} commands = {} runs; by category: {by_category:?}",
        all.len(),
        COMMANDS.len(),
        jobs.len()
    );
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    assert!(
        failures.is_empty(),
        "{} of {} runs failed:\n{}",
        failures.len(),
        jobs.len(),
        failures.join("\n")
    );
}
