//! `keybag`: open, audit and extract iPhone backups. This binary only parses the
//! command line, asks for secrets and prints; the work is done by the
//! `mobilebackup` and `dataprotection` crates.

#![forbid(unsafe_code)]

mod args;
mod commands;
mod exit;
mod html;
mod output;
mod progress;
mod secrets;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Info { backup } => commands::info::run(&backup),
        Command::Ls {
            backup,
            filter,
            long,
        } => commands::ls::run(&backup, &filter, long),
        Command::Extract {
            backup,
            out,
            filter,
        } => commands::extract::run(&backup, &out, &filter),
        Command::Cat {
            backup,
            domain,
            path,
        } => commands::cat::run(&backup, &domain, &path),
        Command::Decrypt { backup, out } => commands::decrypt::run(&backup, &out),
        Command::Verify { backup, deep } => commands::verify::run(&backup, deep),
        Command::Audit {
            backup,
            html,
            quick,
        } => commands::audit::run(&backup, html.as_deref(), quick),
        Command::Passwd {
            backup,
            new_password_file,
        } => commands::passwd::run(&backup, new_password_file.as_deref()),
        Command::Keychain {
            backup,
            show_secrets,
            format,
        } => commands::keychain::run(&backup, show_secrets, format),
        Command::Demo => commands::demo::run(),
        Command::Device { command } => commands::device::run(&command),
        Command::Cloud { command } => commands::cloud::run(&command),
        Command::Serve(cmd) => commands::serve::run(&cmd),
    }
}

/// The one line a panic prints: its message, control characters escaped, and nothing
/// else (no location, backtrace or environment). No secret can be in the message: every
/// type holding one has a redacted `Debug` (each crate's `tests/debug_redacted.rs`) and none
/// has `Display`.
fn panic_line(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into());
    format!("keybag: internal error: {}", output::sanitize(&msg))
}

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| eprintln!("{}", panic_line(info.payload()))));
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) if exit::is_broken_pipe(&e) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("keybag: {}", exit::message(&e));
            ExitCode::from(exit::code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_prints_its_message_only() {
        assert_eq!(
            panic_line(&"index out of bounds"),
            "keybag: internal error: index out of bounds"
        );
        assert_eq!(
            panic_line(&String::from("two\nlines\u{1b}[2J")),
            "keybag: internal error: two\\nlines\\u{1b}[2J"
        );
        assert_eq!(panic_line(&42u8), "keybag: internal error: unknown");
        let caught = std::panic::catch_unwind(|| {
            let args = args::BackupArgs {
                dir: "B".into(),
                json: false,
                password_file: None,
                derived_key: Some(String::from("44a316ca4293d559").into()),
                derived_key_file: None,
                device_key: None,
                device_key_file: None,
            };
            panic!("bug with {args:?}")
        })
        .unwrap_err();
        let line = panic_line(&*caught);
        assert!(
            line.starts_with("keybag: internal error: bug with BackupArgs"),
            "{line}"
        );
        assert!(!line.contains("44a316ca4293d559"), "{line}");
    }
}
