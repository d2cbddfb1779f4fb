//! A staging folder beside the destination, renamed into place when complete.
//!
//! A crash or error never leaves anything at the destination that looks like a
//! finished backup: until [`Staging::commit`], all work sits in a hidden
//! `.<name>.keybag-partial-<pid>-<random>` folder next to it, removed on drop.
//!
//! # Hidden siblings, and what a killed process leaves
//!
//! Every folder or temp file keybag works in beside a destination `NAME` is named
//! `.NAME.keybag-TAG-PID-…` ([`sibling`], [`sibling_prefix`]), with the id of the process
//! that made it. A process killed with SIGKILL (or a power cut) cannot remove its own;
//! [`clean_stale`] removes those whose process is gone, and is run by every writer before it
//! works on `NAME` (a new backup, `device backup`, `passwd`, and the device's open, restore
//! and import). When `NAME` itself is missing and a set-aside copy of its previous content
//! ([`ASIDE_TAGS`]) is found, that copy is put back first: a folder swap interrupted between
//! its two renames (the fallback of [`replace_dir`] where the atomic exchange is not
//! available) then leaves the old folder, as if the swap had not begun.
//!
//! A process is "gone" when `kill(pid, 0)` fails with `ESRCH` (Unix; elsewhere nothing is
//! ever cleaned). This assumes the folder is used from one machine: a staging folder made on
//! another host of a network file system would look stale here.

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
    /// Stale siblings of `dest` left by killed runs are cleaned up first ([`clean_stale`]).
    pub fn new(dest: &Path) -> Result<Self> {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if dest.file_name().is_none() {
            return Err(Error::malformed(dest, "has no folder name"));
        }
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
        // Whatever a killed earlier run left beside `dest` goes first (this may put a
        // set-aside backup back at `dest`).
        clean_stale(dest)?;
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(already_exists(dest));
        }
        let dir = tempfile::Builder::new()
            .prefix(&sibling_prefix(dest, TAG_PARTIAL))
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

    /// Makes everything written into the staging folder durable before it is renamed into
    /// place: one `syncfs` of its file system (Linux) instead of an fsync per file, which
    /// costs a journal commit each (10,000 files: seconds); elsewhere an fsync of every
    /// file under it.
    pub fn sync(&self) -> Result<()> {
        sync_tree(self.path())
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

#[cfg(any(target_os = "linux", target_os = "android"))]
fn sync_tree(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir).map_err(Error::io(dir))?;
    rustix::fs::syncfs(&f).map_err(|e| Error::io(dir)(e.into()))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn sync_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let e = e.map_err(Error::io(dir))?;
        let t = e.file_type().map_err(Error::io(e.path()))?;
        if t.is_dir() {
            sync_tree(&e.path())?;
        } else if t.is_file() {
            std::fs::File::open(e.path())
                .and_then(|f| f.sync_all())
                .map_err(Error::io(e.path()))?;
        }
    }
    Ok(())
}

/// Tag of [`Staging::new`]'s folder: a new backup being written.
pub const TAG_PARTIAL: &str = "partial";
/// Tags of scratch siblings: their content is thrown away once their process is gone
/// (`partial`: a new backup; `new`: a replacement backup; `restore`: a device being
/// restored; `import`: a device being imported; `tmp`: a temp file).
pub const SCRATCH_TAGS: [&str; 5] = [TAG_PARTIAL, "new", "restore", "import", "tmp"];
/// Tags of set-aside siblings: the previous content of `NAME`, put back when `NAME` is
/// missing once their process is gone (`old`: a backup; `before-restore`: a device).
pub const ASIDE_TAGS: [&str; 2] = ["old", "before-restore"];

/// The file name of `dest`, for its siblings' names.
fn base_name(dest: &Path) -> String {
    dest.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into())
}

/// `.NAME.keybag-TAG-PID-`: the start of a sibling's name (for temp-file builders, which
/// add a random suffix).
pub fn sibling_prefix(dest: &Path, tag: &str) -> String {
    format!(".{}.keybag-{tag}-{}-", base_name(dest), std::process::id())
}

/// A sibling `.NAME.keybag-TAG-PID-N` of `dest` that does not exist yet.
pub fn sibling(dest: &Path, tag: &str) -> PathBuf {
    let prefix = sibling_prefix(dest, tag);
    (0u32..)
        .map(|n| dest.with_file_name(format!("{prefix}{n}")))
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .expect("a free name")
}

/// The tag and process id of `file_name` when it is a sibling of `name` made by keybag, or a
/// sibling of such a sibling (`..NAME.keybag-new-PID-0.keybag-partial-PID-…`: the staging
/// folder of a replacement backup, which is built as `.NAME.keybag-new-PID-0`), which
/// belongs to the same process.
fn parse_sibling(name: &str, file_name: &str) -> Option<(&'static str, u32)> {
    let direct = format!(".{name}.keybag-");
    let rest = file_name
        .strip_prefix(&direct)
        .or_else(|| file_name.strip_prefix('.')?.strip_prefix(&direct))?;
    // The longest matching tag ("before-restore" before "restore" cannot clash: a tag is
    // always followed by '-' and digits, and "before-restore" does not start with one).
    let (tag, rest) = SCRATCH_TAGS
        .iter()
        .chain(ASIDE_TAGS.iter())
        .find_map(|t| Some((*t, rest.strip_prefix(t)?.strip_prefix('-')?)))?;
    let digits = rest.split('-').next().unwrap_or("");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((tag, digits.parse().ok()?))
}

