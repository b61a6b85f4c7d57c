//! The snapshot worker, in-process and standalone, on both backends:
//! snapshots follow activity, always equal a replay of the op log, are never
//! written when the live content disagrees, and several workers sharing a
//! database write each snapshot once.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use collab_ot::Operation;
use collab_server::domain::{DocumentId, Timestamp, Title};
use collab_server::rooms::Rooms;
use collab_server::snapshot::{LiveContent, SnapshotConfig, SnapshotStats, SnapshotWorker};
use collab_server::store::{open_store, DocumentStore, NewDocument, NewOp};
use common::{spawn_app_with, test_config, wait_for, TestApp, TestDb};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);
const LONG: Duration = Duration::from_secs(3600);

fn doc_id(s: &str) -> DocumentId {
    DocumentId::parse(s).unwrap()
}

async fn open(db: &TestDb) -> Arc<dyn DocumentStore> {
    let store = open_store(&db.url).await.expect("open");
    store.migrate().await.expect("migrate");
    store
}

/// A worker running in its own task, stopped through its cancel future.
struct Running {
    stats: SnapshotStats,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

fn start(worker: SnapshotWorker) -> Running {
    let stats = worker.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    Running { stats, stop, task }
}

impl Running {
    /// Cancel and wait for the final cycle to finish.
    async fn stop(self) -> SnapshotStats {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the worker stops")
            .expect("worker task");
        self.stats
    }
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A random valid edit of `content`: inserts (with emoji) and deletes,
/// keeping the document well under the test limit of 1000 characters.
fn random_op(rng: &mut Rng, content: &str) -> Operation {
    const PIECES: [&str; 6] = ["a", "hello ", "😭", "é", "\n", "👩‍👩‍👧 x"];
    let len = content.chars().count();
    if len > 20 && (len > 400 || rng.below(3) == 0) {
        let pos = rng.below(len);
        let n = 1 + rng.below((len - pos).min(8));
        Operation::delete(pos, n)
    } else {
        let pos = rng.below(len + 1);
        Operation::insert(pos, PIECES[rng.below(PIECES.len())])
    }
}

/// The content at `upto` (or the end) replayed from rev 0 out of the log
/// that `GET /ops` serves, page by page.
async fn rest_replay(app: &TestApp, id: &str, initial: &str, upto: Option<u64>) -> (String, u64) {
    let mut content = initial.to_owned();
    let mut rev = 0;
    loop {
        let (status, page) = app
            .get(&format!("/api/documents/{id}/ops?since={rev}&limit=1000"))
            .await;
        assert_eq!(status, 200, "{page}");
        let ops = page["ops"].as_array().expect("ops");
        if ops.is_empty() {
            return (content, rev);
        }
        for item in ops {
            let op_rev = item["rev"].as_u64().expect("rev");
            if upto.is_some_and(|upto| op_rev > upto) {
                return (content, rev);
            }
            assert_eq!(op_rev, rev + 1, "the log has a gap");
            let op = Operation::from_json(&item["op"].to_string()).expect("stored op parses");
            content = op.apply_str(&content).expect("stored op applies");
            rev = op_rev;
        }
    }
}

/// The same replay straight from the store.
async fn store_replay(
    store: &dyn DocumentStore,
    id: &DocumentId,
    initial: &str,
    upto: u64,
) -> String {
    let mut content = initial.to_owned();
    let mut rev = 0;
    while rev < upto {
        let ops = store.ops_since(id, rev, 1000).await.unwrap();
        assert!(!ops.is_empty(), "the log ends at {rev}, before {upto}");
        for stored in ops.into_iter().take_while(|o| o.rev <= upto) {
            assert_eq!(stored.rev, rev + 1, "the log has a gap");
            content = stored.op.apply_str(&content).unwrap();
            rev = stored.rev;
        }
    }
    content
}

/// The newest snapshot of `id`: (rev, content).
async fn latest_snapshot(store: &dyn DocumentStore, id: &DocumentId) -> (u64, String) {
    let loaded = store.load(id, 0).await.unwrap().expect("document");
    (loaded.snapshot_rev, loaded.snapshot)
}

/// Create `id` with `initial` and append `n` random ops straight to the log.
async fn seeded(store: &dyn DocumentStore, id: &str, initial: &str, n: u64, seed: u64) -> String {
    let id = doc_id(id);
    store
        .create_document(NewDocument {
            id: id.clone(),
            title: Title::parse("Doc").unwrap(),
            content: initial.to_owned(),
        })
        .await
        .unwrap();
    append_random(store, &id, initial.to_owned(), 0, n, seed).await
}

async fn append_random(
    store: &dyn DocumentStore,
    id: &DocumentId,
    mut content: String,
    from_rev: u64,
    n: u64,
    seed: u64,
) -> String {
    let mut rng = Rng(seed | 1);
    for rev in from_rev + 1..=from_rev + n {
        let op = random_op(&mut rng, &content);
        content = op.apply_str(&content).unwrap();
        store
            .append_ops(
                id,
                &[NewOp {
                    rev,
                    op,
                    client_id: None,
                    seq: None,
                    author: None,
                }],
            )
            .await
            .unwrap();
    }
    content
}

async fn wait_snapshot_at(store: &Arc<dyn DocumentStore>, id: &DocumentId, rev: u64) {
    wait_for(WAIT, &format!("a snapshot of {id} at {rev}"), || {
        let (store, id) = (Arc::clone(store), id.clone());
        async move { store.latest_snapshot_rev(&id).await.unwrap() >= Some(rev) }
    })
    .await;
}

/// The real rooms as the live side, reading through the public API.
struct RoomsLive(Rooms);

#[async_trait]
impl LiveContent for RoomsLive {
    async fn read_loaded(&self, id: &DocumentId) -> Option<(u64, String)> {
        let state = self.0.read(id).await.ok()?;
        Some((state.rev, state.content))
    }
}

/// (a) Many REST edits, a worker told about each commit: snapshots follow
/// every few ops, each equals the replay, and after the room unloads and
/// the server restarts the content still equals the op log's replay.
async fn rest_edits_are_snapshotted_and_reload_to_the_replay(db: &TestDb) {
    let mut config = test_config(db);
    // The server's own snapshot triggers stay out of the way; this worker
    // snapshots every 10 ops.
    config.snapshot_every_ops = 1_000_000;
    config.snapshot_interval_secs = 3600;
    config.room_idle_secs = 1;
    let app = spawn_app_with(config.clone()).await;
    let store = Arc::clone(&app.state.store);
    let (notifier, worker) = SnapshotWorker::in_process(
        Arc::clone(&store),
        SnapshotConfig {
            every_ops: 10,
            interval: LONG,
            keep_history: 1000,
        },
        None,
    );
    let worker = start(worker.with_live(Arc::new(RoomsLive(app.state.rooms.clone()))));

    let docs = [("alpha", "start 😭 "), ("beta", "")];
    let mut contents: Vec<String> = Vec::new();
    let mut revs = vec![0u64; docs.len()];
    for (id, initial) in docs {
        app.create(id, id, initial).await;
        contents.push(initial.to_owned());
    }
    let mut rng = Rng(0x5eed);
    for _ in 0..160 {
        let d = rng.below(docs.len());
        let op = random_op(&mut rng, &contents[d]);
        let json: Value = serde_json::from_str(&op.to_json()).unwrap();
        revs[d] = app.edit(docs[d].0, revs[d], json).await;
        contents[d] = op.apply_str(&contents[d]).unwrap();
        // What a room does after each successful flush.
        notifier.notify(&doc_id(docs[d].0), revs[d]);
    }

    for (d, (id, initial)) in docs.iter().enumerate() {
        let id_ = doc_id(id);
        // Due every 10 ops, so at most 9 ops stay unsnapshotted.
        wait_snapshot_at(&store, &id_, revs[d].saturating_sub(9)).await;
        let (snap_rev, snapshot) = latest_snapshot(store.as_ref(), &id_).await;
        assert!(snap_rev > 0 && revs[d] - snap_rev < 10, "{id}: {snap_rev}");
        let (replayed, at) = rest_replay(&app, id, initial, Some(snap_rev)).await;
        assert_eq!(at, snap_rev);
        assert_eq!(snapshot, replayed, "{id}: snapshot at {snap_rev}");
    }
    // Cancelling snapshots what is still dirty.
    let stats = worker.stop().await;
    for (d, (id, _)) in docs.iter().enumerate() {
        assert_eq!(
            store.latest_snapshot_rev(&doc_id(id)).await.unwrap(),
            Some(revs[d]),
            "{id}: the final cycle snapshots the rest"
        );
    }
    // A tick snapshots at the live revision, however far past 10 ops it is.
    assert!(
        stats.written() >= docs.len() as u64,
        "written {}",
        stats.written()
    );
    assert_eq!((stats.mismatches(), stats.failures()), (0, 0));

    // Unload and reload: the content is the replay of the whole log.
    let rooms = app.state.rooms.clone();
    wait_for(WAIT, "the rooms to unload", || {
        let rooms = rooms.clone();
        async move { rooms.open_rooms() == 0 }
    })
    .await;
    for (d, (id, initial)) in docs.iter().enumerate() {
        let (replayed, at) = rest_replay(&app, id, initial, None).await;
        assert_eq!((replayed.as_str(), at), (contents[d].as_str(), revs[d]));
        let (_, doc) = app.get(&format!("/api/documents/{id}")).await;
        assert_eq!(doc["content"].as_str(), Some(replayed.as_str()), "{id}");
        assert_eq!(doc["rev"].as_u64(), Some(revs[d]));
    }
    app.stop().await;

    // And after a restart, loading from the worker's snapshots.
    let app = spawn_app_with(config).await;
    for (d, (id, initial)) in docs.iter().enumerate() {
        let (replayed, _) = rest_replay(&app, id, initial, None).await;
        let (_, doc) = app.get(&format!("/api/documents/{id}")).await;
        assert_eq!(doc["content"].as_str(), Some(replayed.as_str()), "{id}");
        assert_eq!(doc["content"].as_str(), Some(contents[d].as_str()));
    }
    app.stop().await;
}

/// (b) The standalone worker finds due documents in the store by op count
/// and by age, and its snapshots equal the replay.
async fn the_standalone_worker_snapshots_due_documents(db: &TestDb) {
    let store = open(db).await;
    let busy = seeded(store.as_ref(), "busy", "x😭y", 60, 1).await;
    let quiet = seeded(store.as_ref(), "quiet", "q", 3, 2).await;
    seeded(store.as_ref(), "fresh", "untouched", 0, 3).await;

    // Which documents are due, straight from the query.
    let hour_ago = Timestamp::from_millis(Timestamp::now().as_millis() - 3_600_000);
    let due = store.snapshot_candidates(50, hour_ago, 100).await.unwrap();
    let due: Vec<_> = due
        .iter()
        .map(|c| (c.id.as_str(), c.rev, c.latest_snapshot_rev))
        .collect();
    assert_eq!(due, [("busy", 60, 0)]);
    let later = Timestamp::from_millis(Timestamp::now().as_millis() + 1000);
    let due = store.snapshot_candidates(50, later, 100).await.unwrap();
    let due: Vec<_> = due.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(due, ["busy", "quiet"]);

    let worker = start(SnapshotWorker::standalone(
        Arc::clone(&store),
        SnapshotConfig {
            every_ops: 50,
            interval: Duration::from_millis(300),
            keep_history: 1000,
        },
    ));
    wait_snapshot_at(&store, &doc_id("busy"), 60).await;
    // Only 3 ops: due once its first unsnapshotted op is 300 ms old.
    wait_snapshot_at(&store, &doc_id("quiet"), 3).await;
    assert_eq!(
        latest_snapshot(store.as_ref(), &doc_id("busy")).await,
        (60, busy.clone())
    );
    assert_eq!(
        latest_snapshot(store.as_ref(), &doc_id("quiet")).await,
        (3, quiet)
    );
    assert_eq!(
        store.latest_snapshot_rev(&doc_id("fresh")).await.unwrap(),
        Some(0)
    );

    // More activity on a document it already snapshotted.
    let busy = append_random(store.as_ref(), &doc_id("busy"), busy, 60, 55, 4).await;
    wait_snapshot_at(&store, &doc_id("busy"), 115).await;
    let (rev, snapshot) = latest_snapshot(store.as_ref(), &doc_id("busy")).await;
    assert_eq!((rev, &snapshot), (115, &busy));
    assert_eq!(
        snapshot,
        store_replay(store.as_ref(), &doc_id("busy"), "x😭y", 115).await
    );
    let stats = worker.stop().await;
    // Perhaps one more while the 55 ops went in.
    assert!(stats.written() >= 3, "written {}", stats.written());
    assert_eq!((stats.mismatches(), stats.failures()), (0, 0));
    store.close().await;
}

/// Stands for a room whose memory went wrong: real code cannot produce that
/// on purpose, so a double answers instead.
struct FixedLive(u64, String);

#[async_trait]
impl LiveContent for FixedLive {
    async fn read_loaded(&self, _id: &DocumentId) -> Option<(u64, String)> {
        Some((self.0, self.1.clone()))
    }
}

/// (c) Live content that disagrees with snapshot + tail is reported and
/// nothing is written; live content that agrees is snapshotted at exactly
/// its revision.
async fn a_mismatch_is_caught_and_not_written(db: &TestDb) {
    let store = open(db).await;
    let id = doc_id("doc");
    let content = seeded(store.as_ref(), "doc", "abc", 5, 7).await;
    let config = SnapshotConfig {
        every_ops: 1,
        interval: LONG,
        keep_history: 1000,
    };

    for wrong in [
        FixedLive(5, format!("{content}!")),
        // A live revision the log does not have.
        FixedLive(9, content.clone()),
    ] {
        let (notifier, worker) = SnapshotWorker::in_process(
            Arc::clone(&store),
            config,
            Some(Arc::new(wrong) as Arc<dyn LiveContent>),
        );
        let worker = start(worker);
        notifier.notify(&id, 5);
        let stats = worker.stats.clone();
        wait_for(WAIT, "the mismatch", || {
            let stats = stats.clone();
            async move { stats.mismatches() >= 1 }
        })
        .await;
        let stats = worker.stop().await;
        assert_eq!(stats.written(), 0);
        assert_eq!(store.latest_snapshot_rev(&id).await.unwrap(), Some(0));
    }

    // Right, but a revision behind the log: rebuilt and written at exactly 3.
    let at_3 = store_replay(store.as_ref(), &id, "abc", 3).await;
    let (notifier, worker) = SnapshotWorker::in_process(
        Arc::clone(&store),
        config,
        Some(Arc::new(FixedLive(3, at_3.clone()))),
    );
    let worker = start(worker);
    notifier.notify(&id, 5);
    wait_snapshot_at(&store, &id, 3).await;
    let stats = worker.stop().await;
    assert_eq!((stats.written(), stats.mismatches()), (1, 0));
    assert_eq!(latest_snapshot(store.as_ref(), &id).await, (3, at_3));
    store.close().await;
}

/// (d) Two standalone workers on the same due documents: every snapshot is
/// written exactly once, without errors.
async fn racing_workers_write_each_snapshot_once(db: &TestDb) {
    let store = open(db).await;
    let mut expected = Vec::new();
    for i in 0..30u64 {
        let id = format!("doc{i:02}");
        let content = seeded(store.as_ref(), &id, "", 25, 100 + i).await;
        expected.push((doc_id(&id), content));
    }
    let config = SnapshotConfig {
        every_ops: 10,
        interval: LONG,
        keep_history: 1000,
    };
    // Each worker its own connection pool, as separate processes would have.
    let other = open(db).await;
    let a = start(SnapshotWorker::standalone(Arc::clone(&store), config));
    let b = start(SnapshotWorker::standalone(Arc::clone(&other), config));
    for (id, _) in &expected {
        wait_snapshot_at(&store, id, 25).await;
    }
    let (a, b) = (a.stop().await, b.stop().await);
    assert_eq!(
        a.written() + b.written(),
        30,
        "busy {} / {}",
        a.busy(),
        b.busy()
    );
    assert_eq!((a.failures(), b.failures()), (0, 0));
    assert_eq!((a.mismatches(), b.mismatches()), (0, 0));
    for (id, content) in &expected {
        assert_eq!(
            latest_snapshot(store.as_ref(), id).await,
            (25, content.clone())
        );
        // The initial snapshot and the worker's, nothing in between.
        let from_start = store.load(id, 1000).await.unwrap().unwrap();
        assert_eq!((from_start.snapshot_rev, from_start.tail.len()), (0, 25));
    }
    other.close().await;
    store.close().await;
}

/// `collab worker`: the binary snapshots due documents and exits cleanly on
/// SIGTERM (sent with `kill`, so Unix only, like the rest of the deployment).
async fn the_worker_subcommand_runs_until_sigterm(db: &TestDb) {
    let store = open(db).await;
    let content = seeded(store.as_ref(), "doc", "hi", 12, 9).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_collab"))
        .args([
            "worker",
            "--database-url",
            &db.url,
            "--snapshot-every-ops",
            "5",
        ])
        .args(["--log", "info", "--log-format", "json"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start collab worker");
    wait_snapshot_at(&store, &doc_id("doc"), 12).await;
    assert_eq!(
        latest_snapshot(store.as_ref(), &doc_id("doc")).await,
        (12, content)
    );
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("collab worker did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    store.close().await;
}

backend_tests!(
    rest_edits_are_snapshotted_and_reload_to_the_replay,
    the_standalone_worker_snapshots_due_documents,
    a_mismatch_is_caught_and_not_written,
    racing_workers_write_each_snapshot_once,
    the_worker_subcommand_runs_until_sigterm,
);
