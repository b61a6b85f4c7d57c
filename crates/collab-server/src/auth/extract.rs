//! The extractors that put access control on every REST route: a handler
//! names the role it needs in its signature (`Doc<Writer>`), and cannot
//! run without it.
//!
//! Order of checks: a missing or bad token is 401 before anything else; a
//! valid token without the role is 403 whether or not the document exists
//! (only `admin` on the id may learn that it does not: 404).

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use collab_ot::protocol::Role;

use super::{refusal, Access, TokenError};
use crate::app::AppState;
use crate::domain::DocumentId;
use crate::error::AppError;

/// The role a route needs on its document.
pub trait Needed {
    const ROLE: Role;
}

/// Reading: GET a document and its ops.
pub struct Reader;
/// Writing: also `POST …/ops`.
pub struct Writer;
/// Administering: also rename, delete, share.
pub struct Admin;

impl Needed for Reader {
    const ROLE: Role = Role::Read;
}
impl Needed for Writer {
    const ROLE: Role = Role::Write;
}
impl Needed for Admin {
    const ROLE: Role = Role::Admin;
}

/// The `{id}` of a route's path, with an access that has role `R` on it.
pub struct Doc<R> {
    pub id: DocumentId,
    pub access: Access,
    role: Role,
    _needed: PhantomData<R>,
}

impl<R> Doc<R> {
    /// Turns "no such document" into 403 for anyone but an admin of the id,
    /// so a token cannot probe which documents exist.
    pub fn conceal(&self, e: AppError) -> AppError {
        match e {
            AppError::NotFound if self.role < Role::Admin => {
                refusal(self.id.as_str(), Role::Read, None)
            }
            e => e,
        }
    }
}

impl<R: Needed + Send + Sync> FromRequestParts<AppState> for Doc<R> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let access = Access::from_request_parts(parts, state).await?;
        let crate::extract::Path(raw) =
            crate::extract::Path::<String>::from_request_parts(parts, state).await?;
        let role = access.role_on(&raw);
        match role {
            Some(role) if role >= R::ROLE => {}
            _ => return Err(refusal(&raw, R::ROLE, role)),
        }
        let role = role.unwrap_or(Role::Read);
        // An id that breaks the id rules names no document.
        let Some(id) = DocumentId::parse(&raw) else {
            return Err(if role == Role::Admin {
                AppError::NotFound
            } else {
                refusal(&raw, Role::Read, None)
            });
        };
        Ok(Doc {
            id,
            access,
            role,
            _needed: PhantomData,
        })
    }
}

impl FromRequestParts<AppState> for Access {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        if state.auth.is_open() {
            // Open mode ignores credentials, even malformed ones.
            return Ok(Access::Open);
        }
        let token = bearer(&parts.headers).map_err(unauthorized)?;
        state.auth.authenticate(token).map_err(unauthorized)
    }
}

/// `admin` on `*`: the server-wide operations (revocations).
pub struct AdminOnAll(pub Access);

impl FromRequestParts<AppState> for AdminOnAll {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let access = Access::from_request_parts(parts, state).await?;
        if access.role_on_all() != Some(Role::Admin) {
            return Err(AppError::Forbidden(
                "this needs the admin role on every document (\"*\": \"admin\")".into(),
            ));
        }
        Ok(AdminOnAll(access))
    }
}

/// The token of `Authorization: Bearer <token>`, if the header is there.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, TokenError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(TokenError::Malformed(
            "more than one Authorization header".into(),
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| TokenError::Malformed("the Authorization header is not text".into()))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(TokenError::Malformed(
            "the Authorization header must be \"Bearer <token>\"".into(),
        )),
    }
}

fn unauthorized(e: TokenError) -> AppError {
    AppError::Unauthorized(e.to_string())
}
