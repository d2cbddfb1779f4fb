//! `keybag keychain`: the items of `KeychainDomain/keychain-backup.plist`.
//!
//! A table (or `--json`, or `--format csv` for password managers) of passwords, internet
//! passwords, certificates and keys: kind, access group, service or server, account, label,
//! class (migratory or ThisDeviceOnly), created and modified. Items sealed to the original
//! device are listed as sealed with the reason. Secrets are shown only with `--show-secrets`;
//! the CSV, which holds them in plaintext, is written only with it.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use mobilebackup::keychain::{self, DerValue, Item, ItemState, ItemSummary, Keychain};
use serde::Serialize;
use serde_json::Value;

use crate::args::{BackupArgs, KeychainFormat};
use crate::exit;
use crate::output::{plural, print_json, sanitize, warn};

/// Longest cell shown in the text table (the JSON has everything).
const MAX_CELL: usize = 40;

/// The whole report, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The backup folder.
    pub backup: String,
    /// Encrypted or not.
    pub encrypted: bool,
    /// False when the backup has no `keychain-backup.plist`.
    pub present: bool,
    /// `keybag-uuid` of the plist.
    pub keybag_uuid: Option<String>,
    /// Whether it is the backup keybag's UUID.
    pub keybag_uuid_matches: Option<bool>,
    /// Top-level keys keybag does not know.
    pub unknown_keys: Vec<String>,
    /// Notes about the whole file.
    pub warnings: Vec<String>,
    /// Item counts.
    pub counts: Counts,
    /// True when secrets are included (`--show-secrets`).
    pub secrets_shown: bool,
    /// The items.
    pub items: Vec<ItemReport>,
}

/// How many items are in each state.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    /// All items.
    pub items: usize,
    /// Decrypted.
    pub open: usize,
    /// Sealed to the original device.
    pub sealed: usize,
    /// Damaged.
    pub damaged: usize,
}

/// One item in `--json`: the library's summary plus attributes and, when asked, the secret.
#[derive(Debug, Serialize)]
pub struct ItemReport {
    /// Table, kind, class, state, names, dates: everything but the secret.
    #[serde(flatten)]
    pub summary: ItemSummary,
    /// Every attribute but the secret: data as `{"hex": …}`, dates as ISO 8601.
    pub attributes: BTreeMap<String, Value>,
    /// The secret as text when it is UTF-8 (only with `--show-secrets`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The secret in hex (only with `--show-secrets`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_hex: Option<String>,
    /// Notes about this item.
    pub warnings: Vec<String>,
}

/// A DER value as JSON: data as `{"hex": …}`, dates as ISO 8601 strings.
pub fn der_json(v: &DerValue) -> Value {
    match v {
        DerValue::Null => Value::Null,
        DerValue::Bool(b) => Value::Bool(*b),
        DerValue::Integer(i) => Value::from(*i),
        DerValue::String(s) => Value::String(s.clone()),
        DerValue::Data(d) => serde_json::json!({ "hex": hex::encode(&d[..]) }),
        DerValue::Date(d) => Value::String(d.to_iso8601()),
        DerValue::Array(a) => Value::Array(a.iter().map(der_json).collect()),
        DerValue::Dict(d) => {
            Value::Object(d.iter().map(|(k, v)| (k.clone(), der_json(v))).collect())
        }
    }
}

fn item_report(it: &Item, show_secrets: bool) -> ItemReport {
    let secret = it.secret().filter(|_| show_secrets);
    ItemReport {
        summary: it.summary(),
        attributes: it
            .attributes
            .iter()
            .filter(|(k, _)| k.as_str() != "v_Data")
            .map(|(k, v)| (k.clone(), der_json(v)))
            .collect(),
        secret: secret.and_then(|s| std::str::from_utf8(s).ok().map(str::to_owned)),
        secret_hex: secret.map(hex::encode),
        warnings: it.warnings.clone(),
    }
}

