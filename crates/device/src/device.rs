//! [`Device`]: init, open, lock states, passcode.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataprotection::keybag::Keybag;
use dataprotection::{DeviceKey, Key256, ProtectionClass};
use rusqlite::Connection;
use sha2::{Digest, Sha256};

use crate::bag::{self, ClassKeys, PasscodeWrap, Unwrapped, AKPU, ALWAYS, FORGOTTEN_AT_LOCK};
use crate::error::{damaged, io, Error, Result};
use crate::meta::{write_atomic, Meta, Session, FORMAT};
use crate::sep::{calibrate_iterations, Uid};
use crate::{InitOptions, LockState};

/// A clock returning Unix seconds.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Delay after the `n`-th consecutive failure, as iOS: none for 1–4, then 1 min,
/// 5 min, 15 min, 15 min, 1 h.
pub(crate) fn delay_after(n: u32) -> i64 {
    match n {
        0..=4 => 0,
        5 => 60,
        6 => 300,
        7 | 8 => 900,
        _ => 3600,
    }
}

/// An emulated device (see the crate docs for the folder layout and the keys).
pub struct Device {
    pub(crate) dir: PathBuf,
    pub(crate) meta: Meta,
    pub(crate) uid: Uid,
    pub(crate) keybag: Keybag,
    pub(crate) state: LockState,
    /// Class keys currently in the SEP's memory.
    pub(crate) keys: ClassKeys,
    pub(crate) store: Mutex<Connection>,
    pub(crate) keychain: Mutex<Connection>,
    /// The iCloud Backup keybag, when cloud backup is on.
    pub(crate) cloud: Option<crate::cloudbag::CloudBag>,
    clock: Clock,
    last_wrong: Option<[u8; 32]>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("dir", &self.dir)
            .field("name", &self.meta.name)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

pub(crate) fn secure(dir: &Path) -> PathBuf {
    dir.join("secure")
}
pub(crate) fn uid_path(dir: &Path) -> PathBuf {
    secure(dir).join("uid.key")
}
pub(crate) fn locker_path(dir: &Path) -> PathBuf {
    secure(dir).join("locker")
}
pub(crate) fn keybag_path(dir: &Path) -> PathBuf {
    secure(dir).join("systembag.kb")
}
pub(crate) fn backup_keybag_path(dir: &Path) -> PathBuf {
    secure(dir).join("backup-keybag")
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, mode);
    #[cfg(not(unix))]
    let _ = mode;
    b.create(path).map_err(io(path))
}

fn read_secret(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(io(path))
}

impl Device {
    /// Creates a device in `dir` (absent or empty): a new UID, locker, class keys and
    /// system keybag, empty store and keychain. The new device is unlocked.
    pub fn init(dir: &Path, opts: InitOptions) -> Result<Device> {
        if dir.exists() {
            let mut it = std::fs::read_dir(dir).map_err(io(dir))?;
            if it.next().is_some() {
                return Err(Error::AlreadyExists {
                    path: dir.to_path_buf(),
                });
            }
        }
        let passcode = opts.passcode.filter(|p| !p.is_empty());
        mkdir(dir, 0o755)?;
        mkdir(&secure(dir), 0o700)?;
        mkdir(&dir.join("run"), 0o700)?;
        mkdir(&dir.join("store"), 0o700)?;
        let uid = Uid::generate();
        write_atomic(&uid_path(dir), uid.bytes(), 0o600)?;
        let locker = Key256::random();
        write_atomic(&locker_path(dir), locker.as_bytes(), 0o600)?;
        let iter = opts
            .passcode_iterations
            .unwrap_or_else(|| calibrate_iterations(Duration::from_millis(80)))
            .max(1);
        let keys = bag::new_class_keys(passcode.is_some());
        let uuid = Key256::random().as_bytes()[..16].to_vec();
        let kb = match &passcode {
            Some(p) => {
                let salt = Key256::random().as_bytes()[..bag::SALT_LEN].to_vec();
                let pk = uid.tangle(p, &salt, iter);
                bag::build(
                    &uid,
                    &uuid,
                    &keys,
                    Some(&PasscodeWrap {
                        key: &pk,
                        salt,
                        iter,
                    }),
                )
            }
            None => bag::build(&uid, &uuid, &keys, None),
        };
        write_atomic(
            &keybag_path(dir),
            &bag::seal(&uid, locker.as_bytes(), &kb),
            0o600,
        )?;
        let udid_key = Key256::random();
        let udid_tail = &udid_key.as_bytes()[..8];
        let meta = Meta {
            format: FORMAT.into(),
            name: opts.name,
            udid: format!("00008101-{}", hex::encode_upper(udid_tail)),
            model: opts.model.unwrap_or_else(|| "iPhone13,2".into()),
            ios_version: opts.ios_version.unwrap_or_else(|| "17.5".into()),
            created: system_now(),
            passcode_iterations: iter,
            wipe_after_10: opts.wipe_after_10,
            failed_attempts: 0,
            locked_out_until: 0,
            wiped: false,
        };
        meta.save(dir)?;
        let store = crate::store::open_db(dir)?;
        let keychain = crate::keychain::open_db(dir)?;
        Session::save(dir, &uid, LockState::Unlocked, &keys)?;
        Ok(Device {
            dir: dir.to_path_buf(),
            meta,
            uid,
            keybag: kb,
            state: LockState::Unlocked,
            keys,
            store: Mutex::new(store),
            keychain: Mutex::new(keychain),
            cloud: None,
            clock: Arc::new(system_now),
            last_wrong: None,
        })
    }

