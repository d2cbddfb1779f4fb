//! Where a repository's objects live, behind one small trait: a local folder (the default)
//! or S3-compatible object storage. Every object is immutable and named by content (the
//! `config` excepted), so no correctness rests on a backend's conditional writes or
//! read-after-list consistency beyond "a put object can be read back".

mod http;
mod local;
mod s3;

use std::sync::Arc;

pub use http::{
    client as http_client, describe as describe_http_error, probe_fingerprint, HttpSettings,
    HttpStorage,
};
pub use local::{LocalStorage, PutFile};
pub use s3::{S3Settings, S3Storage};

use crate::{Error, Result};

/// The kinds of object, each in a folder (prefix) of its own.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `config`: the repository's plain marker (format, version, id).
    Config,
    /// `keys/`: sealed keyrings, one per way in.
    Keys,
    /// `data/`: packs of sealed blobs.
    Data,
    /// `index/`: which pack holds which blob.
    Index,
    /// `snapshots/`: one per push.
    Snapshots,
    /// `pending/`: packs marked for deletion by a prune, with the time of marking.
    Pending,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [
        Kind::Config,
        Kind::Keys,
        Kind::Data,
        Kind::Index,
        Kind::Snapshots,
        Kind::Pending,
    ];

    /// Its folder (prefix).
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Config => "",
            Kind::Keys => "keys",
            Kind::Data => "data",
            Kind::Index => "index",
            Kind::Snapshots => "snapshots",
            Kind::Pending => "pending",
        }
    }

    /// `kind/name`, for messages.
    pub fn show(self, name: &str) -> String {
        match self {
            Kind::Config => "config".into(),
            k => format!("{}/{name}", k.dir()),
        }
    }
}

/// A backend. Implementations must make `put` atomic (a reader sees all of an object or
/// nothing) and must retry transient failures themselves, with a bound.
pub trait Storage: Send + Sync {
    /// Where it is, for messages (`/path` or `s3://bucket/prefix`); never carries a secret.
    fn location(&self) -> String;
    /// Stores an object (replacing one of the same name: names are content hashes, so the
    /// bytes are the same).
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<()>;
    /// [`Storage::put`] of an owned buffer, handed back when the backend is done with it (for
    /// reuse: a 16 MiB pack buffer allocated afresh for every put costs page faults). A
    /// backend that copies anyway keeps the default.
    fn put_buf(&self, kind: Kind, name: &str, data: Vec<u8>) -> (Result<()>, Option<Vec<u8>>) {
        let r = self.put(kind, name, &data);
        (r, Some(data))
    }
    /// Reads a whole object; [`Error::Missing`] when it does not exist.
    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>>;
    /// Reads `len` bytes at `offset`; an error if the object is shorter.
    fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Names and sizes of every object of a kind.
    fn list(&self, kind: Kind) -> Result<Vec<(String, u64)>>;
    /// Removes an object; removing one that is gone is not an error.
    fn delete(&self, kind: Kind, name: &str) -> Result<()>;
    /// The size of an object, `None` when it does not exist. (The default reads it whole;
    /// backends override it with a metadata request.)
    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>> {
        match self.get(kind, name) {
            Ok(b) => Ok(Some(b.len() as u64)),
            Err(Error::Missing { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
    /// How many puts a push should have in flight at once: 1 for a local folder (one disk),
    /// more for a server, whose answer to one put (after its own write and fsync) need not
    /// hold up the next.
    fn concurrent_puts(&self) -> usize {
        1
    }
    /// Removes what killed writers left half-written, older than `min_age`; returns how many.
    /// (Backends whose writes are atomic on the server leave nothing.)
    fn remove_stale_temps(&self, _min_age: std::time::Duration) -> usize {
        0
    }
}

/// Lists `kind` and reads every object with `read` (in parallel). An object listed but gone
/// when read (deleted by a concurrent prune, forget or reseal, which always store what
/// replaces an object before deleting it) makes the listing be read again, up to five times;
/// after that, objects that keep vanishing are left out. Other errors are returned, one per
/// object.
pub fn read_listed<T: Send>(
    storage: &dyn Storage,
    kind: Kind,
    read: impl Fn(&str) -> Result<T> + Sync,
) -> Result<Vec<Result<T>>> {
    use rayon::prelude::*;
    let gone = |r: &Result<T>| matches!(r, Err(Error::Missing { .. }));
    let mut tries = 0;
    loop {
        tries += 1;
        let names = storage.list(kind)?;
        let results: Vec<Result<T>> = names.par_iter().map(|(n, _)| read(n)).collect();
        if !results.iter().any(gone) {
            return Ok(results);
        }
        if tries >= 5 {
            return Ok(results.into_iter().filter(|r| !gone(r)).collect());
        }
    }
}

/// Checks an object name: `config`, or 64 lowercase hex digits (so a name can never become a
/// path outside its folder).
pub fn check_name(kind: Kind, name: &str) -> Result<()> {
    let ok = match kind {
        Kind::Config => name == "config",
        _ => {
            name.len() == 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{}: not a valid object name",
            kind.show(&name.escape_debug().to_string())
        )))
    }
}

/// Opens a repository location: `s3://bucket[/prefix]` (endpoint, region and credentials from
/// `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`: see
/// [`S3Settings::from_env`]), or a local folder path. A caller with its own settings (other
/// timeouts, credentials not from the environment) uses [`S3Storage::new`].
pub fn open(location: &str) -> Result<Arc<dyn Storage>> {
    if let Some(rest) = location.strip_prefix("s3://") {
        return Ok(Arc::new(S3Storage::from_env(rest)?));
    }
    if location.starts_with("https://") || location.starts_with("http://") {
        return Err(Error::Invalid(format!(
            "{location}: a keybag server needs a token and a pinned certificate: open it with \
             HttpStorage::new (the CLI does, after `keybag cloud login`)"
        )));
    }
    if location.contains("://") {
        return Err(Error::Invalid(format!(
            "{location}: unknown repository scheme (a folder path, s3://bucket/prefix or https://server)"
        )));
    }
    Ok(Arc::new(LocalStorage::new(location)))
}
