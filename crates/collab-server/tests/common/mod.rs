//! Test harness: the real server on a port-0 listener with a fresh database.
//!
//! Every test gets its own SQLite file in a temporary directory, or its own
//! PostgreSQL database on the server named by `COLLAB_TEST_DATABASE_URL`.
//! `backend_tests!` runs a test body against both.

#![allow(dead_code, unused_macros)] // each test binary uses a different part of this

pub mod auth;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use collab_server::{AppState, Config};
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PG_ENV: &str = "COLLAB_TEST_DATABASE_URL";

/// A database for one test.
pub struct TestDb {
    pub url: String,
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
    pg_admin: Option<(String, String)>,
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // A nested directory checks that the store creates it.
        let path = dir.path().join("data").join("collab.db");
        Self {
            url: format!("sqlite://{}", path.display()),
            backend: "sqlite",
            _dir: Some(dir),
            pg_admin: None,
        }
    }

    /// A fresh database on the PostgreSQL server of `COLLAB_TEST_DATABASE_URL`,
    /// or `None` (with a notice) when that variable is not set.
    pub async fn postgres() -> Option<Self> {
        let Ok(admin_url) = std::env::var(PG_ENV) else {
            // Once per test binary, and past libtest's output capture (which
            // only catches the print macros), so the notice is always seen.
            static NOTICE: std::sync::Once = std::sync::Once::new();
            NOTICE.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping PostgreSQL tests: {PG_ENV} not set"
                );
            });
            return None;
        };
        let name = format!("collab_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("{PG_ENV}={admin_url} is unreachable: {e}"));
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        Some(Self {
            url: with_database(&admin_url, &name),
            backend: "postgres",
            _dir: None,
            pg_admin: Some((admin_url, name)),
        })
    }

    /// What it takes to drop this database later, even after a panic.
    pub fn dropper(&self) -> DbDropper {
        DbDropper(self.pg_admin.clone())
    }
}

/// Drops a PostgreSQL test database (SQLite ones go with their temp dir).
pub struct DbDropper(Option<(String, String)>);

impl DbDropper {
    pub async fn drop_database(self) {
        let Some((admin_url, name)) = self.0 else {
            return;
        };
        if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
            // FORCE: a failed test may have left its server's pool open.
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut admin)
                .await;
            admin.close().await.ok();
        }
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let root = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    format!("{root}/{name}{query}")
}

/// Run each named `async fn(&TestDb)` on SQLite and on PostgreSQL. The body
/// runs in its own task so its database is dropped even when it panics.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::run_test($crate::common::TestDb::sqlite(), |db| async move {
                        super::$name(&db).await;
                        db
                    })
                    .await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::common::TestDb::postgres().await else { return };
                    $crate::common::run_test(db, |db| async move {
                        super::$name(&db).await;
                        db
                    })
                    .await;
                }
            )*
        }
    };
}

pub async fn run_test<F, Fut>(db: TestDb, body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = TestDb> + Send + 'static,
{
    let dropper = db.dropper();
    let outcome = tokio::spawn(body(db)).await;
    dropper.drop_database().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

pub fn test_config(db: &TestDb) -> Config {
    let mut config = Config::with_database(db.url.clone());
    // Small enough that oversize tests send little data.
    config.max_message_bytes = 64 * 1024;
    config.max_document_chars = 1000;
    config
}

/// A running server.
pub struct TestApp {
    pub addr: SocketAddr,
    pub state: AppState,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

pub async fn spawn_app(db: &TestDb) -> TestApp {
    spawn_app_with(test_config(db)).await
}

pub async fn spawn_app_with(config: Config) -> TestApp {
    let state = AppState::connect(&config).await.expect("open store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(collab_server::run(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        state,
        http: reqwest::Client::new(),
        stop: Some(stop),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Shut down gracefully (as on SIGTERM), wait for it, close the store.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server result");
        }
        self.state.store.close().await;
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self.http.get(self.url(path)).send().await.expect("GET");
        into_parts(res).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let res = self
            .http
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE");
        into_parts(res).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let res = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST");
        into_parts(res).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        let res = self
            .http
            .patch(self.url(path))
            .json(body)
            .send()
            .await
            .expect("PATCH");
        into_parts(res).await
    }

    /// A request with a raw body and content type.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        into_parts(req.send().await.expect("request")).await
    }

    /// Create a document, asserting success; returns it.
    pub async fn create(&self, id: &str, title: &str, content: &str) -> Value {
        let (status, body) = self
            .post(
                "/api/documents",
                &json!({"id": id, "title": title, "content": content}),
            )
            .await;
        assert_eq!(status, 201, "create {id}: {body}");
        body
    }

    /// Submit an op through REST, asserting success; returns the new rev.
    pub async fn edit(&self, id: &str, rev: u64, op: Value) -> u64 {
        let (status, body) = self
            .post(
                &format!("/api/documents/{id}/ops"),
                &json!({"rev": rev, "op": op}),
            )
            .await;
        assert_eq!(status, 200, "edit {id}: {body}");
        body["rev"].as_u64().expect("rev")
    }

    /// Every document with its content and op log: to compare before/after.
    pub async fn everything(&self) -> Value {
        let (status, list) = self.get("/api/documents?limit=100").await;
        assert_eq!(status, 200, "{list}");
        let mut docs = Vec::new();
        for item in list["items"].as_array().expect("items") {
            let id = item["id"].as_str().expect("id");
            let (s1, doc) = self.get(&format!("/api/documents/{id}")).await;
            let (s2, ops) = self
                .get(&format!("/api/documents/{id}/ops?limit=1000"))
                .await;
            assert_eq!((s1, s2), (200, 200));
            docs.push(json!({"doc": doc, "ops": ops}));
        }
        json!({"list": list, "docs": docs})
    }
}

async fn into_parts(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body: {text:?}"))
    };
    (status, body)
}

/// Assert `body` is the protocol's error body with `code`.
pub fn assert_error(status: u16, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status, expected_status, "body: {body}");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "body: {body}");
}

/// Wait until `condition` holds, polling; panic after `timeout`.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn database_names_are_replaced() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u@h:1?sslmode=disable", "x"),
        "postgres://u@h:1/x?sslmode=disable"
    );
}
