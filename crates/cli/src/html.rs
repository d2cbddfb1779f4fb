//! The audit report as one self-contained HTML page: inline CSS, no script, no
//! external resource, readable offline. Every string that comes from a backup
//! is escaped; a Content-Security-Policy forbids scripts as a second line of defence.

use std::fmt::Write as _;

use mobilebackup::audit::{
    human_duration, AuditReport, Finding, KeychainItem, KeychainStatus, Level, Verdict,
};

use crate::commands::audit::{device_line, item_ref, ordered_problems};
use crate::output::{human_bytes, iso8601, plural, sanitize, thousands};

/// Problems listed in the page (JSON lists all).
const SHOWN_PROBLEMS: usize = 200;
/// Domains listed in the page.
const SHOWN_DOMAINS: usize = 25;

/// Escapes text for HTML element content and quoted attribute values; control
/// characters are shown escaped (`\n`, `\u{0}`), as in text output.
pub fn escape(s: &str) -> String {
    let s = sanitize(s);
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root { --ink:#1d2433; --muted:#5b6475; --line:#e3e6ec; --bg:#f6f7f9; --card:#fff;
  --crit:#b42318; --crit-bg:#fef3f2; --warn:#9a4b00; --warn-bg:#fff6e5;
  --ok:#067647; --ok-bg:#ecfdf3; --info:#34405a; --info-bg:#eef1f6; }
* { box-sizing: border-box; }
html { background: var(--bg); }
body { margin: 0; color: var(--ink); font: 15px/1.5 system-ui, -apple-system, "Segoe UI",
  Roboto, "Helvetica Neue", Arial, "Noto Sans", "Liberation Sans", sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 32px 28px 48px; }
header { margin-bottom: 8px; }
h1 { font-size: 26px; margin: 0 0 2px; letter-spacing: -0.01em; }
.sub { color: var(--muted); margin: 0 0 14px; }
h2 { font-size: 19px; margin: 0 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p, li { overflow-wrap: anywhere; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 20px 22px; margin: 18px 0; }
p { margin: 6px 0; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr));
  gap: 8px 20px; margin: 0; }
.facts div { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; }
.facts dt { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.facts dd { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
.findings { list-style: none; margin: 0; padding: 0; }
.findings li { border-left: 5px solid; border-radius: 6px; padding: 10px 14px; margin: 10px 0; }
.findings .t { font-weight: 650; }
.findings p { margin: 4px 0 0; color: var(--ink); }
.critical { border-color: var(--crit) !important; background: var(--crit-bg); }
.warning { border-color: var(--warn) !important; background: var(--warn-bg); }
.ok { border-color: var(--ok) !important; background: var(--ok-bg); }
.info { border-color: var(--info) !important; background: var(--info-bg); }
.badge { display: inline-block; min-width: 74px; text-align: center; font-size: 11px; font-weight: 700;
  text-transform: uppercase; letter-spacing: .05em; border-radius: 999px; padding: 1px 8px;
  margin-right: 8px; color: #fff; vertical-align: 1px; }
.badge.critical { background: var(--crit); } .badge.warning { background: var(--warn); }
.badge.ok { background: var(--ok); } .badge.info { background: var(--info); }
.pill { display: inline-block; font-size: 12px; font-weight: 600; border-radius: 999px; padding: 0 8px;
  white-space: nowrap; }
.pill.yes { background: var(--warn-bg); color: var(--warn); }
.pill.no { background: var(--info-bg); color: var(--info); }
.pill.found { background: var(--crit-bg); color: var(--crit); }
.pill.absent { background: var(--ok-bg); color: var(--ok); }
.pill.unseen { background: var(--info-bg); color: var(--info); }
table { width: 100%; border-collapse: collapse; margin: 6px 0 4px; font-size: 14px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
td { overflow-wrap: break-word; }
td.wrap { overflow-wrap: anywhere; }
table.fixed { table-layout: fixed; }
th.row { color: var(--ink); font-size: 14px; text-transform: none; letter-spacing: 0; width: 30%; }
.small { font-size: 12px; }
td.n, th.n { text-align: right; white-space: nowrap; }
code, .mono { font: 13px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace; }
.muted { color: var(--muted); }
.why { background: var(--info-bg); border-radius: 8px; padding: 10px 14px; margin-top: 14px; }
.stats { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; margin: 8px 0 12px; }
.stat { border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; }
.stat b { display: block; font-size: 22px; }
.stat.bad b { color: var(--crit); }
.stat span { color: var(--muted); font-size: 13px; }
ul.plain { margin: 6px 0; padding-left: 20px; }
footer { color: var(--muted); font-size: 13px; text-align: center; margin-top: 24px; }
"#;

fn level_class(l: Level) -> &'static str {
    match l {
        Level::Critical => "critical",
        Level::Warning => "warning",
        Level::Ok => "ok",
        Level::Info => "info",
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Critical => "Critical",
        Level::Warning => "Warning",
        Level::Ok => "OK",
        Level::Info => "Note",
    }
}

fn opt(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => escape(s),
        _ => "<span class=\"muted\">—</span>".into(),
    }
}

fn findings(h: &mut String, list: &[Finding]) {
    h.push_str("<ul class=\"findings\">");
    for f in list {
        let c = level_class(f.level);
        let _ = write!(
            h,
            "<li class=\"{c}\"><span class=\"badge {c}\">{}</span><span class=\"t\">{}</span><p>{}</p></li>",
            level_name(f.level),
            escape(&f.title),
            escape(&f.detail)
        );
    }
    h.push_str("</ul>");
}

fn item_rows(h: &mut String, items: &[KeychainItem]) {
    h.push_str(
        "<table class=\"fixed\"><colgroup><col style=\"width:15%\"><col style=\"width:29%\">\
         <col style=\"width:27%\"><col style=\"width:19%\"><col style=\"width:10%\"></colgroup>\
         <tr><th>Kind</th><th>Service / server</th><th>Account</th><th>Class</th><th>Item</th></tr>",
    );
    for i in items {
        let what = i
            .service
            .as_deref()
            .or(i.server.as_deref())
            .or(i.label.as_deref());
        let sealed = i.state != "open" && i.access_group.is_none();
        let (what, account) = if sealed {
            (
                format!(
                    "<span class=\"muted\">{}</span>",
                    escape(i.reason.as_deref().unwrap_or("sealed"))
                ),
                "<span class=\"muted\">sealed</span>".to_string(),
            )
        } else {
            (opt(what), opt(i.account.as_deref()))
        };
        let class = match (i.class_short, i.class_name) {
            (Some(s), Some(n)) => format!(
                "<b>{}</b><br><span class=\"muted small\">{}</span>",
                escape(s),
                escape(n.trim_start_matches("kSecAttrAccessible"))
                    .replace("ThisDeviceOnly", "<wbr>ThisDeviceOnly")
            ),
            _ => "<span class=\"muted\">unknown</span>".into(),
        };
        let reference = match i.rowid {
            Some(_) => escape(&item_ref(i)),
            None => format!(
                "{}<br><span class=\"muted small\">{}</span>",
                escape(&i.table),
                escape(&i.persistent_ref)
            ),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"wrap\">{what}</td><td class=\"wrap\">{account}</td>\
             <td class=\"wrap\">{class}</td><td class=\"mono wrap\">{reference}</td></tr>",
            escape(i.kind),
        );
    }
    h.push_str("</table>");
}

/// The whole page.
pub fn audit_page(r: &AuditReport) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let device = device_line(r);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>Backup audit — {}</title><style>{STYLE}</style></head><body><main>",
        escape(&device)
    );

    // Header.
    let _ = write!(
        h,
        "<header><h1>Backup audit</h1><p class=\"sub\">{}</p><dl class=\"facts\">",
        escape(&device)
    );
    let mut fact = |k: &str, v: String| {
        let _ = write!(h, "<div><dt>{k}</dt><dd>{v}</dd></div>");
    };
    fact(
        "Backed up",
        r.backup_date_unix.map_or("unknown".into(), iso8601),
    );
    fact(
        "Encrypted",
        if r.encryption.encrypted {
            "Yes".into()
        } else {
            "No".into()
        },
    );
    fact(
        "Files",
        format!(
            "{} ({})",
            thousands(r.contents.files),
            human_bytes(r.contents.total_bytes)
        ),
    );
    fact(
        "Keychain",
        match r.keychain.status {
            KeychainStatus::Read => plural(r.keychain.items, "item", "items"),
            KeychainStatus::Absent => "none".into(),
            KeychainStatus::Unavailable => "not available".into(),
        },
    );
    fact("UDID", opt(r.device.udid.as_deref()));
    fact("Folder", escape(&r.backup));
    h.push_str("</dl></header>");

    // Summary.
    h.push_str("<section id=\"summary\"><h2>Summary</h2>");
    findings(&mut h, &r.summary);
    h.push_str("</section>");

    // Lost on a new iPhone.
    let lost = &r.lost_on_new_device;
    h.push_str("<section id=\"lost\"><h2>What a new iPhone will not get back</h2>");
    let _ = write!(h, "<p>{}</p>", escape(&lost.summary));
    for g in &lost.groups {
        let _ = write!(
            h,
            "<h3>{} <span class=\"muted\">· {}</span></h3>",
            match &g.access_group {
                Some(a) => escape(a),
                None => "Sealed items (app unknown)".into(),
            },
            plural(g.items.len() as u64, "item", "items")
        );
        item_rows(&mut h, &g.items);
    }
    if !lost.groups.is_empty() {
        let _ = write!(h, "<p class=\"why\"><b>Why.</b> {}</p>", escape(&lost.why));
    }
    if lost.migratory > 0 {
        let groups: Vec<String> = lost
            .migratory_by_access_group
            .iter()
            .map(|g| {
                format!(
                    "{} ({})",
                    g.access_group
                        .as_deref()
                        .map_or("app unknown".into(), escape),
                    g.items
                )
            })
            .collect();
        let _ = write!(
            h,
            "<p><b>These do come back:</b> {} — {}.</p>",
            plural(
                lost.migratory,
                "migratory keychain item",
                "migratory keychain items"
            ),
            groups.join(", ")
        );
    }
    h.push_str("<p><b>Never carried to any iPhone:</b></p><ul class=\"plain\">");
    for a in &lost.also_lost {
        let _ = write!(h, "<li>{}</li>", escape(a));
    }
    h.push_str("</ul></section>");

    // Encryption and password.
    let e = &r.encryption;
    h.push_str("<section id=\"password\"><h2>Encryption and password</h2>");
    if !e.encrypted {
        h.push_str(
            "<p>Not encrypted: every file is stored in plaintext. There is no password to guess.</p>",
        );
    }
    if e.kdf.is_some() || e.guess_cost.is_some() {
        h.push_str("<table>");
        if let Some(k) = &e.kdf {
            let _ = write!(
                h,
                "<tr><th class=\"row\">Key derivation</th><td>{}</td></tr>",
                escape(&k.describe())
            );
        }
        if let Some(c) = &e.guess_cost {
            let _ = write!(
                h,
                "<tr><th class=\"row\">One guess</th><td>{} on one CPU core of this machine \
                 ({:.2} guesses/s; {:.2}/s on all {} cores)</td></tr>",
                human_duration(c.seconds_per_guess_per_core),
                c.guesses_per_second_per_core,
                c.guesses_per_second_this_machine,
                c.cores
            );
        }
        if e.device_key_used {
            h.push_str(
                "<tr><th class=\"row\">Device key</th><td>Given: it unseals the ThisDeviceOnly classes when it is this \
                 iPhone's. Keep it as secret as the iPhone itself.</td></tr>",
            );
        }
        h.push_str("</table>");
    }
    match &e.password_strength {
        Some(p) => {
            let _ = write!(
                h,
                "<h3>Password strength: {} ({}/4)</h3><p>zxcvbn estimates about 10<sup>{:.1}</sup> guesses.",
                escape(p.rating),
                p.score,
                p.guesses_log10
            );
            if let Some(w) = &p.warning {
                let _ = write!(h, " {}", escape(w));
            }
            h.push_str("</p><table><tr><th>Attacker</th><th class=\"n\">Guesses / s</th><th class=\"n\">Time to guess</th></tr>");
            for t in &p.crack_times {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td class=\"n\">{:.1}</td><td class=\"n\">{}</td></tr>",
                    escape(&t.attacker),
                    t.guesses_per_second,
                    escape(&t.display)
                );
            }
            h.push_str("</table>");
            if !p.suggestions.is_empty() {
                h.push_str("<ul class=\"plain\">");
                for s in &p.suggestions {
                    let _ = write!(h, "<li>{}</li>", escape(s));
                }
                h.push_str("</ul>");
            }
        }
        None if e.encrypted => h.push_str(
            "<p class=\"muted\">Password strength not rated: give the password \
             (KEYBAG_PASSWORD or --password-file) instead of a derived key to rate it.</p>",
        ),
        None => {}
    }
    if let (Some(c), Some(_)) = (&e.guess_cost, &e.password_strength) {
        let _ = write!(h, "<p class=\"muted\">{}</p>", escape(&c.note));
    }
    h.push_str("</section>");

    // Only in encrypted backups.
    h.push_str(
        "<section id=\"encrypted-only\"><h2>Only in encrypted backups</h2>\
         <table><tr><th style=\"width:32%\">What</th><th style=\"width:130px\">This backup</th>\
         <th>Evidence</th></tr>",
    );
    for x in &r.encrypted_only {
        let state = match x.present {
            Some(true) => "<span class=\"pill yes\">present</span>",
            Some(false) => "<span class=\"pill no\">absent</span>",
            None => "<span class=\"pill unseen\">unknown</span>",
        };
        let evidence = if x.evidence.is_empty() {
            escape(&x.detail)
        } else {
            x.evidence
                .iter()
                .map(|e| escape(e))
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{state}</td><td class=\"wrap\">{evidence}</td></tr>",
            escape(&x.what)
        );
    }
    h.push_str("</table></section>");

    // Never in any backup.
    h.push_str(
        "<section id=\"never\"><h2>Never in any backup</h2>\
         <table><tr><th style=\"width:32%\">What</th><th style=\"width:130px\">This backup</th>\
         <th>How we know</th></tr>",
    );
    for n in &r.never_backed_up {
        let pill = match n.verdict {
            Verdict::Absent => "<span class=\"pill absent\">absent (checked)</span>",
            Verdict::Present => "<span class=\"pill found\">found</span>",
            Verdict::Unverifiable => "<span class=\"pill unseen\">cannot be seen</span>",
        };
        let mut how = escape(&n.detail);
        for ex in &n.examples {
            let _ = write!(how, "<br><code>{}</code>", escape(ex));
        }
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{pill}</td><td class=\"wrap\">{how}</td></tr>",
            escape(&n.what)
        );
    }
    h.push_str("</table></section>");

    // Integrity.
    let i = &r.integrity;
    h.push_str("<section id=\"integrity\"><h2>Integrity</h2>");
    if i.deep {
        let _ = write!(
            h,
            "<p>Read {} of {} ({}); {} checked against the Digest the iPhone recorded.</p>",
            plural(i.files_read, "file", "files"),
            thousands(i.files),
            human_bytes(i.bytes_read),
            plural(i.digest_checked, "digest", "digests")
        );
    } else {
        let _ = write!(
            h,
            "<p>Quick audit: checked that each of the {} is present; contents not read.</p>",
            plural(i.files, "file", "files")
        );
    }
    h.push_str("<div class=\"stats\">");
    for (n, label, bad) in [
        (i.missing, "missing", true),
        (i.digest_mismatches, "digest mismatches", true),
        (i.damaged, "damaged", true),
        (i.sealed, "sealed", true),
        (i.bad_records, "bad records", true),
        (i.size_mismatches, "size mismatches (warning)", false),
    ] {
        let _ = write!(
            h,
            "<div class=\"stat{}\"><b>{}</b><span>{label}</span></div>",
            if bad && n > 0 { " bad" } else { "" },
            thousands(n)
        );
    }
    h.push_str("</div>");
    if !i.problems.is_empty() {
        h.push_str("<table><tr><th>Problem</th><th>File</th><th>Detail</th></tr>");
        for p in ordered_problems(i).into_iter().take(SHOWN_PROBLEMS) {
            let kind = serde_json::to_value(p.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"mono wrap\">{}</td><td class=\"wrap\">{}</td></tr>",
                escape(&kind),
                escape(&p.path),
                escape(&p.message)
            );
        }
        h.push_str("</table>");
        if i.problems.len() > SHOWN_PROBLEMS {
            let _ = write!(
                h,
                "<p class=\"muted\">… and {} more: <code>keybag audit --json</code> lists them all.</p>",
                thousands((i.problems.len() - SHOWN_PROBLEMS) as u64)
            );
        }
    }
    h.push_str("</section>");

    // Who can read what.
    h.push_str("<section id=\"access\"><h2>Who can read what</h2><table>");
    for a in &r.access {
        let _ = write!(
            h,
            "<tr><th class=\"row\">{}</th><td>{}</td></tr>",
            escape(&a.who),
            escape(&a.can_read)
        );
    }
    h.push_str("</table></section>");

    // Contents.
    let c = &r.contents;
    let _ = write!(
        h,
        "<section id=\"contents\"><h2>Contents</h2><p>{}: {}, {}, {}; {}.</p>",
        plural(c.records, "record", "records"),
        plural(c.files, "file", "files"),
        plural(c.directories, "folder", "folders"),
        plural(c.symlinks, "symlink", "symlinks"),
        human_bytes(c.total_bytes)
    );
    let k = &r.keychain;
    match k.status {
        KeychainStatus::Read => {
            let _ = write!(
                h,
                "<p>Keychain: {} — {} open, {} sealed, {} damaged; {} ThisDeviceOnly, {} migratory.</p>",
                plural(k.items, "item", "items"),
                k.open,
                k.sealed,
                k.damaged,
                k.this_device_only,
                k.migratory
            );
            h.push_str("<table><tr><th>Keychain class</th><th class=\"n\">Items</th><th class=\"n\">Open</th></tr>");
            for cl in &k.by_class {
                let _ = write!(
                    h,
                    "<tr><td>{} <span class=\"muted\">{}</span></td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    escape(cl.short_name),
                    escape(cl.name),
                    cl.items,
                    cl.open
                );
            }
            h.push_str("</table>");
        }
        _ => {
            let _ = write!(
                h,
                "<p>Keychain: not available — {}</p>",
                escape(k.reason.as_deref().unwrap_or("unknown"))
            );
        }
    }
    if !k.warnings.is_empty() {
        h.push_str("<ul class=\"plain muted\">");
        for w in &k.warnings {
            let _ = write!(h, "<li>{}</li>", escape(w));
        }
        h.push_str("</ul>");
    }
    h.push_str("<h3>Files by protection class</h3><table><tr><th>Class</th><th>Name</th><th class=\"n\">Files</th><th class=\"n\">Size</th></tr>");
    for cl in &c.by_class {
        let _ = write!(
            h,
            "<tr><td>{} {}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            cl.class,
            escape(cl.short_name),
            escape(cl.name),
            thousands(cl.files),
            human_bytes(cl.bytes)
        );
    }
    h.push_str("</table>");
    let mut domains: Vec<_> = c.by_domain.iter().collect();
    domains.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.records.cmp(&a.records)));
    let _ = write!(
        h,
        "<h3>Largest domains <span class=\"muted\">· {} of {}</span></h3>\
         <table><tr><th>Domain</th><th class=\"n\">Records</th><th class=\"n\">Files</th><th class=\"n\">Size</th></tr>",
        SHOWN_DOMAINS.min(domains.len()),
        thousands(domains.len() as u64)
    );
    for d in domains.iter().take(SHOWN_DOMAINS) {
        let _ = write!(
            h,
            "<tr><td class=\"mono wrap\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&d.domain),
            thousands(d.records),
            thousands(d.files),
            human_bytes(d.bytes)
        );
    }
    h.push_str("</table></section>");

    let _ = writeln!(
        h,
        "<footer>Made by keybag {} · This page holds no password, key or keychain secret.</footer>\
         </main></body></html>",
        env!("CARGO_PKG_VERSION")
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_controls() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(escape("a\nb\0"), "a\\nb\\u{0}");
    }
}
