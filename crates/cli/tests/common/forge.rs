//! Forging hostile and damaged backups from copies of the fixtures: editing `Manifest.plist`
//! and its keybag, rows of a plain or encrypted `Manifest.db`, blobs replaced by symlinks or
//! FIFOs; and running keybag while watching that it never opens a FIFO.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dataprotection::{Key256, Keybag, Passkey};
use mobilebackup::mbfile::{self, MbFile};

use super::{assert_no_panic, blob_of, Out};

/// Rewrites `BACKUP/Manifest.plist` (binary) after `edit`.
pub fn rewrite_manifest(b: &Path, edit: impl FnOnce(&mut plist::Dictionary)) {
    let path = b.join("Manifest.plist");
    let mut v = plist::Value::from_file(&path).unwrap();
    edit(v.as_dictionary_mut().unwrap());
    v.to_file_binary(&path).unwrap();
}

/// The `BackupKeyBag` of `BACKUP/Manifest.plist`.
pub fn keybag_bytes(b: &Path) -> Vec<u8> {
    let v = plist::Value::from_file(b.join("Manifest.plist")).unwrap();
    v.as_dictionary().unwrap()["BackupKeyBag"]
        .as_data()
        .unwrap()
        .to_vec()
}

/// Replaces the `BackupKeyBag`.
pub fn set_keybag(b: &Path, bytes: Vec<u8>) {
    rewrite_manifest(b, |d| {
        d.insert("BackupKeyBag".into(), plist::Value::Data(bytes));
    });
}

/// A keybag's TLV records, in order.
pub fn tlv_records(bytes: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let tag: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
        let n = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        out.push((tag, bytes[at + 8..at + 8 + n].to_vec()));
        at += 8 + n;
    }
    out
}

