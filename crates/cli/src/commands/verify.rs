//! `keybag verify`: the password, `Manifest.db`, records and blobs.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use mobilebackup::extract::{classify, Problem, ProblemKind};
use mobilebackup::{Backup, Catalog, Record, RecordKind};
use rayon::prelude::*;
use serde::Serialize;

use crate::args::BackupArgs;
use crate::output::{human_bytes, plural, print_json};
use crate::progress::Progress;

/// What `verify` found.
#[derive(Debug, Serialize)]
pub struct Verification {
    /// The backup folder.
    pub backup: String,
    /// Encrypted or not.
    pub encrypted: bool,
    /// True once the password or key unlocked the keybag (always true for plain backups).
    pub unlocked: bool,
    /// True when every file was decrypted (`--deep`).
    pub deep: bool,
    /// `Manifest.db` rows.
    pub records: u64,
    /// Regular files.
    pub files: u64,
    /// Files read back in full (`--deep`).
    pub files_read: u64,
    /// Plaintext bytes read (`--deep`).
    pub bytes_read: u64,
    /// Blobs absent.
    pub missing: u64,
    /// Blobs that do not decrypt cleanly.
    pub damaged: u64,
    /// Files whose class key is sealed to the device.
    pub sealed: u64,
    /// Unsafe or undecodable records.
    pub bad_records: u64,
    /// Files whose recorded size differs from the content (a warning).
    pub size_mismatches: u64,
    /// Rows that could not be read at all.
    pub skipped_rows: u64,
    /// True when data is damaged or missing (exit 3).
    pub has_damage: bool,
    /// Every problem, sorted by path.
    pub problems: Vec<Problem>,
}

fn problem(rec: &Record, kind: ProblemKind, message: String) -> Problem {
    Problem {
        path: rec.display_path(),
        kind,
        message,
    }
}

/// Checks one file without reading it: blob present, class key available.
fn shallow(backup: &Backup, rec: &Record) -> Option<Problem> {
    let path = match backup.blob_path(rec) {
        Ok(p) => p,
        Err(e) => return Some(problem(rec, ProblemKind::BadRecord, e.to_string())),
    };
    if std::fs::symlink_metadata(&path).is_err() {
        return Some(problem(
            rec,
            ProblemKind::Missing,
            format!("{}: blob missing", path.display()),
        ));
    }
    if let Some(keys) = backup.keys() {
        if let Err(e) = keys.key(rec.protection_class()) {
            return Some(problem(rec, ProblemKind::Sealed, e.to_string()));
        }
    }
    None
}

/// Reads and decrypts one file into nothing.
fn deep(backup: &Backup, rec: &Record, bytes: &AtomicU64) -> Option<Problem> {
    match backup.copy_file(rec, &mut std::io::sink()) {
        Ok(r) => {
            bytes.fetch_add(r.bytes, Ordering::Relaxed);
            if !r.padding_ok {
                let blob = backup
                    .blob_path(rec)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                Some(problem(
                    rec,
                    ProblemKind::Damaged,
                    format!("{blob}: invalid PKCS7 padding (damaged blob or wrong device key)"),
                ))
            } else if r.size_mismatch() {
                Some(problem(
                    rec,
                    ProblemKind::SizeMismatch,
                    format!(
                        "recorded size {} bytes, content {} bytes",
                        r.recorded_size, r.bytes
                    ),
                ))
            } else {
                None
            }
        }
        Err(e) => Some(problem(rec, classify(&e), e.to_string())),
    }
}

/// Checks every record; `deep` decrypts every file, in parallel.
pub fn check(backup: &Backup, catalog: &Catalog, deep_read: bool) -> Verification {
    let mut problems: Vec<Problem> = catalog
        .records
        .iter()
        .filter_map(|r| {
            r.problem
                .as_ref()
                .map(|p| problem(r, ProblemKind::BadRecord, p.clone()))
        })
        .collect();
    let files: Vec<&Record> = catalog
        .records
        .iter()
        .filter(|r| r.kind() == RecordKind::File && r.problem.is_none())
        .collect();
    let bytes = AtomicU64::new(0);
    let read = AtomicU64::new(0);
    let progress = Progress::new(if deep_read { files.len() as u64 } else { 0 }, "verifying");
    problems.extend(
        files
            .par_iter()
            .filter_map(|rec| {
                if !deep_read {
                    return shallow(backup, rec);
                }
                let before = bytes.load(Ordering::Relaxed);
                let p = deep(backup, rec, &bytes);
                if read_in_full(&p) {
                    read.fetch_add(1, Ordering::Relaxed);
                }
                progress.file_done(bytes.load(Ordering::Relaxed).saturating_sub(before));
                p
            })
            .collect::<Vec<_>>(),
    );
    progress.finish();
    problems.sort_by(|a, b| a.path.cmp(&b.path).then(a.kind.cmp(&b.kind)));
    let count = |k: ProblemKind| problems.iter().filter(|p| p.kind == k).count() as u64;
    Verification {
        backup: backup.root().display().to_string(),
        encrypted: backup.is_encrypted(),
        unlocked: !backup.is_encrypted() || backup.keys().is_some(),
        deep: deep_read,
        records: catalog.records.len() as u64,
        files: catalog
            .records
            .iter()
            .filter(|r| r.kind() == RecordKind::File)
            .count() as u64,
        files_read: read.load(Ordering::Relaxed),
        bytes_read: bytes.load(Ordering::Relaxed),
        missing: count(ProblemKind::Missing),
        damaged: count(ProblemKind::Damaged),
        sealed: count(ProblemKind::Sealed),
        bad_records: count(ProblemKind::BadRecord),
        size_mismatches: count(ProblemKind::SizeMismatch),
        skipped_rows: catalog.skipped.len() as u64,
        has_damage: problems.iter().any(|p| p.kind.is_damage()),
        problems,
    }
}

/// True when the file was read in full (no problem, or only a warning).
fn read_in_full(p: &Option<Problem>) -> bool {
    p.as_ref().is_none_or(|p| !p.kind.is_damage())
}

/// Runs `keybag verify`.
pub fn run(args: &BackupArgs, deep_read: bool) -> Result<u8> {
    let backup = super::open(args)?;
    let catalog = super::catalog(&backup)?;
    let v = check(&backup, &catalog, deep_read);
    if args.json {
        print_json(&v)?;
    } else {
        let mut w = std::io::stdout().lock();
        if v.encrypted {
            writeln!(
                w,
                "Password OK: the keybag unlocked and Manifest.db decrypted."
            )?;
        } else {
            writeln!(w, "Not encrypted: no password needed.")?;
        }
        writeln!(
            w,
            "Manifest.db: {} ({}).",
            plural(v.records, "record", "records"),
            plural(v.files, "file", "files")
        )?;
        if deep_read {
            writeln!(
                w,
                "Read and decrypted {} ({}).",
                plural(v.files_read, "file", "files"),
                human_bytes(v.bytes_read)
            )?;
        } else {
            writeln!(
                w,
                "Checked that every blob is present (--deep also decrypts every file)."
            )?;
        }
        if v.problems.is_empty() {
            writeln!(w, "No problems found.")?;
        }
        super::print_problems(&mut w, &v.problems)?;
        w.flush()?;
    }
    Ok(super::damage_exit(
        &v.problems,
        "everything else checked out",
    ))
}
