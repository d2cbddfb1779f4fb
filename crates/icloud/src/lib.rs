#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! iCloud Backup's semantics on `keybag serve` (spec data-protection-design.md §2, §5, §7
//! items 16–25).
//!
//! * A device enrolled with [`enable`] gets an iCloud Backup keybag (TYPE 3, made by
//!   [`device::Device::cloud_enable`]): X25519 class keys whose public halves wrap every file
//!   key when the file is written, so a **locked** device backs up ([`backup::backup`]) by
//!   shipping stored ciphertexts and those wraps, unwrapping nothing.
//! * The keybag key is sealed under the account's **service key**, which also opens the
//!   account's vault repository. Who holds the service key is the custody mode
//!   ([`custody`]): **standard** (the service escrows it: the operator can restore, failing
//!   the mud-puddle test, as iCloud does) or **end-to-end** (trusted devices, a recovery key,
//!   recovery contacts; the operator can read nothing).
//! * [`restore::restore`] brings a snapshot back onto a device; keychain items only onto the
//!   device that made it. [`audit`] says which party can read what, and the tests prove each
//!   claim.

pub mod audit;
pub mod backup;
pub mod custody;
mod error;
pub mod keys;
pub mod model;
pub mod operator;
pub mod restore;
pub mod state;

use dataprotection::curve;
use device::Device;
use zeroize::Zeroizing;

pub use custody::{Account, KeyPath, Mode};
pub use error::{Error, Result};
pub use keys::{RecoveryKey, ServiceKey};
pub use state::CloudState;

/// What [`enable`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Enabled {
    /// This device's id on the service.
    pub device_id: String,
    /// True when this device set the account up (first device: standard custody).
    pub created: bool,
    /// Files given their cloud wrap now.
    pub files_wrapped: u64,
    /// Keychain items given theirs.
    pub items_wrapped: u64,
}

/// Enrols `device` (unlocked) in the account `owner` is logged into, and turns iCloud Backup
/// on: a device token of `backup` scope, an identity key, the cloud keybag (its record under
/// the service key). The first device of an account sets it up (new service key, repository,
/// standard custody); a later one needs the service key through `path` (e.g. approval by a
/// trusted device, the recovery key, or the escrow).
pub fn enable(device: &mut Device, owner: &Account, path: Option<&KeyPath<'_>>) -> Result<Enabled> {
    enable_inner(device, owner, |o| match path {
        Some(p) => custody::service_key(o, p),
        None => Err(Error::NoKey(format!(
            "{}: the account's backups are set up already: this device needs the service key \
             (approval by a trusted device, the recovery key, or in standard custody the escrow)",
            o.name
        ))),
    })
}

/// [`enable`] on an account set up already, with its service key obtained beforehand.
pub fn enable_with_key(device: &mut Device, owner: &Account, svk: &ServiceKey) -> Result<Enabled> {
    enable_inner(device, owner, |_| Ok(svk.clone()))
}

fn enable_inner(
    device: &mut Device,
    owner: &Account,
    key: impl FnOnce(&Account) -> Result<ServiceKey>,
) -> Result<Enabled> {
    if CloudState::load(device)?.is_some() && device.cloud_enabled() {
        return Err(Error::Invalid(format!(
            "{}: iCloud-style backup is already on (turn it off first to enrol again)",
            device.dir().display()
        )));
    }
    // The key first: a device that cannot get it is not enrolled at all.
    let existing = match owner.mode()? {
        None => None,
        Some(_) => Some(key(owner)?),
    };
    let identity = curve::new_private();
    let identity_pub = curve::public_of(&identity);
    let v = owner
        .client
        .add_device(&owner.token, device.name(), "backup")?;
    let device_id = v["device"]
        .as_str()
        .ok_or_else(|| Error::Invalid("the service did not name the device".into()))?
        .to_string();
    let token = Zeroizing::new(
        v["token"]
            .as_str()
            .ok_or_else(|| Error::Invalid("the service gave no token".into()))?
            .to_string(),
    );
    let (svk, created) = match existing {
        None => (custody::create(owner, &device_id, &identity_pub)?, true),
        Some(svk) => {
            custody::trust(owner, &svk, &device_id, &identity_pub)?;
            (svk, false)
        }
    };
    let made = device.cloud_enable()?;
    owner.put_keybag(
        &svk,
        &device_id,
        &keys::KeybagRecord {
            generation: 1,
            keybag_key: made.keybag_key,
            keybag: made.keybag,
        },
    )?;
    let state = CloudState {
        server: owner.base.clone(),
        fingerprint: owner.fingerprint.clone(),
        account: owner.name.clone(),
        device_id: device_id.clone(),
        token: token.to_string(),
        service_key: svk.key.to_hex(),
        generation: svk.generation,
        identity: identity.to_hex(),
        keybag_generation: 1,
    };
    state.save(device)?;
    Ok(Enabled {
        device_id,
        created,
        files_wrapped: made.files_wrapped,
        items_wrapped: made.items_wrapped,
    })
}

