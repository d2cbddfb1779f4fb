//! `keybag passwd`: a new password for an encrypted backup, in place.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result};
use dataprotection::KdfLimits;
use mobilebackup::passwd::{self, Hooks, Report};
use mobilebackup::{Backup, Credentials, Secret};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::args::BackupArgs;
use crate::output::{plural, print_json, thousands};
use crate::{exit, progress, secrets};

/// Environment variable holding the new password.
pub const NEW_PASSWORD_ENV: &str = "KEYBAG_NEW_PASSWORD";

/// `keybag passwd --help`.
pub const LONG_ABOUT: &str = "\
Change an encrypted backup's password in place. The keybag's class keys are
re-wrapped under the new password with fresh random salts; the iteration counts
stay, and so do the class keys themselves: ManifestKey, Manifest.db and every
file are untouched (classes sealed to the device keep that layer too). There is
no way to remove the encryption in place: `keybag decrypt` writes an unencrypted
copy.

The current password comes from the usual sources (below) or
--derived-key-file. The new one comes from --new-password-file FILE, else the
KEYBAG_NEW_PASSWORD environment variable, else a prompt, asked twice, when stdin
is a terminal. It is never accepted as an argument.

Only Manifest.plist is rewritten, and crash-safely: it is copied to
Manifest.plist.bak, the new one is written to a temp file and renamed into
place, then read back and checked (the backup must open with the new password
and decrypt as before), and the copy is deleted. If the check fails, the copy is
put back and the password is unchanged.

If passwd is interrupted, the backup opens with the old password or the new one:
  - Manifest.plist.bak identical to Manifest.plist: the old password still
    works; running passwd again simply starts over.
  - Manifest.plist.bak differs: passwd refuses to run. Check with
    `keybag verify BACKUP` and the new password: if that works, delete
    Manifest.plist.bak; if only the old password works, rename
    Manifest.plist.bak to Manifest.plist.

Note: only this folder changes. The iPhone keeps its own backup password, and
the next backup it makes into this folder uses that one (change it in Finder or
iTunes). Because the class keys stay, anyone who knew the old password and kept
a copy of the old Manifest.plist can still read this backup; for new keys, make
a fresh encrypted backup from the device.";

#[derive(Serialize)]
struct JsonReport {
    backup: String,
    changed: bool,
    rewrapped: usize,
    device_bound: usize,
    iter: Option<u32>,
    dpic: Option<u32>,
    records: usize,
    sample: Option<String>,
    replaced_leftover: bool,
}

/// The new password from `--new-password-file` or `KEYBAG_NEW_PASSWORD`; `None` if neither is given.
fn new_password_given(file: Option<&Path>) -> Result<Option<Zeroizing<Vec<u8>>>> {
    if let Some(path) = file {
        return secrets::read_password_file(path, "--new-password-file").map(Some);
    }
    if let Some(value) = std::env::var_os(NEW_PASSWORD_ENV) {
        use std::os::unix::ffi::OsStringExt;
        let pw = Zeroizing::new(value.into_vec());
        if pw.is_empty() {
            return Err(exit::other(format!(
                "{NEW_PASSWORD_ENV} is set but empty; nothing was changed"
            )));
        }
        return Ok(Some(pw));
    }
    Ok(None)
}

