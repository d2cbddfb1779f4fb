//! Integrity of a backup's files: every blob present, its SHA-1 equal to the
//! recorded `Digest`, its key available, its padding valid and its length equal
//! to `Size`; on all cores. Used by `keybag verify` and `keybag audit`.
//!
//! A deep check reads every blob in full (for the SHA-1) and decrypts its last
//! block (for the padding, hence the length). Decrypting the rest would find
//! nothing more: CBC has no integrity of its own, so `Digest` and padding are
//! all the evidence a backup carries.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::Serialize;
use sha1::{Digest, Sha1};

use crate::blob::CHUNK;
use crate::extract::{classify, Problem, ProblemKind};
use crate::reader::{Backup, Catalog, Record, RecordKind};
use crate::Error;

/// What is wrong with one record: the same categories as extraction.
pub type IntegrityKind = ProblemKind;
/// A problem with one record.
pub type IntegrityProblem = Problem;

/// The integrity section.
#[derive(Clone, Debug, Serialize)]
pub struct Integrity {
    /// True when every blob was read; false for `--quick` (presence only).
    pub deep: bool,
    /// Regular files in `Manifest.db`.
    pub files: u64,
    /// Files whose blob was read in full.
    pub files_read: u64,
    /// Stored (blob) bytes read.
    pub bytes_read: u64,
    /// Plaintext bytes of the files read (their length from the padding).
    pub plaintext_bytes: u64,
    /// Files with a 20-byte `Digest` that was compared.
    pub digest_checked: u64,
    /// Blobs absent.
    pub missing: u64,
    /// Blobs whose SHA-1 differs from `Digest`.
    pub digest_mismatches: u64,
    /// Files whose recorded `Size` differs from the plaintext length (warning).
    pub size_mismatches: u64,
    /// Files whose content cannot be trusted or read: digest mismatch, bad
    /// padding, truncated, undecryptable (each file counted once).
    pub damaged: u64,
    /// Files whose class key is sealed to the original device.
    pub sealed: u64,
    /// Unusable records (unsafe path, bad fileID, undecodable MBFile).
    pub bad_records: u64,
    /// `Manifest.db` rows that could not be read at all.
    pub skipped_rows: u64,
    /// True when nothing is missing, damaged, sealed or unusable.
    pub clean: bool,
    /// Every problem, sorted by path.
    pub problems: Vec<IntegrityProblem>,
}

fn problem(rec: &Record, kind: IntegrityKind, message: String) -> IntegrityProblem {
    IntegrityProblem {
        path: rec.display_path(),
        kind,
        message,
    }
}

fn from_error(rec: &Record, e: &Error) -> IntegrityProblem {
    problem(rec, classify(e), e.to_string())
}

#[derive(Default)]
struct FileResult {
    problems: Vec<IntegrityProblem>,
    read: bool,
    digest_checked: bool,
    plaintext: u64,
}

/// Presence and key availability only.
fn shallow(backup: &Backup, rec: &Record) -> FileResult {
    let mut out = FileResult::default();
    let path = match backup.checked_blob_path(rec) {
        Ok(p) => p,
        Err(e) => {
            out.problems.push(from_error(rec, &e));
            return out;
        }
    };
    match std::fs::symlink_metadata(&path) {
        Err(_) => {
            out.problems.push(problem(
                rec,
                IntegrityKind::Missing,
                format!("{}: blob missing", path.display()),
            ));
            return out;
        }
        Ok(m) if !m.file_type().is_file() => {
            out.problems.push(problem(
                rec,
                IntegrityKind::Damaged,
                format!(
                    "{}: not a regular file (symlink, folder, FIFO or device)",
                    path.display()
                ),
            ));
            return out;
        }
        Ok(_) => {}
    }
    if let Some(keys) = backup.keys() {
        if let Err(e) = keys.key(rec.protection_class()) {
            out.problems
                .push(problem(rec, IntegrityKind::Sealed, e.to_string()));
        }
    }
    out
}

