//! `keybag demo`: a guided tour on the encrypted sample backup in the source tree.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dataprotection::Passkey;
use mobilebackup::{Backup, Record, RecordKind};

use crate::exit;
use crate::output::{human_bytes, plural, sanitize, thousands};

use super::{extract, info, ls};

/// The sample's folder, relative to the source tree's root.
const SAMPLE: &str = "testdata/enc-small-public";

/// The sample's derived key, published in `testdata/enc-small-public.README.md`
/// (its password is public too). Using it skips the 10,000,000-round KDF.
const SAMPLE_PASSKEY: &str = "44a316ca4293d559aa3a068ebb22105607824ea61d611baf62cd3e83c0c796c7";

/// Listing lines shown before "… and N more".
const SHOWN_LINES: usize = 12;

/// Finds the sample: next to the sources this binary was built from, else under the current folder.
fn locate() -> Result<PathBuf> {
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(SAMPLE);
    let here = PathBuf::from(SAMPLE);
    for candidate in [&built, &here] {
        if candidate.join("Manifest.plist").is_file() {
            return Ok(candidate
                .canonicalize()
                .unwrap_or_else(|_| candidate.clone()));
        }
    }
    Err(exit::other(format!(
        "the demo needs the sample backup {SAMPLE} from the keybag source tree, \
         and it is neither at {} nor at ./{SAMPLE}; run `keybag demo` from a clone of the repository",
        built.display()
    )))
}

/// Writes `text` with every line indented.
fn indented(out: &mut dyn Write, text: &[u8]) -> Result<()> {
    for line in String::from_utf8_lossy(text).lines() {
        writeln!(out, "      {line}")?;
    }
    Ok(())
}

/// The first short text file that was extracted, with its content on one line.
fn sample_text(records: &[Record], root: &Path) -> Option<(String, String)> {
    records
        .iter()
        .filter(|r| r.kind() == RecordKind::File && r.relative_path.ends_with(".txt"))
        .find_map(|r| {
            let p = root.join(&r.domain).join(&r.relative_path);
            let bytes = std::fs::read(p)
                .ok()
                .filter(|b| !b.is_empty() && b.len() <= 400)?;
            let text = String::from_utf8(bytes).ok()?;
            Some((
                r.display_path(),
                text.split_whitespace().collect::<Vec<_>>().join(" "),
            ))
        })
}

/// Runs `keybag demo`.
pub fn run() -> Result<u8> {
    let dir = locate()?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "keybag demo: every step on the encrypted sample backup that ships with the source.\n"
    )?;

    let mut backup = Backup::open(&dir)?;
    let dev = backup.device();
    writeln!(
        out,
        "[1/5] Open {}: an {} backup of \"{}\" ({}, iOS {}).",
        dir.display(),
        if backup.is_encrypted() {
            "encrypted"
        } else {
            "unencrypted"
        },
        sanitize(dev.device_name.as_deref().unwrap_or("unknown")),
        sanitize(dev.product_type.as_deref().unwrap_or("unknown")),
        sanitize(dev.product_version.as_deref().unwrap_or("unknown")),
    )?;
    writeln!(
        out,
        "      Opening needs no password: only the file list (Manifest.db) and the files are encrypted.\n"
    )?;

    let passkey = Passkey::from_hex(SAMPLE_PASSKEY).context("the demo key")?;
    backup.unlock_with_passkey(&passkey, None)?;
    writeln!(
        out,
        "[2/5] Unlock with the sample's published derived key (this skips the 10,000,000-round password KDF)."
    )?;
    if let Some(keys) = backup.keys() {
        let sealed: Vec<String> = keys.sealed().map(|(c, _)| c.0.to_string()).collect();
        let mut line = format!(
            "      {} unlocked",
            plural(keys.available().count() as u64, "class key", "class keys")
        );
        if !sealed.is_empty() {
            line.push_str(&format!(
                "; classes {} stay sealed to the original iPhone (its device key 0x835 would open them)",
                sealed.join(", ")
            ));
        }
        writeln!(out, "{line}.\n")?;
    }

    let mut catalog = backup.catalog()?;
    super::sort_records(&mut catalog.records);
    let summary = info::gather(&backup, &catalog);
    writeln!(
        out,
        "[3/5] Decrypt Manifest.db in memory and summarise it (`keybag info`):"
    )?;
    let mut buf = Vec::new();
    info::print_summary(&mut buf, &summary)?;
    indented(&mut out, &buf)?;
    writeln!(out)?;

    writeln!(
        out,
        "[4/5] List the records: kind, size, protection class, mode, mtime, path (`keybag ls --long`):"
    )?;
    let refs: Vec<&Record> = catalog.records.iter().collect();
    let mut buf = Vec::new();
    ls::print_text(&mut buf, &refs[..refs.len().min(SHOWN_LINES)], true)?;
    indented(&mut out, &buf)?;
    if refs.len() > SHOWN_LINES {
        writeln!(
            out,
            "      ... and {} more\n",
            thousands((refs.len() - SHOWN_LINES) as u64)
        )?;
    }

    let tmp = tempfile::Builder::new()
        .prefix("keybag-demo-")
        .tempdir()
        .context("creating a temporary folder")?;
    let dest = tmp.path().join("extracted");
    writeln!(
        out,
        "[5/5] Extract every file, decrypted, into a temporary folder (`keybag extract`):"
    )?;
    out.flush()?;
    let report = extract::extract_records(&backup, &catalog.records, &dest)?;
    let mut buf = Vec::new();
    extract::print_summary(&mut buf, "Extracted", &report, &dest)?;
    super::print_problems(&mut buf, &report.problems)?;
    indented(&mut out, &buf)?;
    if let Some((path, text)) = sample_text(&catalog.records, &dest) {
        let mut short: String = text.chars().take(80).collect();
        if short.len() < text.len() {
            short.push('…');
        }
        writeln!(
            out,
            "      For example, {} reads: \"{}\"",
            sanitize(&path),
            sanitize(&short)
        )?;
    }
    writeln!(
        out,
        "      (the temporary folder is deleted when the demo ends; {} in all)\n",
        human_bytes(report.bytes)
    )?;

    writeln!(
        out,
        "Next, on your own backup (each command asks for its password, or reads"
    )?;
    writeln!(
        out,
        "KEYBAG_PASSWORD or --password-file; see `keybag --help`):"
    )?;
    for cmd in [
        "keybag info BACKUP",
        "keybag ls BACKUP --domain HomeDomain --path 'Library/SMS/**'",
        "keybag extract BACKUP OUTDIR",
        "keybag verify BACKUP --deep",
    ] {
        writeln!(out, "  {cmd}")?;
    }
    out.flush()?;
    drop(out);
    tmp.close().context("removing the temporary folder")?;
    Ok(super::damage_exit(
        &report.problems,
        "the rest was extracted",
    ))
}
