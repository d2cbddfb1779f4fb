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
    }
}

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("keybag: internal error: {}", output::sanitize(&msg));
    }));
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
