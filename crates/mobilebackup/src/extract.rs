//! Extracting records into a folder: `OUT/<domain>/<relativePath>`.
//!
//! Safety rules: every path is checked before use ([`layout::safe_relative`]);
//! no existing symlink inside the output folder is ever followed (each parent
//! component is checked with `symlink_metadata`); files are written to a temp
//! name and renamed; symlinks are created only when their target stays inside
//! the output folder, and only after every file is in place.

use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::layout;
use crate::reader::{Backup, Record, RecordKind};
use crate::{Error, Result};

/// What went wrong with one record.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// The blob is not in the backup.
    Missing,
    /// The blob's SHA-1 differs from the MBFile `Digest` (changed after the backup).
    DigestMismatch,
    /// The blob is truncated, undecryptable or badly padded.
    Damaged,
    /// The file's class key is sealed (device key needed) or unavailable.
    Sealed,
    /// Unsafe path, invalid fileID or undecodable MBFile.
    BadRecord,
    /// Recorded `Size` differs from the real length (a warning: real backups do this).
    SizeMismatch,
    /// A symlink whose target leaves the output folder was not created.
    SymlinkSkipped,
}

impl ProblemKind {
    /// True when data was lost or not produced (exit code 3); false for warnings.
    pub fn is_damage(self) -> bool {
        matches!(
            self,
            Self::Missing | Self::DigestMismatch | Self::Damaged | Self::Sealed | Self::BadRecord
        )
    }
}

/// A problem with one record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// `domain/relativePath`.
    pub path: String,
    /// Category.
    pub kind: ProblemKind,
    /// Human-readable detail, naming the blob file where there is one.
    pub message: String,
}

/// What an extraction (or a decryption) did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    /// Regular files written.
    pub files: u64,
    /// Plaintext bytes written.
    pub bytes: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Problems, sorted by path.
    pub problems: Vec<Problem>,
}

impl Report {
    /// True when any problem means data is missing or damaged.
    pub fn has_damage(&self) -> bool {
        self.problems.iter().any(|p| p.kind.is_damage())
    }

    /// Number of problems of one kind.
    pub fn count(&self, kind: ProblemKind) -> usize {
        self.problems.iter().filter(|p| p.kind == kind).count()
    }
}

/// Maps a library error on one record to a problem category.
pub fn classify(e: &Error) -> ProblemKind {
    match e {
        Error::MissingBlob { .. } => ProblemKind::Missing,
        Error::DigestMismatch { .. } => ProblemKind::DigestMismatch,
        Error::BadRecord { .. } => ProblemKind::BadRecord,
        Error::Crypto {
            source:
                dataprotection::Error::NeedsDeviceKey(_)
                | dataprotection::Error::NoClassKey(_)
                | dataprotection::Error::UnsupportedKeyType { .. },
            ..
        } => ProblemKind::Sealed,
        _ => ProblemKind::Damaged,
    }
}

/// Creates `root/rel` and its parents without following any symlink.
pub fn safe_create_dirs(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut cur = root.to_path_buf();
    for comp in rel.components() {
        let Component::Normal(name) = comp else {
            return Err(Error::malformed(
                root.join(rel),
                "path component is not a plain name",
            ));
        };
        cur.push(name);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::malformed(
                    &cur,
                    "is a symlink; refusing to write through it",
                ));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(Error::malformed(&cur, "exists and is not a folder")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&cur) {
                Ok(()) => {}
                // Another worker created it meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && cur.is_dir() => {}
                Err(e) => return Err(Error::io(&cur)(e)),
            },
            Err(e) => return Err(Error::io(&cur)(e)),
        }
    }
    Ok(cur)
}

/// Writes `rec`'s plaintext to `dest` through a temp file in the same folder.
/// Returns bytes written and any warning.
fn write_file(backup: &Backup, rec: &Record, dest: &Path) -> Result<(u64, Vec<Problem>)> {
    let parent = dest.parent().expect("dest has a parent");
    let mut tmp = tempfile::Builder::new()
        .prefix(".keybag-tmp-")
        .tempfile_in(parent)
        .map_err(Error::io(parent))?;
    let report = backup.copy_file(rec, tmp.as_file_mut())?;
    let mut warnings = Vec::new();
    if let Some(m) = &report.digest_mismatch {
        warnings.push(Problem {
            path: rec.display_path(),
            kind: ProblemKind::DigestMismatch,
            message: format!("{m}; kept the {} bytes it holds", report.bytes),
        });
    }
    if !report.padding_ok {
        warnings.push(Problem {
            path: rec.display_path(),
            kind: ProblemKind::Damaged,
            message: format!(
                "invalid PKCS7 padding in {}; kept all {} decrypted bytes",
                backup
                    .blob_path(rec)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                report.bytes
            ),
        });
    } else if report.size_mismatch() {
        warnings.push(Problem {
            path: rec.display_path(),
            kind: ProblemKind::SizeMismatch,
            message: format!(
                "Size says {} bytes, padding says {}; kept {}",
                report.recorded_size, report.bytes, report.bytes
            ),
        });
    }
    if let Some(f) = &rec.file {
        let t = filetime::FileTime::from_unix_time(f.mtime, 0);
        filetime::set_file_handle_times(tmp.as_file(), Some(t), Some(t))
            .map_err(Error::io(tmp.path()))?;
    }
    // Never leave a symlink at dest to be replaced in a way that could mislead: rename replaces the link itself.
    tmp.persist(dest).map_err(|e| Error::io(dest)(e.error))?;
    Ok((report.bytes, warnings))
}

