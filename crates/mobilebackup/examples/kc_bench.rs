//! Keychain decode benchmark: builds a `keychain-backup.plist` of version-3 items in memory
//! (the writer's encoder, class keys of a fresh backup keybag) and times `keychain::parse`,
//! which parses the plist and, for every item, unwraps its key (RFC 3394), checks and
//! decrypts AES-256-GCM (empty IV) and decodes the DER attributes, on all cores (rayon).
//!
//! ```text
//! cargo run --release -p mobilebackup --example kc_bench [ITEMS] [RUNS]   # 10000 5
//! RAYON_NUM_THREADS=1 cargo run --release -p mobilebackup --example kc_bench   # one core
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use dataprotection::{DeviceKey, Keybag, ProtectionClass};
use mobilebackup::keychain::der::{DerDate, DerValue};
use mobilebackup::keychain::writer::{build_plist, NewKeychainItem};
use mobilebackup::keychain::{self, ItemState};

fn item(i: usize) -> NewKeychainItem {
    let class = ProtectionClass(6 + (i % 6) as u32);
    let date = |s: i64| DerValue::Date(DerDate::new(1_700_000_000 + s, 0).expect("in range"));
    let mut attrs = BTreeMap::new();
    let mut s = |k: &str, v: String| {
        attrs.insert(k.to_string(), DerValue::String(v));
    };
    s("agrp", format!("com.example.app{}", i % 50));
    s("acct", format!("user{i}@example.com"));
    s("labl", format!("Item {i}"));
    s(
        "UUID",
        format!("{:08X}-0000-4000-8000-{:012X}", i, i * 7919),
    );
    let table = if i.is_multiple_of(3) { "inet" } else { "genp" };
    if table == "inet" {
        s("srvr", format!("host{i}.example.com"));
        s("path", "/login".into());
        attrs.insert("ptcl".into(), DerValue::Integer(0x6874_7073));
        attrs.insert("port".into(), DerValue::Integer(443));
        attrs.insert("sdmn".into(), DerValue::String(String::new()));
    } else {
        attrs.insert(
            "svce".into(),
            DerValue::String(format!("com.example.service.{i}")),
        );
    }
    attrs.insert("cdat".into(), date(i as i64));
    attrs.insert("mdat".into(), date(2 * i as i64));
    attrs.insert("sync".into(), DerValue::Integer(0));
    attrs.insert("tomb".into(), DerValue::Integer(0));
    attrs.insert("musr".into(), DerValue::data(Vec::new()));
    attrs.insert(
        "v_Data".into(),
        DerValue::data(format!("password-{i}-{}", "x".repeat(i % 24)).into_bytes()),
    );
    NewKeychainItem {
        table: table.into(),
        class,
        attributes: attrs,
        rowid: None,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(10_000, |a| a.parse().expect("ITEMS"));
    let runs: usize = args.next().map_or(5, |a| a.parse().expect("RUNS"));
    let (kb, keys) = Keybag::new_backup(b"bench", &DeviceKey::random(), 1_000).expect("keybag");
    let uuid = kb.uuid_string().expect("uuid");
    let items: Vec<NewKeychainItem> = (0..n).map(item).collect();
    let t = Instant::now();
    let plist = build_plist(&items, Some(&keys), &uuid).expect("plist");
    let build = t.elapsed();

    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let kc = keychain::parse(&plist, Some(&keys), Some(&uuid)).expect("parse");
        times.push(t.elapsed());
        assert_eq!(kc.items.len(), n);
        assert!(kc.items.iter().all(|i| i.state == ItemState::Open));
    }
    times.sort();
    let median = times[times.len() / 2];
    // The share of the bplist parse alone (plist crate, one thread).
    let mut plist_times: Vec<_> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let v = plist::Value::from_reader(std::io::Cursor::new(&plist)).expect("plist");
            let e = t.elapsed();
            drop(v);
            e
        })
        .collect();
    plist_times.sort();
    println!(
        "keychain::parse: {n} v3 items, plist {:.1} KiB, {} threads: median {:.1} ms \
         (min {:.1} ms, max {:.1} ms, {runs} runs; {:.2} µs/item), of which the bplist parse \
         {:.1} ms; building it took {:.1} ms",
        plist.len() as f64 / 1024.0,
        rayon::current_num_threads(),
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e6 / n as f64,
        plist_times[plist_times.len() / 2].as_secs_f64() * 1e3,
        build.as_secs_f64() * 1e3,
    );
}
