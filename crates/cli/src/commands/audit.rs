//! `keybag audit`: what a backup holds, what it cannot, and what a new iPhone
//! will not get back; as text, JSON (`--json`) or one HTML page (`--html FILE`).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use dataprotection::KdfLimits;
use mobilebackup::audit::{
    self, human_duration, AuditOptions, AuditReport, Integrity, IntegrityKind, IntegrityProblem,
    KeychainItem, KeychainStatus, Level, Verdict,
};
use mobilebackup::Backup;
use zeroize::Zeroizing;

use crate::args::BackupArgs;
use crate::output::{human_bytes, iso8601, plural, print_json, sanitize, thousands};
use crate::progress::{self, Progress};
use crate::{exit, html, secrets};

/// `keybag audit --help`.
pub const LONG_ABOUT: &str = "\
Audit a backup for the person who owns it, most important first:

  * what will NOT come back on another iPhone: every ThisDeviceOnly keychain
    item, grouped by app (access group), and why (sealed with the original
    iPhone's UID key 0x835); with --device-key-file their app and account are
    named;
  * the password: key-derivation rounds, the cost of one guess measured on this
    machine, and - when the password itself was given (KEYBAG_PASSWORD or
    --password-file, not --derived-key-file) - its strength (zxcvbn) and time
    to guess it; the password never appears in the output;
  * what only an encrypted backup holds (Health, saved passwords, Wi-Fi, call
    and Safari history) and what no backup holds (akpu keychain items, app
    caches and tmp, app bundles, excluded files), saying whether this backup
    proves it or cannot see it;
  * integrity: every blob is read on all cores (missing, SHA-1 vs Digest,
    padding, Size); --quick only checks that blobs exist;
  * who can decrypt what, and counts by protection class and domain.

--json prints the whole report as JSON; --html FILE also writes it as one
self-contained HTML page (no script, no external resource).

Exit status: 0 when the audit ran and found the data intact; 3 when it ran but
found missing, damaged or unreadable files (as `verify` does); other codes as
below.";

/// Problems listed in text output before the rest are summarised.
const SHOWN_PROBLEMS: usize = 20;
/// Domains listed in text output.
const SHOWN_DOMAINS: usize = 12;
/// Text width for wrapped paragraphs.
const WIDTH: usize = 78;

/// Opens and unlocks the backup like every command, but keeps the password
/// (when one was used rather than a derived key) for the strength estimate.
fn open(args: &BackupArgs) -> Result<(Backup, Option<Zeroizing<Vec<u8>>>)> {
    let mut keys = secrets::parse_keys(args)?;
    let mut backup = Backup::open(&args.dir)?;
    if !backup.is_encrypted() {
        secrets::unlock(&mut backup, args, keys)?;
        return Ok((backup, None));
    }
    let (passkey, password) = match keys.take_derived() {
        Some(pk) => (pk, None),
        None => {
            let pw = secrets::password(args)?;
            let rounds = backup.keybag().and_then(|k| k.dpic);
            let spinner = progress::spinner(match rounds {
                Some(n) => format!(
                    "deriving the key from the password ({} rounds)",
                    thousands(n.into())
                ),
                None => "deriving the key from the password".to_string(),
            });
            let pk = backup.derive_passkey(&pw, &KdfLimits::default());
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            (pk?, Some(pw))
        }
    };
    backup.unlock_with_passkey(&passkey, keys.take_device().as_ref())?;
    Ok((backup, password))
}

/// Writes `text` to `path` through a temp file in the same folder, then renames it.
pub fn write_atomically(path: &Path, text: &[u8]) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".keybag-tmp-")
        .suffix(".html")
        .tempfile_in(parent)
        .with_context(|| {
            format!(
                "--html {}: cannot create a file in {}",
                path.display(),
                parent.display()
            )
        })?;
    tmp.write_all(text)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("--html {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("--html {}", path.display()))?;
    Ok(())
}

