#![allow(dead_code)]
//! Shared by the iCloud-style backup tests: a `keybag serve` on loopback (SQLite + a folder,
//! started in-process on a free port), phones with canary files and keychain items, and the
//! accounts and paths the scenarios use.

#[path = "../../../server/tests/common/mod.rs"]
pub mod service;

use std::collections::BTreeMap;
use std::path::Path;

use device::{DerValue, Device, InitOptions, ProtectionClass as PC, PutOptions};
use icloud::Account;
use zeroize::Zeroizing;

pub use service::{Deployment, TestServer};

/// The passcode of every test phone.
pub const PASSCODE: &[u8] = b"246810";

/// A service on loopback (SQLite and a folder in `data`).
pub fn serve(data: &Path) -> TestServer {
    TestServer::start(Deployment::local().options(data.to_path_buf()))
}

/// A registered account, logged in.
pub fn account(srv: &TestServer, name: &str, password: &str) -> Account {
    srv.account(name, password);
    login(srv, name, password)
}

/// A login to an existing account.
pub fn login(srv: &TestServer, name: &str, password: &str) -> Account {
    Account::login(&srv.base, Some(&srv.fingerprint), name, password.as_bytes()).expect("login")
}

/// A new phone (with the passcode, unlocked; cheap KDF for tests).
pub fn phone(dir: &Path, name: &str) -> Device {
    Device::init(
        dir,
        InitOptions {
            name: name.into(),
            passcode: Some(Zeroizing::new(PASSCODE.to_vec())),
            passcode_iterations: Some(1000),
            ..Default::default()
        },
    )
    .expect("init")
}

/// A generic-password item holding `secret`.
pub fn item(svce: &str, secret: &[u8]) -> BTreeMap<String, DerValue> {
    let mut m = BTreeMap::new();
    m.insert("svce".into(), DerValue::String(svce.into()));
    m.insert("acct".into(), DerValue::String("alice".into()));
    m.insert(
        "v_Data".into(),
        DerValue::Data(Zeroizing::new(secret.to_vec())),
    );
    m
}

/// What a phone holds that a backup takes: `(domain, path, class, content)`.
pub struct Content {
    /// Files a backup takes.
    pub files: Vec<(String, String, u32, Vec<u8>)>,
    /// Files it leaves out.
    pub left_out: Vec<(String, String, Vec<u8>)>,
    /// Keychain secrets by class (akpu's never leave).
    pub keychain: Vec<(u32, Vec<u8>)>,
}

/// A canary string unique to this test run and label.
pub fn canary(label: &str) -> Vec<u8> {
    format!("CANARY-{label}-{:016x}", rand_u64()).into_bytes()
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// Fills an unlocked phone: one file per class (content and name carry canaries, one larger
/// than a chunk), files left out (Caches, tmp, flagged, in a flagged folder), keychain items
/// in every class.
pub fn fill(dev: &mut Device) -> Content {
    let mut c = Content {
        files: Vec::new(),
        left_out: Vec::new(),
        keychain: Vec::new(),
    };
    dev.install_app("com.example.notes").unwrap();
    let dom = "AppDomain-com.example.notes".to_string();
    for (class, label) in [(1u32, "A"), (2, "B"), (3, "C"), (4, "D")] {
        let mut body = canary(&format!("content-{label}"));
        if class == 3 {
            // Several chunks, and not a multiple of the cipher block.
            let mut big = vec![0u8; 3 * 1024 * 1024 + 5];
            for (i, b) in big.iter_mut().enumerate() {
                *b = (i * 7 % 251) as u8;
            }
            body.extend_from_slice(&big);
        }
        let name = format!(
            "Documents/{}.txt",
            String::from_utf8(canary(&format!("name-{label}"))).unwrap()
        );
        dev.put(
            &dom,
            &name,
            &mut &body[..],
            &PutOptions {
                class: PC(class),
                ..Default::default()
            },
        )
        .unwrap();
        c.files.push((dom.clone(), name, class, body));
    }
    dev.put(
        "HomeDomain",
        "Library/Preferences/com.apple.x.plist",
        &mut &b"prefs"[..],
        &PutOptions::default(),
    )
    .unwrap();
    c.files.push((
        "HomeDomain".into(),
        "Library/Preferences/com.apple.x.plist".into(),
        3,
        b"prefs".to_vec(),
    ));
    for (path, flag) in [
        ("Library/Caches/cache.db", false),
        ("tmp/scratch", false),
        ("Documents/flagged.bin", true),
    ] {
        let body = canary(&format!("leftout-{path}"));
        dev.put(
            &dom,
            path,
            &mut &body[..],
            &PutOptions {
                exclude_from_backup: flag,
                ..Default::default()
            },
        )
        .unwrap();
        c.left_out.push((dom.clone(), path.into(), body));
    }
    dev.mkdir(&dom, "Documents/Private", 0o755).unwrap();
    dev.set_exclude_from_backup(&dom, "Documents/Private", true)
        .unwrap();
    let body = canary("leftout-private");
    dev.put(
        &dom,
        "Documents/Private/diary.txt",
        &mut &body[..],
        &PutOptions::default(),
    )
    .unwrap();
    c.left_out
        .push((dom.clone(), "Documents/Private/diary.txt".into(), body));
    for class in [6u32, 7, 8, 9, 10, 11, 12] {
        let secret = canary(&format!("keychain-{class}"));
        dev.keychain_add("genp", PC(class), item(&format!("svc{class}"), &secret))
            .unwrap();
        c.keychain.push((class, secret));
    }
    c
}

/// Every file's content on `dev` (unlocked), by `domain/path`.
pub fn contents(dev: &Device) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in dev.entries(None).unwrap() {
        if e.kind == device::EntryKind::File {
            let mut v = Vec::new();
            dev.get(&e.domain, &e.path, &mut v).unwrap();
            out.insert(format!("{}/{}", e.domain, e.path), v);
        }
    }
    out
}

/// Keychain secrets (`v_Data`) on `dev`, in class order.
pub fn secrets(dev: &Device) -> Vec<(u32, Vec<u8>)> {
    let mut v: Vec<(u32, Vec<u8>)> = dev
        .keychain_items()
        .unwrap()
        .into_iter()
        .filter_map(|i| match i.attributes.get("v_Data") {
            Some(DerValue::Data(d)) => Some((i.class.0, d.to_vec())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// Asserts `dev` holds exactly the backed-up files of `c`, byte for byte, and none of the
/// left-out ones.
pub fn assert_files(dev: &Device, c: &Content) {
    let got = contents(dev);
    for (d, p, _, body) in &c.files {
        let k = format!("{d}/{p}");
        assert_eq!(got.get(&k), Some(body), "{k} restored byte for byte");
    }
    for (d, p, _) in &c.left_out {
        assert!(
            !got.contains_key(&format!("{d}/{p}")),
            "{d}/{p} was left out"
        );
    }
}

/// Every file under `dir` concatenated (a dump to search).
pub fn slurp(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.extend(std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
