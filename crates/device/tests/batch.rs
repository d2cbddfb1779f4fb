//! `Device::put_many`: parallel blobs, one index transaction, all or nothing.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use common::*;
use device::{Device, EntryKind, Error, PutItem, PutOptions};

fn opts(class: PC) -> PutOptions {
    PutOptions {
        class,
        ..PutOptions::default()
    }
}

/// Distinct, non-repeating content of `len` bytes.
fn content(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 + seed * 7 + i / 251) as u8)
        .collect()
}

fn item(domain: &str, path: &str, class: PC, data: Vec<u8>) -> PutItem<'static> {
    PutItem::from_reader(domain, path, opts(class), std::io::Cursor::new(data))
}

/// Every file under `store/` (blobs and any leftover temporaries).
fn store_files(dir: &Path) -> BTreeSet<String> {
    all_files(&dir.join("store"))
        .into_iter()
        .map(|p| p.display().to_string())
        .collect()
}

fn rows(dev: &Device) -> Vec<String> {
    dev.entries(None)
        .unwrap()
        .into_iter()
        .map(|e| {
            format!(
                "{}/{} {:?} {} {}",
                e.domain, e.path, e.kind, e.size, e.birth
            )
        })
        .collect()
}

/// Yields `ok` bytes, then fails.
struct FailingReader {
    ok: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ok == 0 {
            return Err(std::io::Error::other("the source broke"));
        }
        let n = buf.len().min(self.ok);
        buf[..n].fill(0x5a);
        self.ok -= n;
        Ok(n)
    }
}

#[test]
fn every_class_round_trips_in_the_format_of_put() {
    let (_t, dir, mut dev) = new_device(Some(PASSCODE));
    dev.unlock(PASSCODE).unwrap();
    let classes = [
        PC::COMPLETE,
        PC::COMPLETE_UNLESS_OPEN,
        PC::UNTIL_FIRST_AUTH,
        PC::NONE,
    ];
    // Lengths around the block and chunk sizes (1 MiB), the empty file included.
    let lens = [
        0,
        1,
        15,
        16,
        17,
        4096,
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 17,
    ];
    let mut items = Vec::new();
    let mut expected = Vec::new();
    for (i, len) in lens.iter().enumerate() {
        for (j, class) in classes.iter().enumerate() {
            let path = format!("Documents/n{i}/f{j}.bin");
            let data = content(i * 4 + j, *len);
            expected.push((path.clone(), *class, data.clone()));
            items.push(item("AppDomain-com.example.batch", &path, *class, data));
        }
    }
    let sizes = dev.put_many(items).unwrap();
    assert_eq!(
        sizes,
        expected
            .iter()
            .map(|e| e.2.len() as u64)
            .collect::<Vec<_>>()
    );
    for (path, class, data) in &expected {
        let f = dev.open_file("AppDomain-com.example.batch", path).unwrap();
        assert_eq!(f.entry().class, *class);
        assert_eq!(f.entry().size, data.len() as u64);
        // AES-256-CBC + PKCS7: always 1–16 bytes of padding.
        let blob_len = std::fs::metadata(f.blob_path()).unwrap().len();
        assert_eq!(blob_len, (data.len() as u64 / 16 + 1) * 16, "{path}");
        assert_eq!(
            &get(&dev, "AppDomain-com.example.batch", path).unwrap(),
            data,
            "{path}"
        );
    }
    // One blob per file, no temporaries; parents made as directories.
    assert_eq!(store_files(&dir).len(), expected.len());
    assert!(store_files(&dir).iter().all(|p| !p.ends_with(".tmp")));
    let e = dev.entries(Some("AppDomain-com.example.batch")).unwrap();
    assert_eq!(e[0].path, "Documents");
    assert_eq!(e[0].kind, EntryKind::Directory);
    // Reopened from disk, the index reads the same.
    drop(dev);
    let mut dev = Device::open(&dir).unwrap();
    dev.unlock(PASSCODE).unwrap();
    let (path, _, data) = &expected[expected.len() - 3];
    assert_eq!(
        &get(&dev, "AppDomain-com.example.batch", path).unwrap(),
        data
    );
}

