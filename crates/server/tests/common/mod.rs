#![allow(dead_code)]
//! Shared by the service tests: the two deployments they run against (SQLite + a folder, and
//! PostgreSQL + S3, both real servers started here on loopback), a `keybag serve` run
//! in-process on a free port, and clients that pin its certificate.

pub mod pg;
#[path = "../../../vault/tests/common/s3.rs"]
pub mod s3;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::Client;
use server::client::ServerClient;
use server::ServeOptions;
use vault::storage::{HttpSettings, HttpStorage, Storage};
use zeroize::Zeroizing;

/// Where the metadata and the objects go.
pub enum Deployment {
    /// A SQLite file and a folder, in the data folder (the default).
    Local,
    /// PostgreSQL and an S3 bucket (the scale-out deployment).
    Scaled {
        /// The database server.
        pg: pg::Postgres,
        /// The object store (boxed: it is much larger than `Local`).
        s3: Box<s3::S3Server>,
        /// The database's URL.
        url: String,
    },
}

impl Deployment {
    /// SQLite + folder.
    pub fn local() -> Deployment {
        Deployment::Local
    }

    /// PostgreSQL + S3 (both started now).
    pub fn scaled() -> Deployment {
        let pg = pg::Postgres::start();
        let url = pg.create_db("keybag");
        Deployment::Scaled {
            pg,
            s3: Box::new(s3::S3Server::start()),
            url,
        }
    }

    /// Server options over `data` (the data folder: the certificate, and for `Local`
    /// everything).
    pub fn options(&self, data: PathBuf) -> ServeOptions {
        let mut o = ServeOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)), data);
        if let Deployment::Scaled { s3, url, .. } = self {
            o.database = Some(url.clone());
            o.blobs = Some(format!("s3://{}/keybag", s3::BUCKET));
            o.s3 = Some(s3.settings_at(&s3.endpoint(), "keybag"));
        }
        o
    }

    /// The S3 server, for `Scaled`.
    pub fn s3(&mut self) -> &mut s3::S3Server {
        match self {
            Deployment::Scaled { s3, .. } => s3,
            Deployment::Local => panic!("no S3 in the local deployment"),
        }
    }
}

/// A server running in this process on a free port, stopped on drop.
pub struct TestServer {
    /// `https://127.0.0.1:PORT`.
    pub base: String,
    /// Its certificate's fingerprint.
    pub fingerprint: String,
    /// What it was started with.
    pub opts: ServeOptions,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with `opts` (its address is ignored: a free port on 127.0.0.1).
    pub fn start(mut opts: ServeOptions) -> TestServer {
        opts.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (rtx, rrx) = std::sync::mpsc::channel();
        let o = opts.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let r = rt.block_on(server::serve_until(
                o,
                move |ready| {
                    let _ = rtx.send(ready);
                },
                async move {
                    let _ = rx.await;
                },
            ));
            if let Err(e) = r {
                panic!("server failed: {e}");
            }
        });
        let ready = rrx
            .recv()
            .unwrap_or_else(|_| panic!("the server did not start"));
        TestServer {
            base: format!("https://{}", ready.addr),
            fingerprint: ready.fingerprint.expect("a certificate"),
            opts,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// An HTTP client pinned to this server.
    pub fn http(&self) -> Client {
        vault::storage::http_client(&self.base, Some(&self.fingerprint), Duration::from_secs(60))
            .expect("client")
    }

    /// The account API client.
    pub fn client(&self) -> ServerClient {
        ServerClient::new(&self.base, Some(&self.fingerprint)).expect("client")
    }

    /// A new account, registered with `password`; returns its enrollment-free owner token.
    pub fn account(&self, name: &str, password: &str) -> String {
        let (_, code) = server::ops::add_account(&self.opts, name, None).expect("account");
        let c = self.client();
        c.register(name, &code, password.as_bytes())
            .expect("register");
        c.login(name, password.as_bytes())
            .expect("login")
            .token
            .to_string()
    }

    /// A device of the account of `owner`, with a token of `scope`.
    pub fn device(&self, owner: &str, name: &str, scope: &str) -> String {
        let v = self
            .client()
            .add_device(owner, name, scope)
            .expect("device");
        v["token"].as_str().expect("token").to_string()
    }

    /// The account's repository through `token`, as a vault storage.
    pub fn storage(&self, token: &str) -> Arc<dyn Storage> {
        let mut s = HttpSettings::new(
            &self.base,
            Zeroizing::new(token.to_string()),
            Some(self.fingerprint.clone()),
        );
        s.retries = 0;
        Arc::new(HttpStorage::new(s).expect("storage"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
