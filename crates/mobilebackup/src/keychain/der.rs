//! Apple's "DER plist" codec (Security's `der_plist.c`, `der_dictionary.c`, `der_date.c`),
//! the plaintext of version-3 keychain items (spec §8.4).
//!
//! | plist type | DER |
//! |---|---|
//! | dictionary | SET `0x31` of SEQUENCE `0x30` { key, value }, sorted by the encoded bytes of each SEQUENCE (memcmp, the shorter first on a tie) |
//! | string | UTF8String `0x0C` |
//! | data | OCTET STRING `0x04` |
//! | number | INTEGER `0x02`, minimal two's complement, at most 8 bytes |
//! | boolean | BOOLEAN `0x01` (Apple writes `01` for true) |
//! | array | SEQUENCE `0x30` |
//! | null | NULL `0x05` |
//! | date | GeneralizedTime `0x18`, `YYYYMMDDHHMMSS[.f]Z`, fraction without trailing zeros |
//!
//! [`encode`] writes exactly this canonical form, so `encode(decode(x)) == x` for every blob
//! Apple (or this encoder) produced. [`decode`] is strict where a difference would change the
//! meaning (bad or indefinite lengths, trailing bytes, duplicate keys, invalid UTF-8, invalid
//! dates, integers over 64 bits, nesting deeper than [`MAX_DEPTH`]: errors) and lenient where
//! it would only change the bytes: a dictionary out of order, a non-minimal length or integer,
//! a boolean `true` other than `01`, a UTCTime (`0x17`) or NumericString (`0x12`) date, or a
//! fraction with trailing zeros decode with a **warning** saying that re-encoding will not
//! reproduce the input. Dictionary keys must be strings (they always are in keychain items).
//!
//! Byte strings are held in [`Zeroizing`] buffers (an item's secret `v_Data` is one), and
//! `Debug` prints only their length. An item's attributes print through
//! [`RedactedAttributes`], which also hides a `v_Data` stored as a string.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

/// Deepest nesting [`decode`] accepts (keychain items use 1–2 levels).
pub const MAX_DEPTH: usize = 32;

const TAG_BOOLEAN: u8 = 0x01;
const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_NULL: u8 = 0x05;
const TAG_UTF8_STRING: u8 = 0x0C;
const TAG_NUMERIC_STRING: u8 = 0x12;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;

/// A decoded DER plist value.
#[derive(Clone, PartialEq, Eq)]
pub enum DerValue {
    /// NULL.
    Null,
    /// BOOLEAN.
    Bool(bool),
    /// INTEGER (Apple's numbers are 64-bit).
    Integer(i64),
    /// UTF8String.
    String(String),
    /// OCTET STRING; wiped on drop.
    Data(Zeroizing<Vec<u8>>),
    /// GeneralizedTime.
    Date(DerDate),
    /// SEQUENCE.
    Array(Vec<DerValue>),
    /// SET of key/value SEQUENCEs.
    Dict(BTreeMap<String, DerValue>),
}

impl fmt::Debug for DerValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("Null"),
            Self::Bool(b) => write!(f, "Bool({b})"),
            Self::Integer(i) => write!(f, "Integer({i})"),
            Self::String(s) => write!(f, "String({s:?})"),
            Self::Data(d) => write!(f, "Data({} bytes)", d.len()),
            Self::Date(d) => write!(f, "Date({d})"),
            Self::Array(a) => f.debug_tuple("Array").field(a).finish(),
            Self::Dict(d) => f.debug_tuple("Dict").field(d).finish(),
        }
    }
}

/// The name of a keychain item's secret attribute.
pub const SECRET_ATTRIBUTE: &str = "v_Data";

/// A keychain item's attributes for `Debug`: every value as [`DerValue`] shows it (data as
/// its length), except the secret [`SECRET_ATTRIBUTE`], hidden whatever its type (a hostile
/// or odd item may hold it as a string).
pub struct RedactedAttributes<'a>(pub &'a BTreeMap<String, DerValue>);

impl fmt::Debug for RedactedAttributes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in self.0 {
            if k == SECRET_ATTRIBUTE {
                map.entry(k, &format_args!("(redacted)"));
            } else {
                map.entry(k, v);
            }
        }
        map.finish()
    }
}

