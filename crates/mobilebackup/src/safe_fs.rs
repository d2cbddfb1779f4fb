//! Opening the files of a backup that may be hostile.
//!
//! A backup folder is untrusted input: a blob or a top-level file may be a symlink to a file
//! elsewhere on the examiner's machine (which would be copied into a report), or a FIFO,
//! device node or socket (which would block a read forever). Every file keybag reads from a
//! backup is opened here: refused unless `lstat` says it is a regular file, then opened
//! without following a symlink (`O_NOFOLLOW`) and without blocking (`O_NONBLOCK`), and checked
//! again on the open handle (`fstat`), so a swap between the two checks is caught too.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// What a non-regular file is, for messages ("is a symlink, not a regular file").
fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        return "a symlink";
    }
    if t.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device node";
        }
    }
    "not a regular file"
}

fn not_regular(path: &Path, meta: &Metadata) -> Error {
    Error::DamagedBlob {
        path: path.into(),
        reason: format!(
            "is {}, not a regular file; refusing to read it",
            kind_of(meta)
        ),
    }
}

/// Opens `path` for reading if it is a regular file, never through a symlink and never
/// blocking. A missing file is [`Error::MissingBlob`]; a symlink, folder, FIFO, socket or
/// device node is [`Error::DamagedBlob`] naming what it is; other failures are [`Error::Io`].
pub fn open_regular(path: &Path) -> Result<File> {
    let before = std::fs::symlink_metadata(path).map_err(|e| open_error(path, e))?;
    if !before.file_type().is_file() {
        return Err(not_regular(path, &before));
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = opts.open(path).map_err(|e| {
        // ELOOP: it became a symlink since the lstat above.
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_file() => not_regular(path, &m),
            _ => open_error(path, e),
        }
    })?;
    let after = file.metadata().map_err(Error::io(path))?;
    if !after.file_type().is_file() {
        return Err(not_regular(path, &after));
    }
    Ok(file)
}

/// Reads the whole of a regular file (see [`open_regular`]) of at most `cap` bytes; a larger
/// one is [`Error::Malformed`] naming the cap.
pub fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata().map_err(Error::io(path))?.len();
    if len > cap {
        return Err(Error::malformed(
            path,
            format!("{len} bytes is larger than the {} MiB cap", cap >> 20),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take`: a file that grows while it is read still stops at the cap.
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(Error::io(path))?;
    if bytes.len() as u64 > cap {
        return Err(Error::malformed(path, "grew past the size cap while read"));
    }
    Ok(bytes)
}

/// True when `path` itself (not a symlink's target) is a regular file.
pub fn is_regular(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

fn open_error(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::MissingBlob { path: path.into() }
    } else {
        Error::Io {
            path: path.into(),
            source: e,
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"secret of the examiner").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let e = open_regular(&link).unwrap_err().to_string();
        assert!(e.contains("is a symlink") && e.contains("link"), "{e}");
        let e = open_regular(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        let fifo = dir.path().join("fifo");
        let st = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
        // Would block forever with a plain open; refused at once.
        let e = open_regular(&fifo).unwrap_err().to_string();
        assert!(e.contains("is a FIFO"), "{e}");
        assert!(matches!(
            open_regular(&dir.path().join("absent")),
            Err(Error::MissingBlob { .. })
        ));
        assert_eq!(
            read_regular(&outside, 100).unwrap(),
            b"secret of the examiner"
        );
        let e = read_regular(&outside, 5).unwrap_err().to_string();
        assert!(e.contains("cap"), "{e}");
        assert!(is_regular(&outside) && !is_regular(&link) && !is_regular(&fifo));
    }
}