/// TLV records back to bytes.
pub fn tlv_bytes(records: &[([u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, v) in records {
        out.extend_from_slice(tag);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// A minimal valid MBFile for a forged row.
pub fn mbfile_for(rel: &str, mode: u32, size: u64, target: Option<&str>) -> Vec<u8> {
    mbfile::encode(&MbFile {
        relative_path: rel.to_string(),
        target: target.map(str::to_owned),
        mode,
        size,
        protection_class: 4,
        mtime: 1_600_000_000,
        ctime: 1_600_000_000,
        birth: 1_600_000_000,
        uid: 501,
        gid: 501,
        ..Default::default()
    })
}

/// A forged `Files` row: fileID, domain, relativePath, flags, file.
pub type Row = (String, String, String, i64, Vec<u8>);

/// Runs `edit` on a copy's plain `Manifest.db` (rollback journal, nothing left beside it).
pub fn with_plain_db(b: &Path, edit: impl FnOnce(&rusqlite::Connection)) {
    let conn = rusqlite::Connection::open(b.join("Manifest.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    edit(&conn);
    drop(conn);
    for extra in ["Manifest.db-wal", "Manifest.db-shm", "Manifest.db-journal"] {
        assert!(!b.join(extra).exists());
    }
}

/// Inserts rows into a copy's plain Manifest.db.
pub fn insert_rows(b: &Path, rows: &[Row]) {
    with_plain_db(b, |conn| insert(conn, rows));
}

/// Inserts rows through `conn`.
pub fn insert(conn: &rusqlite::Connection, rows: &[Row]) {
    for (id, dom, rel, flags, file) in rows {
        conn.execute(
            "INSERT INTO Files (fileID, domain, relativePath, flags, file) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![id, dom, rel, flags, file],
        )
        .unwrap();
    }
}

/// The key of an encrypted backup's `Manifest.db`, from its derived key (hex).
pub fn manifest_db_key(b: &Path, passkey_hex: &str) -> Key256 {
    let kb = Keybag::parse(&keybag_bytes(b)).unwrap();
    let pk = Passkey::from_hex(passkey_hex).unwrap();
    let keys = kb.unlock(&pk, None).unwrap();
    let v = plist::Value::from_file(b.join("Manifest.plist")).unwrap();
    let mk = v.as_dictionary().unwrap()["ManifestKey"].as_data().unwrap();
    keys.unwrap_persistent(mk).unwrap()
}

/// Runs `edit` on an encrypted backup's `Manifest.db` (decrypted in memory, then encrypted
/// again under the same key).
pub fn with_encrypted_db(b: &Path, passkey_hex: &str, edit: impl FnOnce(&rusqlite::Connection)) {
    let key = manifest_db_key(b, passkey_hex);
    let path = b.join("Manifest.db");
    let plain = dataprotection::cbc::decrypt_padded(&key, std::fs::read(&path).unwrap()).unwrap();
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.deserialize_read_exact(rusqlite::MAIN_DB, &plain[..], plain.len(), false)
        .unwrap();
    edit(&conn);
    let bytes = conn.serialize(rusqlite::MAIN_DB).unwrap().to_vec();
    std::fs::write(&path, dataprotection::cbc::encrypt_padded(&key, &bytes)).unwrap();
}

/// Regular files whose blob is present: (`domain/path`, fileID), from `keybag ls --json`
/// (`extra` adds arguments such as `--derived-key`).
pub fn present_files(b: &Path, extra: &[&str]) -> Vec<(String, String)> {
    let mut args: Vec<&OsStr> = vec![OsStr::new("ls"), b.as_os_str(), OsStr::new("--json")];
    args.extend(extra.iter().map(OsStr::new));
    let out = super::keybag(args);
    out.json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "file")
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["file_id"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(_, id)| blob_of(b, id).exists())
        .collect()
}

/// Replaces `path` (a file) with a symlink to `target`.
pub fn replace_with_symlink(path: &Path, target: &Path) {
    std::fs::remove_file(path).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

/// Replaces `path` (a file, or nothing) with a FIFO.
pub fn replace_with_fifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success(), "mkfifo {}", path.display());
}

/// Runs keybag (environment as `cmd` sets it, stdin empty) while another thread keeps trying
/// to open each of `fifos` for writing without blocking: that succeeds only while a reader
/// has the FIFO open, so keybag opening one is seen, and the writer's close lets keybag's
/// read end instead of hanging. Returns the run and whether any FIFO was opened by keybag;
/// a run killed by a signal has code 128 + the signal.
pub fn run_watching_fifos(mut cmd: Command, fifos: &[PathBuf]) -> (Out, bool) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keybag");
    let done = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, opened, fifos) = (done.clone(), opened.clone(), fifos.to_vec());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                for f in &fifos {
                    let w = std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(f);
                    if w.is_ok() {
                        opened.store(true, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t = std::thread::spawn(move || {
        let mut v = Vec::new();
        se.read_to_end(&mut v).unwrap();
        v
    });
    so.read_to_end(&mut stdout).unwrap();
    stderr.extend(t.join().unwrap());
    let status = child.wait().unwrap();
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert_no_panic(&stderr);
    (
        Out {
            // Killed by a signal (a crash): 128 + the signal, as a shell reports it.
            code: status.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + status.signal().unwrap_or(0)
            }),
            stdout,
            stderr,
        },
        opened.load(Ordering::Relaxed),
    )
}

/// The built keybag binary with `args`, and no password, passcode or secret from the
/// test's own environment.
pub fn keybag_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keybag"));
    cmd.args(args);
    for v in [
        "KEYBAG_PASSWORD",
        "KEYBAG_NEW_PASSWORD",
        "KEYBAG_PASSCODE",
        "KEYBAG_NEW_PASSCODE",
        "KEYBAG_SECRET",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

/// Reads the row of `domain/path` from a loaded `Manifest.db`: (fileID, MBFile).
pub fn row_of(conn: &rusqlite::Connection, domain: &str, path: &str) -> (String, MbFile) {
    let (id, file): (String, Vec<u8>) = conn
        .query_row(
            "SELECT fileID, file FROM Files WHERE domain = ?1 AND relativePath = ?2",
            rusqlite::params![domain, path],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or_else(|e| panic!("{domain}/{path}: {e}"));
    (id, mbfile::decode(&file).unwrap())
}

/// Rewrites the MBFile of `domain/path` through `conn`.
pub fn set_mbfile(conn: &rusqlite::Connection, domain: &str, path: &str, f: &MbFile) {
    conn.execute(
        "UPDATE Files SET file = ?1 WHERE domain = ?2 AND relativePath = ?3",
        rusqlite::params![mbfile::encode(f), domain, path],
    )
    .unwrap();
}

/// Gives `domain/path` of an encrypted backup new content, as a tool that rewrites a file
/// properly would: encrypted under the file's own key, with `Size` and (where the record has
/// one) `Digest` updated, so only the content itself is hostile.
pub fn replace_file_content(b: &Path, passkey_hex: &str, domain: &str, path: &str, data: &[u8]) {
    let kb = Keybag::parse(&keybag_bytes(b)).unwrap();
    let keys = kb
        .unlock(&Passkey::from_hex(passkey_hex).unwrap(), None)
        .unwrap();
    with_encrypted_db(b, passkey_hex, |c| {
        let (id, mut f) = row_of(c, domain, path);
        let key = keys
            .unwrap_persistent(f.encryption_key.as_deref().unwrap())
            .unwrap();
        let blob = dataprotection::cbc::encrypt_padded(&key, data);
        std::fs::write(blob_of(b, &id), &blob).unwrap();
        f.size = data.len() as u64;
        if f.digest.is_some() {
            use sha1::Digest;
            f.digest = Some(sha1::Sha1::digest(&blob).to_vec());
        }
        set_mbfile(c, domain, path, &f);
    });
}

/// A binary plist of `n + 1` objects where object i is an array holding object i + 1 twice:
/// a few hundred bytes that expand to 2^(n+1) − 1 nodes (a "billion laughs").
pub fn bplist_doubling(n: usize) -> Vec<u8> {
    assert!(n < 250);
    let mut out = b"bplist00".to_vec();
    let mut offsets = Vec::new();
    for i in 0..n {
        offsets.push(out.len());
        out.extend_from_slice(&[0xA2, (i + 1) as u8, (i + 1) as u8]);
    }
    offsets.push(out.len());
    out.push(0x50);
    let table = out.len();
    for o in &offsets {
        out.extend_from_slice(&(*o as u16).to_be_bytes());
    }
    let mut trailer = [0u8; 32];
    trailer[6] = 2;
    trailer[7] = 1;
    trailer[8..16].copy_from_slice(&((n + 1) as u64).to_be_bytes());
    trailer[24..32].copy_from_slice(&(table as u64).to_be_bytes());
    out.extend_from_slice(&trailer);
    out
}

/// An XML plist of `depth` nested arrays (a parser that recurses per level overflows its
/// stack long before the end).
pub fn xml_plist_nested(depth: usize) -> Vec<u8> {
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\">");
    s.push_str(&"<array>".repeat(depth));
    s.push_str(&"</array>".repeat(depth));
    s.push_str("</plist>\n");
    s.into_bytes()
}
