//! Protection classes: files 1–5, keychain 6–12.

use std::fmt;

/// A Data Protection class id as stored in keybags (`CLAS`), MBFile records
/// (`ProtectionClass`) and wrapped keys (the `u32le` prefix).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtectionClass(pub u32);

impl ProtectionClass {
    /// `NSFileProtectionComplete` (A).
    pub const COMPLETE: Self = Self(1);
    /// `NSFileProtectionCompleteUnlessOpen` (B).
    pub const COMPLETE_UNLESS_OPEN: Self = Self(2);
    /// `NSFileProtectionCompleteUntilFirstUserAuthentication` (C).
    pub const UNTIL_FIRST_AUTH: Self = Self(3);
    /// `NSFileProtectionNone` (D).
    pub const NONE: Self = Self(4);
    /// Class 5, used by the system (recovery); sealed with the device key.
    pub const RECOVERY: Self = Self(5);
    /// Keychain `WhenUnlocked` (ak).
    pub const KC_WHEN_UNLOCKED: Self = Self(6);
    /// Keychain `AfterFirstUnlock` (ck).
    pub const KC_AFTER_FIRST_UNLOCK: Self = Self(7);
    /// Keychain `Always` (dk).
    pub const KC_ALWAYS: Self = Self(8);
    /// Keychain `WhenUnlockedThisDeviceOnly` (aku).
    pub const KC_WHEN_UNLOCKED_TDO: Self = Self(9);
    /// Keychain `AfterFirstUnlockThisDeviceOnly` (cku).
    pub const KC_AFTER_FIRST_UNLOCK_TDO: Self = Self(10);
    /// Keychain `AlwaysThisDeviceOnly` (dku).
    pub const KC_ALWAYS_TDO: Self = Self(11);
    /// Keychain `WhenPasscodeSetThisDeviceOnly` (akpu); never in backups.
    pub const KC_PASSCODE_SET_TDO: Self = Self(12);

    /// Strips the high "generation" bits some producers set (keep the low 4 bits).
    pub fn masked(raw: u32) -> Self {
        Self(raw & 0xF)
    }

    /// Short name: `A`–`D` for file classes, `ak`…`akpu` for keychain classes.
    pub fn short_name(self) -> &'static str {
        match self.0 {
            1 => "A",
            2 => "B",
            3 => "C",
            4 => "D",
            5 => "5",
            6 => "ak",
            7 => "ck",
            8 => "dk",
            9 => "aku",
            10 => "cku",
            11 => "dku",
            12 => "akpu",
            0 => "-",
            _ => "?",
        }
    }

    /// Apple's constant name for the class.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "none recorded",
            1 => "NSFileProtectionComplete",
            2 => "NSFileProtectionCompleteUnlessOpen",
            3 => "NSFileProtectionCompleteUntilFirstUserAuthentication",
            4 => "NSFileProtectionNone",
            5 => "recovery (class 5)",
            6 => "kSecAttrAccessibleWhenUnlocked",
            7 => "kSecAttrAccessibleAfterFirstUnlock",
            8 => "kSecAttrAccessibleAlways",
            9 => "kSecAttrAccessibleWhenUnlockedThisDeviceOnly",
            10 => "kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly",
            11 => "kSecAttrAccessibleAlwaysThisDeviceOnly",
            12 => "kSecAttrAccessibleWhenPasscodeSetThisDeviceOnly",
            _ => "unknown class",
        }
    }

    /// True for keychain classes that never leave the device that made them.
    pub fn is_this_device_only(self) -> bool {
        matches!(self.0, 9..=12)
    }

    /// True for the file classes 1–4.
    pub fn is_file_class(self) -> bool {
        matches!(self.0, 1..=4)
    }
}

impl fmt::Display for ProtectionClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "class {} ({})", self.0, self.short_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_and_names() {
        assert_eq!(ProtectionClass::masked(0x8000_0003), ProtectionClass(3));
        assert_eq!(ProtectionClass(9).short_name(), "aku");
        assert!(ProtectionClass(10).is_this_device_only());
        assert!(!ProtectionClass(7).is_this_device_only());
        assert!(ProtectionClass(4).is_file_class());
        assert!(!ProtectionClass(6).is_file_class());
        assert_eq!(ProtectionClass(1).to_string(), "class 1 (A)");
    }
}
