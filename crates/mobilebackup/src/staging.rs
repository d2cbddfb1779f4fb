//! A staging folder beside the destination, renamed into place when complete.
//!
//! A crash or error never leaves anything at the destination that looks like a
//! finished backup: until [`Staging::commit`], all work sits in a hidden
//! `.<name>.keybag-partial-<random>` folder next to it, removed on drop.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A staging folder for `dest`.
#[derive(Debug)]
pub struct Staging {
    dir: Option<Place>,
    dest: PathBuf,
}

/// Where the staging folder is.
#[derive(Debug)]
enum Place {
    /// Beside a new backup folder (renamed into place by `commit`).
    Fresh(tempfile::TempDir),
    /// [`crate::update::UPDATE_DIR`] inside an existing backup (committed by
    /// `commit_update`); removed on drop unless committed.
    Update(PathBuf),
}

impl Place {
    fn path(&self) -> &Path {
        match self {
            Place::Fresh(t) => t.path(),
            Place::Update(p) => p,
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(Place::Update(p)) = self.dir.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

impl Staging {
    /// Creates the staging folder. `dest` must not exist yet and its parent must.
    pub fn new(dest: &Path) -> Result<Self> {
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(already_exists(dest));
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest
            .file_name()
            .ok_or_else(|| Error::malformed(dest, "has no folder name"))?
            .to_string_lossy()
            .into_owned();
        // Missing parents are not created: a mistyped path should fail, not grow a tree.
        if !parent.is_dir() {
            return Err(Error::Io {
                path: parent,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the output folder's parent does not exist or is not a folder",
                ),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!(".{name}.keybag-partial-"))
            .tempdir_in(&parent)
            .map_err(Error::io(&parent))?;
        Ok(Self {
            dir: Some(Place::Fresh(dir)),
            dest: dest.to_path_buf(),
        })
    }

    /// Creates the update folder inside the existing backup `root` (see [`crate::update`]).
    /// Fails when one is there already: run [`crate::update::recover`] first.
    pub fn update(root: &Path) -> Result<Self> {
        let dir = root.join(crate::update::UPDATE_DIR);
        std::fs::create_dir(&dir).map_err(Error::io(&dir))?;
        Ok(Self {
            dir: Some(Place::Update(dir)),
            dest: root.to_path_buf(),
        })
    }

    /// The staging folder.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until commit").path()
    }

    /// The final destination.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Writes `name` inside the staging folder through a temp file and a rename.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let target = self.path().join(name);
        let mut tmp =
            tempfile::NamedTempFile::new_in(self.path()).map_err(Error::io(self.path()))?;
        std::io::Write::write_all(&mut tmp, bytes).map_err(Error::io(&target))?;
        tmp.persist(&target)
            .map_err(|e| Error::io(&target)(e.error))?;
        Ok(())
    }

    /// Leaves the staging folder in place and hands it to the caller (for tests).
    pub fn keep(mut self) -> PathBuf {
        match self.dir.take().expect("present until commit") {
            Place::Fresh(t) => t.keep(),
            Place::Update(p) => p,
        }
    }

    /// Commits an update (see [`crate::update`]): the commit marker naming the blobs to
    /// drop, then every staged file moved into place. Returns the backup folder.
    pub fn commit_update(mut self, dropped: &[String]) -> Result<PathBuf> {
        let Some(Place::Update(dir)) = self.dir.take() else {
            return Err(Error::malformed(&self.dest, "not an update staging folder"));
        };
        if let Err(e) = crate::update::commit(&self.dest, dropped) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        // Decided: from here a failure is finished by the next `update::recover`.
        crate::update::apply(&self.dest)?;
        Ok(self.dest.clone())
    }

    /// Moves the staging folder to the destination (atomic on one file system).
    /// Fails, removing the staging folder, if the destination appeared meanwhile.
    pub fn commit(mut self) -> Result<PathBuf> {
        let dir = match self.dir.take().expect("present until commit") {
            Place::Fresh(t) => t,
            Place::Update(p) => {
                self.dir = Some(Place::Update(p));
                return Err(Error::malformed(
                    &self.dest,
                    "an update commits with commit_update",
                ));
            }
        };
        if std::fs::symlink_metadata(&self.dest).is_ok() {
            return Err(already_exists(&self.dest));
        }
        let path = dir.keep();
        if let Err(e) = std::fs::rename(&path, &self.dest) {
            let _ = std::fs::remove_dir_all(&path);
            return Err(Error::io(&self.dest)(e));
        }
        Ok(self.dest.clone())
    }
}

fn already_exists(path: &Path) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "already exists; refusing to write a backup over it",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_and_drop() {
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("out");
        let s = Staging::new(&dest).unwrap();
        s.write("a", b"1").unwrap();
        assert!(!dest.exists());
        assert!(s
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".out.keybag-partial-"));
        s.commit().unwrap();
        assert_eq!(std::fs::read(dest.join("a")).unwrap(), b"1");
        assert!(Staging::new(&dest).is_err(), "existing destination refused");
        assert!(
            Staging::new(&parent.path().join("no/such/parent")).is_err(),
            "parents are not created"
        );
        let dest2 = parent.path().join("out2");
        {
            let s = Staging::new(&dest2).unwrap();
            s.write("a", b"1").unwrap();
        }
        assert!(!dest2.exists());
        assert_eq!(
            std::fs::read_dir(parent.path()).unwrap().count(),
            1,
            "staging removed on drop"
        );
    }
}
