//! `keybag verify`: the password, `Manifest.db`, records and blobs.

use std::io::Write;

use anyhow::Result;
use mobilebackup::extract::Problem;
use mobilebackup::integrity;
use mobilebackup::{Backup, Catalog, RecordKind};
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
    /// Plaintext bytes of the files read (`--deep`).
    pub bytes_read: u64,
    /// Blobs absent.
    pub missing: u64,
    /// Files whose content cannot be trusted: bad padding, truncated, or a
    /// `Digest` mismatch (each file counted once).
    pub damaged: u64,
    /// Blobs whose SHA-1 differs from the recorded `Digest`.
    pub digest_mismatches: u64,
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

/// Checks every record with the library's integrity check; `deep_read` reads
/// every blob (SHA-1 against `Digest`, padding and length), in parallel.
pub fn check(backup: &Backup, catalog: &Catalog, deep_read: bool) -> Verification {
    let files = catalog
        .records
        .iter()
        .filter(|r| r.kind() == RecordKind::File)
        .count() as u64;
    let progress = Progress::new(if deep_read { files } else { 0 }, "verifying");
    let report = |bytes: u64| progress.file_done(bytes);
    let i = integrity::check(backup, catalog, deep_read, Some(&report));
    progress.finish();
    Verification {
        backup: backup.root().display().to_string(),
        encrypted: backup.is_encrypted(),
        unlocked: !backup.is_encrypted() || backup.keys().is_some(),
        deep: deep_read,
        records: catalog.records.len() as u64,
        files,
        files_read: i.files_read,
        bytes_read: i.plaintext_bytes,
        missing: i.missing,
        damaged: i.damaged,
        digest_mismatches: i.digest_mismatches,
        sealed: i.sealed,
        bad_records: i.bad_records,
        size_mismatches: i.size_mismatches,
        skipped_rows: i.skipped_rows,
        has_damage: i.problems.iter().any(|p| p.kind.is_damage()),
        problems: i.problems,
    }
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
                "Read {} in full ({}): Digests, padding and sizes checked.",
                plural(v.files_read, "file", "files"),
                human_bytes(v.bytes_read)
            )?;
        } else {
            writeln!(
                w,
                "Checked that every blob is present (--deep also reads every file)."
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
