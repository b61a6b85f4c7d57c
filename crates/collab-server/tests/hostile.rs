//! Hostile clients against a real server: whatever one connection sends,
//! the others stay connected, their edits keep being acknowledged quickly,
//! `/health` keeps answering, and nothing one client sends grows without
//! bound. Each test plays one attack and asserts what the victims see.
//!
//! The connection-level attacks (half-sent requests, connection floods,
//! foreign origins, hyper's own refusals) are in `edge.rs`.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use collab_ot::Operation;
use collab_server::domain::DocumentId;
use collab_server::store::NewOp;
use common::ws::*;
use common::{assert_error, spawn_app_with, test_config, TestApp, TestDb};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

backend_tests!(
    huge_integers_fail_their_frame_alone,
    an_edit_the_store_refuses_fails_alone_and_nobody_is_disconnected,
    nul_is_refused_everywhere_and_documents_stay_storable,
    old_revision_ops_cannot_stall_another_editor,
    expensive_ops_are_bounded_and_other_documents_stay_fast,
    a_reused_seq_gets_an_error_not_a_false_ack,
    rev_out_of_range_names_the_range_that_is_accepted,
);

const MAX_SAFE: u64 = (1 << 53) - 1;

/// Appends `n` one-character inserts to a document straight into the store
/// (before any room loads it), to give it a long history quickly.
async fn long_history(app: &TestApp, id: &str, n: u64) {
    let ops: Vec<NewOp> = (1..=n)
        .map(|rev| NewOp {
            rev,
            op: Operation::insert(0, "h"),
            client_id: None,
            seq: None,
            author: None,
        })
        .collect();
    let id = DocumentId::parse(id).expect("id");
    app.state.store.append_ops(&id, &ops).await.expect("append");
}

/// A server whose rooms keep `window` ops in memory, with a document `d`
/// of `revisions` one-character inserts.
async fn app_with_history(db: &TestDb, window: usize, revisions: u64) -> TestApp {
    let mut config = test_config(db);
    config.history_window = window;
    config.max_document_chars = 1_000_000;
    let app = spawn_app_with(config).await;
    app.create("d", "D", "").await;
    long_history(&app, "d", revisions).await;
    app
}

/// Sends an op and waits for its ack, skipping other frames; the revision
/// and how long the ack took.
async fn edit_and_time(ws: &mut Ws, rev: u64, seq: u64, op: Value) -> (u64, Duration) {
    let start = Instant::now();
    send_op(ws, rev, seq, op).await;
    loop {
        let frame = next_json(ws).await;
        match frame["type"].as_str() {
            Some("ack") if frame["seq"] == seq => {
                return (frame["rev"].as_u64().expect("rev"), start.elapsed())
            }
            Some("error") => panic!("edit {seq} refused: {frame}"),
            _ => continue,
        }
    }
}

/// Frames until (and including) the first that `want` accepts.
async fn frames_until(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let frame = next_json(ws).await;
        let done = want(&frame);
        seen.push(frame);
        if done {
            return seen;
        }
    }
}

async fn health_takes(app: &TestApp) -> Duration {
    let start = Instant::now();
    let (status, body) = app.get("/health").await;
    assert_eq!(status, 200, "{body}");
    start.elapsed()
}

// ---------------------------------------------------------------------------

