//! Progress display on stderr, only when stderr is a terminal.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::output::human_bytes;

/// A spinner with a message, or `None` when stderr is not a terminal.
pub fn spinner(message: String) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        bar.set_style(style);
    }
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    Some(bar)
}

/// A per-file progress bar.
pub struct Progress {
    bar: Option<ProgressBar>,
    bytes: AtomicU64,
}

impl Progress {
    /// A bar over `files` files, labelled `verb` (e.g. "extracting").
    pub fn new(files: u64, verb: &str) -> Self {
        let bar = (files > 0 && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(files);
            let template = format!(
                "{verb} [{{bar:30}}] {{pos}}/{{len}} files, {{msg}} {{elapsed}} (eta {{eta}})"
            );
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self {
            bar,
            bytes: AtomicU64::new(0),
        }
    }

    /// One file done, `bytes` written.
    pub fn file_done(&self, bytes: u64) {
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(bar) = &self.bar {
            bar.set_message(human_bytes(total));
            bar.inc(1);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A byte-count progress bar (a total when known), or nothing when stderr is not a terminal.
pub struct Bytes {
    bar: Option<ProgressBar>,
}

impl Bytes {
    /// A bar labelled `verb`, over `total` bytes (`None`: a counter without an end).
    pub fn new(total: Option<u64>, verb: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Bytes { bar: None };
        }
        let bar = match total {
            Some(t) => {
                let b = ProgressBar::new(t);
                if let Ok(style) = ProgressStyle::with_template(&format!(
                    "{verb} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} (eta {{eta}})"
                )) {
                    b.set_style(style.progress_chars("=> "));
                }
                b
            }
            None => {
                let b = ProgressBar::new_spinner();
                if let Ok(style) = ProgressStyle::with_template(&format!(
                    "{{spinner}} {verb} {{bytes}} {{elapsed}}"
                )) {
                    b.set_style(style);
                }
                b
            }
        };
        Bytes { bar: Some(bar) }
    }

    /// `n` more bytes done.
    pub fn add(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
