//! The `file` column of `Manifest.db`: an `NSKeyedArchiver` binary plist holding one `MBFile`.
//!
//! [`decode`] turns such a blob into an [`MbFile`]; [`encode`] writes one back in the exact shape
//! BackupAgent2 produces (spec §6.2): `$objects = [$null, MBFile, RelativePath, [Target],
//! [Digest], [EncryptionKey, NSMutableData class], [ExtendedAttributes], MBFile class]`, with the
//! MBFile dictionary at `$objects[1]` because MVT and iphone-dataprotection hard-code that index.
//!
//! Both directions use small purpose-built binary-plist code rather than `plist::Value`: the
//! reader parses objects lazily from the object table (no tree expansion, so hostile blobs with
//! shared references stay cheap), and the writer reproduces CoreFoundation's object numbering,
//! value sharing and `NSDictionary` key order, so re-encoding an Apple-written row gives back
//! the same bytes (checked on all 3,721 rows of the MVT iOS 14.3 fixture).
//!
//! Integer conventions (they follow Apple's `encodeInt32:`/`encodeInt64:` calls):
//! `Mode`, `UserID`, `GroupID`, `ProtectionClass` and `Flags` are 32-bit, so a stored negative
//! value is the signed view of the same 32 bits (the fixture stores uid/gid 4294967294 "nobody"
//! as `-2`); `InodeNumber` and `Size` are 64-bit the same way. Timestamps are Unix seconds.

/// One decoded `MBFile` record (the metadata of a file, directory or symlink in a backup).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MbFile {
    /// Path relative to the domain root (`RelativePath`); `""` for a domain's root row.
    /// Always equal to `Files.relativePath` in Apple-written databases.
    pub relative_path: String,
    /// Symlink target (`Target`), an absolute device path; present on symlinks only.
    pub target: Option<String>,
    /// SHA-1 of the stored blob (`Digest`, normally 20 bytes); only some files have one.
    pub digest: Option<Vec<u8>>,
    /// Wrapped per-file key (`EncryptionKey`): `u32le protection class` ‖ 40-byte AES-KW blob
    /// (normally 44 bytes). Present on regular files of encrypted backups only.
    pub encryption_key: Option<Vec<u8>>,
    /// Extended attributes (`ExtendedAttributes`): the raw bytes of a binary plist dictionary
    /// mapping attribute name to data, kept undecoded so it round-trips untouched.
    pub extended_attributes: Option<Vec<u8>>,
    /// `st_mode` (`Mode`), including the file-type bits (`0x8000` file, `0x4000` directory,
    /// `0xA000` symlink).
    pub mode: u32,
    /// Device inode number (`InodeNumber`).
    pub inode: u64,
    /// Owner user id (`UserID`); 501 = mobile, 0 = root, 4294967294 = nobody.
    pub uid: u32,
    /// Owner group id (`GroupID`).
    pub gid: u32,
    /// Last modification time, Unix seconds (`LastModified`).
    pub mtime: i64,
    /// Last status change time, Unix seconds (`LastStatusChange`).
    pub ctime: i64,
    /// Creation time, Unix seconds (`Birth`).
    pub birth: i64,
    /// Plaintext size at backup time (`Size`); 0 for directories and symlinks. Not
    /// authoritative for decryption (spec §7.2, pitfall P1).
    pub size: u64,
    /// Data-protection class of the file (`ProtectionClass`).
    pub protection_class: u32,
    /// BSD `st_flags` (`Flags`), e.g. 128 = `UF_DATAVAULT`. Unrelated to `Files.flags`.
    pub flags: u32,
}

/// Why a `file` blob could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum MbFileError {
    /// The bytes are not a (well-formed) binary property list.
    #[error("MBFile blob is not a binary plist: {0}")]
    NotPlist(&'static str),
    /// The plist parsed but lacks the `NSKeyedArchiver` envelope (`$objects`, `$top.root`).
    #[error("MBFile blob is not an NSKeyedArchiver archive: {0}")]
    NotKeyedArchive(&'static str),
    /// A UID points past the end of `$objects`.
    #[error("dangling UID {0} (no such entry in $objects)")]
    DanglingUid(u64),
    /// UID resolution did not reach a non-UID object within the depth bound.
    #[error("UID cycle (or over-long UID chain) starting at UID {0}")]
    UidCycle(u64),
    /// A required key is absent (or is `$null`).
    #[error("MBFile field {0} is missing")]
    MissingField(&'static str),
    /// A key holds an object of the wrong type.
    #[error("MBFile field {field} has wrong type (expected {expected})")]
    WrongType {
        /// The MBFile key.
        field: &'static str,
        /// What was expected there.
        expected: &'static str,
    },
    /// An integer key holds a value that does not fit the field.
    #[error("MBFile field {field} value {value} is out of range")]
    OutOfRange {
        /// The MBFile key.
        field: &'static str,
        /// The stored value.
        value: i128,
    },
}

/// How many UID hops [`decode`] follows before calling it a cycle. Real archives need one.
const MAX_UID_DEPTH: usize = 16;

/// Decodes a `Files.file` blob into an [`MbFile`].
///
/// Only binary plists (`bplist00`) are accepted, which is all Apple writes. Objects are read
/// lazily from the plist's object table instead of expanding the whole tree, so shared
/// references cannot blow up (a 200-byte plist can describe 2^40 values) and cost stays linear
/// in the input size.
///
/// Leniency (chosen to match Apple's own `-[MBFile initWithCoder:]`, whose
/// `decodeInt32ForKey:`-style calls yield 0 for absent keys):
/// * only `RelativePath` is required; every integer key defaults to 0 when absent
///   (crabapple likewise treats `UserID` as optional);
/// * object fields may be inline or behind a UID; data fields may be raw data or an
///   `NSData`/`NSMutableData` dictionary (`NS.data`); string fields may be a string, an
///   `NSString` dictionary (`NS.string`) or UTF-8 data; a UID to `$null` (UID 0) means absent;
/// * 32-bit integer fields accept `i32::MIN..=u32::MAX` (negative = signed view of the same
///   bits, e.g. gid `-2`), 64-bit unsigned fields accept `i64::MIN..=u64::MAX` likewise,
///   timestamps accept any `i64`; anything else is [`MbFileError::OutOfRange`];
/// * the root is taken from `$top.root`, not assumed to be `$objects[1]`;
/// * `$version`, `$archiver` and `$class` are not checked, unknown keys are ignored, and the
///   lengths of `Digest` and `EncryptionKey` are not enforced (key unwrapping checks that).
///
/// Never panics; malformed input yields an [`MbFileError`].
pub fn decode(bytes: &[u8]) -> Result<MbFile, MbFileError> {
    let pl = Bplist::parse(bytes)?;
    let Node::Dict(top) = pl.node(pl.top)? else {
        return Err(MbFileError::NotKeyedArchive(
            "top level is not a dictionary",
        ));
    };
    let objects = match pl.dict_get(&top, "$objects")? {
        Some(r) => match pl.node(r)? {
            Node::Array(refs) => refs,
            _ => return Err(MbFileError::NotKeyedArchive("$objects is not an array")),
        },
        None => return Err(MbFileError::NotKeyedArchive("$objects missing")),
    };
    let root_ref = match pl.dict_get(&top, "$top")? {
        Some(r) => match pl.node(r)? {
            Node::Dict(t) => pl.dict_get(&t, "root")?,
            _ => None,
        },
        None => None,
    }
    .ok_or(MbFileError::NotKeyedArchive("$top.root missing"))?;

    // The root itself is reached through `resolve`; `root` is filled in just below.
    let r = Reader {
        pl: &pl,
        objects,
        root: Dict::empty(),
    };
    let Some(Node::Dict(root)) = r.resolve(pl.node(root_ref)?)? else {
        return Err(MbFileError::NotKeyedArchive(
            "root object is not a dictionary",
        ));
    };
    let r = Reader { root, ..r };
    Ok(MbFile {
        relative_path: r
            .string("RelativePath")?
            .ok_or(MbFileError::MissingField("RelativePath"))?,
        target: r.string("Target")?,
        digest: r.data("Digest")?,
        encryption_key: r.data("EncryptionKey")?,
        extended_attributes: r.data("ExtendedAttributes")?,
        mode: r.u32_bits("Mode")?,
        inode: r.u64_bits("InodeNumber")?,
        uid: r.u32_bits("UserID")?,
        gid: r.u32_bits("GroupID")?,
        mtime: r.time("LastModified")?,
        ctime: r.time("LastStatusChange")?,
        birth: r.time("Birth")?,
        size: r.u64_bits("Size")?,
        protection_class: r.u32_bits("ProtectionClass")?,
        flags: r.u32_bits("Flags")?,
    })
}

/// A list of object references inside an array or dictionary object.
#[derive(Clone, Copy)]
struct Refs<'a> {
    bytes: &'a [u8],
    size: usize,
}

impl Refs<'_> {
    fn len(&self) -> usize {
        self.bytes.len() / self.size
    }

    /// The `i`th reference, if `i` is in range.
    fn get(&self, i: usize) -> Option<u64> {
        let start = i.checked_mul(self.size)?;
        let b = self.bytes.get(start..start.checked_add(self.size)?)?;
        Some(be_uint(b))
    }
}

