//! `device import` of a backup keybag did not make: the independent encrypted fixture
//! (testdata/enc-small-public, ground truth in its .expected.json).

use std::path::PathBuf;

use dataprotection::{DeviceKey, ProtectionClass};
use device::import::{ImportOptions, ImportReport};
use device::{Device, EntryKind};
use serde_json::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(testdata("enc-small-public.expected.json")).unwrap())
        .unwrap()
}

fn import(device_key: Option<&str>) -> (tempfile::TempDir, Device, ImportReport) {
    let exp = expected();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("phone");
    let opts = ImportOptions {
        password: Some(Zeroizing::new(
            exp["password"].as_str().unwrap().as_bytes().to_vec(),
        )),
        device_key: device_key.map(|k| DeviceKey::from_hex(k).unwrap()),
        passcode_iterations: Some(2_000),
        ..ImportOptions::default()
    };
    let report = device::import::import(&dir, &testdata("enc-small-public"), &opts).unwrap();
    (tmp, Device::open(&dir).unwrap(), report)
}

#[test]
fn imports_every_file_of_the_independent_fixture_byte_identical() {
    let exp = expected();
    let (_tmp, dev, report) = import(None);
    assert_eq!(dev.name(), exp["device"]["DeviceName"].as_str().unwrap());
    assert_eq!(
        dev.ios_version(),
        exp["device"]["ProductVersion"].as_str().unwrap()
    );
    let mut imported = 0;
    for r in exp["records"].as_array().unwrap() {
        if r["kind"] != "file" {
            continue;
        }
        let (domain, path) = (
            r["domain"].as_str().unwrap(),
            r["relativePath"].as_str().unwrap(),
        );
        if (domain, path) == ("KeychainDomain", "keychain-backup.plist") {
            // On iOS this file exists only while a backup is made (spec §8.1): import turns
            // it into device keychain items (next test) instead of keeping it as a file.
            assert!(dev.get(domain, path, &mut Vec::new()).is_err());
            continue;
        }
        let mut out = Vec::new();
        dev.get(domain, path, &mut out)
            .unwrap_or_else(|e| panic!("{domain}/{path} not imported: {e}"));
        assert_eq!(
            hex::encode(Sha256::digest(&out)),
            r["sha256"].as_str().unwrap(),
            "{domain}/{path}"
        );
        let entry = dev
            .entries(Some(domain))
            .unwrap()
            .into_iter()
            .find(|e| e.path == path)
            .unwrap();
        assert_eq!(entry.kind, EntryKind::File);
        assert_eq!(
            entry.class,
            ProtectionClass(r["protection_class"].as_u64().unwrap() as u32),
            "{domain}/{path} keeps its class"
        );
        assert_eq!(entry.mtime, r["mtime"].as_i64().unwrap());
        imported += 1;
    }
    assert_eq!(imported, 15, "16 files, less the transient keychain export");
    assert_eq!(report.files, 15);
}

#[test]
fn this_device_only_items_stay_sealed_without_the_original_device_key() {
    let exp = expected();
    let items = exp["keychain"]["items"].as_array().unwrap();
    let secret_of = |table: &str, class: u32| -> Vec<u8> {
        let it = items
            .iter()
            .find(|i| i["table"] == table && i["class"] == class)
            .unwrap();
        hex::decode(it["secret_hex"].as_str().unwrap()).unwrap()
    };

    let (_t1, dev, report) = import(None);
    let got = dev.keychain_items().unwrap();
    let mut classes: Vec<u32> = got.iter().map(|i| i.class.0).collect();
    classes.sort();
    assert_eq!(classes, vec![6, 7, 8], "only the migratory items open");
    for it in &got {
        match it.attributes.get("v_Data") {
            Some(device::DerValue::Data(d)) => {
                assert_eq!(&d[..], &secret_of(&it.table, it.class.0)[..])
            }
            other => panic!("item without v_Data: {other:?}"),
        }
    }
    let sealed: Vec<_> = report
        .skipped
        .iter()
        .filter(|s| s.reason.contains("0x835") || s.reason.to_lowercase().contains("sealed"))
        .collect();
    assert_eq!(sealed.len(), 3, "{:?}", report.skipped);

    let (_t2, dev, _) = import(Some(exp["device_key_835_hex"].as_str().unwrap()));
    let got = dev.keychain_items().unwrap();
    let mut classes: Vec<u32> = got.iter().map(|i| i.class.0).collect();
    classes.sort();
    assert_eq!(
        classes,
        vec![6, 7, 8, 9, 10, 11],
        "the device key opens all six"
    );
    for it in &got {
        match it.attributes.get("v_Data") {
            Some(device::DerValue::Data(d)) => {
                assert_eq!(&d[..], &secret_of(&it.table, it.class.0)[..])
            }
            other => panic!("item without v_Data: {other:?}"),
        }
    }
}