fn report(args: &BackupArgs, encrypted: bool, kc: Option<&Keychain>, show: bool) -> Report {
    let Some(kc) = kc else {
        return Report {
            backup: args.dir.display().to_string(),
            encrypted,
            present: false,
            keybag_uuid: None,
            keybag_uuid_matches: None,
            unknown_keys: Vec::new(),
            warnings: Vec::new(),
            counts: Counts::default(),
            secrets_shown: show,
            items: Vec::new(),
        };
    };
    let (open, sealed, damaged) = kc.counts();
    Report {
        backup: args.dir.display().to_string(),
        encrypted,
        present: true,
        keybag_uuid: kc.keybag_uuid.clone(),
        keybag_uuid_matches: kc.keybag_uuid_matches,
        unknown_keys: kc.unknown_keys.clone(),
        warnings: kc.warnings.clone(),
        counts: Counts {
            items: kc.items.len(),
            open,
            sealed,
            damaged,
        },
        secrets_shown: show,
        items: kc.items.iter().map(|i| item_report(i, show)).collect(),
    }
}

/// A secret for people: its text when it is printable UTF-8, else `hex:…`.
fn secret_text(s: &[u8]) -> String {
    match std::str::from_utf8(s) {
        Ok(t) if !t.chars().any(char::is_control) => t.to_string(),
        _ => format!("hex:{}", hex::encode(s)),
    }
}

fn class_cell(it: &Item) -> String {
    let mobility = if it.this_device_only() {
        "ThisDeviceOnly"
    } else {
        "migratory"
    };
    match it.class {
        Some(c) => format!("{} {mobility}", c.short_name()),
        None => "-".into(),
    }
}

fn cell(s: Option<&str>) -> String {
    match s {
        None | Some("") => "-".into(),
        Some(s) => {
            let s = sanitize(s);
            if s.chars().count() > MAX_CELL {
                let cut: String = s.chars().take(MAX_CELL - 1).collect();
                format!("{cut}…")
            } else {
                s
            }
        }
    }
}

