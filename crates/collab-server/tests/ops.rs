//! Edits through `POST …/ops`: transformed, stored, listed; and the room
//! behaviour behind them (exactly-once, reload after a failed write, unload).

#[macro_use]
mod common;

use std::time::Duration;

use collab_ot::Operation;
use collab_server::domain::DocumentId;
use collab_server::rooms::Submission;
use collab_server::store::NewOp;
use common::{assert_error, spawn_app, spawn_app_with, test_config, TestDb};
use serde_json::{json, Value};

async fn concurrent_ops_are_transformed(db: &TestDb) {
    let app = spawn_app(db).await;
    app.create("doc", "Doc", "Hello world").await;
    // Both written against rev 0: the second is transformed past the first.
    assert_eq!(app.edit("doc", 0, json!([5, ","])).await, 1);
    assert_eq!(app.edit("doc", 0, json!([11, "!"])).await, 2);
    let (_, doc) = app.get("/api/documents/doc").await;
    assert_eq!(
        (doc["content"].as_str(), doc["rev"].as_u64()),
        (Some("Hello, world!"), Some(2))
    );

    // Ties: the later op's insert goes left (side "left", as ShareDB).
    app.create("tie", "Tie", "").await;
    app.edit("tie", 0, json!(["A"])).await;
    app.edit("tie", 0, json!(["B"])).await;
    let (_, doc) = app.get("/api/documents/tie").await;
    assert_eq!(doc["content"], "BA");

    // Overlapping deletes, and a text delete that must match.
    app.create("del", "Del", "abcdef").await;
    app.edit("del", 0, json!([1, {"d": 3}])).await;
    app.edit("del", 0, json!([2, {"d": 3}, "X"])).await;
    app.edit("del", 2, json!([{"d": "a"}])).await;
    let (_, doc) = app.get("/api/documents/del").await;
    assert_eq!(
        (doc["content"].as_str(), doc["rev"].as_u64()),
        (Some("Xf"), Some(3))
    );

    // Positions count Unicode scalar values.
    app.create("emoji", "Emoji", "😭😭").await;
    app.edit("emoji", 0, json!([1, "é", {"d": 1}])).await;
    let (_, doc) = app.get("/api/documents/emoji").await;
    assert_eq!(doc["content"], "😭é");
    app.stop().await;
}

async fn simultaneous_requests_all_commit(db: &TestDb) {
    let app = spawn_app(db).await;
    app.create("race", "Race", "").await;
    let letters: Vec<String> = (b'a'..=b'p').map(|c| char::from(c).to_string()).collect();
    let requests = letters.iter().map(|letter| {
        let http = app.http.clone();
        let url = app.url("/api/documents/race/ops");
        let body = json!({"rev": 0, "op": [letter]});
        async move {
            let res = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.json::<Value>().await.unwrap()["rev"].as_u64().unwrap()
        }
    });
    let mut revs = futures_join_all(requests).await;
    revs.sort_unstable();
    assert_eq!(
        revs,
        (1..=16).collect::<Vec<u64>>(),
        "every op got its own revision"
    );

    let (_, doc) = app.get("/api/documents/race").await;
    let content = doc["content"].as_str().unwrap();
    assert_eq!(doc["rev"], 16);
    let mut chars: Vec<char> = content.chars().collect();
    chars.sort_unstable();
    assert_eq!(chars.into_iter().collect::<String>(), letters.concat());

    // The log replays onto the initial content to exactly the content.
    let (_, ops) = app.get("/api/documents/race/ops").await;
    let mut replayed = String::new();
    for op in ops["ops"].as_array().unwrap() {
        let op: Operation = serde_json::from_value(op["op"].clone()).unwrap();
        replayed = op.apply_str(&replayed).unwrap();
    }
    assert_eq!(replayed, content);
    app.stop().await;
}

/// `join_all` without pulling in the futures crate.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

