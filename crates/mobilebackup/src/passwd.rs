//! Changing an encrypted backup's password in place.
//!
//! Only `Manifest.plist`'s `BackupKeyBag` changes: its password-wrapped class
//! keys are re-wrapped under the new password with fresh salts
//! ([`Keybag::rewrap`]). The class keys themselves stay, so `ManifestKey`,
//! `Manifest.db`, every file key and every blob are untouched (and the device
//! layer of `WRAP=3` classes too). The sequence is crash-safe:
//!
//! 1. [`Step::BackedUp`]: `Manifest.plist` is copied to `Manifest.plist.bak`
//!    (temp file, fsync, rename, fsync of the folder);
//! 2. [`Step::Written`]: the new `Manifest.plist` replaces the old one the same way;
//! 3. [`Step::Verified`]: the backup is re-opened from disk and unlocked with the
//!    new passkey; every class key must unwrap to what it was, `Manifest.db` must
//!    load and a sample file must decrypt to the same bytes as before;
//! 4. [`Step::Cleaned`]: `Manifest.plist.bak` is removed.
//!
//! If verification fails, `Manifest.plist.bak` is renamed back over
//! `Manifest.plist` and an error is returned: the password is unchanged.
//! A crash at any point leaves a backup that opens with the old password (up to
//! step 1) or the new one (from step 2 on); readers ignore `Manifest.plist.bak`.
//!
//! The temp files of steps 1 and 2 (`.Manifest.plist.keybag-tmp-PID-…`) are removed by the
//! next change once their process is gone ([`crate::staging::clean_stale`]).
//!
//! A `Manifest.plist.bak` found at the start is left by an interrupted run. If it
//! is byte-identical to `Manifest.plist` (a crash after step 1) it is simply
//! replaced; otherwise the change is refused with instructions
//! ([`check_leftover`]), because only the user knows which password they hold.

use std::io::Write;
use std::path::{Path, PathBuf};

use dataprotection::{Keybag, Passkey};
use sha2::{Digest, Sha256};

use crate::layout::MANIFEST_PLIST;
use crate::plists::MAX_PLIST_BYTES;
use crate::safe_fs::read_regular;
use crate::{Backup, Catalog, Credentials, Error, RecordKind, Result, Secret};

/// The copy of the previous `Manifest.plist` kept while the new one is checked.
pub const MANIFEST_PLIST_BAK: &str = "Manifest.plist.bak";

/// The points of the sequence after which [`Hooks::after_step`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// `Manifest.plist.bak` holds the old `Manifest.plist` (durably).
    BackedUp,
    /// The new `Manifest.plist` is in place (durably); the `.bak` is still there.
    Written,
    /// The new `Manifest.plist` was read back from disk and checked.
    Verified,
    /// `Manifest.plist.bak` is gone: the change is complete.
    Cleaned,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 4] = [Step::BackedUp, Step::Written, Step::Verified, Step::Cleaned];
}

/// Test hooks. An error returned by `after_step` is returned at once, with no
/// clean-up, exactly as if the process had died after that step.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Runs after each [`Step`].
    pub after_step: Option<&'a dyn Fn(Step) -> Result<()>>,
}

/// What a completed change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Class keys re-wrapped under the new password.
    pub rewrapped: usize,
    /// Of those, the ones also sealed to the original device (`WRAP=3`), whose
    /// device layer was carried over untouched.
    pub device_bound: usize,
    /// `ITER` (PBKDF2-SHA1 rounds), unchanged.
    pub iter: Option<u32>,
    /// `DPIC` (PBKDF2-SHA256 rounds), unchanged; `None` for the legacy single KDF.
    pub dpic: Option<u32>,
    /// `Manifest.db` rows checked after the change.
    pub records: usize,
    /// The file decrypted before and after, as `domain/relativePath`.
    pub sample: Option<String>,
    /// True when an identical `Manifest.plist.bak` from an interrupted run was replaced.
    pub replaced_leftover: bool,
}

/// A file decrypted before the change, to compare after it.
struct Sample {
    file_id: String,
    display: String,
    sha256: Vec<u8>,
}