fn print_table(w: &mut dyn Write, kc: &Keychain, show: bool) -> Result<()> {
    let mut head = vec![
        "KIND",
        "ACCESS GROUP",
        "SERVICE / SERVER",
        "ACCOUNT",
        "LABEL",
        "CLASS",
        "CREATED",
        "MODIFIED",
    ];
    if show {
        head.push("SECRET");
    }
    // Rows: fixed cells, then either the rest or one "sealed: …"/"damaged: …" note.
    let rows: Vec<(Vec<String>, Option<String>)> = kc
        .items
        .iter()
        .map(|it| {
            let mut cells = vec![it.kind_name().to_string()];
            match &it.state {
                ItemState::Open => {
                    cells.push(cell(it.access_group()));
                    cells.push(cell(it.service().or(it.server())));
                    cells.push(cell(it.account()));
                    cells.push(cell(it.label()));
                    cells.push(class_cell(it));
                    cells.push(it.created().unwrap_or_else(|| "-".into()));
                    cells.push(it.modified().unwrap_or_else(|| "-".into()));
                    if show {
                        cells.push(it.secret().map_or_else(|| "-".into(), secret_text));
                    }
                    (cells, None)
                }
                other => {
                    cells.extend(["-", "-", "-", "-"].map(String::from));
                    cells.push(class_cell(it));
                    let note = format!(
                        "{}: {}",
                        other.name(),
                        sanitize(other.reason().unwrap_or_default())
                    );
                    (cells, Some(note))
                }
            }
        })
        .collect();
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for (cells, _) in &rows {
        for (i, c) in cells.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let last = cells.len() - 1;
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(
        w,
        "{}",
        line(&head.iter().map(|h| h.to_string()).collect::<Vec<_>>())
    )?;
    for (mut cells, note) in rows {
        if let Some(n) = note {
            cells.push(n);
        }
        writeln!(w, "{}", line(&cells))?;
    }
    Ok(())
}

fn summary(kc: &Keychain) -> String {
    let (open, sealed, damaged) = kc.counts();
    let mut s = format!(
        "Keychain: {} ({open} open, {sealed} sealed, {damaged} damaged).",
        plural(kc.items.len() as u64, "item", "items")
    );
    match kc.keybag_uuid_matches {
        Some(true) => s.push_str(" keybag-uuid matches the backup keybag."),
        Some(false) => s.push_str(" keybag-uuid does NOT match the backup keybag."),
        None => {}
    }
    if !kc.unknown_keys.is_empty() {
        s.push_str(&format!(
            " Unknown top-level keys: {}.",
            sanitize(&kc.unknown_keys.join(", "))
        ));
    }
    s
}

/// RFC 4180 field: quoted when it holds a comma, quote, CR or LF.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `name,url,username,password,note` rows of the open passwords; returns how many.
fn print_csv(w: &mut dyn Write, kc: &Keychain) -> Result<usize> {
    writeln!(w, "name,url,username,password,note")?;
    let mut n = 0;
    for it in &kc.items {
        if it.state != ItemState::Open || !matches!(it.table.as_str(), "genp" | "inet") {
            continue;
        }
        let Some(secret) = it.secret() else { continue };
        let password = match std::str::from_utf8(secret) {
            Ok(t) => t.to_string(),
            Err(_) => format!("hex:{}", hex::encode(secret)),
        };
        let name = it
            .label()
            .filter(|s| !s.is_empty())
            .or(it.service().filter(|s| !s.is_empty()))
            .or(it.server())
            .unwrap_or_default();
        let mut note = format!(
            "access group {}; class {}",
            it.access_group().unwrap_or("-"),
            class_cell(it)
        );
        if password.starts_with("hex:") {
            note.push_str("; binary secret shown as hex");
        }
        let fields = [
            name.to_string(),
            it.url().unwrap_or_default(),
            it.account().unwrap_or_default().to_string(),
            password,
            note,
        ];
        let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        writeln!(w, "{}", row.join(","))?;
        n += 1;
    }
    Ok(n)
}

/// Runs `keybag keychain`.
pub fn run(args: &BackupArgs, show_secrets: bool, format: Option<KeychainFormat>) -> Result<u8> {
    let csv = format == Some(KeychainFormat::Csv);
    if csv && !show_secrets {
        return Err(exit::usage(
            "--format csv writes the passwords in plaintext: add --show-secrets to confirm",
        ));
    }
    let backup = super::open(args)?;
    let catalog = super::catalog(&backup)?;
    let kc = keychain::read_from_catalog(&backup, &catalog)?;
    if let Some(kc) = &kc {
        for w in &kc.warnings {
            warn(w);
        }
    }
    if args.json {
        print_json(&report(
            args,
            backup.is_encrypted(),
            kc.as_ref(),
            show_secrets,
        ))?;
    } else {
        let mut out = std::io::stdout().lock();
        match &kc {
            None if csv => {
                writeln!(out, "name,url,username,password,note")?;
            }
            None => writeln!(
                out,
                "No keychain in this backup (KeychainDomain/keychain-backup.plist is absent)."
            )?,
            Some(kc) if csv => {
                let n = print_csv(&mut out, kc)?;
                out.flush()?;
                warn(&format!(
                    "the CSV holds {} in plaintext: keep it off shared disks and delete it \
                     once imported",
                    plural(n as u64, "password", "passwords")
                ));
                let (_, sealed, _) = kc.counts();
                if sealed > 0 {
                    warn(&format!(
                        "{} sealed to the original device not exported",
                        plural(sealed as u64, "item", "items")
                    ));
                }
            }
            Some(kc) => {
                writeln!(out, "{}", summary(kc))?;
                print_table(&mut out, kc, show_secrets)?;
                if !backup.is_encrypted() && !kc.items.is_empty() {
                    writeln!(
                        out,
                        "This backup is not encrypted: its keychain opens only on the original device."
                    )?;
                } else if kc
                    .items
                    .iter()
                    .any(|i| matches!(i.state, ItemState::Sealed { .. }))
                {
                    writeln!(
                        out,
                        "Sealed items open with --device-key-file (the original device's key 0x835)."
                    )?;
                }
            }
        }
        out.flush()?;
    }
    let Some(kc) = kc else {
        return Ok(exit::OK);
    };
    let device_key_given = args.device_key.is_some() || args.device_key_file.is_some();
    if device_key_given && kc.wrong_device_key() {
        eprintln!(
            "keybag: the device key does not open any ThisDeviceOnly item: it is not this \
             backup's device key"
        );
        return Ok(exit::WRONG_KEY);
    }
    let (_, _, damaged) = kc.counts();
    if damaged > 0 {
        eprintln!(
            "keybag: {} damaged; the others are listed",
            plural(damaged as u64, "keychain item is", "keychain items are")
        );
        return Ok(exit::DAMAGE);
    }
    Ok(exit::OK)
}
