//! HTTP routes, one module per resource.
//!
//! The live-editing WebSocket endpoint, `GET /ws/documents/{id}`, arrives
//! with issue 4 as `routes/ws.rs`, mounted here next to the REST routes.

mod documents;
mod health;

use axum::routing::get;
use axum::Router;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
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
}
