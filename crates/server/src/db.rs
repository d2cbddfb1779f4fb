//! The metadata database: accounts, devices, tokens, login state, failed logins, usage.
//!
//! SQLite (a file in the data folder, nothing to set up) or PostgreSQL (`--database
//! postgres://…`, for several server processes), through sqlx's `Any` driver with SQL both
//! accept: `$n` placeholders, TEXT and BIGINT columns only. The schema is created and migrated
//! at start (idempotently: two servers starting at once on one PostgreSQL is fine). No secret
//! is stored in the clear: tokens and enrollment codes as SHA-256, passwords not at all (OPAQUE
//! password files).

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

use base64::Engine;

use crate::{Error, Result};

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Schema steps; the index + 1 is the version a step brings the database to.
const MIGRATIONS: &[&[&str]] = &[&[
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, \
     password_file TEXT, enroll_hash TEXT, enroll_expires BIGINT, quota_bytes BIGINT NOT NULL, \
     used_bytes BIGINT NOT NULL, created BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS devices (id TEXT PRIMARY KEY, account_id TEXT NOT NULL, \
     name TEXT NOT NULL, created BIGINT NOT NULL, last_seen BIGINT, last_snapshot BIGINT, \
     revoked BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, account_id TEXT, device_id TEXT, \
     scope TEXT NOT NULL, created BIGINT NOT NULL, expires BIGINT, revoked BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS logins (id TEXT PRIMARY KEY, account_id TEXT NOT NULL, \
     state TEXT NOT NULL, expires BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS login_failures (rowid_key TEXT PRIMARY KEY, \
     account_name TEXT NOT NULL, addr TEXT NOT NULL, at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS login_failures_at ON login_failures (at)",
    "CREATE INDEX IF NOT EXISTS tokens_account ON tokens (account_id)",
    "CREATE INDEX IF NOT EXISTS devices_account ON devices (account_id)",
], &[
    // iCloud-style custody records (opaque to the server but for `escrow`): base64 values.
    "CREATE TABLE IF NOT EXISTS custody (account_id TEXT NOT NULL, name TEXT NOT NULL, \
     value TEXT NOT NULL, updated BIGINT NOT NULL, PRIMARY KEY (account_id, name))",
]];

/// An account.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Account {
    /// Its random ID (the storage namespace).
    pub id: String,
    /// Its name (what people log in with).
    pub name: String,
    /// Quota in bytes.
    pub quota_bytes: i64,
    /// Bytes stored.
    pub used_bytes: i64,
    /// When it was made (Unix seconds).
    pub created: i64,
    /// True once a password was registered.
    pub registered: bool,
}

/// A device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Device {
    /// Its ID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// When it was enrolled.
    pub created: i64,
    /// Last request made with one of its tokens.
    pub last_seen: Option<i64>,
    /// Last snapshot it stored.
    pub last_snapshot: Option<i64>,
    /// True when revoked.
    pub revoked: bool,
}

/// A token as the database holds it.
#[derive(Clone, Debug)]
pub struct TokenRow {
    /// Its account (none for the operator's admin tokens).
    pub account_id: Option<String>,
    /// Its device, if it belongs to one.
    pub device_id: Option<String>,
    /// `backup`, `restore`, `owner` or `admin`.
    pub scope: String,
    /// Expiry (Unix seconds), if any.
    pub expires: Option<i64>,
    /// True when revoked.
    pub revoked: bool,
}

/// The database.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
}

fn db_err(what: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| Error::Db(format!("{what}: {e}"))
}

