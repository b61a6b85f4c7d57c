//! The documents CRUD of docs/protocol.md §2, on both backends.

#[macro_use]
mod common;

use common::{assert_error, spawn_app, TestDb};
use serde_json::json;

async fn create_get_rename_delete(db: &TestDb) {
    let app = spawn_app(db).await;

    let created = app.create("notes", "  My notes  ", "héllo 😭").await;
    assert_eq!(created["id"], "notes");
    assert_eq!(created["title"], "My notes", "titles are stored trimmed");
    assert_eq!(created["content"], "héllo 😭");
    assert_eq!(created["rev"], 0);
    let created_at = created["created_at"].as_str().unwrap();
    assert!(
        created_at.ends_with('Z') && created_at.contains('T'),
        "{created_at}"
    );
    assert_eq!(created["created_at"], created["updated_at"]);
    let keys: Vec<&String> = created.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 6, "{created}");

    let (status, fetched) = app.get("/api/documents/notes").await;
    assert_eq!(status, 200);
    assert_eq!(fetched, created);

    // A generated id follows the id rules.
    let (status, generated) = app
        .post("/api/documents", &json!({"title": "Untitled"}))
        .await;
    assert_eq!(status, 201, "{generated}");
    let id = generated["id"].as_str().unwrap();
    assert!(!id.is_empty() && id.len() <= 64);
    assert!(id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    assert_eq!(generated["content"], "");
    assert_eq!(generated["rev"], 0);

    let (status, renamed) = app
        .patch("/api/documents/notes", &json!({"title": "Renamed"}))
        .await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["title"], "Renamed");
    assert_eq!(renamed["content"], "héllo 😭");
    assert_eq!(renamed["created_at"], created["created_at"]);
    assert!(renamed["updated_at"].as_str() > created["updated_at"].as_str());

    let (status, body) = app.delete("/api/documents/notes").await;
    assert_eq!((status, body), (204, serde_json::Value::Null));
    let (status, body) = app.get("/api/documents/notes").await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = app.get("/api/documents/notes/ops").await;
    assert_error(status, &body, 404, "not_found");
    // The id is free again.
    app.create("notes", "Again", "").await;
    app.stop().await;
}

