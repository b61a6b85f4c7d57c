//! HTTP routes, one module per resource, the live-editing WebSocket
//! endpoint next to them, and the embedded browser editor.

mod auth;
mod documents;
mod health;
mod web;
mod ws;

use axum::routing::{get, post};
use axum::Router;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(web::router())
        .route("/health", get(health::health))
        .route(
            "/api/documents",
            get(documents::list).post(documents::create),
        )
        .route(
            "/api/documents/{id}",
            get(documents::get)
                .patch(documents::rename)
                .delete(documents::delete),
        )
        .route(
            "/api/documents/{id}/ops",
            get(documents::list_ops).post(documents::submit_op),
        )
        .route("/api/documents/{id}/links", post(documents::share))
        .route("/api/auth/revocations", post(auth::revoke))
        .route("/ws/documents/{id}", get(ws::upgrade))
}