    /// Opens a device folder: verifies the keybag signature and resumes the current boot
    /// (`run/session`), or starts before first unlock. A device without a passcode is
    /// unlocked at boot.
    pub fn open(dir: &Path) -> Result<Device> {
        crate::staging::clean(dir)?; // what a killed restore or import left beside it
        let meta = Meta::load(dir)?;
        if meta.wiped {
            return Err(Error::Wiped {
                path: dir.to_path_buf(),
            });
        }
        let uid = Uid::load(&uid_path(dir))?;
        let locker = read_secret(&locker_path(dir))?;
        let kb_path = keybag_path(dir);
        let kb_bytes = read_secret(&kb_path)?;
        let keybag = bag::open(&uid, &locker, &kb_bytes, &kb_path)?;
        let store = crate::store::open_db(dir)?;
        let keychain = crate::keychain::open_db(dir)?;
        let cloud = crate::cloudbag::load(dir, &uid)?;
        let mut dev = Device {
            dir: dir.to_path_buf(),
            meta,
            uid,
            keybag,
            state: LockState::BeforeFirstUnlock,
            keys: ClassKeys::new(),
            store: Mutex::new(store),
            keychain: Mutex::new(keychain),
            cloud,
            clock: Arc::new(system_now),
            last_wrong: None,
        };
        match Session::load(dir, &dev.uid)? {
            Some((state, keys)) => {
                dev.state = state;
                dev.keys = keys;
            }
            None => dev.boot()?,
        }
        Ok(dev)
    }

    /// Boot: only the UID-wrapped classes; a device without a passcode unlocks fully.
    fn boot(&mut self) -> Result<()> {
        let kb_path = keybag_path(&self.dir);
        match bag::unwrap(&self.uid, &self.keybag, None, &kb_path)? {
            Unwrapped::Keys(keys) => self.keys = keys,
            Unwrapped::WrongPasscode => unreachable!("no passcode given"),
        }
        if self.passcode_set() {
            self.state = LockState::BeforeFirstUnlock;
            self.keys.retain(|c, _| ALWAYS.contains(c));
            Session::delete(&self.dir)
        } else {
            self.state = LockState::Unlocked;
            Session::save(&self.dir, &self.uid, self.state, &self.keys)
        }
    }

    /// Replaces the clock (Unix seconds) used for passcode delays; for tests.
    pub fn set_clock(&mut self, clock: Arc<dyn Fn() -> i64 + Send + Sync>) {
        self.clock = clock;
    }

