//! `cloud init`, `snapshots`, `check`, `forget`, `prune`, `key …`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use vault::forget::KeepPolicy;
use vault::keys::{Argon2Params, Params, RecoveryKey, Secret, MIN_MEMORY_KIB};
use vault::prune::PruneOptions;
use vault::Repository;

use super::repo::{self, RepoArgs};
use crate::exit;
use crate::output::{human_bytes, iso8601, plural, print_json, sanitize, thousands};

/// Password-hashing costs for new key files.
#[derive(Debug, Args)]
pub struct KdfArgs {
    /// Argon2id memory in MiB (at least 64; default 64).
    #[arg(long, value_name = "MIB", help_heading = "Password hashing")]
    pub kdf_memory: Option<u32>,
    /// Argon2id passes (default: calibrated to about half a second on this machine).
    #[arg(long, value_name = "N", help_heading = "Password hashing")]
    pub kdf_iterations: Option<u32>,
}

impl KdfArgs {
    fn params(&self) -> Result<Option<Argon2Params>> {
        let m = self.kdf_memory.unwrap_or(MIN_MEMORY_KIB / 1024);
        if m < MIN_MEMORY_KIB / 1024 {
            return Err(exit::usage(format!(
                "--kdf-memory: at least {} MiB",
                MIN_MEMORY_KIB / 1024
            )));
        }
        Ok(match self.kdf_iterations {
            Some(0) => return Err(exit::usage("--kdf-iterations: at least 1")),
            Some(t) => Some(Argon2Params {
                m_kib: m * 1024,
                t,
                p: 1,
            }),
            None if self.kdf_memory.is_some() => Some(Argon2Params::calibrate(m * 1024)),
            None => None,
        })
    }
}

/// `keybag cloud init REPO`.
#[derive(Debug, Args)]
pub struct InitCmd {
    /// Where: a folder (created), s3://bucket/prefix, or https://server (the account's
    /// repository on a `keybag serve`, after `keybag cloud login`).
    #[arg(value_name = "REPO")]
    pub repo: String,
    #[command(flatten)]
    pub server: super::servers::ServerAccess,
    /// The password, from the first line of FILE (else KEYBAG_NEW_REPO_PASSWORD, else a
    /// prompt asked twice).
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// Machine-readable output (it holds the recovery key).
    #[arg(long)]
    pub json: bool,
}

