//! The client side of the account API: OPAQUE registration and login (the password never
//! leaves this machine), logout, devices, status, and the operator's HTTP admin calls. Every
//! connection checks the server's pinned certificate fingerprint ([`vault::storage::http_client`]).

use std::time::Duration;

use base64::Engine;
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::auth::Suite;

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server said no.
    #[error("{url}: the server answered {status}: {message}")]
    Refused {
        /// The request.
        url: String,
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The account or password is wrong.
    #[error("wrong account name or password")]
    WrongPassword,
    /// The server could not be reached (or its certificate does not match the pin).
    #[error("{url}: {reason}")]
    Unreachable {
        /// The request.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The pinned certificate or the URL is wrong.
    #[error(transparent)]
    Vault(#[from] vault::Error),
    /// The protocol failed.
    #[error("OPAQUE: {0}")]
    Protocol(String),
}

/// A session: an `owner` token and its expiry.
pub struct Session {
    /// The token.
    pub token: Zeroizing<String>,
    /// Unix seconds.
    pub expires: Option<i64>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session(expires {:?}, token redacted)", self.expires)
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A connection to one server.
pub struct ServerClient {
    base: String,
    http: Client,
}

impl ServerClient {
    /// `base` (`https://host:port`), its certificate pinned by `fingerprint`.
    pub fn new(base: &str, fingerprint: Option<&str>) -> Result<ServerClient, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let http = vault::storage::http_client(&base, fingerprint, Duration::from_secs(60))?;
        Ok(ServerClient { base, http })
    }

    /// Over a client made already (by [`vault::storage::http_client`], pinned to `base`'s
    /// certificate): one connection pool with the repository storage of the same server.
    pub fn with_client(base: &str, http: Client) -> ServerClient {
        ServerClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    /// The HTTP client (to share its connections).
    pub fn http(&self) -> &Client {
        &self.http
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send(&self, path: &str, rb: RequestBuilder) -> Result<Value, ClientError> {
        let url = self.url(path);
        let r = rb.send().map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: vault::storage::describe_http_error(&e),
        })?;
        let status = r.status();
        let text = r.text().unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(ClientError::Refused {
                url,
                status: status.as_u16(),
                message,
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn post(&self, path: &str, body: Value, token: Option<&str>) -> Result<Value, ClientError> {
        let mut rb = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        self.send(path, rb)
    }

    fn get(&self, path: &str, token: &str) -> Result<Value, ClientError> {
        self.send(path, self.http.get(self.url(path)).bearer_auth(token))
    }

    /// Registers `password` for `account` with the operator's enrollment `code` (OPAQUE: the
    /// server stores a password file, never the password).
    pub fn register(&self, account: &str, code: &str, password: &[u8]) -> Result<(), ClientError> {
        let mut rng = rand::rngs::OsRng;
        let start = ClientRegistration::<Suite>::start(&mut rng, password)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let r = self.post(
            "/v1/register/start",
            json!({"account": account, "code": code, "message": b64().encode(start.message.serialize())}),
            None,
        )?;
        let resp = RegistrationResponse::<Suite>::deserialize(&decode(&r["message"])?)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let fin = start
            .state
            .finish(
                &mut rng,
                password,
                resp,
                ClientRegistrationFinishParameters::default(),
            )
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.post(
            "/v1/register/finish",
            json!({"account": account, "code": code, "message": b64().encode(fin.message.serialize())}),
            None,
        )?;
        Ok(())
    }

    /// Logs in: an `owner` session.
    pub fn login(&self, account: &str, password: &[u8]) -> Result<Session, ClientError> {
        let mut rng = rand::rngs::OsRng;
        let start = ClientLogin::<Suite>::start(&mut rng, password)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let r = self.post(
            "/v1/login/start",
            json!({"account": account, "message": b64().encode(start.message.serialize())}),
            None,
        )?;
        let login = r["login"].as_str().unwrap_or_default().to_string();
        let resp = CredentialResponse::<Suite>::deserialize(&decode(&r["message"])?)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let fin = start
            .state
            .finish(
                &mut rng,
                password,
                resp,
                ClientLoginFinishParameters::default(),
            )
            .map_err(|_| ClientError::WrongPassword)?;
        let r = match self.post(
            "/v1/login/finish",
            json!({"login": login, "message": b64().encode(fin.message.serialize())}),
            None,
        ) {
            Err(ClientError::Refused { status: 401, .. }) => {
                return Err(ClientError::WrongPassword)
            }
            r => r?,
        };
        Ok(Session {
            token: Zeroizing::new(r["token"].as_str().unwrap_or_default().to_string()),
            expires: r["expires"].as_i64(),
        })
    }

    /// Revokes `token` on the server.
    pub fn logout(&self, token: &str) -> Result<(), ClientError> {
        self.post("/v1/logout", json!({}), Some(token)).map(|_| ())
    }

    /// Usage and devices.
    pub fn status(&self, token: &str) -> Result<Value, ClientError> {
        self.get("/v1/status", token)
    }

    /// The account's devices.
    pub fn devices(&self, token: &str) -> Result<Value, ClientError> {
        self.get("/v1/devices", token)
    }

    /// Enrolls a device; returns `{device, token, scope}` (the token is shown once).
    pub fn add_device(&self, token: &str, name: &str, scope: &str) -> Result<Value, ClientError> {
        self.post(
            "/v1/devices",
            json!({"name": name, "scope": scope}),
            Some(token),
        )
    }

    /// Revokes a device and its tokens.
    pub fn revoke_device(&self, token: &str, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/devices/{id}");
        self.send(&path, self.http.delete(self.url(&path)).bearer_auth(token))
            .map(|_| ())
    }
}

impl ServerClient {
    fn record_value(v: &Value) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        decode(&v["value"]).map(Zeroizing::new)
    }

    fn optional(r: Result<Value, ClientError>) -> Result<Option<Value>, ClientError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(ClientError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The service's escrow public key.
    pub fn escrow_key(&self, token: &str) -> Result<[u8; 32], ClientError> {
        let v = self.get("/v1/custody/escrow-key", token)?;
        hex::decode(v["public"].as_str().unwrap_or_default())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ClientError::Protocol("the escrow key is not 32 hex bytes".into()))
    }

    /// The names of the account's custody records.
    pub fn custody_list(&self, token: &str) -> Result<Vec<String>, ClientError> {
        let v = self.get("/v1/custody/records", token)?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One custody record (`None` when absent).
    pub fn custody_get(
        &self,
        token: &str,
        name: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, ClientError> {
        Self::optional(self.get(&format!("/v1/custody/records/{name}"), token))?
            .map(|v| Self::record_value(&v))
            .transpose()
    }

    /// Stores a custody record.
    pub fn custody_put(&self, token: &str, name: &str, value: &[u8]) -> Result<(), ClientError> {
        let path = format!("/v1/custody/records/{name}");
        self.send(
            &path,
            self.http
                .put(self.url(&path))
                .json(&json!({"value": b64().encode(value)}))
                .bearer_auth(token),
        )
        .map(|_| ())
    }

    /// Deletes a custody record (absent is fine).
    pub fn custody_delete(&self, token: &str, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/custody/records/{name}");
        Self::optional(self.send(&path, self.http.delete(self.url(&path)).bearer_auth(token)))
            .map(|_| ())
    }

    /// The escrowed secret, opened by the service (`None` when there is no escrow record).
    pub fn escrow_open(&self, token: &str) -> Result<Option<Zeroizing<Vec<u8>>>, ClientError> {
        Self::optional(self.post("/v1/custody/escrow/open", json!({}), Some(token)))?
            .map(|v| Self::record_value(&v))
            .transpose()
    }

    /// Another account's published recovery-contact key (`None` if it has none).
    pub fn contact_key(
        &self,
        token: &str,
        account: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, ClientError> {
        Self::optional(self.get(&format!("/v1/contacts/{account}/key"), token))?
            .map(|v| Self::record_value(&v))
            .transpose()
    }

    /// Leaves a recovery-contact packet with another account.
    pub fn contact_packet(
        &self,
        token: &str,
        account: &str,
        packet: &[u8],
    ) -> Result<(), ClientError> {
        let path = format!("/v1/contacts/{account}/packets");
        self.send(
            &path,
            self.http
                .put(self.url(&path))
                .json(&json!({"value": b64().encode(packet)}))
                .bearer_auth(token),
        )
        .map(|_| ())
    }
}

fn decode(v: &Value) -> Result<Vec<u8>, ClientError> {
    b64()
        .decode(v.as_str().unwrap_or_default())
        .map_err(|_| ClientError::Protocol("the server's message is not base64".into()))
}