async fn huge_integers_fail_their_frame_alone(db: &TestDb) {
    let app = spawn_app_with(test_config(db)).await;
    app.create("d", "D", "abc").await;
    let (mut victim, _) = join(&app, "d", "victim").await;
    let (mut attacker, _) = join(&app, "d", "attacker").await;

    // The victim's edit is in flight while the attacker's frames arrive.
    send_op(&mut victim, 0, 1, json!([3, "!"])).await;
    for (what, frame) in [
        (
            "seq 2^63",
            r#"{"type":"op","rev":0,"seq":9223372036854775808,"op":["x"]}"#,
        ),
        (
            "seq 2^53",
            r#"{"type":"op","rev":0,"seq":9007199254740992,"op":["x"]}"#,
        ),
        (
            "rev 2^53",
            r#"{"type":"op","rev":9007199254740992,"seq":1,"op":["x"]}"#,
        ),
        (
            "skip 2^53",
            r#"{"type":"op","rev":0,"seq":1,"op":[9007199254740992,"x"]}"#,
        ),
        (
            "delete 2^64",
            r#"{"type":"op","rev":0,"seq":1,"op":[{"d":18446744073709551616}]}"#,
        ),
        (
            "selection 2^53",
            r#"{"type":"presence","selection":[0,9007199254740992]}"#,
        ),
    ] {
        send_text(&mut attacker, frame).await;
        let reply = frames_until(&mut attacker, |f| f["type"] == "error").await;
        assert_error_frame(reply.last().unwrap(), "bad_message", None, what);
    }
    let frames = frames_until(&mut victim, |f| f["type"] == "ack").await;
    assert_eq!(frames.last().unwrap()["rev"], 1, "{frames:?}");

    // The largest safe seq is fine, and storable on both backends.
    let (rev, _) = edit_and_time(&mut attacker, 1, MAX_SAFE, json!(["x"])).await;
    assert_eq!(rev, 2);
    let (rev, _) = edit_and_time(&mut victim, 2, 2, json!([5, "?"])).await;
    assert_eq!(rev, 3);
    assert_eq!(stored(&app, "d").await, ("xabc!?".to_owned(), 3));

    // REST: the same bound, 400 for that request alone.
    let (status, body) = app
        .send_raw(
            reqwest::Method::POST,
            "/api/documents/d/ops",
            Some("application/json"),
            r#"{"rev":9223372036854775808,"op":[]}"#,
        )
        .await;
    assert_error(status, &body, 400, "bad_request");
    for path in [
        "/api/documents/d/ops?since=9007199254740992",
        "/api/documents?offset=9007199254740992",
    ] {
        let (status, body) = app.get(path).await;
        assert_error(status, &body, 400, "bad_request");
    }
    let (status, body) = app
        .get(&format!("/api/documents/d/ops?since={MAX_SAFE}"))
        .await;
    assert_eq!((status, body), (200, json!({"ops": []})));
    app.stop().await;
}

/// Makes the database itself refuse any op containing `POISON`: a failure
/// that belongs to one submission and that no validation upstream catches.
async fn poison_ops(db: &TestDb) {
    if db.backend == "sqlite" {
        let pool = sqlx::SqlitePool::connect(&db.url).await.expect("sqlite");
        sqlx::query(
            "CREATE TRIGGER poison BEFORE INSERT ON operations WHEN NEW.op LIKE '%POISON%' \
             BEGIN SELECT RAISE(ABORT, 'poisoned op'); END",
        )
        .execute(&pool)
        .await
        .expect("trigger");
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.expect("postgres");
        sqlx::raw_sql(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.op::text LIKE '%POISON%' THEN RAISE EXCEPTION 'poisoned op'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER poison BEFORE INSERT ON operations FOR EACH ROW EXECUTE FUNCTION poison();",
        )
        .execute(&pool)
        .await
        .expect("trigger");
        pool.close().await;
    }
}

/// Holds the document's row, and with it every write to its log, from a
/// connection and a thread of its own until released: edits sent meanwhile
/// queue up in the room and are then committed together, in one batch.
struct WriteLock {
    release: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

async fn hold_writes(db: &TestDb, doc: &str) -> WriteLock {
    // Ids in these tests are plain `[a-z]` words: safe to inline.
    let sql = format!("UPDATE documents SET title = title WHERE id = '{doc}'");
    let (url, backend) = (db.url.clone(), db.backend);
    let (held, is_held) = tokio::sync::oneshot::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            if backend == "sqlite" {
                hold_with::<sqlx::Sqlite>(&url, &sql, held, released).await;
            } else {
                hold_with::<sqlx::Postgres>(&url, &sql, held, released).await;
            }
        });
    });
    is_held.await.expect("lock taken");
    WriteLock { release, thread }
}

