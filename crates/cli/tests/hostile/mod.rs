//! The hostile backups of `hostile_suite.rs`, made at test time from copies of the fixtures.
//!
//! Each [`Case`] takes a fresh [`Sandbox`] (the backup, an output path, a device path, an
//! `outside/` folder with a canary file and a trap FIFO that hostile symlinks point at) and
//! damages the backup one way. Its expected exit codes, per command, are the documented ones
//! (README, "Exit codes"): 4 when the backup cannot be opened or read at all, 3 when a file or
//! record is damaged and the rest was done, 0 when the command's own output is complete.

use std::path::{Path, PathBuf};

use mobilebackup::layout;

use super::common::forge::{
    bplist_doubling, insert, keybag_bytes, mbfile_for, replace_file_content, replace_with_fifo,
    replace_with_symlink, rewrite_manifest, row_of, set_keybag, set_mbfile, tlv_bytes, tlv_records,
    with_encrypted_db, with_plain_db, xml_plist_nested,
};
use super::common::{blob_of, copy_dir, enc, mvt, PASSKEY};

/// The commands run over every case, in the order of [`Case::expect`].
pub const COMMANDS: [&str; 11] = [
    "info", "ls", "extract", "cat", "decrypt", "verify", "audit", "keychain", "passwd", "import",
    "restore",
];

/// A file of the encrypted fixture that cases damage (181 bytes, with a `Digest`).
pub const VICTIM: (&str, &str) = ("HomeDomain", "Library/Notes/readme.txt");

/// A file of the encrypted fixture without a `Digest`.
pub const NO_DIGEST: (&str, &str) = ("AppDomain-net.forge.notes", "Documents/welcome.txt");

/// The victim's fileID.
pub fn victim_id() -> String {
    layout::file_id(VICTIM.0, VICTIM.1)
}

/// Where one run happens.
pub struct Sandbox {
    /// Holds everything below.
    pub root: PathBuf,
    /// The hostile backup.
    pub backup: PathBuf,
    /// The output folder of `extract` and `decrypt`.
    pub out: PathBuf,
    /// The device folder of `import` and `restore`.
    pub phone: PathBuf,
    /// Files keybag must never read or write: a canary and a trap FIFO.
    pub outside: PathBuf,
    /// The backup's derived key, in a file (never on the command line).
    pub key_file: PathBuf,
    /// The new password of `passwd`, in a file.
    pub new_password_file: PathBuf,
    /// FIFOs keybag must never open (the trap, and any the case plants).
    pub fifos: Vec<PathBuf>,
}

/// The canary file's content.
pub const CANARY: &str = "CANARY-outside-the-backup-never-read";

impl Sandbox {
    /// A sandbox in `root` holding a copy of `base`.
    pub fn new(root: &Path, base: &Path) -> Sandbox {
        let sb = Sandbox {
            root: root.to_path_buf(),
            backup: root.join("backup"),
            out: root.join("out"),
            phone: root.join("phone"),
            outside: root.join("outside"),
            key_file: root.join("keys").join("derived.key"),
            new_password_file: root.join("keys").join("new-password"),
            fifos: vec![root.join("outside").join("trap.fifo")],
        };
        copy_dir(base, &sb.backup);
        std::fs::create_dir_all(&sb.outside).unwrap();
        std::fs::write(sb.canary(), CANARY).unwrap();
        replace_with_fifo(&sb.fifos[0]);
        std::fs::create_dir_all(sb.key_file.parent().unwrap()).unwrap();
        std::fs::write(&sb.key_file, PASSKEY).unwrap();
        std::fs::write(&sb.new_password_file, "hostile suite new password\n").unwrap();
        sb
    }

    /// The canary file outside the backup.
    pub fn canary(&self) -> PathBuf {
        self.outside.join("canary.txt")
    }

    /// The trap FIFO outside the backup.
    pub fn trap(&self) -> PathBuf {
        self.fifos[0].clone()
    }

    /// The blob of `id` in the backup.
    pub fn blob(&self, id: &str) -> PathBuf {
        blob_of(&self.backup, id)
    }

    /// Runs `edit` on the encrypted `Manifest.db`.
    pub fn db(&self, edit: impl FnOnce(&rusqlite::Connection)) {
        with_encrypted_db(&self.backup, PASSKEY, edit);
    }

