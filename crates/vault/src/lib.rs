#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! An encrypted, content-addressed, deduplicating repository, generic over what it stores and
//! where (a local folder or S3-compatible storage). It knows nothing of iPhones.
//!
//! The skeleton is restic's (immutable objects named by hashes; packs of independently sealed
//! blobs with a sealed header; an index; small snapshots), with what its authors and users
//! learned since: an AEAD with random 192-bit nonces (XChaCha20-Poly1305), keyed BLAKE3 chunk
//! IDs, a keyed content-defined chunker (FastCDC 2020 with a secret seed), zstd, PADME
//! padding so blob sizes leak little, Argon2id password keys plus a printable recovery key,
//! key epochs to retire a leaked master key, lock-free two-phase prune, and snapshots that
//! carry a chain sequence number so a store serving an older state is caught.
//!
//! * [`Repository`] opens ([`Repository::open`]) or makes ([`Repository::init`]) one over a
//!   [`storage::Storage`].
//! * [`Writer`] pushes files (any `Read`), then [`Writer::commit`]s a [`tree::Tree`] and a
//!   [`snapshot::Snapshot`].
//! * [`check::check`], [`forget::forget`], [`prune::prune`] maintain it.

pub mod check;
pub mod chunker;
pub mod crypto;
mod error;
pub mod forget;
pub mod id;
pub mod index;
pub mod keys;
pub mod object;
pub mod pack;
pub mod prune;
mod repo;
pub mod snapshot;
pub mod storage;
pub mod tree;
mod upload;
mod writer;

pub use error::{Error, Result};
pub use id::Id;
pub use repo::{Config, IndexGuard, KeyInfo, Repository, Snapshots};
pub use writer::{
    read_pack_header, recover_unindexed, recover_unindexed_with, SnapshotInfo, Writer,
};
