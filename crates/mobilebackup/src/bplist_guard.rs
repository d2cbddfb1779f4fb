//! A structural check of plists before a tree-building parser sees them.
//!
//! A bplist stores each object once and lets containers share references, so a
//! 200-byte file can describe a tree of 2^40 nodes, and a cycle describes an
//! infinite one; a 4 KB file can also make a tree of a million nodes each holding
//! a copy of one 4 KB string. Parsers that build a tree (the `plist` crate) then
//! hang, overflow the stack or exhaust memory. This walks the object graph once,
//! iteratively, and refuses cycles, deep nesting and expanded trees beyond a
//! budget of nodes and of string and data bytes.
//!
//! XML and OpenStep text plists cannot share objects, so their trees are no larger
//! than their text, but nothing bounds their nesting: a text plist nested deeper than
//! [`MAX_DEPTH`] is refused as well, since code that walks a `plist::Value`
//! recursively (dropping one does) overflows the stack on a deep enough tree.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Nodes the fully expanded tree may have (real Manifest/Info plists: thousands).
pub const MAX_NODES: u64 = 5_000_000;
/// Nesting depth allowed (real plists: under 10).
pub const MAX_DEPTH: usize = 256;
/// String and data bytes the fully expanded tree may hold: no more than the largest
/// top-level plist read ([`crate::plists::MAX_PLIST_BYTES`]) could hold without sharing.
pub const MAX_BYTES: u64 = 256 << 20;

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, &x| (a << 8) | x as u64)
}

/// The error [`Probe`] stops with, told apart from the parser's own errors by its text.
const TOO_DEEP: &str = "plist nests deeper than the guard allows";

/// Visits a plist through the `plist` crate's serde deserializer (its event stream is not
/// public) and keeps nothing. `.0` is the depth of the node it is given (the root is at 1,
/// counted as the binary walk counts: containers, keys and scalars alike); it stops with
/// [`TOO_DEEP`] at a node deeper than [`MAX_DEPTH`], so its own recursion is bounded.
struct Probe(usize);

/// What [`check_text`] deserializes: the shape of the tree, checked by [`Probe`].
struct Shape;

impl<'de> de::Deserialize<'de> for Shape {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Probe(1).deserialize(d).map(|()| Shape)
    }
}

impl<'de> DeserializeSeed<'de> for Probe {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.0 > MAX_DEPTH {
            return Err(de::Error::custom(TOO_DEEP));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a plist value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        while a.next_element_seed(Probe(self.0 + 1))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        while a.next_key_seed(Probe(self.0 + 1))?.is_some() {
            a.next_value_seed(Probe(self.0 + 1))?;
        }
        Ok(())
    }
}

/// Nesting check of a text (XML or OpenStep) plist. Malformed text is left to the parser
/// that follows, which reports it better.
fn check_text(data: &[u8]) -> Result<(), String> {
    match plist::from_reader::<_, Shape>(std::io::Cursor::new(data)) {
        Err(e) if e.to_string().contains(TOO_DEEP) => {
            Err(format!("plist nests deeper than {MAX_DEPTH} levels"))
        }
        _ => Ok(()),
    }
}

