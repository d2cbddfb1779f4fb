//! The authorization matrix, as one table: every endpoint × every kind of token (none, an
//! unknown one, backup, restore, owner, admin) × the caller's own account and another one →
//! the status expected. Run against both deployments (SQLite + folder, PostgreSQL + S3).
//!
//! Cells that change state (deletes, logouts, revocations, resets) get fresh objects and
//! fresh tokens, so each cell is independent of the order they run in.

mod common;

use std::collections::BTreeMap;

use common::{Deployment, TestServer};
use reqwest::blocking::Client;
use reqwest::Method;

/// The scopes of the matrix's columns.
const SCOPES: [&str; 6] = ["none", "unknown", "backup", "restore", "owner", "admin"];

/// What a cell's caller is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Whose {
    /// A token of the account that owns the objects named.
    Own,
    /// A token of another account (objects named are the first account's).
    Other,
}

/// One row: a request, and the statuses expected for own and other account, in the order of
/// [`SCOPES`] ("-" where a column does not apply, e.g. admin tokens belong to no account).
struct Row {
    method: Method,
    /// `{obj:KIND}` is an object of the first account; `{new:KIND}` a name nobody has; `{dev}`
    /// a device of the first account; `{acct}` an account name; `{victim}` an account to reset.
    path: &'static str,
    body: Body,
    own: [&'static str; 6],
    other: [&'static str; 6],
}

#[derive(Copy, Clone)]
enum Body {
    None,
    /// The bytes whose BLAKE3 names the `{new:…}` object.
    Object,
    /// The first account's config bytes (a retried init: accepted).
    SameConfig,
    Json(&'static str),
}

fn rows() -> Vec<Row> {
    use Body::*;
    let m = |s: &str| Method::from_bytes(s.as_bytes()).unwrap();
    let r = |method: &str, path, body, own, other| Row {
        method: m(method),
        path,
        body,
        own,
        other,
    };
    let mut v = vec![
        r("GET", "/healthz", None, ["200"; 6], ["200"; 6]),
        // The account API.
        r(
            "GET",
            "/v1/status",
            None,
            ["401", "401", "403", "403", "200", "403"],
            ["-"; 6],
        ),
        r(
            "GET",
            "/v1/devices",
            None,
            ["401", "401", "403", "403", "200", "403"],
            ["-"; 6],
        ),
        r(
            "POST",
            "/v1/devices",
            Json(r#"{"name":"new phone","scope":"backup"}"#),
            ["401", "401", "403", "403", "200", "403"],
            ["-"; 6],
        ),
        r(
            "DELETE",
            "/v1/devices/{dev}",
            None,
            ["401", "401", "403", "403", "204", "403"],
            ["-", "-", "403", "403", "404", "-"],
        ),
        r(
            "POST",
            "/v1/logout",
            Json("{}"),
            ["401", "401", "204", "204", "204", "204"],
            ["-"; 6],
        ),
        // The operator's API.
        r(
            "GET",
            "/v1/admin/accounts",
            None,
            ["401", "401", "403", "403", "403", "200"],
            ["-"; 6],
        ),
        r(
            "POST",
            "/v1/admin/accounts",
            Json(r#"{"name":"{acct}"}"#),
            ["401", "401", "403", "403", "403", "200"],
            ["-"; 6],
        ),
        r(
            "POST",
            "/v1/admin/accounts/{victim}/reset",
            Json("{}"),
            ["401", "401", "403", "403", "403", "200"],
            ["-"; 6],
        ),
        r(
            "PUT",
            "/v1/admin/accounts/{victim}/quota",
            Json(r#"{"bytes":1000000}"#),
            ["401", "401", "403", "403", "403", "204"],
            ["-"; 6],
        ),
        // The repository: config.
        r(
            "GET",
            "/v1/repo/config",
            None,
            ["401", "401", "200", "200", "200", "403"],
            ["-", "-", "404", "404", "404", "-"],
        ),
        r(
            "HEAD",
            "/v1/repo/config",
            None,
            ["401", "401", "200", "200", "200", "403"],
            ["-", "-", "404", "404", "404", "-"],
        ),
        r(
            "PUT",
            "/v1/repo/config",
            SameConfig,
            ["401", "401", "403", "403", "201", "403"],
            ["-"; 6],
        ),
    ];
    for kind in ["keys", "data", "index", "snapshots", "pending"] {
        let leak =
            |p: &str| -> &'static str { Box::leak(p.replace("KIND", kind).into_boxed_str()) };
        // What a backup token may do: read sealed metadata (to deduplicate and name a
        // parent), never data; add data, index and snapshots; never delete.
        let read_backup = if kind == "data" { "403" } else { "200" };
        let write_backup = if matches!(kind, "data" | "index" | "snapshots") {
            "201"
        } else {
            "403"
        };
        v.push(r(
            "GET",
            leak("/v1/repo/KIND/"),
            None,
            ["401", "401", "200", "200", "200", "403"],
            ["-", "-", "200", "200", "200", "-"],
        ));
        v.push(r(
            "GET",
            leak("/v1/repo/KIND/{obj:KIND}"),
            None,
            ["401", "401", read_backup, "200", "200", "403"],
            [
                "-",
                "-",
                if kind == "data" { "403" } else { "404" },
                "404",
                "404",
                "-",
            ],
        ));
        v.push(r(
            "HEAD",
            leak("/v1/repo/KIND/{obj:KIND}"),
            None,
            ["401", "401", read_backup, "200", "200", "403"],
            [
                "-",
                "-",
                if kind == "data" { "403" } else { "404" },
                "404",
                "404",
                "-",
            ],
        ));
        v.push(r(
            "GET",
            leak("/v1/repo/KIND/{new:KIND}"),
            None,
            [
                "401",
                "401",
                if kind == "data" { "403" } else { "404" },
                "404",
                "404",
                "403",
            ],
            ["-"; 6],
        ));
        v.push(r(
            "PUT",
            leak("/v1/repo/KIND/{new:KIND}"),
            Object,
            ["401", "401", write_backup, "403", "201", "403"],
            ["-", "-", write_backup, "403", "201", "-"],
        ));
        v.push(r(
            "DELETE",
            leak("/v1/repo/KIND/{obj:KIND}"),
            None,
            ["401", "401", "403", "403", "204", "403"],
            ["-", "-", "403", "403", "404", "-"],
        ));
    }
    v
}

/// The first account's objects: one of each kind, named by the BLAKE3 of its bytes.
fn object(kind: &str, n: u64) -> (String, Vec<u8>) {
    let body = format!("sealed object {kind} #{n}").into_bytes();
    (vault::Id::of_bytes(&body).to_hex(), body)
}

struct World {
    srv: TestServer,
    http: Client,
    /// Owner tokens of the first ("alice") and second ("bob") account.
    alice: String,
    bob: String,
    counter: std::cell::Cell<u64>,
}

impl World {
    fn new(d: &Deployment, data: &std::path::Path) -> World {
        let srv = TestServer::start(d.options(data.to_path_buf()));
        let alice = srv.account("alice", "alice's password");
        let bob = srv.account("bob", "bob's password");
        server::ops::add_account(&srv.opts, "victim", None).expect("account");
        let http = srv.http();
        let w = World {
            srv,
            http,
            alice,
            bob,
            counter: std::cell::Cell::new(0),
        };
        let st = w.send(
            Method::PUT,
            "/v1/repo/config",
            Some(&w.alice),
            b"alice's config".to_vec(),
        );
        assert_eq!(st, 201);
        w
    }

    fn next(&self) -> u64 {
        self.counter.set(self.counter.get() + 1);
        self.counter.get()
    }

    fn send(&self, method: Method, path: &str, token: Option<&str>, body: Vec<u8>) -> u16 {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.srv.base))
            .body(body);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rb.send().expect("request").status().as_u16()
    }

    /// A fresh token of `scope` in alice's (Own) or bob's (Other) account.
    fn token(&self, scope: &str, whose: Whose) -> Option<String> {
        let owner = match whose {
            Whose::Own => &self.alice,
            Whose::Other => &self.bob,
        };
        Some(match scope {
            "none" => return None,
            "unknown" => "kbt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string(),
            "backup" | "restore" => {
                self.srv
                    .device(owner, &format!("device {}", self.next()), scope)
            }
            "owner" => {
                let (name, pw) = match whose {
                    Whose::Own => ("alice", "alice's password"),
                    Whose::Other => ("bob", "bob's password"),
                };
                self.srv
                    .client()
                    .login(name, pw.as_bytes())
                    .expect("login")
                    .token
                    .to_string()
            }
            "admin" => server::ops::add_admin_token(&self.srv.opts).expect("admin"),
            _ => unreachable!(),
        })
    }

    /// Runs one cell; returns the status.
    fn cell(&self, row: &Row, scope: &str, whose: Whose) -> u16 {
        let token = self.token(scope, whose);
        let mut path = row.path.to_string();
        let mut body = Vec::new();
        for kind in ["keys", "data", "index", "snapshots", "pending"] {
            let obj = format!("{{obj:{kind}}}");
            if path.contains(&obj) {
                // (Re)made by alice's owner: deletes in earlier cells do not leak into this one.
                let (name, bytes) = object(kind, 0);
                let st = self.send(
                    Method::PUT,
                    &format!("/v1/repo/{kind}/{name}"),
                    Some(&self.alice),
                    bytes,
                );
                assert_eq!(st, 201, "setting up {kind}/{name}");
                path = path.replace(&obj, &name);
            }
            let new = format!("{{new:{kind}}}");
            if path.contains(&new) {
                let (name, bytes) = object(kind, self.next() + 1000);
                path = path.replace(&new, &name);
                body = bytes;
            }
        }
        if path.contains("{dev}") {
            let v = self
                .srv
                .client()
                .add_device(&self.alice, "sacrificial", "backup")
                .expect("device");
            path = path.replace("{dev}", v["device"].as_str().unwrap());
        }
        path = path.replace("{victim}", "victim");
        match row.body {
            Body::None | Body::Object => {}
            Body::SameConfig => body = b"alice's config".to_vec(),
            Body::Json(j) => {
                body = j
                    .replace("{acct}", &format!("new-{}", self.next()))
                    .into_bytes()
            }
        }
        let mut rb = self
            .http
            .request(row.method.clone(), format!("{}{path}", self.srv.base))
            .body(body);
        if matches!(row.body, Body::Json(_)) {
            rb = rb.header("content-type", "application/json");
        }
        if let Some(t) = &token {
            rb = rb.bearer_auth(t);
        }
        let resp = rb.send().expect("request");
        let status = resp.status().as_u16();
        // Another account's listing is its own: never a name of alice's.
        if whose == Whose::Other && status == 200 {
            let text = resp.text().unwrap_or_default();
            for kind in ["keys", "data", "index", "snapshots", "pending"] {
                assert!(
                    !text.contains(&object(kind, 0).0),
                    "{} {path} as bob's {scope}: shows alice's {kind} object",
                    row.method
                );
            }
        }
        status
    }
}

fn matrix(d: Deployment) {
    let data = tempfile::tempdir().unwrap();
    let w = World::new(&d, data.path());
    let mut wrong = Vec::new();
    let mut table: BTreeMap<String, String> = BTreeMap::new();
    for row in rows() {
        for (whose, expect) in [(Whose::Own, row.own), (Whose::Other, row.other)] {
            let mut line = String::new();
            for (i, scope) in SCOPES.iter().enumerate() {
                if expect[i] == "-" {
                    line.push_str("   - ");
                    continue;
                }
                let got = w.cell(&row, scope, whose);
                line.push_str(&format!(" {got:>4}"));
                if got.to_string() != expect[i] {
                    wrong.push(format!(
                        "{} {} as {whose:?} {scope}: got {got}, expected {}",
                        row.method, row.path, expect[i]
                    ));
                }
            }
            table.insert(
                format!("{:<6} {:<40} {whose:?}", row.method, row.path),
                line,
            );
        }
    }
    let shown: Vec<String> = table.iter().map(|(k, v)| format!("{k} {v}")).collect();
    assert!(
        wrong.is_empty(),
        "authorization matrix ({}):\n{}\n\nrows × {SCOPES:?}:\n{}",
        wrong.len(),
        wrong.join("\n"),
        shown.join("\n")
    );
    // Bob's writes under alice's names went to bob's namespace: alice's objects are hers.
    for kind in ["keys", "data", "index", "snapshots", "pending"] {
        let (name, bytes) = object(kind, 0);
        let r = w
            .http
            .get(format!("{}/v1/repo/{kind}/{name}", w.srv.base))
            .bearer_auth(&w.alice)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.bytes().unwrap().as_ref(), bytes.as_slice());
    }
}

#[test]
fn authorization_matrix_sqlite_folder() {
    matrix(Deployment::local());
}

#[test]
fn authorization_matrix_postgres_s3() {
    matrix(Deployment::scaled());
}