/// Reads the whole blob (SHA-1 against `Digest`), then checks padding and size.
fn deep(backup: &Backup, rec: &Record, bytes: &AtomicU64) -> FileResult {
    let mut out = FileResult::default();
    let path = match backup.checked_blob_path(rec) {
        Ok(p) => p,
        Err(e) => {
            out.problems.push(from_error(rec, &e));
            return out;
        }
    };
    let digest = rec
        .file
        .as_ref()
        .and_then(|f| f.digest.as_deref())
        .filter(|d| d.len() == 20);
    let mut file = match crate::safe_fs::open_regular(&path) {
        Ok(f) => f,
        Err(e) => {
            out.problems.push(from_error(rec, &e));
            return out;
        }
    };
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                if digest.is_some() {
                    hasher.update(&buf[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                out.problems.push(problem(
                    rec,
                    IntegrityKind::Damaged,
                    format!("{}: read error: {e}", path.display()),
                ));
                return out;
            }
        }
    }
    out.read = true;
    if let Some(want) = digest {
        out.digest_checked = true;
        let got = hasher.finalize();
        if got.as_slice() != want {
            out.problems.push(problem(
                rec,
                IntegrityKind::DigestMismatch,
                format!(
                    "{}: SHA-1 {} differs from the recorded Digest {} (changed after the backup)",
                    path.display(),
                    hex::encode(got),
                    hex::encode(want)
                ),
            ));
        }
    }
    match backup.open_file(rec) {
        Ok(reader) => {
            out.plaintext = reader.len();
            if !reader.padding_ok() {
                out.problems.push(problem(
                    rec,
                    IntegrityKind::Damaged,
                    format!(
                        "{}: invalid PKCS7 padding (damaged blob or wrong key)",
                        path.display()
                    ),
                ));
            } else if reader.len() != rec.size() {
                out.problems.push(problem(
                    rec,
                    IntegrityKind::SizeMismatch,
                    format!(
                        "recorded Size {} bytes, content {} bytes",
                        rec.size(),
                        reader.len()
                    ),
                ));
            }
        }
        Err(e) => out.problems.push(from_error(rec, &e)),
    }
    out
}

/// Checks every record; `deep_read` reads every blob, in parallel. `progress`
/// is called after each file with the stored bytes read for it.
pub fn check(
    backup: &Backup,
    catalog: &Catalog,
    deep_read: bool,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Integrity {
    let mut problems: Vec<IntegrityProblem> = catalog
        .records
        .iter()
        .filter_map(|r| {
            r.problem
                .as_ref()
                .map(|p| problem(r, IntegrityKind::BadRecord, p.clone()))
        })
        .collect();
    let files: Vec<&Record> = catalog
        .records
        .iter()
        .filter(|r| r.kind() == RecordKind::File && r.problem.is_none())
        .collect();
    let bytes = AtomicU64::new(0);
    let results: Vec<FileResult> = files
        .par_iter()
        .map(|rec| {
            let before = bytes.load(Ordering::Relaxed);
            let r = if deep_read {
                deep(backup, rec, &bytes)
            } else {
                shallow(backup, rec)
            };
            if let Some(p) = progress {
                p(bytes.load(Ordering::Relaxed).saturating_sub(before));
            }
            r
        })
        .collect();
    let mut files_read = 0;
    let mut plaintext_bytes = 0;
    let mut digest_checked = 0;
    let mut damaged = 0;
    for r in results {
        files_read += u64::from(r.read);
        plaintext_bytes += r.plaintext;
        digest_checked += u64::from(r.digest_checked);
        if r.problems.iter().any(|p| {
            matches!(
                p.kind,
                IntegrityKind::Damaged | IntegrityKind::DigestMismatch
            )
        }) {
            damaged += 1;
        }
        problems.extend(r.problems);
    }
    problems.sort_by(|a, b| a.path.cmp(&b.path).then(a.kind.cmp(&b.kind)));
    let count = |k: IntegrityKind| problems.iter().filter(|p| p.kind == k).count() as u64;
    let missing = count(IntegrityKind::Missing);
    let sealed = count(IntegrityKind::Sealed);
    let bad_records = count(IntegrityKind::BadRecord);
    // Rows that could not be read at all are damage too, listed under Manifest.db.
    problems.extend(catalog.skipped_problems());
    let count = |k: IntegrityKind| problems.iter().filter(|p| p.kind == k).count() as u64;
    Integrity {
        deep: deep_read,
        files: catalog
            .records
            .iter()
            .filter(|r| r.kind() == RecordKind::File)
            .count() as u64,
        files_read,
        bytes_read: bytes.load(Ordering::Relaxed),
        plaintext_bytes,
        digest_checked,
        missing,
        digest_mismatches: count(IntegrityKind::DigestMismatch),
        size_mismatches: count(IntegrityKind::SizeMismatch),
        damaged,
        sealed,
        bad_records,
        skipped_rows: catalog.skipped.len() as u64,
        clean: !problems.iter().any(|p| p.kind.is_damage()),
        problems,
    }
}
