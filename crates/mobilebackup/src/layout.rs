//! Names and rules of the backup folder: fileIDs, blob paths, the Manifest.db schema,
//! and the checks that keep hostile records from escaping an output folder.

use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

/// `Manifest.plist`.
pub const MANIFEST_PLIST: &str = "Manifest.plist";
/// `Manifest.db`.
pub const MANIFEST_DB: &str = "Manifest.db";
/// `Info.plist`.
pub const INFO_PLIST: &str = "Info.plist";
/// `Status.plist`.
pub const STATUS_PLIST: &str = "Status.plist";

/// `Files.flags` of a regular file.
pub const FLAG_FILE: i64 = 1;
/// `Files.flags` of a directory.
pub const FLAG_DIR: i64 = 2;
/// `Files.flags` of a symbolic link.
pub const FLAG_SYMLINK: i64 = 4;

/// The `Manifest.db` schema as iOS writes it (spec §6.1).
pub const SCHEMA: &str = "CREATE TABLE Files (fileID TEXT PRIMARY KEY, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB);
CREATE INDEX FilesDomainIdx ON Files(domain);
CREATE INDEX FilesRelativePathIdx ON Files(relativePath);
CREATE INDEX FilesFlagsIdx ON Files(flags);
CREATE TABLE Properties (key TEXT PRIMARY KEY, value BLOB);";

/// `fileID = hex(SHA-1(domain ‖ "-" ‖ relativePath))`, bytes hashed as stored.
pub fn file_id(domain: &str, relative_path: &str) -> String {
    let mut h = Sha1::new();
    h.update(domain.as_bytes());
    h.update(b"-");
    h.update(relative_path.as_bytes());
    hex::encode(h.finalize())
}

/// True when `id` is 40 lowercase hex digits (so it cannot name anything but a blob).
pub fn is_valid_file_id(id: &str) -> bool {
    id.len() == 40
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where the blob of `file_id` lives under `root`; `None` for an invalid fileID.
pub fn blob_path(root: &Path, file_id: &str) -> Option<PathBuf> {
    is_valid_file_id(file_id).then(|| root.join(&file_id[..2]).join(file_id))
}

/// Checks a domain name: non-empty, no `/`, `\`, NUL, and not `.` or `..`.
pub fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("empty domain".into());
    }
    if domain == "." || domain == ".." {
        return Err(format!("domain {domain:?} is a path component"));
    }
    if let Some(c) = domain.chars().find(|c| matches!(c, '/' | '\\' | '\0')) {
        return Err(format!("domain contains {c:?}"));
    }
    Ok(())
}

/// Checks a relative path: no leading `/`, no `.`/`..`/empty components, no `\` or NUL.
/// The empty path (a domain's root) is valid.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    if path.starts_with('/') {
        return Err("absolute path".into());
    }
    if path.contains('\0') {
        return Err("path contains NUL".into());
    }
    if path.contains('\\') {
        return Err("path contains a backslash".into());
    }
    for comp in path.split('/') {
        match comp {
            "" => return Err("path has an empty component".into()),
            "." | ".." => return Err(format!("path has a {comp:?} component")),
            _ => {}
        }
    }
    Ok(())
}

/// `domain/relative_path` as a relative [`PathBuf`], after both checks.
pub fn safe_relative(domain: &str, relative_path: &str) -> Result<PathBuf, String> {
    check_domain(domain)?;
    check_relative_path(relative_path)?;
    let mut p = PathBuf::from(domain);
    if !relative_path.is_empty() {
        p.extend(relative_path.split('/'));
    }
    Ok(p)
}

/// Resolves a symlink `target` (as stored in the record) that lives at
/// `link` (relative to the output root) to a path relative to the output root,
/// or `None` when it would leave it. Relative targets are resolved lexically
/// from the link's folder; absolute device paths are mapped through the
/// link's own domain root (e.g. `/var/mobile/` for `HomeDomain`).
pub fn resolve_link_target(domain: &str, link: &Path, target: &str) -> Option<PathBuf> {
    if target.contains('\0') || target.contains('\\') {
        return None;
    }
    let (mut stack, rest): (Vec<String>, &str) = if let Some(abs) = target.strip_prefix('/') {
        let root = domain_device_root(domain)?.trim_start_matches('/');
        let inner = abs.strip_prefix(root)?;
        let inner = if inner.is_empty() {
            inner
        } else {
            inner.strip_prefix('/')?
        };
        (vec![domain.to_string()], inner)
    } else {
        let parent = link.parent()?;
        let comps = parent
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        (comps, target)
    };
    for comp in rest.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                // Never climb out of the domain folder.
                if stack.len() <= 1 {
                    return None;
                }
                stack.pop();
            }
            c => stack.push(c.to_string()),
        }
    }
    Some(stack.iter().collect())
}