/// `keybag cloud snapshots`.
#[derive(Debug, Args)]
pub struct SnapshotsCmd {
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// `keybag cloud check`.
#[derive(Debug, Args)]
pub struct CheckCmd {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Also read every pack and open every blob.
    #[arg(long)]
    pub read_data: bool,
}

/// `keybag cloud forget`.
#[derive(Debug, Args)]
pub struct ForgetCmd {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Keep the newest N snapshots (of each device).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest of each of the last N hours that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest of each of the last N days.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest of each of the last N weeks.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest of each of the last N months.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest of each of the last N years.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep everything within this long of the newest (e.g. 30d).
    #[arg(long, value_name = "DURATION", value_parser = super::parse_duration)]
    pub keep_within: Option<std::time::Duration>,
    /// Show what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

/// `keybag cloud prune`.
#[derive(Debug, Args)]
pub struct PruneCmd {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// How long a pack stays marked before it is deleted; must exceed the longest push that
    /// may run beside a prune.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = super::parse_duration)]
    pub grace: std::time::Duration,
    /// Repack a pack when more than this percentage of it is unused.
    #[arg(long, value_name = "PERCENT", default_value_t = 20)]
    pub max_unused: u32,
    /// Re-seal everything sealed under an older key epoch (after `key rotate`).
    #[arg(long)]
    pub reseal: bool,
    /// Only report.
    #[arg(long)]
    pub dry_run: bool,
}

/// `keybag cloud key …`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List the ways in.
    List {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Add a password (--new-password-file, KEYBAG_NEW_REPO_PASSWORD or a prompt), or with
    /// --recovery a new recovery key (printed once).
    Add {
        #[command(flatten)]
        repo: RepoArgs,
        /// Make a recovery key instead of a password.
        #[arg(long)]
        recovery: bool,
        /// A name for it.
        #[arg(long, default_value = "password")]
        label: String,
        /// The new password from FILE.
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Remove a way in (by its ID prefix).
    Remove {
        #[command(flatten)]
        repo: RepoArgs,
        /// The key file's ID (a unique prefix is enough).
        id: String,
    },
    /// Retire a leaked master key: new data under new keys; only the new password and a new
    /// recovery key open the repository afterwards; `prune --reseal` re-seals old data.
    Rotate {
        #[command(flatten)]
        repo: RepoArgs,
        /// The new password from FILE.
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
}

fn show_recovery(rk: &RecoveryKey) {
    println!(
        "Recovery key (shown once; write it down and keep it apart from the password):\n\n    {}\n",
        rk.display().as_str()
    );
}

/// Runs `cloud init`.
pub fn init(cmd: &InitCmd) -> Result<u8> {
    let storage = super::servers::storage(&cmd.repo, &cmd.server)?;
    let pw = repo::new_password(cmd.new_password_file.as_deref(), &cmd.repo)?;
    let spinner = crate::progress::spinner("making the repository keys".into());
    let (r, rk) = Repository::init(storage, &pw, cmd.kdf.params()?, Params::default())?;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    if cmd.json {
        print_json(&serde_json::json!({
            "repository": r.id().to_hex(),
            "location": cmd.repo,
            "recovery_key": rk.display().as_str(),
        }))?;
    } else {
        println!(
            "Repository {} made at {}",
            r.id().short(),
            sanitize(&cmd.repo)
        );
        show_recovery(&rk);
    }
    Ok(exit::OK)
}

/// Runs `cloud snapshots`.
pub fn snapshots(cmd: &SnapshotsCmd) -> Result<u8> {
    let r = repo::open(&cmd.repo)?;
    let all = repo::snapshots(&cmd.repo, &r)?;
    if cmd.repo.json {
        let v: Vec<_> = all
            .iter()
            .map(|(id, s)| serde_json::json!({"id": id, "snapshot": s}))
            .collect();
        print_json(&v)?;
        return Ok(exit::OK);
    }
    if all.is_empty() {
        println!("No snapshots.");
    }
    for (id, s) in &all {
        let tag = |k: &str| s.tags.get(k).cloned().unwrap_or_else(|| "-".into());
        let backup_date = s
            .tags
            .get("backup_date")
            .and_then(|d| d.parse::<i64>().ok())
            .map_or_else(|| "-".into(), iso8601);
        println!(
            "{}  {}  #{:<3} {}  backup of {}  {} ({}), {} new",
            id.short(),
            iso8601(s.time_ms / 1000),
            s.seq,
            sanitize(&tag("device_name")),
            backup_date,
            plural(s.summary.files, "file", "files"),
            human_bytes(s.summary.bytes),
            human_bytes(s.summary.new_bytes)
        );
    }
    Ok(exit::OK)
}

/// Runs `cloud check`.
pub fn check(cmd: &CheckCmd) -> Result<u8> {
    let r = repo::open(&cmd.repo)?;
    // A store serving an older state than this client saw is reported first (exit 7).
    if let Ok(all) = r.snapshots() {
        let path = repo::state_file(&cmd.repo, &r);
        let mut st = vault::snapshot::ChainState::load(&path)?;
        st.observe(&all)?;
        st.save(&path)?;
    }
    let bar = crate::progress::Bytes::new(None, "reading packs");
    let progress = |n: u64| bar.add(n);
    let report = vault::check::check(&r, cmd.read_data, Some(&progress))?;
    bar.finish();
    let code = if report.problems.is_empty() {
        exit::OK
    } else {
        exit::DAMAGE
    };
    if cmd.repo.json {
        print_json(&report)?;
    } else {
        println!(
            "{}, {} packs, {} blobs{}",
            plural(report.snapshots as u64, "snapshot", "snapshots"),
            thousands(report.packs as u64),
            thousands(report.blobs as u64),
            if cmd.read_data {
                format!(", {} read", human_bytes(report.bytes_read))
            } else {
                String::new()
            }
        );
        if report.unindexed_packs > 0 {
            println!(
                "{} not indexed yet (left by an interrupted push: the next push indexes them)",
                plural(report.unindexed_packs as u64, "pack", "packs")
            );
        }
        if report.problems.is_empty() {
            println!("No problems found.");
        }
        for p in &report.problems {
            println!("  {}: {}", sanitize(&p.object), sanitize(&p.problem));
        }
    }
    if code != exit::OK {
        eprintln!(
            "keybag: {} found",
            plural(report.problems.len() as u64, "problem", "problems")
        );
    }
    Ok(code)
}

/// Runs `cloud forget`.
pub fn forget(cmd: &ForgetCmd) -> Result<u8> {
    let policy = KeepPolicy {
        last: cmd.keep_last,
        hourly: cmd.keep_hourly,
        daily: cmd.keep_daily,
        weekly: cmd.keep_weekly,
        monthly: cmd.keep_monthly,
        yearly: cmd.keep_yearly,
        within_ms: cmd.keep_within.map(|d| d.as_millis() as i64),
    };
    if policy.is_empty() {
        return Err(exit::usage(
            "forget needs a policy: --keep-last, --keep-daily, … (the newest snapshot of each \
             device is always kept)",
        ));
    }
    let r = repo::open(&cmd.repo)?;
    repo::snapshots(&cmd.repo, &r)?;
    let decisions = vault::forget::forget(&r, &policy, cmd.dry_run)?;
    if cmd.repo.json {
        print_json(&decisions)?;
        return Ok(exit::OK);
    }
    let removed = decisions.iter().filter(|d| d.reasons.is_empty()).count();
    for d in &decisions {
        println!(
            "{} {}  {}  {}",
            if d.reasons.is_empty() {
                "remove"
            } else {
                "keep  "
            },
            d.id.short(),
            iso8601(d.time_ms / 1000),
            d.reasons.join(", ")
        );
    }
    println!(
        "{} {}{}",
        plural(removed as u64, "snapshot", "snapshots"),
        if cmd.dry_run {
            "would be removed"
        } else {
            "removed"
        },
        if removed > 0 && !cmd.dry_run {
            " (run prune to free their space)"
        } else {
            ""
        }
    );
    Ok(exit::OK)
}

/// Runs `cloud prune`.
pub fn prune(cmd: &PruneCmd) -> Result<u8> {
    let r = repo::open(&cmd.repo)?;
    repo::snapshots(&cmd.repo, &r)?;
    let report = vault::prune::prune(
        &r,
        &PruneOptions {
            grace: cmd.grace,
            max_unused: f64::from(cmd.max_unused.min(100)) / 100.0,
            reseal: cmd.reseal,
            dry_run: cmd.dry_run,
            now_ms: None,
        },
    )?;
    if cmd.repo.json {
        print_json(&report)?;
        return Ok(exit::OK);
    }
    println!(
        "{} packs: {} marked now, {} waiting for their grace period, {} unmarked (needed again), \
         {} repacked, {} deleted ({})",
        thousands(report.packs as u64),
        report.marked,
        report.waiting,
        report.unmarked,
        report.repacked,
        report.deleted,
        human_bytes(report.deleted_bytes)
    );
    if report.resealed_snapshots > 0 {
        println!(
            "{} re-sealed under the current key",
            plural(report.resealed_snapshots as u64, "snapshot", "snapshots")
        );
    }
    Ok(exit::OK)
}

/// Runs `cloud key …`.
pub fn key(cmd: &KeyCommand) -> Result<u8> {
    match cmd {
        KeyCommand::List { repo: args } => {
            let r = repo::open(args)?;
            let keys = r.keys()?;
            if args.json {
                print_json(&keys)?;
                return Ok(exit::OK);
            }
            for k in keys {
                println!(
                    "{} {:<8} {}  {}{}",
                    k.id.short(),
                    k.kind,
                    iso8601(k.created),
                    sanitize(&k.label),
                    if k.current {
                        "  (opened this session)"
                    } else {
                        ""
                    }
                );
            }
            Ok(exit::OK)
        }
        KeyCommand::Add {
            repo: args,
            recovery,
            label,
            new_password_file,
            kdf,
        } => {
            let r = repo::open(args)?;
            if *recovery {
                let rk = RecoveryKey::generate();
                let id = r.add_key(&Secret::Recovery(&rk), "recovery", None)?;
                println!("Key {} added.", id.short());
                show_recovery(&rk);
            } else {
                let pw = repo::new_password(new_password_file.as_deref(), &args.repo)?;
                let id = r.add_key(&Secret::Password(&pw), label, kdf.params()?)?;
                println!("Key {} added.", id.short());
            }
            Ok(exit::OK)
        }
        KeyCommand::Remove { repo: args, id } => {
            let r = repo::open(args)?;
            let matching: Vec<_> = r
                .keys()?
                .into_iter()
                .filter(|k| k.id.to_hex().starts_with(id.as_str()))
                .collect();
            let k = match matching.as_slice() {
                [k] => k.clone(),
                [] => return Err(exit::other(format!("{id}: no such key"))),
                _ => {
                    return Err(exit::usage(format!(
                        "{id}: more than one key starts with it"
                    )))
                }
            };
            r.remove_key(&k.id)?;
            println!("Key {} removed.", k.id.short());
            Ok(exit::OK)
        }
        KeyCommand::Rotate {
            repo: args,
            new_password_file,
            kdf,
        } => {
            let mut r = repo::open(args)?;
            let pw = repo::new_password(new_password_file.as_deref(), &args.repo)?;
            let rk = r.rotate(&pw, kdf.params()?)?;
            println!(
                "New key epoch {}: data written from now on is sealed under new keys. Every \
                 other key was removed; the new password and this recovery key open the \
                 repository. Run `keybag cloud prune --reseal` to re-seal the old data.",
                r.keyring().current().epoch
            );
            show_recovery(&rk);
            Ok(exit::OK)
        }
    }
}