async fn ops_are_listed(db: &TestDb) {
    let app = spawn_app(db).await;
    app.create("doc", "Doc", "").await;
    let (_, ops) = app.get("/api/documents/doc/ops").await;
    assert_eq!(ops, json!({"ops": []}));
    for (rev, op) in [
        json!(["a"]),
        json!([1, "b"]),
        json!([2, "c"]),
        json!([{"d": 1}]),
    ]
    .into_iter()
    .enumerate()
    {
        app.edit("doc", rev as u64, op).await;
    }
    let (status, all) = app.get("/api/documents/doc/ops").await;
    assert_eq!(status, 200);
    let all = all["ops"].as_array().unwrap().clone();
    assert_eq!(all.len(), 4);
    for (i, op) in all.iter().enumerate() {
        let obj = op.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["author", "client_id", "created_at", "op", "rev", "seq"]
        );
        assert_eq!(op["author"], Value::Null, "open mode names nobody");
        assert_eq!(op["rev"], i as u64 + 1);
        assert_eq!(op["client_id"], Value::Null);
        assert_eq!(op["seq"], Value::Null);
        assert!(op["created_at"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(all[1]["op"], json!([1, "b"]));
    assert_eq!(all[3]["op"], json!([{"d": 1}]));

    let (_, since) = app.get("/api/documents/doc/ops?since=2").await;
    assert_eq!(since["ops"].as_array().unwrap(), &all[2..].to_vec());
    let (_, page) = app.get("/api/documents/doc/ops?since=1&limit=2").await;
    assert_eq!(page["ops"].as_array().unwrap(), &all[1..3].to_vec());
    let (_, none) = app.get("/api/documents/doc/ops?since=4").await;
    assert_eq!(none, json!({"ops": []}));
    let (_, beyond) = app.get("/api/documents/doc/ops?since=99").await;
    assert_eq!(beyond, json!({"ops": []}));
    for query in ["since=-1", "since=x", "limit=0", "limit=1001", "limit=x"] {
        let (status, body) = app.get(&format!("/api/documents/doc/ops?{query}")).await;
        assert_error(status, &body, 400, "bad_request");
    }
    app.stop().await;
}

async fn edits_are_checked(db: &TestDb) {
    let app = spawn_app(db).await;
    app.create("doc", "Doc", "abc").await;
    app.edit("doc", 0, json!([3, "d"])).await;
    // A revision the document has not reached yet.
    let (status, body) = app
        .post("/api/documents/doc/ops", &json!({"rev": 5, "op": ["x"]}))
        .await;
    assert_error(status, &body, 409, "rev_out_of_range");
    // Past the end of the document as it was at rev 0.
    let (status, body) = app
        .post("/api/documents/doc/ops", &json!({"rev": 0, "op": [4, "x"]}))
        .await;
    assert_error(status, &body, 422, "invalid_op");
    // Too large: the test server allows 1000 characters.
    let (status, body) = app
        .post(
            "/api/documents/doc/ops",
            &json!({"rev": 1, "op": ["x".repeat(997)]}),
        )
        .await;
    assert_error(status, &body, 413, "too_large");
    let big = "x".repeat(1001);
    let (status, body) = app
        .post("/api/documents", &json!({"title": "big", "content": big}))
        .await;
    assert_error(status, &body, 413, "too_large");
    // A no-op is an operation too: committed, and it bumps the revision.
    assert_eq!(app.edit("doc", 1, json!([])).await, 2);
    let (_, doc) = app.get("/api/documents/doc").await;
    assert_eq!(
        (doc["content"].as_str(), doc["rev"].as_u64()),
        (Some("abcd"), Some(2))
    );
    // Exactly at the limit is fine.
    assert_eq!(app.edit("doc", 2, json!(["x".repeat(996)])).await, 3);
    app.stop().await;
}

/// A resend of a committed `(client_id, seq)` is not applied again, also
/// after a restart (the room must ask the store, not only its memory).
async fn exactly_once_across_restarts(db: &TestDb) {
    let app = spawn_app(db).await;
    app.create("doc", "Doc", "").await;
    let id = DocumentId::parse("doc").unwrap();
    let submit = |seq: u64, base_rev: u64, text: &str| Submission {
        author: None,
        client_id: Some("alice".into()),
        seq: Some(seq),
        base_rev,
        op: Operation::insert(0, text),
    };
    assert_eq!(
        app.state
            .rooms
            .submit(&id, submit(1, 0, "a"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        app.state
            .rooms
            .submit(&id, submit(2, 1, "b"))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        app.state
            .rooms
            .submit(&id, submit(2, 1, "b"))
            .await
            .unwrap(),
        2
    );
    app.stop().await;

    let app = spawn_app(db).await;
    assert_eq!(
        app.state
            .rooms
            .submit(&id, submit(2, 1, "b"))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        app.state
            .rooms
            .submit(&id, submit(1, 0, "a"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        app.state
            .rooms
            .submit(&id, submit(3, 2, "c"))
            .await
            .unwrap(),
        3
    );
    let (_, doc) = app.get("/api/documents/doc").await;
    assert_eq!(
        (doc["content"].as_str(), doc["rev"].as_u64()),
        (Some("cba"), Some(3))
    );
    let (_, ops) = app.get("/api/documents/doc/ops").await;
    assert_eq!(ops["ops"][2]["client_id"], "alice");
    assert_eq!(ops["ops"][2]["seq"], 3);
    app.stop().await;
}

/// When another writer moved the log under a loaded room, the room's write
/// fails; it must drop its state and reload rather than diverge.
async fn a_failed_write_reloads_the_room(db: &TestDb) {
    let app = spawn_app(db).await;
    app.create("doc", "Doc", "base").await;
    app.edit("doc", 0, json!([4, "1"])).await;
    let id = DocumentId::parse("doc").unwrap();
    // Another process (sharing the database) commits rev 2.
    app.state
        .store
        .append_ops(
            &id,
            &[NewOp {
                rev: 2,
                op: Operation::insert(0, ">"),
                client_id: None,
                seq: None,
                author: None,
            }],
        )
        .await
        .unwrap();
    let (status, body) = app
        .post("/api/documents/doc/ops", &json!({"rev": 1, "op": [5, "2"]}))
        .await;
    assert_error(status, &body, 409, "conflict");
    // Memory now matches the log again, and editing carries on.
    let (_, doc) = app.get("/api/documents/doc").await;
    assert_eq!(
        (doc["content"].as_str(), doc["rev"].as_u64()),
        (Some(">base1"), Some(2))
    );
    assert_eq!(app.edit("doc", 1, json!([5, "2"])).await, 3);
    let (_, doc) = app.get("/api/documents/doc").await;
    assert_eq!(doc["content"], ">base12");
    app.stop().await;
}

/// Idle rooms unload after writing a snapshot; reloading gives the same text.
async fn idle_rooms_unload_with_a_snapshot(db: &TestDb) {
    let mut config = test_config(db);
    config.room_idle_secs = 1;
    let app = spawn_app_with(config).await;
    app.create("doc", "Doc", "v0").await;
    app.edit("doc", 0, json!([2, " v1"])).await;
    app.edit("doc", 1, json!([5, " v2"])).await;
    assert_eq!(app.state.rooms.open_rooms(), 1);
    let rooms = app.state.rooms.clone();
    common::wait_for(Duration::from_secs(10), "the room to unload", || {
        let rooms = rooms.clone();
        async move { rooms.open_rooms() == 0 }
    })
    .await;
    let id = DocumentId::parse("doc").unwrap();
    // The snapshot is written before the room's task ends; the registry entry
    // goes first, so wait for the snapshot itself.
    let store = app.state.store.clone();
    common::wait_for(Duration::from_secs(10), "the unload snapshot", || {
        let (store, id) = (store.clone(), id.clone());
        async move { store.latest_snapshot_rev(&id).await.unwrap() == Some(2) }
    })
    .await;
    let loaded = app.state.store.load(&id, 0).await.unwrap().unwrap();
    assert_eq!(
        (loaded.snapshot_rev, loaded.snapshot.as_str()),
        (2, "v0 v1 v2")
    );
    assert!(loaded.tail.is_empty());
    // Loading with history starts further back, at the initial snapshot.
    let loaded = app.state.store.load(&id, 1000).await.unwrap().unwrap();
    assert_eq!((loaded.snapshot_rev, loaded.tail.len()), (0, 2));
    assert_eq!(loaded.latest_snapshot_rev, 2);
    let (_, doc) = app.get("/api/documents/doc").await;
    assert_eq!(
        (doc["content"].as_str(), doc["rev"].as_u64()),
        (Some("v0 v1 v2"), Some(2))
    );
    assert_eq!(app.edit("doc", 2, json!([8, " v3"])).await, 3);
    // The op log still replays from the initial snapshot (rev 0 is kept).
    let (_, ops) = app.get("/api/documents/doc/ops").await;
    assert_eq!(ops["ops"].as_array().unwrap().len(), 3);
    app.stop().await;
}

async fn deleting_a_loaded_document_closes_its_room(db: &TestDb) {
    let app = spawn_app(db).await;
    app.create("doc", "Doc", "x").await;
    app.edit("doc", 0, json!([1, "y"])).await;
    assert_eq!(app.state.rooms.open_rooms(), 1);
    let (status, _) = app.delete("/api/documents/doc").await;
    assert_eq!(status, 204);
    assert_eq!(app.state.rooms.open_rooms(), 0);
    let (status, body) = app
        .post("/api/documents/doc/ops", &json!({"rev": 1, "op": ["z"]}))
        .await;
    assert_error(status, &body, 404, "not_found");
    // A new document under the same id starts from scratch.
    app.create("doc", "Doc", "new").await;
    let (_, doc) = app.get("/api/documents/doc").await;
    assert_eq!(
        (doc["content"].as_str(), doc["rev"].as_u64()),
        (Some("new"), Some(0))
    );
    app.stop().await;
}

/// An edit based on a revision older than the history kept in memory is
/// transformed through the ops read back from the log.
async fn old_revisions_are_transformed_through_the_log(db: &TestDb) {
    let mut config = common::test_config(db);
    config.history_window = 2;
    let app = common::spawn_app_with(config).await;
    app.create("doc", "Doc", "abc").await;
    for (rev, letter) in ["1", "2", "3", "4", "5"].iter().enumerate() {
        app.edit("doc", rev as u64, json!([letter])).await;
    }
    // Written against "abc" at rev 0: append at its end.
    let rev = app.edit("doc", 0, json!([3, "!"])).await;
    assert_eq!(rev, 6);
    let (_, doc) = app.get("/api/documents/doc").await;
    assert_eq!(doc["content"], "54321abc!");
    app.stop().await;
}

backend_tests!(
    old_revisions_are_transformed_through_the_log,
    concurrent_ops_are_transformed,
    simultaneous_requests_all_commit,
    ops_are_listed,
    edits_are_checked,
    exactly_once_across_restarts,
    a_failed_write_reloads_the_room,
    idle_rooms_unload_with_a_snapshot,
    deleting_a_loaded_document_closes_its_room,
);
