//! A structural check of binary plists before a tree-building parser sees them.
//!
//! A bplist stores each object once and lets containers share references, so a
//! 200-byte file can describe a tree of 2^40 nodes, and a cycle describes an
//! infinite one. Parsers that build a tree (the `plist` crate) then hang or
//! overflow the stack. This walks the object graph once, iteratively, and
//! refuses cycles, deep nesting and expanded trees beyond a budget.

/// Nodes the fully expanded tree may have (real Manifest/Info plists: thousands).
pub const MAX_NODES: u64 = 5_000_000;
/// Nesting depth allowed (real plists: under 10).
pub const MAX_DEPTH: usize = 256;

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, &x| (a << 8) | x as u64)
}

/// `Ok` for anything that is not a binary plist (XML has no shared references)
/// and for binary plists within the limits; otherwise why not.
pub fn check(data: &[u8]) -> Result<(), String> {
    if !data.starts_with(b"bplist00") {
        return Ok(());
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
    // The references an object holds (empty for scalars).
    let children = |i: usize| -> Result<Vec<usize>, String> {
        let o = offset(i)?;
        let marker = data[o];
        let kind = marker >> 4;
        if !(0xA..=0xD).contains(&kind) {
            return Ok(Vec::new());
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
        (0..refs as usize)
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
            .collect()
    };
    // Iterative post-order walk: expanded size per object, cycles found by colour.
    const NEW: u8 = 0;
    const OPEN: u8 = 1;
    let mut state = vec![NEW; count];
    let mut size = vec![0u64; count];
    let mut stack: Vec<(usize, Vec<usize>, usize)> =
        vec![(top as usize, children(top as usize)?, 0)];
    state[top as usize] = OPEN;
    while let Some((obj, kids, next)) = stack.last_mut() {
        if let Some(&k) = kids.get(*next) {
            *next += 1;
            match state[k] {
                NEW => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(format!("binary plist nests deeper than {MAX_DEPTH} levels"));
                    }
                    state[k] = OPEN;
                    let c = children(k)?;
                    stack.push((k, c, 0));
                }
                OPEN => return Err("binary plist contains a reference cycle".into()),
                _ => {}
            }
        } else {
            let total = kids
                .iter()
                .try_fold(1u64, |a, &k| a.checked_add(size[k]))
                .unwrap_or(u64::MAX);
            if total > MAX_NODES {
                return Err(format!(
                    "binary plist expands to more than {MAX_NODES} nodes"
                ));
            }
            size[*obj] = total;
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
}