/// The device folder a domain is rooted at (spec §1.4), for the domains with a fixed root.
pub fn domain_device_root(domain: &str) -> Option<&'static str> {
    Some(match domain {
        "HomeDomain" | "CameraRollDomain" | "MediaDomain" | "TonesDomain" | "KeyboardDomain"
        | "HomeKitDomain" => "/var/mobile",
        "HealthDomain" => "/var/mobile/Library",
        "BooksDomain" => "/var/mobile/Media/Books",
        "RootDomain" => "/var/root",
        "SystemPreferencesDomain" => "/var/preferences",
        "WirelessDomain" => "/var/wireless",
        "KeychainDomain" => "/var/Keychains",
        "MobileDeviceDomain" => "/var/MobileDevice",
        "ManagedPreferencesDomain" => "/var/Managed Preferences",
        "InstallDomain" => "/var/installd",
        "DatabaseDomain" => "/var/db",
        "ProtectedDomain" => "/var/protected",
        "NetworkDomain" => "/var/networkd",
        _ => return None,
    })
}

/// Domains whose regular files carry a `Digest` in device-made backups (spec §6.2):
/// the "system" domains, not app containers, camera roll or media.
pub fn domain_has_digest(domain: &str) -> bool {
    !(domain.starts_with("AppDomain")
        || domain.starts_with("SysContainerDomain")
        || domain.starts_with("SysSharedContainerDomain")
        || domain == "CameraRollDomain"
        || domain == "MediaDomain")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_file_id_vectors() {
        assert_eq!(
            file_id("HomeDomain", "Library/SMS/sms.db"),
            "3d0d7e5fb2ce288813306e4d4636395e047a3d28"
        );
        assert_eq!(
            file_id("KeychainDomain", "keychain-backup.plist"),
            "51a4616e576dd33cd2abadfea874eb8ff246bf0e"
        );
    }

    #[test]
    fn file_id_validation() {
        assert!(is_valid_file_id("3d0d7e5fb2ce288813306e4d4636395e047a3d28"));
        assert!(!is_valid_file_id(
            "3D0D7E5FB2CE288813306E4D4636395E047A3D28"
        ));
        assert!(!is_valid_file_id(
            "../../../../../../etc/passwd/aaaaaaaaaaa"
        ));
        assert!(!is_valid_file_id("3d0d"));
        assert!(blob_path(Path::new("/b"), "..").is_none());
        assert_eq!(
            blob_path(Path::new("/b"), "3d0d7e5fb2ce288813306e4d4636395e047a3d28").unwrap(),
            Path::new("/b/3d/3d0d7e5fb2ce288813306e4d4636395e047a3d28")
        );
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "/etc/passwd",
            "a/../../x",
            "..",
            "a/./b",
            "a//b",
            "a\\b",
            "a\0b",
            "a/",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad:?}");
        }
        for bad in ["", ".", "..", "a/b", "a\\b", "x\0"] {
            assert!(check_domain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            safe_relative("HomeDomain", "").unwrap(),
            Path::new("HomeDomain")
        );
        assert_eq!(
            safe_relative("HomeDomain", "Library/Résumé 2024.txt").unwrap(),
            Path::new("HomeDomain/Library/Résumé 2024.txt")
        );
    }

    #[test]
    fn link_targets() {
        let link = Path::new("HomeDomain/Library/Logs/current");
        assert_eq!(
            resolve_link_target("HomeDomain", link, "a.log").unwrap(),
            Path::new("HomeDomain/Library/Logs/a.log")
        );
        assert_eq!(
            resolve_link_target("HomeDomain", link, "../x").unwrap(),
            Path::new("HomeDomain/Library/x")
        );
        assert!(resolve_link_target("HomeDomain", link, "../../../../etc").is_none());
        assert_eq!(
            resolve_link_target("HomeDomain", link, "/var/mobile/Library/Logs/b").unwrap(),
            Path::new("HomeDomain/Library/Logs/b")
        );
        assert!(resolve_link_target("HomeDomain", link, "/etc/passwd").is_none());
        assert!(resolve_link_target("HomeDomain", link, "/var/mobilex/a").is_none());
        assert!(resolve_link_target("AppDomain-x", link, "/var/containers/x").is_none());
        assert!(resolve_link_target("HomeDomain", link, "/var/mobile/../../etc").is_none());
    }
}
