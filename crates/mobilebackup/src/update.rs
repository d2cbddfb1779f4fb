//! Updating a backup folder in place (incremental backups), crash-safely.
//!
//! An incremental backup of a mostly unchanged device should not touch the blobs it keeps:
//! re-linking 10,000 unchanged blobs into a new folder and unlinking the old one cost more
//! than everything else an unchanged re-backup does. So
//! [`BackupWriter::update`](crate::writer::BackupWriter::update) writes only what changed,
//! into [`UPDATE_DIR`] inside the backup, and commits it like a journal:
//!
//! 1. New and changed blobs (`xx/<fileID>`) and the new `Manifest.db`, `Manifest.plist`,
//!    `Info.plist` and `Status.plist` are written into `OUT/.keybag-update/`. A crash here
//!    leaves the old backup untouched; the half-written folder is removed by the next
//!    [`recover`] (and readers never look at it).
//! 2. `COMMIT` is written there (the fileIDs whose blobs the new backup no longer has, one per
//!    line) and synced: from now on the update is decided.
//! 3. [`apply`](recover): every staged blob is renamed over its place, then the four
//!    top-level files (`Status.plist` last), then the dropped blobs are removed and the
//!    update folder deleted. Every step can be repeated, so a crash anywhere in step 3 is
//!    finished by the next [`recover`], which `keybag device backup` runs first.
//!
//! This protects against interruption (a killed process, an error, a full disk). Against
//! power loss only the order is guaranteed: the marker is synced before any old file is
//! replaced, but the staged files themselves are not synced one by one (as a fresh backup's
//! blobs are not), so their contents after a power failure are up to the file system.
//!
//! While a committed update is unfinished the folder mixes old and new files, so
//! [`Backup::open`](crate::Backup::open) refuses it with a clear error instead of reading
//! it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::layout;
use crate::{Error, Result};

/// The update folder inside a backup.
pub const UPDATE_DIR: &str = ".keybag-update";
/// The commit marker inside [`UPDATE_DIR`].
pub const COMMIT: &str = "COMMIT";
/// Top-level files, in the order they are moved into place (`Status.plist` last, as a
/// finished backup writes it last).
pub const TOP_FILES: [&str; 4] = [
    layout::MANIFEST_DB,
    layout::MANIFEST_PLIST,
    layout::INFO_PLIST,
    layout::STATUS_PLIST,
];

/// What [`recover`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No update folder: nothing to do.
    Clean,
    /// An update that had not committed was discarded (the old backup stands).
    Discarded,
    /// A committed update was finished.
    Finished,
}

/// True when `root` holds a committed update that is not finished yet.
pub fn pending(root: &Path) -> bool {
    root.join(UPDATE_DIR).join(COMMIT).is_file()
}

/// Finishes a committed update of the backup at `root` or discards an uncommitted one.
pub fn recover(root: &Path) -> Result<Recovery> {
    let dir = root.join(UPDATE_DIR);
    match fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recovery::Clean),
        Err(e) => return Err(Error::io(&dir)(e)),
        Ok(m) if !m.is_dir() => {
            return Err(Error::malformed(
                &dir,
                "is not a folder (not made by keybag?)",
            ))
        }
        Ok(_) => {}
    }
    if !dir.join(COMMIT).is_file() {
        fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
        return Ok(Recovery::Discarded);
    }
    apply(root)?;
    Ok(Recovery::Finished)
}

/// A backup of an unchanged device: the backup at `root` is kept as it is and only its dates
/// move to `date` (`Manifest.plist` `Date`, `Info.plist` `Last Backup Date`, `Status.plist`
/// `Date` and a fresh snapshot `UUID`), committed through the same journal as any update.
/// `Manifest.db` and every blob stay untouched. Fails when an update folder is there
/// already (run [`recover`] first).
pub fn refresh(root: &Path, date: std::time::SystemTime) -> Result<()> {
    use plist::Value;
    // Whole seconds, as the writer (Python's plistlib rejects fractional XML dates).
    let secs = date
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let date = Value::Date((std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).into());
    // The same staging folder, journal and cleanup on failure as any update.
    let staging = crate::staging::Staging::update(root)?;
    for (name, binary) in [
        (layout::MANIFEST_PLIST, true),
        (layout::INFO_PLIST, false),
        (layout::STATUS_PLIST, true),
    ] {
        let mut d = crate::plists::read_dict(&root.join(name))?;
        match name {
            layout::MANIFEST_PLIST => d.insert("Date".into(), date.clone()),
            layout::INFO_PLIST => d.insert("Last Backup Date".into(), date.clone()),
            _ => {
                d.insert(
                    "UUID".into(),
                    uuid::Uuid::new_v4().to_string().to_uppercase().into(),
                );
                d.insert("Date".into(), date.clone())
            }
        };
        let bytes = crate::writer::plist_bytes(&d, binary)
            .map_err(|e| Error::malformed(root.join(name), format!("cannot write: {e}")))?;
        staging.write(name, &bytes)?;
    }
    staging.commit_update(&[])?;
    Ok(())
}

/// Step 2: writes and syncs the commit marker naming the blobs to drop.
pub(crate) fn commit(root: &Path, dropped: &[String]) -> Result<()> {
    let dir = root.join(UPDATE_DIR);
    let tmp = dir.join(".COMMIT.tmp");
    let path = dir.join(COMMIT);
    let mut f = fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    let mut text = String::with_capacity(dropped.len() * 41);
    for id in dropped {
        text.push_str(id);
        text.push('\n');
    }
    f.write_all(text.as_bytes()).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::io(&tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(Error::io(&path))?;
    // The rename must be durable before any old file is replaced.
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(&dir))?;
    Ok(())
}

/// Step 3 (repeatable): moves the staged files into place, drops the listed blobs,
/// removes the update folder.
pub(crate) fn apply(root: &Path) -> Result<()> {
    let dir = root.join(UPDATE_DIR);
    let marker = dir.join(COMMIT);
    let listed = fs::read_to_string(&marker).map_err(Error::io(&marker))?;
    let mut dropped = Vec::new();
    for line in listed.lines().filter(|l| !l.is_empty()) {
        if !layout::is_valid_file_id(line) {
            return Err(Error::malformed(&marker, format!("bad fileID {line:?}")));
        }
        dropped.push(line.to_string());
    }
    // Blobs first: the old Manifest.db still describes the old blobs it keeps.
    for entry in fs::read_dir(&dir).map_err(Error::io(&dir))? {
        let entry = entry.map_err(Error::io(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() != 2 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let sub = entry.path();
        let dest_dir = root.join(&name);
        if !dest_dir.is_dir() {
            fs::create_dir(&dest_dir).map_err(Error::io(&dest_dir))?;
        }
        for blob in fs::read_dir(&sub).map_err(Error::io(&sub))? {
            let blob = blob.map_err(Error::io(&sub))?;
            let id = blob.file_name().to_string_lossy().into_owned();
            if !layout::is_valid_file_id(&id) || !id.starts_with(&name) {
                return Err(Error::malformed(
                    blob.path(),
                    "unexpected file in an update",
                ));
            }
            let dest = dest_dir.join(&id);
            fs::rename(blob.path(), &dest).map_err(Error::io(&dest))?;
        }
    }
    for name in TOP_FILES {
        let src = dir.join(name);
        if src.is_file() {
            let dest = root.join(name);
            fs::rename(&src, &dest).map_err(Error::io(&dest))?;
        }
    }
    for id in &dropped {
        let p: PathBuf = layout::blob_path(root, id).expect("checked above");
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&p)(e)),
            _ => {}
        }
    }
    fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
    Ok(())
}