impl DerValue {
    /// A data value.
    pub fn data(bytes: impl Into<Vec<u8>>) -> Self {
        Self::Data(Zeroizing::new(bytes.into()))
    }

    /// A string value.
    pub fn string(s: impl Into<String>) -> Self {
        Self::String(s.into())
    }

    /// The text of a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes of a data value.
    pub fn as_data(&self) -> Option<&[u8]> {
        match self {
            Self::Data(d) => Some(d),
            _ => None,
        }
    }

    /// An integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// A date.
    pub fn as_date(&self) -> Option<DerDate> {
        match self {
            Self::Date(d) => Some(*d),
            _ => None,
        }
    }

    /// A dictionary.
    pub fn as_dict(&self) -> Option<&BTreeMap<String, DerValue>> {
        match self {
            Self::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The DER type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "boolean",
            Self::Integer(_) => "integer",
            Self::String(_) => "string",
            Self::Data(_) => "data",
            Self::Date(_) => "date",
            Self::Array(_) => "array",
            Self::Dict(_) => "dictionary",
        }
    }
}

// ------------------------------------------------------------------ dates

/// A point in time with nanosecond precision, years 0000–9999 (what GeneralizedTime holds).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DerDate {
    secs: i64,
    nanos: u32,
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z as Unix seconds.
const MIN_SECS: i64 = -62_167_219_200;
const MAX_SECS: i64 = 253_402_300_799;

impl DerDate {
    /// A date from Unix seconds and nanoseconds; `None` outside years 0000–9999 or for
    /// `nanos` ≥ 10⁹.
    pub fn new(unix_seconds: i64, nanos: u32) -> Option<Self> {
        ((MIN_SECS..=MAX_SECS).contains(&unix_seconds) && nanos < 1_000_000_000).then_some(Self {
            secs: unix_seconds,
            nanos,
        })
    }

    /// Seconds since 1970-01-01T00:00:00Z.
    pub fn unix_seconds(&self) -> i64 {
        self.secs
    }

    /// The fraction of a second, in nanoseconds.
    pub fn nanos(&self) -> u32 {
        self.nanos
    }

    fn parts(&self) -> (i64, u32, u32, i64, i64, i64) {
        let days = self.secs.div_euclid(86_400);
        let rem = self.secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
    }

    fn fraction(&self) -> String {
        if self.nanos == 0 {
            return String::new();
        }
        let digits = format!("{:09}", self.nanos);
        format!(".{}", digits.trim_end_matches('0'))
    }

    /// GeneralizedTime text: `YYYYMMDDHHMMSS[.f]Z`.
    pub fn to_generalized_time(&self) -> String {
        let (y, mo, d, h, mi, s) = self.parts();
        format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}{}Z", self.fraction())
    }

    /// ISO 8601: `YYYY-MM-DDTHH:MM:SS[.f]Z`.
    pub fn to_iso8601(&self) -> String {
        let (y, mo, d, h, mi, s) = self.parts();
        format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}Z",
            self.fraction()
        )
    }

    /// Parses GeneralizedTime text (`YYYYMMDDHHMMSS[.f]Z`), strictly: no time zone offsets,
    /// at most 9 fraction digits, no trailing zeros in the fraction.
    pub fn parse_generalized(text: &str) -> Result<Self, String> {
        let mut w = Vec::new();
        let d = parse_time(text.as_bytes(), 4, true, &mut w)?;
        match w.first() {
            Some(m) => Err(m.clone()),
            None => Ok(d),
        }
    }
}

impl fmt::Display for DerDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_iso8601())
    }
}

