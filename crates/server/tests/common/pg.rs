//! A real PostgreSQL server for the tests: Debian's package (`scripts/test.sh` installs it
//! and exports `KEYBAG_PG_BIN`, its `bin` folder), a new cluster made by `initdb` in a temp
//! folder, started on 127.0.0.1 on a free port, as an unprivileged user (the `postgres`
//! account when the tests run as root), and stopped on drop. A missing binary fails the test.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The user the clusters are made for (trust authentication on 127.0.0.1 only).
pub const USER: &str = "keybag";

/// Debian's PostgreSQL `bin` folder: `KEYBAG_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KEYBAG_PG_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.join("postgres").is_file(),
            "KEYBAG_PG_BIN={} holds no postgres binary: install Debian's postgresql \
             (scripts/test.sh does)",
            p.display()
        );
        return p;
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("postgres").is_file() && b.join("initdb").is_file())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL not found (KEYBAG_PG_BIN unset, no /usr/lib/postgresql/*/bin): the \
             service tests need a real server. Install Debian's `postgresql` package, or run \
             scripts/test.sh, which does and exports KEYBAG_PG_BIN"
        )
    })
}

fn is_root() -> bool {
    // The tests must not run the server as root (PostgreSQL refuses to); `id -u` says who we are.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `cmd` as the unprivileged `postgres` account when we are root (setpriv execs: the child's
/// PID is the server's), else as ourselves.
fn as_user(bin: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--reset-env",
        ]);
        c.arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

/// A running PostgreSQL, stopped (fast shutdown) on drop.
pub struct Postgres {
    child: Option<Child>,
    bin: PathBuf,
    root: bool,
    /// Its folder (`data/` the cluster, `log` its log, `sock/` its socket).
    pub dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Postgres {
    /// Makes a cluster and starts it.
    pub fn start() -> Postgres {
        let bin = pg_bin();
        let root = is_root();
        let dir = tempfile::tempdir().expect("temp folder");
        if root {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown the PostgreSQL folder to postgres");
        }
        let out = as_user(&bin.join("initdb"), root)
            .args(["-D"])
            .arg(dir.path().join("data"))
            .args([
                "-A",
                "trust",
                "-U",
                USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            child: None,
            bin,
            root,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        // A port probed free can be taken before the server binds it: try a few.
        for _ in 0..10 {
            pg.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            if pg.launch() {
                return pg;
            }
        }
        panic!("PostgreSQL did not start:\n{}", pg.log());
    }

    /// Starts the server on `self.addr`; false if it exited (the port was taken).
    fn launch(&mut self) -> bool {
        let sock = self.dir.path().join("sock");
        let _ = std::fs::create_dir_all(&sock);
        if self.root {
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&sock)
                .status();
        }
        let log = self.dir.path().join("log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let mut child = as_user(&self.bin.join("postgres"), self.root)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.addr.port().to_string()])
            .arg("-k")
            .arg(&sock)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "max_connections=300"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start postgres");
        loop {
            if let Some(_status) = child.try_wait().expect("wait") {
                return false;
            }
            if TcpStream::connect(self.addr).is_ok() && self.ready() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.addr.port().to_string(),
                "-U",
                USER,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Makes database `name`; returns its URL.
    pub fn create_db(&self, name: &str) -> String {
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.addr.port().to_string(),
                "-U",
                USER,
                name,
            ])
            .output()
            .expect("createdb");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(name)
    }

    /// `postgres://keybag@127.0.0.1:PORT/name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@{}/{name}", self.addr)
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Stops it and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Starts it again on the same port, after [`Postgres::stop`].
    pub fn start_again(&mut self) {
        for _ in 0..100 {
            if self.launch() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("PostgreSQL did not restart:\n{}", self.log());
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