/// A prepared password change: everything computed (including the slow KDF),
/// nothing written yet. [`PasswordChange::commit`] writes it.
pub struct PasswordChange {
    root: PathBuf,
    old_plist: Vec<u8>,
    new_plist: Vec<u8>,
    old_keybag: Keybag,
    new_keybag: Keybag,
    old_passkey: Passkey,
    new_passkey: Passkey,
    records: usize,
    sample: Option<Sample>,
    replaced_leftover: bool,
}

impl std::fmt::Debug for PasswordChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordChange")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn failure(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
    Error::Io {
        path: path.into(),
        source: std::io::Error::other(message.into()),
    }
}

/// Checks for a `Manifest.plist.bak` left by an interrupted change.
///
/// Returns `Ok(false)` when there is none, `Ok(true)` when there is one
/// byte-identical to `Manifest.plist` (harmless: it will be replaced), and an
/// error saying how to recover otherwise.
pub fn check_leftover(dir: &Path) -> Result<bool> {
    let bak = dir.join(MANIFEST_PLIST_BAK);
    let meta = match std::fs::symlink_metadata(&bak) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(&bak)(e)),
    };
    if !meta.is_file() {
        return Err(failure(
            &bak,
            "exists and is not a regular file; move it away before changing the password",
        ));
    }
    let plist = dir.join(MANIFEST_PLIST);
    let current = read_regular(&plist, MAX_PLIST_BYTES)?;
    let previous = read_regular(&bak, MAX_PLIST_BYTES)?;
    if current == previous {
        return Ok(true);
    }
    Err(failure(
        &bak,
        "left by an interrupted password change, and it differs from Manifest.plist. \
         Manifest.plist is complete (it is only ever replaced whole) and opens with the \
         password that change set; Manifest.plist.bak holds the keybag of the password \
         before it. Check with `keybag verify` and the new password: if it works, delete \
         Manifest.plist.bak; if only the old password works, rename Manifest.plist.bak to \
         Manifest.plist. Then change the password again",
    ))
}

/// The tag of the temp files `.Manifest.plist.keybag-tmp-PID-…` (see [`crate::staging`]).
const TMP_TAG: &str = "tmp";

/// Removes the temp files of `Manifest.plist` and `Manifest.plist.bak` left in `dir` by a
/// password change that was killed ([`crate::staging::clean_stale`]: only those whose
/// process is gone).
fn remove_stale_temp_files(dir: &Path) -> Result<()> {
    for name in [MANIFEST_PLIST, MANIFEST_PLIST_BAK] {
        crate::staging::clean_stale(&dir.join(name))?;
    }
    Ok(())
}

/// Writes `name` in `dir` through a temp file, fsync and rename, then fsyncs `dir`.
fn write_durably(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    perms: Option<&std::fs::Permissions>,
) -> Result<()> {
    let target = dir.join(name);
    let mut tmp = tempfile::Builder::new()
        .prefix(&crate::staging::sibling_prefix(&target, TMP_TAG))
        .tempfile_in(dir)
        .map_err(Error::io(dir))?;
    tmp.write_all(bytes).map_err(Error::io(&target))?;
    if let Some(p) = perms {
        tmp.as_file()
            .set_permissions(p.clone())
            .map_err(Error::io(&target))?;
    }
    tmp.as_file().sync_all().map_err(Error::io(&target))?;
    tmp.persist(&target)
        .map_err(|e| Error::io(&target)(e.error))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(Error::io(dir))
}

fn sha256_of(backup: &Backup, rec: &crate::Record) -> Option<Vec<u8>> {
    let mut h = Sha256::new();
    let report = backup.copy_file(rec, &mut h).ok()?;
    report.padding_ok.then(|| h.finalize().to_vec())
}

/// The smallest regular file (by blob size) whose class key is available and
/// that decrypts with valid padding; `None` when there is none.
fn choose_sample(backup: &Backup, catalog: &Catalog) -> Option<Sample> {
    let keys = backup.keys()?;
    let mut candidates: Vec<(u64, &crate::Record)> = catalog
        .records
        .iter()
        .filter(|r| r.kind() == RecordKind::File && r.problem.is_none())
        .filter(|r| keys.key(r.protection_class()).is_ok())
        .filter_map(|r| {
            let meta = std::fs::symlink_metadata(backup.blob_path(r).ok()?).ok()?;
            (meta.is_file() && meta.len() >= 16).then_some((meta.len(), r))
        })
        .collect();
    candidates.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.file_id.cmp(&b.1.file_id)));
    candidates.iter().take(8).find_map(|(_, rec)| {
        Some(Sample {
            file_id: rec.file_id.clone(),
            display: rec.display_path(),
            sha256: sha256_of(backup, rec)?,
        })
    })
}

