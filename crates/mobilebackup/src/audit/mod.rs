//! `audit`: what a backup holds and what it does not, for the person who owns it.
//!
//! One call, [`audit`], answers the questions people ask about an iPhone backup:
//!
//! * what will **not** come back on another iPhone (ThisDeviceOnly keychain items,
//!   grouped by app, and why: they are sealed with the original device's UID key 0x835);
//! * what no backup ever holds (akpu keychain items, app caches and `tmp`, app
//!   bundles, files apps exclude), saying for each whether this backup *proves*
//!   it absent or *cannot* see it;
//! * what only an encrypted backup holds (Health, saved passwords, Wi-Fi, call
//!   and Safari history), present or not;
//! * how expensive one password guess is on this machine and, with the password,
//!   how strong it is (`zxcvbn`), never the password itself;
//! * integrity: missing blobs, `Digest` mismatches, damaged files (on all cores);
//! * who can decrypt what.
//!
//! The report is plain data ([`AuditReport`], `serde::Serialize` with stable
//! field names); the CLI renders it as text, JSON or HTML.

mod cost;
mod keychain;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use dataprotection::ProtectionClass;
use serde::Serialize;

use crate::reader::{Backup, Catalog, Record, RecordKind};
use crate::Result;

pub use crate::integrity::{Integrity, IntegrityKind, IntegrityProblem};
pub use cost::{human_duration, CrackTime, GuessCost, Kdf, PasswordStrength};
pub use keychain::{KeychainItem, KeychainStatus, KeychainSummary};

/// `domain/relativePath` of the keychain export.
pub const KEYCHAIN_RECORD: (&str, &str) = ("KeychainDomain", "keychain-backup.plist");

const YEAR: f64 = 365.25 * 86_400.0;

/// PBKDF2 rounds timed to estimate the cost of one guess (then extrapolated).
pub const DEFAULT_SAMPLE_ROUNDS: u32 = 100_000;

/// How to audit.
pub struct AuditOptions<'a> {
    /// The backup password, when the caller has it: enables the strength estimate.
    /// It is never copied into the report.
    pub password: Option<&'a [u8]>,
    /// Read every blob (digests, padding, sizes). False: only check that blobs exist.
    pub deep: bool,
    /// PBKDF2 rounds timed per stage for the guess-cost estimate.
    pub sample_rounds: u32,
    /// Called once per regular file checked, with the bytes read.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl Default for AuditOptions<'_> {
    fn default() -> Self {
        Self {
            password: None,
            deep: true,
            sample_rounds: DEFAULT_SAMPLE_ROUNDS,
            progress: None,
        }
    }
}

/// Whether a password is given, never the password.
impl std::fmt::Debug for AuditOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditOptions")
            .field(
                "password",
                &self.password.map(|_| format_args!("(redacted)")),
            )
            .field("deep", &self.deep)
            .field("sample_rounds", &self.sample_rounds)
            .field("progress", &self.progress.map(|_| format_args!("Fn")))
            .finish()
    }
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    /// The backup folder.
    pub backup: String,
    /// The phone the backup came from.
    pub device: AuditDevice,
    /// When the backup was made (Unix seconds), from Manifest/Info/Status.plist.
    pub backup_date_unix: Option<i64>,
    /// The most important facts first: what to act on.
    pub summary: Vec<Finding>,
    /// Encryption, KDF and the cost of guessing the password.
    pub encryption: Encryption,
    /// What will not come back when this backup is restored to another iPhone.
    pub lost_on_new_device: LostOnNewDevice,
    /// The keychain export (`KeychainDomain/keychain-backup.plist`).
    pub keychain: KeychainSummary,
    /// What no backup ever holds, and whether this one proves it.
    pub never_backed_up: Vec<NeverBackedUp>,
    /// What Apple puts only in encrypted backups, present or not.
    pub encrypted_only: Vec<EncryptedOnly>,
    /// Counts by kind, protection class and domain.
    pub contents: Contents,
    /// Missing blobs, digest mismatches, damaged files.
    pub integrity: Integrity,
    /// Who can decrypt what.
    pub access: Vec<Access>,
}

impl AuditReport {
    /// True when data is missing, damaged, unreadable or a record is unusable: a file, a
    /// `Manifest.db` row, or the keychain of an encrypted backup (its export unreadable, or
    /// items that do not decrypt although their class key is there).
    pub fn has_damage(&self) -> bool {
        !self.integrity.clean || self.keychain_damaged()
    }

    /// True when the keychain of an encrypted backup could not be read, or some of its items
    /// are damaged (sealed items are not damage: they need the original device).
    pub fn keychain_damaged(&self) -> bool {
        self.keychain.damaged > 0
            || (self.encryption.encrypted
                && self.keychain.status == keychain::KeychainStatus::Unavailable)
    }
}

