//! The secrets canary's kit: known secrets ("canaries") and the forms a leak of each would
//! take, and a [`Session`] that runs keybag with them (through environment variables and
//! files only) and fails the test when one shows up where it must not: in an argument, the
//! running process's `/proc/PID/cmdline`, stdout, stderr, or any file under the session's
//! temp folder other than the input files the test wrote.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub mod known;
pub mod pty;

/// The variables keybag reads secrets from; removed from every run unless the run sets them.
pub const SECRET_VARS: [&str; 5] = [
    "KEYBAG_PASSWORD",
    "KEYBAG_NEW_PASSWORD",
    "KEYBAG_PASSCODE",
    "KEYBAG_NEW_PASSCODE",
    "KEYBAG_SECRET",
];

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A known secret and the byte strings whose presence means it leaked.
#[derive(Clone)]
pub struct Canary {
    /// What it is, in failure messages and allow-lists.
    pub name: String,
    /// (encoding, bytes).
    needles: Vec<(String, Vec<u8>)>,
}

impl Canary {
    /// The needles common to text and binary secrets: lowercase and uppercase hex, and
    /// base64 at each of the three alignments the secret can have in an encoded stream
    /// (the whole groups of `value[k..]`, k = 0, 1, 2).
    fn encoded(name: &str, value: &[u8], raw_label: &str) -> Self {
        let mut needles = vec![
            (raw_label.to_string(), value.to_vec()),
            ("hex".into(), hex::encode(value).into_bytes()),
            ("HEX".into(), hex::encode_upper(value).into_bytes()),
        ];
        for k in 0..3 {
            let rest = &value[k.min(value.len())..];
            let whole = rest.len() / 3 * 3;
            if whole >= 9 {
                needles.push((
                    format!("base64 (offset {k})"),
                    base64(&rest[..whole]).into_bytes(),
                ));
            }
        }
        Canary {
            name: name.to_string(),
            needles,
        }
    }

    /// A text secret (password, passcode, keychain secret): its UTF-8 bytes, their hex and
    /// base64.
    pub fn text(name: &str, value: &str) -> Self {
        assert!(
            value.len() >= 8,
            "canary {name} is too short to be distinctive"
        );
        Self::encoded(name, value.as_bytes(), "text")
    }

    /// A binary key (derived key, device key): its raw bytes, hex and base64.
    pub fn key(name: &str, value: &[u8]) -> Self {
        assert!(value.len() >= 16, "key canary {name} is too short");
        Self::encoded(name, value, "raw bytes")
    }

    /// Also a leak: the first `n` bytes of the text alone (for malformed inputs, whose
    /// error message might quote the start of what it could not parse).
    pub fn with_prefix(mut self, n: usize) -> Self {
        let prefix = self.needles[0].1[..n].to_vec();
        self.needles.push((format!("its first {n} bytes"), prefix));
        self
    }
}

/// Every needle of a set of canaries, indexed by their first two bytes.
struct Needles {
    list: Vec<(usize, String, Vec<u8>)>,
    by_prefix: HashMap<[u8; 2], Vec<usize>>,
}

impl Needles {
    fn new(canaries: &[Canary]) -> Self {
        let mut list = Vec::new();
        let mut by_prefix: HashMap<[u8; 2], Vec<usize>> = HashMap::new();
        for (c, canary) in canaries.iter().enumerate() {
            for (enc, bytes) in &canary.needles {
                by_prefix
                    .entry([bytes[0], bytes[1]])
                    .or_default()
                    .push(list.len());
                list.push((c, enc.clone(), bytes.clone()));
            }
        }
        Needles { list, by_prefix }
    }

    /// (canary index, encoding) of every needle found in `hay`.
    fn find(&self, hay: &[u8]) -> BTreeSet<(usize, String)> {
        let mut found = BTreeSet::new();
        if hay.len() < 2 {
            return found;
        }
        for i in 0..hay.len() - 1 {
            let Some(cands) = self.by_prefix.get(&[hay[i], hay[i + 1]]) else {
                continue;
            };
            for &n in cands {
                let (c, enc, bytes) = &self.list[n];
                if hay[i..].starts_with(bytes) {
                    found.insert((*c, enc.clone()));
                }
            }
        }
        found
    }
}

