#![allow(dead_code)]
//! Shared helpers for the `keybag` binary's integration tests: the fixtures, running the
//! built binary, copying and hashing trees, and the third-party Python readers
//! (iphone_backup_decrypt, mvt) whose interpreters come from KEYBAG_PY_IBD / KEYBAG_PY_MVT.
//! Each test file does `mod common;` and uses what it needs.

pub mod forge;
pub mod serve_proc;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The published password of the encrypted fixture (`testdata/enc-small-public`).
pub const PASSWORD: &str = "correct horse battery staple";
/// The encrypted fixture's derived key (its password after the KDF), hex.
pub const PASSKEY: &str = "44a316ca4293d559aa3a068ebb22105607824ea61d611baf62cd3e83c0c796c7";
/// The encrypted fixture's device key (the original iPhone's UID key 0x835), hex.
pub const DEVICE_KEY: &str = "793b52fd8ca0b58f37cfdde966237ceb";

// ---------------------------------------------------------------- paths and fixtures

/// The repository root (holds `testdata/` and `tests/py/`).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `testdata/NAME` in the repository.
pub fn testdata(name: &str) -> PathBuf {
    repo().join("testdata").join(name)
}

/// The encrypted fixture, `testdata/enc-small-public`.
pub fn enc() -> PathBuf {
    testdata("enc-small-public")
}

/// The unencrypted fixture, `testdata/mvt-ios-backup`.
pub fn mvt() -> PathBuf {
    testdata("mvt-ios-backup")
}

/// The encrypted fixture's ground truth, `testdata/enc-small-public.expected.json`.
pub fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(testdata("enc-small-public.expected.json")).unwrap())
        .unwrap()
}

/// Regular files of the encrypted fixture: (domain, relativePath, fileID, sha256).
pub fn expected_files() -> Vec<(String, String, String, String)> {
    expected()["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["flags"] == 1)
        .map(|r| {
            (
                r["domain"].as_str().unwrap().to_string(),
                r["relativePath"].as_str().unwrap().to_string(),
                r["fileID"].as_str().unwrap().to_string(),
                r["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Where a backup keeps the blob of `file_id`: `BACKUP/ab/abcdef…`.
pub fn blob_of(backup: &Path, file_id: &str) -> PathBuf {
    backup.join(&file_id[..2]).join(file_id)
}

/// Copies the tree `from` to `to`, creating `to` (folders recursively, anything else
/// with `fs::copy`).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// A copy of the backup `src` in a fresh temp dir: (guard, `TEMP/backup`).
pub fn fixture_copy(src: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("backup");
    copy_dir(src, &dest);
    (dir, dest)
}

/// The sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of every regular file under `root` (symlinks skipped), keyed by its path
/// relative to `root`.
pub fn tree_hashes(root: &Path) -> BTreeMap<String, String> {
    regular_files(root)
        .into_iter()
        .map(|(rel, path)| (rel, sha256_hex(&std::fs::read(path).unwrap())))
        .collect()
}

/// Every regular file under `root` (not following symlinks): relative path → its path.
fn regular_files(root: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, e.path()));
            }
        }
    }
    out
}

/// Every regular file under `root`: relative path → bytes.
pub fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    regular_files(root)
        .into_iter()
        .map(|(rel, path)| (rel, std::fs::read(path).unwrap()))
        .collect()
}

/// Asserts that two folders hold the same files with the same bytes.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (fa, fb) = (files(a), files(b));
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (k, v) in &fa {
        assert!(fb[k] == *v, "{k} differs");
    }
}

/// A JSON object of strings as a map (e.g. a reader's `files`: path → sha256).
pub fn as_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// `s` as an `&OsStr`, to mix strings and paths in one argument list.
pub fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

// ---------------------------------------------------------------- running keybag

/// One run of the built `keybag` binary. It sees the test's environment except what
/// is removed or set here, and an empty stdin (null) unless [`Keybag::stdin`] gives one.
pub struct Keybag {
    cmd: Command,
    stdin: Option<Vec<u8>>,
}