/// Device identity.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditDevice {
    /// `DeviceName`.
    pub name: Option<String>,
    /// `ProductType`, e.g. `iPhone14,2`.
    pub product_type: Option<String>,
    /// iOS version.
    pub ios_version: Option<String>,
    /// iOS build.
    pub build_version: Option<String>,
    /// UDID.
    pub udid: Option<String>,
}

/// How much a finding matters.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// Data is exposed, lost or damaged: act on it.
    Critical,
    /// Worth knowing before relying on this backup.
    Warning,
    /// Checked and fine.
    Ok,
    /// Background.
    Info,
}

/// One line of the summary.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// How much it matters.
    pub level: Level,
    /// One short sentence.
    pub title: String,
    /// Why, and what to do.
    pub detail: String,
}

/// Encryption and password facts.
#[derive(Clone, Debug, Serialize)]
pub struct Encryption {
    /// True for an encrypted backup.
    pub encrypted: bool,
    /// True once the class keys were unlocked (always true for plain backups).
    pub unlocked: bool,
    /// True when a device key 0x835 was supplied: it unseals the device-wrapped
    /// classes (a wrong one shows as undecryptable keychain items).
    pub device_key_used: bool,
    /// Key derivation parameters (encrypted backups).
    pub kdf: Option<Kdf>,
    /// Cost of one password guess measured on this machine (encrypted backups).
    pub guess_cost: Option<GuessCost>,
    /// Strength of the password, only when the caller supplied it.
    pub password_strength: Option<PasswordStrength>,
}

/// What will not come back on another iPhone.
#[derive(Clone, Debug, Serialize)]
pub struct LostOnNewDevice {
    /// One sentence.
    pub summary: String,
    /// Why these items cannot move.
    pub why: String,
    /// Keychain items that will not come back (ThisDeviceOnly; every item in an
    /// unencrypted backup).
    pub items: u64,
    /// Of those, items whose app and account could be read.
    pub named: u64,
    /// The items, by access group (app); `access_group` is null for items whose
    /// attributes are sealed.
    pub groups: Vec<ItemGroup>,
    /// Keychain items that do come back (migratory classes ak/ck/dk of an encrypted backup).
    pub migratory: u64,
    /// Those, counted by access group.
    pub migratory_by_access_group: Vec<GroupCount>,
    /// Other things that never reach another phone, whatever the backup.
    pub also_lost: Vec<String>,
}

impl LostOnNewDevice {
    /// `net.forge.chat (2), apple (1), 1 sealed (app unknown)`.
    pub fn by_app(&self) -> String {
        let mut parts: Vec<String> = self
            .groups
            .iter()
            .filter_map(|g| {
                g.access_group
                    .as_ref()
                    .map(|a| format!("{a} ({})", g.items.len()))
            })
            .collect();
        if self.named < self.items {
            parts.push(format!(
                "{} sealed (app unknown)",
                thousands(self.items - self.named)
            ));
        }
        parts.join(", ")
    }
}

/// Keychain items of one access group.
#[derive(Clone, Debug, Serialize)]
pub struct ItemGroup {
    /// The access group (usually `TEAMID.bundle.id`), or null when sealed.
    pub access_group: Option<String>,
    /// The items.
    pub items: Vec<KeychainItem>,
}

/// A count per access group.
#[derive(Clone, Debug, Serialize)]
pub struct GroupCount {
    /// The access group, or null when sealed.
    pub access_group: Option<String>,
    /// Items.
    pub items: u64,
}

/// Whether a backup shows something.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Looked for in this backup and not there.
    Absent,
    /// Looked for and found (unexpected).
    Present,
    /// This backup cannot show it: absence is by design.
    Unverifiable,
}

/// Something no backup holds.
#[derive(Clone, Debug, Serialize)]
pub struct NeverBackedUp {
    /// Stable id: `akpu-keychain-items`, `app-caches`, `app-tmp`, `app-bundles`,
    /// `excluded-files`, `device-secrets`.
    pub id: &'static str,
    /// What it is.
    pub what: String,
    /// What this backup shows.
    pub verdict: Verdict,
    /// How many were found (for `present`).
    pub found: u64,
    /// Up to five examples of what was found.
    pub examples: Vec<String>,
    /// How we know, or why we cannot.
    pub detail: String,
}

/// Something only an encrypted backup holds.
#[derive(Clone, Debug, Serialize)]
pub struct EncryptedOnly {
    /// Stable id: `health`, `saved-passwords`, `wifi`, `call-history`, `safari-history`.
    pub id: &'static str,
    /// What it is.
    pub what: String,
    /// Present, absent, or unknown (null) when it could not be checked.
    pub present: Option<bool>,
    /// Records or keychain counts that show it.
    pub evidence: Vec<String>,
    /// Short explanation.
    pub detail: String,
}

