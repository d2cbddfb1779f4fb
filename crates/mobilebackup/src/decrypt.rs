//! Writing a decrypted copy of an encrypted backup in the standard unencrypted layout.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use rayon::prelude::*;
use sha1::{Digest, Sha1};

use crate::extract::{classify, Problem, ProblemKind, Report};
use crate::layout::{self, INFO_PLIST, MANIFEST_DB, MANIFEST_PLIST, STATUS_PLIST};
use crate::manifestdb::{self, Row};
use crate::reader::{Backup, Catalog, RecordKind};
use crate::staging::Staging;
use crate::{mbfile, Error, Result};

/// Hashes what passes through, so the Digest costs no second read.
struct HashingWriter<W> {
    inner: W,
    sha1: Sha1,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha1.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes an unencrypted copy of `backup` to `out` (which must not exist):
/// plain `Manifest.db` whose MBFiles lose `EncryptionKey` (and whose `Digest`s
/// are recomputed over the plaintext blobs), `Manifest.plist` with
/// `IsEncrypted = false` and no `ManifestKey`, plaintext blobs in `xx/`, and
/// `Info.plist`/`Status.plist` copied. The backup keybag is kept, so the
/// keychain stays as protected as it was. Built in a staging folder and renamed
/// into place; missing or damaged blobs are reported and their rows kept.
pub fn decrypt_backup(
    backup: &Backup,
    catalog: &Catalog,
    out: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Report> {
    if !backup.is_encrypted() {
        return Err(Error::Unsupported {
            path: backup.root().to_path_buf(),
            reason: "the backup is not encrypted; there is nothing to decrypt".into(),
        });
    }
    let staging = Staging::new(out)?;
    let dir = staging.path().to_path_buf();
    let problems = Mutex::new(Vec::new());
    let push = |path: String, kind: ProblemKind, message: String| {
        problems
            .lock()
            .expect("no panics while locked")
            .push(Problem {
                path,
                kind,
                message,
            });
    };

    let rows: Vec<Option<(Row, Option<u64>)>> = catalog
        .records
        .par_iter()
        .map(|rec| {
            if let Some(p) = &rec.problem {
                push(
                    rec.display_path(),
                    ProblemKind::BadRecord,
                    format!("{p}; row left out"),
                );
                return None;
            }
            let mut file = rec.file.clone().expect("no problem means it decoded");
            let mut written = None;
            if rec.kind() == RecordKind::File {
                file.encryption_key = None;
                let dest = layout::blob_path(&dir, &rec.file_id).expect("valid fileID");
                let res =
                    (|| -> Result<(u64, [u8; 20], bool, Option<crate::blob::DigestMismatch>)> {
                        let parent = dest.parent().expect("xx folder");
                        std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
                        let mut tmp =
                            tempfile::NamedTempFile::new_in(parent).map_err(Error::io(parent))?;
                        // copy_to writes 1 MiB chunks; no extra buffering needed.
                        let mut w = HashingWriter {
                            inner: tmp.as_file_mut(),
                            sha1: Sha1::new(),
                        };
                        let rep = backup.copy_file(rec, &mut w)?;
                        let digest: [u8; 20] = w.sha1.finalize().into();
                        tmp.persist(&dest).map_err(|e| Error::io(&dest)(e.error))?;
                        Ok((rep.bytes, digest, rep.padding_ok, rep.digest_mismatch))
                    })();
                match res {
                    Ok((n, digest, padding_ok, mismatch)) => {
                        // Kept (as with bad padding), reported; the copy's Digest is of
                        // what was written, so the decrypted backup is self-consistent.
                        if let Some(m) = mismatch {
                            push(
                                rec.display_path(),
                                ProblemKind::DigestMismatch,
                                m.to_string(),
                            );
                        }
                        written = Some(n);
                        if file.digest.is_some() {
                            file.digest = Some(digest.to_vec());
                        }
                        if !padding_ok {
                            push(
                                rec.display_path(),
                                ProblemKind::Damaged,
                                "invalid PKCS7 padding; kept all decrypted bytes".into(),
                            );
                        }
                    }
                    Err(e) => push(rec.display_path(), classify(&e), e.to_string()),
                }
                progress(written.unwrap_or(0));
            }
            let row = Row {
                file_id: rec.file_id.clone(),
                domain: rec.domain.clone(),
                relative_path: rec.relative_path.clone(),
                flags: rec.flags,
                file: mbfile::encode(&file),
            };
            Some((row, written))
        })
        .collect();

    let mut report = Report::default();
    let mut db_rows = Vec::with_capacity(rows.len());
    for (row, written) in rows.into_iter().flatten() {
        match row.flags {
            layout::FLAG_FILE => {
                if let Some(bytes) = written {
                    report.files += 1;
                    report.bytes += bytes;
                }
            }
            layout::FLAG_DIR => report.dirs += 1,
            layout::FLAG_SYMLINK => report.symlinks += 1,
            _ => {}
        }
        db_rows.push(row);
    }
    let db = manifestdb::build(&db_rows).map_err(|e| {
        Error::malformed(out.join(MANIFEST_DB), format!("building Manifest.db: {e}"))
    })?;
    staging.write(MANIFEST_DB, &db)?;

    let mut manifest = backup
        .manifest()
        .expect("encrypted backups have one")
        .raw
        .clone();
    manifest.insert("IsEncrypted".into(), plist::Value::Boolean(false));
    manifest.remove("ManifestKey");
    let mut buf = Vec::new();
    plist::Value::Dictionary(manifest)
        .to_writer_binary(&mut buf)
        .map_err(|e| Error::malformed(out.join(MANIFEST_PLIST), e.to_string()))?;
    staging.write(MANIFEST_PLIST, &buf)?;
    // Status.plist last: it is what says the backup is complete.
    for name in [INFO_PLIST, STATUS_PLIST] {
        let src = backup.root().join(name);
        if std::fs::symlink_metadata(&src).is_ok() {
            let bytes = crate::safe_fs::read_regular(&src, crate::plists::MAX_PLIST_BYTES)?;
            staging.write(name, &bytes)?;
        }
    }
    staging.commit()?;
    report.problems = problems.into_inner().expect("no panics while locked");
    report.problems.extend(catalog.skipped_problems());
    report
        .problems
        .sort_by(|a, b| a.path.cmp(&b.path).then(a.kind.cmp(&b.kind)));
    Ok(report)
}
