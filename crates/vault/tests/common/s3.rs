//! A real S3-compatible server for the tests: s3s-fs (crates.io; `scripts/test.sh` installs it
//! and exports `KEYBAG_S3S_FS`), started on 127.0.0.1 on a free port over a temp folder, with
//! fixed test credentials and one bucket, and killed on drop. A missing binary fails the test.
//!
//! s3s-fs takes its access and secret key only as arguments: the ones here are throwaway test
//! values that open nothing but this server, never a user's secret.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use vault::storage::{S3Settings, S3Storage, Storage};
use zeroize::Zeroizing;

/// The test server's access key ID.
pub const ACCESS_KEY: &str = "KEYBAGTESTACCESSKEY";
/// The test server's secret key (a fixed test value, not a secret).
pub const SECRET_KEY: &str = "keybag-test-secret-key-for-s3s-fs-only";
/// The bucket every server is started with.
pub const BUCKET: &str = "vault-test";

/// The s3s-fs binary: `KEYBAG_S3S_FS`, else `s3s-fs` on the PATH or in `~/.cargo/bin`.
pub fn s3s_fs_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KEYBAG_S3S_FS").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "KEYBAG_S3S_FS={} is not a file: install s3s-fs with \
             `cargo install s3s-fs --version 0.14.1 --features binary --locked` \
             (scripts/test.sh does)",
            p.display()
        );
        return p;
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "s3s-fs not found (KEYBAG_S3S_FS unset, not on the PATH): the S3 tests need \
                 the real server. Install it with `cargo install s3s-fs --version 0.14.1 \
                 --features binary --locked`, or run scripts/test.sh, which does and exports \
                 KEYBAG_S3S_FS"
            )
        })
}

/// A running s3s-fs, killed on drop.
pub struct S3Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its folder: the server's root is `root/` (the bucket is `root/BUCKET`), its log
    /// `s3s-fs.log`.
    pub data: tempfile::TempDir,
    log: PathBuf,
}

/// The address s3s-fs reports listening on, once it does; panics if it exits first.
fn wait_listening(child: &mut Child, log: &Path) -> SocketAddr {
    const READY: &str = "server is running at http://";
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split(READY).nth(1) {
            let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
            return addr
                .parse()
                .unwrap_or_else(|e| panic!("s3s-fs reports an odd address {addr:?}: {e}"));
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("s3s-fs exited ({status}) before listening:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl S3Server {
    /// Starts s3s-fs with [`BUCKET`] on a port the system picks (`--port 0`: no race with
    /// other tests for a probed port), and waits until it listens.
    pub fn start() -> S3Server {
        let bin = s3s_fs_binary();
        let data = tempfile::tempdir().expect("temp folder");
        std::fs::create_dir_all(data.path().join("root").join(BUCKET)).expect("bucket folder");
        let log = data.path().join("s3s-fs.log");
        let out = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(data.path().join("root"))
            .env("RUST_LOG", "s3s_fs=info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let addr = wait_listening(&mut child, &log);
        TcpStream::connect(addr).unwrap_or_else(|e| panic!("s3s-fs at {addr}: {e}"));
        S3Server {
            child,
            addr,
            data,
            log,
        }
    }

    /// Stops the server (its data stays): requests are refused until [`S3Server::restart`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and folder (after [`S3Server::stop`]).
    pub fn restart(&mut self) {
        let bin = s3s_fs_binary();
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("log file");
        let before = self.log().len();
        self.child = Command::new(&bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
            ])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.data.path().join("root"))
            .env("RUST_LOG", "s3s_fs=info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        loop {
            if TcpStream::connect(self.addr).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!(
                    "s3s-fs exited ({status}) on restart:\n{}",
                    &self.log()[before..]
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The environment a process needs to use this server as `s3://BUCKET/…`.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Settings for `s3://BUCKET/prefix` on this server (or at `endpoint`, e.g. a proxy in
    /// front of it), with the test credentials and the product's default timeouts.
    pub fn settings_at(&self, endpoint: &str, prefix: &str) -> S3Settings {
        let mut s = S3Settings::new(BUCKET, prefix);
        s.endpoint = Some(endpoint.to_string());
        s.access_key_id = Some(ACCESS_KEY.into());
        s.secret_access_key = Some(Zeroizing::new(SECRET_KEY.into()));
        s
    }

    /// The storage at `s3://BUCKET/prefix`, straight to the server.
    pub fn storage(&self, prefix: &str) -> Arc<dyn Storage> {
        Arc::new(S3Storage::new(self.settings_at(&self.endpoint(), prefix)).expect("S3 storage"))
    }

    /// Objects in the bucket's folder on disk, for checks that go around S3 entirely.
    pub fn bucket_dir(&self) -> PathBuf {
        self.data.path().join("root").join(BUCKET)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
