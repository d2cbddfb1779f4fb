#![allow(dead_code)]
//! A `keybag serve` process for the CLI tests: started on a free port of 127.0.0.1 with its
//! own data folder, its log kept beside it, stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Keybag, Out};

/// A `keybag serve` process, stopped (SIGTERM) on drop.
pub struct Serve {
    pub child: Option<Child>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub data: PathBuf,
    pub log: PathBuf,
    pub url: String,
    pub fingerprint: String,
}

impl Serve {
    /// Starts `keybag serve --data DATA ARGS…` on a free port of 127.0.0.1.
    pub fn start(data: &Path, args: &[String], env: &[(String, String)]) -> Serve {
        let mut s = Serve {
            child: None,
            args: args.to_vec(),
            env: env.to_vec(),
            data: data.to_path_buf(),
            log: data.with_extension("log"),
            url: String::new(),
            fingerprint: String::new(),
        };
        s.launch("127.0.0.1:0");
        s
    }

    pub fn launch(&mut self, listen: &str) {
        let ready = self.data.with_extension("ready");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keybag"));
        cmd.args(["serve", "--listen", listen, "--data"])
            .arg(&self.data)
            .arg("--ready-file")
            .arg(&ready)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for k in [
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_MAX_ATTEMPTS",
        ] {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start keybag serve");
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                self.url = v["url"].as_str().unwrap().to_string();
                self.fingerprint = v["fingerprint"].as_str().unwrap_or("").to_string();
                break;
            }
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "keybag serve exited ({st}) before listening:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (after [`Serve::kill9`] or a stop).
    pub fn restart(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port());
        for _ in 0..50 {
            // The old socket may linger a moment.
            if std::net::TcpListener::bind(&listen).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.launch(&listen);
    }

    /// SIGTERM, and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let st = c.wait().unwrap();
            assert!(
                st.success(),
                "keybag serve did not stop cleanly ({st}):\n{}",
                self.log()
            );
        }
    }

    /// `keybag serve admin …` on this server's data folder (and database).
    pub fn admin(&self, args: &[&str]) -> Out {
        let mut a: Vec<String> = vec!["serve".into(), "admin".into()];
        a.extend(args.iter().map(|s| s.to_string()));
        a.push("--data".into());
        a.push(self.data.display().to_string());
        // Only --database and --blobs of the server's arguments apply to admin commands.
        let mut i = 0;
        while i < self.args.len() {
            if self.args[i] == "--database" {
                a.push(self.args[i].clone());
                a.push(self.args[i + 1].clone());
            }
            i += 1;
        }
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Keybag::new(&a).password(None).envs(&env).run()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}