/// Runs `sql` in a transaction, says so, and commits once released.
async fn hold_with<DB: sqlx::Database>(
    url: &str,
    sql: &str,
    held: tokio::sync::oneshot::Sender<()>,
    released: std::sync::mpsc::Receiver<()>,
) where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let pool = sqlx::Pool::<DB>::connect(url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::raw_sql(sql).execute(&mut *tx).await.unwrap();
    held.send(()).unwrap();
    let _ = released.recv();
    tx.commit().await.unwrap();
    pool.close().await;
}

impl WriteLock {
    async fn release(self) {
        let _ = self.release.send(());
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().expect("lock thread"))
            .await
            .unwrap();
    }
}

async fn an_edit_the_store_refuses_fails_alone_and_nobody_is_disconnected(db: &TestDb) {
    let app = spawn_app_with(test_config(db)).await;
    app.create("d", "D", "").await;
    poison_ops(db).await;
    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(join(&app, "d", &format!("c{i}")).await.0);
    }
    // While writes are held, the room takes a REST edit and blocks storing
    // it; the eight edits sent meanwhile then go into one batch (or, those
    // that made it first, into the REST edit's): the poisoned one is never
    // alone in its batch.
    let lock = hold_writes(db, "d").await;
    let rest = {
        let (http, url) = (app.http.clone(), app.url("/api/documents/d/ops"));
        tokio::spawn(async move {
            let res = http
                .post(url)
                .json(&json!({"rev": 0, "op": ["rest"]}))
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        })
    };
    for (i, ws) in clients.iter_mut().enumerate() {
        let text = if i == 3 {
            "POISON".to_owned()
        } else {
            format!("<{i}>")
        };
        send_op(ws, 0, 1, json!([text])).await;
    }
    lock.release().await;
    assert_eq!(rest.await.unwrap(), 200, "the REST edit");
    for (i, ws) in clients.iter_mut().enumerate() {
        let frames = frames_until(ws, |f| f["type"] == "ack" || f["type"] == "error").await;
        let last = frames.last().unwrap();
        if i == 3 {
            assert_error_frame(last, "unavailable", Some(1), "the poisoned edit");
        } else {
            assert_eq!(last["type"], "ack", "client {i}: {frames:?}");
        }
    }
    let (content, rev) = stored(&app, "d").await;
    assert_eq!(rev, 8, "{content}");
    assert!(!content.contains("POISON"), "{content}");
    assert!(content.contains("rest"), "{content}");
    for i in (0..8).filter(|i| *i != 3) {
        assert!(content.contains(&format!("<{i}>")), "{content}");
    }
    // Everyone is still connected and can go on editing.
    for (i, ws) in clients.iter_mut().enumerate() {
        let (_, _) = edit_and_time(ws, rev, 2, json!([format!("[{i}]")])).await;
    }
    assert_eq!(stored(&app, "d").await.1, 16);
    app.stop().await;
}

async fn nul_is_refused_everywhere_and_documents_stay_storable(db: &TestDb) {
    let app = spawn_app_with(test_config(db)).await;
    let (status, body) = app
        .post("/api/documents", &json!({"title": "a\u{0}b"}))
        .await;
    assert_error(status, &body, 422, "invalid_title");
    let (status, body) = app
        .post(
            "/api/documents",
            &json!({"title": "t", "content": "x\u{0}"}),
        )
        .await;
    assert_error(status, &body, 422, "invalid_content");
    assert_eq!(app.get("/api/documents").await.1["total"], 0);

    app.create("d", "D", "abc").await;
    let (status, body) = app
        .patch("/api/documents/d", &json!({"title": "\u{0}"}))
        .await;
    assert_error(status, &body, 422, "invalid_title");
    for op in [
        json!(["\u{0}"]),
        json!([1, "a\u{0}"]),
        json!([{"d": "\u{0}"}]),
    ] {
        let (status, body) = app
            .post("/api/documents/d/ops", &json!({"rev": 0, "op": op}))
            .await;
        assert_error(status, &body, 422, "invalid_op");
    }
    let (mut ws, _) = join(&app, "d", "w").await;
    send_op(&mut ws, 0, 1, json!([3, "\u{0}"])).await;
    assert_error_frame(
        &next_json(&mut ws).await,
        "invalid_op",
        Some(1),
        "NUL insert",
    );
    let (rev, _) = edit_and_time(&mut ws, 0, 2, json!([3, "d"])).await;
    assert_eq!(rev, 1);
    app.stop().await;

    // Stopping wrote an unload snapshot; the document loads from it.
    let app = spawn_app_with(test_config(db)).await;
    let id = DocumentId::parse("d").unwrap();
    assert_eq!(
        app.state.store.latest_snapshot_rev(&id).await.unwrap(),
        Some(1)
    );
    assert_eq!(stored(&app, "d").await, ("abcd".to_owned(), 1));
    assert_eq!(app.get("/api/documents/d").await.1["title"], "D");
    app.stop().await;
}

