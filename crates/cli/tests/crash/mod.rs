#![allow(dead_code)]
//! The machinery of `crash_trials.rs`: a seeded random number generator, kill points,
//! running the real `keybag` binary and killing it (SIGKILL), and snapshots of backups,
//! device folders and plain trees to compare what a killed run left behind.
//!
//! Nothing secret goes on argv: passwords travel in KEYBAG_PASSWORD / KEYBAG_NEW_PASSWORD.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Trials per writer (the issue asks for at least 50).
pub const TRIALS: usize = 50;

/// The variables keybag reads secrets from; each run sets only the ones it means to.
const SECRET_VARS: [&str; 5] = [
    "KEYBAG_PASSWORD",
    "KEYBAG_NEW_PASSWORD",
    "KEYBAG_PASSCODE",
    "KEYBAG_NEW_PASSCODE",
    "KEYBAG_SECRET",
];

// ---------------------------------------------------------------- randomness

/// SplitMix64: small, seedable, good enough to spread kill points.
pub struct Rng(u64);

impl Rng {
    /// A generator for `stream` (one per writer) under `seed`.
    pub fn new(seed: u64, stream: &str) -> Self {
        let mut h = seed;
        for b in stream.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        Rng(h)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `n` pseudo-random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// The seed of this run (one for every writer): KEYBAG_CRASH_SEED when set (to replay a
/// failure), else the clock.
pub fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        if let Ok(s) = std::env::var("KEYBAG_CRASH_SEED") {
            return s
                .parse()
                .unwrap_or_else(|_| panic!("KEYBAG_CRASH_SEED={s:?} is not a number"));
        }
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

/// When a trial kills the writer.
#[derive(Clone, Copy, Debug)]
pub enum Kill {
    /// Right after the spawn returns (before the writer can have done anything).
    AtOnce,
    /// After this delay, drawn uniformly from [0, T].
    After(Duration),
    /// Only once the writer has exited by itself: a kill "past the end".
    AfterExit,
}

impl fmt::Display for Kill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kill::AtOnce => write!(f, "kill at once"),
            Kill::After(d) => write!(f, "kill after {:.2} ms", d.as_secs_f64() * 1e3),
            Kill::AfterExit => write!(f, "kill after the exit"),
        }
    }
}

/// The kill points of `n` trials for a writer whose uninterrupted run takes `t`: two at
/// once, two past the end, the rest uniform in [0, t].
pub fn kill_points(rng: &mut Rng, n: usize, t: Duration) -> Vec<Kill> {
    (0..n)
        .map(|i| match i % 25 {
            0 => Kill::AtOnce,
            12 => Kill::AfterExit,
            _ => Kill::After(t.mul_f64(rng.unit())),
        })
        .collect()
}

// ---------------------------------------------------------------- running keybag