impl Keybag {
    /// `keybag ARGS…`.
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keybag"));
        cmd.args(args);
        Keybag { cmd, stdin: None }
    }

    /// Removes `var` from keybag's environment.
    pub fn env_remove(mut self, var: &str) -> Self {
        self.cmd.env_remove(var);
        self
    }

    /// Sets each `(name, value)` in keybag's environment, in order.
    pub fn envs(mut self, env: &[(&str, &str)]) -> Self {
        for (k, v) in env {
            self.cmd.env(k, v);
        }
        self
    }

    /// KEYBAG_PASSWORD is `Some(password)`, or (`None`) not set at all: never the
    /// test process's own.
    pub fn password(self, password: Option<&str>) -> Self {
        let this = self.env_remove("KEYBAG_PASSWORD");
        match password {
            Some(pw) => this.envs(&[("KEYBAG_PASSWORD", pw)]),
            None => this,
        }
    }

    /// stdin is a pipe: `data` is written to it, then it is closed.
    pub fn stdin(mut self, data: &[u8]) -> Self {
        self.stdin = Some(data.to_vec());
        self
    }

    /// Runs keybag to the end: its status, stdout and stderr, unchecked.
    pub fn output(mut self) -> Output {
        let Some(data) = self.stdin else {
            return self.cmd.stdin(Stdio::null()).output().expect("run keybag");
        };
        let mut child = self
            .cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run keybag");
        {
            let mut pipe = child.stdin.take().unwrap();
            // The command may exit before reading (e.g. a refused path).
            let _ = pipe.write_all(&data);
        }
        child.wait_with_output().expect("run keybag")
    }

    /// Runs keybag; fails the test if it was killed by a signal or its stderr shows a
    /// panic ([`assert_no_panic`]).
    pub fn run(self) -> Out {
        let out = self.output();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_no_panic(&stderr);
        Out {
            code: out.status.code().expect("exited normally (no signal)"),
            stdout: out.stdout,
            stderr,
        }
    }
}

/// Fails the test if keybag's `stderr` shows a panic: Rust's message, keybag's
/// "internal error" line or the RUST_BACKTRACE hint.
pub fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "keybag panicked: {stderr}"
    );
    assert!(!stderr.contains("RUST_BACKTRACE"), "{stderr}");
}

/// A finished keybag run: exit code, stdout (bytes, or text after [`Out::into_text`])
/// and stderr.
pub struct Out<S = Vec<u8>> {
    pub code: i32,
    pub stdout: S,
    pub stderr: String,
}

impl<S> Out<S> {
    /// stderr, line by line.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }
}

impl Out {
    /// stdout as text (fails the test if it is not UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("stdout is UTF-8")
    }

    /// stdout, line by line.
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }

    /// stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.text()))
    }

    /// The same run with stdout decoded now (fails the test if it is not UTF-8).
    pub fn into_text(self) -> Out<String> {
        Out {
            code: self.code,
            stdout: String::from_utf8(self.stdout).expect("stdout is UTF-8"),
            stderr: self.stderr,
        }
    }
}

impl Out<String> {
    /// stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// Runs keybag with `env` set on top of an environment without KEYBAG_PASSWORD, and no
/// terminal on stdin; checked by [`Keybag::run`].
pub fn keybag_env<I, S>(args: I, env: &[(&str, &str)]) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Keybag::new(args).password(None).envs(env).run()
}

/// [`keybag_env`] with nothing set: no KEYBAG_PASSWORD, no terminal on stdin.
pub fn keybag<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    keybag_env(args, &[])
}

/// Runs keybag with KEYBAG_PASSWORD `password` (or not set) and no terminal on stdin;
/// the raw output, for tests that check the status themselves.
pub fn keybag_output(args: &[&OsStr], password: Option<&str>) -> Output {
    Keybag::new(args).password(password).output()
}

// ---------------------------------------------------------------- third-party readers

/// The Python interpreter named by `var` (KEYBAG_PY_IBD or KEYBAG_PY_MVT, printed by
/// scripts/pyenv.sh). Unset or missing, the test fails with instructions: never skips.
pub fn python(var: &str) -> PathBuf {
    let p = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: run the tests through scripts/test.sh, which installs the third-party readers")
    });
    let p = PathBuf::from(p);
    assert!(p.is_file(), "{var}={} does not exist", p.display());
    p
}

/// `PYTHON tests/py/SCRIPT` with the interpreter from `var` ([`python`]), for the
/// caller to add arguments and environment.
pub fn py_command(var: &str, script: &str) -> Command {
    let mut cmd = Command::new(python(var));
    cmd.arg(repo().join("tests/py").join(script));
    cmd
}

/// Runs `tests/py/SCRIPT ARGS…` with KEYBAG_TEST_PASSWORD `password` (or not set).
pub fn run_py(var: &str, script: &str, args: &[&Path], password: Option<&str>) -> Output {
    let mut cmd = py_command(var, script);
    cmd.args(args);
    match password {
        Some(pw) => cmd.env("KEYBAG_TEST_PASSWORD", pw),
        None => cmd.env_remove("KEYBAG_TEST_PASSWORD"),
    };
    cmd.output().expect("python runs")
}

/// Asserts that `out` (of `what`) succeeded and returns its stdout as JSON.
pub fn json_ok(out: &Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: bad JSON ({e})"))
}
