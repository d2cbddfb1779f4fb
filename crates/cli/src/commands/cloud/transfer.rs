//! `cloud push`, `pull`, `ls`, `cat`, `diff`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use cloud::browse;
use cloud::model::RecKind;
use cloud::pull::PullOptions;
use cloud::push::PushOptions;
use dataprotection::KdfLimits;
use mobilebackup::{Credentials, Secret};

use super::repo::{self, RepoArgs};
use super::SnapshotArg;
use crate::commands::Filter;
use crate::exit;
use crate::output::{human_bytes, iso8601, plural, print_json, sanitize, thousands, warn};
use crate::progress::Bytes;
use crate::secrets::{read_key_file, read_password_file, PASSWORD_ENV};

/// `keybag cloud push BACKUP --repo REPO`.
#[derive(Debug, Args)]
pub struct PushCmd {
    /// The backup folder (the one holding Manifest.db).
    #[arg(value_name = "BACKUP")]
    pub backup: PathBuf,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The backup's password, from the first line of FILE (else KEYBAG_PASSWORD): its files
    /// are then stored as re-keyable plaintext, deduplicated across backups.
    #[arg(long, value_name = "FILE", help_heading = "The backup")]
    pub password_file: Option<PathBuf>,
    /// The backup's derived key from FILE instead of its password (no KDF).
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "The backup",
        conflicts_with = "password_file"
    )]
    pub derived_key_file: Option<PathBuf>,
}

