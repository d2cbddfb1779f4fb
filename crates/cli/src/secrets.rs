//! Where passwords and keys come from, and unlocking a backup with them.
//!
//! Order: `--derived-key`/`--derived-key-file`, then `--password-file`, then the
//! `KEYBAG_PASSWORD` environment variable, then a prompt when stdin is a terminal.
//! A password is never taken from the command line; secrets are never printed
//! and password buffers are wiped after use.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{Context, Result};
use dataprotection::keys::Secret;
use dataprotection::{DeviceKey, KdfLimits, Passkey};
use mobilebackup::Backup;
use zeroize::Zeroizing;

use crate::args::BackupArgs;
use crate::exit;
use crate::output::{thousands, warn};
use crate::progress;

/// Environment variable holding the password.
pub const PASSWORD_ENV: &str = "KEYBAG_PASSWORD";

/// Longest password file line we read.
const MAX_PASSWORD_BYTES: u64 = 64 * 1024;

/// Keys given on the command line or in key files, parsed before anything else runs.
pub struct Keys {
    derived: Option<Passkey>,
    device: Option<DeviceKey>,
}

impl Keys {
    /// The derived key given, if any (for commands that need the passkey itself).
    pub fn take_derived(&mut self) -> Option<Passkey> {
        self.derived.take()
    }

    /// The device key 0x835 given, if any.
    pub fn take_device(&mut self) -> Option<DeviceKey> {
        self.device.take()
    }
}

/// Parses `text` as exactly `N` bytes of hex; the message never quotes the input.
pub(crate) fn parse_hex<const N: usize>(text: &str, what: &str) -> Result<Secret<N>> {
    let text = text.trim();
    if let Some(i) = text.find(|c: char| !c.is_ascii_hexdigit()) {
        return Err(exit::usage(format!(
            "{what}: character {} is not a hex digit (expected {} hex digits)",
            text[..i].chars().count() + 1,
            2 * N
        )));
    }
    if text.len() != 2 * N {
        return Err(exit::usage(format!(
            "{what}: expected {} hex digits ({N} bytes), got {}",
            2 * N,
            text.len()
        )));
    }
    Secret::<N>::from_hex(text).map_err(|_| exit::usage(format!("{what}: invalid hex")))
}

/// Reads a key file: `2N` hex digits (surrounding whitespace ignored) or `N` raw bytes.
pub(crate) fn read_key_file<const N: usize>(path: &Path, what: &str) -> Result<Secret<N>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    if meta.len() > 4096 {
        return Err(exit::other(format!(
            "{what} {}: {} bytes is too large for a key file",
            path.display(),
            meta.len()
        )));
    }
    let bytes =
        Zeroizing::new(std::fs::read(path).with_context(|| format!("{what} {}", path.display()))?);
    if let Ok(text) = std::str::from_utf8(&bytes) {
        if text.trim().len() == 2 * N {
            return parse_hex::<N>(text, &format!("{what} {}", path.display()));
        }
    }
    if bytes.len() == N {
        return Ok(Secret::<N>::from_slice(&bytes).expect("length checked"));
    }
    Err(exit::usage(format!(
        "{what} {}: expected {} hex digits or {N} raw bytes",
        path.display(),
        2 * N
    )))
}

/// Parses `--derived-key`, `--device-key` and their file forms (exit 2 when malformed).
pub fn parse_keys(args: &BackupArgs) -> Result<Keys> {
    let derived = match (&args.derived_key, &args.derived_key_file) {
        (Some(hex), _) => Some(parse_hex::<32>(hex.as_str(), "--derived-key")?),
        (None, Some(path)) => Some(read_key_file::<32>(path, "--derived-key-file")?),
        (None, None) => None,
    };
    let device = match (&args.device_key, &args.device_key_file) {
        (Some(hex), _) => Some(parse_hex::<16>(hex.as_str(), "--device-key")?),
        (None, Some(path)) => Some(read_key_file::<16>(path, "--device-key-file")?),
        (None, None) => None,
    };
    Ok(Keys { derived, device })
}