/// Howard Hinnant's `days_from_civil`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses `Y{year_digits}MMDDHHMM[SS][.f][Z]`. GeneralizedTime (`year_digits` 4) needs the
/// seconds; UTCTime (2) may omit them. Non-canonical details become warnings.
fn parse_time(
    t: &[u8],
    year_digits: usize,
    need_z: bool,
    warnings: &mut Vec<String>,
) -> Result<DerDate, String> {
    let shown = String::from_utf8_lossy(t).escape_debug().to_string();
    let bad = |why: &str| format!("invalid date {shown:?}: {why}");
    let digits = |from: usize, n: usize| -> Result<i64, String> {
        let s = t.get(from..from + n).ok_or_else(|| bad("too short"))?;
        if !s.iter().all(u8::is_ascii_digit) {
            return Err(bad("expected digits"));
        }
        Ok(s.iter().fold(0i64, |a, &c| a * 10 + (c - b'0') as i64))
    };
    let mut p = 0;
    let mut year = digits(p, year_digits)?;
    p += year_digits;
    if year_digits == 2 {
        year += if year >= 50 { 1900 } else { 2000 };
    }
    let month = digits(p, 2)? as u32;
    let day = digits(p + 2, 2)? as u32;
    let hour = digits(p + 4, 2)?;
    let minute = digits(p + 6, 2)?;
    p += 8;
    let second = if t.get(p).is_some_and(u8::is_ascii_digit) {
        p += 2;
        digits(p - 2, 2)?
    } else if year_digits == 2 {
        0
    } else {
        return Err(bad("no seconds"));
    };
    let mut nanos = 0u32;
    if matches!(t.get(p), Some(b'.') | Some(b',')) {
        p += 1;
        let start = p;
        while t.get(p).is_some_and(u8::is_ascii_digit) {
            p += 1;
        }
        let frac = &t[start..p];
        if frac.is_empty() {
            return Err(bad("empty fraction"));
        }
        if frac.len() > 9 {
            warnings.push(format!(
                "date {shown:?} has more than 9 fraction digits; kept to the nanosecond"
            ));
        }
        if frac.last() == Some(&b'0') || t[start - 1] == b',' {
            warnings.push(format!(
                "date {shown:?} is not canonical (fraction); re-encoding changes its bytes"
            ));
        }
        for i in 0..9 {
            nanos = nanos * 10 + frac.get(i).map_or(0, |c| (c - b'0') as u32);
        }
    }
    match t.get(p) {
        Some(b'Z') => p += 1,
        None if !need_z => {}
        _ => return Err(bad("expected 'Z' (UTC) after the time")),
    }
    if p != t.len() {
        return Err(bad("trailing characters"));
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such day"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad("no such time of day"));
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    DerDate::new(secs, nanos).ok_or_else(|| bad("out of range"))
}

// ------------------------------------------------------------------ decoding

/// Why a DER plist does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DER at byte {offset}: {message}")]
pub struct DerError {
    /// Where the offending element starts.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

struct Decoder<'a> {
    buf: &'a [u8],
    warnings: Vec<String>,
}

/// Decodes one DER plist value that spans all of `bytes`; returns it with the warnings
/// (see the module documentation for what is an error and what a warning).
pub fn decode(bytes: &[u8]) -> Result<(DerValue, Vec<String>), DerError> {
    let mut d = Decoder {
        buf: bytes,
        warnings: Vec::new(),
    };
    let (v, end) = d.value(0, bytes.len(), 0)?;
    if end != bytes.len() {
        return Err(DerError {
            offset: end,
            message: format!("{} trailing bytes after the value", bytes.len() - end),
        });
    }
    Ok((v, d.warnings))
}

impl<'a> Decoder<'a> {
    fn err<T>(&self, offset: usize, message: impl Into<String>) -> Result<T, DerError> {
        Err(DerError {
            offset,
            message: message.into(),
        })
    }

    /// Tag and content range of the element at `pos`, which must end by `end`.
    fn header(&mut self, pos: usize, end: usize) -> Result<(u8, usize, usize), DerError> {
        let Some(&tag) = self.buf.get(pos).filter(|_| pos < end) else {
            return self.err(pos, "truncated: expected an element");
        };
        if tag & 0x1F == 0x1F {
            return self.err(pos, format!("multi-byte tag 0x{tag:02x} is not supported"));
        }
        let Some(&first) = self.buf.get(pos + 1).filter(|_| pos + 1 < end) else {
            return self.err(pos, "truncated: no length");
        };
        let mut p = pos + 2;
        let len = if first < 0x80 {
            first as usize
        } else if first == 0x80 {
            return self.err(pos, "indefinite length is not DER");
        } else {
            let n = (first & 0x7F) as usize;
            if n > 4 {
                return self.err(pos, format!("length of {n} bytes is too large"));
            }
            if p + n > end {
                return self.err(pos, "truncated length");
            }
            let len = self.buf[p..p + n]
                .iter()
                .fold(0usize, |a, &b| (a << 8) | b as usize);
            if self.buf[p] == 0 || len < 0x80 {
                self.warnings.push(format!(
                    "non-minimal length at byte {pos}; re-encoding changes its bytes"
                ));
            }
            p += n;
            len
        };
        if len > end - p {
            return self.err(
                pos,
                format!("length {len} runs past the end ({} bytes left)", end - p),
            );
        }
        Ok((tag, p, p + len))
    }

    fn value(
        &mut self,
        pos: usize,
        end: usize,
        depth: usize,
    ) -> Result<(DerValue, usize), DerError> {
        let (tag, start, stop) = self.header(pos, end)?;
        let content = &self.buf[start..stop];
        let v = match tag {
            TAG_NULL => {
                if !content.is_empty() {
                    return self.err(pos, "NULL with content");
                }
                DerValue::Null
            }
            TAG_BOOLEAN => {
                if content.len() != 1 {
                    return self.err(pos, format!("BOOLEAN of {} bytes", content.len()));
                }
                if content[0] > 1 {
                    self.warnings.push(format!(
                        "BOOLEAN true encoded as 0x{:02x} at byte {pos}; re-encoded as 0x01",
                        content[0]
                    ));
                }
                DerValue::Bool(content[0] != 0)
            }
            TAG_INTEGER => {
                if content.len() > 8 {
                    return self.err(
                        pos,
                        format!("INTEGER of {} bytes is over 64 bits", content.len()),
                    );
                }
                let minimal = match content {
                    [] => false,
                    [0, b, ..] => b & 0x80 != 0,
                    [0xFF, b, ..] => b & 0x80 == 0,
                    _ => true,
                };
                if !minimal {
                    self.warnings.push(format!(
                        "non-minimal INTEGER at byte {pos}; re-encoding changes its bytes"
                    ));
                }
                let init: i64 = if content.first().is_some_and(|b| b & 0x80 != 0) {
                    -1
                } else {
                    0
                };
                DerValue::Integer(content.iter().fold(init, |a, &b| (a << 8) | b as i64))
            }
            TAG_OCTET_STRING => DerValue::Data(Zeroizing::new(content.to_vec())),
            TAG_UTF8_STRING => match std::str::from_utf8(content) {
                Ok(s) => DerValue::String(s.to_string()),
                Err(e) => return self.err(pos, format!("UTF8String is not UTF-8 ({e})")),
            },
            TAG_GENERALIZED_TIME => {
                let d = parse_time(content, 4, true, &mut self.warnings)
                    .or_else(|m| self.err(pos, m))?;
                DerValue::Date(d)
            }
            TAG_UTC_TIME | TAG_NUMERIC_STRING => {
                let (digits, name) = if tag == TAG_UTC_TIME {
                    (2, "UTCTime")
                } else {
                    (4, "NumericString")
                };
                let d = parse_time(content, digits, tag == TAG_UTC_TIME, &mut self.warnings)
                    .or_else(|m| self.err(pos, m))?;
                self.warnings.push(format!(
                    "date at byte {pos} is a {name}; re-encoded as GeneralizedTime"
                ));
                DerValue::Date(d)
            }
            TAG_SEQUENCE => {
                self.check_depth(pos, depth)?;
                let mut items = Vec::new();
                let mut p = start;
                while p < stop {
                    let (v, next) = self.value(p, stop, depth + 1)?;
                    items.push(v);
                    p = next;
                }
                DerValue::Array(items)
            }
            TAG_SET => {
                self.check_depth(pos, depth)?;
                DerValue::Dict(self.dict(start, stop, depth)?)
            }
            other => return self.err(pos, format!("unsupported tag 0x{other:02x}")),
        };
        Ok((v, stop))
    }

    fn check_depth(&self, pos: usize, depth: usize) -> Result<(), DerError> {
        if depth >= MAX_DEPTH {
            return self.err(pos, format!("nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn dict(
        &mut self,
        start: usize,
        stop: usize,
        depth: usize,
    ) -> Result<BTreeMap<String, DerValue>, DerError> {
        let mut out = BTreeMap::new();
        let mut prev: Option<&'a [u8]> = None;
        let mut warned = false;
        let mut p = start;
        while p < stop {
            let (tag, cs, ce) = self.header(p, stop)?;
            if tag != TAG_SEQUENCE {
                return self.err(
                    p,
                    format!("dictionary entry has tag 0x{tag:02x}, not a SEQUENCE"),
                );
            }
            let (key, after_key) = self.value(cs, ce, depth + 1)?;
            let DerValue::String(key) = key else {
                return self.err(
                    cs,
                    format!("dictionary key is a {}, not a string", key.type_name()),
                );
            };
            if after_key >= ce {
                return self.err(p, format!("dictionary entry {key:?} has no value"));
            }
            let (value, after_value) = self.value(after_key, ce, depth + 1)?;
            if after_value != ce {
                return self.err(
                    p,
                    format!("dictionary entry {key:?} has more than a key and a value"),
                );
            }
            let whole = &self.buf[p..ce];
            if let Some(prev) = prev {
                if compare(prev, whole) == Ordering::Greater && !warned {
                    warned = true;
                    self.warnings.push(format!(
                        "dictionary at byte {} is not in DER order; re-encoding sorts it",
                        start
                    ));
                }
            }
            prev = Some(whole);
            if out.contains_key(&key) {
                return self.err(p, format!("dictionary key {key:?} appears twice"));
            }
            out.insert(key, value);
            p = ce;
        }
        Ok(out)
    }
}

/// DER SET OF order: memcmp, then the shorter first (what `Vec<u8>`'s `Ord` does).
fn compare(a: &[u8], b: &[u8]) -> Ordering {
    a.cmp(b)
}

// ------------------------------------------------------------------ encoding

fn len_of_len(n: usize) -> usize {
    if n < 0x80 {
        1
    } else {
        1 + (usize::BITS as usize / 8 - n.leading_zeros() as usize / 8)
    }
}

fn push_header(out: &mut Vec<u8>, tag: u8, n: usize) {
    out.push(tag);
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = n.leading_zeros() as usize / 8;
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn integer_bytes(i: i64) -> ([u8; 8], usize) {
    let b = i.to_be_bytes();
    let mut skip = 0;
    while skip < 7 {
        let redundant = (b[skip] == 0x00 && b[skip + 1] & 0x80 == 0)
            || (b[skip] == 0xFF && b[skip + 1] & 0x80 != 0);
        if !redundant {
            break;
        }
        skip += 1;
    }
    (b, skip)
}

/// Length of the content of `v` (without its tag and length).
fn content_len(v: &DerValue) -> usize {
    match v {
        DerValue::Null => 0,
        DerValue::Bool(_) => 1,
        DerValue::Integer(i) => 8 - integer_bytes(*i).1,
        DerValue::String(s) => s.len(),
        DerValue::Data(d) => d.len(),
        DerValue::Date(d) => d.to_generalized_time().len(),
        DerValue::Array(a) => a.iter().map(encoded_len).sum(),
        DerValue::Dict(d) => d.iter().map(|(k, v)| entry_len(k, v)).sum(),
    }
}

fn entry_content_len(k: &str, v: &DerValue) -> usize {
    1 + len_of_len(k.len()) + k.len() + encoded_len(v)
}

fn entry_len(k: &str, v: &DerValue) -> usize {
    let n = entry_content_len(k, v);
    1 + len_of_len(n) + n
}

/// Size of `encode(v)`.
pub fn encoded_len(v: &DerValue) -> usize {
    let n = content_len(v);
    1 + len_of_len(n) + n
}

fn write(v: &DerValue, out: &mut Vec<u8>) {
    let n = content_len(v);
    match v {
        DerValue::Null => push_header(out, TAG_NULL, 0),
        DerValue::Bool(b) => {
            push_header(out, TAG_BOOLEAN, 1);
            out.push(u8::from(*b));
        }
        DerValue::Integer(i) => {
            let (b, skip) = integer_bytes(*i);
            push_header(out, TAG_INTEGER, n);
            out.extend_from_slice(&b[skip..]);
        }
        DerValue::String(s) => {
            push_header(out, TAG_UTF8_STRING, n);
            out.extend_from_slice(s.as_bytes());
        }
        DerValue::Data(d) => {
            push_header(out, TAG_OCTET_STRING, n);
            out.extend_from_slice(d);
        }
        DerValue::Date(d) => {
            push_header(out, TAG_GENERALIZED_TIME, n);
            out.extend_from_slice(d.to_generalized_time().as_bytes());
        }
        DerValue::Array(a) => {
            push_header(out, TAG_SEQUENCE, n);
            for x in a {
                write(x, out);
            }
        }
        DerValue::Dict(d) => {
            push_header(out, TAG_SET, n);
            let mut entries: Vec<Zeroizing<Vec<u8>>> = d
                .iter()
                .map(|(k, v)| {
                    let mut e = Zeroizing::new(Vec::with_capacity(entry_len(k, v)));
                    push_header(&mut e, TAG_SEQUENCE, entry_content_len(k, v));
                    push_header(&mut e, TAG_UTF8_STRING, k.len());
                    e.extend_from_slice(k.as_bytes());
                    write(v, &mut e);
                    e
                })
                .collect();
            entries.sort_by(|a, b| compare(a, b));
            for e in &entries {
                out.extend_from_slice(e);
            }
        }
    }
}

/// Encodes `v` canonically (dictionaries sorted, minimal lengths and integers). The buffer is
/// allocated once at its final size, so no stray copy of a secret is left behind; wrap it in
/// [`Zeroizing`] when it holds one.
pub fn encode(v: &DerValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(v));
    write(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    fn dict(pairs: &[(&str, DerValue)]) -> DerValue {
        DerValue::Dict(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    fn round_trip(v: &DerValue) -> Vec<u8> {
        let bytes = encode(v);
        assert_eq!(bytes.len(), encoded_len(v));
        let (back, warnings) = decode(&bytes).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(&back, v);
        bytes
    }

    #[test]
    fn integers_are_minimal_twos_complement() {
        for (i, want) in [
            (0i64, "020100"),
            (1, "020101"),
            (127, "02017f"),
            (128, "02020080"),
            (143, "0202008f"),
            (255, "020200ff"),
            (256, "02020100"),
            (993, "020203e1"),
            (-1, "0201ff"),
            (-128, "020180"),
            (-129, "0202ff7f"),
            (1_768_776_048, "0204696d6170"),
            (i64::MAX, "02087fffffffffffffff"),
            (i64::MIN, "02088000000000000000"),
        ] {
            assert_eq!(hex::encode(round_trip(&DerValue::Integer(i))), want, "{i}");
        }
    }

    #[test]
    fn non_minimal_integer_decodes_with_a_warning() {
        let (v, w) = decode(&h("0203 00008f")).unwrap();
        assert_eq!(v, DerValue::Integer(143));
        assert!(w[0].contains("non-minimal INTEGER"), "{w:?}");
        let (v, w) = decode(&h("0202 ff80")).unwrap();
        assert_eq!(v, DerValue::Integer(-128));
        assert_eq!(w.len(), 1);
        let (v, w) = decode(&h("0200")).unwrap();
        assert_eq!(v, DerValue::Integer(0));
        assert_eq!(w.len(), 1);
        assert!(decode(&h("0209 010000000000000000")).is_err());
    }

    #[test]
    fn strings_data_null_bool() {
        assert_eq!(
            hex::encode(round_trip(&DerValue::string("josé"))),
            "0c056a6f73c3a9"
        );
        assert_eq!(hex::encode(round_trip(&DerValue::string(""))), "0c00");
        round_trip(&DerValue::string("日本語 ✓ 🔑"));
        assert_eq!(
            hex::encode(round_trip(&DerValue::data(vec![1, 2]))),
            "04020102"
        );
        assert_eq!(hex::encode(round_trip(&DerValue::Null)), "0500");
        assert_eq!(hex::encode(round_trip(&DerValue::Bool(true))), "010101");
        assert_eq!(hex::encode(round_trip(&DerValue::Bool(false))), "010100");
        let (v, w) = decode(&h("0101ff")).unwrap();
        assert_eq!(v, DerValue::Bool(true));
        assert_eq!(w.len(), 1);
        assert!(decode(&h("0c02c328"))
            .unwrap_err()
            .message
            .contains("UTF-8"));
        assert!(decode(&h("050100")).is_err());
        assert!(decode(&h("010200ff")).is_err());
    }

    #[test]
    fn long_lengths() {
        for n in [127usize, 128, 255, 256, 65_535, 65_536, 1 << 20] {
            let v = DerValue::data(vec![0xAB; n]);
            let bytes = round_trip(&v);
            let want_hdr = match n {
                0..=127 => 2,
                128..=255 => 3,
                256..=65_535 => 4,
                _ => 5,
            };
            assert_eq!(bytes.len(), n + want_hdr, "{n}");
        }
        // 0x81 0x05: legal BER, not minimal DER.
        let (v, w) = decode(&h("0481 05 0102030405")).unwrap();
        assert_eq!(v.as_data().unwrap(), &[1, 2, 3, 4, 5]);
        assert!(w[0].contains("non-minimal length"));
    }

    #[test]
    fn bad_lengths_are_errors() {
        for (bytes, want) in [
            ("", "truncated"),
            ("04", "no length"),
            ("0405 0102", "runs past the end"),
            ("0480 0102 0000", "indefinite"),
            ("0485 0000000001 00", "too large"),
            ("0482 01", "truncated length"),
            ("30 03 0c05 61", "runs past the end"),
            ("0401 00 00", "trailing"),
            ("1f01 00", "multi-byte tag"),
            ("1301 41", "unsupported tag"),
        ] {
            let e = decode(&h(bytes)).unwrap_err();
            assert!(e.message.contains(want), "{bytes}: {e}");
        }
    }

    #[test]
    fn dates() {
        let d = DerDate::parse_generalized("20230730021251.5Z").unwrap();
        assert_eq!(d.to_iso8601(), "2023-07-30T02:12:51.5Z");
        assert_eq!(d.nanos(), 500_000_000);
        assert_eq!(d.to_generalized_time(), "20230730021251.5Z");
        let d = DerDate::parse_generalized("20240319145344Z").unwrap();
        assert_eq!(d.unix_seconds(), 1_710_860_024);
        assert_eq!(d.to_iso8601(), "2024-03-19T14:53:44Z");
        for text in [
            "20000229000000Z",
            "19700101000000Z",
            "19691231235959.999999999Z",
            "00000101000000Z",
            "99991231235959.123Z",
            "20240101000000.000001Z",
        ] {
            let d = DerDate::parse_generalized(text).unwrap();
            assert_eq!(d.to_generalized_time(), text);
            let v = DerValue::Date(d);
            let bytes = round_trip(&v);
            assert_eq!(&bytes[2..], text.as_bytes());
        }
        for bad in [
            "20230230000000Z",
            "20231301000000Z",
            "20230101240000Z",
            "20230101000060Z",
            "20230101000000",
            "20230101000000+0100",
            "2023010100000Z",
            "20230101000000.Z",
            "2023o101000000Z",
            "19000229000000Z",
        ] {
            assert!(DerDate::parse_generalized(bad).is_err(), "{bad}");
        }
        // Trailing zeros in the fraction: accepted by the decoder, with a warning.
        assert!(DerDate::parse_generalized("20230730021251.50Z").is_err());
        let mut raw = vec![0x18, 18];
        raw.extend_from_slice(b"20230730021251.50Z");
        let (v, w) = decode(&raw).unwrap();
        assert_eq!(v.as_date().unwrap().nanos(), 500_000_000);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn utc_time_and_numeric_string_dates() {
        let mut raw = vec![0x17, 13];
        raw.extend_from_slice(b"230730021251Z");
        let (v, w) = decode(&raw).unwrap();
        assert_eq!(v.as_date().unwrap().to_iso8601(), "2023-07-30T02:12:51Z");
        assert!(w[0].contains("UTCTime"));
        let mut raw = vec![0x17, 11];
        raw.extend_from_slice(b"9912312359Z");
        let (v, _) = decode(&raw).unwrap();
        assert_eq!(v.as_date().unwrap().to_iso8601(), "1999-12-31T23:59:00Z");
        let mut raw = vec![0x12, 14];
        raw.extend_from_slice(b"20230730021251");
        let (v, w) = decode(&raw).unwrap();
        assert_eq!(v.as_date().unwrap().to_iso8601(), "2023-07-30T02:12:51Z");
        assert!(w[0].contains("NumericString"));
    }

    #[test]
    fn dictionaries_sort_by_encoded_entry() {
        // The order is by the whole encoded entry, so an entry's length byte weighs first:
        // "port" (a 4-byte integer, entry 30 0a) sorts before "agrp" (30 0b), although
        // "agrp" < "port", and "acct" (30 0f) comes last.
        let v = dict(&[
            ("acct", DerValue::string("abcdefg")),
            ("port", DerValue::Integer(143)),
            ("agrp", DerValue::string("abc")),
        ]);
        let bytes = round_trip(&v);
        let port = "300a0c04706f72740202008f";
        let agrp = "300b0c04616772700c03616263";
        let acct = "300f0c04616363740c0761626364656667";
        assert_eq!(hex::encode(&bytes), format!("312a{port}{agrp}{acct}"));
        // Out of order: decodes, with a warning; re-encoding sorts.
        let unsorted = h(&format!("312a{acct}{agrp}{port}"));
        let (back, w) = decode(&unsorted).unwrap();
        assert_eq!(back, v);
        assert!(w[0].contains("not in DER order"), "{w:?}");
        assert_eq!(encode(&back), bytes);
    }

    #[test]
    fn dictionary_errors() {
        let dup = h("3117 300b0c04616772700c03616263 3008 0c0461677270 0500");
        let dup = {
            let mut d = dup;
            d[1] = (d.len() - 2) as u8;
            d
        };
        let e = decode(&dup).unwrap_err();
        assert!(e.message.contains("appears twice"), "{e}");
        for (bytes, want) in [
            ("3103 0c0161", "not a SEQUENCE"),
            ("3107 3005 020101 0500", "not a string"),
            ("3105 3003 0c0161", "no value"),
            ("3109 3007 0c0161 0500 0500", "more than a key"),
        ] {
            let e = decode(&h(bytes)).unwrap_err();
            assert!(e.message.contains(want), "{bytes}: {e}");
        }
    }

    #[test]
    fn nesting_is_capped() {
        let mut v = DerValue::Null;
        for _ in 0..MAX_DEPTH {
            v = DerValue::Array(vec![v]);
        }
        round_trip(&v);
        let deeper = DerValue::Array(vec![v]);
        let e = decode(&encode(&deeper)).unwrap_err();
        assert!(e.message.contains("nested deeper"), "{e}");
        // A hostile, long chain of SEQUENCE headers does not overflow the stack.
        let mut bomb = Vec::new();
        for _ in 0..10_000 {
            let mut hdr = Vec::new();
            push_header(&mut hdr, TAG_SEQUENCE, bomb.len());
            hdr.extend_from_slice(&bomb);
            bomb = hdr;
            if bomb.len() > 50_000 {
                break;
            }
        }
        assert!(decode(&bomb).is_err());
    }

    #[test]
    fn nested_values_round_trip() {
        let v = dict(&[
            ("v_Data", DerValue::data(b"secret".to_vec())),
            (
                "list",
                DerValue::Array(vec![
                    DerValue::Integer(-5),
                    DerValue::Bool(false),
                    DerValue::Null,
                    dict(&[("x", DerValue::string("y"))]),
                ]),
            ),
            (
                "cdat",
                DerValue::Date(DerDate::parse_generalized("20240319145344Z").unwrap()),
            ),
            ("empty", DerValue::Dict(BTreeMap::new())),
        ]);
        round_trip(&v);
        assert_eq!(
            format!("{:?}", DerValue::data(b"secret".to_vec())),
            "Data(6 bytes)"
        );
    }
}
