//! The one error type of the HTTP layer and its protocol error body,
//! `{"error": {"code": "<snake_case>", "message": "<human text>"}}`.
//!
//! Bad input always maps to a 4xx with a specific code. Server faults are
//! logged here with their details and answered with a generic message, so
//! nothing internal leaks to clients.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use collab_ot::SubmitError;
use serde_json::json;

use crate::rooms::RoomError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Malformed request: bad JSON, wrong types, missing fields, bad query.
    #[error("{0}")]
    BadRequest(String),
    #[error("document not found")]
    NotFound,
    #[error("no such route")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    InvalidTitle(String),
    #[error("{0}")]
    InvalidId(String),
    #[error("{0}")]
    InvalidOp(String),
    #[error("{0}")]
    RevOutOfRange(String),
    #[error("{0}")]
    StaleSeq(String),
    #[error("{0}")]
    InvalidContent(String),
    #[error("{0}")]
    RateLimited(String),
    /// No valid token: missing, malformed, badly signed, expired, revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// Not allowed, whatever the request asks: e.g. it comes from a web
    /// origin that may not use the server.
    #[error("{0}")]
    Forbidden(String),
    /// The HTTP parser gave up on a request target this long (414).
    #[error("the request URI is too long")]
    UriTooLong,
    /// The HTTP parser gave up on request headers this large (431).
    #[error("the request headers are too large")]
    HeadersTooLarge,
    /// A new connection while the server-wide cap is reached; worth a retry.
    #[error("the server has too many open connections; retry later")]
    TooManyConnections,
    /// The store cannot be reached or the server is stopping; worth a retry.
    #[error("service unavailable")]
    Unavailable(#[source] Option<Arc<StoreError>>),
    /// A real server fault. The source is logged, never sent.
    #[error("internal error")]
    Internal(#[source] Arc<StoreError>),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound | AppError::NoRoute => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Conflict(_) | AppError::RevOutOfRange(_) | AppError::StaleSeq(_) => {
                StatusCode::CONFLICT
            }
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UriTooLong => StatusCode::URI_TOO_LONG,
            AppError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            AppError::InvalidTitle(_)
            | AppError::InvalidId(_)
            | AppError::InvalidOp(_)
            | AppError::InvalidContent(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Unavailable(_) | AppError::TooManyConnections => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest(_) => "bad_request",
            AppError::NotFound | AppError::NoRoute => "not_found",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::Conflict(_) => "conflict",
            AppError::TooLarge(_) | AppError::UriTooLong | AppError::HeadersTooLarge => "too_large",
            AppError::InvalidTitle(_) => "invalid_title",
            AppError::InvalidId(_) => "invalid_id",
            AppError::InvalidOp(_) => "invalid_op",
            AppError::RevOutOfRange(_) => "rev_out_of_range",
            AppError::StaleSeq(_) => "stale_seq",
            AppError::InvalidContent(_) => "invalid_content",
            AppError::RateLimited(_) => "rate_limited",
            AppError::Forbidden(_) => "forbidden",
            AppError::Unauthorized(_) => "unauthorized",
            AppError::Unavailable(_) | AppError::TooManyConnections => "unavailable",
            AppError::Internal(_) => "internal",
        }
    }

    /// The protocol's error body for this error.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code(), "message": self.to_string()}})
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match &self {
            AppError::Internal(source) => tracing::error!(error = %source, "internal error"),
            AppError::Unavailable(Some(source)) => {
                tracing::warn!(error = %source, "store unavailable");
            }
            _ => {}
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if let AppError::Unauthorized(_) = self {
            // RFC 6750: say which scheme would work.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        Arc::new(e).into()
    }
}

impl From<Arc<StoreError>> for AppError {
    fn from(e: Arc<StoreError>) -> Self {
        match &*e {
            StoreError::NotFound => AppError::NotFound,
            StoreError::Conflict(_) => {
                AppError::Conflict("the document changed concurrently; retry".to_owned())
            }
            StoreError::Unavailable(_) => AppError::Unavailable(Some(e)),
            _ => AppError::Internal(e),
        }
    }
}

impl From<RoomError> for AppError {
    fn from(e: RoomError) -> Self {
        match e {
            RoomError::NotFound => AppError::NotFound,
            RoomError::Rejected(e) => e.into(),
            RoomError::Store(e) => e.into(),
            RoomError::RateLimited => AppError::RateLimited(e.to_string()),
            RoomError::ClientTaken(_) => AppError::Forbidden(e.to_string()),
            RoomError::Closed | RoomError::ShuttingDown => AppError::Unavailable(None),
        }
    }
}

impl From<SubmitError> for AppError {
    fn from(e: SubmitError) -> Self {
        let message = e.to_string();
        match e {
            SubmitError::RevOutOfRange { .. } => AppError::RevOutOfRange(message),
            SubmitError::InvalidOp(_) => AppError::InvalidOp(message),
            SubmitError::TooLarge { .. } => AppError::TooLarge(message),
            SubmitError::StaleSeq { .. } | SubmitError::SeqReused { .. } => {
                AppError::StaleSeq(message)
            }
            SubmitError::TooComplex { .. } => AppError::TooLarge(message),
            SubmitError::TooFarBehind { .. } => AppError::RevOutOfRange(message),
        }
    }
}