#[test]
fn class_b_works_locked_and_class_a_does_not() {
    let (_t, dir, mut dev) = new_device(Some(PASSCODE));
    dev.unlock(PASSCODE).unwrap();
    dev.lock().unwrap();
    let sizes = dev
        .put_many(vec![
            item(
                "HomeDomain",
                "Mail/b1",
                PC::COMPLETE_UNLESS_OPEN,
                b"one".to_vec(),
            ),
            item(
                "HomeDomain",
                "Mail/b2",
                PC::COMPLETE_UNLESS_OPEN,
                b"two".to_vec(),
            ),
        ])
        .unwrap();
    assert_eq!(sizes, vec![3, 3]);
    let before = (rows(&dev), store_files(&dir));
    let err = dev
        .put_many(vec![
            item(
                "HomeDomain",
                "Mail/b3",
                PC::COMPLETE_UNLESS_OPEN,
                b"3".to_vec(),
            ),
            item("HomeDomain", "Mail/a", PC::COMPLETE, b"a".to_vec()),
        ])
        .unwrap_err();
    assert!(matches!(err, Error::ClassUnavailable { .. }), "{err:?}");
    assert_eq!((rows(&dev), store_files(&dir)), before);
    dev.unlock(PASSCODE).unwrap();
    assert_eq!(get(&dev, "HomeDomain", "Mail/b2").unwrap(), b"two");
}

#[test]
fn replacing_keeps_birth_and_removes_the_old_blob() {
    let (_t, dir, mut dev) = new_device(None);
    dev.set_clock(Arc::new(|| 1_000));
    put(&mut dev, "HomeDomain", "Library/a.db", b"old a", PC::NONE);
    put(&mut dev, "HomeDomain", "Library/b.db", b"old b", PC::NONE);
    let old_a = dev.open_file("HomeDomain", "Library/a.db").unwrap();
    let old_b = dev.open_file("HomeDomain", "Library/b.db").unwrap();
    dev.set_clock(Arc::new(|| 2_000));
    dev.put_many(vec![
        item(
            "HomeDomain",
            "Library/a.db",
            PC::COMPLETE_UNLESS_OPEN,
            b"new a".to_vec(),
        ),
        item(
            "HomeDomain",
            "Library/c.db",
            PC::COMPLETE,
            b"new c".to_vec(),
        ),
        // Twice in one batch: the last one wins, as with two puts.
        item("HomeDomain", "Library/b.db", PC::NONE, b"first b".to_vec()),
        item("HomeDomain", "Library/b.db", PC::NONE, b"second b".to_vec()),
    ])
    .unwrap();
    let a = dev.open_file("HomeDomain", "Library/a.db").unwrap();
    assert_eq!((a.entry().birth, a.entry().ctime), (1_000, 2_000));
    assert_eq!(a.entry().class, PC::COMPLETE_UNLESS_OPEN);
    assert_eq!(get(&dev, "HomeDomain", "Library/a.db").unwrap(), b"new a");
    assert_eq!(
        get(&dev, "HomeDomain", "Library/b.db").unwrap(),
        b"second b"
    );
    let c = dev.open_file("HomeDomain", "Library/c.db").unwrap();
    assert_eq!(c.entry().birth, 2_000);
    assert!(!old_a.blob_path().exists());
    assert!(!old_b.blob_path().exists());
    // a, b (once), c: the blob of "first b" went too.
    assert_eq!(store_files(&dir).len(), 3);
}

#[test]
fn a_failing_source_leaves_no_blob_and_no_row() {
    let (_t, dir, mut dev) = new_device(None);
    put(&mut dev, "HomeDomain", "Library/keep.db", b"kept", PC::NONE);
    let before = (rows(&dev), store_files(&dir));
    let mut items: Vec<PutItem> = (0..40)
        .map(|i| {
            item(
                "HomeDomain",
                &format!("Library/new/f{i}"),
                PC::UNTIL_FIRST_AUTH,
                content(i, 3000),
            )
        })
        .collect();
    // A replacement of an existing file, and a source that breaks halfway (after one
    // full chunk, so its temporary blob has data on disk).
    items.insert(
        3,
        item(
            "HomeDomain",
            "Library/keep.db",
            PC::NONE,
            b"replaced".to_vec(),
        ),
    );
    items.insert(
        20,
        PutItem::from_reader(
            "HomeDomain",
            "Library/new/broken",
            PutOptions::default(),
            FailingReader {
                ok: (1 << 20) + 100,
            },
        ),
    );
    let err = dev.put_many(items).unwrap_err();
    match &err {
        Error::Source { what, source } => {
            assert_eq!(what, "content of HomeDomain/Library/new/broken");
            assert_eq!(source.to_string(), "the source broke");
        }
        other => panic!("expected the source's I/O error, got {other:?}"),
    }
    assert_eq!((rows(&dev), store_files(&dir)), before);
    assert_eq!(get(&dev, "HomeDomain", "Library/keep.db").unwrap(), b"kept");
}