/// `keybag ARGS…` with none of the secret variables of the test's environment, then `env`.
pub fn command(args: &[&Path], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keybag"));
    cmd.args(args);
    for v in SECRET_VARS {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// A path argument from a string, to mix words and paths in one argument list.
pub fn p(s: &str) -> &Path {
    Path::new(s)
}

/// Runs keybag to the end.
pub fn keybag(args: &[&Path], env: &[(&str, &str)]) -> Output {
    command(args, env).output().expect("run keybag")
}

/// Runs keybag and fails the test unless it exits 0; its stdout.
pub fn keybag_ok(args: &[&Path], env: &[(&str, &str)]) -> Vec<u8> {
    let o = keybag(args, env);
    assert!(
        o.status.success(),
        "keybag {args:?} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// What a killed (or not) run did.
pub struct Killed {
    /// Exit code when the writer exited by itself (`None`: killed by the signal).
    pub code: Option<i32>,
    /// Its stderr.
    pub stderr: String,
}

impl Killed {
    /// True when the writer exited by itself with 0 before the kill.
    pub fn finished(&self) -> bool {
        self.code == Some(0)
    }
}

/// Spawns `cmd` (stdout discarded, stderr into `log`), kills it with SIGKILL at `kill` and
/// reaps it.
pub fn run_and_kill(mut cmd: Command, kill: Kill, log: &Path) -> Killed {
    let err = std::fs::File::create(log).unwrap();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn keybag");
    match kill {
        Kill::AtOnce => {
            let _ = child.kill();
        }
        Kill::After(d) => {
            std::thread::sleep(d);
            let _ = child.kill(); // SIGKILL; nothing happens if it has exited already
        }
        Kill::AfterExit => {}
    }
    let status = child.wait().expect("reap keybag");
    Killed {
        code: status.code(),
        stderr: std::fs::read_to_string(log).unwrap_or_default(),
    }
}

/// Runs `cmd` uninterrupted: how long it took (the range of the kill points), and its output.
pub fn timed(mut cmd: Command) -> (Duration, Output) {
    let start = Instant::now();
    let out = cmd.output().expect("run keybag");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "the uninterrupted run failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (took, out)
}

// ---------------------------------------------------------------- snapshots

/// Every entry under `root`, recursively: relative path → sha256 of a file, `dir`, or
/// `link → target`. Two equal states are byte-identical trees.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &path, out);
            } else if meta.is_symlink() {
                let t = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("link → {}", t.display()));
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(rel, hex::encode(Sha256::digest(&bytes)));
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

/// The names directly in `dir`, sorted.
pub fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The hidden `.NAME.keybag-…` siblings of `NAME` in `dir` (staging or set-aside folders),
/// and their own siblings (`..NAME.keybag-new-…keybag-partial-…`).
pub fn siblings(dir: &Path, name: &str) -> Vec<String> {
    let prefix = format!(".{name}.keybag-");
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with(&prefix) || n.get(1..).is_some_and(|m| m.starts_with(&prefix)))
        .collect()
}

/// A copy of the folder `from` at `to` (permissions kept; `to` must not exist).
pub fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    device::restore::copy_tree(from, to).unwrap();
}

/// `keybag verify [--deep] BACKUP` with `password`: its exit code and stderr.
pub fn verify(backup: &Path, password: &str, deep: bool) -> (i32, String) {
    let mut args = vec![p("verify"), backup];
    if deep {
        args.push(p("--deep"));
    }
    let o = keybag(&args, &[("KEYBAG_PASSWORD", password)]);
    (
        o.status.code().expect("verify exits"),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// What a backup holds, read with `password`: `domain/relativePath` → sha256 of every regular
/// file `keybag extract` writes, except the keychain file (its bytes are encrypted afresh by
/// every backup), which is represented by the items `keybag keychain --json --show-secrets`
/// lists, under the key `keychain items`. `Err`: what failed.
pub fn extract(
    backup: &Path,
    password: &str,
    scratch: &Path,
) -> Result<BTreeMap<String, String>, String> {
    let out = scratch.join("extracted");
    let _ = std::fs::remove_dir_all(&out);
    let o = keybag(
        &[p("extract"), backup, &out],
        &[("KEYBAG_PASSWORD", password)],
    );
    if !o.status.success() {
        return Err(format!(
            "extract exited {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let mut files: BTreeMap<String, String> = tree(&out)
        .into_iter()
        .filter(|(_, v)| v != "dir" && !v.starts_with("link"))
        .collect();
    std::fs::remove_dir_all(&out).unwrap();
    files.remove("KeychainDomain/keychain-backup.plist");
    let o = keybag(
        &[p("keychain"), backup, p("--json"), p("--show-secrets")],
        &[("KEYBAG_PASSWORD", password)],
    );
    if !o.status.success() {
        return Err(format!(
            "keychain exited {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let v: Value = serde_json::from_slice(&o.stdout).map_err(|e| e.to_string())?;
    files.insert("keychain items".into(), v["items"].to_string());
    Ok(files)
}

/// What a device folder holds, as its commands show it: `device ls --json` (without the
/// times a write renews: ctime, birth, and folders' mtime), `device keychain ls --json`
/// (without rowids) and every regular file's content through `device get`.
#[derive(Debug, PartialEq, Eq)]
pub struct DeviceState {
    /// The listing.
    pub ls: Vec<Value>,
    /// The keychain items.
    pub keychain: Vec<Value>,
    /// `domain/path` → sha256 of the content.
    pub contents: BTreeMap<String, String>,
}

/// The [`DeviceState`] of `dir`, or why the device did not open.
pub fn device_state(dir: &Path) -> Result<DeviceState, String> {
    let run = |args: &[&Path]| -> Result<Vec<u8>, String> {
        let o = keybag(args, &[]);
        if o.status.success() {
            Ok(o.stdout)
        } else {
            Err(format!(
                "keybag {args:?} exited {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ))
        }
    };
    let ls: Value = serde_json::from_slice(&run(&[p("device"), p("ls"), dir, p("--json")])?)
        .map_err(|e| e.to_string())?;
    let mut ls = ls.as_array().expect("ls is a list").clone();
    let mut contents = BTreeMap::new();
    for e in &mut ls {
        let o = e.as_object_mut().unwrap();
        o.remove("ctime");
        o.remove("birth");
        if o["kind"] == "dir" {
            o.remove("mtime");
        }
        if o["kind"] == "file" {
            let (d, f) = (o["domain"].as_str().unwrap(), o["path"].as_str().unwrap());
            let bytes = run(&[p("device"), p("get"), dir, p(d), p(f)])?;
            contents.insert(format!("{d}/{f}"), hex::encode(Sha256::digest(&bytes)));
        }
    }
    ls.sort_by_key(|e| format!("{}/{}", e["domain"], e["path"]));
    let kc: Value = serde_json::from_slice(&run(&[
        p("device"),
        p("keychain"),
        p("ls"),
        dir,
        p("--json"),
    ])?)
    .map_err(|e| e.to_string())?;
    let mut keychain = kc.as_array().expect("a list").clone();
    for it in &mut keychain {
        it.as_object_mut().unwrap().remove("rowid");
    }
    keychain.sort_by_key(|v| v.to_string());
    Ok(DeviceState {
        ls,
        keychain,
        contents,
    })
}

// ---------------------------------------------------------------- outcomes

/// How a trial ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Killed before the writer changed anything: the folders are byte-identical.
    Untouched,
    /// The old state (something was left beside it, cleaned up by the next run).
    Old,
    /// The new state, complete.
    New,
    /// A recovery step was needed (documented in the writer's help); it led to the old state.
    RecoveredOld,
    /// A recovery step was needed; it led to the new state.
    RecoveredNew,
}

/// Outcome counts of one writer, printed as one summary line.
#[derive(Default)]
pub struct Tally {
    counts: BTreeMap<Outcome, usize>,
    /// Trials that left a staging or set-aside folder (or temp file) behind.
    pub leftovers: usize,
    /// Trials whose writer had exited by itself before the kill.
    pub finished: usize,
}

impl Tally {
    /// Counts one trial.
    pub fn add(&mut self, o: Outcome) {
        *self.counts.entry(o).or_default() += 1;
    }

    /// How many trials ended in `o`.
    pub fn count(&self, o: Outcome) -> usize {
        self.counts.get(&o).copied().unwrap_or(0)
    }

    /// Trials that ended in the old state, with or without recovery or changes.
    pub fn old(&self) -> usize {
        self.count(Outcome::Untouched)
            + self.count(Outcome::Old)
            + self.count(Outcome::RecoveredOld)
    }

    /// Trials that ended in the new state.
    pub fn new_state(&self) -> usize {
        self.count(Outcome::New) + self.count(Outcome::RecoveredNew)
    }

    /// The summary line, printed by each writer's test.
    pub fn line(&self, writer: &str, seed: u64, t: Duration, took: Duration) -> String {
        format!(
            "crash trials {writer}: {} trials (seed {seed}, uninterrupted run {:.0} ms, all \
             trials {:.1} s): {} killed before any change, {} left the old state, {} left \
             the new state, {} needed recovery ({} → old, {} → new); {} left a staging \
             folder or temp file for the next run to clean; {} had finished before the kill",
            self.counts.values().sum::<usize>(),
            t.as_secs_f64() * 1e3,
            took.as_secs_f64(),
            self.count(Outcome::Untouched),
            self.count(Outcome::Old),
            self.count(Outcome::New),
            self.count(Outcome::RecoveredOld) + self.count(Outcome::RecoveredNew),
            self.count(Outcome::RecoveredOld),
            self.count(Outcome::RecoveredNew),
            self.leftovers,
            self.finished,
        )
    }

    /// Fails unless both the old and the new state were seen.
    pub fn assert_both_seen(&self, writer: &str) {
        assert!(
            self.old() > 0 && self.new_state() > 0,
            "{writer}: the kill points did not cover the run (old {}, new {})",
            self.old(),
            self.new_state()
        );
    }
}

/// One trial's context for failure messages: writer, seed, number, kill point and what was
/// found so far.
pub struct Ctx {
    /// Writer name.
    pub writer: &'static str,
    /// The run's seed.
    pub seed: u64,
    /// Trial number.
    pub n: usize,
    /// The kill point.
    pub kill: Kill,
    /// What the trial saw, line by line.
    pub notes: Vec<String>,
}

impl Ctx {
    /// Records what was found.
    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    /// Fails the test with the trial's context unless `cond`.
    #[track_caller]
    pub fn check(&self, cond: bool, what: impl fmt::Display) {
        if !cond {
            self.fail(what);
        }
    }

    /// Fails the test with the trial's context.
    #[track_caller]
    pub fn fail(&self, what: impl fmt::Display) -> ! {
        panic!(
            "{} trial {} ({}, seed {} — rerun with KEYBAG_CRASH_SEED={}): {what}\nfound:\n  {}",
            self.writer,
            self.n,
            self.kill,
            self.seed,
            self.seed,
            self.notes.join("\n  ")
        )
    }
}

/// A fresh scratch folder for one trial: `ws` (what the writer works in) and `aux` (logs,
/// extractions), side by side so that `ws` holds only what the writer made.
pub fn trial_dirs(base: &Path, n: usize) -> (PathBuf, PathBuf) {
    let root = base.join(format!("trial-{n}"));
    let (ws, aux) = (root.join("ws"), root.join("aux"));
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(&aux).unwrap();
    (ws, aux)
}
