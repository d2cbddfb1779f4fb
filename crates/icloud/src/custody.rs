//! Custody: who holds the account's service key, through which path, and switching between
//! standard and end-to-end custody (spec §5.2–5.3).
//!
//! Records an account keeps on the service (names; values opaque to it but `escrow`):
//!
//! | record | what | who opens it |
//! |---|---|---|
//! | `mode` | `{"mode": "standard"|"e2e", "generation": n}` (JSON, server-visible) | anyone |
//! | `escrow` | the service key sealed to the service's escrow key (standard only) | the service, after a login; the operator |
//! | `trusted.<device>` | a trusted device's public key and the service key sealed to it | that device |
//! | `pending.<device>` | a new device's public key, awaiting approval | — |
//! | `recovery-key` | the recovery key's public key and the service key sealed to it | whoever has the 28 characters |
//! | `contact.<account>` | a contact key's public half, the AES key of its packet, the service key sealed to it | the contact's code and this record together |
//! | `contact-key` | this account's published key, for those who name it their contact | — |
//! | `packet.<owner>` | a recovery contact packet left by `<owner>`, sealed to `contact-key` | this account's device |
//! | `keybag.<device>` | one device's cloud keybag and its keybag key, under the service key | holders of the service key |

use std::sync::Arc;

use dataprotection::{curve, Key256};
use server::client::ServerClient;
use vault::keys::Secret;
use vault::storage::{HttpSettings, HttpStorage, Storage};
use vault::Repository;
use zeroize::Zeroizing;

use crate::keys::{self, aad, KeybagRecord, RecoveryKey, ServiceKey};
use crate::{Error, Result};

/// An account's custody mode.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// The service escrows the service key (like iCloud's standard data protection): fails
    /// the mud-puddle test.
    #[serde(rename = "standard")]
    Standard,
    /// Only trusted devices, the recovery key and recovery contacts hold it (like Advanced
    /// Data Protection): passes the mud-puddle test.
    #[serde(rename = "e2e")]
    EndToEnd,
}

impl Mode {
    /// `standard` or `e2e`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standard => "standard",
            Mode::EndToEnd => "e2e",
        }
    }

    /// Parses [`Mode::as_str`].
    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "standard" => Ok(Mode::Standard),
            "e2e" | "end-to-end" => Ok(Mode::EndToEnd),
            _ => Err(Error::Invalid(format!(
                "{s:?}: a custody mode is `standard` or `e2e`"
            ))),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ModeRecord {
    mode: Mode,
    generation: u64,
}

/// A session with one account on a service.
pub struct Account {
    /// The API client (certificate pinned).
    pub client: ServerClient,
    /// `https://host:port`.
    pub base: String,
    /// The pinned certificate fingerprint.
    pub fingerprint: Option<String>,
    /// The account's name.
    pub name: String,
    /// The token used (owner, restore or backup scope).
    pub token: Zeroizing<String>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Account({} at {}, token redacted)", self.name, self.base)
    }
}

impl Account {
    /// With a token already held.
    pub fn with_token(
        base: &str,
        fingerprint: Option<&str>,
        name: &str,
        token: Zeroizing<String>,
    ) -> Result<Account> {
        Ok(Account {
            client: shared_client(base, fingerprint)?,
            base: base.trim_end_matches('/').to_string(),
            fingerprint: fingerprint.map(str::to_owned),
            name: name.to_string(),
            token,
        })
    }

    /// Logs in (OPAQUE: the password never leaves this machine); the session is an owner's.
    pub fn login(
        base: &str,
        fingerprint: Option<&str>,
        name: &str,
        password: &[u8],
    ) -> Result<Account> {
        let client = shared_client(base, fingerprint)?;
        let s = client.login(name, password)?;
        Ok(Account {
            client,
            base: base.trim_end_matches('/').to_string(),
            fingerprint: fingerprint.map(str::to_owned),
            name: name.to_string(),
            token: s.token,
        })
    }

    /// The account's repository storage, through this session's token (and the account
    /// API's connections: one TLS handshake for both).
    pub fn storage(&self) -> Result<Arc<dyn Storage>> {
        let s = HttpSettings::new(&self.base, self.token.clone(), self.fingerprint.clone());
        Ok(Arc::new(HttpStorage::with_client(
            s,
            self.client.http().clone(),
        )?))
    }

    /// A record.
    pub fn get(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        Ok(self.client.custody_get(&self.token, name)?)
    }