/// Runs `keybag audit`.
pub fn run(args: &BackupArgs, html_out: Option<&Path>, quick: bool) -> Result<u8> {
    if let Some(p) = html_out {
        if p.is_dir() {
            return Err(exit::usage(format!(
                "--html {}: is a folder; give a file name",
                p.display()
            )));
        }
    }
    let (backup, password) = open(args)?;
    let catalog = super::catalog(&backup)?;
    let files = if quick {
        0
    } else {
        catalog
            .records
            .iter()
            .filter(|r| r.kind() == mobilebackup::RecordKind::File)
            .count() as u64
    };
    let bar = Progress::new(files, "auditing");
    let progress = |bytes: u64| bar.file_done(bytes);
    let opts = AuditOptions {
        password: password.as_deref().map(Vec::as_slice),
        deep: !quick,
        progress: Some(&progress),
        ..AuditOptions::default()
    };
    let report = audit::audit_catalog(&backup, &catalog, &opts);
    bar.finish();
    drop(password);
    if let Some(p) = html_out {
        write_atomically(p, html::audit_page(&report).as_bytes())?;
    }
    if args.json {
        print_json(&report)?;
    } else {
        let mut out = std::io::stdout().lock();
        print_text(&mut out, &report)?;
        if let Some(p) = html_out {
            writeln!(
                out,
                "\nHTML report written to {}",
                sanitize(&p.display().to_string())
            )?;
        }
        out.flush()?;
    }
    if report.keychain_damaged() {
        eprintln!(
            "keybag: the keychain export is damaged or unreadable: {}",
            sanitize(
                report
                    .keychain
                    .reason
                    .as_deref()
                    .unwrap_or("some items do not decrypt")
            )
        );
    }
    if report.has_damage() {
        let i = &report.integrity;
        eprintln!(
            "keybag: integrity problems found ({} missing, {} damaged, {} sealed, {} bad records); \
             the rest of the audit is complete",
            thousands(i.missing),
            thousands(i.damaged),
            thousands(i.sealed),
            thousands(i.bad_records)
        );
        return Ok(exit::DAMAGE);
    }
    Ok(exit::OK)
}

/// Wraps `text` to [`WIDTH`] columns, every line starting with `indent`.
fn wrap(out: &mut dyn Write, indent: &str, text: &str) -> std::io::Result<()> {
    hang(out, indent, indent, text)
}

/// Wraps `text`: the first line starts with `first`, the others with `rest`.
fn hang(out: &mut dyn Write, first: &str, rest: &str, text: &str) -> std::io::Result<()> {
    let mut line = String::new();
    let mut prefix = first;
    for word in text.split_whitespace() {
        if !line.is_empty()
            && prefix.chars().count() + line.chars().count() + 1 + word.chars().count() > WIDTH
        {
            writeln!(out, "{prefix}{line}")?;
            line.clear();
            prefix = rest;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        writeln!(out, "{prefix}{line}")?;
    }
    Ok(())
}

fn heading(out: &mut dyn Write, title: &str) -> std::io::Result<()> {
    writeln!(out, "\n{title}\n{}", "-".repeat(title.chars().count()))
}

/// Problems in the order a person should see them: damage first, then
/// unreadable and missing files, then warnings; by path within each kind.
pub fn ordered_problems(i: &Integrity) -> Vec<&IntegrityProblem> {
    let rank = |k: IntegrityKind| match k {
        IntegrityKind::DigestMismatch => 0,
        IntegrityKind::Damaged => 1,
        IntegrityKind::BadRecord => 2,
        IntegrityKind::Sealed => 3,
        IntegrityKind::Missing => 4,
        IntegrityKind::SizeMismatch => 5,
        IntegrityKind::SymlinkSkipped => 6,
    };
    let mut v: Vec<&IntegrityProblem> = i.problems.iter().collect();
    v.sort_by_key(|p| rank(p.kind));
    v
}

/// Label of a finding's level in text output.
pub fn level_label(level: Level) -> &'static str {
    match level {
        Level::Critical => "CRITICAL",
        Level::Warning => "WARNING",
        Level::Ok => "OK",
        Level::Info => "NOTE",
    }
}

/// Label of a verdict.
pub fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Absent => "absent (checked)",
        Verdict::Present => "FOUND",
        Verdict::Unverifiable => "cannot be seen",
    }
}

/// `genp/11`, the item's table and row.
pub fn item_ref(i: &KeychainItem) -> String {
    match i.rowid {
        Some(r) => format!("{}/{r}", i.table),
        None => format!("{} ref {}", i.table, i.persistent_ref),
    }
}

/// What identifies an item to a person: service or server, and account.
pub fn item_name(i: &KeychainItem) -> String {
    let what = i
        .service
        .as_deref()
        .or(i.server.as_deref())
        .or(i.label.as_deref());
    match (what, i.account.as_deref()) {
        (Some(w), Some(a)) => format!("{w} — {a}"),
        (Some(w), None) => w.to_string(),
        (None, Some(a)) => a.to_string(),
        (None, None) => "(no name)".into(),
    }
}

/// `aku (WhenUnlockedThisDeviceOnly)`.
pub fn item_class(i: &KeychainItem) -> String {
    match (i.class_short, i.class_name) {
        (Some(s), Some(n)) => format!("{s} ({})", n.trim_start_matches("kSecAttrAccessible")),
        _ => "unknown class".into(),
    }
}

