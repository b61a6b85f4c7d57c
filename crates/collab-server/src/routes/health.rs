//! `GET /health`: a real round trip to the store, so a load balancer stops
//! sending traffic to an instance that cannot reach its database.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::app::AppState;

/// A health check must answer even when the database hangs.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let backend = state.store.backend();
    let version = env!("CARGO_PKG_VERSION");
    match tokio::time::timeout(PING_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => (
            StatusCode::OK,
            Json(json!({"status": "ok", "store": backend, "version": version})),
        ),
        outcome => {
            let reason = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            tracing::warn!(%reason, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "store": backend, "version": version})),
            )
        }
    }
}