    /// Adds a row whose blob holds `data` (plain: only for bad-record cases, whose blob is
    /// never decrypted) to the encrypted `Manifest.db`.
    pub fn add_row(&self, id: &str, domain: &str, rel: &str, flags: i64, file: Vec<u8>) {
        self.db(|c| {
            insert(
                c,
                &[(id.to_string(), domain.into(), rel.into(), flags, file)],
            )
        });
        if layout::is_valid_file_id(id) {
            let blob = self.blob(id);
            std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
            std::fs::write(blob, b"0123456789abcdef").unwrap();
        }
    }

    /// Edits one class-key record field of the keybag.
    pub fn keybag_tlv(&self, edit: impl FnOnce(&mut Vec<([u8; 4], Vec<u8>)>)) {
        let mut recs = tlv_records(&keybag_bytes(&self.backup));
        edit(&mut recs);
        set_keybag(&self.backup, tlv_bytes(&recs));
    }
}

/// Which fixture a case starts from.
#[derive(Copy, Clone, Debug)]
pub enum Base {
    /// `testdata/enc-small-public`: encrypted, 40 records, a keychain.
    Enc,
    /// `testdata/mvt-ios-backup`: a real unencrypted iOS 14.3 backup (only 10 blobs present).
    Mvt,
}

impl Base {
    /// The fixture folder.
    pub fn path(self) -> PathBuf {
        match self {
            Base::Enc => enc(),
            Base::Mvt => mvt(),
        }
    }
}

/// One hostile backup.
pub struct Case {
    /// Short name.
    pub name: &'static str,
    /// What part of the format it attacks.
    pub category: &'static str,
    /// Its starting point.
    pub base: Base,
    /// Damages the sandbox's backup (and may plant things in the output path).
    pub build: fn(&mut Sandbox),
    /// Expected exit code per command of [`COMMANDS`].
    pub expect: [i32; 11],
    /// The record `cat` reads.
    pub cat: (&'static str, &'static str),
}

/// Exit codes from "info ls extract cat decrypt verify audit keychain passwd import restore".
fn codes(s: &str) -> [i32; 11] {
    let v: Vec<i32> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
    v.try_into().expect("11 codes")
}

const ALL4: &str = "4 4 4 4 4 4 4 4 4 4 4";
/// One record unusable: listed, reported as damage where files are produced or checked.
const BAD_RECORD: &str = "0 0 3 0 3 3 3 0 0 3 3";
/// The victim's blob unusable.
const BAD_BLOB: &str = "0 0 3 3 3 3 3 0 0 3 3";

fn class_tlv(recs: &[([u8; 4], Vec<u8>)], tag: &[u8; 4]) -> Vec<usize> {
    (0..recs.len()).filter(|&i| &recs[i].0 == tag).collect()
}

/// A row whose MBFile is `file` at `rel` in HomeDomain.
fn hostile_row(sb: &Sandbox, rel: &str, flags: i64, file: Vec<u8>) {
    sb.add_row(
        &layout::file_id("HomeDomain", rel),
        "HomeDomain",
        rel,
        flags,
        file,
    );
}

/// A keyed archive whose root is `root` with `objects`.
fn archive(objects: Vec<plist::Value>, root: plist::Value) -> Vec<u8> {
    let mut top = plist::Dictionary::new();
    top.insert("root".into(), root);
    let mut d = plist::Dictionary::new();
    d.insert("$archiver".into(), "NSKeyedArchiver".into());
    d.insert("$version".into(), plist::Value::Integer(100_000.into()));
    d.insert("$top".into(), plist::Value::Dictionary(top));
    d.insert("$objects".into(), plist::Value::Array(objects));
    let mut buf = Vec::new();
    plist::Value::Dictionary(d)
        .to_writer_binary(&mut buf)
        .unwrap();
    buf
}

