//! Stop the server, start another on the same database: nothing is lost.

#[macro_use]
mod common;

use common::{spawn_app, TestDb};
use serde_json::json;

async fn everything_survives_a_restart(db: &TestDb) {
    let app = spawn_app(db).await;
    app.create("plain", "Plain", "").await;
    app.create("edited", "Edited", "Hello world").await;
    app.create("emoji", "Émoji 😭", "😭").await;
    app.edit("edited", 0, json!([5, ","])).await;
    app.edit("edited", 0, json!([11, "!"])).await;
    app.edit("emoji", 0, json!([1, " ok"])).await;
    let (status, _) = app
        .patch("/api/documents/plain", &json!({"title": "Renamed"}))
        .await;
    assert_eq!(status, 200);
    app.create("gone", "Gone", "bye").await;
    app.delete("/api/documents/gone").await;
    let before = app.everything().await;
    assert_eq!(before["list"]["total"], 3);
    app.stop().await;

    let app = spawn_app(db).await;
    let after = app.everything().await;
    assert_eq!(after, before);
    let (_, doc) = app.get("/api/documents/edited").await;
    assert_eq!(
        (doc["content"].as_str(), doc["rev"].as_u64()),
        (Some("Hello, world!"), Some(2))
    );
    // Editing carries on from the stored revision; ops still transform.
    assert_eq!(app.edit("edited", 1, json!(["¡"])).await, 3);
    let (_, doc) = app.get("/api/documents/edited").await;
    assert_eq!(doc["content"], "¡Hello, world!");
    app.stop().await;

    // A third start reads the snapshots the previous one wrote on shutdown.
    let app = spawn_app(db).await;
    let (_, doc) = app.get("/api/documents/edited").await;
    assert_eq!(
        (doc["content"].as_str(), doc["rev"].as_u64()),
        (Some("¡Hello, world!"), Some(3))
    );
    app.stop().await;
}

/// Stopping while edits are in flight: every acknowledged edit is stored,
/// and nothing that was not acknowledged is.
async fn a_graceful_stop_keeps_every_acknowledged_edit(db: &TestDb) {
    let app = spawn_app(db).await;
    app.create("doc", "Doc", "").await;
    let edits: Vec<_> = (0..24)
        .map(|i| {
            let http = app.http.clone();
            let url = app.url("/api/documents/doc/ops");
            tokio::spawn(async move {
                let body = json!({"rev": 0, "op": [format!("<{i}>")]});
                match http.post(url).json(&body).send().await {
                    Ok(res) if res.status() == 200 => Some(i),
                    Ok(res) => {
                        let status = res.status();
                        panic!("edit {i}: {status} {}", res.text().await.unwrap());
                    }
                    // Too late: the server had stopped accepting.
                    Err(_) => None,
                }
            })
        })
        .collect();
    // Stop once the first edit is committed, with the others in flight.
    let store = app.state.store.clone();
    let id = collab_server::domain::DocumentId::parse("doc").unwrap();
    common::wait_for(std::time::Duration::from_secs(10), "a first commit", || {
        let (store, id) = (store.clone(), id.clone());
        async move { store.document(&id).await.unwrap().unwrap().rev > 0 }
    })
    .await;
    app.stop().await;
    let mut acknowledged = Vec::new();
    for edit in edits {
        if let Some(i) = edit.await.unwrap() {
            acknowledged.push(i);
        }
    }

    let app = spawn_app(db).await;
    let (_, doc) = app.get("/api/documents/doc").await;
    assert_eq!(doc["rev"], acknowledged.len() as u64, "{doc}");
    let content = doc["content"].as_str().unwrap();
    for i in acknowledged {
        assert_eq!(content.matches(&format!("<{i}>")).count(), 1, "{content}");
    }
    app.stop().await;
}

backend_tests!(
    everything_survives_a_restart,
    a_graceful_stop_keeps_every_acknowledged_edit
);
