//! `keybag cat`: one file's content on stdout.

use std::io::Write;

use anyhow::Result;
use mobilebackup::RecordKind;

use crate::args::BackupArgs;
use crate::exit;
use crate::output::{sanitize, warn};

/// Runs `keybag cat`. `--json` has no effect: the output is the file itself.
pub fn run(args: &BackupArgs, domain: &str, path: &str) -> Result<u8> {
    let backup = super::open(args)?;
    let catalog = super::catalog(&backup)?;
    let shown = sanitize(&if path.is_empty() {
        domain.to_string()
    } else {
        format!("{domain}/{path}")
    });
    let rec = catalog
        .records
        .iter()
        .find(|r| r.domain == domain && r.relative_path == path)
        .ok_or_else(|| {
            exit::other(format!(
                "{shown}: no such record in the backup (see `keybag ls`)"
            ))
        })?;
    if rec.kind() != RecordKind::File {
        return Err(exit::other(format!(
            "{shown}: is a {}, not a file",
            rec.kind().name()
        )));
    }
    let mut out = std::io::stdout().lock();
    let report = backup.copy_file(rec, &mut out)?;
    out.flush()?;
    if let Some(m) = &report.digest_mismatch {
        warn(&format!(
            "{shown}: the blob was changed after the backup: {}; wrote its {} bytes",
            m, report.bytes
        ));
        return Ok(exit::DAMAGE);
    }
    if !report.padding_ok {
        eprintln!(
            "keybag: {shown}: invalid PKCS7 padding (damaged blob); wrote all {} decrypted bytes",
            report.bytes
        );
        return Ok(exit::DAMAGE);
    }
    if report.size_mismatch() {
        warn(&format!(
            "{shown}: the backup records {} bytes, the blob holds {}",
            report.recorded_size, report.bytes
        ));
    }
    Ok(exit::OK)
}