/// A relative symlink text from `link`'s folder to `target` (both relative to the root).
fn relative_link(link: &Path, target: &Path) -> PathBuf {
    let from: Vec<_> = link
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    let to: Vec<_> = target.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Extracts `records` into `out` (created if needed), using all cores.
/// `progress` is called with the byte count of each finished file.
pub fn extract(
    backup: &Backup,
    records: &[Record],
    out: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Report> {
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let root = out.canonicalize().map_err(Error::io(out))?;
    let problems = Mutex::new(Vec::new());
    let push = |rec: &Record, kind: ProblemKind, message: String| {
        problems
            .lock()
            .expect("no panics while locked")
            .push(Problem {
                path: rec.display_path(),
                kind,
                message,
            });
    };
    let located = |rec: &Record| -> Option<PathBuf> {
        if let Some(p) = &rec.problem {
            push(rec, ProblemKind::BadRecord, p.clone());
            return None;
        }
        match layout::safe_relative(&rec.domain, &rec.relative_path) {
            Ok(rel) => Some(rel),
            Err(e) => {
                push(rec, ProblemKind::BadRecord, e);
                None
            }
        }
    };
    let mut report = Report::default();

    // Folders first, so files land in them.
    let mut dirs: Vec<(&Record, PathBuf)> = records
        .iter()
        .filter(|r| r.kind() == RecordKind::Directory)
        .filter_map(|r| located(r).map(|p| (r, p)))
        .collect();
    dirs.sort_by(|a, b| a.1.cmp(&b.1));
    for (rec, rel) in &dirs {
        match safe_create_dirs(&root, rel) {
            Ok(_) => report.dirs += 1,
            Err(e) => push(rec, ProblemKind::BadRecord, e.to_string()),
        }
    }

    let files: Vec<(&Record, PathBuf)> = records
        .iter()
        .filter(|r| r.kind() == RecordKind::File)
        .filter_map(|r| located(r).map(|p| (r, p)))
        .collect();
    let results: Vec<Option<u64>> = files
        .par_iter()
        .map(|(rec, rel)| {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let res = safe_create_dirs(&root, parent).and_then(|dir| {
                let dest = dir.join(rel.file_name().expect("a file has a name"));
                if std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
                    return Err(Error::malformed(&dest, "a folder is in the way"));
                }
                write_file(backup, rec, &dest)
            });
            match res {
                Ok((bytes, warnings)) => {
                    progress(bytes);
                    problems
                        .lock()
                        .expect("no panics while locked")
                        .extend(warnings);
                    Some(bytes)
                }
                Err(e) => {
                    progress(0);
                    push(rec, classify(&e), e.to_string());
                    None
                }
            }
        })
        .collect();
    for bytes in results.into_iter().flatten() {
        report.files += 1;
        report.bytes += bytes;
    }

    for rec in records.iter().filter(|r| r.kind() == RecordKind::Symlink) {
        let Some(rel) = located(rec) else { continue };
        let Some(target) = rec.file.as_ref().and_then(|f| f.target.clone()) else {
            push(
                rec,
                ProblemKind::BadRecord,
                "symlink without a Target".into(),
            );
            continue;
        };
        let Some(resolved) = layout::resolve_link_target(&rec.domain, &rel, &target) else {
            push(
                rec,
                ProblemKind::SymlinkSkipped,
                format!("target {target:?} is outside the output folder; not created"),
            );
            continue;
        };
        let res = safe_create_dirs(&root, rel.parent().unwrap_or(Path::new(""))).and_then(|dir| {
            let dest = dir.join(rel.file_name().expect("a link has a name"));
            if std::fs::symlink_metadata(&dest).is_ok_and(|m| !m.file_type().is_symlink()) {
                return Err(Error::malformed(&dest, "something else is in the way"));
            }
            let tmp = dir.join(format!(
                ".keybag-tmp-link-{}",
                uuid::Uuid::new_v4().simple()
            ));
            std::os::unix::fs::symlink(relative_link(&rel, &resolved), &tmp)
                .map_err(Error::io(&tmp))?;
            std::fs::rename(&tmp, &dest).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::io(&dest)(e)
            })
        });
        match res {
            Ok(()) => report.symlinks += 1,
            Err(e) => push(rec, ProblemKind::BadRecord, e.to_string()),
        }
    }

    // Folder times last: writing into a folder changes its mtime. Deepest first.
    for (rec, rel) in dirs.iter().rev() {
        if let Some(f) = &rec.file {
            let p = root.join(rel);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                let t = filetime::FileTime::from_unix_time(f.mtime, 0);
                let _ = filetime::set_file_times(&p, t, t);
            }
        }
    }
    report.problems = problems.into_inner().expect("no panics while locked");
    report
        .problems
        .sort_by(|a, b| a.path.cmp(&b.path).then(a.kind.cmp(&b.kind)));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_links() {
        assert_eq!(
            relative_link(Path::new("D/a/b/link"), Path::new("D/a/x")),
            Path::new("../x")
        );
        assert_eq!(
            relative_link(Path::new("D/a/link"), Path::new("D/a/b/c")),
            Path::new("b/c")
        );
        assert_eq!(
            relative_link(Path::new("D/link"), Path::new("E/f")),
            Path::new("../E/f")
        );
    }

    #[test]
    fn never_writes_through_a_symlink() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("HomeDomain")).unwrap();
        let e = safe_create_dirs(root.path(), Path::new("HomeDomain/Library")).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        std::fs::write(root.path().join("f"), b"").unwrap();
        assert!(safe_create_dirs(root.path(), Path::new("f/x")).is_err());
        assert!(safe_create_dirs(root.path(), Path::new("../x")).is_err());
        assert!(safe_create_dirs(root.path(), Path::new("a/b/c"))
            .unwrap()
            .is_dir());
    }
}