/// Counts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Contents {
    /// `Manifest.db` rows.
    pub records: u64,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub directories: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Rows with other flags.
    pub other: u64,
    /// Sum of the recorded sizes of regular files.
    pub total_bytes: u64,
    /// Regular files by protection class.
    pub by_class: Vec<ClassCount>,
    /// Records by domain.
    pub by_domain: Vec<DomainCount>,
}

/// Files of one protection class.
#[derive(Clone, Debug, Serialize)]
pub struct ClassCount {
    /// Class number (0 = none recorded).
    pub class: u32,
    /// `A`–`D`, …
    pub short_name: &'static str,
    /// Apple's name.
    pub name: &'static str,
    /// Regular files.
    pub files: u64,
    /// Their recorded bytes.
    pub bytes: u64,
}

/// Records of one domain.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DomainCount {
    /// Domain name.
    pub domain: String,
    /// All records.
    pub records: u64,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub directories: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Recorded bytes of its files.
    pub bytes: u64,
}

/// Who can read what.
#[derive(Clone, Debug, Serialize)]
pub struct Access {
    /// Who.
    pub who: String,
    /// What they can read.
    pub can_read: String,
}

/// Audits an opened (and, when encrypted, unlocked) backup.
pub fn audit(backup: &Backup, opts: &AuditOptions) -> Result<AuditReport> {
    Ok(audit_catalog(backup, &backup.catalog()?, opts))
}