    /// Stores a record.
    pub fn put(&self, name: &str, value: &[u8]) -> Result<()> {
        Ok(self.client.custody_put(&self.token, name, value)?)
    }

    /// Deletes a record.
    pub fn delete(&self, name: &str) -> Result<()> {
        Ok(self.client.custody_delete(&self.token, name)?)
    }

    /// Every record name.
    pub fn records(&self) -> Result<Vec<String>> {
        Ok(self.client.custody_list(&self.token)?)
    }

    /// The custody mode (`None` before the first device enabled cloud backup).
    pub fn mode(&self) -> Result<Option<(Mode, u64)>> {
        match self.get("mode")? {
            None => Ok(None),
            Some(b) => {
                let r: ModeRecord = serde_json::from_slice(&b)
                    .map_err(|e| Error::Invalid(format!("the account's mode record: {e}")))?;
                Ok(Some((r.mode, r.generation)))
            }
        }
    }

    fn set_mode_record(&self, mode: Mode, generation: u64) -> Result<()> {
        let b = serde_json::to_vec(&ModeRecord { mode, generation }).expect("json");
        self.put("mode", &b)
    }

    /// A device's keybag record, opened.
    pub fn keybag(&self, svk: &ServiceKey, device: &str) -> Result<Option<KeybagRecord>> {
        self.get(&format!("keybag.{device}"))?
            .map(|b| keys::open_keybag(svk, &b))
            .transpose()
    }

    /// Stores a device's keybag record.
    pub fn put_keybag(&self, svk: &ServiceKey, device: &str, rec: &KeybagRecord) -> Result<()> {
        self.put(&format!("keybag.{device}"), &keys::seal_keybag(svk, rec))
    }
}

/// An account API client whose connections the repository storage shares (its timeout is
/// the storage's: a pack upload may take longer than an API call).
fn shared_client(base: &str, fingerprint: Option<&str>) -> Result<ServerClient> {
    let base = base.trim_end_matches('/');
    let http = vault::storage::http_client(
        base,
        fingerprint,
        HttpSettings::new(base, Zeroizing::new(String::new()), None).timeout,
    )?;
    Ok(ServerClient::with_client(base, http))
}

/// How a party gets the service key.
pub enum KeyPath<'a> {
    /// A trusted device: its record, opened with its identity key.
    Trusted {
        /// The device's id.
        device: &'a str,
        /// Its X25519 identity key.
        identity: &'a Key256,
    },
    /// The service's escrow (standard custody), released after a login.
    Escrow,
    /// The recovery key.
    RecoveryKey(&'a RecoveryKey),
    /// A recovery contact's code with the service's half of it.
    Contact {
        /// The contact's account name.
        contact: &'a str,
        /// The code the contact handed over.
        code: &'a [u8],
    },
}

impl KeyPath<'_> {
    /// For messages.
    pub fn describe(&self) -> &'static str {
        match self {
            KeyPath::Trusted { .. } => "a trusted device",
            KeyPath::Escrow => "the service's escrow",
            KeyPath::RecoveryKey(_) => "the recovery key",
            KeyPath::Contact { .. } => "a recovery contact",
        }
    }
}

/// The service key through `path`.
pub fn service_key(acct: &Account, path: &KeyPath<'_>) -> Result<ServiceKey> {
    let missing = |what: &str| Error::NoKey(format!("{}: {what}", acct.name));
    match path {
        KeyPath::Trusted { device, identity } => {
            let r = acct
                .get(&format!("trusted.{device}"))?
                .ok_or_else(|| missing("this device is not a trusted device of the account"))?;
            let (_, sealed) = keys::split_public_record(&r)?;
            keys::open_service_key(identity, aad::TRUSTED, sealed)
        }
        KeyPath::Escrow => {
            let b = acct.client.escrow_open(&acct.token)?.ok_or_else(|| {
                missing(
                    "the service holds no key for this account (end-to-end custody): use a \
                     trusted device, the recovery key or a recovery contact",
                )
            })?;
            ServiceKey::from_bytes(&b)
        }
        KeyPath::RecoveryKey(rk) => {
            let r = acct
                .get("recovery-key")?
                .ok_or_else(|| missing("no recovery key is set up"))?;
            let (_, sealed) = keys::split_public_record(&r)?;
            keys::open_service_key(&rk.private(), aad::RECOVERY_KEY, sealed)
                .map_err(|_| Error::Crypto("wrong recovery key".into()))
        }
        KeyPath::Contact { contact, code } => {
            let r = acct
                .get(&format!("contact.{contact}"))?
                .ok_or_else(|| missing(&format!("{contact} is not a recovery contact")))?;
            keys::contact_recover(&r, code)
        }
    }
}

