//! The parent-snapshot shortcut of push: a file whose size, inode, mtime and ctime are
//! those recorded in the previous snapshot of the phone is taken from it unread; anything
//! else is read. Each case pulls the new snapshot and compares it byte for byte with the
//! folder as it is now, so a shortcut taken wrongly shows as a wrong byte.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cloud::pull::{pull, PullOptions};
use cloud::push::{push, PushOptions, PushReport};
use common::{files, passkey_creds, repo_on, testdata, REPO_PASSWORD};
use mobilebackup::Credentials;
use vault::storage::{Kind, LocalStorage, Storage};
use vault::Repository;

fn creds() -> Option<Credentials> {
    Some(passkey_creds())
}

fn repo(dir: &Path) -> (Repository, Arc<dyn Storage>) {
    let s = Arc::new(LocalStorage::new(dir.to_path_buf())) as Arc<dyn Storage>;
    (repo_on(s.clone()), s)
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for f in walk(from) {
        let dest = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap();
        let m = std::fs::metadata(&f).unwrap();
        let t = filetime::FileTime::from_last_modification_time(&m);
        filetime::set_file_times(&dest, t, t).unwrap();
    }
}

fn push_it(r: &Repository, dir: &Path, creds: Option<Credentials>) -> PushReport {
    push(
        r,
        dir,
        &PushOptions {
            credentials: creds,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Pulls `snapshot` and asserts it is `dir` as it is now, byte for byte.
fn assert_pulls_back(r: &Repository, snapshot: &str, dir: &Path) {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let p = pull(r, snapshot, &out, &PullOptions::default()).unwrap();
    assert!(p.failed.is_empty(), "{:?}", p.failed);
    let (a, b) = (files(dir), files(&out));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(b[k] == *v, "{k} differs");
    }
}

#[test]
fn an_unchanged_backup_is_not_read_again_in_either_mode() {
    for with_password in [true, false] {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("backup");
        copy_tree(&testdata("enc-small-public"), &dir);
        let (r, _) = repo(&t.path().join("repo"));
        let c = || if with_password { creds() } else { None };
        let first = push_it(&r, &dir, c());
        assert_eq!(first.unchanged, 0);
        let second = push_it(&r, &dir, c());
        assert_eq!(second.unchanged, second.files, "{second:?}");
        assert_eq!(second.rekeyed, first.rekeyed, "{second:?}");
        assert_eq!(second.new_bytes, 0, "{second:?}");
        assert_pulls_back(&r, &second.snapshot.to_hex(), &dir);
        // Pushed the other way (with or without the password), nothing is taken: a node
        // says how its file was stored, and that differs.
        let other = push_it(&r, &dir, if with_password { None } else { creds() });
        assert_eq!(other.unchanged, 0, "{other:?}");
        assert_pulls_back(&r, &other.snapshot.to_hex(), &dir);
    }
}

#[test]
fn a_file_rewritten_with_its_size_and_mtime_kept_is_read_again() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("backup");
    copy_tree(&testdata("mvt-ios-backup"), &dir);
    let (r, _) = repo(&t.path().join("repo"));
    let first = push_it(&r, &dir, None);
    // The largest blob, one byte changed in place, its mtime set back: only its ctime
    // (which no tool sets back) tells.
    let victim = walk(&dir)
        .into_iter()
        .filter(|p| p.parent() != Some(dir.as_path()))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let m = std::fs::metadata(&victim).unwrap();
    let mtime = filetime::FileTime::from_last_modification_time(&m);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[0] ^= 0x5a;
    std::fs::write(&victim, &bytes).unwrap();
    filetime::set_file_times(&victim, mtime, mtime).unwrap();
    assert_eq!(std::fs::metadata(&victim).unwrap().len(), m.len());
    let second = push_it(&r, &dir, None);
    assert_eq!(second.unchanged, first.files - 1, "{second:?}");
    assert!(second.new_bytes > 0, "{second:?}");
    assert_pulls_back(&r, &second.snapshot.to_hex(), &dir);
    // A copy of the folder (new inodes, same mtimes) is read in full, and deduplicates.
    let copy = t.path().join("copy");
    copy_tree(&dir, &copy);
    let third = push_it(&r, &copy, None);
    assert_eq!(third.unchanged, 0, "{third:?}");
    let file_chunks = |snapshot: &vault::Id| -> std::collections::HashSet<vault::Id> {
        let (_, snap) = r.find_snapshot(&snapshot.to_hex()).unwrap();
        let tree = r.tree(&snap).unwrap();
        tree.nodes.iter().flat_map(|n| n.chunks.clone()).collect()
    };
    assert!(
        file_chunks(&third.snapshot).is_subset(&file_chunks(&second.snapshot)),
        "the copy stored file content again"
    );
    assert_pulls_back(&r, &third.snapshot.to_hex(), &copy);
}

#[test]
fn chunks_gone_from_the_store_are_stored_again_not_taken() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("backup");
    copy_tree(&testdata("enc-small-public"), &dir);
    let (r, s) = repo(&t.path().join("repo"));
    push_it(&r, &dir, creds());
    let first_packs: Vec<String> = s
        .list(Kind::Data)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    // A second snapshot whose tree alone is new (one file's ctime moved: setting its mtime
    // to what it was does that), so its tree lands in a pack of its own.
    let plist = dir.join("Manifest.plist");
    let m = filetime::FileTime::from_last_modification_time(&std::fs::metadata(&plist).unwrap());
    filetime::set_file_times(&plist, m, m).unwrap();
    let second = push_it(&r, &dir, creds());
    assert_eq!(second.unchanged, second.files - 1, "{second:?}");
    // The packs of the first push deleted behind the repository's back: the index still
    // lists them, the previous tree still reads, and its nodes name chunks that are gone.
    for name in &first_packs {
        s.delete(Kind::Data, name).unwrap();
    }
    let r = Repository::open(s.clone(), &vault::keys::Secret::Password(REPO_PASSWORD)).unwrap();
    let third = push_it(&r, &dir, creds());
    // Only files without chunks (empty, or a blob that is padding alone) are still taken.
    let (_, snap) = r.find_snapshot(&third.snapshot.to_hex()).unwrap();
    let chunkless = r
        .tree(&snap)
        .unwrap()
        .nodes
        .iter()
        .filter(|n| n.chunks.is_empty())
        .count() as u64;
    assert_eq!(third.unchanged, chunkless, "{third:?}");
    assert!(third.unchanged < third.files, "{third:?}");
    assert!(third.new_bytes > 0, "{third:?}");
    assert_pulls_back(&r, &third.snapshot.to_hex(), &dir);
}
