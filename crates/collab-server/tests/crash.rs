//! The server process is killed with SIGKILL while clients type, then
//! started again on the same database: every acknowledged edit is there
//! exactly once, the clients resume by themselves, resend what was not
//! acknowledged (also what they typed while the server was down), and
//! converge with the stored content.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use collab_client::{Event, Operation, Options, Session};
use common::{wait_for, TestDb};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(60);

/// The real `collab` binary on a fixed port, so clients find it again.
struct Server {
    addr: SocketAddr,
    db_url: String,
    child: Child,
}

impl Server {
    async fn start(addr: SocketAddr, db_url: &str) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_collab"))
            .arg("serve")
            .env("DATABASE_URL", db_url)
            .env("COLLAB_BIND", addr.to_string())
            .env("COLLAB_MAX_OPS_PER_SECOND", "100000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start collab");
        let server = Server {
            addr,
            db_url: db_url.to_owned(),
            child,
        };
        let http = reqwest::Client::new();
        let url = server.url("/health");
        wait_for(WAIT, "the server to answer /health", || {
            let http = http.clone();
            let url = url.clone();
            async move { http.get(&url).send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGKILL: no shutdown code runs.
    async fn kill(mut self) -> (SocketAddr, String) {
        self.child.kill().await.expect("kill");
        (self.addr, self.db_url)
    }

    async fn get(&self, path: &str) -> Value {
        let res = reqwest::get(self.url(path)).await.expect("GET");
        assert_eq!(res.status(), 200);
        res.json().await.expect("JSON")
    }
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Types unique markers at the start or the end until told to stop, and
/// remembers which it typed and which the server acknowledged.
async fn typist(session: Session, seed: u64, stop: Arc<Mutex<bool>>) -> (Session, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut typed = Vec::new();
    let mut k = 0;
    while !*stop.lock().unwrap() {
        let marker = format!("<{}:{k}>", session.client_id());
        k += 1;
        let at_end = rng.gen_bool(0.5);
        let text = marker.clone();
        session
            .edit_with(move |content| {
                let pos = if at_end { content.len_chars() } else { 0 };
                Some(Operation::insert(pos, &text))
            })
            .await
            .expect("local edit");
        typed.push(marker);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1..6))).await;
    }
    (session, typed)
}

async fn sigkill_loses_nothing(db: &TestDb) {
    let server = Server::start(free_addr(), &db.url).await;
    let created = reqwest::Client::new()
        .post(server.url("/api/documents"))
        .json(&json!({"id": "doc", "title": "Crash", "content": ""}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);

    let stop = Arc::new(Mutex::new(false));
    let mut typists = Vec::new();
    // Every ack any client got: (client, seq, rev).
    let acked = Arc::new(Mutex::new(Vec::new()));
    for i in 0..3 {
        let client = format!("t{i}");
        let options = Options {
            client_id: Some(client.clone()),
            ..Options::default()
        };
        let mut session = Session::connect(&server.url(""), "doc", options)
            .await
            .expect("connect");
        let mut events = session.take_events();
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let Event::Acked { seq, rev } = event {
                    acked.lock().unwrap().push((client.clone(), seq, rev));
                }
            }
        });
        typists.push(tokio::spawn(typist(session, i, Arc::clone(&stop))));
    }

    // Let some edits commit, then kill the server mid-stream.
    wait_for(WAIT, "edits to commit", || async {
        server.get("/api/documents/doc").await["rev"].as_u64() >= Some(40)
    })
    .await;
    let (addr, db_url) = server.kill().await;

    // The clients keep typing while the server is down; then it comes back.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let server = Server::start(addr, &db_url).await;
    wait_for(WAIT, "edits after the restart", || async {
        server.get("/api/documents/doc").await["rev"].as_u64() >= Some(80)
    })
    .await;
    *stop.lock().unwrap() = true;
    let mut sessions = Vec::new();
    let mut typed = Vec::new();
    for t in typists {
        let (session, markers) = t.await.expect("typist");
        sessions.push(session);
        typed.extend(markers);
    }
    for s in &sessions {
        tokio::time::timeout(WAIT, s.wait_synced())
            .await
            .expect("synced in time")
            .expect("synced");
    }

    let doc = server.get("/api/documents/doc").await;
    let (content, rev) = (
        doc["content"].as_str().unwrap(),
        doc["rev"].as_u64().unwrap(),
    );
    for marker in &typed {
        assert_eq!(content.matches(marker.as_str()).count(), 1, "{marker}");
    }
    let mut ops = Vec::new();
    while (ops.len() as u64) < rev {
        let page = server
            .get(&format!(
                "/api/documents/doc/ops?since={}&limit=1000",
                ops.len()
            ))
            .await;
        ops.extend(page["ops"].as_array().unwrap().clone());
    }
    let revs: Vec<u64> = ops.iter().map(|o| o["rev"].as_u64().unwrap()).collect();
    assert_eq!(revs, (1..=rev).collect::<Vec<_>>(), "gap-free history");
    let mut seen = HashSet::new();
    for op in &ops {
        let key = (op["client_id"].to_string(), op["seq"].as_u64());
        assert!(seen.insert(key.clone()), "{key:?} committed twice");
    }
    // Every acknowledgement, before and after the crash, names an op that
    // is in the log at that revision.
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20, "only {} acks", acked.len());
    for (client, seq, at) in acked {
        let op = &ops[at as usize - 1];
        assert_eq!(
            (op["client_id"].as_str(), op["seq"].as_u64()),
            (Some(client.as_str()), Some(seq))
        );
    }
    for s in &sessions {
        s.wait_for_rev(rev).await.unwrap();
        assert_eq!(s.content().await.unwrap(), content);
    }
    server.kill().await;
}

backend_tests!(sigkill_loses_nothing);