/// A dictionary object: parallel key and value reference lists.
#[derive(Clone, Copy)]
struct Dict<'a> {
    keys: Refs<'a>,
    values: Refs<'a>,
}

impl Dict<'_> {
    fn empty() -> Self {
        let none = Refs {
            bytes: &[],
            size: 1,
        };
        Dict {
            keys: none,
            values: none,
        }
    }
}

/// One parsed object; containers stay as reference lists.
enum Node<'a> {
    Int(i128),
    Uid(u64),
    Str(String),
    Data(&'a [u8]),
    Array(Refs<'a>),
    Dict(Dict<'a>),
    /// Booleans, reals, dates, and anything this codec never needs.
    Other,
}

/// A `bplist00` file with its trailer checked; objects are parsed on demand.
struct Bplist<'a> {
    data: &'a [u8],
    offset_size: usize,
    ref_size: usize,
    count: u64,
    top: u64,
    /// Start of the offset table; every object lies in `8..table`.
    table: usize,
}

/// Big-endian unsigned integer of at most 8 bytes.
fn be_uint(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

impl<'a> Bplist<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, MbFileError> {
        const BAD: MbFileError = MbFileError::NotPlist("bad binary plist trailer");
        if !data.starts_with(b"bplist00") {
            return Err(MbFileError::NotPlist("no bplist00 header"));
        }
        let trailer_start = data.len().checked_sub(32).filter(|&t| t >= 8).ok_or(BAD)?;
        let t = &data[trailer_start..];
        let offset_size = usize::from(t[6]);
        let ref_size = usize::from(t[7]);
        let count = be_uint(&t[8..16]);
        let top = be_uint(&t[16..24]);
        let table = usize::try_from(be_uint(&t[24..32])).map_err(|_| BAD)?;
        if !(1..=8).contains(&offset_size) || !(1..=8).contains(&ref_size) || top >= count {
            return Err(BAD);
        }
        let table_len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(offset_size))
            .ok_or(BAD)?;
        if table < 8 || !matches!(table.checked_add(table_len), Some(end) if end <= trailer_start) {
            return Err(BAD);
        }
        Ok(Bplist {
            data,
            offset_size,
            ref_size,
            count,
            top,
            table,
        })
    }

    /// The bytes from object `r`'s marker up to the offset table.
    fn object_bytes(&self, r: u64) -> Result<&'a [u8], MbFileError> {
        if r >= self.count {
            return Err(MbFileError::NotPlist("object reference out of range"));
        }
        const BAD: MbFileError = MbFileError::NotPlist("object offset out of range");
        // In range by the checks in `parse`; `get` keeps it panic-free regardless.
        let at = usize::try_from(r)
            .ok()
            .and_then(|r| r.checked_mul(self.offset_size))
            .and_then(|o| o.checked_add(self.table))
            .ok_or(MbFileError::NotPlist("object reference out of range"))?;
        let entry = at
            .checked_add(self.offset_size)
            .and_then(|end| self.data.get(at..end))
            .ok_or(BAD)?;
        match usize::try_from(be_uint(entry)) {
            // Objects live between the header and the offset table; never empty.
            Ok(off) if (8..self.table).contains(&off) => self.data.get(off..self.table).ok_or(BAD),
            _ => Err(BAD),
        }
    }

    /// Length of a data/string/container object and where its payload starts.
    fn length(body: &[u8]) -> Result<(usize, usize), MbFileError> {
        const BAD: MbFileError = MbFileError::NotPlist("bad object length");
        let low = body.first().ok_or(BAD)? & 0x0F;
        if low < 0x0F {
            return Ok((usize::from(low), 1));
        }
        let marker = *body.get(1).ok_or(BAD)?;
        if marker >> 4 != 0x1 || marker & 0x0F > 3 {
            return Err(BAD);
        }
        let n = 1usize << (marker & 0x0F);
        let len = be_uint(body.get(2..2 + n).ok_or(BAD)?);
        Ok((usize::try_from(len).map_err(|_| BAD)?, 2 + n))
    }

    /// `len` items of `unit` bytes starting at `start`.
    fn payload(
        body: &'a [u8],
        start: usize,
        len: usize,
        unit: usize,
    ) -> Result<&'a [u8], MbFileError> {
        len.checked_mul(unit)
            .and_then(|n| start.checked_add(n))
            .and_then(|end| body.get(start..end))
            .ok_or(MbFileError::NotPlist("truncated object"))
    }

    fn node(&self, r: u64) -> Result<Node<'a>, MbFileError> {
        let body = self.object_bytes(r)?;
        let marker = body.first().copied().unwrap_or(0);
        let low = marker & 0x0F;
        Ok(match marker >> 4 {
            0x1 => {
                let n = match low {
                    0..=4 => 1usize << low,
                    _ => return Err(MbFileError::NotPlist("bad integer size")),
                };
                let b = Self::payload(body, 1, n, 1)?;
                Node::Int(match n {
                    16 => i128::from_be_bytes(b.try_into().unwrap_or([0; 16])),
                    8 => i128::from(be_uint(b) as i64),
                    _ => i128::from(be_uint(b)),
                })
            }
            0x4 => {
                let (len, start) = Self::length(body)?;
                Node::Data(Self::payload(body, start, len, 1)?)
            }
            0x5 => {
                // "ASCII" strings; map any stray high bytes as Latin-1 rather than fail.
                let (len, start) = Self::length(body)?;
                let b = Self::payload(body, start, len, 1)?;
                Node::Str(b.iter().map(|&c| char::from(c)).collect())
            }
            0x6 => {
                let (len, start) = Self::length(body)?;
                let b = Self::payload(body, start, len, 2)?;
                let units = b.chunks_exact(2).map(|u| u16::from_be_bytes([u[0], u[1]]));
                Node::Str(
                    char::decode_utf16(units)
                        .collect::<Result<String, _>>()
                        .map_err(|_| MbFileError::NotPlist("invalid UTF-16 string"))?,
                )
            }
            0x8 => {
                let n = usize::from(low) + 1;
                if n > 8 {
                    return Err(MbFileError::NotPlist("UID wider than 64 bits"));
                }
                Node::Uid(be_uint(Self::payload(body, 1, n, 1)?))
            }
            0xA => {
                let (len, start) = Self::length(body)?;
                Node::Array(Refs {
                    bytes: Self::payload(body, start, len, self.ref_size)?,
                    size: self.ref_size,
                })
            }
            0xD => {
                let (len, start) = Self::length(body)?;
                let both = Self::payload(body, start, len, 2 * self.ref_size)?;
                let (keys, values) = both.split_at(both.len() / 2);
                Node::Dict(Dict {
                    keys: Refs {
                        bytes: keys,
                        size: self.ref_size,
                    },
                    values: Refs {
                        bytes: values,
                        size: self.ref_size,
                    },
                })
            }
            _ => Node::Other,
        })
    }

    /// Whether object `r` is the string `name`, compared without allocating (so a dictionary
    /// whose keys all point at one huge string costs only its key count).
    fn is_string(&self, r: u64, name: &str) -> Result<bool, MbFileError> {
        let body = self.object_bytes(r)?;
        match body.first().copied().unwrap_or(0) >> 4 {
            0x5 => {
                let (len, start) = Self::length(body)?;
                Ok(len == name.len() && Self::payload(body, start, len, 1)? == name.as_bytes())
            }
            0x6 => {
                let (len, start) = Self::length(body)?;
                if len != name.encode_utf16().count() {
                    return Ok(false);
                }
                let b = Self::payload(body, start, len, 2)?;
                Ok(b.chunks_exact(2)
                    .map(|u| u16::from_be_bytes([u[0], u[1]]))
                    .eq(name.encode_utf16()))
            }
            _ => Ok(false),
        }
    }

    /// The value reference stored under string key `name` (first match wins).
    fn dict_get(&self, d: &Dict<'_>, name: &str) -> Result<Option<u64>, MbFileError> {
        for i in 0..d.keys.len() {
            if let (Some(k), Some(v)) = (d.keys.get(i), d.values.get(i)) {
                if self.is_string(k, name)? {
                    return Ok(Some(v));
                }
            }
        }
        Ok(None)
    }
}

