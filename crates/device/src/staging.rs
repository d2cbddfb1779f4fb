//! The folders a restore or an import works in beside a device folder `NAME`, and what a
//! killed one leaves there.
//!
//! A restore builds the new device in `.NAME.keybag-restore-PID-N` and switches it in with one
//! atomic exchange where the system has it (Linux `renameat2(RENAME_EXCHANGE)`, macOS
//! `renamex_np(RENAME_SWAP)`): at every instant `NAME` is the old device or the restored one.
//! Elsewhere (or on a file system without the exchange) two renames set the old device aside
//! as `.NAME.keybag-before-restore-PID-N` first; a crash between them leaves no `NAME`, and the
//! next [`clean`] puts the old device back. An import builds in `.NAME.keybag-import-PID-N`
//! and renames it into place (`NAME` does not exist).
//!
//! [`clean`] runs when a device folder is opened and before an import: it removes every such
//! sibling whose process is gone. The naming, the liveness test and the switch are
//! [`mobilebackup::staging`]'s, shared with the backup writers.

use std::path::Path;

use crate::backup::{OpError, OpResult};
use crate::{Error, Result};

/// Cleans up beside the device folder `dir` after killed restores and imports: puts a
/// set-aside device back when `dir` is missing, removes stale staging folders.
pub(crate) fn clean(dir: &Path) -> Result<()> {
    match mobilebackup::staging::clean_stale(dir) {
        Ok(_) => Ok(()),
        Err(mobilebackup::Error::Io { path, source }) => Err(Error::Io { path, source }),
        Err(e) => Err(Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Replaces the device folder `dir` with the complete restored copy `staging`, then removes
/// the old device (see the module docs). On error `dir` is the old device.
pub(crate) fn switch(staging: &Path, dir: &Path) -> OpResult<()> {
    mobilebackup::staging::replace_dir(staging, dir, "before-restore").map_err(|e| match e {
        mobilebackup::Error::Io { path, source } => OpError::Io { path, source },
        e => OpError::Backup(e),
    })?;
    Ok(())
}