/// The two prompted entries must be equal and not empty.
fn confirmed(first: Zeroizing<Vec<u8>>, second: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>> {
    if first.is_empty() {
        return Err(exit::other(
            "the new password is empty; nothing was changed",
        ));
    }
    if first != second {
        return Err(exit::other(
            "the two new passwords differ; nothing was changed",
        ));
    }
    Ok(first)
}

fn prompt_twice(dir: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let ask = |prompt: String| -> Result<Zeroizing<Vec<u8>>> {
        Ok(Zeroizing::new(
            rpassword::prompt_password(prompt)
                .context("reading the new password from the terminal")?
                .into_bytes(),
        ))
    };
    let first = ask(format!("New password for {}: ", dir.display()))?;
    if first.is_empty() {
        return Err(exit::other(
            "the new password is empty; nothing was changed",
        ));
    }
    let second = ask("Repeat the new password: ".to_string())?;
    confirmed(first, second)
}

fn print_text(dir: &Path, r: &Report) -> Result<()> {
    let mut w = std::io::stdout().lock();
    if r.replaced_leftover {
        writeln!(
            w,
            "Replaced Manifest.plist.bak left by an interrupted run (it equalled Manifest.plist)."
        )?;
    }
    let sealed = if r.device_bound > 0 {
        format!(
            " ({} of them also sealed to the original device, a layer left as it was)",
            thousands(r.device_bound as u64)
        )
    } else {
        String::new()
    };
    writeln!(
        w,
        "Password changed for {}: {} re-wrapped under the new password with fresh salts{sealed}.",
        crate::output::sanitize(&dir.display().to_string()),
        plural(r.rewrapped as u64, "class key", "class keys"),
    )?;
    writeln!(
        w,
        "ManifestKey, Manifest.db and files untouched; only Manifest.plist was rewritten."
    )?;
    let sample = r
        .sample
        .as_deref()
        .map(|s| format!(" and {} decrypt", crate::output::sanitize(s)))
        .unwrap_or_else(|| " decrypts".into());
    writeln!(
        w,
        "Checked: the backup opens with the new password, and Manifest.db ({}){sample} as before.",
        plural(r.records as u64, "record", "records"),
    )?;
    writeln!(w, "The old password no longer opens this folder.")?;
    w.flush()?;
    Ok(())
}

/// Runs `keybag passwd`.
pub fn run(args: &BackupArgs, new_password_file: Option<&Path>) -> Result<u8> {
    let stdin = Some(Path::new("-"));
    if args.password_file.as_deref() == stdin && new_password_file == stdin {
        return Err(exit::usage(
            "--password-file and --new-password-file cannot both read stdin ('-')",
        ));
    }
    let mut keys = secrets::parse_keys(args)?;
    let mut backup = Backup::open(&args.dir)?;
    if !backup.is_encrypted() {
        return Err(exit::other(format!(
            "{}: the backup is not encrypted: there is no password to change (encryption \
             is switched on in Finder or iTunes on the next backup; `keybag decrypt` goes \
             the other way, writing an unencrypted copy of an encrypted backup)",
            args.dir.display()
        )));
    }
    passwd::check_leftover(&args.dir)?;
    // A new password from a file or the environment is read now, so a missing one
    // fails before any slow work; a prompt waits until the old one is known good.
    let given = new_password_given(new_password_file)?;
    if given.is_none() && !std::io::stdin().is_terminal() {
        return Err(exit::other(format!(
            "no new password given: use --new-password-file, {NEW_PASSWORD_ENV} or a terminal"
        )));
    }
    let old = secrets::passkey(&backup, args, keys.take_derived())?;
    backup.unlock_with_passkey(&old, None)?;
    let new_password = match given {
        Some(pw) => pw,
        None => prompt_twice(&args.dir)?,
    };
    let rounds = backup.keybag().and_then(|k| k.dpic);
    let creds = Credentials {
        secret: Secret::Passkey(old),
        device_key: None,
        limits: KdfLimits::default(),
    };
    let spinner = progress::spinner(match rounds {
        Some(n) => format!("deriving the new key ({} rounds)", thousands(n.into())),
        None => "deriving the new key".to_string(),
    });
    let result = passwd::change_password(&args.dir, &creds, &new_password, &Hooks::default());
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let report = result?;
    if args.json {
        print_json(&JsonReport {
            backup: args.dir.display().to_string(),
            changed: true,
            rewrapped: report.rewrapped,
            device_bound: report.device_bound,
            iter: report.iter,
            dpic: report.dpic,
            records: report.records,
            sample: report.sample.clone(),
            replaced_leftover: report.replaced_leftover,
        })?;
    } else {
        print_text(&args.dir, &report)?;
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn z(s: &str) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(s.as_bytes().to_vec())
    }

    #[test]
    fn the_two_entries_must_match_and_not_be_empty() {
        assert_eq!(&confirmed(z("a b"), z("a b")).unwrap()[..], b"a b");
        let e = confirmed(z("one"), z("two")).unwrap_err();
        assert_eq!(exit::code(&e), exit::OTHER);
        assert!(e.to_string().contains("differ"));
        assert!(!e.to_string().contains("one"), "never echoes a password");
        assert!(confirmed(z(""), z(""))
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }
}