/// Opens the account's repository with the service key.
pub fn open_repo(storage: Arc<dyn Storage>, svk: &ServiceKey) -> Result<Repository> {
    let k = svk.vault_key();
    Repository::open(storage, &Secret::Recovery(&k)).map_err(|e| match e {
        vault::Error::WrongSecret => Error::NoKey(
            "the service key does not open the account's repository (rotated: this path \
             carries an old key)"
                .into(),
        ),
        e => e.into(),
    })
}

/// First device of an account: a new service key (generation 1), the repository made with
/// it (no other key file is left in it), this device trusted, standard custody (escrow), as
/// iCloud starts.
pub fn create(acct: &Account, device: &str, identity_pub: &[u8; 32]) -> Result<ServiceKey> {
    if acct.mode()?.is_some() {
        return Err(Error::Invalid(format!(
            "{}: iCloud-style backup is already set up for this account; this device needs \
             the service key through a trusted device, the recovery key or the escrow",
            acct.name
        )));
    }
    let svk = ServiceKey::generate(1);
    // The vault makes a password key file and a recovery one; both go once the service
    // key's is in (a throwaway password, at the vault's lowest Argon2id cost).
    let throwaway = Key256::random().to_hex();
    let (repo, recovery) = Repository::init(
        acct.storage()?,
        throwaway.as_bytes(),
        Some(LOWEST_ARGON2),
        vault::keys::Params::default(),
    )
    .map_err(|e| match e {
        vault::Error::AlreadyExists { .. } => Error::Invalid(format!(
            "{}: the account already holds a repository (from `keybag cloud push`?); use \
             another account for device backup",
            acct.name
        )),
        e => e.into(),
    })?;
    drop(recovery);
    only_key(acct, repo, &svk)?;
    trust(acct, &svk, device, identity_pub)?;
    set_mode(acct, &svk, Mode::Standard)?;
    Ok(svk)
}

const LOWEST_ARGON2: vault::keys::Argon2Params = vault::keys::Argon2Params {
    m_kib: vault::keys::MIN_MEMORY_KIB,
    t: 1,
    p: 1,
};

/// Leaves the service key's key file as the repository's only way in: adds it, reopens with
/// it, removes every other (the custody paths are the only ways to the service key).
fn only_key(acct: &Account, repo: Repository, svk: &ServiceKey) -> Result<()> {
    repo.add_key(&Secret::Recovery(&svk.vault_key()), "service key", None)?;
    drop(repo);
    let repo = open_repo(acct.storage()?, svk)?;
    for k in repo.keys()? {
        if !k.current {
            repo.remove_key(&k.id)?;
        }
    }
    Ok(())
}

/// Makes `device` (its identity public key) a trusted device.
pub fn trust(
    acct: &Account,
    svk: &ServiceKey,
    device: &str,
    identity_pub: &[u8; 32],
) -> Result<()> {
    acct.put(
        &format!("trusted.{device}"),
        &keys::public_record(identity_pub, aad::TRUSTED, svk),
    )
}

/// A new device asks to be approved by a trusted one.
pub fn request_approval(acct: &Account, device: &str, identity_pub: &[u8; 32]) -> Result<()> {
    acct.put(&format!("pending.{device}"), identity_pub)
}

/// A trusted device approves every pending device; returns their ids.
pub fn approve_pending(acct: &Account, svk: &ServiceKey) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for name in acct.records()? {
        let Some(dev) = name.strip_prefix("pending.") else {
            continue;
        };
        let Some(b) = acct.get(&name)? else { continue };
        let pk: [u8; 32] = b[..]
            .try_into()
            .map_err(|_| Error::Invalid(format!("{name}: not a 32-byte public key")))?;
        trust(acct, svk, dev, &pk)?;
        acct.delete(&name)?;
        done.push(dev.to_string());
    }
    Ok(done)
}

/// Sets up a recovery key (replacing any earlier one); returns it, to show once.
pub fn add_recovery_key(acct: &Account, svk: &ServiceKey) -> Result<RecoveryKey> {
    let rk = RecoveryKey::generate();
    let pk = curve::public_of(&rk.private());
    acct.put(
        "recovery-key",
        &keys::public_record(&pk, aad::RECOVERY_KEY, svk),
    )?;
    Ok(rk)
}

