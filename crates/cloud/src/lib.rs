#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! iCloud-like backups of iPhone backups, on a keybag vault: the iOS-aware layer the generic
//! [`vault`] knows nothing of.
//!
//! * [`push::push`] stores a Finder/iTunes backup folder as one snapshot, its encrypted files
//!   as re-keyable plaintext when the backup's password is given, so backups re-keyed by the
//!   phone still deduplicate.
//! * [`pull::pull`] writes a snapshot back as a byte-identical backup folder.
//! * [`browse`] lists a snapshot's records, reads one file, and compares two snapshots.

pub mod browse;
mod error;
pub mod model;
pub mod pull;
pub mod push;

pub use error::{Error, Result};
