//! Synthetic backups for benchmarks: generates a source tree of random (incompressible) files
//! and writes an encrypted (or plain) backup of it with [`BackupWriter`], timing each step.
//!
//! ```text
//! synth gen   --source DIR --files N --mib M [--seed S]
//! synth write --source DIR --out BACKUP [--files N --mib M [--seed S]]
//!             [--plain] [--dpic N] [--domain D] [--key-file FILE] [--report FILE]
//! ```
//!
//! * `gen` creates `DIR` (which must not exist) holding `N` files totalling `M` MiB, with
//!   log-uniformly spread sizes (a 1000× range), 100 files per folder, laid out as
//!   `DIR/<domain>/Library/bench/dNNN/fNNNNN.bin` over `HomeDomain` (half of the files),
//!   `CameraRollDomain` and `AppDomain-com.example.bench`. The tree is built in
//!   `DIR.partial-<pid>` and renamed into place, so an interrupted run leaves no `DIR`.
//! * `write` adds every regular file under `DIR` (streamed from disk: `Content::File`) to a new
//!   backup at `BACKUP` (which must not exist) with `add_all` (parallel), then `finish`es it.
//!   Each top-level folder of `DIR` is a domain (files directly in `DIR` go to `HomeDomain`)
//!   unless `--domain D` puts everything in `D`. With `--files`/`--mib`, `DIR` is generated
//!   first when it does not exist yet. The password comes from the `KEYBAG_PASSWORD`
//!   environment variable (never the command line); `--plain` writes an unencrypted backup and
//!   `--dpic` overrides Apple's 10,000,000 PBKDF2-SHA256 rounds (tests only).
//!   `--key-file FILE` re-opens the finished backup, derives its 32-byte passkey from the
//!   password (one more KDF run, not counted in the writer time) and writes it as hex to FILE
//!   (mode 0600), for `keybag --derived-key-file FILE`.
//!   `--report FILE` appends one JSON line with the timings to FILE.
//!
//! Timings printed: `kdf` (`BackupWriter::create` and waiting for its background KDF, the
//! one-time KDF of an encrypted backup),
//! `add` (`add_all`: read, encrypt, write every blob), `finish` (Manifest.db and the plists) and
//! `writer step` = add + finish.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dataprotection::KdfLimits;
use mobilebackup::writer::{BackupWriter, Content, Encryption, NewRecord, WriterOptions};
use mobilebackup::Backup;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const MIB: u64 = 1 << 20;
const FILES_PER_DIR: usize = 100;
const USAGE: &str = "usage:
  synth gen   --source DIR --files N --mib M [--seed S]
  synth write --source DIR --out BACKUP [--files N --mib M [--seed S]]
              [--plain] [--dpic N] [--domain D] [--key-file FILE] [--report FILE]
The password of an encrypted backup is read from the KEYBAG_PASSWORD environment variable.";

#[derive(Default)]
struct Opts {
    source: Option<PathBuf>,
    out: Option<PathBuf>,
    files: Option<usize>,
    mib: Option<u64>,
    seed: u64,
    plain: bool,
    dpic: Option<u32>,
    domain: Option<String>,
    key_file: Option<PathBuf>,
    report: Option<PathBuf>,
}