/// [`audit`] with `Manifest.db` already read (`backup.catalog()`).
pub fn audit_catalog(backup: &Backup, catalog: &Catalog, opts: &AuditOptions) -> AuditReport {
    let contents = contents(catalog);
    let integrity = crate::integrity::check(backup, catalog, opts.deep, opts.progress);
    let kc = keychain::read(backup, catalog);
    let dev = backup.device();
    let device = AuditDevice {
        name: dev.device_name.clone(),
        product_type: dev.product_type.clone(),
        ios_version: dev.product_version.clone(),
        build_version: dev.build_version.clone(),
        udid: dev.udid.clone(),
    };
    let user_inputs: Vec<String> = [
        dev.device_name,
        dev.product_type,
        dev.serial_number,
        dev.udid,
    ]
    .into_iter()
    .flatten()
    .collect();
    let encryption = cost::encryption(backup, opts.password, opts.sample_rounds, &user_inputs);
    let lost_on_new_device = lost(backup, &kc);
    let never_backed_up = never_backed_up(backup, catalog, &kc);
    let encrypted_only = encrypted_only(catalog, &kc);
    let access = access(backup, &contents, &kc);
    let mut report = AuditReport {
        backup: backup.root().display().to_string(),
        device,
        backup_date_unix: backup_date(backup),
        summary: Vec::new(),
        encryption,
        lost_on_new_device,
        keychain: kc.summary,
        never_backed_up,
        encrypted_only,
        contents,
        integrity,
        access,
    };
    report.summary = summarise(&report);
    report
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn backup_date(backup: &Backup) -> Option<i64> {
    backup
        .manifest()
        .and_then(|m| m.date)
        .or_else(|| backup.info().and_then(|i| i.last_backup_date))
        .or_else(|| backup.status().and_then(|s| s.date))
        .map(unix)
}

/// Counts of a catalog: by kind, by protection class (files) and by domain, with recorded sizes.
pub fn contents(catalog: &Catalog) -> Contents {
    let mut c = Contents {
        records: catalog.records.len() as u64,
        ..Contents::default()
    };
    let mut classes: BTreeMap<ProtectionClass, (u64, u64)> = BTreeMap::new();
    let mut domains: BTreeMap<&str, DomainCount> = BTreeMap::new();
    for rec in &catalog.records {
        let d = domains.entry(&rec.domain).or_default();
        d.records += 1;
        match rec.kind() {
            RecordKind::File => {
                c.files += 1;
                c.total_bytes += rec.size();
                d.files += 1;
                d.bytes += rec.size();
                let e = classes.entry(rec.protection_class()).or_default();
                e.0 += 1;
                e.1 += rec.size();
            }
            RecordKind::Directory => {
                c.directories += 1;
                d.directories += 1;
            }
            RecordKind::Symlink => {
                c.symlinks += 1;
                d.symlinks += 1;
            }
            RecordKind::Other(_) => c.other += 1,
        }
    }
    c.by_class = classes
        .into_iter()
        .map(|(class, (files, bytes))| ClassCount {
            class: class.0,
            short_name: class.short_name(),
            name: class.name(),
            files,
            bytes,
        })
        .collect();
    c.by_domain = domains
        .into_iter()
        .map(|(name, mut d)| {
            d.domain = name.to_string();
            d
        })
        .collect();
    c
}

/// `3721` → `3,721`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

fn lost(backup: &Backup, kc: &keychain::Facts) -> LostOnNewDevice {
    let also_lost = vec![
        "akpu keychain items (kSecAttrAccessibleWhenPasscodeSetThisDeviceOnly): never exported"
            .to_string(),
        "Face ID / Touch ID data, the device passcode and Apple Pay cards: never in a backup"
            .to_string(),
    ];
    let encrypted = backup.is_encrypted();
    let lost_items: Vec<&KeychainItem> = kc
        .items
        .iter()
        .filter(|i| !encrypted || i.this_device_only)
        .collect();
    let mut groups: BTreeMap<Option<String>, Vec<KeychainItem>> = BTreeMap::new();
    for item in &lost_items {
        groups
            .entry(item.access_group.clone())
            .or_default()
            .push((*item).clone());
    }
    // Named groups first (alphabetically), then the sealed ones.
    let mut groups: Vec<ItemGroup> = groups
        .into_iter()
        .map(|(access_group, items)| ItemGroup {
            access_group,
            items,
        })
        .collect();
    groups.sort_by_key(|g| (g.access_group.is_none(), g.access_group.clone()));
    let mut migratory: BTreeMap<Option<String>, u64> = BTreeMap::new();
    if encrypted {
        for item in kc.items.iter().filter(|i| i.migratory) {
            *migratory.entry(item.access_group.clone()).or_default() += 1;
        }
    }
    let mut migratory_by_access_group: Vec<GroupCount> = migratory
        .into_iter()
        .map(|(access_group, items)| GroupCount {
            access_group,
            items,
        })
        .collect();
    migratory_by_access_group.sort_by_key(|g| (g.access_group.is_none(), g.access_group.clone()));
    let items = lost_items.len() as u64;
    let named = lost_items
        .iter()
        .filter(|i| i.access_group.is_some())
        .count() as u64;
    let migratory_count = migratory_by_access_group.iter().map(|g| g.items).sum();
    let why = if encrypted {
        "ThisDeviceOnly items (classes aku, cku, dku) are encrypted to class keys that the \
         backup keybag wraps with the password AND the original iPhone's UID-derived key \
         0x835 (WRAP=3). The UID key never leaves that iPhone's hardware, so another iPhone \
         cannot unwrap them and drops them on restore; restoring to the same iPhone brings \
         them back."
            .to_string()
    } else {
        "In an unencrypted backup every keychain class key is wrapped with the original \
         iPhone's UID-derived key 0x835 only, so no other iPhone (and no computer) can read \
         any keychain item: saved passwords, Wi-Fi passwords and app logins stay behind. \
         Encrypt the backup to carry the migratory ones over."
            .to_string()
    };
    let summary = match kc.summary.status {
        KeychainStatus::Read if items == 0 => {
            "Every keychain item in this backup can move to a new iPhone.".to_string()
        }
        KeychainStatus::Read => {
            let mut parts: Vec<String> = groups
                .iter()
                .filter_map(|g| {
                    g.access_group
                        .as_ref()
                        .map(|a| format!("{a} ({})", g.items.len()))
                })
                .collect();
            if named < items {
                parts.push(format!(
                    "{} whose app is sealed: {}",
                    thousands(items - named),
                    sealed_breakdown(&lost_items)
                ));
            }
            format!(
                "{} will not come back on a new iPhone: {}.",
                plural(items, "keychain item", "keychain items"),
                parts.join("; ")
            )
        }
        KeychainStatus::Absent => {
            "This backup holds no keychain, so no saved password or app login comes back from it."
                .to_string()
        }
        KeychainStatus::Unavailable if !encrypted => format!(
            "Not encrypted: no keychain item (saved passwords, Wi-Fi passwords, app logins) \
             can come back on a new iPhone, whatever the keychain holds. It could not be read \
             here ({}), so its items cannot be listed.",
            kc.summary.reason.as_deref().unwrap_or("unknown reason")
        ),
        KeychainStatus::Unavailable => format!(
            "The keychain could not be read ({}), so what a new iPhone would lose cannot be told.",
            kc.summary.reason.as_deref().unwrap_or("unknown reason")
        ),
    };
    LostOnNewDevice {
        summary,
        why,
        items,
        named,
        groups,
        migratory: migratory_count,
        migratory_by_access_group,
        also_lost,
    }
}

/// `1 aku in inet, 1 cku in genp`: sealed items by class and table.
fn sealed_breakdown(items: &[&KeychainItem]) -> String {
    let mut by: BTreeMap<(Option<u32>, &str), (u64, &str)> = BTreeMap::new();
    for i in items.iter().filter(|i| i.access_group.is_none()) {
        let e = by
            .entry((i.class, i.table.as_str()))
            .or_insert((0, i.class_short.unwrap_or("unknown class")));
        e.0 += 1;
    }
    by.iter()
        .map(|((_, table), (n, short))| format!("{n} {short} in {table}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_app_domain(domain: &str) -> bool {
    domain.starts_with("AppDomain-")
        || domain.starts_with("AppDomainGroup-")
        || domain.starts_with("AppDomainPlugin-")
}

fn under(rel: &str, dir: &str) -> bool {
    rel == dir || (rel.starts_with(dir) && rel.as_bytes().get(dir.len()) == Some(&b'/'))
}

fn examples<'a>(recs: impl Iterator<Item = &'a Record>) -> (u64, Vec<String>) {
    let mut n = 0;
    let mut ex = Vec::new();
    for r in recs {
        n += 1;
        if ex.len() < 5 {
            ex.push(r.display_path());
        }
    }
    (n, ex)
}

fn verdict(found: u64) -> Verdict {
    if found == 0 {
        Verdict::Absent
    } else {
        Verdict::Present
    }
}

fn never_backed_up(backup: &Backup, catalog: &Catalog, kc: &keychain::Facts) -> Vec<NeverBackedUp> {
    let mut out = Vec::new();
    let stored = |r: &&Record| r.kind() != RecordKind::Directory;

    let akpu = kc.summary.akpu;
    out.push(match kc.summary.status {
        KeychainStatus::Read => NeverBackedUp {
            id: "akpu-keychain-items",
            what: "Keychain items of class akpu (WhenPasscodeSetThisDeviceOnly)".into(),
            verdict: verdict(akpu),
            found: akpu,
            examples: Vec::new(),
            detail: format!(
                "Checked: {} of the {} in keychain-backup.plist {} class 12. The iPhone never \
                 exports akpu items, so how many it had cannot be known from any backup; they \
                 are lost on restore, even to the same iPhone.",
                thousands(akpu),
                plural(kc.items.len() as u64, "item", "items"),
                if akpu == 1 { "is" } else { "are" }
            ),
        },
        _ => NeverBackedUp {
            id: "akpu-keychain-items",
            what: "Keychain items of class akpu (WhenPasscodeSetThisDeviceOnly)".into(),
            verdict: Verdict::Unverifiable,
            found: 0,
            examples: Vec::new(),
            detail: "The keychain could not be read here. The iPhone never exports akpu items: \
                     they are lost on restore, even to the same iPhone."
                .into(),
        },
    });

    let (n, ex) = examples(
        catalog
            .records
            .iter()
            .filter(|r| is_app_domain(&r.domain) && under(&r.relative_path, "Library/Caches"))
            .filter(stored),
    );
    let (sys, _) = examples(
        catalog
            .records
            .iter()
            .filter(|r| !is_app_domain(&r.domain) && under(&r.relative_path, "Library/Caches"))
            .filter(stored),
    );
    let mut detail = format!(
        "Checked Manifest.db: {} under an app's Library/Caches.",
        plural(n, "file", "files")
    );
    if sys > 0 {
        detail.push_str(&format!(
            " (System domains keep some caches on purpose: {} here, e.g. location data.)",
            plural(sys, "file", "files")
        ));
    }
    out.push(NeverBackedUp {
        id: "app-caches",
        what: "Apps' Library/Caches".into(),
        verdict: verdict(n),
        found: n,
        examples: ex,
        detail,
    });

    let (n, ex) = examples(
        catalog
            .records
            .iter()
            .filter(|r| is_app_domain(&r.domain) && under(&r.relative_path, "tmp"))
            .filter(stored),
    );
    out.push(NeverBackedUp {
        id: "app-tmp",
        what: "Apps' tmp folders".into(),
        verdict: verdict(n),
        found: n,
        examples: ex,
        detail: format!(
            "Checked Manifest.db: {} under an app's tmp/.",
            plural(n, "file", "files")
        ),
    });

    let (n, ex) = examples(catalog.records.iter().filter(|r| {
        is_app_domain(&r.domain)
            && r.relative_path
                .split('/')
                .any(|c| c.len() > 4 && c.ends_with(".app"))
    }));
    let apps = backup
        .manifest()
        .map(|m| m.applications.len())
        .filter(|&n| n > 0)
        .or_else(|| {
            backup
                .info()
                .map(|i| i.installed_applications.len())
                .filter(|&n| n > 0)
        });
    out.push(NeverBackedUp {
        id: "app-bundles",
        what: "App bundles (the apps themselves)".into(),
        verdict: verdict(n),
        found: n,
        examples: ex,
        detail: format!(
            "Checked Manifest.db: {} inside an .app bundle. Apps are downloaded again from \
             the App Store on restore{}.",
            plural(n, "record", "records"),
            match apps {
                Some(a) => format!("; this backup lists {}", plural(a as u64, "app", "apps")),
                None => String::new(),
            }
        ),
    });

    out.push(NeverBackedUp {
        id: "excluded-files",
        what: "Files apps mark as excluded from backup (isExcludedFromBackup)".into(),
        verdict: Verdict::Unverifiable,
        found: 0,
        examples: Vec::new(),
        detail: "The iPhone leaves them out without a trace: no backup can show they existed."
            .into(),
    });
    out.push(NeverBackedUp {
        id: "device-secrets",
        what: "Face ID / Touch ID data, the passcode, Apple Pay cards; content already in \
               iCloud (iCloud Photos, Messages in iCloud, iCloud Drive); media synced from a \
               computer"
            .into(),
        verdict: Verdict::Unverifiable,
        found: 0,
        examples: Vec::new(),
        detail: "Left out by design; they come back from iCloud or the computer, or must be set \
                 up again."
            .into(),
    });
    out
}

fn find<'a>(catalog: &'a Catalog, domain: &str, rel: &str) -> Option<&'a Record> {
    catalog
        .records
        .iter()
        .find(|r| r.domain == domain && r.relative_path == rel && r.kind() == RecordKind::File)
}