/// Field accessors over the root MBFile dictionary.
struct Reader<'p, 'a> {
    pl: &'p Bplist<'a>,
    objects: Refs<'a>,
    root: Dict<'a>,
}

impl<'a> Reader<'_, 'a> {
    /// Follows UIDs into `$objects` until a non-UID value. `Ok(None)` means `$null` (UID 0).
    fn resolve(&self, v: Node<'a>) -> Result<Option<Node<'a>>, MbFileError> {
        let start = match v {
            Node::Uid(u) => u,
            other => return Ok(Some(other)),
        };
        let mut cur = v;
        for _ in 0..MAX_UID_DEPTH {
            match cur {
                Node::Uid(n) => {
                    // NSKeyedUnarchiver treats UID 0 as nil whatever $objects[0] holds.
                    if n == 0 {
                        return Ok(None);
                    }
                    let r = usize::try_from(n)
                        .ok()
                        .and_then(|i| self.objects.get(i))
                        .ok_or(MbFileError::DanglingUid(n))?;
                    cur = self.pl.node(r)?;
                }
                other => return Ok(Some(other)),
            }
        }
        Err(MbFileError::UidCycle(start))
    }

    /// The resolved value under `key` of dictionary `d`; `None` if absent or `$null`.
    fn lookup(&self, d: &Dict<'_>, key: &str) -> Result<Option<Node<'a>>, MbFileError> {
        match self.pl.dict_get(d, key)? {
            None => Ok(None),
            Some(r) => self.resolve(self.pl.node(r)?),
        }
    }

    fn data(&self, key: &'static str) -> Result<Option<Vec<u8>>, MbFileError> {
        let wrong = MbFileError::WrongType {
            field: key,
            expected: "data",
        };
        match self.lookup(&self.root, key)? {
            None => Ok(None),
            Some(Node::Data(d)) => Ok(Some(d.to_vec())),
            // NSData / NSMutableData archived as a dictionary.
            Some(Node::Dict(d)) => match self.lookup(&d, "NS.data")? {
                Some(Node::Data(d)) => Ok(Some(d.to_vec())),
                _ => Err(wrong),
            },
            Some(_) => Err(wrong),
        }
    }

    fn string(&self, key: &'static str) -> Result<Option<String>, MbFileError> {
        let wrong = || MbFileError::WrongType {
            field: key,
            expected: "string",
        };
        let v = match self.lookup(&self.root, key)? {
            None => return Ok(None),
            Some(Node::Dict(d)) => self.lookup(&d, "NS.string")?,
            Some(v) => Some(v),
        };
        match v {
            Some(Node::Str(s)) => Ok(Some(s)),
            // Some tools archive paths as NSData; accept it if it is UTF-8.
            Some(Node::Data(d)) => String::from_utf8(d.to_vec()).map(Some).map_err(|_| wrong()),
            _ => Err(wrong()),
        }
    }

    fn int(&self, key: &'static str) -> Result<Option<i128>, MbFileError> {
        match self.lookup(&self.root, key)? {
            None => Ok(None),
            Some(Node::Int(i)) => Ok(Some(i)),
            Some(_) => Err(MbFileError::WrongType {
                field: key,
                expected: "integer",
            }),
        }
    }

    /// A 32-bit field stored by `encodeInt32:`; negative values are the signed view.
    fn u32_bits(&self, key: &'static str) -> Result<u32, MbFileError> {
        let Some(v) = self.int(key)? else {
            return Ok(0);
        };
        if let Ok(u) = u32::try_from(v) {
            Ok(u)
        } else if let Ok(s) = i32::try_from(v) {
            Ok(s as u32)
        } else {
            Err(MbFileError::OutOfRange {
                field: key,
                value: v,
            })
        }
    }

    /// A 64-bit unsigned field stored by `encodeInt64:`; negative values are the signed view.
    fn u64_bits(&self, key: &'static str) -> Result<u64, MbFileError> {
        let Some(v) = self.int(key)? else {
            return Ok(0);
        };
        if let Ok(u) = u64::try_from(v) {
            Ok(u)
        } else if let Ok(s) = i64::try_from(v) {
            Ok(s as u64)
        } else {
            Err(MbFileError::OutOfRange {
                field: key,
                value: v,
            })
        }
    }

    /// A Unix-seconds timestamp.
    fn time(&self, key: &'static str) -> Result<i64, MbFileError> {
        let Some(v) = self.int(key)? else {
            return Ok(0);
        };
        i64::try_from(v).map_err(|_| MbFileError::OutOfRange {
            field: key,
            value: v,
        })
    }
}

/// Encodes an [`MbFile`] as the `NSKeyedArchiver` binary plist Apple stores in `Files.file`.
///
/// Layout: `$version` 100000, `$archiver` "NSKeyedArchiver", `$top` `{root: UID(1)}`, and
/// `$objects` in BackupAgent2's order with the MBFile dictionary at index 1. `Digest` and
/// `ExtendedAttributes` are written as raw data, `EncryptionKey` as an `NSMutableData`
/// dictionary, `Target` as a string. 32-bit fields are written as the signed 32-bit value
/// (as `encodeInt32:` does: uid 4294967294 becomes -2), `InodeNumber`/`Size` as signed 64-bit,
/// timestamps as given. An Apple-written record re-encodes to identical bytes.
pub fn encode(f: &MbFile) -> Vec<u8> {
    use Obj::{Data, Str, Uid};
    let int32 = |v: u32| Obj::Int(i64::from(v as i32), 32);
    let int64 = |v: i64| Obj::Int(v, 64);

    let mut objects = vec![Obj::Shared("$null".into()), Obj::Dict(Vec::new())];
    // Values keyed by MBFile key, in encodeWithCoder order (this order drives the hash
    // table layout, hence the written key order).
    let mut fields: Vec<(&'static str, Obj)> = Vec::new();
    // Appends to $objects and returns the UID pointing at the new entry.
    let push = |objects: &mut Vec<Obj>, o: Obj| -> Obj {
        objects.push(o);
        Uid(objects.len() as u64 - 1)
    };

    let rp = push(&mut objects, Str(f.relative_path.clone()));
    fields.push(("RelativePath", rp));
    if let Some(t) = &f.target {
        let u = push(&mut objects, Str(t.clone()));
        fields.push(("Target", u));
    }
    if let Some(d) = &f.digest {
        let u = push(&mut objects, Data(d.clone()));
        fields.push(("Digest", u));
    }
    if let Some(k) = &f.encryption_key {
        // The NSMutableData class dict goes right after the first object that needs it.
        let key_index = objects.len() as u64;
        let class = Uid(key_index + 1);
        let u = push(
            &mut objects,
            Obj::Dict(vec![("NS.data", Data(k.clone())), ("$class", class)]),
        );
        push(
            &mut objects,
            class_dict("NSMutableData", &["NSMutableData", "NSData", "NSObject"]),
        );
        fields.push(("EncryptionKey", u));
    }
    // Bit-pattern casts reproduce encodeInt32:/encodeInt64: of unsigned C fields.
    fields.push(("Mode", int32(f.mode)));
    fields.push(("InodeNumber", int64(f.inode as i64)));
    fields.push(("UserID", int32(f.uid)));
    fields.push(("GroupID", int32(f.gid)));
    // Timestamps are Int32 in Apple output; keep the full i64 rather than truncate.
    fields.push(("LastModified", Obj::Int(f.mtime, 32)));
    fields.push(("LastStatusChange", Obj::Int(f.ctime, 32)));
    fields.push(("Birth", Obj::Int(f.birth, 32)));
    fields.push(("Size", int64(f.size as i64)));
    fields.push(("ProtectionClass", int32(f.protection_class)));
    if let Some(x) = &f.extended_attributes {
        let u = push(&mut objects, Data(x.clone()));
        fields.push(("ExtendedAttributes", u));
    }
    fields.push(("Flags", int32(f.flags)));
    // The archiver sets $class after encodeWithCoder: returns; the class dict comes last.
    let class = push(&mut objects, class_dict("MBFile", &["MBFile", "NSObject"]));
    fields.push(("$class", class));

    objects[1] = Obj::Dict(ns_dictionary_order(fields));

    let root = Obj::Dict(vec![
        ("$version", Obj::Int(100_000, 32)),
        ("$archiver", Obj::Shared("NSKeyedArchiver".into())),
        ("$top", Obj::Dict(vec![("root", Uid(1))])),
        ("$objects", Obj::Array(objects)),
    ]);
    write_bplist(&root)
}

fn class_dict(name: &str, classes: &[&str]) -> Obj {
    // Apple shares short class names (tagged-pointer strings: "MBFile", "NSObject") between
    // `$classname` and `$classes` but writes "NSMutableData" twice; 9 characters is the
    // tagged-string limit for these names.
    let class_name = |c: &str| {
        if c.len() <= 9 {
            Obj::Shared(c.into())
        } else {
            Obj::Str(c.into())
        }
    };
    Obj::Dict(vec![
        ("$classname", class_name(name)),
        (
            "$classes",
            Obj::Array(classes.iter().map(|c| class_name(c)).collect()),
        ),
    ])
}

/// A plist object tree for the writer. Dictionary keys are always static ASCII here.
enum Obj {
    /// A string object of its own (written once per occurrence, like Apple's heap strings).
    Str(String),
    /// A string written once per distinct value (constants and tagged-pointer strings).
    Shared(String),
    /// A data object of its own.
    Data(Vec<u8>),
    /// An integer and the width it was encoded with (`encodeInt32:` = 32, `encodeInt64:` = 64).
    Int(i64, u8),
    Uid(u64),
    Array(Vec<Obj>),
    Dict(Vec<(&'static str, Obj)>),
}

/// `CFStringHash` for an ASCII string (CoreFoundation `__CFStrHashCharacters`, 64-bit).
fn cf_string_hash(s: &str) -> u64 {
    let b = s.as_bytes();
    let len = b.len() as u64;
    let mut r = len;
    let mut chunks = b.chunks_exact(4);
    for c in &mut chunks {
        r = r
            .wrapping_mul(67_503_105)
            .wrapping_add(u64::from(c[0]).wrapping_mul(16_974_593))
            .wrapping_add(u64::from(c[1]).wrapping_mul(66_049))
            .wrapping_add(u64::from(c[2]).wrapping_mul(257))
            .wrapping_add(u64::from(c[3]));
    }
    for &c in chunks.remainder() {
        r = r.wrapping_mul(257).wrapping_add(u64::from(c));
    }
    r.wrapping_add(r << (len & 31))
}

/// Reorders keys the way Apple's mutable dictionary enumerates them, so the archive comes out
/// byte-identical: linear probing on `CFStringHash % buckets`, starting at 13 buckets and
/// rehashing (in old-bucket order) into 23 buckets once the 12th key has been inserted.
/// Inferred from, and verified against, all seven key sets in the MVT fixture; an MBFile has
/// 12–16 keys, which this covers. Any order is valid plist, this only matters for byte-identity.
fn ns_dictionary_order(entries: Vec<(&'static str, Obj)>) -> Vec<(&'static str, Obj)> {
    fn insert(table: &mut [Option<usize>], hashes: &[u64], idx: usize) {
        let n = table.len();
        let mut p = (hashes[idx] % n as u64) as usize;
        // The table is always larger than the number of keys, so a free slot exists.
        while table[p].is_some() {
            p = (p + 1) % n;
        }
        table[p] = Some(idx);
    }
    if entries.len() > 19 {
        return entries; // beyond the 23-bucket capacity; never happens for MBFile
    }
    let hashes: Vec<u64> = entries.iter().map(|(k, _)| cf_string_hash(k)).collect();
    let mut table: Vec<Option<usize>> = vec![None; 13];
    for i in 0..entries.len() {
        insert(&mut table, &hashes, i);
        if i + 1 == 12 {
            let old = std::mem::replace(&mut table, vec![None; 23]);
            for j in old.into_iter().flatten() {
                insert(&mut table, &hashes, j);
            }
        }
    }
    let mut slots: Vec<Option<(&'static str, Obj)>> = entries.into_iter().map(Some).collect();
    table
        .into_iter()
        .flatten()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect()
}

/// Identity of a value Apple's writer emits once however often it is referenced. The fixture
/// shows identity, not equality, decides: an object is shared when Foundation hands out the same
/// pointer, i.e. constant strings (keys), tagged-pointer strings and tagged NSNumbers of the same
/// type. So `Flags` (Int32) 0 and `Size` (Int64) 0 are two objects while Int32 `UserID` and
/// `GroupID` 501 are one, and a 13-character "NSMutableData" appears twice.
#[derive(PartialEq, Eq)]
enum UniqueKey<'a> {
    Str(&'a str),
    Int(i64, u8),
}

/// One object in the flattened table; containers hold the object numbers of their children.
enum Flat<'a> {
    Str(&'a str),
    Data(&'a [u8]),
    Int(i64),
    Uid(u64),
    Array(Vec<usize>),
    Dict(Vec<usize>, Vec<usize>),
}

/// Object table under construction (`_flattenPlist` in CFBinaryPList.c).
#[derive(Default)]
struct Table<'a> {
    list: Vec<Flat<'a>>,
    /// Uniqued objects so far. An archive has a dozen or two, so a linear scan beats
    /// hashing (SipHash showed as 9 % of writing a 10,000-row Manifest.db).
    uniq: Vec<(UniqueKey<'a>, usize)>,
}

impl<'a> Table<'a> {
    fn unique(&mut self, key: UniqueKey<'a>, item: Flat<'a>) -> usize {
        if let Some(&(_, n)) = self.uniq.iter().find(|(k, _)| *k == key) {
            return n;
        }
        self.list.push(item);
        self.uniq.push((key, self.list.len() - 1));
        self.list.len() - 1
    }

    fn string(&mut self, s: &'a str) -> usize {
        self.unique(UniqueKey::Str(s), Flat::Str(s))
    }

    /// Adds `o` and (recursively) its children; returns its object number.
    fn add(&mut self, o: &'a Obj) -> usize {
        match o {
            Obj::Shared(s) => self.string(s),
            Obj::Str(s) => {
                self.list.push(Flat::Str(s));
                self.list.len() - 1
            }
            Obj::Data(d) => {
                self.list.push(Flat::Data(d));
                self.list.len() - 1
            }
            Obj::Int(i, w) => self.unique(UniqueKey::Int(*i, *w), Flat::Int(*i)),
            Obj::Uid(u) => {
                self.list.push(Flat::Uid(*u));
                self.list.len() - 1
            }
            Obj::Array(items) => {
                let me = self.list.len();
                self.list.push(Flat::Array(Vec::new()));
                let refs: Vec<usize> = items.iter().map(|i| self.add(i)).collect();
                self.list[me] = Flat::Array(refs);
                me
            }
            Obj::Dict(entries) => {
                let me = self.list.len();
                self.list.push(Flat::Dict(Vec::new(), Vec::new()));
                let keys: Vec<usize> = entries.iter().map(|(k, _)| self.string(k)).collect();
                let vals: Vec<usize> = entries.iter().map(|(_, v)| self.add(v)).collect();
                self.list[me] = Flat::Dict(keys, vals);
                me
            }
        }
    }
}

/// Serialises `root` as `bplist00` the way `CFBinaryPlistWrite` does: objects numbered in
/// depth-first pre-order (a dictionary, then its keys, then its values), shared values (see
/// [`UniqueKey`]) written once, minimal integer widths, 1/2/4/8-byte refs and offsets.
fn write_bplist(root: &Obj) -> Vec<u8> {
    let mut table = Table::default();
    table.add(root);

    let count = table.list.len();
    let ref_size = byte_count(count as u64);
    let mut out = b"bplist00".to_vec();
    let mut offsets = Vec::with_capacity(count);
    for item in &table.list {
        offsets.push(out.len() as u64);
        match item {
            Flat::Str(s) => write_string(&mut out, s),
            Flat::Data(d) => {
                write_marker(&mut out, 0x40, d.len());
                out.extend_from_slice(d);
            }
            Flat::Int(i) => write_int(&mut out, *i),
            Flat::Uid(u) => {
                let n = byte_count(*u);
                out.push(0x80 | (n - 1));
                write_sized(&mut out, *u, n);
            }
            Flat::Array(refs) => {
                write_marker(&mut out, 0xA0, refs.len());
                for &r in refs {
                    write_sized(&mut out, r as u64, ref_size);
                }
            }
            Flat::Dict(keys, vals) => {
                write_marker(&mut out, 0xD0, keys.len());
                for &r in keys.iter().chain(vals) {
                    write_sized(&mut out, r as u64, ref_size);
                }
            }
        }
    }
    let table_offset = out.len() as u64;
    let offset_size = byte_count(table_offset);
    for o in offsets {
        write_sized(&mut out, o, offset_size);
    }
    // Trailer: 5 unused bytes, sort version, offset size, ref size, count, top, table offset.
    out.extend_from_slice(&[0; 6]);
    out.push(offset_size);
    out.push(ref_size);
    out.extend_from_slice(&(count as u64).to_be_bytes());
    out.extend_from_slice(&0u64.to_be_bytes());
    out.extend_from_slice(&table_offset.to_be_bytes());
    out
}

/// Bytes needed for an unsigned value: 1, 2, 4 or 8 (`_byteCount` in CFBinaryPList.c).
fn byte_count(v: u64) -> u8 {
    if v <= 0xFF {
        1
    } else if v <= 0xFFFF {
        2
    } else if v <= 0xFFFF_FFFF {
        4
    } else {
        8
    }
}

fn write_sized(out: &mut Vec<u8>, v: u64, n: u8) {
    let bytes = v.to_be_bytes();
    out.extend_from_slice(&bytes[8 - usize::from(n)..]);
}

fn write_int(out: &mut Vec<u8>, v: i64) {
    // Negative values always take 8 bytes, as in CoreFoundation.
    let u = v as u64;
    let n = if v < 0 { 8 } else { byte_count(u) };
    out.push(0x10 | n.trailing_zeros() as u8);
    write_sized(out, u, n);
}

/// Type marker with inline length, or `0xF` plus an integer object for lengths ≥ 15.
fn write_marker(out: &mut Vec<u8>, marker: u8, len: usize) {
    if len < 15 {
        out.push(marker | len as u8);
    } else {
        out.push(marker | 0x0F);
        write_int(out, len as i64);
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    if s.is_ascii() {
        write_marker(out, 0x50, s.len());
        out.extend_from_slice(s.as_bytes());
    } else {
        let units: Vec<u16> = s.encode_utf16().collect();
        write_marker(out, 0x60, units.len());
        for u in units {
            out.extend_from_slice(&u.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plist::{Uid, Value};

    fn uid(n: u64) -> Value {
        Value::Uid(Uid::new(n))
    }

    fn dict(entries: Vec<(&str, Value)>) -> Value {
        Value::Dictionary(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// A keyed archive with the given `$objects` and `$top.root`.
    fn archive(objects: Vec<Value>, root: Value) -> Vec<u8> {
        let top = dict(vec![
            ("$version", Value::Integer(100_000.into())),
            ("$archiver", Value::String("NSKeyedArchiver".into())),
            ("$top", dict(vec![("root", root)])),
            ("$objects", Value::Array(objects)),
        ]);
        let mut out = Vec::new();
        top.to_writer_binary(&mut out).unwrap();
        out
    }

    /// `$objects` for an MBFile dict with the given extra entries (RelativePath at UID 2).
    fn mbfile_objects(extra: Vec<(&str, Value)>) -> Vec<Value> {
        let mut entries = vec![
            ("RelativePath", uid(2)),
            ("Mode", Value::Integer(0o100644.into())),
        ];
        entries.extend(extra);
        vec![
            Value::String("$null".into()),
            dict(entries),
            Value::String("Library/a.db".into()),
        ]
    }

    fn regular_file() -> MbFile {
        MbFile {
            relative_path: "Library/SMS/sms.db".into(),
            target: None,
            digest: Some((0u8..20).collect()),
            encryption_key: Some([3u8, 0, 0, 0].iter().copied().chain(1..=40).collect()),
            extended_attributes: Some(b"bplist00\xd0\x08\x00\x00\x00\x00\x00\x00\x01\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x09".to_vec()),
            mode: 0o100644,
            inode: 123_456_789,
            uid: 501,
            gid: 501,
            mtime: 1_610_674_727,
            ctime: 1_610_674_728,
            birth: 1_600_000_000,
            size: 4_194_304,
            protection_class: 3,
            flags: 0,
        }
    }

    #[test]
    fn round_trip_regular_file_with_all_objects() {
        let f = regular_file();
        assert_eq!(decode(&encode(&f)).unwrap(), f);
    }

    #[test]
    fn round_trip_directory_and_symlink() {
        let dir = MbFile {
            relative_path: String::new(),
            mode: 0o40755,
            inode: 7,
            uid: 4_294_967_294, // nobody, archived as -2
            gid: 4_294_967_294,
            protection_class: 4,
            flags: 128, // UF_DATAVAULT
            extended_attributes: Some(vec![1, 2, 3]),
            ..MbFile::default()
        };
        assert_eq!(decode(&encode(&dir)).unwrap(), dir);

        let link = MbFile {
            relative_path: "Library/Caches/link".into(),
            target: Some("/var/mobile/Containers/Data/Application/X/Ünïcode".into()),
            mode: 0o120755,
            ..MbFile::default()
        };
        assert_eq!(decode(&encode(&link)).unwrap(), link);
    }

    #[test]
    fn round_trip_extreme_values() {
        let f = MbFile {
            relative_path: "x".repeat(300),
            mode: u32::MAX,
            inode: u64::MAX,
            uid: u32::MAX,
            gid: 0x8000_0000,
            mtime: i64::MIN,
            ctime: -1,
            birth: i64::MAX,
            size: u64::MAX,
            protection_class: u32::MAX,
            flags: u32::MAX,
            digest: Some(Vec::new()),
            ..MbFile::default()
        };
        assert_eq!(decode(&encode(&f)).unwrap(), f);
    }

    #[test]
    fn encode_layout_matches_apple_and_python_readers() {
        let mut f = regular_file();
        f.target = Some("/t".into());
        f.uid = 4_294_967_294;
        let v: Value = plist::from_bytes(&encode(&f)).unwrap();
        let top = v.as_dictionary().unwrap();
        assert_eq!(top["$version"].as_signed_integer(), Some(100_000));
        assert_eq!(top["$archiver"].as_string(), Some("NSKeyedArchiver"));
        assert_eq!(top["$top"].as_dictionary().unwrap()["root"], uid(1));
        let objects = top["$objects"].as_array().unwrap();
        assert_eq!(objects.len(), 9);
        assert_eq!(objects[0].as_string(), Some("$null"));
        let file = objects[1].as_dictionary().unwrap();
        // $null, MBFile, RelativePath, Target, Digest, EncryptionKey, its class, xattrs, class.
        assert_eq!(file["RelativePath"], uid(2));
        assert_eq!(objects[2].as_string(), Some("Library/SMS/sms.db"));
        assert_eq!(file["Target"], uid(3));
        assert_eq!(file["Digest"], uid(4));
        assert_eq!(objects[4].as_data(), f.digest.as_deref());
        // The access path mvt / iphone_backup_decrypt use: objects[EncryptionKey]["NS.data"].
        assert_eq!(file["EncryptionKey"], uid(5));
        let key = objects[5].as_dictionary().unwrap();
        assert_eq!(key["NS.data"].as_data(), f.encryption_key.as_deref());
        assert_eq!(key["$class"], uid(6));
        let data_class = objects[6].as_dictionary().unwrap();
        assert_eq!(data_class["$classname"].as_string(), Some("NSMutableData"));
        assert_eq!(data_class["$classes"].as_array().unwrap().len(), 3);
        assert_eq!(file["ExtendedAttributes"], uid(7));
        assert_eq!(file["$class"], uid(8));
        let class = objects[8].as_dictionary().unwrap();
        assert_eq!(class["$classname"].as_string(), Some("MBFile"));
        // Scalars are inline integers; 32-bit fields are the signed 32-bit view.
        assert_eq!(file["UserID"].as_signed_integer(), Some(-2));
        assert_eq!(file["Size"].as_signed_integer(), Some(4_194_304));
        assert_eq!(file["ProtectionClass"].as_signed_integer(), Some(3));
        assert_eq!(file.len(), 16);
    }

    #[test]
    fn key_order_matches_apple_hash_order() {
        // Observed in the MVT fixture for a file with Digest, EncryptionKey and xattrs.
        let keys = [
            "RelativePath",
            "Digest",
            "EncryptionKey",
            "Mode",
            "InodeNumber",
            "UserID",
            "GroupID",
            "LastModified",
            "LastStatusChange",
            "Birth",
            "Size",
            "ProtectionClass",
            "ExtendedAttributes",
            "Flags",
            "$class",
        ];
        let entries = keys.iter().map(|k| (*k, Obj::Int(0, 32))).collect();
        let order: Vec<&str> = ns_dictionary_order(entries)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            order,
            [
                "LastModified",
                "ProtectionClass",
                "Flags",
                "GroupID",
                "ExtendedAttributes",
                "$class",
                "LastStatusChange",
                "RelativePath",
                "Birth",
                "EncryptionKey",
                "Size",
                "Mode",
                "UserID",
                "Digest",
                "InodeNumber",
            ]
        );
    }

    #[test]
    fn accepts_inline_and_wrapped_forms() {
        let ns_data_class = dict(vec![("$classname", Value::String("NSData".into()))]);
        let objects = vec![
            Value::String("$null".into()),
            Value::String("unused".into()),
            dict(vec![
                // NSString dictionary behind a UID.
                ("RelativePath", uid(3)),
                // Inline data instead of a UID.
                ("Digest", Value::Data(vec![9; 20])),
                // UID -> NSData dict whose NS.data is itself a UID.
                ("EncryptionKey", uid(4)),
                // Inline NSData dictionary.
                (
                    "ExtendedAttributes",
                    dict(vec![("NS.data", Value::Data(vec![1]))]),
                ),
                // Target as UTF-8 data.
                ("Target", Value::Data(b"/var/x".to_vec())),
                ("GroupID", Value::Integer((-2).into())),
                ("Size", Value::Integer(5u64.into())),
            ]),
            dict(vec![("NS.string", Value::String("Media/a.jpg".into()))]),
            dict(vec![("NS.data", uid(5)), ("$class", uid(6))]),
            Value::Data(vec![7; 44]),
            ns_data_class,
        ];
        // Root at index 2, found through $top.root.
        let f = decode(&archive(objects, uid(2))).unwrap();
        assert_eq!(f.relative_path, "Media/a.jpg");
        assert_eq!(f.digest, Some(vec![9; 20]));
        assert_eq!(f.encryption_key, Some(vec![7; 44]));
        assert_eq!(f.extended_attributes, Some(vec![1]));
        assert_eq!(f.target.as_deref(), Some("/var/x"));
        assert_eq!(f.gid, 4_294_967_294);
        assert_eq!(f.size, 5);
        // Absent integers default to 0, as with decodeInt32ForKey:.
        assert_eq!((f.uid, f.mode, f.inode, f.mtime, f.flags), (0, 0, 0, 0, 0));
    }

    #[test]
    fn uid_zero_means_absent() {
        let objects = mbfile_objects(vec![("Digest", uid(0)), ("Target", uid(0))]);
        let f = decode(&archive(objects, uid(1))).unwrap();
        assert_eq!((f.digest, f.target), (None, None));

        let mut objects = mbfile_objects(vec![]);
        objects[1] = dict(vec![("RelativePath", uid(0))]);
        assert!(matches!(
            decode(&archive(objects, uid(1))),
            Err(MbFileError::MissingField("RelativePath"))
        ));
    }

    #[test]
    fn rejects_non_plists() {
        for bad in [&b""[..], b"hello", b"bplist00", &[0xFF; 64]] {
            assert!(
                matches!(decode(bad), Err(MbFileError::NotPlist(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_missing_envelope() {
        let mut out = Vec::new();
        Value::Array(vec![]).to_writer_binary(&mut out).unwrap();
        assert!(matches!(decode(&out), Err(MbFileError::NotKeyedArchive(_))));

        let mut out = Vec::new();
        dict(vec![("$top", dict(vec![("root", uid(1))]))])
            .to_writer_binary(&mut out)
            .unwrap();
        assert!(matches!(decode(&out), Err(MbFileError::NotKeyedArchive(_))));

        let mut out = Vec::new();
        dict(vec![("$objects", Value::Array(mbfile_objects(vec![])))])
            .to_writer_binary(&mut out)
            .unwrap();
        assert!(matches!(decode(&out), Err(MbFileError::NotKeyedArchive(_))));

        // Root pointing at a string rather than a dictionary.
        let blob = archive(mbfile_objects(vec![]), uid(2));
        assert!(matches!(
            decode(&blob),
            Err(MbFileError::NotKeyedArchive(_))
        ));
    }

    #[test]
    fn rejects_dangling_uids() {
        assert!(matches!(
            decode(&archive(mbfile_objects(vec![]), uid(50))),
            Err(MbFileError::DanglingUid(50))
        ));
        let objects = mbfile_objects(vec![("Digest", uid(99))]);
        assert!(matches!(
            decode(&archive(objects, uid(1))),
            Err(MbFileError::DanglingUid(99))
        ));
        let objects = mbfile_objects(vec![("Digest", uid(u64::MAX))]);
        assert!(matches!(
            decode(&archive(objects, uid(1))),
            Err(MbFileError::DanglingUid(u64::MAX))
        ));
    }

    #[test]
    fn rejects_uid_cycles() {
        // $objects[3] = UID(3): a self-reference.
        let mut objects = mbfile_objects(vec![("Target", uid(3))]);
        objects.push(uid(3));
        assert!(matches!(
            decode(&archive(objects, uid(1))),
            Err(MbFileError::UidCycle(3))
        ));
        // Two-element cycle, and a root that refers to itself.
        let mut objects = mbfile_objects(vec![("Digest", uid(3))]);
        objects.push(uid(4));
        objects.push(uid(3));
        assert!(matches!(
            decode(&archive(objects, uid(1))),
            Err(MbFileError::UidCycle(3))
        ));
        let mut objects = mbfile_objects(vec![]);
        objects[1] = uid(1);
        assert!(matches!(
            decode(&archive(objects, uid(1))),
            Err(MbFileError::UidCycle(1))
        ));
        // An NSData dict whose NS.data points back at the dict.
        let mut objects = mbfile_objects(vec![("EncryptionKey", uid(3))]);
        objects.push(dict(vec![("NS.data", uid(3))]));
        assert!(matches!(
            decode(&archive(objects, uid(1))),
            Err(MbFileError::WrongType {
                field: "EncryptionKey",
                ..
            })
        ));
    }

    #[test]
    fn rejects_missing_relative_path() {
        let objects = vec![
            Value::String("$null".into()),
            dict(vec![("Mode", Value::Integer(0o40755.into()))]),
        ];
        assert!(matches!(
            decode(&archive(objects, uid(1))),
            Err(MbFileError::MissingField("RelativePath"))
        ));
    }

    #[test]
    fn rejects_wrong_types() {
        let cases: Vec<(Vec<(&str, Value)>, &str)> = vec![
            (vec![("Mode", Value::String("644".into()))], "Mode"),
            (vec![("Size", Value::Real(1.0))], "Size"),
            (vec![("Digest", Value::String("abc".into()))], "Digest"),
            (vec![("EncryptionKey", dict(vec![]))], "EncryptionKey"),
            (vec![("Target", Value::Integer(1.into()))], "Target"),
            (vec![("Target", Value::Data(vec![0xFF, 0xFE]))], "Target"),
            (
                vec![("ExtendedAttributes", Value::Boolean(true))],
                "ExtendedAttributes",
            ),
        ];
        for (extra, field) in cases {
            let got = decode(&archive(mbfile_objects(extra), uid(1)));
            assert!(
                matches!(got, Err(MbFileError::WrongType { field: f, .. }) if f == field),
                "{field}: {got:?}"
            );
        }
        let mut objects = mbfile_objects(vec![]);
        objects[2] = Value::Integer(5.into());
        assert!(matches!(
            decode(&archive(objects, uid(1))),
            Err(MbFileError::WrongType {
                field: "RelativePath",
                ..
            })
        ));
    }

    #[test]
    fn rejects_out_of_range_integers() {
        let cases: Vec<(&str, Value)> = vec![
            ("Mode", Value::Integer((1i64 << 32).into())),
            ("UserID", Value::Integer((i64::from(i32::MIN) - 1).into())),
            ("LastModified", Value::Integer(u64::MAX.into())),
        ];
        for (field, v) in cases {
            let got = decode(&archive(mbfile_objects(vec![(field, v)]), uid(1)));
            assert!(
                matches!(got, Err(MbFileError::OutOfRange { field: f, .. }) if f == field),
                "{field}: {got:?}"
            );
        }
        // The signed views of 32/64-bit fields are accepted.
        let objects = mbfile_objects(vec![
            ("Flags", Value::Integer((-1).into())),
            ("InodeNumber", Value::Integer((-1).into())),
        ]);
        let f = decode(&archive(objects, uid(1))).unwrap();
        assert_eq!((f.flags, f.inode), (u32::MAX, u64::MAX));
    }

    /// A bplist from raw object encodings (1-byte refs and offsets), top object 0.
    fn raw_bplist(objects: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"bplist00".to_vec();
        let mut offsets = Vec::new();
        for o in objects {
            offsets.push(u8::try_from(out.len()).unwrap());
            out.extend_from_slice(o);
        }
        let table = out.len() as u64;
        out.extend_from_slice(&offsets);
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 1]);
        out.extend_from_slice(&(objects.len() as u64).to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes());
        out.extend_from_slice(&table.to_be_bytes());
        out
    }

    fn ascii(s: &str) -> Vec<u8> {
        let mut v = vec![0x50 | s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn shared_reference_bomb_is_not_expanded() {
        // $objects[2] is 40 levels of [x, x]: 2^40 leaves if expanded into a tree.
        let mut objs = vec![
            vec![0xD2, 1, 2, 3, 4],            // 0: {"$objects": 3, "$top": 4}
            ascii("$objects"),                 // 1
            ascii("$top"),                     // 2
            vec![0xA3, 5, 6, 14],              // 3: ["$null", MBFile, bomb]
            vec![0xD1, 7, 8],                  // 4: {"root": UID(1)}
            ascii("$null"),                    // 5
            vec![0xD3, 9, 10, 11, 13, 12, 12], // 6: MBFile {RelativePath, Extra, Digest}
            ascii("root"),                     // 7
            vec![0x80, 1],                     // 8: UID(1)
            ascii("RelativePath"),             // 9
            ascii("Extra"),                    // 10
            ascii("Digest"),                   // 11
            vec![0x80, 2],                     // 12: UID(2) -> the bomb
            ascii("a"),                        // 13
        ];
        for i in 0..40u8 {
            objs.push(vec![0xA2, 15 + i, 15 + i]);
        }
        objs.push(ascii("leaf"));
        // Extra -> bomb is ignored; Digest -> bomb is a type error; both answer at once.
        let blob = raw_bplist(&objs);
        let start = std::time::Instant::now();
        assert!(matches!(
            decode(&blob),
            Err(MbFileError::WrongType {
                field: "Digest",
                ..
            })
        ));
        objs[6] = vec![0xD2, 9, 10, 13, 12];
        assert_eq!(decode(&raw_bplist(&objs)).unwrap().relative_path, "a");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn malformed_binary_plists_are_errors() {
        let good = encode(&regular_file());
        let n = good.len();
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for (at, val) in [
            (n - 26, 0u8),  // offset size 0
            (n - 26, 9),    // offset size 9
            (n - 25, 0),    // ref size 0
            (n - 17, 0xFF), // object count huge
            (n - 9, 0xFF),  // top object out of range
            (n - 1, 0xFF),  // offset table offset past the end
            (n - 8, 0x01),  // offset table offset huge
        ] {
            let mut b = good.clone();
            b[at] = val;
            cases.push(b);
        }
        cases.push(good[..n - 1].to_vec());
        cases.push(b"bplist00".iter().copied().chain([0; 32]).collect());
        for (i, c) in cases.iter().enumerate() {
            assert!(
                matches!(decode(c), Err(MbFileError::NotPlist(_))),
                "case {i}"
            );
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        // xorshift64: deterministic, no dependency.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let good = encode(&regular_file());
        let mut errors = 0;
        for round in 0..20_000 {
            let mut b = if round % 2 == 0 {
                good.clone()
            } else {
                let len = 8 + (next() % 200) as usize;
                let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                v[..8].copy_from_slice(b"bplist00");
                v
            };
            for _ in 0..1 + next() % 4 {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
            if decode(&b).is_err() {
                errors += 1;
            }
        }
        assert!(errors > 10_000);
    }

    #[test]
    fn error_messages_are_descriptive() {
        assert_eq!(
            MbFileError::DanglingUid(7).to_string(),
            "dangling UID 7 (no such entry in $objects)"
        );
        assert_eq!(
            MbFileError::MissingField("RelativePath").to_string(),
            "MBFile field RelativePath is missing"
        );
    }
}