/// One keybag run: arguments, environment, stdin, and what its output may and must hold.
pub struct Run {
    args: Vec<OsString>,
    note: Option<String>,
    env: Vec<(String, Vec<u8>)>,
    stdin: Option<Vec<u8>>,
    prompts: Vec<(String, String)>,
    code: i32,
    allowed: Vec<String>,
    required: Vec<String>,
    must_catch: bool,
    stdout_to: Option<PathBuf>,
    extra: Vec<Canary>,
}

impl Run {
    /// `keybag ARGS…`, expected to exit 0.
    pub fn new(args: Vec<OsString>) -> Self {
        Run {
            args,
            note: None,
            env: Vec::new(),
            stdin: None,
            prompts: Vec::new(),
            code: 0,
            allowed: Vec::new(),
            required: Vec::new(),
            must_catch: false,
            stdout_to: None,
            extra: Vec::new(),
        }
    }

    /// More arguments (e.g. a key option and its file).
    pub fn with<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// What the run is about, after its command line in the summary and in failures.
    pub fn note(mut self, note: &str) -> Self {
        self.note = Some(note.to_string());
        self
    }

    /// Sets `var` to `value` in keybag's environment.
    pub fn env(mut self, var: &str, value: &str) -> Self {
        self.env.push((var.to_string(), value.as_bytes().to_vec()));
        self
    }

    /// stdin is a pipe fed `data` (else it is /dev/null: never a terminal).
    pub fn stdin(mut self, data: &[u8]) -> Self {
        self.stdin = Some(data.to_vec());
        self
    }

    /// keybag runs on a terminal (a pty: stdin, stdout, stderr and /dev/tty), and each
    /// `(prompt, answer)` is typed once the prompt shows and echo is off. Its "stdout" is
    /// then all the terminal showed.
    pub fn terminal(mut self, prompts: &[(&str, &str)]) -> Self {
        self.prompts = prompts
            .iter()
            .map(|(p, a)| (p.to_string(), a.to_string()))
            .collect();
        self
    }

    /// The expected exit code.
    pub fn code(mut self, code: i32) -> Self {
        self.code = code;
        self
    }

    /// The secrets this run was asked to print: they must appear on stdout (so the check is
    /// seen to work), and only there.
    pub fn shows(mut self, names: &[&str]) -> Self {
        for n in names {
            self.allowed.push(n.to_string());
            self.required.push(n.to_string());
        }
        self
    }

    /// The run lasts long enough (a real KDF) that its `/proc/PID/cmdline` must be read.
    pub fn must_catch_cmdline(mut self) -> Self {
        self.must_catch = true;
        self
    }

    /// Saves stdout in `path` (inside the session's work folder, then scanned like the rest).
    pub fn stdout_to(mut self, path: &Path) -> Self {
        self.stdout_to = Some(path.to_path_buf());
        self
    }

    /// Secrets known only to this run (e.g. the demo's own), looked for in its output only.
    pub fn extra(mut self, canary: Canary) -> Self {
        self.extra.push(canary);
        self
    }
}

/// What a run printed (its exit code was checked).
pub struct Output {
    /// stdout.
    pub stdout: Vec<u8>,
}

impl Output {
    /// stdout as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("stdout is UTF-8")
    }

    /// stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.text()))
    }
}

/// When a file was last scanned: inode, size, mtime and ctime (seconds, nanoseconds).
type Stamp = (u64, u64, i64, i64, i64, i64);

