//! `keybag extract`: files into `OUTDIR/<domain>/<relativePath>`.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use mobilebackup::extract::Report;
use mobilebackup::{Backup, Record, RecordKind};
use serde::Serialize;

use crate::args::{BackupArgs, FilterArgs};
use crate::exit;
use crate::output::{human_bytes, plural, print_json, sanitize};
use crate::progress::Progress;

use super::Filter;

/// `extract` and `decrypt` output for `--json`.
#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    /// The backup folder.
    pub backup: String,
    /// The output folder.
    pub out: String,
    /// True when some data is damaged or missing (exit 3).
    pub damaged: bool,
    /// Counts and problems.
    #[serde(flatten)]
    pub report: &'a Report,
}

/// Runs the library's extraction with a progress bar.
pub fn extract_records(backup: &Backup, records: &[Record], out: &Path) -> Result<Report> {
    let files = records
        .iter()
        .filter(|r| r.kind() == RecordKind::File)
        .count();
    let progress = Progress::new(files as u64, "extracting");
    let report = mobilebackup::extract::extract(backup, records, out, &|n| progress.file_done(n));
    progress.finish();
    Ok(report?)
}

/// `Extracted 16 files (14.8 KB), 23 folders and 1 symlink into OUT.`
pub fn print_summary(out: &mut dyn Write, verb: &str, report: &Report, dest: &Path) -> Result<()> {
    writeln!(
        out,
        "{verb} {} ({}), {} and {} into {}.",
        plural(report.files, "file", "files"),
        human_bytes(report.bytes),
        plural(report.dirs, "folder", "folders"),
        plural(report.symlinks, "symlink", "symlinks"),
        sanitize(&dest.display().to_string())
    )?;
    Ok(())
}

/// Fails early when OUTDIR exists and is not a folder.
fn check_out(out: &Path) -> Result<()> {
    match std::fs::metadata(out) {
        Ok(m) if !m.is_dir() => Err(exit::other(format!(
            "{}: exists and is not a folder",
            out.display()
        ))),
        _ => Ok(()),
    }
}

/// Runs `keybag extract`.
pub fn run(args: &BackupArgs, out: &Path, filter: &FilterArgs) -> Result<u8> {
    let filter = Filter::new(filter)?;
    check_out(out)?;
    let backup = super::open(args)?;
    let catalog = super::catalog(&backup)?;
    // Rows that could not be read at all were not extracted: damage, unless a filter
    // picked a part of the backup (they have no domain or path to match).
    let skipped = if filter.is_empty() {
        catalog.skipped_problems()
    } else {
        Vec::new()
    };
    let records: Vec<Record> = catalog
        .records
        .into_iter()
        .filter(|r| filter.matches(r))
        .collect();
    if records.is_empty() && !filter.is_empty() {
        crate::output::warn("no record matches --domain/--path");
    }
    let mut report = extract_records(&backup, &records, out)?;
    report.problems.extend(skipped);
    if args.json {
        print_json(&JsonReport {
            backup: args.dir.display().to_string(),
            out: out.display().to_string(),
            damaged: report.has_damage(),
            report: &report,
        })?;
    } else {
        let mut w = std::io::stdout().lock();
        print_summary(&mut w, "Extracted", &report, out)?;
        super::print_problems(&mut w, &report.problems)?;
        w.flush()?;
    }
    Ok(super::damage_exit(
        &report.problems,
        "the rest was extracted",
    ))
}