fn encrypted_only(catalog: &Catalog, kc: &keychain::Facts) -> Vec<EncryptedOnly> {
    let mut out = Vec::new();
    let kc_read = kc.summary.status == KeychainStatus::Read;

    let health: Vec<&Record> = catalog
        .records
        .iter()
        .filter(|r| r.domain == "HealthDomain" && r.kind() == RecordKind::File)
        .collect();
    out.push(EncryptedOnly {
        id: "health",
        what: "Health data (HealthDomain)".into(),
        present: Some(!health.is_empty()),
        evidence: if health.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "HealthDomain: {}",
                plural(health.len() as u64, "file", "files")
            )]
        },
        detail: "Activity, heart, medical records and the like.".into(),
    });

    let migratory = kc.items.iter().filter(|i| i.migratory).count() as u64;
    let internet = kc
        .items
        .iter()
        .filter(|i| i.migratory && i.table == "inet")
        .count() as u64;
    out.push(EncryptedOnly {
        id: "saved-passwords",
        what: "Saved passwords (migratory keychain items)".into(),
        present: if kc_read { Some(migratory > 0) } else { None },
        evidence: if kc_read {
            vec![format!(
                "{} that can move to a new iPhone ({})",
                plural(migratory, "keychain item", "keychain items"),
                plural(internet, "internet password", "internet passwords")
            )]
        } else {
            Vec::new()
        },
        detail: match kc.summary.status {
            KeychainStatus::Read => "Website and app passwords, tokens and keys.".into(),
            _ => format!(
                "Not checked: {}",
                kc.summary
                    .reason
                    .as_deref()
                    .unwrap_or("the keychain was not read")
            ),
        },
    });

    let mut wifi: Vec<String> = [
        "SystemConfiguration/com.apple.wifi.plist",
        "SystemConfiguration/com.apple.wifi-networks.plist",
        "SystemConfiguration/com.apple.wifi.known-networks.plist",
        "Library/Preferences/com.apple.wifi.plist",
    ]
    .iter()
    .filter_map(|p| find(catalog, "SystemPreferencesDomain", p))
    .map(Record::display_path)
    .collect();
    let airport = kc
        .items
        .iter()
        .filter(|i| {
            i.access_group.as_deref() == Some("apple") && i.service.as_deref() == Some("AirPort")
        })
        .count() as u64;
    if airport > 0 {
        wifi.push(format!(
            "{} (access group apple, service AirPort)",
            plural(airport, "Wi-Fi password", "Wi-Fi passwords")
        ));
    }
    out.push(EncryptedOnly {
        id: "wifi",
        what: "Wi-Fi networks and passwords".into(),
        present: Some(!wifi.is_empty()),
        evidence: wifi,
        detail: "Known networks (SystemPreferencesDomain) and their passwords (keychain).".into(),
    });

    for (id, what, rel) in [
        (
            "call-history",
            "Call history",
            "Library/CallHistoryDB/CallHistory.storedata",
        ),
        (
            "safari-history",
            "Safari history",
            "Library/Safari/History.db",
        ),
    ] {
        let rec = find(catalog, "HomeDomain", rel);
        out.push(EncryptedOnly {
            id,
            what: what.into(),
            present: Some(rec.is_some()),
            evidence: rec.map(Record::display_path).into_iter().collect(),
            detail: format!("HomeDomain/{rel}"),
        });
    }
    out
}

