//! `POST /api/auth/revocations`: revoking a token or a user, everywhere.
//!
//! The revocation is stored first (so it survives restarts and reaches
//! instances that missed the message), then applied here and published;
//! open connections using a revoked token close within a second.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::{now_secs, AdminOnAll};
use crate::error::AppError;
use crate::extract::Json;
use crate::store::Revocation;

/// Longest `jti` or `sub` accepted, in bytes.
const MAX_NAME_BYTES: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    jti: Option<String>,
    sub: Option<String>,
}

pub async fn revoke(
    State(state): State<AppState>,
    AdminOnAll(access): AdminOnAll,
    Json(body): Json<RevokeBody>,
) -> Result<StatusCode, AppError> {
    let revocation = match (body.jti, body.sub) {
        (Some(jti), None) => Revocation::Token { jti },
        // Every token of the user issued up to now: `iat` has whole seconds.
        (None, Some(sub)) => Revocation::User {
            sub,
            before: i64::try_from(now_secs()).unwrap_or(i64::MAX),
        },
        _ => {
            return Err(AppError::BadRequest(
                "give exactly one of \"jti\" (one token) or \"sub\" (every token of a user)"
                    .to_owned(),
            ))
        }
    };
    let name = match &revocation {
        Revocation::Token { jti } => jti,
        Revocation::User { sub, .. } => sub,
    };
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(AppError::BadRequest(format!(
            "jti and sub are 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    if name.contains('\0') {
        return Err(AppError::BadRequest(
            "jti and sub must not contain U+0000".to_owned(),
        ));
    }
    state
        .auth
        .revoke(state.store.as_ref(), revocation.clone())
        .await?;
    tracing::info!(by = ?access.user_id(), ?revocation, "revoked");
    Ok(StatusCode::NO_CONTENT)
}
