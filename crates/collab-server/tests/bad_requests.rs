//! A corpus of bad requests: each gets the protocol's JSON error and a 4xx
//! (never a 500), and no document changes.

#[macro_use]
mod common;

use common::{spawn_app, TestDb};
use reqwest::Method;
use serde_json::{json, Value};

const JSON: Option<&str> = Some("application/json");

/// (method, path, content type, body, expected status, expected code)
type Case<'a> = (Method, &'a str, Option<&'a str>, String, u16, &'a str);

async fn bad_requests_change_nothing(db: &TestDb) {
    let app = spawn_app(db).await;
    app.create("doc", "Doc", "héllo 😭").await;
    app.edit("doc", 0, json!([7, "!"])).await;
    app.create("other", "Other", "").await;
    let before = app.everything().await;

    let oversize_create = json!({"title": "big", "content": "x".repeat(70 * 1024)}).to_string();
    let oversize_op = json!({"rev": 1, "op": ["y".repeat(70 * 1024)]}).to_string();
    let cases: Vec<Case> = vec![
        // Malformed JSON.
        (
            Method::POST,
            "/api/documents",
            JSON,
            "{".into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/documents",
            JSON,
            "".into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/documents",
            JSON,
            "not json".into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/documents",
            JSON,
            "[]".into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/documents",
            JSON,
            "null".into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/documents",
            JSON,
            r#"{"title":"a"} x"#.into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            "{\"rev\":".into(),
            400,
            "bad_request",
        ),
        (
            Method::PATCH,
            "/api/documents/doc",
            JSON,
            "{'title': 'x'}".into(),
            400,
            "bad_request",
        ),
        // No or wrong content type.
        (
            Method::POST,
            "/api/documents",
            None,
            r#"{"title":"t"}"#.into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/documents",
            Some("text/plain"),
            r#"{"title":"t"}"#.into(),
            400,
            "bad_request",
        ),
        // Wrong types.
        (
            Method::POST,
            "/api/documents",
            JSON,
            r#"{"title":5}"#.into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/documents",
            JSON,
            r#"{"title":"t","content":1}"#.into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/documents",
            JSON,
            r#"{"title":"t","id":7}"#.into(),
            400,
            "bad_request",
        ),
        (
            Method::PATCH,
            "/api/documents/doc",
            JSON,
            r#"{"title":null}"#.into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":"1","op":["x"]}"#.into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":-1,"op":["x"]}"#.into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1.5,"op":["x"]}"#.into(),
            400,
            "bad_request",
        ),
        // Missing fields.
        (
            Method::POST,
            "/api/documents",
            JSON,
            "{}".into(),
            400,
            "bad_request",
        ),
        (
            Method::PATCH,
            "/api/documents/doc",
            JSON,
            "{}".into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"op":["x"]}"#.into(),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1}"#.into(),
            400,
            "bad_request",
        ),
        // Oversize bodies (the test server allows 64 KiB).
        (
            Method::POST,
            "/api/documents",
            JSON,
            oversize_create,
            413,
            "too_large",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            oversize_op,
            413,
            "too_large",
        ),
        // Unknown ids, and ids that can name no document.
        (
            Method::POST,
            "/api/documents/nope/ops",
            JSON,
            r#"{"rev":0,"op":["x"]}"#.into(),
            404,
            "not_found",
        ),
        (
            Method::PATCH,
            "/api/documents/nope",
            JSON,
            r#"{"title":"x"}"#.into(),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/api/documents/nope",
            None,
            String::new(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/documents/no%20pe",
            None,
            String::new(),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/api/documents/d%C3%B6c",
            None,
            String::new(),
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/api/documents/a.b/ops",
            JSON,
            r#"{"rev":0,"op":["x"]}"#.into(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/documents/%FF",
            None,
            String::new(),
            400,
            "bad_request",
        ),
        // Ids with bad characters, and taken ids.
        (
            Method::POST,
            "/api/documents",
            JSON,
            r#"{"title":"t","id":"a b"}"#.into(),
            422,
            "invalid_id",
        ),
        (
            Method::POST,
            "/api/documents",
            JSON,
            r#"{"title":"t","id":"<script>"}"#.into(),
            422,
            "invalid_id",
        ),
        (
            Method::POST,
            "/api/documents",
            JSON,
            r#"{"title":"t","id":""}"#.into(),
            422,
            "invalid_id",
        ),
        (
            Method::POST,
            "/api/documents",
            JSON,
            r#"{"title":"t","id":"doc"}"#.into(),
            409,
            "conflict",
        ),
        // Bad titles.
        (
            Method::POST,
            "/api/documents",
            JSON,
            r#"{"title":"  "}"#.into(),
            422,
            "invalid_title",
        ),
        (
            Method::PATCH,
            "/api/documents/doc",
            JSON,
            r#"{"title":""}"#.into(),
            422,
            "invalid_title",
        ),
        // Invalid operations (the document "héllo 😭!" has 8 characters).
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1,"op":[9,"x"]}"#.into(),
            422,
            "invalid_op",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1,"op":[{"d":9}]}"#.into(),
            422,
            "invalid_op",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1,"op":[0,"x"]}"#.into(),
            422,
            "invalid_op",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1,"op":[{"d":0}]}"#.into(),
            422,
            "invalid_op",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1,"op":[{"d":""}]}"#.into(),
            422,
            "invalid_op",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1,"op":[{"d":"hello"}]}"#.into(),
            422,
            "invalid_op",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1,"op":[""]}"#.into(),
            422,
            "invalid_op",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1,"op":[-1]}"#.into(),
            422,
            "invalid_op",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1,"op":[1.5]}"#.into(),
            422,
            "invalid_op",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1,"op":[true]}"#.into(),
            422,
            "invalid_op",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1,"op":[{"x":1}]}"#.into(),
            422,
            "invalid_op",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1,"op":"x"}"#.into(),
            422,
            "invalid_op",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1,"op":null}"#.into(),
            422,
            "invalid_op",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":1,"op":{"d":1}}"#.into(),
            422,
            "invalid_op",
        ),
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            r#"{"rev":9,"op":["x"]}"#.into(),
            409,
            "rev_out_of_range",
        ),
        // Too large a document (the test server allows 1000 characters).
        (
            Method::POST,
            "/api/documents/doc/ops",
            JSON,
            json!({"rev": 1, "op": ["z".repeat(993)]}).to_string(),
            413,
            "too_large",
        ),
        // Bad query parameters.
        (
            Method::GET,
            "/api/documents?limit=0",
            None,
            String::new(),
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/documents?limit=101",
            None,
            String::new(),
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/documents?limit=abc",
            None,
            String::new(),
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/documents?offset=-5",
            None,
            String::new(),
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/documents/doc/ops?since=abc",
            None,
            String::new(),
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/documents/doc/ops?limit=-1",
            None,
            String::new(),
            400,
            "bad_request",
        ),
        // Unknown routes and methods.
        (
            Method::PUT,
            "/api/documents/doc",
            JSON,
            "{}".into(),
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/api/nothing",
            None,
            String::new(),
            404,
            "not_found",
        ),
    ];

    for (method, path, content_type, body, status, code) in cases {
        let shown = format!(
            "{method} {path} {}",
            body.chars().take(60).collect::<String>()
        );
        let (got, response) = app.send_raw(method, path, content_type, body).await;
        assert!(
            (400..500).contains(&got),
            "{shown}: status {got}, {response}"
        );
        assert_eq!(got, status, "{shown}: {response}");
        assert_eq!(response["error"]["code"], code, "{shown}: {response}");
        assert!(response["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert_eq!(
            response.as_object().map(|o| o.len()),
            Some(1),
            "{shown}: {response}"
        );
    }

    let after = app.everything().await;
    assert_eq!(after, before, "a bad request changed something");
    let (_, health) = app.get("/health").await;
    assert_eq!(health["status"], "ok");
    app.stop().await;
}

/// Requests that are fine at the edge of the limits.
async fn limits_are_inclusive(db: &TestDb) {
    let app = spawn_app(db).await;
    let content = "c".repeat(1000);
    let (status, body) = app
        .post(
            "/api/documents",
            &json!({"id": "full", "title": "t", "content": content}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // A full document may still shrink.
    assert_eq!(app.edit("full", 0, json!([{"d": 10}])).await, 1);
    let (_, doc): (u16, Value) = app.get("/api/documents/full").await;
    assert_eq!(
        doc["content"].as_str().map(|c| c.chars().count()),
        Some(990)
    );
    app.stop().await;
}

backend_tests!(bad_requests_change_nothing, limits_are_inclusive);