impl Db {
    /// Connects (`sqlite://PATH?mode=rwc` or `postgres://…`) and migrates.
    pub async fn open(url: &str) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 16 })
            // A database that is down gets 503 soon (the client backs off and retries)
            // rather than holding every request.
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| Error::Db(format!("cannot open the database: {e}")))?;
        if sqlite {
            for p in ["PRAGMA journal_mode = WAL", "PRAGMA busy_timeout = 10000"] {
                sqlx::query(p)
                    .execute(&pool)
                    .await
                    .map_err(db_err("sqlite"))?;
            }
        }
        let db = Db { pool };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<()> {
        for step in MIGRATIONS {
            for sql in *step {
                sqlx::query(sqlx::AssertSqlSafe(*sql))
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("migration"))?;
            }
        }
        self.set_meta_if_absent("schema_version", &MIGRATIONS.len().to_string())
            .await?;
        Ok(())
    }

    /// A meta value.
    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("meta"))?;
        Ok(row.map(|r| r.get::<String, _>(0)))
    }

    /// Sets a meta value unless one is there; returns the value that is.
    pub async fn set_meta_if_absent(&self, key: &str, value: &str) -> Result<String> {
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(db_err("meta"))?;
        Ok(self.meta(key).await?.expect("just set"))
    }

    // ------------------------------------------------------------------ accounts

    /// Creates an account with an enrollment code (its hash) valid until `enroll_expires`.
    pub async fn create_account(
        &self,
        id: &str,
        name: &str,
        quota: i64,
        enroll_hash: &str,
        enroll_expires: i64,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO accounts (id, name, password_file, enroll_hash, enroll_expires, \
             quota_bytes, used_bytes, created) VALUES ($1, $2, NULL, $3, $4, $5, 0, $6)",
        )
        .bind(id)
        .bind(name)
        .bind(enroll_hash)
        .bind(enroll_expires)
        .bind(quota)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                Error::Conflict(format!("account {name:?} exists already"))
            }
            e => Error::Db(format!("create account: {e}")),
        })?;
        Ok(())
    }

    fn account_of(r: &sqlx::any::AnyRow) -> Account {
        Account {
            id: r.get("id"),
            name: r.get("name"),
            quota_bytes: r.get("quota_bytes"),
            used_bytes: r.get("used_bytes"),
            created: r.get("created"),
            registered: r.get::<Option<String>, _>("password_file").is_some(),
        }
    }

    /// An account by name.
    pub async fn account_by_name(&self, name: &str) -> Result<Option<Account>> {
        let r = sqlx::query("SELECT * FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("account"))?;
        Ok(r.as_ref().map(Self::account_of))
    }

    /// An account by ID.
    pub async fn account(&self, id: &str) -> Result<Option<Account>> {
        let r = sqlx::query("SELECT * FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("account"))?;
        Ok(r.as_ref().map(Self::account_of))
    }

    /// Every account.
    pub async fn accounts(&self) -> Result<Vec<Account>> {
        let rows = sqlx::query("SELECT * FROM accounts ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("accounts"))?;
        Ok(rows.iter().map(Self::account_of).collect())
    }

    /// The enrollment code hash and expiry of an account.
    pub async fn enrollment(&self, account_id: &str) -> Result<Option<(String, i64)>> {
        let r = sqlx::query("SELECT enroll_hash, enroll_expires FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("enrollment"))?;
        Ok(r.and_then(|r| {
            let h: Option<String> = r.get(0);
            let e: Option<i64> = r.get(1);
            h.zip(e)
        }))
    }

    /// Sets a new enrollment code (a password reset starts here).
    pub async fn set_enrollment(&self, account_id: &str, hash: &str, expires: i64) -> Result<()> {
        sqlx::query("UPDATE accounts SET enroll_hash = $1, enroll_expires = $2 WHERE id = $3")
            .bind(hash)
            .bind(expires)
            .bind(account_id)
            .execute(&self.pool)
            .await
            .map_err(db_err("enrollment"))?;
        Ok(())
    }

    /// Stores a registered OPAQUE password file; consumes the enrollment code only if it is
    /// still `code_hash` (two registrations racing: one wins). Returns whether it did.
    pub async fn register(
        &self,
        account_id: &str,
        code_hash: &str,
        password_file: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE accounts SET password_file = $1, enroll_hash = NULL, enroll_expires = NULL \
             WHERE id = $2 AND enroll_hash = $3",
        )
        .bind(password_file)
        .bind(account_id)
        .bind(code_hash)
        .execute(&self.pool)
        .await
        .map_err(db_err("register"))?;
        Ok(done.rows_affected() == 1)
    }

    /// The OPAQUE password file of an account.
    pub async fn password_file(&self, account_id: &str) -> Result<Option<String>> {
        let r = sqlx::query("SELECT password_file FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("password file"))?;
        Ok(r.and_then(|r| r.get::<Option<String>, _>(0)))
    }

    /// Sets an account's quota.
    pub async fn set_quota(&self, account_id: &str, quota: i64) -> Result<()> {
        sqlx::query("UPDATE accounts SET quota_bytes = $1 WHERE id = $2")
            .bind(quota)
            .bind(account_id)
            .execute(&self.pool)
            .await
            .map_err(db_err("quota"))?;
        Ok(())
    }

    /// Adds `delta` (may be negative) to an account's usage.
    pub async fn add_usage(&self, account_id: &str, delta: i64) -> Result<()> {
        sqlx::query("UPDATE accounts SET used_bytes = used_bytes + $1 WHERE id = $2")
            .bind(delta)
            .bind(account_id)
            .execute(&self.pool)
            .await
            .map_err(db_err("usage"))?;
        Ok(())
    }

    // ------------------------------------------------------------------ tokens

    /// Stores a token (by its hash).
    #[allow(clippy::too_many_arguments)]
    pub async fn add_token(
        &self,
        hash: &str,
        account_id: Option<&str>,
        device_id: Option<&str>,
        scope: &str,
        expires: Option<i64>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO tokens (hash, account_id, device_id, scope, created, expires, revoked) \
             VALUES ($1, $2, $3, $4, $5, $6, 0)",
        )
        .bind(hash)
        .bind(account_id)
        .bind(device_id)
        .bind(scope)
        .bind(now)
        .bind(expires)
        .execute(&self.pool)
        .await
        .map_err(db_err("token"))?;
        Ok(())
    }

    /// A token by its hash.
    pub async fn token(&self, hash: &str) -> Result<Option<TokenRow>> {
        let r = sqlx::query(
            "SELECT account_id, device_id, scope, expires, revoked FROM tokens WHERE hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("token"))?;
        Ok(r.map(|r| TokenRow {
            account_id: r.get(0),
            device_id: r.get(1),
            scope: r.get(2),
            expires: r.get(3),
            revoked: r.get::<i64, _>(4) != 0,
        }))
    }

    /// Revokes a token.
    pub async fn revoke_token(&self, hash: &str) -> Result<()> {
        sqlx::query("UPDATE tokens SET revoked = 1 WHERE hash = $1")
            .bind(hash)
            .execute(&self.pool)
            .await
            .map_err(db_err("revoke"))?;
        Ok(())
    }

    /// Revokes every token of an account (a password reset) or of a device.
    pub async fn revoke_tokens_of(&self, account_id: &str, device_id: Option<&str>) -> Result<()> {
        match device_id {
            Some(d) => sqlx::query(
                "UPDATE tokens SET revoked = 1 WHERE account_id = $1 AND device_id = $2",
            )
            .bind(account_id)
            .bind(d),
            None => {
                sqlx::query("UPDATE tokens SET revoked = 1 WHERE account_id = $1").bind(account_id)
            }
        }
        .execute(&self.pool)
        .await
        .map_err(db_err("revoke"))?;
        Ok(())
    }

    // ------------------------------------------------------------------ custody

    /// A custody record of an account.
    pub async fn custody_get(&self, account_id: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT value FROM custody WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("custody"))?;
        row.map(|r| {
            b64()
                .decode(r.get::<String, _>(0))
                .map_err(|e| Error::Db(format!("custody: {e}")))
        })
        .transpose()
    }

    /// Stores (or replaces) a custody record.
    pub async fn custody_put(
        &self,
        account_id: &str,
        name: &str,
        value: &[u8],
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO custody (account_id, name, value, updated) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account_id, name) DO UPDATE SET value = excluded.value, \
             updated = excluded.updated",
        )
        .bind(account_id)
        .bind(name)
        .bind(b64().encode(value))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err("custody"))?;
        Ok(())
    }

    /// Deletes a custody record; false when there was none.
    pub async fn custody_delete(&self, account_id: &str, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM custody WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db_err("custody"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Every custody record of an account, by name.
    pub async fn custody_all(&self, account_id: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let rows =
            sqlx::query("SELECT name, value FROM custody WHERE account_id = $1 ORDER BY name")
                .bind(account_id)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err("custody"))?;
        rows.iter()
            .map(|r| {
                let v = b64()
                    .decode(r.get::<String, _>(1))
                    .map_err(|e| Error::Db(format!("custody: {e}")))?;
                Ok((r.get::<String, _>(0), v))
            })
            .collect()
    }

    // ------------------------------------------------------------------ devices

    /// Enrolls a device.
    pub async fn add_device(&self, id: &str, account_id: &str, name: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO devices (id, account_id, name, created, last_seen, last_snapshot, revoked) \
             VALUES ($1, $2, $3, $4, NULL, NULL, 0)",
        )
        .bind(id)
        .bind(account_id)
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err("device"))?;
        Ok(())
    }

    /// The devices of an account.
    pub async fn devices(&self, account_id: &str) -> Result<Vec<Device>> {
        let rows = sqlx::query(
            "SELECT id, name, created, last_seen, last_snapshot, revoked FROM devices \
             WHERE account_id = $1 ORDER BY created, id",
        )
        .bind(account_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("devices"))?;
        Ok(rows
            .iter()
            .map(|r| Device {
                id: r.get(0),
                name: r.get(1),
                created: r.get(2),
                last_seen: r.get(3),
                last_snapshot: r.get(4),
                revoked: r.get::<i64, _>(5) != 0,
            })
            .collect())
    }

    /// Revokes a device (and its tokens); false when the account has no such device.
    pub async fn revoke_device(&self, account_id: &str, device_id: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE devices SET revoked = 1 WHERE id = $1 AND account_id = $2")
            .bind(device_id)
            .bind(account_id)
            .execute(&self.pool)
            .await
            .map_err(db_err("device"))?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.revoke_tokens_of(account_id, Some(device_id)).await?;
        Ok(true)
    }

    /// Notes a device's activity (`snapshot`: it stored one).
    pub async fn device_seen(&self, device_id: &str, now: i64, snapshot: bool) -> Result<()> {
        let q = if snapshot {
            sqlx::query("UPDATE devices SET last_seen = $1, last_snapshot = $2 WHERE id = $3")
                .bind(now)
                .bind(now)
                .bind(device_id)
        } else {
            sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2")
                .bind(now)
                .bind(device_id)
        };
        q.execute(&self.pool).await.map_err(db_err("device"))?;
        Ok(())
    }

    // ------------------------------------------------------------------ logins

    /// Stores a login in progress (the OPAQUE server state, serialized).
    pub async fn put_login(
        &self,
        id: &str,
        account_id: &str,
        state: &str,
        expires: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO logins (id, account_id, state, expires) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(account_id)
            .bind(state)
            .bind(expires)
            .execute(&self.pool)
            .await
            .map_err(db_err("login"))?;
        Ok(())
    }

    /// Takes (and removes) a login in progress, if not expired.
    pub async fn take_login(&self, id: &str, now: i64) -> Result<Option<(String, String)>> {
        let r = sqlx::query("SELECT account_id, state, expires FROM logins WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("login"))?;
        sqlx::query("DELETE FROM logins WHERE id = $1 OR expires < $2")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_err("login"))?;
        Ok(r.and_then(|r| {
            let exp: i64 = r.get(2);
            (exp >= now).then(|| (r.get(0), r.get(1)))
        }))
    }

    /// Records a failed login.
    pub async fn login_failed(&self, account: &str, addr: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO login_failures (rowid_key, account_name, addr, at) VALUES ($1, $2, $3, $4)",
        )
        .bind(format!("{now:016x}{}", crate::auth::new_id()))
            .bind(account)
            .bind(addr)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_err("login failure"))?;
        // Failures older than a day count for nothing: forget them.
        sqlx::query("DELETE FROM login_failures WHERE at < $1")
            .bind(now - 86_400)
            .execute(&self.pool)
            .await
            .map_err(db_err("login failure"))?;
        Ok(())
    }

    /// A login that succeeded: the failure its start counted is taken back.
    pub async fn login_succeeded(&self, account: &str, addr: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM login_failures WHERE rowid_key = (SELECT MAX(rowid_key) FROM \
             login_failures WHERE account_name = $1 AND addr = $2)",
        )
        .bind(account)
        .bind(addr)
        .execute(&self.pool)
        .await
        .map_err(db_err("login"))?;
        Ok(())
    }

    /// Failed logins since `since`: for the account, and from the address.
    pub async fn failures_since(
        &self,
        account: &str,
        addr: &str,
        since: i64,
    ) -> Result<(i64, i64)> {
        let a =
            sqlx::query("SELECT COUNT(*) FROM login_failures WHERE account_name = $1 AND at >= $2")
                .bind(account)
                .bind(since)
                .fetch_one(&self.pool)
                .await
                .map_err(db_err("login failures"))?
                .get::<i64, _>(0);
        let b = sqlx::query("SELECT COUNT(*) FROM login_failures WHERE addr = $1 AND at >= $2")
            .bind(addr)
            .bind(since)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err("login failures"))?
            .get::<i64, _>(0);
        Ok((a, b))
    }
}