fn access(backup: &Backup, contents: &Contents, kc: &keychain::Facts) -> Vec<Access> {
    let files = plural(contents.files, "file", "files");
    let read = kc.summary.status == KeychainStatus::Read;
    let tdo = kc.items.iter().filter(|i| i.this_device_only).count() as u64;
    let migratory = kc.items.iter().filter(|i| i.migratory).count() as u64;
    let counted = |n: u64, one: &str, many: &str| {
        if read {
            format!("the {}", plural(n, one, many))
        } else {
            format!("the {many} (not counted: the keychain was not read)")
        }
    };
    if backup.is_encrypted() {
        vec![
            Access {
                who: "Anyone with the folder, without the password".into(),
                can_read: "Only Info.plist and Manifest.plist: device name, model, iOS version, \
                           serial number, UDID, backup date and the list of apps. No file \
                           content and no file name."
                    .into(),
            },
            Access {
                who: "Anyone with the backup password".into(),
                can_read: format!(
                    "Every file ({files}), every file name (Manifest.db), and {} \
                     (saved passwords, Wi-Fi, app logins).",
                    counted(
                        migratory,
                        "migratory keychain item",
                        "migratory keychain items"
                    )
                ),
            },
            Access {
                who: "The original iPhone (its UID key 0x835), with the password".into(),
                can_read: format!(
                    "Everything above, plus {}. Nothing else can open them.",
                    counted(
                        tdo,
                        "ThisDeviceOnly keychain item",
                        "ThisDeviceOnly keychain items"
                    )
                ),
            },
        ]
    } else {
        vec![
            Access {
                who: "Anyone with the folder".into(),
                can_read: format!(
                    "Every file in plaintext ({files}, {} bytes) and every file name: no \
                     password is needed.",
                    thousands(contents.total_bytes)
                ),
            },
            Access {
                who: "No one off the original iPhone".into(),
                can_read: "The keychain: every item is sealed with the original iPhone's UID \
                           key 0x835. It comes back only on that iPhone."
                    .into(),
            },
        ]
    }
}

