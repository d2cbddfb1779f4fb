//! `keybag info`: device, date, encryption and content statistics.

use std::io::Write;

use anyhow::Result;
use mobilebackup::audit::{contents, Contents, DomainCount};
use mobilebackup::{Backup, Catalog, RecordKind};
use rayon::prelude::*;
use serde::Serialize;

use crate::args::BackupArgs;
use crate::output::{human_bytes, iso8601, plural, print_json, sanitize, thousands, unix_seconds};

/// Device identity.
#[derive(Debug, Serialize)]
pub struct Device {
    /// `DeviceName`.
    pub name: Option<String>,
    /// `ProductType`, e.g. `iPhone14,2`.
    pub product_type: Option<String>,
    /// iOS version.
    pub product_version: Option<String>,
    /// iOS build.
    pub build_version: Option<String>,
    /// Serial number.
    pub serial_number: Option<String>,
    /// UDID.
    pub udid: Option<String>,
}

/// The backup keybag's public parameters (never keys).
#[derive(Debug, Serialize)]
pub struct KeybagInfo {
    /// `VERS`.
    pub version: Option<u32>,
    /// `UUID`, hyphenated.
    pub uuid: Option<String>,
    /// `DPIC`: PBKDF2-SHA256 rounds.
    pub kdf_sha256_rounds: Option<u32>,
    /// `ITER`: PBKDF2-SHA1 rounds.
    pub kdf_sha1_rounds: Option<u32>,
    /// Number of class keys.
    pub class_keys: usize,
    /// Classes unlocked now.
    pub unlocked_classes: Vec<u32>,
    /// Classes that stayed sealed (device key needed, or unsupported).
    pub sealed_classes: Vec<u32>,
}

/// Everything `info` shows.
#[derive(Debug, Serialize)]
pub struct Info {
    /// The backup folder.
    pub backup: String,
    /// Encrypted or not.
    pub encrypted: bool,
    /// `WasPasscodeSet`.
    pub passcode_set: Option<bool>,
    /// Device identity.
    pub device: Device,
    /// Backup date (ISO 8601 UTC).
    pub backup_date: Option<String>,
    /// Backup date (Unix seconds).
    pub backup_date_unix: Option<i64>,
    /// Which plist the date came from.
    pub backup_date_source: Option<&'static str>,
    /// `Status.plist` `SnapshotState` (`finished` for a complete backup).
    pub snapshot_state: Option<String>,
    /// Keybag parameters, when there is a keybag.
    pub keybag: Option<KeybagInfo>,
    /// Counts by kind, by protection class and by domain (the audit's own counting).
    #[serde(flatten)]
    pub contents: Contents,
    /// Regular files whose blob is absent.
    pub missing_blobs: u64,
    /// Rows with an unsafe path, bad fileID or undecodable MBFile.
    pub bad_records: u64,
    /// Rows that could not be read at all.
    pub skipped_rows: u64,
}

/// Gathers the statistics (stats every blob path, in parallel).
pub fn gather(backup: &Backup, catalog: &Catalog) -> Info {
    let dev = backup.device();
    let date = [
        (backup.manifest().and_then(|m| m.date), "Manifest.plist"),
        (backup.info().and_then(|i| i.last_backup_date), "Info.plist"),
        (backup.status().and_then(|s| s.date), "Status.plist"),
    ]
    .into_iter()
    .find_map(|(d, src)| d.map(|d| (unix_seconds(d), src)));

    let keybag = backup.keybag().map(|kb| KeybagInfo {
        version: kb.version,
        uuid: kb.uuid_string(),
        kdf_sha256_rounds: kb.dpic,
        kdf_sha1_rounds: kb.iter,
        class_keys: kb.classes.len(),
        unlocked_classes: backup
            .keys()
            .map(|k| k.available().map(|c| c.0).collect())
            .unwrap_or_default(),
        sealed_classes: backup
            .keys()
            .map(|k| k.sealed().map(|(c, _)| c.0).collect())
            .unwrap_or_default(),
    });

    let mut info = Info {
        backup: backup.root().display().to_string(),
        encrypted: backup.is_encrypted(),
        passcode_set: backup.manifest().and_then(|m| m.was_passcode_set),
        device: Device {
            name: dev.device_name,
            product_type: dev.product_type,
            product_version: dev.product_version,
            build_version: dev.build_version,
            serial_number: dev.serial_number,
            udid: dev.udid,
        },
        backup_date: date.map(|(s, _)| iso8601(s)),
        backup_date_unix: date.map(|(s, _)| s),
        backup_date_source: date.map(|(_, src)| src),
        snapshot_state: backup.status().and_then(|s| s.snapshot_state.clone()),
        keybag,
        contents: contents(catalog),
        missing_blobs: 0,
        bad_records: catalog
            .records
            .iter()
            .filter(|r| r.problem.is_some())
            .count() as u64,
        skipped_rows: catalog.skipped.len() as u64,
    };
    info.missing_blobs = catalog
        .records
        .par_iter()
        .filter(|r| r.kind() == RecordKind::File)
        .filter_map(|r| backup.blob_path(r).ok())
        .filter(|p| std::fs::symlink_metadata(p).is_err())
        .count() as u64;
    info
}

/// Domains listed in text mode before the table switches to the largest ones.
const MAX_DOMAINS: usize = 15;

/// Cuts `s` to `max` characters, marking the cut with `…`.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

fn or_unknown(v: &Option<String>) -> String {
    v.as_deref().map_or_else(|| "unknown".into(), sanitize)
}

fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

