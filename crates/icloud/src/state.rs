//! What an enrolled device remembers of its cloud backup, kept device-bound
//! ([`device::Device::bound_save`]: sealed under a UID-derived key, readable in every lock
//! state, by this device only): the service, the account, its backup token, the service key
//! and its generation, its identity key, and the newest keybag generation it has seen (to
//! detect a server that rolls it back; snapshots are checked by the vault's chain state,
//! [`crate::backup::chain_state_path`]).

use dataprotection::Key256;
use device::Device;
use zeroize::{Zeroize, Zeroizing};

use crate::custody::Account;
use crate::keys::ServiceKey;
use crate::{Error, Result};

const NAME: &str = "icloud";

/// A device's cloud state.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct CloudState {
    /// `https://host:port`.
    pub server: String,
    /// The pinned certificate fingerprint.
    pub fingerprint: Option<String>,
    /// The account.
    pub account: String,
    /// This device's id on the service.
    pub device_id: String,
    /// Its `backup` token.
    pub token: String,
    /// The service key (hex) and its generation.
    pub service_key: String,
    /// Generation of `service_key`.
    pub generation: u64,
    /// The device's X25519 identity key (hex).
    pub identity: String,
    /// The newest generation of this device's keybag record seen.
    pub keybag_generation: u64,
}

impl Drop for CloudState {
    fn drop(&mut self) {
        self.token.zeroize();
        self.service_key.zeroize();
        self.identity.zeroize();
    }
}

impl std::fmt::Debug for CloudState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudState")
            .field("server", &self.server)
            .field("account", &self.account)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl CloudState {
    /// The device's state (`None` when it never enabled cloud backup).
    pub fn load(device: &Device) -> Result<Option<CloudState>> {
        match device.bound_load(NAME)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Invalid(format!("the device's cloud state: {e}"))),
        }
    }

    /// The state, or an error saying cloud backup is off.
    pub fn require(device: &Device) -> Result<CloudState> {
        Self::load(device)?.ok_or_else(|| {
            Error::Invalid(format!(
                "{}: iCloud-style backup is not enabled on this device (`keybag device cloud enable`)",
                device.dir().display()
            ))
        })
    }

    /// Saves it (device-bound).
    pub fn save(&self, device: &Device) -> Result<()> {
        let b = Zeroizing::new(serde_json::to_vec(self).expect("json"));
        Ok(device.bound_save(NAME, &b)?)
    }

    /// Deletes it.
    pub fn delete(device: &Device) -> Result<()> {
        Ok(device.bound_delete(NAME)?)
    }

    /// The service key.
    pub fn service_key(&self) -> Result<ServiceKey> {
        Ok(ServiceKey {
            key: Key256::from_hex(&self.service_key)
                .map_err(|e| Error::Invalid(format!("cloud state: {e}")))?,
            generation: self.generation,
        })
    }

    /// Replaces the service key.
    pub fn set_service_key(&mut self, svk: &ServiceKey) {
        self.service_key.zeroize();
        self.service_key = svk.key.to_hex();
        self.generation = svk.generation;
    }

    /// The identity key.
    pub fn identity(&self) -> Result<Key256> {
        Key256::from_hex(&self.identity).map_err(|e| Error::Invalid(format!("cloud state: {e}")))
    }

    /// The account through the device's backup token.
    pub fn account(&self) -> Result<Account> {
        Account::with_token(
            &self.server,
            self.fingerprint.as_deref(),
            &self.account,
            Zeroizing::new(self.token.clone()),
        )
    }
}
