//! `mobilebackup::audit` on the encrypted fixture, through the library API.

use std::path::PathBuf;

use dataprotection::{DeviceKey, Passkey};
use mobilebackup::audit::{audit, AuditOptions, KeychainStatus, Level, Verdict};
use mobilebackup::Backup;

const PASSKEY: &str = "44a316ca4293d559aa3a068ebb22105607824ea61d611baf62cd3e83c0c796c7";
const DEVICE_KEY: &str = "793b52fd8ca0b58f37cfdde966237ceb";

fn enc() -> Backup {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/enc-small-public");
    Backup::open(root).unwrap()
}

#[test]
fn report_facts_and_no_password_in_it() {
    let mut b = enc();
    let device = DeviceKey::from_hex(DEVICE_KEY).unwrap();
    b.unlock_with_passkey(&Passkey::from_hex(PASSKEY).unwrap(), Some(&device))
        .unwrap();
    // The password is only rated here (the backup is already unlocked). It is the
    // serial number: random-looking, but a zxcvbn user input, so weak.
    let password = b"F2LBG516TJCP";
    let calls = std::sync::atomic::AtomicU64::new(0);
    let progress = |_bytes: u64| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let opts = AuditOptions {
        password: Some(password),
        sample_rounds: 20_000,
        progress: Some(&progress),
        ..AuditOptions::default()
    };
    let r = audit(&b, &opts).unwrap();
    assert_eq!(calls.into_inner(), 16, "one progress call per file");
    assert!(!r.has_damage());
    assert_eq!(r.keychain.status, KeychainStatus::Read);
    assert_eq!(r.lost_on_new_device.items, 3);
    assert_eq!(r.lost_on_new_device.named, 3);
    assert_eq!(
        r.encryption
            .guess_cost
            .as_ref()
            .unwrap()
            .sample_sha256_rounds,
        20_000
    );
    let s = r.encryption.password_strength.as_ref().unwrap();
    assert!(s.score <= 2, "{s:?}");
    assert!(r
        .summary
        .iter()
        .any(|f| f.level == Level::Warning && f.title.starts_with("Password strength")));
    let akpu = &r.never_backed_up[0];
    assert_eq!(
        (akpu.id, akpu.verdict),
        ("akpu-keychain-items", Verdict::Absent)
    );
    let json = serde_json::to_string(&r).unwrap().to_lowercase();
    for needle in ["f2lbg516tjcp", "pw-aku-4", "pw-ak-1-hotel"] {
        assert!(!json.contains(needle), "{needle} in the report");
    }
}

#[test]
fn locked_backup_is_an_error_not_a_report() {
    let b = enc();
    let e = audit(&b, &AuditOptions::default()).unwrap_err();
    assert!(matches!(e, mobilebackup::Error::Locked { .. }), "{e}");
}