/// `keybag cloud pull SNAPSHOT OUT --repo REPO`.
#[derive(Debug, Args)]
pub struct PullCmd {
    #[command(flatten)]
    pub snapshot: SnapshotArg,
    /// The backup folder to make (it must not exist).
    #[arg(value_name = "OUT")]
    pub out: PathBuf,
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// `keybag cloud ls SNAPSHOT --repo REPO`.
#[derive(Debug, Args)]
pub struct LsCmd {
    #[command(flatten)]
    pub snapshot: SnapshotArg,
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub filter: crate::args::FilterArgs,
    /// Also show kind, size, class, mode and mtime.
    #[arg(short, long)]
    pub long: bool,
}

/// `keybag cloud cat SNAPSHOT DOMAIN PATH --repo REPO`.
#[derive(Debug, Args)]
pub struct CatCmd {
    #[command(flatten)]
    pub snapshot: SnapshotArg,
    /// The record's domain.
    pub domain: String,
    /// The record's relativePath.
    pub path: String,
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// `keybag cloud diff SNAP1 SNAP2 --repo REPO`.
#[derive(Debug, Args)]
pub struct DiffCmd {
    /// The older snapshot.
    pub first: String,
    /// The newer snapshot.
    pub second: String,
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// What unlocks the backup being pushed, if anything does.
fn backup_credentials(cmd: &PushCmd) -> Result<Option<Credentials>> {
    let secret = if let Some(p) = &cmd.derived_key_file {
        Secret::Passkey(read_key_file::<32>(p, "--derived-key-file")?)
    } else if let Some(p) = &cmd.password_file {
        Secret::Password(read_password_file(p, "--password-file")?)
    } else {
        use std::os::unix::ffi::OsStringExt;
        match std::env::var_os(PASSWORD_ENV).map(|v| zeroize::Zeroizing::new(v.into_vec())) {
            Some(pw) if !pw.is_empty() => Secret::Password(pw),
            _ => return Ok(None),
        }
    };
    Ok(Some(Credentials {
        secret,
        device_key: None,
        limits: KdfLimits::default(),
    }))
}

/// Bytes of the regular files under `dir` (for the progress bar).
fn folder_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

/// Runs `cloud push`.
pub fn push(cmd: &PushCmd) -> Result<u8> {
    let creds = backup_credentials(cmd)?;
    let open_repo = || {
        repo::open(&cmd.repo).and_then(|r| {
            // A store that rolled back is refused before anything is written.
            repo::snapshots(&cmd.repo, &r)?;
            Ok(r)
        })
    };
    // Given the password, the backup's KDF (10 million PBKDF2 rounds, about a second) runs
    // on a thread of its own while the repository is opened (its own KDF) and checked. A
    // derived key opens the backup at once: then one after the other, so that the
    // repository's Argon2id memory is not held while the backup is read.
    let slow_kdf = matches!(
        creds.as_ref().map(|c| &c.secret),
        Some(mobilebackup::Secret::Password(_))
    );
    let (opened, r, total) = if slow_kdf {
        std::thread::scope(|s| {
            let opening = s.spawn(|| cloud::push::open_backup(&cmd.backup, creds.as_ref()));
            let r = open_repo();
            let total = folder_bytes(&cmd.backup);
            let opened = opening.join().expect("the opening thread does not panic");
            (opened, r, total)
        })
    } else {
        let r = open_repo()?;
        let opened = cloud::push::open_backup(&cmd.backup, creds.as_ref());
        (opened, Ok(r), folder_bytes(&cmd.backup))
    };
    let r = r?;
    let opened = opened?;
    let bar = Bytes::new(Some(total), "pushing");
    let progress = |n: u64| bar.add(n);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let report = cloud::push::push_opened(
        &r,
        &cmd.backup,
        opened,
        &PushOptions {
            credentials: None,
            host,
            state: Some(repo::state_file(&cmd.repo, &r)),
            progress: Some(&progress),
        },
    )?;
    bar.finish();
    if cmd.repo.json {
        print_json(&report)?;
        return Ok(exit::OK);
    }
    println!(
        "Snapshot {} of {} ({}) pushed to {}",
        report.snapshot.short(),
        sanitize(report.device.name.as_deref().unwrap_or("an unnamed device")),
        sanitize(&report.chain),
        sanitize(&cmd.repo.repo)
    );
    println!(
        "  {} ({}): {} stored as re-keyable plaintext, {} as they are",
        plural(report.files, "file", "files"),
        human_bytes(report.bytes),
        thousands(report.rekeyed),
        thousands(report.raw)
    );
    if report.unchanged > 0 {
        println!(
            "  {} unchanged since the previous snapshot (not read again)",
            thousands(report.unchanged)
        );
    }
    println!(
        "  new: {} of content, {} uploaded (compressed, encrypted)",
        human_bytes(report.new_bytes),
        human_bytes(report.stored_bytes)
    );
    for n in &report.notes {
        warn(n);
    }
    Ok(exit::OK)
}

/// Runs `cloud pull`.
pub fn pull(cmd: &PullCmd) -> Result<u8> {
    if std::fs::symlink_metadata(&cmd.out).is_ok() {
        return Err(exit::other(format!(
            "{}: already exists; pull makes a new folder",
            cmd.out.display()
        )));
    }
    let r = repo::open(&cmd.repo)?;
    repo::snapshots(&cmd.repo, &r)?;
    let bar = Bytes::new(None, "pulling");
    let progress = |n: u64| bar.add(n);
    let report = cloud::pull::pull(
        &r,
        &cmd.snapshot.snapshot,
        &cmd.out,
        &PullOptions {
            progress: Some(&progress),
        },
    )?;
    bar.finish();
    let code = if report.failed.is_empty() {
        exit::OK
    } else {
        exit::DAMAGE
    };
    if cmd.repo.json {
        print_json(&report)?;
    } else {
        println!(
            "Pulled snapshot {} into {}: {} ({}), each checked against its SHA-1",
            report.snapshot.short(),
            sanitize(&report.out.display().to_string()),
            plural(report.files, "file", "files"),
            human_bytes(report.bytes)
        );
        for (name, why) in report.failed.iter().take(20) {
            println!("  not written: {}: {}", sanitize(name), sanitize(why));
        }
    }
    if code != exit::OK {
        eprintln!(
            "keybag: {} could not be rebuilt (damaged or missing in the repository); the rest \
             was written",
            plural(report.failed.len() as u64, "file", "files")
        );
    }
    Ok(code)
}

/// Runs `cloud ls`.
pub fn ls(cmd: &LsCmd) -> Result<u8> {
    let filter = Filter::new(&cmd.filter)?;
    let r = repo::open(&cmd.repo)?;
    repo::snapshots(&cmd.repo, &r)?;
    let o = browse::open(&r, &cmd.snapshot.snapshot)?;
    let records: Vec<_> = o
        .annex
        .records
        .iter()
        .filter(|rec| filter.matches_parts(&rec.domain, &rec.path))
        .collect();
    if cmd.repo.json {
        print_json(&records)?;
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    for rec in records {
        let line = if rec.path.is_empty() {
            rec.domain.clone()
        } else {
            format!("{}/{}", rec.domain, rec.path)
        };
        if cmd.long {
            let size = if rec.kind == RecKind::File {
                human_bytes(rec.size)
            } else {
                "-".into()
            };
            writeln!(
                out,
                "{:<8} {:>10} {:>2} {:06o} {} {}",
                rec.kind.name(),
                size,
                rec.class,
                rec.mode,
                iso8601(rec.mtime),
                sanitize(&line)
            )?;
        } else {
            writeln!(out, "{}", sanitize(&line))?;
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

/// Runs `cloud cat`.
pub fn cat(cmd: &CatCmd) -> Result<u8> {
    let r = repo::open(&cmd.repo)?;
    repo::snapshots(&cmd.repo, &r)?;
    let o = browse::open(&r, &cmd.snapshot.snapshot)?;
    let mut out = std::io::stdout().lock();
    browse::cat(&r, &o, &cmd.domain, &cmd.path, &mut out)?;
    out.flush()?;
    Ok(exit::OK)
}

/// Runs `cloud diff`.
pub fn diff(cmd: &DiffCmd) -> Result<u8> {
    let r = repo::open(&cmd.repo)?;
    repo::snapshots(&cmd.repo, &r)?;
    let a = browse::open(&r, &cmd.first)?;
    let b = browse::open(&r, &cmd.second)?;
    let d = browse::diff(&a, &b);
    if cmd.repo.json {
        print_json(&d)?;
        return Ok(exit::OK);
    }
    println!(
        "{} → {}: {} added, {} removed, {} changed ({} with only their metadata changed)",
        a.id.short(),
        b.id.short(),
        thousands(d.added.len() as u64),
        thousands(d.removed.len() as u64),
        thousands(d.changed.len() as u64),
        thousands(d.metadata_changed.len() as u64)
    );
    for (domain, (add, rem, chg)) in d.by_domain() {
        println!("  {}: +{add} -{rem} ~{chg}", sanitize(&domain));
    }
    let show = |sign: char, domain: &str, path: &str| {
        println!("{sign} {}/{}", sanitize(domain), sanitize(path));
    };
    for rec in &d.added {
        show('+', &rec.domain, &rec.path);
    }
    for rec in &d.removed {
        show('-', &rec.domain, &rec.path);
    }
    for (rec, _) in &d.changed {
        show('~', &rec.domain, &rec.path);
    }
    Ok(exit::OK)
}