/// True when no process `pid` exists any more (`kill(pid, 0)` fails with `ESRCH`). Our own
/// process, one of another user (`EPERM`) and any doubt count as alive.
pub fn process_gone(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    #[cfg(unix)]
    {
        let Some(pid) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return false;
        };
        matches!(
            rustix::process::test_kill_process(pid),
            Err(e) if e == rustix::io::Errno::SRCH
        )
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// What [`clean_stale`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// A set-aside copy put back at the destination (which was missing).
    pub put_back: Option<PathBuf>,
    /// Siblings removed.
    pub removed: Vec<PathBuf>,
}

/// Cleans up beside `dest` after keybag processes that were killed (see the module docs):
/// puts a set-aside copy back when `dest` is missing, then removes every stale sibling.
/// Siblings of live processes are left alone. A sibling that cannot be removed stays (the
/// next run tries again); failing to put a copy back is an error.
pub fn clean_stale(dest: &Path) -> Result<Cleaned> {
    let mut done = Cleaned::default();
    let name = base_name(dest);
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // An unreadable parent holds nothing we could clean.
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Ok(done);
    };
    let mut stale: Vec<(&'static str, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file_name = e.file_name().to_string_lossy().into_owned();
            let (tag, pid) = parse_sibling(&name, &file_name)?;
            process_gone(pid).then(|| (tag, e.path()))
        })
        .collect();
    stale.sort();
    if std::fs::symlink_metadata(dest).is_err() {
        if let Some((_, aside)) = stale.iter().find(|(t, _)| ASIDE_TAGS.contains(t)) {
            std::fs::rename(aside, dest).map_err(Error::io(dest))?;
            done.put_back = Some(aside.clone());
        }
    }
    for (_, path) in stale {
        if done.put_back.as_ref() == Some(&path) {
            continue;
        }
        let gone = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) => Err(e),
        };
        if gone.is_ok() {
            done.removed.push(path);
        }
    }
    Ok(done)
}

/// Atomically exchanges the two folders `a` and `b` (Linux `renameat2(RENAME_EXCHANGE)`,
/// macOS `renamex_np(RENAME_SWAP)`). `Ok(false)`: not supported here (system or file
/// system); nothing was changed.
#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use rustix::io::Errno;
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(true),
        Err(e) if [Errno::INVAL, Errno::NOSYS, Errno::NOTSUP, Errno::OPNOTSUPP].contains(&e) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// How [`replace_dir_with`] switches the folders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    /// One atomic exchange: at every instant `dest` is the old folder or the new one.
    Exchange,
    /// Two renames (`dest` → aside, `new` → `dest`): a crash between them leaves no `dest`
    /// but the aside copy, which the next [`clean_stale`] puts back.
    TwoRenames,
}

/// Replaces the folder `dest` with the complete folder `new` beside it, then removes the old
/// one: [`Switch::Exchange`] where the system offers it, else [`Switch::TwoRenames`] with
/// the old folder set aside as `.NAME.keybag-<aside_tag>-PID-N` (one of [`ASIDE_TAGS`]).
/// On error `dest` is the old folder. The old folder's removal is best effort: whatever
/// stays is a stale sibling for the next [`clean_stale`].
pub fn replace_dir(new: &Path, dest: &Path, aside_tag: &str) -> Result<Switch> {
    replace_dir_with(new, dest, aside_tag, true)
}

