//! Backup / incremental re-backup / restore of a virtual device with ≥ 10,000 files and ≥ 1 GB,
//! against `cp -r` of the device folder (docs/BENCHMARKS.md, "Device backup").
//!
//!     cargo run --release -p device --example device_bench -- populate DIR
//!         makes DIR/phone (10,000 files of 105 kB, classes A–D round-robin, 20 app
//!         domains, passcode set, unlocked) and DIR/target-empty (an unlocked device with
//!         nothing stored, to restore onto); `scripts/bench-device.sh` then times the
//!         `keybag device …` commands against `cp -r` with hyperfine.
//!     cargo run --release -p device --example device_bench -- populate-random DIR
//!         the same with random (incompressible, all different) contents: the data of
//!         `scripts/bench-vault.sh`, where compressible files would flatter deduplication.
//!     cargo run --release -p device --example device_bench -- all DIR
//!         one quick in-process run of every step (single timings; DIR is removed first).
//!
//! The passcode of both devices is `123456` (benchmark data protects nothing).

use std::path::{Path, PathBuf};
use std::time::Instant;

use device::backup::{backup, backup_with_device_setting, BackupOptions};
use device::restore::{restore, RestoreOptions};
use device::{Device, InitOptions, LockState, ProtectionClass, PutOptions};
use zeroize::Zeroizing;

const PASSCODE: &[u8] = b"123456";
const FILES: usize = 10_000;
const SIZE: usize = 105_000; // 10,000 × 105 kB = 1.05 GB

fn init(dir: &Path, name: &str) -> Device {
    let mut d = Device::init(
        dir,
        InitOptions {
            name: name.into(),
            passcode: Some(Zeroizing::new(PASSCODE.to_vec())),
            passcode_iterations: Some(10_000),
            ..InitOptions::default()
        },
    )
    .unwrap();
    if d.state() != LockState::Unlocked {
        d.unlock(PASSCODE).unwrap();
    }
    d
}

fn populate(d: &mut Device, random: bool) {
    let t = Instant::now();
    let mut buf = vec![0u8; SIZE];
    for i in 0..FILES {
        if random {
            // Incompressible and different in every file (xorshift seeded by the file).
            let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        } else {
            for (j, b) in buf.iter_mut().enumerate().step_by(97) {
                *b = (i * 7 + j) as u8;
            }
        }
        let opts = PutOptions {
            class: ProtectionClass(1 + (i % 4) as u32),
            ..PutOptions::default()
        };
        let dom = format!("AppDomain-com.example.app{}", i % 20);
        d.put(
            &dom,
            &format!("Documents/d{}/f{i}.bin", i % 50),
            &mut &buf[..],
            &opts,
        )
        .unwrap();
    }
    eprintln!(
        "populate: {FILES} files of {SIZE} bytes in {:.2} s",
        t.elapsed().as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, root) = match args.as_slice() {
        [m, d] => (m.as_str(), PathBuf::from(d)),
        _ => {
            eprintln!("usage: device_bench populate|populate-random|all DIR");
            std::process::exit(2);
        }
    };
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let mut d = init(&root.join("phone"), "phone");
    populate(&mut d, mode == "populate-random");
    if mode.starts_with("populate") {
        drop(init(&root.join("target-empty"), "target"));
        return;
    }

    let t = Instant::now();
    let st = std::process::Command::new("cp")
        .arg("-r")
        .arg(root.join("phone"))
        .arg(root.join("cp-copy"))
        .status()
        .unwrap();
    assert!(st.success());
    let cp = t.elapsed().as_secs_f64();

    let opts = BackupOptions {
        password: Some(Zeroizing::new(b"bench password".to_vec())),
        ..BackupOptions::default()
    };
    let out = root.join("backup");
    let t = Instant::now();
    let r = backup(&d, &out, &opts).unwrap();
    let first = t.elapsed().as_secs_f64();
    // Like a phone with "encrypt local backup" on: no password, the device's kept keybag.
    let t = Instant::now();
    let r2 = backup_with_device_setting(&d, &out, &BackupOptions::default()).unwrap();
    let inc = t.elapsed().as_secs_f64();
    assert!(r2.encrypted && r2.device_keybag && r2.kdf_runs == 0);
    drop(d);
    drop(init(&root.join("target"), "target"));
    let t = Instant::now();
    let rr = restore(
        &root.join("target"),
        &out,
        &RestoreOptions {
            password: Some(Zeroizing::new(b"bench password".to_vec())),
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    let rest = t.elapsed().as_secs_f64();
    println!("files {} bytes {}", r.files, r.bytes);
    println!("cp -r device folder: {cp:.2} s");
    println!(
        "backup --encrypt (DPIC 10M): {first:.2} s ({:.2}x cp -r)",
        first / cp
    );
    println!(
        "incremental, unchanged, no password ({} of {} reused, {} KDF runs): {inc:.2} s ({:.1}% of first)",
        r2.reused,
        r2.files,
        r2.kdf_runs,
        100.0 * inc / first
    );
    println!(
        "restore onto another device ({} files): {rest:.2} s",
        rr.files
    );
    let _ = std::fs::remove_dir_all(&root);
}