/// `Ok` for text plists nested at most [`MAX_DEPTH`] levels (and for anything that is no
/// plist at all) and for binary plists within the limits; otherwise why not.
pub fn check(data: &[u8]) -> Result<(), String> {
    if !data.starts_with(b"bplist00") {
        return check_text(data);
    }
    if data.len() < 8 + 32 {
        return Err("binary plist is truncated".into());
    }
    let t = &data[data.len() - 32..];
    let (off_size, ref_size) = (t[6] as usize, t[7] as usize);
    let (count, top, table) = (be(&t[8..16]), be(&t[16..24]), be(&t[24..32]));
    if !(1..=8).contains(&off_size) || !(1..=8).contains(&ref_size) {
        return Err("binary plist trailer has invalid integer sizes".into());
    }
    let body_end = (data.len() - 32) as u64;
    if count == 0
        || top >= count
        || table >= body_end
        || count > (body_end - table) / off_size as u64
    {
        return Err("binary plist trailer is inconsistent".into());
    }
    let count = count as usize;
    let offset = |i: usize| -> Result<usize, String> {
        let at = table as usize + i * off_size;
        let o = be(&data[at..at + off_size]);
        if o < 8 || o >= table {
            return Err(format!("binary plist object {i} has an invalid offset"));
        }
        Ok(o as usize)
    };
    // The references an object holds (empty for scalars) and its own string or data bytes.
    let children = |i: usize| -> Result<(Vec<usize>, u64), String> {
        let o = offset(i)?;
        let marker = data[o];
        let kind = marker >> 4;
        // Data, ASCII string, UTF-16 string (in code units) and the containers have a length.
        if !matches!(kind, 0x4..=0x6 | 0xA..=0xD) {
            return Ok((Vec::new(), 0));
        }
        let mut len = (marker & 0x0F) as u64;
        let mut p = o + 1;
        if len == 0x0F {
            let m = *data.get(p).ok_or("binary plist length is truncated")?;
            if m >> 4 != 1 {
                return Err("binary plist length is not an integer".into());
            }
            let n = 1usize << (m & 0x0F).min(3);
            len = be(data
                .get(p + 1..p + 1 + n)
                .ok_or("binary plist length is truncated")?);
            p += 1 + n;
        }
        match kind {
            0x4 | 0x5 => return Ok((Vec::new(), len)),
            0x6 => return Ok((Vec::new(), len.saturating_mul(2))),
            _ => {}
        }
        let refs = if kind == 0xD {
            len.saturating_mul(2)
        } else {
            len
        };
        let end = refs
            .checked_mul(ref_size as u64)
            .and_then(|b| b.checked_add(p as u64));
        if end.is_none_or(|e| e > table) {
            return Err(format!("binary plist container {i} runs past its data"));
        }
        let kids = (0..refs as usize)
            .map(|k| {
                let r = be(&data[p + k * ref_size..p + (k + 1) * ref_size]);
                if r as usize >= count {
                    Err(format!(
                        "binary plist object {i} refers to missing object {r}"
                    ))
                } else {
                    Ok(r as usize)
                }
            })
            .collect::<Result<_, String>>()?;
        Ok((kids, 0))
    };
    // Iterative post-order walk: expanded size (nodes, bytes) per object, cycles found by
    // colour.
    const NEW: u8 = 0;
    const OPEN: u8 = 1;
    let mut state = vec![NEW; count];
    let mut size = vec![(0u64, 0u64); count];
    let (kids, own) = children(top as usize)?;
    let mut stack: Vec<(usize, Vec<usize>, usize, u64)> = vec![(top as usize, kids, 0, own)];
    state[top as usize] = OPEN;
    while let Some((obj, kids, next, own)) = stack.last_mut() {
        if let Some(&k) = kids.get(*next) {
            *next += 1;
            match state[k] {
                NEW => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(format!("binary plist nests deeper than {MAX_DEPTH} levels"));
                    }
                    state[k] = OPEN;
                    let (c, own) = children(k)?;
                    stack.push((k, c, 0, own));
                }
                OPEN => return Err("binary plist contains a reference cycle".into()),
                _ => {}
            }
        } else {
            let (nodes, bytes) = kids.iter().fold((1u64, *own), |(n, b), &k| {
                (n.saturating_add(size[k].0), b.saturating_add(size[k].1))
            });
            if nodes > MAX_NODES {
                return Err(format!(
                    "binary plist expands to more than {MAX_NODES} nodes"
                ));
            }
            if bytes > MAX_BYTES {
                return Err(format!(
                    "binary plist expands to more than {} MiB of strings and data",
                    MAX_BYTES >> 20
                ));
            }
            size[*obj] = (nodes, bytes);
            state[*obj] = 2;
            stack.pop();
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use plist::Value;

    fn bin(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        v.to_writer_binary(&mut out).unwrap();
        out
    }

    /// A hand-made bplist: object i (i < n) is an array holding object i+1 twice;
    /// object n is an empty string. Expanded size 2^(n+1) − 1.
    pub(crate) fn doubling(n: usize) -> Vec<u8> {
        doubling_to(n, &[0x50])
    }

    /// [`doubling`] whose last object is the encoded object `leaf`.
    fn doubling_to(n: usize, leaf: &[u8]) -> Vec<u8> {
        let mut out = b"bplist00".to_vec();
        let mut offsets = Vec::new();
        for i in 0..n {
            offsets.push(out.len());
            out.extend_from_slice(&[0xA2, (i + 1) as u8, (i + 1) as u8]);
        }
        offsets.push(out.len());
        out.extend_from_slice(leaf);
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

    #[test]
    fn accepts_real_shapes() {
        let mut d = plist::Dictionary::new();
        d.insert(
            "a".into(),
            Value::Array(vec![Value::Integer(1.into()); 1000]),
        );
        d.insert("b".into(), Value::Data(vec![0; 100]));
        assert!(check(&bin(&Value::Dictionary(d))).is_ok());
        assert!(check(b"<?xml version=\"1.0\"?><plist/>").is_ok());
        for f in ["Info.plist", "Manifest.plist", "Status.plist"] {
            let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../testdata/enc-small-public")
                .join(f);
            assert!(check(&std::fs::read(p).unwrap()).is_ok(), "{f}");
        }
    }

    #[test]
    fn refuses_blowups_cycles_and_garbage() {
        assert!(check(&doubling(10)).is_ok(), "2^11 nodes is fine");
        let e = check(&doubling(40)).unwrap_err();
        assert!(e.contains("expands"), "{e}");
        // Object 0 refers to itself.
        let mut cyc = doubling(1);
        cyc[9] = 0;
        assert!(check(&cyc).unwrap_err().contains("cycle"));
        let mut bad = doubling(3);
        let n = bad.len();
        bad[n - 24..n - 16].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(check(&bad).is_err());
        assert!(check(b"bplist00").is_err());
        let mut dangling = doubling(2);
        dangling[9] = 9;
        assert!(check(&dangling).unwrap_err().contains("missing object"));
    }

    #[test]
    fn refuses_deep_text_plists() {
        let nest = |open: &str, close: &str, n: usize| open.repeat(n) + &close.repeat(n);
        let xml = |n| {
            format!(
                "<?xml version=\"1.0\"?><plist>{}</plist>",
                nest("<array>", "</array>", n)
            )
        };
        assert!(check(xml(MAX_DEPTH).as_bytes()).is_ok());
        let e = check(xml(MAX_DEPTH + 1).as_bytes()).unwrap_err();
        assert!(e.contains("deeper"), "{e}");
        // OpenStep text plists, one byte per level.
        assert!(check(nest("(", ")", MAX_DEPTH).as_bytes()).is_ok());
        let e = check(nest("(", ")", 100_000).as_bytes()).unwrap_err();
        assert!(e.contains("deeper"), "{e}");
        // Depth counts nodes as the binary walk does: a leaf below MAX_DEPTH arrays is one
        // level too deep in both forms.
        let leaf = |n| {
            let xml = format!(
                "<plist>{}<true/>{}</plist>",
                "<array>".repeat(n),
                "</array>".repeat(n)
            );
            let v = plist::Value::from_reader(std::io::Cursor::new(xml.as_bytes())).unwrap();
            let mut bin = Vec::new();
            v.to_writer_binary(&mut bin).unwrap();
            (check(xml.as_bytes()).is_ok(), check(&bin).is_ok())
        };
        assert_eq!(leaf(MAX_DEPTH - 1), (true, true));
        assert_eq!(leaf(MAX_DEPTH), (false, false));
        // Text that is no plist is left to the parser.
        assert!(check(b"<plist><array>").is_ok());
    }

    #[test]
    fn refuses_shared_strings_that_expand_past_the_byte_budget() {
        // An ASCII string object of `len` bytes (0x5F, then the length as a 2-byte integer).
        let string = |len: usize| {
            let mut o = vec![0x5F, 0x11];
            o.extend_from_slice(&(len as u16).to_be_bytes());
            o.extend(std::iter::repeat_n(b'A', len));
            o
        };
        // 2^20 references to one 4000-byte string: 4 GB once expanded, from 4 KB.
        let e = check(&doubling_to(20, &string(4000))).unwrap_err();
        assert!(e.contains("MiB of strings and data"), "{e}");
        // The same tree over a short string stays within both budgets.
        assert!(check(&doubling_to(20, &string(16))).is_ok());
        // UTF-16 strings count two bytes per code unit.
        let mut utf16 = vec![0x6F, 0x11];
        utf16.extend_from_slice(&2000u16.to_be_bytes());
        utf16.extend(std::iter::repeat_n(0u8, 4000));
        assert!(check(&doubling_to(20, &utf16)).is_err());
    }
}
