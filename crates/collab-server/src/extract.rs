//! Extractors that turn axum's rejections into contract errors.
//!
//! axum answers a bad body or query with its own plain-text errors; the
//! contract wants the JSON error body everywhere, so every handler extracts
//! through these wrappers instead.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// `axum::Json`, with rejections as contract errors: 413 `too_large` for a
/// body over the limit, 400 `bad_request` for everything else (bad syntax,
/// wrong types, missing fields, a missing `Content-Type: application/json`).
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return AppError::TooLarge("request body is too large".to_owned());
    }
    let message = match &rejection {
        JsonRejection::JsonDataError(e) => format!("invalid request body: {}", e.body_text()),
        JsonRejection::JsonSyntaxError(_) => "request body is not valid JSON".to_owned(),
        JsonRejection::MissingJsonContentType(_) => {
            "expected a request body with Content-Type: application/json".to_owned()
        }
        other => format!("could not read request body: {}", other.body_text()),
    };
    AppError::BadRequest(message)
}

/// `axum::extract::Query`, with rejections as 400 `bad_request`.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e: QueryRejection| {
                AppError::BadRequest(format!("invalid query string: {}", e.body_text()))
            })
    }
}

/// `axum::extract::Path`, with rejections as 400 `bad_request`.
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|e: PathRejection| {
                AppError::BadRequest(format!("invalid path: {}", e.body_text()))
            })
    }
}