    /// The device folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Device name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }
    /// UDID.
    pub fn udid(&self) -> &str {
        &self.meta.udid
    }
    /// Product type, e.g. `iPhone13,2`.
    pub fn model(&self) -> &str {
        &self.meta.model
    }
    /// iOS version.
    pub fn ios_version(&self) -> &str {
        &self.meta.ios_version
    }
    /// True when a passcode is set (read from the signed keybag).
    pub fn passcode_set(&self) -> bool {
        self.keybag.iter.is_some()
    }
    /// Current lock state.
    pub fn state(&self) -> LockState {
        self.state
    }
    /// Consecutive failed passcode attempts.
    pub fn failed_attempts(&self) -> u32 {
        self.meta.failed_attempts
    }
    /// Unix time before which no passcode attempt is accepted (0 = none).
    pub fn locked_out_until(&self) -> i64 {
        self.meta.locked_out_until
    }
    /// True when the 10th failure wipes the device.
    pub fn wipe_after_10(&self) -> bool {
        self.meta.wipe_after_10
    }
    /// Turns wipe-after-10-failures on or off.
    pub fn set_wipe_after_10(&mut self, on: bool) -> Result<()> {
        self.meta.wipe_after_10 = on;
        self.meta.save(&self.dir)
    }
    /// PBKDF2 iterations of the passcode KDF (the keybag's `ITER`, or the calibrated count
    /// the next passcode will use).
    pub fn passcode_iterations(&self) -> u32 {
        self.keybag.iter.unwrap_or(self.meta.passcode_iterations)
    }
    /// The system keybag (verified; class keys wrapped). For inspection and tests.
    pub fn system_keybag(&self) -> &Keybag {
        &self.keybag
    }

    /// Whether "encrypt local backup" is on: the device holds a backup keybag
    /// (`secure/backup-keybag`, see [`crate::backup`]), so its backups are encrypted without
    /// asking for the password.
    pub fn backup_encryption(&self) -> bool {
        backup_keybag_path(&self.dir).is_file()
    }

    /// Key 0x835 = AES-256-ECB(UID, 16 × 0x01), for building backups. Never printed by the CLI.
    pub fn device_key(&self) -> DeviceKey {
        self.uid.key835()
    }

    /// True when data of `class` can be read now (for class B: its private key is held).
    pub fn class_key_available(&self, class: ProtectionClass) -> bool {
        self.keys.contains_key(&class.0)
    }

    pub(crate) fn class_key(&self, class: ProtectionClass) -> Result<&Key256> {
        self.keys.get(&class.0).ok_or(Error::ClassUnavailable {
            class,
            state: self.state,
        })
    }

    pub(crate) fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Checks `passcode` and returns every class key. Counts failures, enforces delays,
    /// wipes on the 10th failure when enabled.
    fn verify(&mut self, passcode: &[u8]) -> Result<ClassKeys> {
        let kb_path = keybag_path(&self.dir);
        let pk = if self.passcode_set() {
            let now = self.now();
            if self.meta.locked_out_until > now {
                return Err(Error::TryAgainLater {
                    seconds: (self.meta.locked_out_until - now) as u64,
                });
            }
            let salt = self
                .keybag
                .salt
                .clone()
                .ok_or_else(|| damaged(&kb_path, "no SALT"))?;
            let iter = self.keybag.iter.unwrap_or(1);
            Some(self.uid.tangle(passcode, &salt, iter))
        } else {
            None
        };
        match bag::unwrap(&self.uid, &self.keybag, pk.as_ref(), &kb_path)? {
            Unwrapped::Keys(keys) => {
                if self.meta.failed_attempts != 0 || self.meta.locked_out_until != 0 {
                    self.meta.failed_attempts = 0;
                    self.meta.locked_out_until = 0;
                    self.meta.save(&self.dir)?;
                }
                self.last_wrong = None;
                Ok(keys)
            }
            Unwrapped::WrongPasscode => {
                let fp: [u8; 32] = Sha256::digest(pk.expect("passcode set").as_bytes()).into();
                if self.last_wrong != Some(fp) {
                    self.last_wrong = Some(fp);
                    self.meta.failed_attempts += 1;
                    let n = self.meta.failed_attempts;
                    let delay = delay_after(n);
                    self.meta.locked_out_until = if delay > 0 { self.now() + delay } else { 0 };
                    self.meta.save(&self.dir)?;
                    if n >= 10 && self.meta.wipe_after_10 {
                        self.wipe()?;
                        return Err(Error::Wiped {
                            path: self.dir.clone(),
                        });
                    }
                }
                Err(Error::WrongPasscode {
                    path: kb_path,
                    failed_attempts: self.meta.failed_attempts,
                })
            }
        }
    }