/// [`replace_dir`], with the exchange allowed or not (`false` tests the fallback).
pub fn replace_dir_with(
    new: &Path,
    dest: &Path,
    aside_tag: &str,
    allow_exchange: bool,
) -> Result<Switch> {
    debug_assert!(ASIDE_TAGS.contains(&aside_tag));
    if allow_exchange && exchange(new, dest).map_err(Error::io(dest))? {
        // `new` now names the old folder.
        let _ = std::fs::remove_dir_all(new);
        return Ok(Switch::Exchange);
    }
    let aside = sibling(dest, aside_tag);
    std::fs::rename(dest, &aside).map_err(Error::io(dest))?;
    if let Err(e) = std::fs::rename(new, dest) {
        let _ = std::fs::rename(&aside, dest);
        return Err(Error::io(dest)(e));
    }
    let _ = std::fs::remove_dir_all(&aside);
    Ok(Switch::TwoRenames)
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

    /// The id of a process that has exited (and been reaped).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(process_gone(pid));
        pid
    }

    fn mkdir_with(path: &Path, file: &str) {
        std::fs::create_dir(path).unwrap();
        std::fs::write(path.join(file), file).unwrap();
    }

    #[test]
    fn sibling_names_parse_back() {
        let dest = Path::new("/x/out");
        let me = std::process::id();
        let s = sibling(dest, "before-restore");
        let n = s.file_name().unwrap().to_str().unwrap();
        assert_eq!(n, format!(".out.keybag-before-restore-{me}-0"));
        assert_eq!(parse_sibling("out", n), Some(("before-restore", me)));
        let p = format!("{}Ab3xYz", sibling_prefix(dest, TAG_PARTIAL));
        assert_eq!(parse_sibling("out", &p), Some(("partial", me)));
        // What the device backup named its folders before: no counter.
        assert_eq!(
            parse_sibling("out", ".out.keybag-old-42"),
            Some(("old", 42))
        );
        // The staging folder of a staging folder (a replacement backup's).
        let outer = sibling(dest, "new");
        let nested = format!(
            ".{}.keybag-partial-{me}-Ab3xYz",
            outer.file_name().unwrap().to_str().unwrap()
        );
        assert!(nested.starts_with("..out.keybag-new-"), "{nested}");
        assert_eq!(parse_sibling("out", &nested), Some(("new", me)));
        for other in [
            ".out.keybag-partial-",
            ".out.keybag-partial-x1",
            ".out.keybag-unknown-12-0",
            ".other.keybag-new-12-0",
            "out",
            ".out.keybag-new12",
        ] {
            assert_eq!(parse_sibling("out", other), None, "{other}");
        }
        assert!(!process_gone(me));
    }

    #[test]
    fn stale_siblings_go_and_live_ones_stay() {
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("out");
        mkdir_with(&dest, "current");
        let dead = dead_pid();
        let me = std::process::id();
        let stale = [
            format!(".out.keybag-partial-{dead}-Xy12ab"),
            format!(".out.keybag-new-{dead}-0"),
            format!(".out.keybag-old-{dead}-0"),
        ];
        for n in &stale {
            mkdir_with(&parent.path().join(n), "x");
        }
        std::fs::write(
            parent.path().join(format!(".out.keybag-tmp-{dead}-q")),
            b"t",
        )
        .unwrap();
        let live = format!(".out.keybag-partial-{me}-0");
        mkdir_with(&parent.path().join(&live), "x");
        let unrelated = format!(".other.keybag-partial-{dead}-0");
        mkdir_with(&parent.path().join(&unrelated), "x");

        let done = clean_stale(&dest).unwrap();
        assert_eq!(
            done.put_back, None,
            "out exists: the old copy is not put back"
        );
        assert_eq!(done.removed.len(), 4);
        let mut left: Vec<_> = std::fs::read_dir(parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![live, unrelated, "out".to_string()];
        want.sort();
        assert_eq!(left, want);
        assert!(dest.join("current").is_file());
    }

    #[test]
    fn a_set_aside_folder_comes_back_when_the_destination_is_missing() {
        // A two-rename swap killed between its renames: `out` is gone, the old one is aside.
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("out");
        let dead = dead_pid();
        mkdir_with(
            &parent.path().join(format!(".out.keybag-old-{dead}-0")),
            "old",
        );
        mkdir_with(
            &parent.path().join(format!(".out.keybag-new-{dead}-0")),
            "new",
        );
        let done = clean_stale(&dest).unwrap();
        assert!(done.put_back.is_some());
        assert!(dest.join("old").is_file(), "the old folder is back");
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
        // A set-aside copy of a live process is never touched.
        std::fs::remove_dir_all(&dest).unwrap();
        let mine = sibling(&dest, "old");
        mkdir_with(&mine, "old");
        assert_eq!(clean_stale(&dest).unwrap(), Cleaned::default());
        assert!(!dest.exists() && mine.exists());
    }

    #[test]
    fn a_new_staging_folder_clears_a_killed_runs_partial_folder() {
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("out");
        let left = parent
            .path()
            .join(format!(".out.keybag-partial-{}-abc", dead_pid()));
        mkdir_with(&left, "half-written");
        let s = Staging::new(&dest).unwrap();
        assert!(!left.exists());
        s.commit().unwrap();
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
    }

    #[test]
    fn replace_dir_exchanges_or_renames_twice() {
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("out");
        for allow_exchange in [true, false] {
            mkdir_with(&dest, "old");
            let new = sibling(&dest, "new");
            mkdir_with(&new, "new");
            let how = replace_dir_with(&new, &dest, "old", allow_exchange).unwrap();
            if cfg!(target_os = "linux") && allow_exchange {
                // Every file system the tests run on (ext4, tmpfs, btrfs, xfs) has it.
                assert_eq!(how, Switch::Exchange);
            }
            if !allow_exchange {
                assert_eq!(how, Switch::TwoRenames);
            }
            assert!(dest.join("new").is_file() && !dest.join("old").exists());
            let names: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
            assert_eq!(names.len(), 1, "the old folder is removed");
            std::fs::remove_dir_all(&dest).unwrap();
        }
        // A failed switch leaves the old folder.
        mkdir_with(&dest, "old");
        let missing = parent.path().join(".out.keybag-new-1-0");
        assert!(replace_dir_with(&missing, &dest, "old", false).is_err());
        assert!(replace_dir_with(&missing, &dest, "old", true).is_err());
        assert!(dest.join("old").is_file());
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
    }
}
