//! `keybag ls`: one record a line.

use std::io::{BufWriter, Write};

use anyhow::Result;
use mobilebackup::{Record, RecordKind};
use serde::Serialize;

use crate::args::{BackupArgs, FilterArgs};
use crate::output::{human_bytes, iso8601, plural, print_json, sanitize, warn};

use super::Filter;

/// One record, for `--json`.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// `domain/relativePath` (just the domain for its root).
    pub path: String,
    /// Domain.
    pub domain: &'a str,
    /// relativePath.
    pub relative_path: &'a str,
    /// `file`, `dir`, `symlink` or `flags=N`.
    pub kind: String,
    /// fileID (names the blob).
    pub file_id: &'a str,
    /// Recorded size in bytes.
    pub size: Option<u64>,
    /// Protection class number.
    pub protection_class: Option<u32>,
    /// `st_mode` (decimal; type bits included).
    pub mode: Option<u32>,
    /// Modification time, Unix seconds.
    pub mtime: Option<i64>,
    /// Modification time, ISO 8601 UTC.
    pub mtime_utc: Option<String>,
    /// Symlink target.
    pub target: Option<&'a str>,
    /// Why the record is unsafe or unreadable, if it is.
    pub problem: Option<&'a str>,
}

impl<'a> Entry<'a> {
    fn new(rec: &'a Record) -> Self {
        let f = rec.file.as_ref();
        Entry {
            path: rec.display_path(),
            domain: &rec.domain,
            relative_path: &rec.relative_path,
            kind: rec.kind().name(),
            file_id: &rec.file_id,
            size: f.map(|f| f.size),
            protection_class: f.map(|f| f.protection_class),
            mode: f.map(|f| f.mode),
            mtime: f.map(|f| f.mtime),
            mtime_utc: f.map(|f| iso8601(f.mtime)),
            target: f.and_then(|f| f.target.as_deref()),
            problem: rec.problem.as_deref(),
        }
    }
}

/// Writes the listing: paths only, or the long form
/// `kind size class mode mtime path [-> target]`.
pub fn print_text(out: &mut dyn Write, records: &[&Record], long: bool) -> Result<()> {
    for rec in records {
        let path = sanitize(&rec.display_path());
        if !long {
            writeln!(out, "{path}")?;
            continue;
        }
        let kind = rec.kind().name();
        match &rec.file {
            Some(f) => {
                let size = if rec.kind() == RecordKind::File {
                    human_bytes(f.size)
                } else {
                    "-".into()
                };
                let class = if rec.kind() == RecordKind::File {
                    rec.protection_class().short_name()
                } else {
                    "-"
                };
                write!(
                    out,
                    "{kind:<7} {size:>9}  {class:<2} {:06o}  {}  {path}",
                    f.mode,
                    iso8601(f.mtime)
                )?;
                if let Some(t) = &f.target {
                    write!(out, " -> {}", sanitize(t))?;
                }
            }
            None => write!(
                out,
                "{kind:<7} {:>9}  {:<2} {:6}  {:20}  {path}",
                "?", "?", "?", "?"
            )?,
        }
        if let Some(p) = &rec.problem {
            write!(out, "  [bad record: {}]", sanitize(p))?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// Runs `keybag ls`.
pub fn run(args: &BackupArgs, filter: &FilterArgs, long: bool) -> Result<u8> {
    let filter = Filter::new(filter)?;
    let backup = super::open(args)?;
    let mut catalog = super::catalog(&backup)?;
    super::sort_records(&mut catalog.records);
    let records: Vec<&Record> = catalog
        .records
        .iter()
        .filter(|r| filter.matches(r))
        .collect();
    let bad = records.iter().filter(|r| r.problem.is_some()).count() as u64;
    if args.json {
        let entries: Vec<Entry> = records.iter().map(|r| Entry::new(r)).collect();
        print_json(&entries)?;
    } else {
        let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        print_text(&mut out, &records, long)?;
        out.flush()?;
    }
    if bad > 0 {
        warn(&format!(
            "{} unsafe or undecodable (`keybag verify` lists why)",
            plural(bad, "record is", "records are")
        ));
    }
    Ok(crate::exit::OK)
}
