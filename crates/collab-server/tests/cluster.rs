//! Several `collab serve` processes on one PostgreSQL database and one Redis
//! serve the same document together: edits from clients spread
//! over three instances converge into one gap-free history that reads the
//! same through every instance; a SIGKILLed instance's clients resume on a
//! survivor (through a proxy standing in for a load balancer) without losing
//! or doubling an acknowledged op; cutting the instances' Redis connections
//! loses nothing; presence crosses instances and a dead instance's peers
//! leave within the presence TTL; a revocation made through one instance
//! closes a session on another within a second.
//!
//! Needs `COLLAB_TEST_DATABASE_URL` (a PostgreSQL server; every test gets a
//! fresh database on it) and `COLLAB_TEST_REDIS_URL`; without them the tests
//! pass with a notice (unless `COLLAB_TEST_REQUIRE_REDIS` is set). Every test
//! uses its own `COLLAB_REDIS_PREFIX`, so concurrent runs share nothing.
//! Each instance logs at `info` to a file; a failing test prints the tails
//! (a passing one too with `COLLAB_TEST_SHOW_LOGS=1`).

mod common;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use collab_client::{Event, Events, Operation, Options, Session, User};
use common::TestDb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const REDIS_ENV: &str = "COLLAB_TEST_REDIS_URL";
const REQUIRE_REDIS_ENV: &str = "COLLAB_TEST_REQUIRE_REDIS";
/// The instances' `RUST_LOG` (default `info`).
const LOG_ENV: &str = "COLLAB_TEST_INSTANCE_LOG";
/// Print the instances' log tails also when a test passes.
const SHOW_LOGS_ENV: &str = "COLLAB_TEST_SHOW_LOGS";
const WAIT: Duration = Duration::from_secs(45);
const PRESENCE_TTL_SECS: u64 = 3;
const DOC: &str = "doc";

// ---------------------------------------------------------------------------
// Harness: skipping, the fresh database and Redis prefix, cleanup.

/// The Redis URL for the tests, or `None` (with a notice) to skip them.
fn redis_url() -> Option<String> {
    match std::env::var(REDIS_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os(REQUIRE_REDIS_ENV).is_none(),
                "{REQUIRE_REDIS_ENV} is set but {REDIS_ENV} is not"
            );
            static NOTICE: std::sync::Once = std::sync::Once::new();
            NOTICE.call_once(|| {
                // Past libtest's capture, so the notice is always seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping multi-instance tests: {REDIS_ENV} not set"
                );
            });
            None
        }
    }
}

/// What a test body gets: a fresh PostgreSQL database, the Redis URL, and
/// a Redis prefix of its own.
#[derive(Clone)]
struct Env {
    db_url: String,
    redis_url: String,
    prefix: String,
}

