//! A snapshot's tree: the list of files it holds, generic to the vault. Each node has a name,
//! a size, opaque metadata (what the application needs to rebuild the file) and its chunks.
//! An application may attach one opaque `annex` (e.g. a phone backup's record list). The tree
//! is serialized with postcard and stored as content-defined chunks, so an unchanged part of a
//! large tree is not stored again.

use crate::id::Id;
use crate::{Error, Result};

/// One file.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// Its name (a relative path, as the application chose it).
    pub name: String,
    /// Length of its content.
    pub size: u64,
    /// Application metadata.
    pub meta: Vec<u8>,
    /// Its content, chunk by chunk.
    pub chunks: Vec<Id>,
}

/// Every file of a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tree {
    /// Files, in the order the application wrote them.
    pub nodes: Vec<Node>,
    /// Application data about the whole snapshot.
    pub annex: Vec<u8>,
}

impl Tree {
    /// Its serialized form.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serializable")
    }

    /// Decodes a serialized tree (`what` names it in errors).
    pub fn from_bytes(what: &str, b: &[u8]) -> Result<Tree> {
        postcard::from_bytes(b)
            .map_err(|e| Error::corrupt(what, format!("tree does not decode: {e}")))
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}
