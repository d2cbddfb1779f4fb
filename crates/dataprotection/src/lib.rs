#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Apple Data Protection primitives, as used by iOS backups and devices.
//!
//! This crate is pure: it never touches the file system. It provides
//!
//! * [`keybag`] — the TLV keybag codec (`VERS`, `TYPE`, `UUID`, `WPKY`, …) and
//!   class-key unlocking with a password-derived key and, optionally, the
//!   device key 0x835;
//! * [`kdf`] — the backup password KDFs (iOS ≥ 10.2 double PBKDF2, legacy single
//!   PBKDF2) with caps on attacker-chosen iteration counts;
//! * [`wrap`] — RFC 3394 AES key wrap and the device-key (0x835) layer;
//! * [`cbc`] — streaming AES-256-CBC with a zero IV and PKCS7, the cipher of
//!   backup blobs and `Manifest.db`;
//! * [`gcm`] — AES-256-GCM with IVs of any length (keychain items use an empty one);
//! * [`keys`] and [`class`] — zeroizing key types and protection classes.

pub mod cbc;
pub mod class;
pub mod curve;
mod error;
pub mod gcm;
pub mod kdf;
pub mod keybag;
pub mod keys;
pub mod wrap;

pub use class::ProtectionClass;
pub use error::Error;
pub use kdf::{KdfLimits, KdfParams};
pub use keybag::{ClassKeyRecord, Keybag, PendingBackupKeybag, UnlockedKeybag};
pub use keys::{DeviceKey, Key256, Passkey};

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