/// Turns iCloud Backup off on `device`: its cloud keybag and wraps go (files written from
/// now on are in no backup), and its state; the account keeps its snapshots.
pub fn disable(device: &mut Device) -> Result<()> {
    device.cloud_disable()?;
    let chains = backup::chain_state_path(device);
    if chains.is_file() {
        std::fs::remove_file(&chains)
            .map_err(|e| Error::Invalid(format!("{}: {e}", chains.display())))?;
    }
    CloudState::delete(device)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    id: String,
    identity: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.identity);
    }
}

const PENDING: &str = "icloud-pending";

/// A new device asks the account's trusted devices for the service key: it makes an identity
/// key (kept device-bound) and leaves its public half as `pending.<id>`; returns the id. A
/// trusted device then runs [`approve`], and this device gets the key with [`approved_key`].
pub fn request_approval(device: &Device, owner: &Account) -> Result<String> {
    let identity = curve::new_private();
    let id = format!("new-{}", &dataprotection::Key256::random().to_hex()[..16]);
    let p = Pending {
        id: id.clone(),
        identity: identity.to_hex(),
    };
    device.bound_save(
        PENDING,
        &Zeroizing::new(serde_json::to_vec(&p).expect("json")),
    )?;
    custody::request_approval(owner, &id, &curve::public_of(&identity))?;
    Ok(id)
}

/// The service key, once a trusted device approved this device's request.
pub fn approved_key(device: &Device, owner: &Account) -> Result<ServiceKey> {
    let b = device.bound_load(PENDING)?.ok_or_else(|| {
        Error::NoKey("this device has not asked for approval (`request-approval`)".into())
    })?;
    let p: Pending = serde_json::from_slice(&b)
        .map_err(|e| Error::Invalid(format!("the device's approval request: {e}")))?;
    let identity = dataprotection::Key256::from_hex(&p.identity)
        .map_err(|e| Error::Invalid(format!("the device's approval request: {e}")))?;
    custody::service_key(
        owner,
        &KeyPath::Trusted {
            device: &p.id,
            identity: &identity,
        },
    )
    .map_err(|e| match e {
        Error::NoKey(_) => Error::NoKey(format!(
            "{}: not approved yet: run `keybag device cloud approve` on a trusted device",
            p.id
        )),
        e => e,
    })
}

/// A trusted device approves every device that asked (see [`request_approval`]).
pub fn approve(device: &Device, owner: &Account) -> Result<Vec<String>> {
    let svk = device_service_key(device, owner)?;
    custody::approve_pending(owner, &svk)
}

/// The service key of an enrolled device (refreshed through its trusted-device record when
/// another device rotated it).
pub fn device_service_key(device: &Device, owner: &Account) -> Result<ServiceKey> {
    let mut state = CloudState::require(device)?;
    let svk = state.service_key()?;
    let fresh = match owner.mode()? {
        Some((_, g)) if g > svk.generation => {
            let identity = state.identity()?;
            custody::service_key(
                owner,
                &KeyPath::Trusted {
                    device: &state.device_id,
                    identity: &identity,
                },
            )?
        }
        _ => svk,
    };
    if fresh.generation != state.generation {
        state.set_service_key(&fresh);
        state.save(device)?;
    }
    Ok(fresh)
}
