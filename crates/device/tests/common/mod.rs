#![allow(dead_code)]
//! Shared helpers for the device tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use device::{DerValue, Device, InitOptions, PutOptions};
use zeroize::Zeroizing;

pub use dataprotection::ProtectionClass as PC;

/// Small PBKDF2 count so tests stay fast (the calibrated count is tested separately).
pub const ITER: u32 = 2_000;
pub const PASSCODE: &[u8] = b"1234-secret";

pub fn init(dir: &Path, passcode: Option<&[u8]>) -> Device {
    Device::init(
        dir,
        InitOptions {
            name: "Test iPhone".into(),
            passcode: passcode.map(|p| Zeroizing::new(p.to_vec())),
            passcode_iterations: Some(ITER),
            ..Default::default()
        },
    )
    .unwrap()
}

pub fn new_device(passcode: Option<&[u8]>) -> (tempfile::TempDir, PathBuf, Device) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("phone");
    let dev = init(&dir, passcode);
    (tmp, dir, dev)
}

pub fn put(dev: &mut Device, domain: &str, path: &str, data: &[u8], class: PC) {
    dev.put(
        domain,
        path,
        &mut &data[..],
        &PutOptions {
            class,
            ..Default::default()
        },
    )
    .unwrap();
}

pub fn get(dev: &Device, domain: &str, path: &str) -> device::Result<Vec<u8>> {
    let mut out = Vec::new();
    dev.get(domain, path, &mut out)?;
    Ok(out)
}

pub fn password_item(svce: &str, secret: &[u8]) -> BTreeMap<String, DerValue> {
    let mut m = BTreeMap::new();
    m.insert("svce".into(), DerValue::String(svce.into()));
    m.insert("acct".into(), DerValue::String("alice".into()));
    m.insert("agrp".into(), DerValue::String("com.example.group".into()));
    m.insert(
        "v_Data".into(),
        DerValue::Data(Zeroizing::new(secret.to_vec())),
    );
    m
}

/// Every regular file under `dir`, recursively.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