fn class_list(classes: &[u32]) -> String {
    classes
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The summary lines (no per-domain table).
pub fn print_summary(out: &mut dyn Write, info: &Info) -> Result<()> {
    let d = &info.device;
    let row = |out: &mut dyn Write, k: &str, v: &str| writeln!(out, "{k:<14}{v}");
    row(out, "Backup", &sanitize(&info.backup))?;
    let mut device = or_unknown(&d.name);
    if let Some(p) = &d.product_type {
        device.push_str(&format!(" ({})", sanitize(p)));
    }
    row(out, "Device", &device)?;
    let mut ios = or_unknown(&d.product_version);
    if let Some(b) = &d.build_version {
        ios.push_str(&format!(" ({})", sanitize(b)));
    }
    row(out, "iOS", &ios)?;
    row(out, "UDID", &or_unknown(&d.udid))?;
    if d.serial_number.is_some() {
        row(out, "Serial", &or_unknown(&d.serial_number))?;
    }
    let date = match (&info.backup_date, info.backup_date_source) {
        (Some(date), Some(src)) => format!("{date} (from {src})"),
        _ => "unknown".into(),
    };
    row(out, "Backup date", &date)?;
    if let Some(state) = &info.snapshot_state {
        row(out, "Snapshot", &sanitize(state))?;
    }
    let enc = match (&info.keybag, info.encrypted) {
        (Some(kb), true) => {
            let mut s = "yes".to_string();
            if let (Some(a), Some(b)) = (kb.kdf_sha256_rounds, kb.kdf_sha1_rounds) {
                s.push_str(&format!(
                    " (key derivation: {} + {} PBKDF2 rounds)",
                    thousands(a.into()),
                    thousands(b.into())
                ));
            }
            s
        }
        _ => "no".into(),
    };
    row(out, "Encrypted", &enc)?;
    if let Some(kb) = info.keybag.as_ref().filter(|_| info.encrypted) {
        let mut s = format!(
            "{} of {} unlocked",
            kb.unlocked_classes.len(),
            plural(kb.class_keys as u64, "class key", "class keys")
        );
        if !kb.sealed_classes.is_empty() {
            s.push_str(&format!(
                "; sealed to the device: {} (--device-key-file opens them)",
                class_list(&kb.sealed_classes)
            ));
        }
        row(out, "Keys", &s)?;
    }
    row(out, "Passcode set", yes_no(info.passcode_set))?;
    let mut records = format!(
        "{}: {}, {}, {}",
        thousands(info.contents.records),
        plural(info.contents.files, "file", "files"),
        plural(info.contents.directories, "folder", "folders"),
        plural(info.contents.symlinks, "symlink", "symlinks")
    );
    if info.contents.other > 0 {
        records.push_str(&format!(", {} other", thousands(info.contents.other)));
    }
    row(out, "Records", &records)?;
    row(
        out,
        "Total size",
        &format!(
            "{} ({} bytes)",
            human_bytes(info.contents.total_bytes),
            thousands(info.contents.total_bytes)
        ),
    )?;
    row(out, "Missing blobs", &thousands(info.missing_blobs))?;
    if info.bad_records > 0 {
        row(
            out,
            "Bad records",
            &format!(
                "{} (unsafe path, bad fileID or undecodable; see `keybag verify`)",
                thousands(info.bad_records)
            ),
        )?;
    }
    if info.skipped_rows > 0 {
        row(out, "Skipped rows", &thousands(info.skipped_rows))?;
    }
    Ok(())
}

/// The full text: summary, then files by protection class and records by domain.
pub fn print_text(out: &mut dyn Write, info: &Info) -> Result<()> {
    print_summary(out, info)?;
    if !info.contents.by_class.is_empty() {
        writeln!(out, "\nFiles by protection class")?;
        let width = info
            .contents
            .by_class
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0);
        for c in &info.contents.by_class {
            writeln!(
                out,
                "  {:>2} {:<4} {:<width$} {:>9} {:>10}",
                c.class,
                c.short_name,
                c.name,
                thousands(c.files),
                human_bytes(c.bytes)
            )?;
        }
    }
    if !info.contents.by_domain.is_empty() {
        let mut domains: Vec<&DomainCount> = info.contents.by_domain.iter().collect();
        let shown = if domains.len() > MAX_DOMAINS + 5 {
            domains.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.records.cmp(&a.records)));
            writeln!(
                out,
                "\nLargest domains ({} of {}; --json lists all)",
                MAX_DOMAINS,
                thousands(domains.len() as u64)
            )?;
            MAX_DOMAINS
        } else {
            writeln!(out, "\nRecords by domain")?;
            domains.len()
        };
        let names: Vec<String> = domains[..shown]
            .iter()
            .map(|d| shorten(&sanitize(&d.domain), 50))
            .collect();
        let width = names
            .iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(0)
            .max(6);
        writeln!(
            out,
            "  {:<width$} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "domain", "records", "files", "folders", "symlinks", "size"
        )?;
        for (d, name) in domains[..shown].iter().zip(&names) {
            writeln!(
                out,
                "  {:<width$} {:>9} {:>9} {:>9} {:>9} {:>10}",
                name,
                thousands(d.records),
                thousands(d.files),
                thousands(d.directories),
                thousands(d.symlinks),
                human_bytes(d.bytes)
            )?;
        }
    }
    Ok(())
}

/// Runs `keybag info`.
pub fn run(args: &BackupArgs) -> Result<u8> {
    let backup = super::open(args)?;
    let catalog = super::catalog(&backup)?;
    let info = gather(&backup, &catalog);
    if args.json {
        print_json(&info)?;
    } else {
        let mut out = std::io::stdout().lock();
        print_text(&mut out, &info)?;
        out.flush()?;
    }
    Ok(crate::exit::OK)
}
