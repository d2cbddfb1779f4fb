//! `keybag decrypt`: an unencrypted copy of an encrypted backup.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use mobilebackup::{Backup, RecordKind};

use crate::args::BackupArgs;
use crate::exit;
use crate::output::print_json;
use crate::progress::Progress;

use super::extract::{print_summary, JsonReport};

/// Runs `keybag decrypt`.
pub fn run(args: &BackupArgs, out: &Path) -> Result<u8> {
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(exit::other(format!(
            "{}: already exists; decrypt writes a new folder",
            out.display()
        )));
    }
    let keys = crate::secrets::parse_keys(args)?;
    let mut backup = Backup::open(&args.dir)?;
    if !backup.is_encrypted() {
        return Err(exit::other(format!(
            "{}: the backup is not encrypted; there is nothing to decrypt",
            args.dir.display()
        )));
    }
    crate::secrets::unlock(&mut backup, args, keys)?;
    let catalog = super::catalog(&backup)?;
    let files = catalog
        .records
        .iter()
        .filter(|r| r.kind() == RecordKind::File)
        .count();
    let progress = Progress::new(files as u64, "decrypting");
    let report =
        mobilebackup::decrypt::decrypt_backup(&backup, &catalog, out, &|n| progress.file_done(n));
    progress.finish();
    let report = report?;
    if args.json {
        print_json(&JsonReport {
            backup: args.dir.display().to_string(),
            out: out.display().to_string(),
            damaged: report.has_damage(),
            report: &report,
        })?;
    } else {
        let mut w = std::io::stdout().lock();
        print_summary(&mut w, "Decrypted", &report, out)?;
        writeln!(
            w,
            "The copy is an unencrypted backup: open it without a password (e.g. `keybag ls`)."
        )?;
        super::print_problems(&mut w, &report.problems)?;
        w.flush()?;
    }
    Ok(super::damage_exit(
        &report.problems,
        "the rest was decrypted",
    ))
}