/// Publishes this account's contact key (so others can name it their recovery contact).
pub fn publish_contact_key(acct: &Account, identity: &Key256) -> Result<()> {
    acct.put("contact-key", &curve::public_of(identity))
}

/// Names `contact` (an account on the same service) a recovery contact: the packet goes to
/// it, sealed to its published key; the service keeps the other half.
pub fn add_contact(acct: &Account, svk: &ServiceKey, contact: &str) -> Result<()> {
    let pk = acct
        .client
        .contact_key(&acct.token, contact)?
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{contact}: has not published a contact key (its device runs \
                 `keybag cloud recovery-contact publish`)"
            ))
        })?;
    let pk: [u8; 32] = pk[..]
        .try_into()
        .map_err(|_| Error::Invalid(format!("{contact}: its contact key is not 32 bytes")))?;
    let s = keys::contact_setup(&acct.name, &pk, svk);
    acct.put(&format!("contact.{contact}"), &s.record)?;
    acct.client
        .contact_packet(&acct.token, contact, &s.packet)?;
    Ok(())
}

/// The contact's side: the code for `owner`, from the packet it holds.
pub fn contact_code(contact: &Account, identity: &Key256, owner: &str) -> Result<Vec<u8>> {
    let p = contact.get(&format!("packet.{owner}"))?.ok_or_else(|| {
        Error::NoKey(format!(
            "{owner} has not named this account a recovery contact"
        ))
    })?;
    keys::contact_code(identity, owner, &p)
}

/// Switches custody. To end-to-end (needs a recovery key or a recovery contact, as Apple
/// requires for ADP): a new service key (generation + 1) and a new repository key epoch (the
/// old key opens nothing written from now on, and no key file for it is left), every keybag
/// key rotated, every path resealed, and the escrow deleted. To standard: the service key is
/// escrowed again. Returns the service key now in force.
pub fn set_mode(acct: &Account, svk: &ServiceKey, mode: Mode) -> Result<ServiceKey> {
    match mode {
        Mode::Standard => {
            let pk = acct.client.escrow_key(&acct.token)?;
            let sealed = curve::seal(
                &pk,
                &server::custody_escrow_aad(&acct.name),
                &svk.to_bytes(),
            );
            acct.put("escrow", &sealed)?;
            acct.set_mode_record(Mode::Standard, svk.generation)?;
            Ok(svk.clone())
        }
        Mode::EndToEnd => {
            let names = acct.records()?;
            if !names
                .iter()
                .any(|n| n == "recovery-key" || n.starts_with("contact."))
            {
                return Err(Error::Invalid(
                    "end-to-end custody needs a recovery key or a recovery contact first \
                     (without one, losing every trusted device loses the backups)"
                        .into(),
                ));
            }
            let new = ServiceKey::generate(svk.generation + 1);
            let mut repo = open_repo(acct.storage()?, svk)?;
            let throwaway = Key256::random().to_hex();
            drop(repo.rotate(throwaway.as_bytes(), Some(LOWEST_ARGON2))?);
            only_key(acct, repo, &new)?;
            for name in &names {
                let Some(b) = acct.get(name)? else { continue };
                let resealed = if name.starts_with("trusted.") || name == "recovery-key" {
                    let (pk, _) = keys::split_public_record(&b)?;
                    let a = if name == "recovery-key" {
                        aad::RECOVERY_KEY
                    } else {
                        aad::TRUSTED
                    };
                    keys::public_record(&pk, a, &new)
                } else if name.starts_with("contact.") {
                    keys::contact_reseal(&b, &new)?
                } else if name.starts_with("keybag.") {
                    let old = keys::open_keybag(svk, &b)?;
                    let kk = Key256::random();
                    let rec = KeybagRecord {
                        generation: old.generation + 1,
                        keybag: keys::rewrap_keybag(&old.keybag, &old.keybag_key, &kk)?,
                        keybag_key: kk,
                    };
                    keys::seal_keybag(&new, &rec)
                } else {
                    continue;
                };
                acct.put(name, &resealed)?;
            }
            acct.delete("escrow")?;
            acct.set_mode_record(Mode::EndToEnd, new.generation)?;
            Ok(new)
        }
    }
}
