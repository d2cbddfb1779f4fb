#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Apple's iTunes/Finder local backup format (iOS 10.2 and later): reading and writing.
//!
//! * [`Backup`] opens a backup folder, unlocks it with a password or derived
//!   key, lists its records and streams each file's plaintext.
//! * [`writer::BackupWriter`] builds a complete backup folder, encrypted or not,
//!   atomically.
//! * [`mbfile`] is the NSKeyedArchiver codec of `Manifest.db`'s `file` column;
//!   [`layout`] holds fileIDs, blob paths and the path-safety rules.

pub mod audit;
pub mod blob;
pub mod bplist_guard;
pub mod catalog;
pub mod decrypt;
mod error;
pub mod extract;
pub mod integrity;
pub mod keychain;
pub mod layout;
pub mod manifestdb;
pub mod mbfile;
pub mod passwd;
pub mod plists;
mod reader;
pub mod safe_fs;
pub mod staging;
pub mod update;
pub mod writer;

pub use catalog::catalog_from_db_bytes;
pub use error::{Error, Result};
pub use reader::{
    Backup, Catalog, Credentials, FileReport, Record, RecordKind, Secret, MAX_MANIFEST_DB_BYTES,
};
