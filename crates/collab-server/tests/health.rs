//! `GET /health` really asks the store.

#[macro_use]
mod common;

use common::{spawn_app, TestDb};

async fn health_is_ok_while_the_store_answers(db: &TestDb) {
    let app = spawn_app(db).await;
    let (status, body) = app.get("/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["store"], db.backend);
    app.stop().await;
}

async fn health_is_unavailable_once_the_store_is_gone(db: &TestDb) {
    let app = spawn_app(db).await;
    app.create("doc", "A doc", "hi").await;
    // Close every database connection: the store is now really unreachable.
    app.state.store.close().await;
    let (status, body) = app.get("/health").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    // Other requests fail cleanly too, with the protocol's error body.
    let (status, body) = app.get("/api/documents").await;
    common::assert_error(status, &body, 503, "unavailable");
    let (status, body) = app.get("/api/documents/doc").await;
    common::assert_error(status, &body, 503, "unavailable");
    app.stop().await;
}

async fn unknown_routes_and_methods_get_contract_errors(db: &TestDb) {
    let app = spawn_app(db).await;
    let (status, body) = app.get("/nope").await;
    common::assert_error(status, &body, 404, "not_found");
    let (status, body) = app
        .send_raw(reqwest::Method::PUT, "/api/documents", None, "")
        .await;
    common::assert_error(status, &body, 405, "method_not_allowed");
    app.stop().await;
}

backend_tests!(
    health_is_ok_while_the_store_answers,
    health_is_unavailable_once_the_store_is_gone,
    unknown_routes_and_methods_get_contract_errors,
);
