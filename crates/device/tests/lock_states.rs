//! Spec §7 items 2–3: what each lock state can read and write.

mod common;

use common::*;
use device::{Device, Error, LockState};

const HOME: &str = "HomeDomain";

fn unavailable<T: std::fmt::Debug>(r: device::Result<T>, class: PC) {
    match r {
        Err(Error::ClassUnavailable { class: c, .. }) => assert_eq!(c, class),
        other => panic!("expected ClassUnavailable({class}), got {other:?}"),
    }
}

#[test]
fn file_classes_follow_the_lock_state() {
    let (_t, dir, mut dev) = new_device(Some(PASSCODE));
    assert_eq!(dev.state(), LockState::Unlocked);
    put(&mut dev, HOME, "a.txt", b"class A data", PC::COMPLETE);
    put(
        &mut dev,
        HOME,
        "b.txt",
        b"class B data",
        PC::COMPLETE_UNLESS_OPEN,
    );
    put(
        &mut dev,
        HOME,
        "c.txt",
        b"class C data",
        PC::UNTIL_FIRST_AUTH,
    );
    put(&mut dev, HOME, "d.txt", b"class D data", PC::NONE);
    for f in ["a", "b", "c", "d"] {
        assert!(get(&dev, HOME, &format!("{f}.txt")).is_ok());
    }

    // Locked: A and B unreadable, C and D readable; B can still be created.
    let open_b = dev.open_file(HOME, "b.txt").unwrap();
    dev.lock().unwrap();
    assert_eq!(dev.state(), LockState::Locked);
    unavailable(get(&dev, HOME, "a.txt"), PC::COMPLETE);
    unavailable(get(&dev, HOME, "b.txt"), PC::COMPLETE_UNLESS_OPEN);
    assert_eq!(get(&dev, HOME, "c.txt").unwrap(), b"class C data");
    assert_eq!(get(&dev, HOME, "d.txt").unwrap(), b"class D data");
    // An already-open class-B file stays usable.
    let mut out = Vec::new();
    open_b.read_to(&mut out).unwrap();
    assert_eq!(out, b"class B data");
    drop(open_b);
    put(
        &mut dev,
        HOME,
        "new-b.txt",
        b"written while locked",
        PC::COMPLETE_UNLESS_OPEN,
    );
    unavailable(get(&dev, HOME, "new-b.txt"), PC::COMPLETE_UNLESS_OPEN);
    // Class A cannot be created while locked; C and D can.
    let r = dev.put(
        HOME,
        "a2.txt",
        &mut &b"x"[..],
        &device::PutOptions {
            class: PC::COMPLETE,
            ..Default::default()
        },
    );
    unavailable(r, PC::COMPLETE);
    put(
        &mut dev,
        HOME,
        "c2.txt",
        b"c while locked",
        PC::UNTIL_FIRST_AUTH,
    );
    // Metadata never needs a class key.
    assert_eq!(dev.entries(Some(HOME)).unwrap().len(), 6);

    // The lock state survives reopening the folder (the session is the SEP's memory).
    drop(dev);
    let mut dev = Device::open(&dir).unwrap();
    assert_eq!(dev.state(), LockState::Locked);
    unavailable(get(&dev, HOME, "a.txt"), PC::COMPLETE);
    assert!(get(&dev, HOME, "c.txt").is_ok());

    // Unlock: everything, including the class-B file created while locked.
    dev.unlock(PASSCODE).unwrap();
    assert_eq!(get(&dev, HOME, "a.txt").unwrap(), b"class A data");
    assert_eq!(
        get(&dev, HOME, "new-b.txt").unwrap(),
        b"written while locked"
    );

    // Restart: before first unlock, only D.
    dev.restart().unwrap();
    assert_eq!(dev.state(), LockState::BeforeFirstUnlock);
    unavailable(get(&dev, HOME, "a.txt"), PC::COMPLETE);
    unavailable(get(&dev, HOME, "b.txt"), PC::COMPLETE_UNLESS_OPEN);
    unavailable(get(&dev, HOME, "c.txt"), PC::UNTIL_FIRST_AUTH);
    assert_eq!(get(&dev, HOME, "d.txt").unwrap(), b"class D data");
    let dev2 = Device::open(&dir).unwrap();
    assert_eq!(dev2.state(), LockState::BeforeFirstUnlock);
    // Locking before first unlock changes nothing.
    dev.lock().unwrap();
    assert_eq!(dev.state(), LockState::BeforeFirstUnlock);
    dev.unlock(PASSCODE).unwrap();
    dev.lock().unwrap();
    // C readable after first unlock, until restart.
    assert_eq!(get(&dev, HOME, "c.txt").unwrap(), b"class C data");
}

#[test]
fn keychain_classes_follow_the_lock_state() {
    let (_t, _dir, mut dev) = new_device(Some(PASSCODE));
    let mut rows = Vec::new();
    for class in 6..=12 {
        let svc = format!("svc{class}");
        rows.push(
            dev.keychain_add("genp", PC(class), password_item(&svc, svc.as_bytes()))
                .unwrap(),
        );
    }
    let avail = |dev: &device::Device| {
        let mut v: Vec<u32> = dev
            .keychain_items()
            .unwrap()
            .iter()
            .map(|i| i.class.0)
            .collect();
        v.sort();
        v
    };
    assert_eq!(avail(&dev), vec![6, 7, 8, 9, 10, 11, 12]);
    let item = dev.keychain_item(rows[0]).unwrap();
    assert_eq!(item.table, "genp");
    match &item.attributes["v_Data"] {
        device::DerValue::Data(d) => assert_eq!(&d[..], b"svc6"),
        other => panic!("{other:?}"),
    }
    assert!(item.attributes.contains_key("pdmn"));
    dev.lock().unwrap();
    assert_eq!(avail(&dev), vec![7, 8, 10, 11]);
    for (i, class) in (6..=12).enumerate() {
        let r = dev.keychain_item(rows[i]);
        if [6, 9, 12].contains(&class) {
            unavailable(r, PC(class));
        } else {
            r.unwrap();
        }
    }
    // Listing without secrets works in every state.
    let all = dev.keychain_all().unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(all.iter().filter(|r| r.3).count(), 4);
    dev.restart().unwrap();
    assert_eq!(avail(&dev), vec![8, 11]);
    dev.unlock(PASSCODE).unwrap();
    assert_eq!(avail(&dev), vec![6, 7, 8, 9, 10, 11, 12]);
}

#[test]
fn device_without_passcode_is_always_unlocked() {
    let (_t, dir, mut dev) = new_device(None);
    assert!(!dev.passcode_set());
    put(&mut dev, HOME, "a.txt", b"A", PC::COMPLETE);
    dev.lock().unwrap();
    assert_eq!(dev.state(), LockState::Unlocked);
    dev.restart().unwrap();
    assert_eq!(dev.state(), LockState::Unlocked);
    assert_eq!(get(&dev, HOME, "a.txt").unwrap(), b"A");
    dev.unlock(b"").unwrap();
    std::fs::remove_file(dir.join("run/session")).unwrap();
    let dev = Device::open(&dir).unwrap();
    assert_eq!(dev.state(), LockState::Unlocked);
    assert_eq!(get(&dev, HOME, "a.txt").unwrap(), b"A");
}