impl PasswordChange {
    /// Opens `dir`, unlocks it with `old` (its device key is not needed and is
    /// ignored), derives the new passkey from `new_password` with fresh salts
    /// (the slow step; `old.limits` caps the kept counts) and builds the new
    /// `Manifest.plist`. Nothing is written.
    pub fn prepare(dir: &Path, old: &Credentials, new_password: &[u8]) -> Result<Self> {
        let root = dir.to_path_buf();
        if new_password.is_empty() {
            return Err(failure(&root, "the new password is empty"));
        }
        let plist_path = root.join(MANIFEST_PLIST);
        let mut backup = Backup::open(&root)?;
        if !backup.is_encrypted() {
            return Err(Error::Unsupported {
                path: root,
                reason: "the backup is not encrypted: there is no password to change \
                         (an unencrypted backup cannot be given one in place)"
                    .into(),
            });
        }
        match std::fs::symlink_metadata(&plist_path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(failure(
                    &plist_path,
                    "is not a regular file (a symbolic link?); refusing to replace it",
                ))
            }
            Err(e) => return Err(Error::io(&plist_path)(e)),
        }
        remove_stale_temp_files(&root)?;
        let replaced_leftover = check_leftover(&root)?;
        let old_plist = read_regular(&plist_path, MAX_PLIST_BYTES)?;
        let old_passkey = match &old.secret {
            Secret::Password(pw) => backup.derive_passkey(pw, &old.limits)?,
            Secret::Passkey(pk) => pk.clone(),
        };
        backup.unlock_with_passkey(&old_passkey, None)?;
        // Manifest.db must load now, or the check after the change could not pass.
        let catalog = backup.catalog()?;
        let sample = choose_sample(&backup, &catalog);
        let manifest = backup.manifest().expect("encrypted backups have one");
        let old_keybag = backup.keybag().expect("encrypted backups have one").clone();
        let crypto = |source| Error::Crypto {
            path: plist_path.clone(),
            source,
        };
        let (new_keybag, new_passkey) = old_keybag
            .rewrap(&old_passkey, new_password, &old.limits)
            .map_err(crypto)?;
        let mut dict = manifest.raw.clone();
        dict.insert(
            "BackupKeyBag".into(),
            plist::Value::Data(new_keybag.to_bytes()),
        );
        let mut new_plist = Vec::new();
        plist::Value::Dictionary(dict)
            .to_writer_binary(&mut new_plist)
            .map_err(|e| Error::malformed(&plist_path, format!("encoding: {e}")))?;
        // The file must not have changed while we read it (a backup in progress?).
        let again = read_regular(&plist_path, MAX_PLIST_BYTES)?;
        if again != old_plist {
            return Err(failure(
                &plist_path,
                "changed while it was being read (is a backup running?); nothing was written",
            ));
        }
        Ok(Self {
            root,
            old_plist,
            new_plist,
            old_keybag,
            new_keybag,
            old_passkey,
            new_passkey,
            records: catalog.records.len(),
            sample,
            replaced_leftover,
        })
    }

    /// The new passkey (what `--derived-key` takes). Secret: do not print it unasked.
    pub fn new_passkey(&self) -> &Passkey {
        &self.new_passkey
    }

    /// The new keybag.
    pub fn new_keybag(&self) -> &Keybag {
        &self.new_keybag
    }

    /// Writes the change with the crash-safe sequence described in the module docs.
    pub fn commit(self, hooks: &Hooks) -> Result<Report> {
        let hook = |step| hooks.after_step.map_or(Ok(()), |f| f(step));
        let dir = &self.root;
        let plist_path = dir.join(MANIFEST_PLIST);
        let bak_path = dir.join(MANIFEST_PLIST_BAK);
        check_leftover(dir)?;
        let current = read_regular(&plist_path, MAX_PLIST_BYTES)?;
        if current != self.old_plist {
            return Err(failure(
                &plist_path,
                "changed since the password change was prepared; nothing was written",
            ));
        }
        let perms = std::fs::metadata(&plist_path)
            .map_err(Error::io(&plist_path))?
            .permissions();

        write_durably(dir, MANIFEST_PLIST_BAK, &self.old_plist, Some(&perms))?;
        hook(Step::BackedUp)?;

        write_durably(dir, MANIFEST_PLIST, &self.new_plist, Some(&perms))?;
        hook(Step::Written)?;

        if let Err(e) = self.verify() {
            let restored = std::fs::rename(&bak_path, &plist_path)
                .and_then(|()| std::fs::File::open(dir).and_then(|f| f.sync_all()));
            return Err(match restored {
                Ok(()) => failure(
                    &plist_path,
                    format!(
                        "the new keybag did not check out after writing ({e}); the original \
                         Manifest.plist was put back and the password is unchanged"
                    ),
                ),
                Err(r) => failure(
                    &plist_path,
                    format!(
                        "the new keybag did not check out after writing ({e}), and putting the \
                         original back failed ({r}): rename Manifest.plist.bak to \
                         Manifest.plist by hand to restore the old password"
                    ),
                ),
            });
        }
        hook(Step::Verified)?;

        std::fs::remove_file(&bak_path).map_err(Error::io(&bak_path))?;
        sync_dir(dir)?;
        hook(Step::Cleaned)?;

        let rewrapped = self
            .new_keybag
            .classes
            .iter()
            .filter(|c| c.wrap & dataprotection::keybag::WRAP_PASSCODE != 0);
        Ok(Report {
            rewrapped: rewrapped.clone().count(),
            device_bound: rewrapped
                .filter(|c| c.wrap & dataprotection::keybag::WRAP_DEVICE != 0)
                .count(),
            iter: self.new_keybag.iter,
            dpic: self.new_keybag.dpic,
            records: self.records,
            sample: self.sample.as_ref().map(|s| s.display.clone()),
            replaced_leftover: self.replaced_leftover,
        })
    }

    /// Re-reads the backup from disk and checks it against what was meant to be written.
    fn verify(&self) -> Result<()> {
        let plist_path = self.root.join(MANIFEST_PLIST);
        let bad = |what: &str| failure(&plist_path, what.to_string());
        let on_disk = read_regular(&plist_path, MAX_PLIST_BYTES)?;
        if on_disk != self.new_plist {
            return Err(bad("does not read back as written"));
        }
        let mut backup = Backup::open(&self.root)?;
        let keybag = backup
            .keybag()
            .ok_or_else(|| bad("has no BackupKeyBag after writing"))?;
        if keybag != &self.new_keybag {
            return Err(bad("the keybag read back differs from the one written"));
        }
        let crypto = |source| Error::Crypto {
            path: plist_path.clone(),
            source,
        };
        let before = self
            .old_keybag
            .unwrap_password_layer(&self.old_passkey)
            .map_err(crypto)?;
        let after = keybag
            .unwrap_password_layer(&self.new_passkey)
            .map_err(crypto)?;
        if before != after {
            return Err(bad(
                "a class key unwraps differently under the new password",
            ));
        }
        backup.unlock_with_passkey(&self.new_passkey, None)?;
        let catalog = backup.catalog()?;
        if catalog.records.len() != self.records {
            return Err(bad("Manifest.db lists a different number of records"));
        }
        if let Some(sample) = &self.sample {
            let same = catalog
                .records
                .iter()
                .find(|r| r.file_id == sample.file_id)
                .and_then(|r| sha256_of(&backup, r));
            if same.as_deref() != Some(&sample.sha256[..]) {
                return Err(failure(
                    &plist_path,
                    format!("{} no longer decrypts to the same bytes", sample.display),
                ));
            }
        }
        Ok(())
    }
}

/// Changes the password of the encrypted backup in `dir`:
/// [`PasswordChange::prepare`], then [`PasswordChange::commit`].
pub fn change_password(
    dir: &Path,
    old: &Credentials,
    new_password: &[u8],
    hooks: &Hooks,
) -> Result<Report> {
    PasswordChange::prepare(dir, old, new_password)?.commit(hooks)
}
