//! `device.json` (metadata and counters, not secret) and `run/session` (the SEP's memory).

use std::io::Write;
use std::path::{Path, PathBuf};

use dataprotection::Key256;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::bag::ClassKeys;
use crate::error::{damaged, io, Error, Result};
use crate::sep::{label, Uid};
use crate::LockState;

/// The `format` value of `device.json`.
pub(crate) const FORMAT: &str = "keybag-device/1";

/// `device.json`. Nothing here depends on the passcode.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Meta {
    pub format: String,
    pub name: String,
    pub udid: String,
    pub model: String,
    pub ios_version: String,
    pub created: i64,
    /// PBKDF2 iterations for the next passcode (calibrated at init).
    pub passcode_iterations: u32,
    pub wipe_after_10: bool,
    pub failed_attempts: u32,
    pub locked_out_until: i64,
    pub wiped: bool,
}

impl Meta {
    pub fn load(dir: &Path) -> Result<Meta> {
        let path = dir.join("device.json");
        let not = |reason: String| Error::NotADevice {
            path: dir.to_path_buf(),
            reason,
        };
        if !dir.is_dir() {
            return Err(not("not a folder".into()));
        }
        let text = std::fs::read(&path).map_err(|e| not(format!("device.json: {e}")))?;
        let meta: Meta = serde_json::from_slice(&text)
            .map_err(|e| not(format!("device.json is not device metadata: {e}")))?;
        if meta.format != FORMAT {
            return Err(not(format!("device.json has format {:?}", meta.format)));
        }
        Ok(meta)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).expect("serializable");
        write_atomic(&dir.join("device.json"), &text, 0o644)
    }
}

/// Writes `path` via a temporary name and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// `run/session`: the class keys the SEP holds in memory while the device is after
/// first unlock. A real SEP never writes them out; this file stands in for its RAM,
/// encrypted (AES-GCM) under a UID-derived key. `restart` deletes it.
pub(crate) struct Session;

const SESSION_AAD: &[u8] = b"keybag.device/session/v1";

impl Session {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("run").join("session")
    }

    pub fn save(dir: &Path, uid: &Uid, state: LockState, keys: &ClassKeys) -> Result<()> {
        let mut plain = Zeroizing::new(vec![match state {
            LockState::BeforeFirstUnlock => 0u8,
            LockState::Unlocked => 1,
            LockState::Locked => 2,
        }]);
        for (class, key) in keys {
            plain.extend_from_slice(&class.to_be_bytes());
            plain.extend_from_slice(key.as_bytes());
        }
        let iv = &Key256::random().as_bytes()[..12].to_vec();
        let key = uid.derive(label::SESSION);
        let (ct, tag) =
            dataprotection::gcm::encrypt(&key, iv, SESSION_AAD, &plain).expect("small session");
        let mut out = iv.clone();
        out.extend_from_slice(&tag);
        out.extend_from_slice(&ct);
        write_atomic(&Self::path(dir), &out, 0o600)
    }

    /// `None` when there is no session (before first unlock).
    pub fn load(dir: &Path, uid: &Uid) -> Result<Option<(LockState, ClassKeys)>> {
        let path = Self::path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        if bytes.len() < 28 {
            return Err(damaged(&path, "session file too short"));
        }
        let key = uid.derive(label::SESSION);
        let plain = dataprotection::gcm::decrypt(
            &key,
            &bytes[..12],
            SESSION_AAD,
            &bytes[28..],
            &bytes[12..28],
        )
        .map_err(|e| damaged(&path, format!("session does not decrypt: {e}")))?;
        let state = match plain.first() {
            Some(1) => LockState::Unlocked,
            Some(2) => LockState::Locked,
            _ => return Err(damaged(&path, "bad session state")),
        };
        let rest = &plain[1..];
        if rest.len() % 36 != 0 {
            return Err(damaged(&path, "bad session length"));
        }
        let keys = rest
            .chunks_exact(36)
            .map(|c| {
                (
                    u32::from_be_bytes(c[..4].try_into().expect("4")),
                    Key256::from_slice(&c[4..]).expect("32"),
                )
            })
            .collect();
        Ok(Some((state, keys)))
    }

    pub fn delete(dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
}