/// A caller's own error type: a source's failure comes back as it was made.
#[derive(Debug)]
enum MyError {
    Device(Error),
    Open(String),
}

impl From<Error> for MyError {
    fn from(e: Error) -> Self {
        MyError::Device(e)
    }
}

#[test]
fn a_source_that_fails_to_open_returns_the_callers_error() {
    let (_t, dir, mut dev) = new_device(None);
    let before = (rows(&dev), store_files(&dir));
    let mut items: Vec<PutItem<'_, MyError>> = (0..10)
        .map(|i| {
            PutItem::new(
                "HomeDomain",
                format!("Library/f{i}"),
                PutOptions::default(),
                move || Ok(std::io::Cursor::new(content(i, 100))),
            )
        })
        .collect();
    items.push(PutItem::new(
        "HomeDomain",
        "Library/missing",
        PutOptions::default(),
        || Err::<std::io::Empty, _>(MyError::Open("no such blob".into())),
    ));
    match dev.put_many(items) {
        Err(MyError::Open(m)) => assert_eq!(m, "no such blob"),
        other => panic!("expected the opener's error, got {other:?}"),
    }
    assert_eq!((rows(&dev), store_files(&dir)), before);
    // The device's own errors arrive through `From`.
    let bad_class = PutItem::new("HomeDomain", "Library/r", opts(PC::RECOVERY), || {
        Ok(std::io::empty())
    });
    match dev.put_many(vec![bad_class]) {
        Err(MyError::Device(Error::BadClass { class, .. })) => assert_eq!(class, PC::RECOVERY),
        other => panic!("expected BadClass, got {other:?}"),
    }
    assert_eq!((rows(&dev), store_files(&dir)), before);
}

#[test]
fn a_bad_path_is_refused_before_anything_is_written() {
    let (_t, dir, mut dev) = new_device(None);
    let before = (rows(&dev), store_files(&dir));
    for (domain, path) in [
        ("HomeDomain", "../escape"),
        ("HomeDomain", ""),
        ("HomeDomain", "a//b"),
        ("Home/Domain", "x"),
        ("HomeDomain", "/abs"),
    ] {
        let items = vec![
            item("HomeDomain", "Library/ok", PC::NONE, b"ok".to_vec()),
            item(domain, path, PC::NONE, b"bad".to_vec()),
        ];
        match dev.put_many(items) {
            Err(Error::BadPath { .. }) => {}
            other => panic!("{domain}/{path:?}: expected BadPath, got {other:?}"),
        }
        assert_eq!((rows(&dev), store_files(&dir)), before);
    }
}

#[test]
fn a_directory_or_symlink_in_the_way_is_an_error_and_changes_nothing() {
    let (_t, dir, mut dev) = new_device(None);
    dev.mkdir("HomeDomain", "Library/dir", 0o755).unwrap();
    dev.symlink("HomeDomain", "Library/link", "dir").unwrap();
    put(&mut dev, "HomeDomain", "Library/file", b"file", PC::NONE);
    let before = (rows(&dev), store_files(&dir));
    for (path, reason) in [
        ("Library/dir", "exists and is not a regular file"),
        ("Library/link", "exists and is not a regular file"),
        ("Library/file/child", "is not a directory"),
    ] {
        let items = vec![
            item("HomeDomain", "Library/new1", PC::NONE, b"1".to_vec()),
            item(
                "HomeDomain",
                "Library/file",
                PC::NONE,
                b"would replace".to_vec(),
            ),
            item("HomeDomain", path, PC::NONE, b"x".to_vec()),
            item("HomeDomain", "Library/new2", PC::NONE, b"2".to_vec()),
        ];
        match dev.put_many(items) {
            Err(Error::WrongKind { reason: r, .. }) => assert_eq!(r, reason, "{path}"),
            other => panic!("{path}: expected WrongKind, got {other:?}"),
        }
        // The index rolled back and the blobs written for the batch are gone.
        assert_eq!((rows(&dev), store_files(&dir)), before, "{path}");
        assert_eq!(get(&dev, "HomeDomain", "Library/file").unwrap(), b"file");
    }
}

#[test]
fn an_empty_batch_does_nothing() {
    let (_t, dir, mut dev) = new_device(None);
    let before = (rows(&dev), store_files(&dir));
    assert_eq!(
        dev.put_many(Vec::<PutItem>::new()).unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!((rows(&dev), store_files(&dir)), before);
}
