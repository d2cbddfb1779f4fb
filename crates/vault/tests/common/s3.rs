//! A real S3-compatible server for the tests: s3s-fs (crates.io; `scripts/test.sh` installs it
//! and exports `KEYBAG_S3S_FS`), started on 127.0.0.1 on a free port over a temp folder, with
//! fixed test credentials and one bucket, and killed on drop. A missing binary fails the test.
//!
//! s3s-fs takes its access and secret key only as arguments: the ones here are throwaway test
//! values that open nothing but this server, never a user's secret.

use std::net::{SocketAddr, TcpListener, TcpStream};
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
    /// Its data folder (the bucket is `data/BUCKET`).
    pub data: tempfile::TempDir,
    log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// True once the server accepts a connection; false if it exited because its port was taken.
fn wait_ready(child: &mut Child, addr: SocketAddr, log: &Path) -> bool {
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            if log.contains("Address already in use") || log.contains("AddrInUse") {
                return false;
            }
            panic!("s3s-fs exited ({status}) before answering:\n{log}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl S3Server {
    /// Starts s3s-fs with [`BUCKET`] and waits until it accepts connections.
    pub fn start() -> S3Server {
        let bin = s3s_fs_binary();
        let data = tempfile::tempdir().expect("temp folder");
        std::fs::create_dir(data.path().join(BUCKET)).expect("bucket folder");
        let log = data.path().join("s3s-fs.log");
        // The port may be taken between probing and binding: then s3s-fs exits; try another.
        for _attempt in 0..20 {
            let port = free_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let out = std::fs::File::create(&log).expect("log file");
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(data.path())
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("log file"))
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            if wait_ready(&mut child, addr, &log) {
                return S3Server {
                    child,
                    addr,
                    data,
                    log,
                };
            }
        }
        panic!("s3s-fs found no free port in 20 tries");
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
        self.data.path().join(BUCKET)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