    /// Crypto-shreds the device: deletes the UID, the locker, the keybag and the session.
    fn wipe(&mut self) -> Result<()> {
        self.meta.wiped = true;
        self.meta.save(&self.dir)?;
        for p in [
            uid_path(&self.dir),
            locker_path(&self.dir),
            keybag_path(&self.dir),
            Session::path(&self.dir),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p)(e)),
            }
        }
        self.keys.clear();
        self.state = LockState::BeforeFirstUnlock;
        Ok(())
    }

    /// Unlocks with the passcode (a device without one accepts anything, e.g. `b""`).
    pub fn unlock(&mut self, passcode: &[u8]) -> Result<()> {
        let keys = self.verify(passcode)?;
        self.keys = keys;
        self.state = LockState::Unlocked;
        Session::save(&self.dir, &self.uid, self.state, &self.keys)
    }

    /// Locks: forgets A, B's private key, ak, aku and akpu at once. Before first unlock,
    /// or without a passcode, nothing changes.
    pub fn lock(&mut self) -> Result<()> {
        if !self.passcode_set() || self.state != LockState::Unlocked {
            return Ok(());
        }
        self.keys.retain(|c, _| !FORGOTTEN_AT_LOCK.contains(c));
        self.state = LockState::Locked;
        Session::save(&self.dir, &self.uid, self.state, &self.keys)
    }

    /// Restarts: the SEP's memory is gone; the device is before first unlock.
    pub fn restart(&mut self) -> Result<()> {
        Session::delete(&self.dir)?;
        self.keys.clear();
        self.last_wrong = None;
        self.boot()
    }

    /// Sets, changes (`old` and `new`) or removes (`new = None` or empty) the passcode.
    /// Only the class keys are rewrapped (file and item keys are untouched); the locker is
    /// replaced, so the old keybag file no longer verifies. Removal deletes every akpu
    /// item. The device is unlocked afterwards.
    pub fn set_passcode(&mut self, old: Option<&[u8]>, new: Option<&[u8]>) -> Result<()> {
        if self.passcode_set() && old.is_none() {
            return Err(Error::PasscodeRequired {
                what: "changing the passcode (the current one)".into(),
            });
        }
        let mut keys = self.verify(old.unwrap_or_default())?;
        let new = new.filter(|p| !p.is_empty());
        let uuid = self
            .keybag
            .uuid
            .clone()
            .unwrap_or_else(|| Key256::random().as_bytes()[..16].to_vec());
        let kb = match new {
            Some(p) => {
                keys.entry(AKPU).or_insert_with(Key256::random);
                let iter = self.meta.passcode_iterations.max(1);
                let salt = Key256::random().as_bytes()[..bag::SALT_LEN].to_vec();
                let pk = self.uid.tangle(p, &salt, iter);
                bag::build(
                    &self.uid,
                    &uuid,
                    &keys,
                    Some(&PasscodeWrap {
                        key: &pk,
                        salt,
                        iter,
                    }),
                )
            }
            None => {
                keys.remove(&AKPU);
                bag::build(&self.uid, &uuid, &keys, None)
            }
        };
        if new.is_none() {
            self.delete_akpu_items()?;
        }
        let locker = Key256::random();
        let kb_bytes = bag::seal(&self.uid, locker.as_bytes(), &kb);
        let kb_path = keybag_path(&self.dir);
        let tmp = kb_path.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        write_atomic(&tmp, &kb_bytes, 0o600)?;
        write_atomic(&locker_path(&self.dir), locker.as_bytes(), 0o600)?;
        std::fs::rename(&tmp, &kb_path).map_err(io(&kb_path))?;
        self.keybag = kb;
        self.keys = keys;
        self.state = LockState::Unlocked;
        Session::save(&self.dir, &self.uid, self.state, &self.keys)
    }
}
