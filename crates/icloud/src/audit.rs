//! `keybag cloud audit`: for each data category and each party, can it read? Every claim here
//! is checked by a test (crates/icloud/tests/scenarios.rs and dump.rs) against what the party
//! actually gets.

use crate::custody::Mode;

/// Who might read.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Party {
    /// The device that made the backup (its UID).
    ThisDevice,
    /// Another device of the account, trusted (enrolled, or approved by a trusted one).
    OtherDevice,
    /// A new device with the recovery key.
    RecoveryKey,
    /// The operator running the service.
    Operator,
    /// Whoever gets the account after an operator-run password reset.
    AfterPasswordReset,
    /// A recovery contact on their own.
    RecoveryContact,
    /// A recovery contact and the operator together.
    ContactAndOperator,
    /// Whoever holds a full dump of the service (database and objects).
    ServerDump,
    /// A server dump together with the device's flash without its UID (seed 001).
    ServerDumpAndNand,
}

impl Party {
    /// Every party, in table order.
    pub const ALL: [Party; 9] = [
        Party::ThisDevice,
        Party::OtherDevice,
        Party::RecoveryKey,
        Party::Operator,
        Party::AfterPasswordReset,
        Party::RecoveryContact,
        Party::ContactAndOperator,
        Party::ServerDump,
        Party::ServerDumpAndNand,
    ];

    /// For the table.
    pub fn label(self) -> &'static str {
        match self {
            Party::ThisDevice => "this device",
            Party::OtherDevice => "another trusted device",
            Party::RecoveryKey => "new device + recovery key",
            Party::Operator => "the operator",
            Party::AfterPasswordReset => "after an operator password reset",
            Party::RecoveryContact => "a recovery contact alone",
            Party::ContactAndOperator => "recovery contact + operator",
            Party::ServerDump => "a full server dump",
            Party::ServerDumpAndNand => "server dump + device flash (no UID)",
        }
    }
}

/// What might be read.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Backed-up files, classes A, B, C, D (the same answer for all four: every class is
    /// wrapped to the cloud keybag).
    Files,
    /// Files a backup leaves out (Caches, tmp, flagged) or written after backup was off.
    LeftOut,
    /// Keychain items (ak … dku; akpu are never exported).
    Keychain,
    /// File names, sizes, dates, the device's name and model inside snapshots.
    Names,
    /// That the account has devices and snapshots, when, and their sizes.
    Traffic,
}

impl Category {
    /// Every category, in table order.
    pub const ALL: [Category; 5] = [
        Category::Files,
        Category::LeftOut,
        Category::Keychain,
        Category::Names,
        Category::Traffic,
    ];

    /// For the table.
    pub fn label(self) -> &'static str {
        match self {
            Category::Files => "files (A, B, C, D)",
            Category::LeftOut => "files left out of backups",
            Category::Keychain => "keychain",
            Category::Names => "names, sizes, device",
            Category::Traffic => "snapshot times and sizes",
        }
    }
}

/// Whether `party` can read `category` of an account in `mode`, and why.
pub fn can_read(mode: Mode, party: Party, category: Category) -> (bool, &'static str) {
    use Category::*;
    use Party::*;
    let has_key = match party {
        ThisDevice | OtherDevice | RecoveryKey | ContactAndOperator => true,
        Operator | AfterPasswordReset | ServerDump | ServerDumpAndNand => mode == Mode::Standard,
        RecoveryContact => false,
    };
    match category {
        Traffic => match party {
            RecoveryContact => (false, "holds only a sealed packet"),
            ThisDevice | OtherDevice | RecoveryKey => (true, "holds the service key"),
            _ => (
                true,
                "the service stores the objects and sees their sizes and times",
            ),
        },
        LeftOut => (
            false,
            "never uploaded, and no cloud wrap exists for them: only the device's own class \
             keys (UID-bound) open them",
        ),
        Keychain => match party {
            ThisDevice => (
                true,
                "its keychain class keys are wrapped with this device's UID",
            ),
            _ => (
                false,
                "the keychain class keys are wrapped with the source device's UID (spec §5.2)",
            ),
        },
        Files | Names => {
            if has_key {
                (
                    true,
                    match party {
                        ThisDevice | OtherDevice => "a trusted device holds the service key",
                        RecoveryKey => "the recovery key opens the service key",
                        ContactAndOperator => "the contact's code and the service's half together",
                        _ => "standard custody: the service escrows the service key",
                    },
                )
            } else if party == RecoveryContact {
                (false, "the packet needs the service's half to open")
            } else {
                (
                    false,
                    "end-to-end custody: the service holds no key (escrow deleted, keys rotated)",
                )
            }
        }
    }
}

/// The mud-puddle verdict (spec §5.4): with every device and password lost, can the data
/// still come back through the provider?
pub fn mud_puddle(mode: Mode) -> (&'static str, &'static str) {
    match mode {
        Mode::Standard => (
            "FAILS",
            "after a password reset the service's escrow restores everything: the operator \
             (and whoever can compel it) can read the backups, as with iCloud's standard \
             data protection",
        ),
        Mode::EndToEnd => (
            "PASSES",
            "without a trusted device, the recovery key or a recovery contact the backups are \
             gone; the operator reads nothing (like Advanced Data Protection)",
        ),
    }
}
