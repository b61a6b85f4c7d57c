//! Extractors that turn axum's rejections into protocol errors.
//!
//! axum answers a bad body or query with its own plain-text errors; the
//! protocol wants the JSON error body everywhere, so every handler extracts
//! through these wrappers instead. Bodies are read with the same strict
//! JSON as WebSocket frames (`collab_ot::json`).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// A JSON body, read strictly and refused with protocol errors: 413
/// `too_large` for a body over the limit, 400 `bad_request` for everything
/// else (a missing `Content-Type: application/json`, bad syntax, a duplicate
/// key, an integer past 2^53 − 1, wrong types, missing fields), in words
/// meant for people rather than Rust type names.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(AppError::BadRequest(
                "expected a request body with Content-Type: application/json".to_owned(),
            ));
        }
        let deadline = req
            .extensions()
            .get::<BodyDeadline>()
            .map_or(BodyDeadline::DEFAULT, |d| d.0);
        let read = tokio::time::timeout(deadline, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                AppError::BadRequest(format!(
                    "the request body did not arrive within {} s",
                    deadline.as_secs()
                ))
            })?;
        let bytes = read.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::TooLarge("request body is too large".to_owned())
            } else {
                AppError::BadRequest("could not read the request body".to_owned())
            }
        })?;
        let value = collab_ot::json::parse_strict_slice(&bytes)
            .map_err(|e| AppError::BadRequest(format!("request body: {e}")))?;
        T::deserialize(value).map(Json).map_err(|e| {
            AppError::BadRequest(format!("invalid request body: {}", human(&e.to_string())))
        })
    }
}

/// How long a request body may take to arrive, whole (set by the app as a
/// request extension; the header timeout covers only request heads).
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Duration);

impl BodyDeadline {
    pub const DEFAULT: Duration = Duration::from_secs(30);
}

/// `application/json`, or any `application/…+json`, parameters aside.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// serde's messages name Rust types ("expected struct CreateBody", "expected
/// u64"); a client should read JSON words instead.
pub fn human(message: &str) -> String {
    let message = message
        .replace("invalid type: sequence", "invalid type: array")
        .replace("invalid type: map", "invalid type: object");
    let mut out = String::with_capacity(message.len());
    let mut rest = message.as_str();
    while let Some(at) = rest.find("expected ") {
        let (before, after) = rest.split_at(at + "expected ".len());
        out.push_str(before);
        let end = after.find([',', ' ', ')']).unwrap_or(after.len());
        let (word, tail) = after.split_at(end);
        let (replacement, tail) = match word {
            "struct" | "map" => {
                // "struct Name": drop the name as well.
                let tail = tail.trim_start();
                let name_end = tail.find([',', ' ', ')']).unwrap_or(tail.len());
                let tail = if word == "struct" {
                    &tail[name_end..]
                } else {
                    tail
                };
                ("a JSON object", tail)
            }
            "u8" | "u16" | "u32" | "u64" | "usize" => ("a non-negative integer", tail),
            "i8" | "i16" | "i32" | "i64" | "isize" => ("an integer", tail),
            "f32" | "f64" => ("a number", tail),
            "a" if tail.starts_with(" sequence") => ("an array", &tail[" sequence".len()..]),
            "a" if tail.starts_with(" map") => ("a JSON object", &tail[" map".len()..]),
            _ => (word, tail),
        };
        out.push_str(replacement);
        rest = tail;
    }
    out.push_str(rest);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_speak_json() {
        assert_eq!(
            human("invalid type: sequence, expected struct CreateBody at line 1 column 2"),
            "invalid type: array, expected a JSON object at line 1 column 2"
        );
        assert_eq!(
            human("invalid type: string \"1\", expected u64"),
            "invalid type: string \"1\", expected a non-negative integer"
        );
        assert_eq!(
            human("invalid type: integer `1`, expected a string"),
            "invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            human("invalid type: map, expected a sequence"),
            "invalid type: object, expected an array"
        );
        assert_eq!(human("missing field `title`"), "missing field `title`");
    }

    #[test]
    fn json_content_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
