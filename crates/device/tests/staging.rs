//! What a killed `device restore`, `device import` or `device backup` leaves beside its folder
//! is cleaned up by the next open, import or backup (found by the CLI's crash trials,
//! `crates/cli/tests/crash_trials.rs`): stale `.NAME.keybag-*-PID-…` siblings of processes
//! that are gone are removed, and a device or backup set aside by a swap cut between its two
//! renames is put back. A restore switches the folders with one atomic exchange.

mod common;

use std::path::Path;

use common::*;
use device::backup::{backup, BackupOptions};
use device::import::{import, ImportOptions};
use device::restore::{copy_tree, restore, RestoreOptions};
use device::Device;

const DOM: &str = "HomeDomain";

/// The id of a process that has exited (and been reaped).
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// A phone with one file whose content says which version it is.
fn phone(dir: &Path, version: &str) {
    let mut d = init(dir, None);
    put(
        &mut d,
        DOM,
        "Library/version.txt",
        version.as_bytes(),
        PC::NONE,
    );
}

fn version(dir: &Path) -> String {
    let d = Device::open(dir).unwrap();
    String::from_utf8(get(&d, DOM, "Library/version.txt").unwrap()).unwrap()
}

#[test]
fn a_restore_cut_between_its_two_renames_leaves_the_old_device() {
    // The fallback switch (no atomic exchange) killed after `phone → aside`, before
    // `staging → phone`: no `phone`, the old device aside, the restored one in staging.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("phone");
    phone(&dir, "old");
    let dead = dead_pid();
    let staging = tmp.path().join(format!(".phone.keybag-restore-{dead}-0"));
    copy_tree(&dir, &staging).unwrap();
    std::fs::rename(
        &dir,
        tmp.path()
            .join(format!(".phone.keybag-before-restore-{dead}-0")),
    )
    .unwrap();
    assert!(!dir.exists());
    // The next open puts the old device back and clears the rest.
    assert_eq!(version(&dir), "old");
    assert_eq!(names(tmp.path()), ["phone"]);
}

#[test]
fn the_next_open_removes_what_a_killed_restore_left() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("phone");
    phone(&dir, "restored");
    let dead = dead_pid();
    // Killed during the copy, and killed after the exchange (the old device under the
    // staging name), by two earlier runs.
    phone(
        &tmp.path().join(format!(".phone.keybag-restore-{dead}-0")),
        "half",
    );
    phone(
        &tmp.path().join(format!(".phone.keybag-restore-{dead}-1")),
        "old",
    );
    // A restore still running in this process is left alone.
    let live = tmp
        .path()
        .join(format!(".phone.keybag-restore-{}-0", std::process::id()));
    std::fs::create_dir(&live).unwrap();
    assert_eq!(version(&dir), "restored");
    assert_eq!(
        names(tmp.path()),
        [live.file_name().unwrap().to_str().unwrap(), "phone"]
    );
}

#[test]
fn a_restore_leaves_nothing_beside_the_device() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out, dir) = (
        tmp.path().join("src"),
        tmp.path().join("out"),
        tmp.path().join("phone"),
    );
    phone(&src, "from the backup");
    backup(
        &Device::open(&src).unwrap(),
        &out,
        &BackupOptions::default(),
    )
    .unwrap();
    phone(&dir, "before");
    let stale = tmp
        .path()
        .join(format!(".phone.keybag-before-restore-{}-0", dead_pid()));
    phone(&stale, "stale");
    restore(&dir, &out, &RestoreOptions::default()).unwrap();
    assert_eq!(version(&dir), "from the backup");
    assert_eq!(names(tmp.path()), ["out", "phone", "src"]);
}

#[test]
fn an_import_clears_the_staging_folder_of_a_killed_import() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out, dir) = (
        tmp.path().join("src"),
        tmp.path().join("out"),
        tmp.path().join("new"),
    );
    phone(&src, "imported");
    backup(
        &Device::open(&src).unwrap(),
        &out,
        &BackupOptions::default(),
    )
    .unwrap();
    let left = tmp
        .path()
        .join(format!(".new.keybag-import-{}-0", dead_pid()));
    std::fs::create_dir(&left).unwrap();
    std::fs::write(left.join("device.json"), b"{").unwrap();
    let opts = ImportOptions {
        passcode_iterations: Some(ITER),
        ..ImportOptions::default()
    };
    import(&dir, &out, &opts).unwrap();
    assert_eq!(version(&dir), "imported");
    assert_eq!(names(tmp.path()), ["new", "out", "src"]);
}

#[test]
fn a_backup_puts_back_a_backup_set_aside_by_a_cut_swap_and_clears_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, out) = (tmp.path().join("phone"), tmp.path().join("out"));
    phone(&dir, "v1");
    let dev = Device::open(&dir).unwrap();
    backup(&dev, &out, &BackupOptions::default()).unwrap();
    // A replacing backup killed between its two renames, and one killed while writing.
    let dead = dead_pid();
    std::fs::rename(&out, tmp.path().join(format!(".out.keybag-old-{dead}-0"))).unwrap();
    copy_tree(
        &tmp.path().join(format!(".out.keybag-old-{dead}-0")),
        &tmp.path().join(format!(".out.keybag-new-{dead}-0")),
    )
    .unwrap();
    std::fs::create_dir(tmp.path().join(format!(".out.keybag-partial-{dead}-xY"))).unwrap();
    // The writer's own staging folder of a replacement built as `.out.keybag-new-…`.
    std::fs::create_dir(tmp.path().join(format!(
        "..out.keybag-new-{dead}-0.keybag-partial-{dead}-zZ"
    )))
    .unwrap();
    let r = backup(&dev, &out, &BackupOptions::default()).unwrap();
    assert_eq!(
        r.reused, 1,
        "the backup found its earlier self back in place"
    );
    assert_eq!(names(tmp.path()), ["out", "phone"]);
    assert!(mobilebackup::Backup::open(&out).is_ok());
}