async fn old_revision_ops_cannot_stall_another_editor(db: &TestDb) {
    // Ops older than 200 revisions are read back from the log, up to 2,000.
    let app = app_with_history(db, 200, 2000).await;
    let (mut victim, welcome) = join(&app, "d", "victim").await;
    let mut rev = welcome["rev"].as_u64().unwrap();
    assert_eq!(rev, 2000);

    // The attacker sends keystrokes based on revision 1, as fast as its op
    // rate limit allows, each one 1,999 revisions behind.
    let (mut attacker, _) = join(&app, "d", "attacker").await;
    let attack_for = Duration::from_secs(3);
    let attack = tokio::spawn(async move {
        let (mut acks, mut limited) = (0, 0);
        let start = Instant::now();
        let mut seq = 0;
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        while start.elapsed() < attack_for {
            ticker.tick().await;
            seq += 1;
            send_op(&mut attacker, 1, seq, json!(["a"])).await;
            while let Ok(Some(Ok(Message::Text(t)))) =
                tokio::time::timeout(Duration::ZERO, attacker.next()).await
            {
                let f: Value = serde_json::from_str(&t).unwrap();
                match (f["type"].as_str(), f["code"].as_str()) {
                    (Some("ack"), _) => acks += 1,
                    (Some("error"), Some("rate_limited")) => limited += 1,
                    (Some("error"), code) => panic!("unexpected refusal {code:?}: {f}"),
                    _ => {}
                }
            }
        }
        (acks, limited, attacker)
    });

    let mut worst = Duration::ZERO;
    let mut seq = 0;
    let start = Instant::now();
    while start.elapsed() < attack_for {
        seq += 1;
        let (new_rev, took) = edit_and_time(&mut victim, rev, seq, json!(["v"])).await;
        rev = new_rev;
        worst = worst.max(took);
        worst = worst.max(health_takes(&app).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (acks, limited, _attacker) = attack.await.unwrap();
    // Each such op costs ~180,000 steps of the attacker's 2,000,000 a second.
    assert!(limited > 0, "the attacker was never limited ({acks} acks)");
    assert!(acks > 0, "the attacker's edits are refused outright");
    assert!(
        worst < Duration::from_secs(1),
        "the victim waited {worst:?} for an ack or /health"
    );
    app.stop().await;
}

/// An op of `n` components: alternating one-character skips and inserts.
fn many_components(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| if i % 2 == 0 { json!(1) } else { json!("x") })
            .collect(),
    )
}

