//! Micro-benchmark of the password KDF's PBKDF2-HMAC-SHA256 step (where `keybag verify`
//! spends its time), to see how far it is from the hardware's SHA-256 speed.
//!
//! ```text
//! kdf_bench [ROUNDS]        # default 10000000, Apple's DPIC
//! ```
//!
//! Prints three timings, each for `ROUNDS` iterations (2 × `ROUNDS` SHA-256 compressions):
//! * `dataprotection::kdf::pbkdf2_sha256`, the code keybag runs (pbkdf2 0.12 + hmac 0.12);
//! * `core-api loop`: the same PBKDF2 written against sha2's block-level core API with the
//!   HMAC inner/outer states precomputed, no `Hmac` wrapper (its output is checked against the
//!   first);
//! * `compressions only`: 2 × `ROUNDS` bare single-block SHA-256 compressions, each depending on
//!   the last, the floor for any PBKDF2-SHA256 on this CPU with this SHA-256 implementation.

use std::time::Instant;

use dataprotection::kdf::pbkdf2_sha256;
use sha2::digest::core_api::{Block, Buffer, CtVariableCoreWrapper, FixedOutputCore, UpdateCore};
use sha2::digest::typenum::U32;
use sha2::digest::Output;
use sha2::{Digest, Sha256, Sha256VarCore};

type Core = CtVariableCoreWrapper<Sha256VarCore, U32>;

const PASSWORD: &[u8] = b"correct horse battery staple";
const SALT: &[u8] = b"0123456789abcdefghij";

/// PBKDF2-HMAC-SHA256, one 32-byte output block, on sha2's core API.
fn pbkdf2_core(password: &[u8], salt: &[u8], rounds: u32) -> [u8; 32] {
    let mut key = [0u8; 64];
    if password.len() > 64 {
        key[..32].copy_from_slice(&Sha256::digest(password));
    } else {
        key[..password.len()].copy_from_slice(password);
    }
    let pad = |x: u8| {
        let mut b = Block::<Core>::default();
        for (o, k) in b.iter_mut().zip(key) {
            *o = k ^ x;
        }
        let mut c = Core::default();
        c.update_blocks(std::slice::from_ref(&b));
        c
    };
    let (inner, outer) = (pad(0x36), pad(0x5c));
    let hmac = |msg: &[u8]| -> Output<Core> {
        let mut c = inner.clone();
        let mut buf = Buffer::<Core>::default();
        buf.digest_blocks(msg, |b| c.update_blocks(b));
        let mut ih = Output::<Core>::default();
        c.finalize_fixed_core(&mut buf, &mut ih);
        let mut c = outer.clone();
        let mut buf = Buffer::<Core>::new(&ih);
        let mut out = Output::<Core>::default();
        c.finalize_fixed_core(&mut buf, &mut out);
        out
    };
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(&first);
    let mut acc: [u8; 32] = u.into();
    for _ in 1..rounds {
        u = hmac(&u);
        for (a, b) in acc.iter_mut().zip(u.iter()) {
            *a ^= b;
        }
    }
    acc
}

/// `n` chained single-block compressions (each one depends on the state the previous left).
fn compressions(n: u64) -> [u8; 32] {
    let mut block = Block::<Core>::default();
    let mut c = Core::default();
    for i in 0..n {
        block[..8].copy_from_slice(&i.to_le_bytes());
        c.update_blocks(std::slice::from_ref(&block));
    }
    let mut out = Output::<Core>::default();
    c.finalize_fixed_core(&mut Buffer::<Core>::default(), &mut out);
    out.into()
}

fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("ROUNDS must be a number"))
        .unwrap_or(10_000_000);
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    let sha_ni = std::arch::is_x86_feature_detected!("sha").to_string();
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    let sha_ni = "n/a (not x86)";
    println!("kdf_bench: {rounds} PBKDF2-HMAC-SHA256 rounds; CPU SHA extensions: {sha_ni}");

    let t = Instant::now();
    let a = pbkdf2_sha256(PASSWORD, SALT, rounds);
    let lib = t.elapsed().as_secs_f64();
    println!("dataprotection::kdf::pbkdf2_sha256 {lib:8.3} s");

    let t = Instant::now();
    let b = pbkdf2_core(PASSWORD, SALT, rounds);
    let core = t.elapsed().as_secs_f64();
    assert_eq!(a, b, "core-api PBKDF2 disagrees with the library");
    println!(
        "core-api loop (same output)        {core:8.3} s  ({:.2}x the library)",
        core / lib
    );

    let t = Instant::now();
    let c = compressions(2 * u64::from(rounds));
    let floor = t.elapsed().as_secs_f64();
    println!(
        "compressions only (2 x rounds)     {floor:8.3} s  ({:.2}x the library)  [{:02x}]",
        floor / lib,
        c[0]
    );
}