/// Runs `body` when PostgreSQL and Redis are configured; drops the database
/// and the prefix's Redis keys afterwards, also when the body panics.
async fn run<F, Fut>(body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(redis_url) = redis_url() else { return };
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let ping = Command::new("redis-cli")
        .args(["-u", &redis_url, "PING"])
        .output()
        .await
        .expect("run redis-cli");
    assert!(
        String::from_utf8_lossy(&ping.stdout).contains("PONG"),
        "{REDIS_ENV}={redis_url} is unreachable: {}",
        String::from_utf8_lossy(&ping.stderr)
    );
    let env = Env {
        db_url: db.url.clone(),
        redis_url,
        prefix: format!("collab-test-{}", uuid::Uuid::new_v4().simple()),
    };
    let dropper = db.dropper();
    let outcome = tokio::spawn(body(env.clone())).await;
    dropper.drop_database().await;
    drop(db);
    delete_redis_keys(&env.redis_url, &env.prefix).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Removes whatever keys the instances left under `prefix`.
async fn delete_redis_keys(redis_url: &str, prefix: &str) {
    let Ok(out) = Command::new("redis-cli")
        .args([
            "-u",
            redis_url,
            "--scan",
            "--pattern",
            &format!("{prefix}*"),
        ])
        .output()
        .await
    else {
        return;
    };
    let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    for chunk in keys.chunks(100) {
        let _ = Command::new("redis-cli")
            .args(["-u", redis_url, "DEL"])
            .args(chunk)
            .output()
            .await;
    }
}

/// Seconds since the first call, for the event notes.
fn elapsed() -> f64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Wait until `condition` holds, polling; panic after `timeout` with the
/// message `what()` builds then.
async fn wait_until<F, Fut>(timeout: Duration, what: impl Fn() -> String, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    // A check that hangs (an instance that stopped answering) times out too.
    while !tokio::time::timeout_at(deadline, condition())
        .await
        .unwrap_or(false)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {}",
            what()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------
// The instances.

/// One `collab serve` process.
struct Instance {
    addr: SocketAddr,
    child: Child,
}

/// Three instances on one database and one Redis. Their logs go to files in
/// a temporary directory; when a test fails the tails are printed.
struct Cluster {
    env: Env,
    /// What the instances get as `REDIS_URL` (a proxy in the Redis test).
    instance_redis_url: String,
    /// More environment for every instance.
    instance_env: Vec<(&'static str, String)>,
    logs: tempfile::TempDir,
    instances: Vec<Option<Instance>>,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(env: &Env, n: usize) -> Cluster {
        Self::start_with_redis(env, n, env.redis_url.clone()).await
    }

    async fn start_with_redis(env: &Env, n: usize, instance_redis_url: String) -> Cluster {
        Self::start_with(env, n, instance_redis_url, Vec::new()).await
    }

    async fn start_with(
        env: &Env,
        n: usize,
        instance_redis_url: String,
        instance_env: Vec<(&'static str, String)>,
    ) -> Cluster {
        let mut cluster = Cluster {
            env: env.clone(),
            instance_redis_url,
            instance_env,
            logs: tempfile::tempdir().expect("log dir"),
            instances: Vec::new(),
            http: reqwest::Client::new(),
        };
        // Spawned together, as a compose file would: they migrate the one
        // database concurrently.
        for i in 0..n {
            let instance = cluster.spawn(i);
            cluster.instances.push(Some(instance));
        }
        for i in 0..n {
            cluster.wait_healthy(i).await;
        }
        cluster
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.logs.path().join(format!("instance-{i}.log"))
    }

    fn spawn(&self, i: usize) -> Instance {
        let addr = free_addr();
        let log = std::fs::File::create(self.log_path(i)).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_collab"))
            .arg("serve")
            .env("DATABASE_URL", &self.env.db_url)
            .env("REDIS_URL", &self.instance_redis_url)
            .env("COLLAB_REDIS_PREFIX", &self.env.prefix)
            .env("COLLAB_INSTANCE_ID", format!("i{i}"))
            .env("COLLAB_PRESENCE_TTL_SECS", PRESENCE_TTL_SECS.to_string())
            .env("COLLAB_BIND", addr.to_string())
            .env("COLLAB_MAX_OPS_PER_SECOND", "100000")
            .env(
                "RUST_LOG",
                std::env::var(LOG_ENV).unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .envs(self.instance_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("start collab");
        Instance { addr, child }
    }

    async fn wait_healthy(&mut self, i: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let instance = self.instances[i].as_mut().expect("running");
            if let Some(status) = instance.child.try_wait().expect("try_wait") {
                panic!("instance {i} exited during startup ({status})");
            }
            let url = format!("http://{}/health", instance.addr);
            if self
                .http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "instance {i} did not answer /health"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.instances[i].as_ref().expect("running").addr
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{}", self.addr(i), path)
    }

    /// SIGKILL: no shutdown code runs.
    async fn kill(&mut self, i: usize) {
        let mut instance = self.instances[i].take().expect("running");
        instance.child.kill().await.expect("kill");
    }

    async fn get(&self, i: usize, path: &str) -> Value {
        let res = self
            .http
            .get(self.url(i, path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on instance {i}: {e}"));
        let status = res.status();
        let text = res.text().await.expect("body");
        assert_eq!(status, 200, "GET {path} on instance {i}: {text}");
        serde_json::from_str(&text).expect("JSON")
    }

    async fn create(&self, i: usize, content: &str) {
        let res = self
            .http
            .post(self.url(i, "/api/documents"))
            .json(&json!({"id": DOC, "title": "Cluster", "content": content}))
            .send()
            .await
            .expect("create");
        assert_eq!(
            res.status(),
            201,
            "{}",
            res.text().await.unwrap_or_default()
        );
    }

    /// The document's revision as instance `i` serves it.
    async fn rev(&self, i: usize) -> u64 {
        self.get(i, &format!("/api/documents/{DOC}")).await["rev"]
            .as_u64()
            .expect("rev")
    }

    /// The whole op log, read page by page through instance `i`.
    async fn history(&self, i: usize) -> Vec<Value> {
        let mut ops: Vec<Value> = Vec::new();
        loop {
            let page = self
                .get(
                    i,
                    &format!("/api/documents/{DOC}/ops?since={}&limit=1000", ops.len()),
                )
                .await;
            let page = page["ops"].as_array().expect("ops").clone();
            if page.is_empty() {
                return ops;
            }
            ops.extend(page);
        }
    }

    async fn connect(&self, i: usize, client_id: &str, user: Option<User>) -> Session {
        connect_to(&format!("http://{}", self.addr(i)), client_id, user).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os(SHOW_LOGS_ENV).is_none() {
            return;
        }
        for i in 0..self.instances.len() {
            let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let problems: Vec<&&str> = lines
                .iter()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            eprintln!(
                "===== instance {i}: {} log lines, {} WARN/ERROR (first 30 of those, then the last 40 lines)",
                lines.len(),
                problems.len()
            );
            for line in problems.iter().take(30) {
                eprintln!("{line}");
            }
            eprintln!("----- tail");
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

async fn connect_to(base_url: &str, client_id: &str, user: Option<User>) -> Session {
    let options = Options {
        client_id: Some(client_id.to_owned()),
        user,
        ..Options::default()
    };
    tokio::time::timeout(WAIT, Session::connect(base_url, DOC, options))
        .await
        .unwrap_or_else(|_| panic!("{client_id}: connect to {base_url} timed out"))
        .unwrap_or_else(|e| panic!("{client_id}: connect to {base_url}: {e}"))
}

// ---------------------------------------------------------------------------
// A TCP proxy: a load balancer in front of instances, or a cuttable link to
// Redis.

struct Proxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    accept: tokio::task::JoinHandle<()>,
}

struct ProxyShared {
    target: Mutex<SocketAddr>,
    /// While set, new connections are closed at once (the target is
    /// "unreachable").
    down: AtomicBool,
    /// Local addresses of the open upstream connections, by number.
    upstream: Mutex<HashMap<u64, SocketAddr>>,
    opened: AtomicU64,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(ProxyShared {
            target: Mutex::new(target),
            down: AtomicBool::new(false),
            upstream: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if accepting.down.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let shared = Arc::clone(&accepting);
                let task = tokio::spawn(pipe(inbound, shared));
                accepting.tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy {
            addr,
            shared,
            accept,
        }
    }

    fn retarget(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap() = target;
    }

    fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    fn upstream_addrs(&self) -> Vec<SocketAddr> {
        self.shared
            .upstream
            .lock()
            .unwrap()
            .values()
            .copied()
            .collect()
    }

    fn opened(&self) -> u64 {
        self.shared.opened.load(Ordering::SeqCst)
    }
}

async fn pipe(mut inbound: TcpStream, shared: Arc<ProxyShared>) {
    let target = *shared.target.lock().unwrap();
    let Ok(Ok(mut upstream)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await
    else {
        return; // the client sees its connection close, and retries
    };
    let _ = inbound.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let id = shared.opened.fetch_add(1, Ordering::SeqCst);
    if let Ok(local) = upstream.local_addr() {
        shared.upstream.lock().unwrap().insert(id, local);
    }
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await;
    shared.upstream.lock().unwrap().remove(&id);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.shared.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// Typing, and checking the outcome.

/// What the clients' events said: every acknowledgement (client, seq,
/// rev), and every connection-level event (drops, resets, errors).
#[derive(Default)]
struct Record {
    acks: Mutex<Vec<(String, u64, u64)>>,
    troubles: Mutex<Vec<String>>,
}

type Acks = Arc<Record>;

/// Takes the session's events in a task and records them; the notes are
/// printed as they come (libtest shows them when the test fails).
fn drain_events(session: &mut Session, record: &Acks) {
    let mut events = session.take_events();
    let client = session.client_id().to_owned();
    let record = Arc::clone(record);
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::Acked { seq, rev } => {
                    record.acks.lock().unwrap().push((client.clone(), seq, rev))
                }
                Event::Remote { .. }
                | Event::Sent { .. }
                | Event::Presence { .. }
                | Event::Leave { .. } => {}
                Event::Welcome { rev, .. } => {
                    eprintln!("[{:7.3}s] {client}: welcome at rev {rev}", elapsed())
                }
                other => {
                    let note = format!("[{:7.3}s] {client}: {other:?}", elapsed());
                    eprintln!("{note}");
                    record.troubles.lock().unwrap().push(note);
                }
            }
        }
    });
}

fn acks_of(record: &Acks, client: &str) -> usize {
    record
        .acks
        .lock()
        .unwrap()
        .iter()
        .filter(|(c, _, _)| c == client)
        .count()
}

/// What one typist did.
struct Typed {
    session: Session,
    /// Every marker it inserted.
    markers: Vec<String>,
    /// Those it deleted again.
    deleted: HashSet<String>,
}

/// Inserts unique markers at random marker boundaries (so no marker is ever
/// split) and now and then deletes one of its own, building each edit
/// against the content as it is then; stops after `limit` edits or when
/// told to.
async fn typist(session: Session, seed: u64, limit: usize, stop: Arc<AtomicBool>) -> Typed {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut markers = Vec::new();
    let mut live: Vec<String> = Vec::new();
    let mut deleted = HashSet::new();
    let mut k = 0;
    while k < limit && !stop.load(Ordering::SeqCst) {
        k += 1;
        if live.len() > 3 && rng.gen_bool(0.15) {
            let marker = live.swap_remove(rng.gen_range(0..live.len()));
            let found = Arc::new(AtomicBool::new(false));
            let (text, flag) = (marker.clone(), Arc::clone(&found));
            session
                .edit_with(move |content| {
                    let s = content.to_string();
                    let at = s.find(&text)?;
                    flag.store(true, Ordering::SeqCst);
                    Some(Operation::delete(
                        s[..at].chars().count(),
                        text.chars().count(),
                    ))
                })
                .await
                .expect("local edit");
            assert!(
                found.load(Ordering::SeqCst),
                "{}: own marker {marker} missing from the local content",
                session.client_id()
            );
            deleted.insert(marker);
        } else {
            let marker = format!("<{}:{k}>", session.client_id());
            let (text, pick) = (marker.clone(), rng.gen::<u64>());
            session
                .edit_with(move |content| {
                    let mut boundaries: Vec<usize> = content
                        .chars()
                        .enumerate()
                        .filter(|&(_, c)| c == '<')
                        .map(|(i, _)| i)
                        .collect();
                    boundaries.push(content.len_chars());
                    let pos = boundaries[(pick % boundaries.len() as u64) as usize];
                    Some(Operation::insert(pos, &text))
                })
                .await
                .expect("local edit");
            markers.push(marker.clone());
            live.push(marker);
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1..8))).await;
    }
    Typed {
        session,
        markers,
        deleted,
    }
}

/// Joins the typists and waits until every session's edits are acknowledged.
async fn finish(typists: Vec<tokio::task::JoinHandle<Typed>>) -> Vec<Typed> {
    let mut done = Vec::new();
    for t in typists {
        done.push(t.await.expect("typist"));
    }
    for t in &done {
        let id = t.session.client_id().to_owned();
        match tokio::time::timeout(WAIT, t.session.wait_synced()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{id}: wait_synced: {e}"),
            Err(_) => panic!("{id}: not synced after {WAIT:?}: {:?}", t.session.status()),
        }
    }
    done
}

/// The checks every typing test ends with, against the instances `live`:
/// one identical, gap-free history through each; no (client_id, seq) twice;
/// every ack names the op at its revision; the history replays to the
/// content every instance and every client has; each marker is there
/// exactly once (none if deleted) and nothing else is.
async fn verify(cluster: &Cluster, live: &[usize], typed: &[Typed], acks: &Acks) {
    let ops = cluster.history(live[0]).await;
    let n = ops.len() as u64;
    for &i in &live[1..] {
        let other = cluster.history(i).await;
        if other != ops {
            let first = ops.iter().zip(&other).position(|(a, b)| a != b);
            panic!(
                "history through instance {i} differs from instance {}: lengths {} vs {n}, first difference at index {first:?}: {:?} vs {:?}",
                live[0],
                other.len(),
                first.map(|f| &other[f]),
                first.map(|f| &ops[f]),
            );
        }
    }
    let revs: Vec<u64> = ops.iter().map(|o| o["rev"].as_u64().unwrap()).collect();
    assert_eq!(revs, (1..=n).collect::<Vec<_>>(), "gap-free history");

    let mut seen = HashSet::new();
    for op in &ops {
        if let (Some(client), Some(seq)) = (op["client_id"].as_str(), op["seq"].as_u64()) {
            assert!(
                seen.insert((client.to_owned(), seq)),
                "({client}, {seq}) committed twice; again at rev {}",
                op["rev"]
            );
        }
    }

    let acks = acks.acks.lock().unwrap().clone();
    let mut acked = HashSet::new();
    for (client, seq, rev) in &acks {
        assert!(
            (1..=n).contains(rev),
            "{client} seq {seq} acked at rev {rev}, beyond the log ({n})"
        );
        let op = &ops[*rev as usize - 1];
        assert_eq!(
            (op["client_id"].as_str(), op["seq"].as_u64()),
            (Some(client.as_str()), Some(*seq)),
            "the op acked to {client} as seq {seq} at rev {rev} is not that one"
        );
        assert!(
            acked.insert((client.clone(), *seq)),
            "{client} seq {seq} acked twice"
        );
    }

    let mut content = String::new();
    for op in &ops {
        let parsed = Operation::from_json(&op["op"].to_string()).expect("stored op");
        content = parsed
            .apply_str(&content)
            .unwrap_or_else(|e| panic!("rev {} does not apply: {e}", op["rev"]));
    }

    let mut live_len = 0;
    for t in typed {
        for marker in &t.markers {
            let expected = usize::from(!t.deleted.contains(marker));
            assert_eq!(
                content.matches(marker.as_str()).count(),
                expected,
                "{marker} (deleted: {})",
                expected == 0
            );
            live_len += expected * marker.len();
        }
    }
    assert_eq!(
        content.len(),
        live_len,
        "the content holds only the markers"
    );

    for &i in live {
        let get = || async move { cluster.rev(i).await == n };
        wait_until(WAIT, || format!("instance {i} to serve rev {n}"), get).await;
        let doc = cluster.get(i, &format!("/api/documents/{DOC}")).await;
        assert_eq!(
            doc["content"].as_str(),
            Some(content.as_str()),
            "content through instance {i}"
        );
    }
    for t in typed {
        let id = t.session.client_id();
        tokio::time::timeout(WAIT, t.session.wait_for_rev(n))
            .await
            .unwrap_or_else(|_| panic!("{id} did not reach rev {n}: {:?}", t.session.status()))
            .expect("session");
        assert_eq!(
            t.session.content().await.expect("content"),
            content,
            "{id}'s content"
        );
    }
    eprintln!(
        "verified: {n} revisions, {} acks, {} chars",
        acks.len(),
        content.len()
    );
}

// ---------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edits_converge_across_instances() {
    run(|env| async move {
        let cluster = Cluster::start(&env, 3).await;
        cluster.create(0, "").await;
        let acks: Acks = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut typists = Vec::new();
        for c in 0..6 {
            let mut session = cluster.connect(c % 3, &format!("c{c}"), None).await;
            drain_events(&mut session, &acks);
            typists.push(tokio::spawn(typist(
                session,
                c as u64,
                60,
                Arc::clone(&stop),
            )));
        }
        let typed = finish(typists).await;
        verify(&cluster, &[0, 1, 2], &typed, &acks).await;
        // Nothing failed, so no instance had a reason to drop a client,
        // however often the instances raced each other for a revision.
        let troubles = acks.troubles.lock().unwrap().clone();
        assert!(
            troubles.is_empty(),
            "clients were disconnected or refused although nothing failed:\n{}",
            troubles.join("\n")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_one_instance_mid_stream() {
    run(|env| async move {
        let mut cluster = Cluster::start(&env, 3).await;
        cluster.create(0, "").await;
        // Instance 2's clients reach it through a "load balancer".
        let balancer = Proxy::start(cluster.addr(2)).await;
        let acks: Acks = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut typists = Vec::new();
        for c in 0..6 {
            let id = format!("c{c}");
            let mut session = if c % 3 == 2 {
                connect_to(&format!("http://{}", balancer.addr), &id, None).await
            } else {
                cluster.connect(c % 3, &id, None).await
            };
            drain_events(&mut session, &acks);
            typists.push(tokio::spawn(typist(
                session,
                c as u64,
                usize::MAX,
                Arc::clone(&stop),
            )));
        }

        // Mid-stream: everyone, also instance 2's clients, has committed some.
        let (c, a) = (&cluster, &acks);
        let progress = || async move {
            c.rev(0).await >= 60 && ["c2", "c5"].iter().all(|id| acks_of(a, id) >= 5)
        };
        wait_until(WAIT, || "edits to commit on every instance".into(), progress).await;
        let before: Vec<usize> = ["c2", "c5"].iter().map(|id| acks_of(&acks, id)).collect();
        eprintln!("[{:7.3}s] killing instance 2", elapsed());
        cluster.kill(2).await;
        // The balancer notices a moment later and sends them to instance 0.
        tokio::time::sleep(Duration::from_millis(200)).await;
        balancer.retarget(cluster.addr(0));

        // They resume there and go on typing, as do the others.
        let rev_at_kill = cluster.rev(0).await;
        let (c, a, b) = (&cluster, &acks, &before);
        let resumed = || async move {
            c.rev(0).await >= rev_at_kill + 60
                && ["c2", "c5"]
                    .iter()
                    .zip(b)
                    .all(|(id, n)| acks_of(a, id) >= n + 10)
        };
        let what = || {
            format!(
                "instance 2's clients to resume on instance 0 (acks c2 {} c5 {}, before the kill {before:?})",
                acks_of(&acks, "c2"),
                acks_of(&acks, "c5")
            )
        };
        wait_until(WAIT, what, resumed).await;
        stop.store(true, Ordering::SeqCst);
        let typed = finish(typists).await;
        verify(&cluster, &[0, 1], &typed, &acks).await;
    })
    .await;
}

/// Kills this test's instances' Redis connections, as seen by Redis (the
/// proxy's upstream ends), with `CLIENT KILL ADDR`: pub/sub and normal
/// alike. Filtering by address keeps concurrent tests' connections alive,
/// which `CLIENT KILL TYPE pubsub` would not. Returns how many were killed.
async fn cut_redis(redis_url: &str, link: &Proxy) -> usize {
    let mut killed = 0;
    for addr in link.upstream_addrs() {
        let out = Command::new("redis-cli")
            .args(["-u", redis_url, "CLIENT", "KILL", "ADDR", &addr.to_string()])
            .output()
            .await
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli: {out:?}");
        killed += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<usize>()
            .unwrap_or(0);
    }
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cut_misses_nothing() {
    run(|env| async move {
        // The instances reach Redis through a proxy, so the test can tell
        // their connections from anyone else's.
        let mut redis = reqwest::Url::parse(&env.redis_url).expect("redis URL");
        let host = redis.host_str().expect("redis host").to_owned();
        let port = redis.port().unwrap_or(6379);
        let target = tokio::net::lookup_host((host.as_str(), port))
            .await
            .expect("resolve redis")
            .min_by_key(|a| a.is_ipv6())
            .expect("redis address");
        let link = Proxy::start(target).await;
        redis.set_host(Some("127.0.0.1")).expect("host");
        redis.set_port(Some(link.addr.port())).expect("port");
        let cluster = Cluster::start_with_redis(&env, 3, redis.to_string()).await;
        cluster.create(0, "").await;

        let acks: Acks = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut typists = Vec::new();
        for c in 0..4 {
            let mut session = cluster.connect(c % 2, &format!("c{c}"), None).await;
            drain_events(&mut session, &acks);
            typists.push(tokio::spawn(typist(
                session,
                c as u64,
                usize::MAX,
                Arc::clone(&stop),
            )));
        }
        let mut target_rev = 40;
        for round in 0..2 {
            let c = &cluster;
            let progress = || async move { c.rev(0).await >= target_rev };
            wait_until(WAIT, || format!("rev {target_rev}"), progress).await;
            let opened = link.opened();
            // Round 0: Redis stays unreachable for a second; round 1: the
            // connections are only cut.
            link.set_down(round == 0);
            let killed = cut_redis(&env.redis_url, &link).await;
            eprintln!(
                "[{:7.3}s] round {round}: killed {killed} Redis connections",
                elapsed()
            );
            // At least each instance's subscription.
            assert!(
                killed >= 3,
                "round {round}: only {killed} Redis connections to cut; each instance should hold one"
            );
            if round == 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                link.set_down(false);
            }
            // The instances connect again by themselves (each at least to
            // subscribe), while typing goes on.
            let l = &link;
            let reconnected = || async move { l.opened() >= opened + 3 };
            wait_until(
                WAIT,
                || "the instances to reconnect to Redis".into(),
                reconnected,
            )
            .await;
            target_rev = cluster.rev(0).await + 40;
        }
        let c = &cluster;
        let progress = || async move { c.rev(0).await >= target_rev };
        wait_until(WAIT, || format!("rev {target_rev}"), progress).await;
        stop.store(true, Ordering::SeqCst);
        let typed = finish(typists).await;
        verify(&cluster, &[0, 1, 2], &typed, &acks).await;
    })
    .await;
}

/// Reads events until one satisfies `wanted`; panics after `within`,
/// listing what came instead.
async fn expect_event(
    events: &mut Events,
    who: &str,
    within: Duration,
    wanted: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + within;
    let mut other = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(event)) if wanted(&event) => return event,
            Ok(Some(event)) => other.push(event),
            Ok(None) => panic!("{who}: session ended; events: {other:?}"),
            Err(_) => panic!("{who}: no such event within {within:?}; got instead: {other:?}"),
        }
    }
}

fn is_presence(event: &Event, client: &str, selection: [usize; 2], user: &Value) -> bool {
    matches!(event, Event::Presence { client_id, selection: s, user: u }
        if client_id == client && *s == Some(selection) && u == user)
}

fn is_leave(event: &Event, client: &str) -> bool {
    matches!(event, Event::Leave { client_id } if client_id == client)
}

/// A new session on instance `i`, and the peers its welcome listed.
async fn newcomer(cluster: &Cluster, i: usize, id: &str) -> (Session, Events, Vec<String>) {
    let mut session = cluster.connect(i, id, None).await;
    let mut events = session.take_events();
    let welcome = expect_event(&mut events, id, WAIT, |e| {
        matches!(e, Event::Welcome { .. })
    })
    .await;
    let Event::Welcome { peers, .. } = welcome else {
        unreachable!()
    };
    let names = peers.iter().map(|p| p.client_id.clone()).collect();
    (session, events, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_crosses_instances() {
    run(|env| async move {
        let mut cluster = Cluster::start(&env, 3).await;
        cluster.create(0, "hello world").await;
        let user = User {
            name: "Alice".into(),
            color: "#e11d48".into(),
        };
        let user_json = serde_json::to_value(&user).expect("user");

        let mut bob = cluster.connect(1, "bob", None).await;
        let mut bob_events = bob.take_events();
        let alice = cluster.connect(0, "alice", Some(user.clone())).await;
        alice.set_presence(Some([1, 4])).await.expect("presence");
        expect_event(&mut bob_events, "bob (instance 1)", WAIT, |e| {
            is_presence(e, "alice", [1, 4], &user_json)
        })
        .await;

        // A newcomer on the third instance, whose room was not even open,
        // is welcomed with alice's cursor.
        let mut carol = cluster.connect(2, "carol", None).await;
        let mut carol_events = carol.take_events();
        let welcome = expect_event(&mut carol_events, "carol", WAIT, |e| {
            matches!(e, Event::Welcome { .. })
        })
        .await;
        let Event::Welcome { peers, .. } = welcome else {
            unreachable!()
        };
        let listed = peers.iter().find(|p| p.client_id == "alice");
        let mut late_welcome = None;
        if listed.map(|p| (p.selection, &p.user)) != Some((Some([1, 4]), &user_json)) {
            // Say whether it shows up later, to tell "late" from "never".
            let started = Instant::now();
            let later = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(e) = carol_events.next().await {
                    if is_presence(&e, "alice", [1, 4], &user_json) {
                        return;
                    }
                }
            })
            .await;
            // Reported at the end, so the rest is checked too.
            late_welcome = Some(format!(
                "carol's welcome on instance 2 lists {peers:?}, not alice with [1, 4] and her user; \
                 a presence event for her came {}",
                match later {
                    Ok(()) => format!("{:?} later", started.elapsed()),
                    Err(_) => "not within 5 s either".into(),
                }
            ));
        }

        // Alice leaves: both other instances say so.
        drop(alice);
        expect_event(&mut bob_events, "bob", WAIT, |e| is_leave(e, "alice")).await;
        expect_event(&mut carol_events, "carol", WAIT, |e| is_leave(e, "alice")).await;
        let (_dave, _, peers) = newcomer(&cluster, 1, "dave").await;
        assert!(!peers.contains(&"alice".into()), "alice lingers: {peers:?}");

        // Alice comes back on instance 0, which then dies: its peers leave
        // within the presence TTL.
        let alice = cluster.connect(0, "alice2", Some(user.clone())).await;
        alice.set_presence(Some([2, 5])).await.expect("presence");
        for (events, who) in [(&mut bob_events, "bob"), (&mut carol_events, "carol")] {
            expect_event(events, who, WAIT, |e| {
                is_presence(e, "alice2", [2, 5], &user_json)
            })
            .await;
        }
        let killed = Instant::now();
        cluster.kill(0).await;
        let bound = Duration::from_secs(PRESENCE_TTL_SECS + 3);
        for (events, who) in [(&mut bob_events, "bob"), (&mut carol_events, "carol")] {
            let remaining = bound.saturating_sub(killed.elapsed());
            expect_event(events, who, remaining, |e| is_leave(e, "alice2")).await;
            eprintln!("{who} saw alice2 leave {:?} after the kill", killed.elapsed());
        }
        let (_erin, _, peers) = newcomer(&cluster, 2, "erin").await;
        assert!(
            !peers.contains(&"alice2".into()),
            "a dead instance's peer lingers: {peers:?}"
        );
        drop(alice);
        if let Some(failure) = late_welcome {
            panic!("{failure}");
        }
    })
    .await;
}

/// A throwaway CA (`ca.pem`) and a certificate for 127.0.0.1 signed by it
/// (`server.pem`, `server.key`), in the current directory.
const MAKE_CERTS: &str = "set -e
ec='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'
openssl req -x509 $ec -days 2 -subj '/CN=collab test CA' -keyout ca.key -out ca.pem
openssl req $ec -subj /CN=127.0.0.1 -keyout server.key -out server.csr
printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > server.ext
openssl x509 -req -days 2 -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \\
    -extfile server.ext -out server.pem
";

/// A Redis of its own that speaks only TLS, with a certificate for
/// 127.0.0.1 signed by a throwaway CA.
struct TlsRedis {
    port: u16,
    dir: tempfile::TempDir,
    _server: Child,
}

impl TlsRedis {
    /// `None`, with a notice, where `redis-server` or `openssl` is missing.
    async fn start() -> Option<TlsRedis> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |f: &str| dir.path().join(f).display().to_string();
        if Command::new("openssl")
            .arg("version")
            .output()
            .await
            .is_err()
        {
            eprintln!("skipping Redis over TLS: openssl is not installed");
            return None;
        }
        let made = Command::new("sh")
            .args(["-c", MAKE_CERTS])
            .current_dir(dir.path())
            .output()
            .await
            .expect("run sh");
        assert!(
            made.status.success(),
            "making certificates: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let port = free_addr().port();
        let server = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--tls-cert-file", &path("server.pem")])
            .args(["--tls-key-file", &path("server.key")])
            .args(["--tls-ca-cert-file", &path("ca.pem")])
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", &dir.path().display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let server = match server {
            Ok(server) => server,
            Err(e) => {
                eprintln!("skipping Redis over TLS: cannot run redis-server ({e})");
                return None;
            }
        };
        let redis = TlsRedis {
            port,
            dir,
            _server: server,
        };
        let ping = || async {
            let out = redis.cli(&["PING"]).await;
            out.contains("PONG")
        };
        wait_until(WAIT, || "the TLS Redis to answer".into(), ping).await;
        Some(redis)
    }

    fn ca(&self) -> String {
        self.dir.path().join("ca.pem").display().to_string()
    }

    /// `redis-cli` over TLS, checking the server against the CA.
    async fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", &self.ca(), "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .await
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Production Redis is often reached over TLS: with `rediss://` the
/// instances verify the server against the CA named the standard way
/// (`SSL_CERT_FILE`), and presence, which only Redis carries, crosses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_over_tls() {
    run(|env| async move {
        let Some(redis) = TlsRedis::start().await else {
            return;
        };
        let url = format!("rediss://127.0.0.1:{}", redis.port);
        let cluster = Cluster::start_with(&env, 2, url, vec![("SSL_CERT_FILE", redis.ca())]).await;
        cluster.create(0, "hello").await;
        let mut bob = cluster.connect(1, "bob", None).await;
        let mut bob_events = bob.take_events();
        let user = User {
            name: "Alice".into(),
            color: "#e11d48".into(),
        };
        let user_json = serde_json::to_value(&user).expect("user");
        let alice = cluster.connect(0, "alice", Some(user)).await;
        alice.set_presence(Some([1, 3])).await.expect("presence");
        expect_event(&mut bob_events, "bob", WAIT, |e| {
            is_presence(e, "alice", [1, 3], &user_json)
        })
        .await;
        // Each instance subscribed over TLS (the server has no plain port).
        let clients = redis.cli(&["CLIENT", "LIST", "TYPE", "pubsub"]).await;
        assert!(
            clients.lines().filter(|l| l.contains("psub=1")).count() >= 2,
            "pub/sub clients of the TLS Redis:\n{clients}"
        );
    })
    .await;
}

/// SQLite is single-instance: `serve` refuses `REDIS_URL` with it. Needs
/// neither PostgreSQL nor Redis, so it always runs.
#[tokio::test]
async fn redis_with_sqlite_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = Command::new(env!("CARGO_BIN_EXE_collab"))
        .arg("serve")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("collab.db").display()),
        )
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("COLLAB_BIND", free_addr().to_string())
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, run)
        .await
        .expect("serve should refuse at once, not start")
        .expect("run collab");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("REDIS_URL (multi-instance) needs a PostgreSQL DATABASE_URL"),
        "{said}"
    );
}

/// A revocation made through one instance closes a session on another
/// within a second. The instances' table polls are set far apart here, so
/// only the Redis message can do it in time (the poll, which covers a lost
/// message, is tested on one instance in `access.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_reaches_every_instance_within_a_second() {
    use collab_server::auth::{mint_with, now_secs, Claims, Secret};
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    const SECRET: &str = "cluster-test-secret-cluster-test-secret";
    run(|env| async move {
        let cluster = Cluster::start_with(
            &env,
            2,
            env.redis_url.clone(),
            vec![
                ("COLLAB_AUTH_SECRET", SECRET.to_owned()),
                ("COLLAB_REVOCATION_POLL_MS", "600000".to_owned()),
            ],
        )
        .await;
        let token = |sub: &str, role: &str| {
            let now = now_secs();
            let claims = Claims {
                sub: sub.to_owned(),
                exp: now + 600,
                iat: Some(now),
                nbf: None,
                jti: None,
                name: None,
                docs: Some([("*".to_owned(), role.to_owned())].into()),
            };
            mint_with(&Secret::new(SECRET), &claims).expect("mint")
        };
        let admin = token("root", "admin");
        let res = cluster
            .http
            .post(cluster.url(0, "/api/documents"))
            .bearer_auth(&admin)
            .json(&json!({"id": DOC, "title": "t"}))
            .send()
            .await
            .expect("create");
        assert_eq!(res.status(), 201);

        let url = format!(
            "ws://{}/ws/documents/{DOC}?token={}",
            cluster.addr(1),
            token("eve", "write")
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let welcome = ws.next().await.expect("welcome").expect("frame");
        assert!(
            welcome.to_text().unwrap().contains("\"welcome\""),
            "{welcome:?}"
        );

        let started = Instant::now();
        let res = cluster
            .http
            .post(cluster.url(0, "/api/auth/revocations"))
            .bearer_auth(&admin)
            .json(&json!({"sub": "eve"}))
            .send()
            .await
            .expect("revoke");
        assert_eq!(res.status(), 204);
        let mut error = None;
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(message)) = ws.next().await {
                match message {
                    Message::Text(t) => error = Some(serde_json::from_str::<Value>(&t).unwrap()),
                    Message::Close(frame) => return frame.map(|f| u16::from(f.code)),
                    _ => {}
                }
            }
            None
        })
        .await
        .expect("the session on the other instance was not closed");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "took {took:?}");
        assert_eq!(closed, Some(1008));
        let error = error.expect("an error frame before the close");
        assert_eq!(
            (error["code"].as_str(), error["message"].as_str()),
            (Some("unauthorized"), Some("token revoked"))
        );
        // And the other instance refuses the token for new requests too.
        let res = cluster
            .http
            .get(cluster.url(1, &format!("/api/documents/{DOC}")))
            .bearer_auth(token_issued_before(&cluster, SECRET).await)
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 401);
    })
    .await;
}

/// A token of the revoked user issued before the revocation.
async fn token_issued_before(_cluster: &Cluster, secret: &str) -> String {
    use collab_server::auth::{mint_with, now_secs, Claims, Secret};
    let claims = Claims {
        sub: "eve".to_owned(),
        exp: now_secs() + 600,
        iat: Some(now_secs() - 5),
        nbf: None,
        jti: None,
        name: None,
        docs: Some([("*".to_owned(), "read".to_owned())].into()),
    };
    mint_with(&Secret::new(secret), &claims).expect("mint")
}