async fn unknown_documents_are_404(db: &TestDb) {
    let app = spawn_app(db).await;
    for path in [
        "/api/documents/missing",
        "/api/documents/missing/ops",
        "/api/documents/bad%20id",
        "/api/documents/%F0%9F%98%AD",
    ] {
        let (status, body) = app.get(path).await;
        assert_error(status, &body, 404, "not_found");
    }
    let (status, body) = app
        .patch("/api/documents/missing", &json!({"title": "x"}))
        .await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = app.delete("/api/documents/missing").await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = app
        .post(
            "/api/documents/missing/ops",
            &json!({"rev": 0, "op": ["x"]}),
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    app.stop().await;
}

async fn taken_ids_conflict(db: &TestDb) {
    let app = spawn_app(db).await;
    app.create("taken", "First", "one").await;
    let (status, body) = app
        .post(
            "/api/documents",
            &json!({"id": "taken", "title": "Second", "content": "two"}),
        )
        .await;
    assert_error(status, &body, 409, "conflict");
    let (_, doc) = app.get("/api/documents/taken").await;
    assert_eq!(
        (doc["title"].as_str(), doc["content"].as_str()),
        (Some("First"), Some("one"))
    );
    app.stop().await;
}

async fn titles_and_ids_are_validated(db: &TestDb) {
    let app = spawn_app(db).await;
    for title in [json!(""), json!("   "), json!("x".repeat(201))] {
        let (status, body) = app.post("/api/documents", &json!({"title": title})).await;
        assert_error(status, &body, 422, "invalid_title");
    }
    // 200 characters (not bytes) after trimming is fine.
    let long = format!("  {}  ", "😭".repeat(200));
    let (status, body) = app.post("/api/documents", &json!({"title": long})).await;
    assert_eq!(status, 201, "{body}");

    for id in ["", "a b", "a/b", "é", "a.b", &"x".repeat(65)] {
        let (status, body) = app
            .post("/api/documents", &json!({"id": id, "title": "t"}))
            .await;
        assert_error(status, &body, 422, "invalid_id");
    }
    let (status, body) = app
        .post(
            "/api/documents",
            &json!({"id": "x".repeat(64), "title": "t"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    app.create("doc", "Kept", "").await;
    let (status, body) = app
        .patch("/api/documents/doc", &json!({"title": " \t "}))
        .await;
    assert_error(status, &body, 422, "invalid_title");
    let (_, doc) = app.get("/api/documents/doc").await;
    assert_eq!(doc["title"], "Kept");
    let (_, list) = app.get("/api/documents").await;
    assert_eq!(list["total"], 3);
    app.stop().await;
}

async fn listing_is_newest_first_and_paginated(db: &TestDb) {
    let app = spawn_app(db).await;
    let (status, empty) = app.get("/api/documents").await;
    assert_eq!(status, 200);
    assert_eq!(empty, json!({"items": [], "total": 0}));

    for id in ["a", "b", "c", "d", "e"] {
        app.create(id, &format!("Doc {id}"), "text").await;
    }
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, all) = app.get("/api/documents").await;
    assert_eq!(ids(&all), ["e", "d", "c", "b", "a"]);
    assert_eq!(all["total"], 5);
    // Summaries have no content.
    let first = all["items"][0].as_object().unwrap();
    let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["created_at", "id", "rev", "title", "updated_at"]);

    let (_, page) = app.get("/api/documents?limit=2").await;
    assert_eq!(
        (ids(&page), page["total"].clone()),
        (vec!["e".into(), "d".into()], json!(5))
    );
    let (_, page) = app.get("/api/documents?limit=2&offset=2").await;
    assert_eq!(ids(&page), ["c", "b"]);
    let (_, page) = app.get("/api/documents?limit=2&offset=4").await;
    assert_eq!(ids(&page), ["a"]);
    let (_, page) = app.get("/api/documents?offset=50").await;
    assert_eq!((ids(&page).len(), page["total"].clone()), (0, json!(5)));
    let (_, page) = app.get("/api/documents?limit=100").await;
    assert_eq!(ids(&page).len(), 5);
    let (_, page) = app.get("/api/documents?limit=1").await;
    assert_eq!(ids(&page), ["e"]);

    // An edit and a rename make a document the newest.
    app.edit("a", 0, json!([4, "!"])).await;
    let (_, page) = app.get("/api/documents").await;
    assert_eq!(ids(&page), ["a", "e", "d", "c", "b"]);
    assert_eq!(page["items"][0]["rev"], 1);
    let (status, _) = app.patch("/api/documents/c", &json!({"title": "C"})).await;
    assert_eq!(status, 200);
    let (_, page) = app.get("/api/documents").await;
    assert_eq!(ids(&page), ["c", "a", "e", "d", "b"]);

    // Out-of-range and malformed pagination is a malformed request.
    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-1",
        "limit=",
        "limit=1.5",
        "offset=-1",
        "offset=abc",
        "offset=99999999999999999999",
        "offset=9223372036854775808",
    ] {
        let (status, body) = app.get(&format!("/api/documents?{query}")).await;
        assert_error(status, &body, 400, "bad_request");
    }
    app.stop().await;
}

async fn default_page_is_twenty(db: &TestDb) {
    let app = spawn_app(db).await;
    for i in 0..25 {
        app.create(&format!("d{i:02}"), "t", "").await;
    }
    let (_, page) = app.get("/api/documents").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 20);
    assert_eq!(page["total"], 25);
    assert_eq!(page["items"][0]["id"], "d24");
    app.stop().await;
}

backend_tests!(
    create_get_rename_delete,
    unknown_documents_are_404,
    taken_ids_conflict,
    titles_and_ids_are_validated,
    listing_is_newest_first_and_paginated,
    default_page_is_twenty,
);
