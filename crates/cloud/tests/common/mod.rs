//! What the cloud tests share: the fixtures, their derived key, a cheap repository, and the
//! files of a folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dataprotection::{KdfLimits, Passkey};
use mobilebackup::{Credentials, Secret};
use vault::keys::{Argon2Params, Params, MIN_MEMORY_KIB};
use vault::storage::Storage;
use vault::Repository;

/// The derived key of `testdata/enc-small-public`.
pub const PASSKEY: &str = "44a316ca4293d559aa3a068ebb22105607824ea61d611baf62cd3e83c0c796c7";

/// The password of [`repo_on`]'s repositories.
pub const REPO_PASSWORD: &[u8] = b"vault pw";

/// A fixture folder under `testdata/`.
pub fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
}

/// Unlocks `enc-small-public` with its derived key.
pub fn passkey_creds() -> Credentials {
    Credentials {
        secret: Secret::Passkey(Passkey::from_hex(PASSKEY).unwrap()),
        device_key: None,
        limits: KdfLimits::default(),
    }
}

/// A new repository on `s` (Argon2id at its cheapest allowed cost).
pub fn repo_on(s: Arc<dyn Storage>) -> Repository {
    let argon = Argon2Params {
        m_kib: MIN_MEMORY_KIB,
        t: 1,
        p: 1,
    };
    let (r, _) = Repository::init(s, REPO_PASSWORD, Some(argon), Params::default()).unwrap();
    r
}

/// Every regular file under `root`: relative path → bytes.
pub fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
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
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}
