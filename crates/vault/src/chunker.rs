//! Content-defined chunking of a stream: FastCDC 2020 from the fastcdc crate (its
//! `cut_gear`, gear tables XOR-ed with a secret seed), driven over a buffer that each thread
//! keeps from one file to the next.
//!
//! fastcdc's own `StreamCDC` allocates and zeroes a buffer of the largest chunk size (4 MiB
//! here) for every stream and copies every chunk out of it: on a phone backup of 10,000
//! files of 100 kB that was 40 GB of memset, a sixth of a push's CPU. The cut points are the
//! crate's (the same `cut_gear` over the same window: up to the largest chunk size from the
//! current position), so chunk IDs are the same as before; a test holds it to `StreamCDC`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Read;

use fastcdc::v2020::{cut_gear, get_gear_with_seed, select_masks, Normalization};

/// A chunker's fixed parameters.
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

thread_local! {
    /// This thread's window, kept between streams (taken while in use, so a nested use on
    /// the same thread gets a buffer of its own instead of a borrow panic).
    static WINDOW: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

impl Chunker {
    /// A chunker with these sizes (bytes) and seed, normalization level 1.
    pub fn new(min: usize, avg: usize, max: usize, seed: u64) -> Chunker {
        let (mask_s, mask_l) = select_masks(avg, Normalization::Level1);
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Chunker {
            min,
            avg,
            max,
            mask_s,
            mask_l,
            gear,
            gear_ls,
        }
    }

    /// Cuts everything `r` yields, handing each chunk to `each` in order; returns the byte
    /// count. Stops at the first error of `r` or of `each`.
    pub fn chunk<E>(
        &self,
        r: &mut dyn Read,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
        io_err: impl FnOnce(std::io::Error) -> E,
    ) -> Result<u64, E> {
        let mut buf = WINDOW
            .with(|w| w.borrow_mut().take())
            .filter(|b| b.len() == self.max)
            .unwrap_or_else(|| vec![0u8; self.max]);
        let result = self.chunk_with(&mut buf, r, &mut each, io_err);
        WINDOW.with(|w| *w.borrow_mut() = Some(buf));
        result
    }

    fn chunk_with<E>(
        &self,
        buf: &mut [u8],
        r: &mut dyn Read,
        each: &mut impl FnMut(&[u8]) -> Result<(), E>,
        io_err: impl FnOnce(std::io::Error) -> E,
    ) -> Result<u64, E> {
        let mut len = 0usize;
        let mut eof = false;
        let mut total = 0u64;
        loop {
            while !eof && len < buf.len() {
                match r.read(&mut buf[len..]) {
                    Ok(0) => eof = true,
                    Ok(n) => len += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err(e)),
                }
            }
            if len == 0 {
                return Ok(total);
            }
            let (_, count) = cut_gear(
                &buf[..len],
                self.min,
                self.avg,
                self.max,
                self.mask_s,
                self.mask_l,
                self.mask_s << 1,
                self.mask_l << 1,
                &self.gear,
                &self.gear_ls,
            );
            // cut_gear never returns 0 for a non-empty window; guard against a loop anyway.
            let count = if count == 0 { len } else { count };
            each(&buf[..count])?;
            total += count as u64;
            buf.copy_within(count..len, 0);
            len -= count;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastcdc::v2020::StreamCDC;

    /// Cuts `data` both ways and compares.
    fn same_as_stream_cdc(data: &[u8], seed: u64, read_size: usize) {
        let (min, avg, max) = (4096, 16384, 65536);
        let expected: Vec<Vec<u8>> =
            StreamCDC::with_level_and_seed(data, min, avg, max, Normalization::Level1, seed)
                .map(|c| c.unwrap().data)
                .collect();
        // A reader that yields at most `read_size` bytes per call (short reads).
        struct Short<'a>(&'a [u8], usize);
        impl Read for Short<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(out.len()).min(self.1);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let c = Chunker::new(min, avg, max, seed);
        let mut got = Vec::new();
        let total = c
            .chunk(
                &mut Short(data, read_size),
                |b| {
                    got.push(b.to_vec());
                    Ok::<_, std::io::Error>(())
                },
                |e| e,
            )
            .unwrap();
        assert_eq!(total, data.len() as u64);
        assert_eq!(got.len(), expected.len(), "len {} seed {seed}", data.len());
        assert!(got == expected, "len {} seed {seed}", data.len());
    }

    #[test]
    fn cuts_where_the_crates_stream_chunker_cuts() {
        for len in [0usize, 1, 4095, 4096, 70_000, 1 << 20, (3 << 20) + 5] {
            let mut data = vec![0u8; len];
            blake3::Hasher::new()
                .update(&len.to_le_bytes())
                .finalize_xof()
                .fill(&mut data);
            for seed in [0u64, 0x5eed_1234_abcd_ef01] {
                same_as_stream_cdc(&data, seed, 1 << 20);
                same_as_stream_cdc(&data, seed, 1000);
            }
        }
        // Low-entropy data cuts at the largest size: the window refills mid-stream.
        same_as_stream_cdc(&vec![0u8; 500_000], 3, 7777);
    }

    #[test]
    fn a_nested_use_on_one_thread_gets_its_own_window() {
        let c = Chunker::new(4096, 16384, 65536, 1);
        let data = vec![9u8; 200_000];
        let mut outer = 0;
        c.chunk(
            &mut &data[..],
            |b| {
                outer += b.len();
                let inner = c.chunk(&mut &b[..], |_| Ok::<_, ()>(()), |_| ()).unwrap();
                assert_eq!(inner, b.len() as u64);
                Ok::<_, ()>(())
            },
            |_| (),
        )
        .unwrap();
        assert_eq!(outer, data.len());
    }
}