fn parse(args: &[String]) -> Res<Opts> {
    let mut o = Opts {
        seed: 1,
        ..Opts::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--source" => o.source = Some(val()?.into()),
            "--out" => o.out = Some(val()?.into()),
            "--files" => o.files = Some(val()?.parse()?),
            "--mib" => o.mib = Some(val()?.parse()?),
            "--seed" => o.seed = val()?.parse()?,
            "--dpic" => o.dpic = Some(val()?.parse()?),
            "--domain" => o.domain = Some(val()?),
            "--key-file" => o.key_file = Some(val()?.into()),
            "--report" => o.report = Some(val()?.into()),
            "--plain" => o.plain = true,
            _ => return Err(format!("unknown argument {a:?}").into()),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("gen") => parse(&args[1..]).and_then(|o| cmd_gen(&o)),
        Some("write") => parse(&args[1..]).and_then(|o| cmd_write(&o)),
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synth: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_gen(o: &Opts) -> Res<()> {
    let source = o.source.as_deref().ok_or("gen needs --source DIR")?;
    let files = o.files.ok_or("gen needs --files N")?;
    let mib = o.mib.ok_or("gen needs --mib M")?;
    generate(source, files, mib * MIB, o.seed)
}

/// Sizes of `n` files summing to exactly `total` bytes, log-uniform over a 1000× range.
fn sizes(n: usize, total: u64, rng: &mut StdRng) -> Vec<u64> {
    let weights: Vec<f64> = (0..n)
        .map(|_| (rng.gen::<f64>() * 1000f64.ln()).exp())
        .collect();
    let sum: f64 = weights.iter().sum();
    let mut out: Vec<u64> = weights
        .iter()
        .map(|w| (total as f64 * w / sum) as u64)
        .collect();
    let assigned: u64 = out.iter().sum();
    if let Some(last) = out.last_mut() {
        *last += total - assigned;
    }
    out
}

fn domain_of(i: usize) -> &'static str {
    match i % 10 {
        0..=4 => "HomeDomain",
        5..=7 => "CameraRollDomain",
        _ => "AppDomain-com.example.bench",
    }
}

fn generate(dir: &Path, n: usize, total: u64, seed: u64) -> Res<()> {
    if n == 0 {
        return Err("--files must be at least 1".into());
    }
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()).into());
    }
    let name = dir.file_name().ok_or("--source needs a folder name")?;
    let partial = dir.with_file_name(format!(
        "{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let sizes = sizes(n, total, &mut rng);
    let mut buf = vec![0u8; MIB as usize];
    let result = (|| -> Res<()> {
        for (i, &size) in sizes.iter().enumerate() {
            let folder = partial
                .join(domain_of(i))
                .join(format!("Library/bench/d{:03}", i / FILES_PER_DIR));
            fs::create_dir_all(&folder)?;
            let mut f = File::create(folder.join(format!("f{i:05}.bin")))?;
            let mut left = size;
            while left > 0 {
                let k = left.min(MIB) as usize;
                rng.fill_bytes(&mut buf[..k]);
                f.write_all(&buf[..k])?;
                left -= k as u64;
            }
        }
        fs::rename(&partial, dir)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    result?;
    println!(
        "synth: generated {n} files, {total} bytes ({:.1} MiB) in {} ({:.2} s)",
        total as f64 / MIB as f64,
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Regular files under `dir`, sorted (symlinks and other special files are skipped).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Res<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            walk(&entry.path(), out)?;
        } else if ty.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn records(source: &Path, domain: Option<&str>) -> Res<(Vec<NewRecord>, u64)> {
    let mut paths = Vec::new();
    walk(source, &mut paths)?;
    paths.sort();
    let mut recs = Vec::with_capacity(paths.len());
    let mut bytes = 0u64;
    for p in paths {
        let rel = p.strip_prefix(source)?;
        let parts: Vec<&str> = rel
            .components()
            .map(|c| {
                c.as_os_str()
                    .to_str()
                    .ok_or_else(|| format!("{} is not UTF-8", p.display()))
            })
            .collect::<std::result::Result<_, _>>()?;
        let (dom, rel) = match domain {
            Some(d) => (d.to_string(), parts.join("/")),
            None if parts.len() == 1 => ("HomeDomain".to_string(), parts[0].to_string()),
            None => (parts[0].to_string(), parts[1..].join("/")),
        };
        let meta = fs::metadata(&p)?;
        bytes += meta.len();
        let mtime = meta.modified().map(unix_secs).unwrap_or(0);
        let mut rec = NewRecord::file(dom, rel, Content::File(p));
        rec.mtime = mtime;
        rec.ctime = mtime;
        rec.birth = mtime;
        recs.push(rec);
    }
    Ok((recs, bytes))
}

fn cmd_write(o: &Opts) -> Res<()> {
    let source = o.source.as_deref().ok_or("write needs --source DIR")?;
    let out = o.out.as_deref().ok_or("write needs --out BACKUP")?;
    if out.exists() {
        return Err(format!("{} already exists", out.display()).into());
    }
    if !source.exists() {
        match (o.files, o.mib) {
            (Some(n), Some(m)) => generate(source, n, m * MIB, o.seed)?,
            _ => {
                return Err(format!(
                    "{} does not exist (give --files and --mib to generate it)",
                    source.display()
                )
                .into())
            }
        }
    }
    let password = if o.plain {
        if o.key_file.is_some() {
            return Err("--key-file needs an encrypted backup (drop --plain)".into());
        }
        None
    } else {
        Some(
            std::env::var("KEYBAG_PASSWORD")
                .map_err(|_| "set KEYBAG_PASSWORD (or pass --plain)")?,
        )
    };

    let (recs, bytes) = records(source, o.domain.as_deref())?;
    let n = recs.len();
    let encryption = password.as_ref().map(|pw| {
        let mut e = Encryption::new(pw.as_bytes());
        if let Some(d) = o.dpic {
            e.dpic = d;
        }
        e
    });
    let dpic = encryption.as_ref().map(|e| e.dpic);
    let opts = WriterOptions {
        encryption,
        ..WriterOptions::default()
    };

    let t = Instant::now();
    let mut w = BackupWriter::create(out, opts)?;
    // The writer runs the KDF on its own thread beside the file work; waiting for it here
    // keeps the writer step measured apart from the one-time KDF, as BENCHMARKS.md §4 says.
    w.kept_keybag()?;
    let kdf = t.elapsed().as_secs_f64();
    let t = Instant::now();
    w.add_all(recs)?;
    let add = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let folder = w.finish()?;
    let finish = t.elapsed().as_secs_f64();
    let write = add + finish;
    let mb_s = bytes as f64 / 1e6 / write;

    println!(
        "synth: wrote {} backup of {n} files, {bytes} bytes, to {}",
        if password.is_some() {
            "an encrypted"
        } else {
            "a plain"
        },
        folder.display()
    );
    println!("synth: kdf (create)   {kdf:8.3} s");
    println!("synth: add_all        {add:8.3} s");
    println!("synth: finish         {finish:8.3} s");
    println!("synth: writer step    {write:8.3} s  ({mb_s:.0} MB/s)");

    if let (Some(key_file), Some(pw)) = (&o.key_file, &password) {
        let t = Instant::now();
        let key = Backup::open(&folder)?.derive_passkey(pw.as_bytes(), &KdfLimits::default())?;
        let mut f = key_file_options().open(key_file)?;
        writeln!(f, "{}", key.to_hex())?;
        println!(
            "synth: derived key written to {} ({:.3} s)",
            key_file.display(),
            t.elapsed().as_secs_f64()
        );
    }

    if let Some(report) = &o.report {
        let line = serde_json::json!({
            "out": folder,
            "files": n,
            "bytes": bytes,
            "encrypted": password.is_some(),
            "dpic": dpic,
            "kdf_seconds": kdf,
            "add_seconds": add,
            "finish_seconds": finish,
            "write_seconds": write,
            "write_mb_per_s": mb_s,
        });
        let mut f = OpenOptions::new().create(true).append(true).open(report)?;
        writeln!(f, "{line}")?;
    }
    Ok(())
}

fn key_file_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o
}