async fn expensive_ops_are_bounded_and_other_documents_stay_fast(db: &TestDb) {
    let mut config = test_config(db);
    config.max_message_bytes = 1 << 20;
    config.max_document_chars = 10_000_000;
    let app = spawn_app_with(config).await;
    app.create("a", "A", &"y".repeat(60_000)).await;
    app.create("b", "B", "").await;
    long_history(&app, "a", 600).await;
    let (mut attacker, _) = join(&app, "a", "attacker").await;

    // Too many components, whatever the revision.
    send_op(&mut attacker, 600, 1, many_components(100_000)).await;
    assert_error_frame(
        &next_json(&mut attacker).await,
        "too_large",
        Some(1),
        "100k",
    );
    send_op(&mut attacker, 600, 1, many_components(10_002)).await;
    assert_error_frame(
        &next_json(&mut attacker).await,
        "too_large",
        Some(1),
        "10,002",
    );
    // Within the component limit but reaching far back: refused before any
    // transform (9,000 × 500 steps is over the 2,000,000 limit).
    send_op(&mut attacker, 100, 1, many_components(9_000)).await;
    let refused = next_json(&mut attacker).await;
    assert_error_frame(&refused, "rev_out_of_range", Some(1), "far back");
    assert!(
        refused["message"].as_str().unwrap().contains("rebase"),
        "{refused}"
    );
    // Invalid at its base revision: refused without transforming.
    send_op(&mut attacker, 100, 1, json!([1_000_000, "x"])).await;
    assert_error_frame(
        &next_json(&mut attacker).await,
        "invalid_op",
        Some(1),
        "past end",
    );

    // Costly but allowed (9,000 × 150 steps): transformed off the async
    // threads; the attacker keeps sending them as fast as it is answered.
    let attack_for = Duration::from_secs(3);
    let attack = tokio::spawn(async move {
        let (mut acks, mut limited) = (0u32, 0u32);
        let start = Instant::now();
        let mut seq = 1;
        while start.elapsed() < attack_for {
            seq += 1;
            send_op(&mut attacker, 450, seq, many_components(9_000)).await;
            let f = loop {
                let f = next_json(&mut attacker).await;
                if f["type"] == "ack" || f["type"] == "error" {
                    break f;
                }
            };
            match (f["type"].as_str(), f["code"].as_str()) {
                (Some("ack"), _) => acks += 1,
                (_, Some("rate_limited")) => limited += 1,
                _ => panic!("unexpected answer {f}"),
            }
        }
        (acks, limited)
    });
    let (mut victim, _) = join(&app, "b", "victim").await;
    let mut worst = Duration::ZERO;
    let (mut rev, mut seq) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < attack_for {
        seq += 1;
        let (new_rev, took) = edit_and_time(&mut victim, rev, seq, json!(["v"])).await;
        rev = new_rev;
        worst = worst.max(took).max(health_takes(&app).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (acks, limited) = attack.await.unwrap();
    assert!(acks > 0, "costly but allowed edits are refused");
    assert!(
        limited > 0,
        "the attacker's work was never limited ({acks} acks)"
    );
    assert!(
        worst < Duration::from_secs(1),
        "another document's editor waited {worst:?}"
    );
    app.stop().await;
}

async fn a_reused_seq_gets_an_error_not_a_false_ack(db: &TestDb) {
    let app = spawn_app_with(test_config(db)).await;
    app.create("d", "D", "abc").await;
    let (mut first, _) = join(&app, "d", "same").await;
    let (mut second, _) = join(&app, "d", "same").await;
    let (rev, _) = edit_and_time(&mut first, 0, 1, json!([3, "A"])).await;
    assert_eq!(rev, 1);
    // Another edit under the same (client_id, seq): not applied, not acked.
    send_op(&mut second, 0, 1, json!(["B"])).await;
    let frames = frames_until(&mut second, |f| f["type"] != "op").await;
    assert_error_frame(frames.last().unwrap(), "bad_message", Some(1), "reused seq");
    // A true resend is acknowledged with the revision it got.
    let (rev, _) = edit_and_time(&mut second, 0, 1, json!([3, "A"])).await;
    assert_eq!(rev, 1);
    assert_eq!(stored(&app, "d").await, ("abcA".to_owned(), 1));
    app.stop().await;
}

async fn rev_out_of_range_names_the_range_that_is_accepted(db: &TestDb) {
    let app = app_with_history(db, 10, 150).await;
    let (mut ws, _) = join(&app, "d", "w").await;
    // In memory: revisions 140..=150; from the log: ten windows further back.
    send_op(&mut ws, 39, 1, json!(["x"])).await;
    let refused = next_json(&mut ws).await;
    assert_error_frame(&refused, "rev_out_of_range", Some(1), "too old");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("40 to 150"), "{message}");
    let (rev, _) = edit_and_time(&mut ws, 40, 1, json!(["x"])).await;
    assert_eq!(rev, 151);
    send_op(&mut ws, 152, 2, json!(["x"])).await;
    let refused = next_json(&mut ws).await;
    assert_error_frame(&refused, "rev_out_of_range", Some(2), "too new");
    assert!(
        refused["message"].as_str().unwrap().contains("to 151"),
        "{refused}"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Attacks that involve no storage: SQLite only.

fn sqlite_app_config() -> (TestDb, collab_server::Config) {
    let db = TestDb::sqlite();
    let config = test_config(&db);
    (db, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_floods_are_coalesced_and_a_pausing_peer_stays() {
    let (_db, config) = sqlite_app_config();
    let app = spawn_app_with(config).await;
    app.create("d", "D", "abc").await;
    let (mut victim, _) = join(&app, "d", "victim").await;
    let (mut attacker, _) = join(&app, "d", "attacker").await;

    // 20,000 presence frames as fast as the socket takes them, while the
    // victim reads nothing; the last one is the only selection at [3, 3].
    let start = Instant::now();
    let flood = 20_000;
    for i in 0..flood {
        let at = if i == flood - 1 { 3 } else { i % 3 };
        let frame = json!({"type": "presence", "selection": [at, at]});
        attacker
            .feed(Message::text(frame.to_string()))
            .await
            .expect("send");
    }
    attacker.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_secs(2)).await; // the victim pauses

    let frames = frames_until(&mut victim, |f| {
        f["type"] == "presence" && f["selection"] == json!([3, 3])
    })
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    // 20 a second after a burst of 20, coalesced: never the whole flood.
    let allowed = (20.0 * elapsed + 20.0).ceil() as usize;
    assert!(
        frames.len() <= allowed,
        "{} presence frames in {elapsed:.1}s",
        frames.len()
    );
    // Still connected: the victim's edits go through.
    let (rev, _) = edit_and_time(&mut victim, 0, 1, json!(["v"])).await;
    assert_eq!(rev, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcomes_stay_small_whatever_peers_call_themselves() {
    let (_db, config) = sqlite_app_config();
    let app = spawn_app_with(config).await;
    app.create("d", "D", "").await;
    let mut peers = Vec::new();
    for i in 0..60 {
        let (mut ws, _) = join(&app, "d", &format!("p{i}")).await;
        let name = if i < 50 {
            "n".repeat(100)
        } else {
            "N".repeat(1000)
        };
        let user = json!({"name": name, "color": "#123456", "junk": "j".repeat(10_000)});
        send_text(
            &mut ws,
            json!({"type": "presence", "selection": [0, 0], "user": user}).to_string(),
        )
        .await;
        if i >= 50 {
            assert_error_frame(&next_json(&mut ws).await, "too_large", None, "a long name");
        }
        // Once its edit is acknowledged, its presence has been taken.
        edit_and_time(&mut ws, i, 1, json!(["x"])).await;
        peers.push(ws);
    }
    let mut joiner = open_raw(&app, "/ws/documents/d?client_id=joiner").await;
    let welcome = match tokio::time::timeout(WAIT, joiner.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t,
        other => panic!("no welcome: {other:?}"),
    };
    let parsed: Value = serde_json::from_str(&welcome).unwrap();
    let listed = parsed["peers"].as_array().unwrap();
    assert_eq!(listed.len(), 50);
    for peer in listed {
        assert_eq!(peer["user"].as_object().unwrap().len(), 2, "{peer}");
    }
    assert!(welcome.len() < 12_000, "welcome of {} bytes", welcome.len());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_websockets_are_closed_and_answering_ones_stay() {
    let (_db, mut config) = sqlite_app_config();
    config.ws_idle_secs = 4;
    let app = spawn_app_with(config).await;
    app.create("d", "D", "").await;

    // A well-behaved client answers pings while it reads.
    let (mut alive, _) = join(&app, "d", "alive").await;

    // A peer that completes the handshake and then never reads or answers.
    let mut dead = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let handshake = format!(
        "GET /ws/documents/d?client_id=dead HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        app.addr
    );
    dead.write_all(handshake.as_bytes()).await.unwrap();
    let start = Instant::now();
    // Everything the server sends (101, welcome, pings, close) lands in the
    // buffer; the server ends the connection once the peer stayed silent.
    let mut dead_read = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = dead.read_to_end(&mut sink).await;
        sink
    });
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    let sink = loop {
        tokio::select! {
            sink = &mut dead_read => break sink.unwrap(),
            // Reading is what answers the server's pings.
            message = alive.next() => match message {
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("the answering client was closed: {other:?}"),
            },
            () = &mut deadline => panic!("a silent peer was kept open"),
        }
    };
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(4), "closed after {waited:?}");
    assert!(
        sink.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&sink[..40.min(sink.len())])
    );

    // The reading client saw pings, answered them, and is still here.
    let (rev, _) = edit_and_time(&mut alive, 0, 1, json!(["a"])).await;
    assert_eq!(rev, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_beyond_the_hard_cap_gets_too_large_before_the_close() {
    let (_db, config) = sqlite_app_config();
    let limit = config.max_message_bytes;
    let app = spawn_app_with(config).await;
    app.create("d", "D", "").await;
    let (mut ws, _) = join(&app, "d", "big").await;
    let huge = format!(
        r#"{{"type":"op","rev":0,"seq":1,"op":["{}"]}}"#,
        "x".repeat(5 * limit)
    );
    // The server may stop reading before the whole frame is written.
    let _ = ws.send(Message::text(huge)).await;
    let (frames, end) = read_until_closed(&mut ws, WAIT).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_error_frame(&frames[0], "too_large", None, "beyond the hard cap");
    assert_eq!(end, End::Close(Some(1009)));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_are_refused_and_errors_speak_json_not_rust() {
    let (_db, config) = sqlite_app_config();
    let app = spawn_app_with(config).await;
    app.create("d", "D", "abc").await;
    let (mut ws, _) = join(&app, "d", "w").await;
    send_text(
        &mut ws,
        r#"{"type":"op","rev":0,"seq":1,"op":[{"d":1,"d":1}]}"#,
    )
    .await;
    assert_error_frame(
        &next_json(&mut ws).await,
        "bad_message",
        None,
        "duplicate d",
    );

    let post = |path: &'static str, body: &'static str| {
        app.send_raw(reqwest::Method::POST, path, Some("application/json"), body)
    };
    for (path, body) in [
        ("/api/documents/d/ops", r#"{"rev":0,"op":[{"d":1,"d":1}]}"#),
        ("/api/documents/d/ops", r#"{"rev":0,"rev":0,"op":[]}"#),
        ("/api/documents", r#"{"title":"a","title":"b"}"#),
    ] {
        let (status, body) = post(path, body).await;
        assert_error(status, &body, 400, "bad_request");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("more than once"),
            "{body}"
        );
    }
    for (path, body) in [
        ("/api/documents", "[]"),
        ("/api/documents", r#"{"title": 5}"#),
        ("/api/documents/d/ops", r#"{"rev":"1","op":[]}"#),
        ("/api/documents/d/ops", r#"{"rev":-1,"op":[]}"#),
        ("/api/documents/d/ops", r#"{"rev":0,"op":{}}"#),
    ] {
        let (status, reply) = post(path, body).await;
        assert!(status == 400 || status == 422, "{body}: {status} {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        for rust in [
            "struct", "Body", "u64", "i64", "usize", "String", "Vec", "sequence",
        ] {
            assert!(
                !message.contains(rust),
                "{body}: {message:?} names {rust:?}"
            );
        }
    }
    assert_eq!(stored(&app, "d").await, ("abc".to_owned(), 0));
    app.stop().await;
}
