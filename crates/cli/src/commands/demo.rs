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

    device_tour(&mut out, tmp.path())?;
    super::demo_cloud::tour(&mut out, tmp.path())?;

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
        "keybag device import DIR BACKUP   # play with a real phone's data",
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

/// The Threema case on virtual iPhones (design §4.3): an app keeps a migratory password and a
/// ThisDeviceOnly private key; an encrypted backup is audited, then restored to a new phone and
/// to the same phone after an erase.
fn device_tour(out: &mut dyn Write, root: &Path) -> Result<()> {
    use device::backup::{backup, BackupOptions};
    use device::restore::{copy_tree, restore, RestoreOptions};
    use device::{DerValue, Device, InitOptions, LockState, ProtectionClass, PutOptions};
    use mobilebackup::audit::{self, AuditOptions};
    use std::collections::BTreeMap;
    use zeroize::Zeroizing;

    const APP: &str = "ch.threema.app";
    const PASSCODE: &[u8] = b"123456";
    const PASSWORD: &[u8] = b"demo backup password";
    let op = |e: device::backup::OpError| anyhow::anyhow!("{e}");
    let init = |dir: &Path, name: &str| -> Result<Device> {
        let mut d = Device::init(
            dir,
            InitOptions {
                name: name.into(),
                passcode: Some(Zeroizing::new(PASSCODE.to_vec())),
                passcode_iterations: Some(20_000),
                ..InitOptions::default()
            },
        )?;
        if d.state() != LockState::Unlocked {
            d.unlock(PASSCODE)?;
        }
        Ok(d)
    };

    writeln!(
        out,
        "Part two: virtual iPhones (`keybag device`), to see what a backup carries to a new phone.\n"
    )?;
    let phone = root.join("alices-iphone");
    let mut d = init(&phone, "Alice's iPhone")?;
    let erased = root.join("alices-iphone-erased");
    copy_tree(&phone, &erased).map_err(op)?;
    d.install_app(APP)?;
    let dom = format!("AppDomain-{APP}");
    d.put(
        &dom,
        "Documents/ThreemaData.sqlite",
        &mut &b"chats with Bob"[..],
        &PutOptions::default(),
    )?;
    d.put(
        &dom,
        "Library/Caches/avatar.jpg",
        &mut &b"cache"[..],
        &PutOptions::default(),
    )?;
    let item = |label: &str, secret: &[u8]| {
        let mut a = BTreeMap::new();
        a.insert("agrp".to_string(), DerValue::string(APP));
        a.insert("labl".to_string(), DerValue::string(label));
        a.insert("v_Data".to_string(), DerValue::data(secret.to_vec()));
        a
    };
    d.keychain_add(
        "genp",
        ProtectionClass::KC_WHEN_UNLOCKED,
        item("Threema Safe password", b"correct horse"),
    )?;
    d.keychain_add(
        "keys",
        ProtectionClass::KC_AFTER_FIRST_UNLOCK_TDO,
        item("Threema identity private key", &[0x42; 32]),
    )?;
    writeln!(
        out,
        "[6] Create \"Alice's iPhone\" (passcode set) and install {APP}. The app stores its chats,"
    )?;
    writeln!(
        out,
        "    a migratory keychain password (ak: WhenUnlocked) and its identity private key as"
    )?;
    writeln!(
        out,
        "    ThisDeviceOnly (cku: AfterFirstUnlockThisDeviceOnly), as Threema does.\n"
    )?;

    let bk = root.join("alice-backup");
    let opts = BackupOptions {
        password: Some(Zeroizing::new(PASSWORD.to_vec())),
        ..BackupOptions::default()
    };
    let r = backup(&d, &bk, &opts).map_err(op)?;
    drop(d);
    writeln!(
        out,
        "[7] Back it up, encrypted (`keybag device backup DIR OUT --encrypt`): {}, {} keychain items.",
        plural(r.files, "file", "files"),
        r.keychain.len()
    )?;
    for s in &r.skipped {
        writeln!(out, "    left out: {} ({})", sanitize(&s.what), s.reason)?;
    }
    writeln!(
        out,
        "    The private key's class key is sealed with the password AND this phone's key 0x835.\n"
    )?;

    let mut b = Backup::open(&bk)?;
    let pk = b.derive_passkey(PASSWORD, &dataprotection::KdfLimits::default())?;
    b.unlock_with_passkey(&pk, None)?;
    let a = audit::audit(
        &b,
        &AuditOptions {
            password: Some(PASSWORD),
            sample_rounds: 10_000,
            ..AuditOptions::default()
        },
    )?;
    writeln!(out, "[8] Audit it (`keybag audit`):")?;
    writeln!(out, "    {}", sanitize(&a.lost_on_new_device.summary))?;
    writeln!(
        out,
        "    will not move to a new phone: {}; will move: {}\n",
        sanitize(&a.lost_on_new_device.by_app()),
        plural(a.lost_on_new_device.migratory, "item", "items")
    )?;

    let new_phone = root.join("bobs-new-iphone");
    drop(init(&new_phone, "Alice's new iPhone")?);
    let ropts = RestoreOptions {
        password: Some(Zeroizing::new(PASSWORD.to_vec())),
        ..RestoreOptions::default()
    };
    let mut results = Vec::new();
    for (step, target, what) in [
        (9, &new_phone, "a NEW iPhone"),
        (10, &erased, "the SAME iPhone, erased (same hardware UID)"),
    ] {
        let r = restore(target, &bk, &ropts).map_err(op)?;
        writeln!(
            out,
            "[{step}] Restore onto {what} (`keybag device restore DIR BACKUP`): {}, keychain {} restored, {} lost.",
            plural(r.files, "file", "files"),
            r.keychain_restored.len(),
            r.lost.len()
        )?;
        for l in &r.lost {
            writeln!(
                out,
                "     lost: {} [{}]: {}",
                l.what,
                l.class.as_deref().unwrap_or("?"),
                l.reason
            )?;
        }
        let dev = Device::open(target)?;
        let labels: Vec<String> = dev
            .keychain_items()?
            .iter()
            .filter_map(|i| {
                i.attributes
                    .get("labl")
                    .and_then(DerValue::as_str)
                    .map(str::to_string)
            })
            .collect();
        results.push(labels);
    }
    writeln!(out, "\n    Which secret survived where:")?;
    writeln!(out, "    {:<52} {:<12} same iPhone", "secret", "new iPhone")?;
    for (label, class) in [
        ("Threema Safe password", "ak, migratory"),
        ("Threema identity private key", "cku, ThisDeviceOnly"),
    ] {
        let mark = |i: usize| {
            if results[i].iter().any(|l| l == label) {
                "restored"
            } else {
                "LOST"
            }
        };
        writeln!(
            out,
            "    {:<52} {:<12} {}",
            format!("{label} ({class})"),
            mark(0),
            mark(1)
        )?;
    }
    writeln!(
        out,
        "    On a new phone the identity key is gone: Threema needs its ID backup to move.\n"
    )?;
    Ok(())
}