/// The first line of `bytes`, without its line ending, in a wiped buffer.
fn first_line(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let line = &bytes[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Zeroizing::new(line.to_vec())
}

/// The first line of FILE ('-' = stdin) given to `option`; an empty line is an error.
pub fn read_password_file(path: &Path, option: &str) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_PASSWORD_BYTES as usize + 1));
    let name = if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(MAX_PASSWORD_BYTES)
            .read_to_end(&mut buf)
            .with_context(|| format!("{option} -: reading stdin"))?;
        "stdin".to_string()
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_PASSWORD_BYTES).read_to_end(&mut buf))
            .with_context(|| format!("{option} {}", path.display()))?;
        path.display().to_string()
    };
    let pw = first_line(&buf);
    if pw.is_empty() {
        return Err(exit::other(format!(
            "{option} {name}: the first line is empty"
        )));
    }
    Ok(pw)
}

/// The password from `--password-file`, `KEYBAG_PASSWORD` or a terminal prompt.
pub fn password(args: &BackupArgs) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(path) = &args.password_file {
        return read_password_file(path, "--password-file");
    }
    if let Some(value) = std::env::var_os(PASSWORD_ENV) {
        use std::os::unix::ffi::OsStringExt;
        let pw = Zeroizing::new(value.into_vec());
        if !pw.is_empty() {
            return Ok(pw);
        }
    }
    if std::io::stdin().is_terminal() {
        let prompt = format!("Password for {}: ", args.dir.display());
        let pw = Zeroizing::new(
            rpassword::prompt_password(prompt)
                .context("reading the password from the terminal")?
                .into_bytes(),
        );
        if pw.is_empty() {
            return Err(exit::other("empty password"));
        }
        return Ok(pw);
    }
    Err(exit::other(format!(
        "{}: the backup is encrypted and no password was given: use {PASSWORD_ENV}, \
         --password-file, --derived-key-file or a terminal",
        args.dir.display()
    )))
}

/// Unlocks an encrypted backup; for an unencrypted one, warns about keys given for nothing.
pub fn unlock(backup: &mut Backup, args: &BackupArgs, keys: Keys) -> Result<()> {
    if !backup.is_encrypted() {
        let explicit =
            keys.derived.is_some() || keys.device.is_some() || args.password_file.is_some();
        if explicit {
            warn("the backup is not encrypted; the password and keys given are not needed");
        }
        return Ok(());
    }
    let passkey = passkey(backup, args, keys.derived)?;
    backup.unlock_with_passkey(&passkey, keys.device.as_ref())?;
    Ok(())
}

/// The passkey of an encrypted backup: `derived` if given, else the password's
/// (the slow KDF, behind a spinner). It is not checked here.
pub fn passkey(backup: &Backup, args: &BackupArgs, derived: Option<Passkey>) -> Result<Passkey> {
    Ok(match derived {
        Some(pk) => pk,
        None => {
            let pw = password(args)?;
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
            pk?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_errors_never_quote_the_key() {
        let e = parse_hex::<16>("793b52fd8ca0b58f37cfdde966237cex", "--device-key").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("character 32"), "{m}");
        assert!(!m.contains("793b"), "{m}");
        let e = parse_hex::<16>("793b", "--device-key").unwrap_err();
        assert!(e.to_string().contains("expected 32 hex digits"));
        assert!(parse_hex::<16>(" 793b52fd8ca0b58f37cfdde966237ceb\n", "k").is_ok());
    }

    #[test]
    fn first_line_strips_endings() {
        assert_eq!(&first_line(b"pw\r\nrest")[..], b"pw");
        assert_eq!(&first_line(b"pw")[..], b"pw");
        assert_eq!(&first_line(b"\n")[..], b"");
    }
}
