//! One module per command, plus what they share: opening a backup, record
//! filters and the problem report.

pub mod audit;
pub mod cat;
pub mod cloud;
pub mod decrypt;
pub mod demo;
mod demo_cloud;
pub mod device;
pub mod device_backup;
pub mod device_cloud;
pub mod extract;
pub mod info;
pub mod keychain;
pub mod ls;
pub mod passwd;
pub mod serve;
pub mod verify;

use std::io::Write;

use anyhow::Result;
use globset::{GlobBuilder, GlobMatcher};
use mobilebackup::extract::{Problem, ProblemKind};
use mobilebackup::{Backup, Catalog, Record};

use crate::args::{BackupArgs, FilterArgs};
use crate::output::{plural, sanitize, warn};
use crate::{exit, secrets};

/// How many problems text output lists before summarising the rest.
pub const SHOWN_PROBLEMS: usize = 20;

/// Opens the backup named in `args` and unlocks it if it is encrypted.
pub fn open(args: &BackupArgs) -> Result<Backup> {
    let keys = secrets::parse_keys(args)?;
    let mut backup = Backup::open(&args.dir)?;
    secrets::unlock(&mut backup, args, keys)?;
    Ok(backup)
}

/// Reads `Manifest.db`, warning about rows that could not be read at all.
pub fn catalog(backup: &Backup) -> Result<Catalog> {
    let catalog = backup.catalog()?;
    if !catalog.skipped.is_empty() {
        warn(&format!(
            "{} of Manifest.db skipped: {}",
            plural(catalog.skipped.len() as u64, "row", "rows"),
            catalog.skipped[0]
        ));
    }
    Ok(catalog)
}

/// `--domain` and `--path` globs.
#[derive(Default)]
pub struct Filter {
    domain: Option<GlobMatcher>,
    path: Option<GlobMatcher>,
}

fn glob(option: &str, pattern: &Option<String>) -> Result<Option<GlobMatcher>> {
    pattern
        .as_deref()
        .map(|p| {
            GlobBuilder::new(p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| exit::usage(format!("{option}: invalid glob: {e}")))
        })
        .transpose()
}

impl Filter {
    /// Compiles the globs (exit 2 on a bad pattern).
    pub fn new(args: &FilterArgs) -> Result<Self> {
        Ok(Self {
            domain: glob("--domain", &args.domain)?,
            path: glob("--path", &args.path)?,
        })
    }

    /// True when the record is selected.
    pub fn matches(&self, rec: &Record) -> bool {
        self.matches_parts(&rec.domain, &rec.relative_path)
    }

    /// True when a record of `domain` at `path` is selected.
    pub fn matches_parts(&self, domain: &str, path: &str) -> bool {
        self.domain.as_ref().is_none_or(|g| g.is_match(domain))
            && self.path.as_ref().is_none_or(|g| g.is_match(path))
    }

    /// True when no filter was given.
    pub fn is_empty(&self) -> bool {
        self.domain.is_none() && self.path.is_none()
    }
}

/// Sorts records by domain, then relative path (byte order).
pub fn sort_records(records: &mut [Record]) {
    records.sort_by(|a, b| {
        a.domain
            .cmp(&b.domain)
            .then_with(|| a.relative_path.cmp(&b.relative_path))
    });
}

/// `missing`, `damaged`, …, as shown in text output.
pub fn kind_name(kind: ProblemKind) -> &'static str {
    match kind {
        ProblemKind::Missing => "missing",
        ProblemKind::DigestMismatch => "digest-mismatch",
        ProblemKind::Damaged => "damaged",
        ProblemKind::Sealed => "sealed",
        ProblemKind::BadRecord => "bad-record",
        ProblemKind::SizeMismatch => "size-mismatch",
        ProblemKind::SymlinkSkipped => "symlink-skipped",
    }
}

/// Counts by kind, e.g. `1,079 missing, 2 bad-record`.
pub fn problem_counts(problems: &[Problem]) -> String {
    let mut counts: Vec<(ProblemKind, u64)> = Vec::new();
    for p in problems {
        match counts.iter_mut().find(|(k, _)| *k == p.kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((p.kind, 1)),
        }
    }
    counts.sort();
    counts
        .iter()
        .map(|(k, n)| format!("{} {}", crate::output::thousands(*n), kind_name(*k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lists problems: the first [`SHOWN_PROBLEMS`], then how many more.
pub fn print_problems(out: &mut dyn Write, problems: &[Problem]) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{} ({}):",
        plural(problems.len() as u64, "problem", "problems"),
        problem_counts(problems)
    )?;
    for p in problems.iter().take(SHOWN_PROBLEMS) {
        writeln!(
            out,
            "  {:<15}  {}: {}",
            kind_name(p.kind),
            sanitize(&p.path),
            sanitize(&p.message)
        )?;
    }
    if problems.len() > SHOWN_PROBLEMS {
        writeln!(
            out,
            "  ... and {} more (--json lists them all)",
            crate::output::thousands((problems.len() - SHOWN_PROBLEMS) as u64)
        )?;
    }
    Ok(())
}

/// The exit code of a report, with a one-line note on stderr when data is damaged or missing.
pub fn damage_exit(problems: &[Problem], done: &str) -> u8 {
    let damaged = problems.iter().filter(|p| p.kind.is_damage()).count() as u64;
    if damaged == 0 {
        return exit::OK;
    }
    eprintln!(
        "keybag: {} damaged, missing or unreadable; {done}",
        plural(damaged, "file or record is", "files or records are")
    );
    exit::DAMAGE
}