fn stamp(m: &std::fs::Metadata) -> Stamp {
    (
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

/// A temp folder with `keys/` (the secret input files, the only files not scanned) and
/// `work/` (everything keybag reads and writes), the canaries, and the log of runs.
pub struct Session {
    _root: tempfile::TempDir,
    root: PathBuf,
    /// Where the secret input files go.
    pub keys: PathBuf,
    /// Backups, devices, outputs; keybag's TMPDIR is `work/tmp`.
    pub work: PathBuf,
    canaries: Vec<Canary>,
    needles: Arc<Needles>,
    inputs: BTreeSet<PathBuf>,
    file_allow: BTreeMap<PathBuf, Vec<String>>,
    allow_suffix: Vec<(String, Vec<String>)>,
    seen: HashMap<PathBuf, Stamp>,
    /// (label, exit code) of every run, in order.
    pub log: Vec<(String, i32)>,
    /// How many runs had their `/proc/PID/cmdline` read while running.
    pub cmdlines_caught: usize,
    /// How many files were scanned (counting rescans).
    pub files_scanned: usize,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A fresh session with no canaries yet.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let keys = root.join("keys");
        let work = root.join("work");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::create_dir_all(work.join("tmp")).unwrap();
        Session {
            _root: dir,
            root,
            keys,
            work,
            canaries: Vec::new(),
            needles: Arc::new(Needles::new(&[])),
            inputs: BTreeSet::new(),
            file_allow: BTreeMap::new(),
            allow_suffix: Vec::new(),
            seen: HashMap::new(),
            log: Vec::new(),
            cmdlines_caught: 0,
            files_scanned: 0,
        }
    }

    /// Adds a canary; every file is scanned again for it at the next check.
    pub fn canary(&mut self, canary: Canary) {
        assert!(
            self.canaries.iter().all(|c| c.name != canary.name),
            "two canaries named {}",
            canary.name
        );
        self.canaries.push(canary);
        self.needles = Arc::new(Needles::new(&self.canaries));
        self.seen.clear();
    }

    /// Writes a secret input file `keys/NAME`; it is left out of the scan (and only it).
    pub fn input(&mut self, name: &str, contents: &[u8]) -> PathBuf {
        let p = self.keys.join(name);
        std::fs::write(&p, contents).unwrap();
        self.inputs.insert(p.clone());
        p
    }

    /// `work/NAME`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    /// Every file whose path ends with `suffix` (e.g. `secure/uid.key`: a device folder and
    /// the copies a restore works in) may hold the canaries `names`.
    pub fn allow_in_files_ending(&mut self, suffix: &str, names: &[&str]) {
        self.allow_suffix.push((
            suffix.to_string(),
            names.iter().map(|n| n.to_string()).collect(),
        ));
    }

    /// The file `path` may hold the canaries `names` (and no other).
    pub fn allow_in_file(&mut self, path: &Path, names: &[&str]) {
        self.file_allow
            .entry(path.to_path_buf())
            .or_default()
            .extend(names.iter().map(|n| n.to_string()));
    }

    /// The name of canary `c` (an index into the session's canaries, then `extra`).
    fn name(&self, c: usize, extra: &[Canary]) -> String {
        match self.canaries.get(c) {
            Some(k) => k.name.clone(),
            None => extra[c - self.canaries.len()].name.clone(),
        }
    }

    /// `name [encoding]` of every find.
    fn names(&self, found: &BTreeSet<(usize, String)>, extra: &[Canary]) -> Vec<String> {
        found
            .iter()
            .map(|(c, enc)| format!("{} [{enc}]", self.name(*c, extra)))
            .collect()
    }

    /// Fails if an argument holds a canary.
    fn check_args(&self, label: &str, args: &[OsString], needles: &Needles, extra: &[Canary]) {
        for a in args {
            let found = needles.find(a.as_bytes());
            assert!(
                found.is_empty(),
                "{label}: argument {a:?} holds {:?}",
                self.names(&found, extra)
            );
        }
    }

    /// `ARGS… (env VAR…) — note`, with the session's paths shortened (`work/` dropped).
    fn label(&self, run: &Run) -> String {
        let mut parts: Vec<String> = run
            .args
            .iter()
            .map(|a| {
                let p = Path::new(a);
                match p.strip_prefix(&self.work) {
                    Ok(rel) => rel.display().to_string(),
                    Err(_) => match p.strip_prefix(&self.root) {
                        Ok(rel) => rel.display().to_string(),
                        Err(_) => a.to_string_lossy().into_owned(),
                    },
                }
            })
            .collect();
        for (k, _) in &run.env {
            parts.push(format!("[{k}]"));
        }
        if run.stdin.is_some() {
            parts.push("< stdin".into());
        }
        if !run.prompts.is_empty() {
            parts.push(format!("[terminal: {} prompts]", run.prompts.len()));
        }
        let mut label = parts.join(" ");
        if let Some(n) = &run.note {
            label.push_str(&format!(" ({n})"));
        }
        label
    }

    /// Runs keybag as `run` says and checks everything: see the module's doc.
    pub fn run(&mut self, run: Run) -> Output {
        let mut all = self.canaries.clone();
        all.extend(run.extra.iter().cloned());
        let needles = Arc::new(Needles::new(&all));
        let label = &self.label(&run);
        let bin = env!("CARGO_BIN_EXE_keybag");
        self.check_args(label, &run.args, &needles, &run.extra);

        let mut cmd = Command::new(bin);
        cmd.args(&run.args).current_dir(&self.work);
        for v in SECRET_VARS {
            cmd.env_remove(v);
        }
        cmd.env("TMPDIR", self.work.join("tmp"));
        for (k, v) in &run.env {
            cmd.env(k, OsStr::from_bytes(v));
        }
        let mut on_terminal = None;
        let mut child = None;
        if run.prompts.is_empty() {
            cmd.stdin(if run.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            child = Some(cmd.spawn().expect("run keybag"));
        } else {
            on_terminal = Some(pty::spawn(cmd));
        }
        let pid = match (&child, &on_terminal) {
            (Some(c), _) => c.id(),
            (_, Some(t)) => t.child.id(),
            _ => unreachable!(),
        };

        // The command line as the system shows it while keybag runs.
        let cmdline = running_cmdline(pid);
        if !cmdline.is_empty() {
            let found = needles.find(&cmdline);
            assert!(
                found.is_empty(),
                "{label}: /proc/PID/cmdline holds {:?}",
                self.names(&found, &run.extra)
            );
            let mut expected: Vec<u8> = Vec::new();
            for a in std::iter::once(OsStr::new(bin)).chain(run.args.iter().map(|a| a.as_os_str()))
            {
                expected.extend_from_slice(a.as_bytes());
                expected.push(0);
            }
            assert_eq!(cmdline, expected, "{label}: /proc/PID/cmdline");
            self.cmdlines_caught += 1;
        } else {
            assert!(
                !run.must_catch,
                "{label}: ended before its /proc/PID/cmdline could be read"
            );
        }

        // While keybag runs, its files are scanned as they appear and change: a secret in a
        // file it deletes before exiting is a leak too.
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let names = (0..all.len()).map(|c| self.name(c, &run.extra)).collect();
            let scanner = self.scanner(needles.clone(), names);
            let mut seen = self.seen.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut found = BTreeSet::new();
                let mut count = 0;
                while !stop.load(Ordering::Relaxed) {
                    found.extend(scanner.scan(&mut seen, &mut count, false));
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                found
            })
        };

        let (status, stdout, stderr) = match (child, on_terminal) {
            (Some(mut child), _) => {
                let mut so = child.stdout.take().unwrap();
                let mut se = child.stderr.take().unwrap();
                let err_reader = std::thread::spawn(move || {
                    let mut v = Vec::new();
                    se.read_to_end(&mut v).unwrap();
                    v
                });
                let out_reader = std::thread::spawn(move || {
                    let mut v = Vec::new();
                    so.read_to_end(&mut v).unwrap();
                    v
                });
                if let Some(data) = &run.stdin {
                    let mut pipe = child.stdin.take().unwrap();
                    // keybag may exit before reading it all.
                    let _ = pipe.write_all(data);
                }
                let status = child.wait().unwrap();
                let stdout = out_reader.join().unwrap();
                let stderr = err_reader.join().unwrap();
                (
                    status,
                    stdout,
                    String::from_utf8_lossy(&stderr).into_owned(),
                )
            }
            (_, Some(mut t)) => {
                for (prompt, answer) in &run.prompts {
                    t.answer(prompt, answer);
                }
                let (status, shown) = t.finish();
                (status, shown, String::new())
            }
            _ => unreachable!(),
        };
        stop.store(true, Ordering::Relaxed);
        let seen_while_running = watcher.join().unwrap();
        let code = status
            .code()
            .unwrap_or_else(|| panic!("{label}: killed by a signal ({status}); stderr: {stderr}"));

        assert!(
            seen_while_running.is_empty(),
            "{label}: while it ran:\n{}",
            seen_while_running
                .into_iter()
                .collect::<Vec<_>>()
                .join("\n")
        );
        // A panic would be reported on stderr in one line ("internal error").
        assert!(
            !stderr.contains("panicked") && !stderr.contains("internal error"),
            "{label}: keybag panicked: {stderr}"
        );
        assert_eq!(
            code,
            run.code,
            "{label}: exit code\nstdout: {}\nstderr: {stderr}",
            String::from_utf8_lossy(&stdout)
        );

        let found = needles.find(stderr.as_bytes());
        assert!(
            found.is_empty(),
            "{label}: stderr holds {:?}:\n{stderr}",
            self.names(&found, &run.extra)
        );
        let found = needles.find(&stdout);
        let (shown, leaked): (BTreeSet<_>, BTreeSet<_>) = found
            .into_iter()
            .partition(|(c, _)| run.allowed.contains(&self.name(*c, &run.extra)));
        assert!(
            leaked.is_empty(),
            "{label}: stdout holds {:?}:\n{}",
            self.names(&leaked, &run.extra),
            String::from_utf8_lossy(&stdout)
        );
        let shown: BTreeSet<String> = shown
            .iter()
            .map(|(c, _)| self.name(*c, &run.extra))
            .collect();
        for r in &run.required {
            assert!(
                shown.contains(r),
                "{label}: asked for, {r} is not on stdout (is the scan blind?):\n{}",
                String::from_utf8_lossy(&stdout)
            );
        }

        if let Some(p) = &run.stdout_to {
            assert!(p.starts_with(&self.work), "{}", p.display());
            std::fs::write(p, &stdout).unwrap();
        }
        self.scan(label);
        self.log.push((label.clone(), code));
        Output { stdout }
    }

    /// What scans the session's tree for the canaries `names` (indexed as `needles` are).
    fn scanner(&self, needles: Arc<Needles>, names: Vec<String>) -> Scanner {
        Scanner {
            root: self.root.clone(),
            inputs: self.inputs.clone(),
            allow: self.file_allow.clone(),
            allow_suffix: self.allow_suffix.clone(),
            names,
            needles,
        }
    }

    /// Scans every file under the session's folder that is new or changed since it was last
    /// scanned (every file after a canary was added), except the input files: a canary in
    /// its content or its name fails the test, unless [`Session::allow_in_file`] allowed it.
    pub fn scan(&mut self, after: &str) {
        let names = self.canaries.iter().map(|c| c.name.clone()).collect();
        let scanner = self.scanner(self.needles.clone(), names);
        let found = scanner.scan(&mut self.seen, &mut self.files_scanned, true);
        assert!(found.is_empty(), "after {after}:\n{}", found.join("\n"));
    }

    /// Scans every file again, whatever its stamp.
    pub fn rescan_all(&mut self, after: &str) {
        self.seen.clear();
        self.scan(after);
    }

    /// Checks the file `path` holds every canary of `names` (proving the scan would see them).
    pub fn assert_file_holds(&self, path: &Path, names: &[&str]) {
        let bytes = std::fs::read(path).unwrap();
        let found: BTreeSet<String> = self
            .needles
            .find(&bytes)
            .iter()
            .map(|(c, _)| self.name(*c, &[]))
            .collect();
        for n in names {
            assert!(found.contains(*n), "{} does not hold {n}", path.display());
        }
    }

    /// The runs so far, one `label → exit code` line each.
    pub fn summary(&self) -> String {
        self.log
            .iter()
            .map(|(l, c)| format!("{c}  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `/proc/PID/cmdline` of a child not yet waited for, once exec has set it up; empty when
/// the process ended first (a zombie's is empty). Right after `spawn` returns, exec may not
/// have placed the arguments yet (the command line reads empty then too): retried until
/// it shows or the process is a zombie.
fn running_cmdline(pid: u32) -> Vec<u8> {
    loop {
        // One read(2) with room for all of it: several small reads could straddle the
        // process's exit and return a truncated command line.
        let mut cmdline = vec![0u8; 1 << 16];
        let n = std::fs::File::open(format!("/proc/{pid}/cmdline"))
            .and_then(|mut f| f.read(&mut cmdline))
            .unwrap_or(0);
        cmdline.truncate(n);
        if !cmdline.is_empty() {
            return cmdline;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.trim_start().chars().next());
        if matches!(state, None | Some('Z') | Some('X')) {
            return Vec::new();
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Scans a session's tree: every file's name, and the content of files new or changed since
/// `seen` last saw them, except the input files; canaries a file is allowed to hold are not
/// reported.
#[derive(Clone)]
struct Scanner {
    root: PathBuf,
    inputs: BTreeSet<PathBuf>,
    allow: BTreeMap<PathBuf, Vec<String>>,
    allow_suffix: Vec<(String, Vec<String>)>,
    names: Vec<String>,
    needles: Arc<Needles>,
}

impl Scanner {
    /// What was found, one line per file. `strict`: a file that cannot be read fails the
    /// test (after a run); otherwise it is skipped (while keybag runs, files come and go).
    fn scan(
        &self,
        seen: &mut HashMap<PathBuf, Stamp>,
        count: &mut usize,
        strict: bool,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let report =
            |found: BTreeSet<(usize, String)>, what: String, problems: &mut Vec<String>| {
                if !found.is_empty() {
                    let names: Vec<String> = found
                        .iter()
                        .map(|(c, enc)| format!("{} [{enc}]", self.names[*c]))
                        .collect();
                    problems.push(format!("{what} holds {names:?}"));
                }
            };
        let mut files = Vec::new();
        walk(&self.root, &mut files);
        for (path, meta) in files {
            let rel = path.strip_prefix(&self.root).unwrap();
            let found = self.needles.find(rel.as_os_str().as_bytes());
            report(found, format!("the name {}", rel.display()), &mut problems);
            if !meta.is_file() || self.inputs.contains(&path) {
                continue;
            }
            let st = stamp(&meta);
            if seen.get(&path) == Some(&st) {
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if strict => panic!("cannot read {}: {e}", path.display()),
                Err(_) => continue,
            };
            *count += 1;
            let mut allowed = self.allow.get(&path).cloned().unwrap_or_default();
            for (suffix, names) in &self.allow_suffix {
                if path.ends_with(suffix) {
                    allowed.extend(names.iter().cloned());
                }
            }
            let found = self
                .needles
                .find(&bytes)
                .into_iter()
                .filter(|(c, _)| !allowed.contains(&self.names[*c]))
                .collect();
            report(found, rel.display().to_string(), &mut problems);
            seen.insert(path, st);
        }
        problems
    }
}

/// Every entry under `dir` (not following symlinks), with its metadata.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            walk(&p, out);
        }
        out.push((p, m));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    /// The kit itself can fail: each encoding of a secret, embedded at any alignment in
    /// other bytes, is found.
    #[test]
    fn every_encoding_is_found() {
        let text = Canary::text("pw", "kbPlantedSecret-0123");
        let key = Canary::key("key", &[0x93; 32]);
        let needles = Needles::new(&[text, key]);
        let pw = b"kbPlantedSecret-0123";
        let mut hays: Vec<(Vec<u8>, usize)> = vec![
            ([b"x=".as_ref(), pw, b";"].concat(), 0),
            (format!("\"{}\"", hex::encode(pw)).into_bytes(), 0),
            (format!("0x{}", hex::encode_upper(pw)).into_bytes(), 0),
            ([b"k:".as_ref(), &[0x93; 32], b"\0"].concat(), 1),
        ];
        for k in 0..3 {
            let framed = [&b"ab"[..k], pw, b"zz"].concat();
            hays.push((format!("data: {}\n", base64(&framed)).into_bytes(), 0));
            let framed = [&b"ab"[..k], &[0x93; 32][..], b"zz"].concat();
            hays.push((base64(&framed).into_bytes(), 1));
        }
        for (hay, c) in hays {
            let found = needles.find(&hay);
            assert!(
                found.iter().any(|(i, _)| *i == c),
                "not found in {}",
                String::from_utf8_lossy(&hay)
            );
        }
        assert!(needles.find(b"kbPlantedSecret-012").is_empty());
    }

    /// A canary in a file fails the scan, in an input file or an allowed one it does not,
    /// and one in an argument fails the run before it starts.
    #[test]
    fn the_scan_and_the_argument_check_fail_on_a_planted_canary() {
        let mut s = Session::new();
        s.canary(Canary::text("pw", "kbPlantedSecret-0123"));
        s.input("pw", b"kbPlantedSecret-0123");
        let allowed = s.path("allowed.csv");
        std::fs::write(&allowed, "kbPlantedSecret-0123").unwrap();
        s.allow_in_file(&allowed, &["pw"]);
        s.scan("planting in the input and an allowed file");
        std::fs::create_dir_all(s.path("deep/er")).unwrap();
        std::fs::write(s.path("deep/er/f"), hex::encode("kbPlantedSecret-0123")).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.scan("planting")));
        assert!(r.is_err(), "the scan missed a planted canary");
        std::fs::remove_file(s.path("deep/er/f")).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let args = ["info", "--password-file", "kbPlantedSecret-0123"];
            s.run(Run::new(args.map(OsString::from).to_vec()))
        }));
        assert!(r.is_err(), "a canary in an argument went unnoticed");
        assert!(s.log.is_empty(), "the run must not have started");
    }
}
