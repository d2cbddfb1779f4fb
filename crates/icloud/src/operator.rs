//! What the operator can do with what the service stores (`keybag serve admin restore`):
//! in standard custody, open the account's escrow with the service's escrow key and restore
//! its newest device backup onto a device of its own. In end-to-end custody there is no
//! escrow record and this fails: that is the point.

use std::sync::Arc;

use dataprotection::Key256;
use device::Device;
use vault::storage::Storage;

use crate::custody::open_repo;
use crate::keys::{self, ServiceKey};
use crate::restore::{pick, restore_snapshot, RestoreReport};
use crate::{Error, Result};

/// The service key from the service's own records (the escrow), if custody is standard.
pub fn service_key(
    escrow_secret: &Key256,
    records: &[(String, Vec<u8>)],
    account: &str,
) -> Result<ServiceKey> {
    let sealed = records
        .iter()
        .find(|(n, _)| n == "escrow")
        .map(|(_, v)| v)
        .ok_or_else(|| {
            Error::NoKey(format!(
                "{account}: the service holds no escrow for this account (end-to-end custody, \
                 or no device backup): the operator cannot read its backups"
            ))
        })?;
    let plain =
        dataprotection::curve::open(escrow_secret, &server::custody_escrow_aad(account), sealed)
            .map_err(|_| Error::Crypto(format!("{account}: the escrow record does not open")))?;
    ServiceKey::from_bytes(&plain)
}

/// Restores the account's newest device backup (or `spec`) onto `target` from the service's
/// own stores.
pub fn restore(
    escrow_secret: &Key256,
    records: &[(String, Vec<u8>)],
    storage: Arc<dyn Storage>,
    account: &str,
    spec: Option<&str>,
    target: &mut Device,
) -> Result<RestoreReport> {
    let svk = service_key(escrow_secret, records, account)?;
    let repo = open_repo(storage, &svk)?;
    let (id, snap) = pick(&repo, spec, None)?;
    let name = format!("keybag.{}", snap.chain);
    let rec = records
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| Error::Invalid(format!("{account}: no keybag record {name}")))?;
    let kb = keys::open_keybag(&svk, &rec.1)?;
    restore_snapshot(&repo, &id, &snap, &kb, target)
}