fn summarise(r: &AuditReport) -> Vec<Finding> {
    let mut out = Vec::new();
    let enc = &r.encryption;
    let lost = &r.lost_on_new_device;

    // 1. What a new iPhone will not get.
    match r.keychain.status {
        KeychainStatus::Read if lost.items > 0 && !enc.encrypted => out.push(Finding {
            level: Level::Critical,
            title: format!(
                "Not encrypted: none of the {} will come back on a new iPhone",
                plural(lost.items, "keychain item", "keychain items")
            ),
            detail: lost.why.clone(),
        }),
        KeychainStatus::Read if lost.items > 0 => {
            let mut detail = format!(
                "They are ThisDeviceOnly: sealed with the original iPhone's UID key, they \
                 come back only on that iPhone. By app: {}.",
                lost.by_app()
            );
            if lost.named < lost.items && enc.device_key_used {
                detail.push_str(
                    " The device key given did not open them: it is probably not this \
                     iPhone's key 0x835.",
                );
            } else if lost.named < lost.items {
                detail.push_str(
                    " The app and account of sealed items are encrypted with the device key \
                     too: --device-key (the original iPhone's key 0x835) names them.",
                );
            }
            detail.push_str(
                " Before moving to a new iPhone, use these apps' own export or backup, or be \
                 ready to sign in and set them up again.",
            );
            out.push(Finding {
                level: Level::Warning,
                title: format!(
                    "{} will not come back on a new iPhone",
                    plural(lost.items, "keychain item", "keychain items")
                ),
                detail,
            })
        }
        KeychainStatus::Read => out.push(Finding {
            level: Level::Ok,
            title: "Every keychain item can move to a new iPhone".into(),
            detail: lost.summary.clone(),
        }),
        KeychainStatus::Unavailable if !enc.encrypted => out.push(Finding {
            level: Level::Critical,
            title: "Not encrypted: no keychain item will come back on a new iPhone".into(),
            detail: format!(
                "{} Here the keychain file itself could not be read ({}), so its items cannot \
                 be listed.",
                lost.why,
                r.keychain.reason.as_deref().unwrap_or("unknown reason")
            ),
        }),
        KeychainStatus::Unavailable => out.push(Finding {
            level: Level::Warning,
            title: "The keychain could not be read".into(),
            detail: lost.summary.clone(),
        }),
        KeychainStatus::Absent => out.push(Finding {
            level: Level::Info,
            title: "No keychain in this backup".into(),
            detail: lost.summary.clone(),
        }),
    }

    // 2. Integrity.
    let i = &r.integrity;
    if !i.clean {
        let mut parts = Vec::new();
        for (n, what) in [
            (i.missing, "missing"),
            (i.damaged, "damaged"),
            (i.sealed, "sealed to the device"),
            (i.bad_records, "unusable records"),
            (i.skipped_rows, "unreadable Manifest.db rows"),
        ] {
            if n > 0 {
                parts.push(format!("{} {what}", thousands(n)));
            }
        }
        let mut detail = format!(
            "Of {}: {}.",
            plural(i.files, "file", "files"),
            parts.join(", ")
        );
        if i.digest_mismatches > 0 {
            detail.push_str(&format!(
                " {} no longer {} the Digest the iPhone recorded: changed after the backup \
                 was made; an iPhone refuses to restore such a backup.",
                plural(i.digest_mismatches, "blob", "blobs"),
                if i.digest_mismatches == 1 {
                    "matches"
                } else {
                    "match"
                }
            ));
        }
        if i.missing > 0 {
            detail.push_str(" Missing files cannot be restored from this backup.");
        }
        out.push(Finding {
            level: Level::Critical,
            title: format!(
                "{} missing or damaged",
                plural(
                    i.missing + i.damaged + i.sealed + i.bad_records,
                    "file is",
                    "files are"
                )
            ),
            detail,
        });
    } else if i.deep {
        out.push(Finding {
            level: Level::Ok,
            title: format!("All {} are intact", plural(i.files, "file", "files")),
            detail: format!(
                "Every blob was read: present, {} matching the recorded Digest, sizes and padding consistent.",
                plural(i.digest_checked, "digest", "digests")
            ),
        });
    } else {
        out.push(Finding {
            level: Level::Ok,
            title: format!("All {} are present", plural(i.files, "file", "files")),
            detail: "Quick audit: blobs were not read (run without --quick to check digests and padding)."
                .into(),
        });
    }

    // 3. Encryption and the password.
    if !enc.encrypted {
        out.push(Finding {
            level: Level::Critical,
            title: "Not encrypted: anyone with this folder can read every file".into(),
            detail: "Turn on \"Encrypt local backup\" in Finder or iTunes: the backup then also \
                     carries saved passwords, Wi-Fi, Health, call and Safari history, and needs \
                     the password to open."
                .into(),
        });
    } else {
        let mut detail = String::new();
        if let Some(k) = &enc.kdf {
            detail.push_str(&format!("Key derivation: {}. ", k.describe()));
        }
        if let Some(c) = &enc.guess_cost {
            detail.push_str(&format!(
                "One password guess costs {} on one CPU core of this machine ({:.2} guesses per second).",
                human_duration(c.seconds_per_guess_per_core),
                c.guesses_per_second_per_core
            ));
        }
        out.push(Finding {
            level: Level::Info,
            title: "Encrypted".into(),
            detail,
        });
        if let Some(s) = &enc.password_strength {
            let fastest = s.crack_times.last();
            let title = format!("Password strength: {} ({}/4)", s.rating, s.score);
            let mut detail = format!("zxcvbn estimates 10^{:.1} guesses.", s.guesses_log10);
            if let Some(t) = fastest {
                detail.push_str(&format!(" At {}: {}.", t.attacker, t.display));
            }
            if let Some(w) = &s.warning {
                detail.push_str(&format!(" {w}"));
            }
            // Weak for zxcvbn, or within a year's reach of a GPU rig: worth changing.
            let strong = s.score >= 3 && fastest.is_none_or(|t| t.seconds >= YEAR);
            out.push(Finding {
                level: if strong { Level::Ok } else { Level::Warning },
                title,
                detail,
            });
        }
    }

    // 4. Encrypted-only content in plaintext.
    if !enc.encrypted {
        let present: Vec<&str> = r
            .encrypted_only
            .iter()
            .filter(|e| e.present == Some(true))
            .map(|e| e.what.as_str())
            .collect();
        if !present.is_empty() {
            out.push(Finding {
                level: Level::Warning,
                title: "Data Apple keeps for encrypted backups is here in plaintext".into(),
                detail: format!(
                    "{}. An iPhone leaves these out of unencrypted backups, so this folder is \
                     probably a decrypted copy: protect it like the phone.",
                    present.join(", ")
                ),
            });
        }
    }

    // 5. Never in any backup.
    let found: Vec<&NeverBackedUp> = r
        .never_backed_up
        .iter()
        .filter(|n| n.verdict == Verdict::Present)
        .collect();
    if found.is_empty() {
        out.push(Finding {
            level: Level::Info,
            title: "Never in any backup".into(),
            detail: "akpu keychain items, apps' caches and tmp folders, the apps themselves, \
                     files apps exclude, Face ID / Touch ID, the passcode and Apple Pay. This \
                     backup holds none of those it can check."
                .into(),
        });
    } else {
        out.push(Finding {
            level: Level::Info,
            title: "Unusual content for a backup".into(),
            detail: found
                .iter()
                .map(|n| format!("{}: {} found", n.what, thousands(n.found)))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_a_folder() {
        assert!(under("Library/Caches", "Library/Caches"));
        assert!(under("Library/Caches/x", "Library/Caches"));
        assert!(!under("Library/CachesX", "Library/Caches"));
        assert!(!under("Library/Application Support/glean_data/tmp", "tmp"));
        assert!(under("tmp/a", "tmp"));
        assert_eq!(thousands(10_000_000), "10,000,000");
        assert_eq!(thousands(999), "999");
    }
}