/// The device line: `Forge iPhone 4242 (iPhone14,2, iOS 17.5.1)`.
pub fn device_line(r: &AuditReport) -> String {
    let d = &r.device;
    let mut s = d.name.clone().unwrap_or_else(|| "Unknown iPhone".into());
    let mut extra = Vec::new();
    if let Some(p) = &d.product_type {
        extra.push(p.clone());
    }
    if let Some(v) = &d.ios_version {
        extra.push(format!("iOS {v}"));
    }
    if !extra.is_empty() {
        s.push_str(&format!(" ({})", extra.join(", ")));
    }
    s
}

/// The text report.
pub fn print_text(out: &mut dyn Write, r: &AuditReport) -> Result<()> {
    let s = sanitize;
    writeln!(out, "Backup audit: {}", s(&device_line(r)))?;
    writeln!(out, "Folder        {}", s(&r.backup))?;
    if let Some(t) = r.backup_date_unix {
        writeln!(out, "Backed up     {}", iso8601(t))?;
    }
    writeln!(
        out,
        "Encrypted     {}",
        if r.encryption.encrypted { "yes" } else { "NO" }
    )?;

    heading(out, "Summary")?;
    for f in &r.summary {
        writeln!(out, "{:<9}{}", level_label(f.level), s(&f.title))?;
        wrap(out, "         ", &s(&f.detail))?;
    }

    // What a new iPhone will not get.
    let lost = &r.lost_on_new_device;
    heading(out, "What a new iPhone will not get back")?;
    wrap(out, "", &s(&lost.summary))?;
    for g in &lost.groups {
        writeln!(
            out,
            "\n  {} ({})",
            s(&g.access_group
                .clone()
                .unwrap_or_else(|| "Sealed items (app unknown)".into())),
            plural(g.items.len() as u64, "item", "items")
        )?;
        for i in &g.items {
            if i.access_group.is_some() || i.state == "open" {
                writeln!(out, "    {:<18} {}", i.kind, s(&item_name(i)))?;
            } else {
                writeln!(out, "    {:<18} sealed item", i.kind)?;
            }
            writeln!(
                out,
                "    {:<18} {}; {}; ref {}",
                "",
                item_class(i),
                item_ref(i),
                i.persistent_ref
            )?;
            if i.access_group.is_none() {
                if let Some(reason) = &i.reason {
                    wrap(out, "                       ", &s(reason))?;
                }
            }
        }
    }
    if !lost.groups.is_empty() {
        writeln!(out)?;
        wrap(out, "", &format!("Why: {}", lost.why))?;
    }
    if lost.migratory > 0 {
        let groups: Vec<String> = lost
            .migratory_by_access_group
            .iter()
            .map(|g| {
                format!(
                    "{} ({})",
                    s(g.access_group.as_deref().unwrap_or("app unknown")),
                    g.items
                )
            })
            .collect();
        writeln!(out)?;
        wrap(
            out,
            "",
            &format!(
                "These do come back: {} ({}).",
                plural(
                    lost.migratory,
                    "migratory keychain item",
                    "migratory keychain items"
                ),
                groups.join(", ")
            ),
        )?;
    }
    writeln!(out, "\nNever carried to any iPhone:")?;
    for a in &lost.also_lost {
        hang(out, "  - ", "    ", a)?;
    }

    // Encryption and password.
    let e = &r.encryption;
    heading(out, "Encryption and password")?;
    if !e.encrypted {
        wrap(
            out,
            "",
            "Not encrypted: every file is stored in plaintext. There is no password to guess.",
        )?;
    }
    if let Some(k) = &e.kdf {
        writeln!(out, "Key derivation  {}", k.describe())?;
    }
    if let Some(c) = &e.guess_cost {
        writeln!(
            out,
            "One guess       {} on one CPU core of this machine ({:.2} guesses/s; {:.2}/s on all {} cores)",
            human_duration(c.seconds_per_guess_per_core),
            c.guesses_per_second_per_core,
            c.guesses_per_second_this_machine,
            c.cores
        )?;
    }
    if e.device_key_used {
        writeln!(
            out,
            "Device key      given (it unseals the ThisDeviceOnly classes when it is this iPhone's)"
        )?;
    }
    match &e.password_strength {
        Some(p) => {
            writeln!(
                out,
                "Strength        {} ({}/4), about 10^{:.1} guesses (zxcvbn)",
                p.rating, p.score, p.guesses_log10
            )?;
            for t in &p.crack_times {
                writeln!(out, "  {:<44} {}", t.attacker, t.display)?;
            }
            if let Some(w) = &p.warning {
                wrap(out, "  ", w)?;
            }
            for sug in &p.suggestions {
                hang(out, "  - ", "    ", sug)?;
            }
        }
        None if e.encrypted => hang(
            out,
            "Strength        ",
            "                ",
            "not rated: give the password (KEYBAG_PASSWORD or --password-file) \
             instead of a derived key to rate it.",
        )?,
        None => {}
    }

    // Only in encrypted backups.
    heading(out, "Only in encrypted backups")?;
    for x in &r.encrypted_only {
        let state = match x.present {
            Some(true) => "present",
            Some(false) => "absent",
            None => "unknown",
        };
        writeln!(out, "{state:<9}{}", s(&x.what))?;
        for ev in &x.evidence {
            wrap(out, "           ", &s(ev))?;
        }
        if x.present.is_none() {
            wrap(out, "           ", &s(&x.detail))?;
        }
    }

    // Never backed up.
    heading(out, "Never in any backup")?;
    for n in &r.never_backed_up {
        hang(
            out,
            &format!("{:<18}", verdict_label(n.verdict)),
            "                  ",
            &s(&n.what),
        )?;
        wrap(out, "                  ", &s(&n.detail))?;
        for ex in &n.examples {
            writeln!(out, "                    {}", s(ex))?;
        }
    }

    // Integrity.
    let i = &r.integrity;
    heading(out, "Integrity")?;
    if i.deep {
        writeln!(
            out,
            "Read {} of {} ({}); {} checked against the recorded Digest.",
            plural(i.files_read, "file", "files"),
            thousands(i.files),
            human_bytes(i.bytes_read),
            plural(i.digest_checked, "digest", "digests")
        )?;
    } else {
        writeln!(
            out,
            "Quick audit: checked that each of the {} is present; contents not read.",
            plural(i.files, "file", "files")
        )?;
    }
    writeln!(
        out,
        "Missing {}  digest mismatches {}  damaged {}  sealed {}  bad records {}  size mismatches {}",
        thousands(i.missing),
        thousands(i.digest_mismatches),
        thousands(i.damaged),
        thousands(i.sealed),
        thousands(i.bad_records),
        thousands(i.size_mismatches)
    )?;
    for p in ordered_problems(i).into_iter().take(SHOWN_PROBLEMS) {
        writeln!(
            out,
            "  {:<16} {}: {}",
            serde_json::to_value(p.kind)?.as_str().unwrap_or("?"),
            s(&p.path),
            s(&p.message)
        )?;
    }
    if i.problems.len() > SHOWN_PROBLEMS {
        writeln!(
            out,
            "  ... and {} more (--json or --html list them all)",
            thousands((i.problems.len() - SHOWN_PROBLEMS) as u64)
        )?;
    }

    // Access.
    heading(out, "Who can read what")?;
    for a in &r.access {
        writeln!(out, "{}:", s(&a.who))?;
        wrap(out, "  ", &s(&a.can_read))?;
    }

    // Keychain and contents.
    heading(out, "Contents")?;
    let c = &r.contents;
    writeln!(
        out,
        "{}: {}, {}, {}; {} ({} bytes)",
        plural(c.records, "record", "records"),
        plural(c.files, "file", "files"),
        plural(c.directories, "folder", "folders"),
        plural(c.symlinks, "symlink", "symlinks"),
        human_bytes(c.total_bytes),
        thousands(c.total_bytes)
    )?;
    let k = &r.keychain;
    match k.status {
        KeychainStatus::Read => writeln!(
            out,
            "Keychain: {} ({} open, {} sealed, {} damaged; {} ThisDeviceOnly, {} migratory)",
            plural(k.items, "item", "items"),
            k.open,
            k.sealed,
            k.damaged,
            k.this_device_only,
            k.migratory
        )?,
        _ => wrap(
            out,
            "",
            &format!(
                "Keychain: not available: {}",
                s(k.reason.as_deref().unwrap_or("unknown"))
            ),
        )?,
    }
    for w in &k.warnings {
        hang(out, "  note: ", "        ", &s(w))?;
    }
    writeln!(out, "\nFiles by protection class")?;
    for cl in &c.by_class {
        writeln!(
            out,
            "  {:>2} {:<4} {:<54} {:>7} {:>10}",
            cl.class,
            cl.short_name,
            cl.name,
            thousands(cl.files),
            human_bytes(cl.bytes)
        )?;
    }
    let mut domains: Vec<_> = c.by_domain.iter().collect();
    domains.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.records.cmp(&a.records)));
    writeln!(
        out,
        "\nLargest domains ({} of {})",
        SHOWN_DOMAINS.min(domains.len()),
        thousands(domains.len() as u64)
    )?;
    for d in domains.iter().take(SHOWN_DOMAINS) {
        let mut name = s(&d.domain);
        if name.chars().count() > 50 {
            name = name.chars().take(49).collect::<String>() + "…";
        }
        writeln!(
            out,
            "  {:<50} {:>13} {:>10}",
            name,
            plural(d.files, "file", "files"),
            human_bytes(d.bytes)
        )?;
    }
    Ok(())
}
