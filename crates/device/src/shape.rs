//! The tree a backup's records describe, checked as they are taken in catalog order: a
//! hostile or damaged `Manifest.db` can put a record under a path that an earlier record
//! made a file or a symlink, or give one path twice. Restore and import ask here before they
//! touch the device, so such a record is refused (restore) or skipped (import) instead of
//! failing half-way through the device's own index.

use std::collections::HashMap;

use mobilebackup::RecordKind;

/// What a path became.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Link,
}

impl Node {
    fn name(self) -> &'static str {
        match self {
            Node::Dir => "a folder",
            Node::File => "a file",
            Node::Link => "a symlink",
        }
    }
}

/// Paths by domain, as the records taken so far left them.
#[derive(Default)]
pub(crate) struct Shape {
    nodes: HashMap<(String, String), Node>,
}

/// A record that fits: new, or a folder that is there already.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fit {
    /// Nothing at this path yet.
    New,
    /// A folder record where a folder already is.
    ExistingFolder,
}

impl Shape {
    /// An empty tree.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Marks an entry that exists already (a device's own folders, files and links).
    pub(crate) fn existing(&mut self, domain: &str, path: &str, kind: &crate::EntryKind) {
        let node = match kind {
            crate::EntryKind::Directory => Node::Dir,
            crate::EntryKind::File => Node::File,
            crate::EntryKind::Symlink { .. } => Node::Link,
        };
        self.nodes
            .insert((domain.to_string(), path.to_string()), node);
    }

    /// Takes the next record: where it fits, it is added (its parents become folders);
    /// otherwise the reason it does not.
    pub(crate) fn take(
        &mut self,
        domain: &str,
        path: &str,
        kind: RecordKind,
    ) -> Result<Fit, String> {
        let node = match kind {
            RecordKind::Directory => Node::Dir,
            RecordKind::File => Node::File,
            RecordKind::Symlink => Node::Link,
            RecordKind::Other(f) => {
                return Err(format!("flags={f} is not a file, folder or symlink"))
            }
        };
        let mut parents = Vec::new();
        let mut at = 0;
        while let Some(off) = path[at..].find('/') {
            let parent = &path[..at + off];
            if let Some(n) = self.nodes.get(&(domain.to_string(), parent.to_string())) {
                if *n != Node::Dir {
                    return Err(format!(
                        "its parent {domain}/{parent} is {} in this backup, not a folder",
                        n.name()
                    ));
                }
            }
            parents.push(parent);
            at += off + 1;
        }
        let key = (domain.to_string(), path.to_string());
        match self.nodes.get(&key) {
            Some(Node::Dir) if node == Node::Dir => return Ok(Fit::ExistingFolder),
            Some(n) => {
                return Err(format!(
                    "{domain}/{path} is already {} (given twice in this backup)",
                    n.name()
                ))
            }
            None => {}
        }
        for p in parents {
            self.nodes
                .entry((domain.to_string(), p.to_string()))
                .or_insert(Node::Dir);
        }
        self.nodes.insert(key, node);
        Ok(Fit::New)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_are_named() {
        let mut s = Shape::new();
        assert_eq!(s.take("D", "a", RecordKind::File), Ok(Fit::New));
        let e = s.take("D", "a/b", RecordKind::File).unwrap_err();
        assert!(e.contains("parent D/a is a file"), "{e}");
        assert_eq!(s.take("D", "x/y/z", RecordKind::File), Ok(Fit::New));
        assert_eq!(
            s.take("D", "x/y", RecordKind::Directory),
            Ok(Fit::ExistingFolder)
        );
        let e = s.take("D", "x/y", RecordKind::File).unwrap_err();
        assert!(e.contains("already a folder"), "{e}");
        assert_eq!(s.take("D", "l", RecordKind::Symlink), Ok(Fit::New));
        assert!(s.take("D", "l/in", RecordKind::Directory).is_err());
        // Another domain is another tree.
        assert_eq!(s.take("E", "a/b", RecordKind::File), Ok(Fit::New));
        s.existing("F", "Documents", &crate::EntryKind::Directory);
        assert!(s.take("F", "Documents", RecordKind::File).is_err());
        assert!(s.take("F", "", RecordKind::Other(16)).is_err());
    }
}