/// Every case.
pub fn cases() -> Vec<Case> {
    use plist::{Uid, Value as P};
    let case = |name, category, expect: &str, build: fn(&mut Sandbox)| Case {
        name,
        category,
        base: Base::Enc,
        build,
        expect: codes(expect),
        cat: VICTIM,
    };
    let mut v = vec![
        case(
            "control: the fixture untouched",
            "control",
            "0 0 0 0 0 0 0 0 0 0 0",
            |_| {},
        ),
        // ------------------------------------------------------------ keybag TLV
        case("keybag cut mid-record", "keybag", ALL4, |sb| {
            let mut kb = keybag_bytes(&sb.backup);
            kb.truncate(kb.len() - 3);
            set_keybag(&sb.backup, kb);
        }),
        case("keybag tag not ASCII", "keybag", ALL4, |sb| {
            let mut kb = keybag_bytes(&sb.backup);
            kb[0] = 0xff;
            set_keybag(&sb.backup, kb);
        }),
        case("keybag length past the end", "keybag", ALL4, |sb| {
            let mut kb = keybag_bytes(&sb.backup);
            kb[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
            set_keybag(&sb.backup, kb);
        }),
        case("keybag class given twice", "keybag", ALL4, |sb| {
            sb.keybag_tlv(|r| {
                let c = class_tlv(r, b"CLAS");
                r[c[2]].1 = r[c[1]].1.clone();
            })
        }),
        case("keybag WPKY of 41 bytes", "keybag", ALL4, |sb| {
            sb.keybag_tlv(|r| {
                let w = class_tlv(r, b"WPKY");
                r[w[3]].1.push(0);
            })
        }),
        case("keybag empty", "keybag", ALL4, |sb| {
            set_keybag(&sb.backup, Vec::new())
        }),
        case("keybag without class records", "keybag", ALL4, |sb| {
            sb.keybag_tlv(|r| {
                let first = class_tlv(r, b"UUID")[1];
                r.truncate(first);
            })
        }),
        // DPIC is only used by a password KDF: reading with the derived key works, and
        // passwd, which derives the new password's key, refuses the cost.
        case(
            "keybag DPIC of 4 billion",
            "keybag",
            "0 0 0 0 0 0 0 0 4 0 0",
            |sb| {
                sb.keybag_tlv(|r| {
                    let i = class_tlv(r, b"DPIC")[0];
                    r[i].1 = u32::MAX.to_be_bytes().to_vec();
                })
            },
        ),
        // ------------------------------------------------------------ top-level plists
        case("Manifest.plist not a plist", "plists", ALL4, |sb| {
            std::fs::write(sb.backup.join("Manifest.plist"), b"not a plist at all").unwrap();
        }),
        case("Manifest.plist a billion laughs", "plists", ALL4, |sb| {
            std::fs::write(sb.backup.join("Manifest.plist"), bplist_doubling(60)).unwrap();
        }),
        case("Manifest.plist an array", "plists", ALL4, |sb| {
            let mut buf = Vec::new();
            P::Array(vec![P::Boolean(true)])
                .to_writer_binary(&mut buf)
                .unwrap();
            std::fs::write(sb.backup.join("Manifest.plist"), buf).unwrap();
        }),
        case("Manifest.plist of 300 MiB (sparse)", "plists", ALL4, |sb| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(sb.backup.join("Manifest.plist"))
                .unwrap();
            f.set_len(300 << 20).unwrap();
        }),
        case("Info.plist nested 100,000 deep", "plists", ALL4, |sb| {
            std::fs::write(sb.backup.join("Info.plist"), xml_plist_nested(100_000)).unwrap();
        }),
        case(
            "Info.plist a symlink to a FIFO outside",
            "plists",
            ALL4,
            |sb| {
                replace_with_symlink(&sb.backup.join("Info.plist"), &sb.trap());
            },
        ),
        case("Status.plist a FIFO", "plists", ALL4, |sb| {
            let p = sb.backup.join("Status.plist");
            replace_with_fifo(&p);
            sb.fifos.push(p);
        }),
        case("ManifestKey naming class 99", "plists", ALL4, |sb| {
            rewrite_manifest(&sb.backup, |d| {
                if let Some(P::Data(mk)) = d.get_mut("ManifestKey") {
                    mk[..4].copy_from_slice(&99u32.to_le_bytes());
                }
            })
        }),
        case("ManifestKey of 20 bytes", "plists", ALL4, |sb| {
            rewrite_manifest(&sb.backup, |d| {
                d.insert("ManifestKey".into(), P::Data(vec![4; 20]));
            })
        }),
        case(
            "Manifest.db a symlink to a FIFO outside",
            "plists",
            ALL4,
            |sb| {
                replace_with_symlink(&sb.backup.join("Manifest.db"), &sb.trap());
            },
        ),
        // ------------------------------------------------------------ Manifest.db
        case("Manifest.db not SQLite", "manifest-db", ALL4, |sb| {
            let key = super::common::forge::manifest_db_key(&sb.backup, PASSKEY);
            let junk = vec![0x5a; 8192];
            std::fs::write(
                sb.backup.join("Manifest.db"),
                dataprotection::cbc::encrypt_padded(&key, &junk),
            )
            .unwrap();
        }),
        case("Manifest.db cut in half", "manifest-db", ALL4, |sb| {
            let p = sb.backup.join("Manifest.db");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() / 32 * 16]).unwrap();
        }),
        case(
            "Files a view over an endless query",
            "manifest-db",
            ALL4,
            |sb| {
                sb.db(|c| {
                c.execute_batch(
                    "ALTER TABLE Files RENAME TO FilesData;
                     CREATE VIEW Files AS WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n + 1 FROM r)
                       SELECT f.* FROM FilesData f, r;",
                )
                .unwrap()
            })
            },
        ),
        case("a trigger", "manifest-db", ALL4, |sb| {
            sb.db(|c| {
                c.execute_batch(
                    "CREATE TABLE log(x);
                     CREATE TRIGGER t AFTER DELETE ON Files BEGIN INSERT INTO log VALUES (1); END;",
                )
                .unwrap()
            })
        }),
        case("Files a virtual table", "manifest-db", ALL4, |sb| {
            sb.db(|c| {
                c.execute_batch(
                    "DROP TABLE Files;
                     CREATE VIRTUAL TABLE Files USING fts5(fileID, domain, relativePath, flags, file);",
                )
                .unwrap()
            })
        }),
        case("a generated column", "manifest-db", ALL4, |sb| {
            sb.db(|c| {
                c.execute_batch(
                    "ALTER TABLE Files RENAME TO Old;
                     CREATE TABLE Files(fileID TEXT, domain TEXT, relativePath TEXT, flags INTEGER,
                       file BLOB GENERATED ALWAYS AS (zeroblob(1000000 * flags)) VIRTUAL);
                     INSERT INTO Files(fileID, domain, relativePath, flags)
                       SELECT fileID, domain, relativePath, flags FROM Old;",
                )
                .unwrap()
            })
        }),
        case("Files without relativePath", "manifest-db", ALL4, |sb| {
            sb.db(|c| {
                c.execute_batch(
                    "DROP INDEX FilesRelativePathIdx; ALTER TABLE Files DROP COLUMN relativePath;",
                )
                .unwrap()
            })
        }),
        case("no Files table", "manifest-db", ALL4, |sb| {
            sb.db(|c| c.execute_batch("DROP TABLE Files;").unwrap())
        }),
        case("a value of 20 MB", "manifest-db", ALL4, |sb| {
            sb.db(|c| {
                c.execute(
                    "UPDATE Files SET file = zeroblob(20000000) WHERE relativePath = ?1",
                    [VICTIM.1],
                )
                .unwrap();
            })
        }),
        // A row of NULLs cannot be read at all: a record lost, reported as damage.
        case(
            "a row of NULLs",
            "manifest-db",
            "0 0 3 0 3 3 3 0 0 3 3",
            |sb| {
                sb.db(|c| {
                    c.execute_batch("INSERT INTO Files VALUES (NULL, NULL, NULL, NULL, NULL);")
                        .unwrap()
                })
            },
        ),
        case(
            "MBFile archive with a cycle",
            "manifest-db",
            BAD_RECORD,
            |sb| {
                let cyc = archive(
                    vec![
                        P::String("$null".into()),
                        P::Uid(Uid::new(2)),
                        P::Uid(Uid::new(1)),
                    ],
                    P::Uid(Uid::new(1)),
                );
                hostile_row(sb, "Library/cycle", 1, cyc);
            },
        ),
        case(
            "MBFile archive with a dangling UID",
            "manifest-db",
            BAD_RECORD,
            |sb| {
                hostile_row(
                    sb,
                    "Library/dangling",
                    1,
                    archive(vec![P::String("$null".into())], P::Uid(Uid::new(7))),
                );
            },
        ),
        case("MBFile a billion laughs", "manifest-db", BAD_RECORD, |sb| {
            hostile_row(sb, "Library/laughs", 1, bplist_doubling(60));
        }),
        case("MBFile not a plist", "manifest-db", BAD_RECORD, |sb| {
            hostile_row(sb, "Library/garbage", 1, b"garbage".to_vec());
        }),
        case("fileID climbing out", "manifest-db", BAD_RECORD, |sb| {
            let rel = "Library/escape-fileid";
            sb.add_row(
                "../../../../tmp/keybag-hostile-fileid",
                "HomeDomain",
                rel,
                1,
                mbfile_for(rel, 0o100644, 16, None),
            );
        }),
        case("fileID in capitals", "manifest-db", BAD_RECORD, |sb| {
            let rel = "Library/upper";
            sb.add_row(
                &layout::file_id("HomeDomain", rel).to_uppercase(),
                "HomeDomain",
                rel,
                1,
                mbfile_for(rel, 0o100644, 16, None),
            );
        }),
        case("fileID given twice", "manifest-db", BAD_RECORD, |sb| {
            sb.db(|c| {
                c.execute_batch(
                    "CREATE TABLE F2 (fileID TEXT, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB);
                     INSERT INTO F2 SELECT * FROM Files; DROP TABLE Files; ALTER TABLE F2 RENAME TO Files;",
                )
                .unwrap();
                let rel = "Library/zz-twice";
                c.execute(
                    "INSERT INTO Files VALUES (?1, 'HomeDomain', ?2, 1, ?3)",
                    rusqlite::params![victim_id(), rel, mbfile_for(rel, 0o100644, 3, None)],
                )
                .unwrap();
            })
        }),
        case(
            "relativePath climbing out",
            "manifest-db",
            BAD_RECORD,
            |sb| {
                let rel = "../../../../tmp/keybag-hostile-dotdot";
                hostile_row(sb, rel, 1, mbfile_for(rel, 0o100644, 16, None));
            },
        ),
        case("absolute relativePath", "manifest-db", BAD_RECORD, |sb| {
            let rel = "/tmp/keybag-hostile-absolute";
            hostile_row(sb, rel, 1, mbfile_for(rel, 0o100644, 16, None));
        }),
        case("domain climbing out", "manifest-db", BAD_RECORD, |sb| {
            let (dom, rel) = ("../../keybag-hostile-domain", "x.txt");
            sb.add_row(
                &layout::file_id(dom, rel),
                dom,
                rel,
                1,
                mbfile_for(rel, 0o100644, 16, None),
            );
        }),
        case("NUL in a path", "manifest-db", BAD_RECORD, |sb| {
            let rel = "Library/nul\0.txt";
            hostile_row(sb, rel, 1, mbfile_for(rel, 0o100644, 16, None));
        }),
        case(
            "MBFile path differs from the row's",
            "manifest-db",
            BAD_RECORD,
            |sb| {
                hostile_row(
                    sb,
                    "Library/innocent.txt",
                    1,
                    mbfile_for("../../../../etc/passwd", 0o100644, 16, None),
                );
            },
        ),
        // A symlink leaving the output is not created (a warning, not damage); stored as
        // given on a device, whose paths are its own.
        case(
            "symlink to /etc/passwd",
            "manifest-db",
            "0 0 0 0 0 0 0 0 0 0 0",
            |sb| {
                let rel = "Library/link-out";
                hostile_row(
                    sb,
                    rel,
                    4,
                    mbfile_for(rel, 0o120755, 0, Some("/etc/passwd")),
                );
            },
        ),
        // Its Digest proves its bytes: Size is not held against it (verify warns).
        case(
            "Size of 2^63 - 1",
            "manifest-db",
            "0 0 0 0 0 0 0 0 0 0 0",
            |sb| {
                sb.db(|c| {
                    let (_, mut f) = row_of(c, VICTIM.0, VICTIM.1);
                    f.size = i64::MAX as u64;
                    set_mbfile(c, VICTIM.0, VICTIM.1, &f);
                })
            },
        ),
        case(
            "a file under a file",
            "manifest-db",
            "0 0 3 0 0 0 0 0 0 3 3",
            |sb| {
                let rel = format!("{}/inner", VICTIM.1);
                hostile_row(sb, &rel, 2, mbfile_for(&rel, 0o40755, 0, None));
            },
        ),
        // Without a Digest, restore and import hold Size against the file.
        case(
            "Size of 2^63 - 1, no Digest",
            "manifest-db",
            "0 0 0 0 0 0 0 0 0 3 3",
            |sb| {
                sb.db(|c| {
                    let (d, p) = NO_DIGEST;
                    let (_, mut f) = row_of(c, d, p);
                    assert!(f.digest.is_none());
                    f.size = i64::MAX as u64;
                    set_mbfile(c, d, p, &f);
                })
            },
        ),
        // Too deep for the output's file system (reported); a device keeps paths in its index.
        case(
            "a 4,000-level path",
            "manifest-db",
            "0 0 3 0 0 0 0 0 0 0 0",
            |sb| {
                let rel = format!("Library/{}x.txt", "d/".repeat(4000));
                hostile_row(sb, &rel, 2, mbfile_for(&rel, 0o40755, 0, None));
            },
        ),
        case(
            "names differing only in case",
            "output",
            "0 0 0 0 0 0 0 0 0 0 0",
            |sb| {
                let rel = "Library/Notes/README.TXT";
                sb.db(|c| {
                    let (_, mut f) = row_of(c, VICTIM.0, VICTIM.1);
                    f.relative_path = rel.into();
                    insert(
                        c,
                        &[(
                            layout::file_id("HomeDomain", rel),
                            "HomeDomain".into(),
                            rel.into(),
                            1,
                            mobilebackup::mbfile::encode(&f),
                        )],
                    );
                });
                // The same bytes (and key) as the victim under the other name.
                let b = sb.blob(&layout::file_id("HomeDomain", rel));
                std::fs::create_dir_all(b.parent().unwrap()).unwrap();
                std::fs::copy(sb.blob(&victim_id()), b).unwrap();
            },
        ),
        // ------------------------------------------------------------ blobs
        case(
            "blob a symlink to a file outside",
            "blobs",
            BAD_BLOB,
            |sb| {
                replace_with_symlink(&sb.blob(&victim_id()), &sb.canary());
            },
        ),
        case(
            "blob a symlink to a FIFO outside",
            "blobs",
            BAD_BLOB,
            |sb| {
                replace_with_symlink(&sb.blob(&victim_id()), &sb.trap());
            },
        ),
        case("blob a FIFO", "blobs", BAD_BLOB, |sb| {
            let p = sb.blob(&victim_id());
            replace_with_fifo(&p);
            sb.fifos.push(p);
        }),
        case("blob a folder", "blobs", BAD_BLOB, |sb| {
            let p = sb.blob(&victim_id());
            std::fs::remove_file(&p).unwrap();
            std::fs::create_dir(&p).unwrap();
        }),
        case("blob a socket", "blobs", BAD_BLOB, |sb| {
            let p = sb.blob(&victim_id());
            std::fs::remove_file(&p).unwrap();
            // The listener closes when dropped; the socket file stays.
            std::os::unix::net::UnixListener::bind(&p).unwrap();
        }),
        case("blob missing", "blobs", BAD_BLOB, |sb| {
            std::fs::remove_file(sb.blob(&victim_id())).unwrap();
        }),
        case("blob not a multiple of 16", "blobs", BAD_BLOB, |sb| {
            let p = sb.blob(&victim_id());
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() - 5]).unwrap();
        }),
        case(
            "blob changed, padding still valid",
            "blobs",
            BAD_BLOB,
            |sb| {
                let p = sb.blob(&victim_id());
                let mut b = std::fs::read(&p).unwrap();
                b[2] ^= 0x10;
                std::fs::write(&p, &b).unwrap();
            },
        ),
        case("blob's last block changed", "blobs", BAD_BLOB, |sb| {
            let p = sb.blob(&victim_id());
            let mut b = std::fs::read(&p).unwrap();
            let n = b.len();
            b[n - 1] ^= 0x55;
            std::fs::write(&p, &b).unwrap();
        }),
        case("blob folder a symlink", "blobs", BAD_BLOB, |sb| {
            let shard = sb.backup.join(&victim_id()[..2]);
            let away = sb.outside.join("shard");
            std::fs::rename(&shard, &away).unwrap();
            std::os::unix::fs::symlink(&away, &shard).unwrap();
        }),
        // ------------------------------------------------------------ the output folder
        case(
            "output: a folder that is a symlink out",
            "output",
            "0 0 3 0 1 0 0 0 0 0 0",
            |sb| {
                std::fs::create_dir_all(&sb.out).unwrap();
                std::os::unix::fs::symlink(&sb.outside, sb.out.join("HomeDomain")).unwrap();
            },
        ),
        case(
            "output: a file that is a symlink out",
            "output",
            "0 0 0 0 1 0 0 0 0 0 0",
            |sb| {
                let dir = sb.out.join("HomeDomain/Library/Notes");
                std::fs::create_dir_all(&dir).unwrap();
                std::os::unix::fs::symlink(sb.canary(), dir.join("readme.txt")).unwrap();
            },
        ),
        case(
            "output: a file where a folder goes",
            "output",
            "0 0 3 0 1 0 0 0 0 0 0",
            |sb| {
                std::fs::create_dir_all(&sb.out).unwrap();
                std::fs::write(sb.out.join("HomeDomain"), b"in the way").unwrap();
            },
        ),
        // import refuses a path that exists; restore finds no device there (4).
        case(
            "output: the device path a symlink out",
            "output",
            "0 0 0 0 0 0 0 0 0 1 4",
            |sb| {
                std::os::unix::fs::symlink(&sb.outside, &sb.phone).unwrap();
            },
        ),
        // ------------------------------------------------------------ the keychain
        // `keychain`'s one subject cannot be read (4); elsewhere it is one damaged file.
        case(
            "keychain not a plist",
            "keychain",
            "0 0 0 0 0 0 3 4 0 3 3",
            |sb| {
                replace_file_content(
                    &sb.backup,
                    PASSKEY,
                    "KeychainDomain",
                    "keychain-backup.plist",
                    b"not a plist",
                );
            },
        ),
        case(
            "keychain a billion laughs",
            "keychain",
            "0 0 0 0 0 0 3 4 0 3 3",
            |sb| {
                replace_file_content(
                    &sb.backup,
                    PASSKEY,
                    "KeychainDomain",
                    "keychain-backup.plist",
                    &bplist_doubling(60),
                );
            },
        ),
        case(
            "keychain items of garbage",
            "keychain",
            "0 0 0 0 0 0 3 3 0 3 3",
            |sb| {
                let mut d = plist::Dictionary::new();
                let item = |b: &[u8]| {
                    let mut i = plist::Dictionary::new();
                    i.insert("v_Data".into(), P::Data(b.to_vec()));
                    i.insert("v_PersistentRef".into(), P::Data(vec![1; 8]));
                    P::Dictionary(i)
                };
                d.insert(
                    "genp".into(),
                    P::Array(vec![
                        item(b""),
                        item(&[3, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
                        item(&[9; 300]),
                    ]),
                );
                let mut buf = Vec::new();
                P::Dictionary(d).to_writer_binary(&mut buf).unwrap();
                replace_file_content(
                    &sb.backup,
                    PASSKEY,
                    "KeychainDomain",
                    "keychain-backup.plist",
                    &buf,
                );
            },
        ),
        case(
            "keychain blob missing",
            "keychain",
            "0 0 3 0 3 3 3 3 0 3 3",
            |sb| {
                let id = layout::file_id("KeychainDomain", "keychain-backup.plist");
                std::fs::remove_file(sb.blob(&id)).unwrap();
            },
        ),
    ];
    // The real unencrypted backup: a few cases on its plain Manifest.db and blobs.
    let mvt_case = |name, category, expect: &str, build: fn(&mut Sandbox)| Case {
        name,
        category,
        base: Base::Mvt,
        build,
        expect: codes(expect),
        cat: ("HomeDomain", "Library/SMS/sms.db"),
    };
    // The fixture itself already has 1,079 missing blobs, its keychain's among them, and its
    // 10 present files were edited by its publishers: exit 3 wherever files are read or
    // checked. decrypt and passwd refuse a backup that is not encrypted (1) before reading it.
    v.push(mvt_case(
        "unencrypted control",
        "control",
        "0 0 3 3 1 3 3 3 1 3 3",
        |_| {},
    ));
    v.push(mvt_case(
        "unencrypted: Files a view",
        "manifest-db",
        "4 4 4 4 1 4 4 4 1 4 4",
        |sb| {
            with_plain_db(&sb.backup, |c| {
                c.execute_batch(
                    "ALTER TABLE Files RENAME TO FilesData; CREATE VIEW Files AS SELECT * FROM FilesData;",
                )
                .unwrap()
            })
        },
    ));
    v.push(mvt_case(
        "unencrypted: sms.db a symlink to the canary",
        "blobs",
        "0 0 3 3 1 3 3 3 1 3 3",
        |sb| {
            let id = layout::file_id("HomeDomain", "Library/SMS/sms.db");
            replace_with_symlink(&blob_of(&sb.backup, &id), &sb.canary());
        },
    ));
    v
}
