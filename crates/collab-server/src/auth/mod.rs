//! Access control (docs/protocol.md §6): open mode, or signed tokens that
//! grant roles on documents, refreshed and revoked while connections stay
//! open.
//!
//! `grants` and `token` are pure (patterns, roles, JWT checks); this module
//! holds the server's view ([`Auth`]: keys, leeway, the live revocation
//! set) and what one request or connection may do ([`Access`]). The HTTP
//! routes get an [`Access`] from the extractors in `extract`, WebSocket
//! sessions from [`Auth::authenticate`] once when they open and again on
//! every `auth` frame.

mod extract;
mod grants;
mod revocations;
mod session;
mod token;

use std::sync::Arc;

use collab_ot::protocol::Role;

pub use extract::{bearer, Admin, AdminOnAll, Doc, Reader, Writer};
pub use grants::{Grants, Pattern};
pub use revocations::Revocations;
pub use session::{Refused, SessionAccess};
pub use token::{mint_with, now_secs, Claims, Secret, Token, TokenError, Verifier};

use crate::cluster::ClusterLink;
use crate::store::{DocumentFilter, DocumentStore, Revocation, StoreError};

/// Longest lifetime of a share link, in seconds (one year).
pub const MAX_LINK_TTL_SECS: u64 = 365 * 24 * 3600;

/// The server's access control: its keys (none in open mode) and what it
/// knows of revocations. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    verifier: Option<Arc<Verifier>>,
    revocations: Revocations,
    cluster: Option<ClusterLink>,
}

impl Auth {
    pub fn new(verifier: Option<Verifier>) -> Self {
        Self {
            verifier: verifier.map(Arc::new),
            ..Self::default()
        }
    }

    /// Revocations made here are also published to the other instances.
    pub fn with_cluster(mut self, cluster: Option<ClusterLink>) -> Self {
        self.cluster = cluster;
        self
    }

    pub fn is_open(&self) -> bool {
        self.verifier.is_none()
    }

    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// What a request or connection presenting `token` may do. In open
    /// mode any token is ignored.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Access, TokenError> {
        let Some(verifier) = &self.verifier else {
            return Ok(Access::Open);
        };
        let token = verifier.verify(token.ok_or(TokenError::Missing)?)?;
        if self.revocations.is_revoked(&token) {
            return Err(TokenError::Revoked);
        }
        Ok(Access::Token(Arc::new(token)))
    }

    /// Whether a token accepted earlier still holds now.
    pub fn still_valid(&self, token: &Token) -> Result<(), TokenError> {
        if self.revocations.is_revoked(token) {
            return Err(TokenError::Revoked);
        }
        if now_secs() >= self.expires_at(token) {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    /// When a connection using `token` must close (Unix seconds): its
    /// `exp` plus the clock leeway every check allows.
    pub fn expires_at(&self, token: &Token) -> u64 {
        let leeway = self.verifier.as_ref().map_or(0, |v| v.leeway());
        token.exp.saturating_add(leeway)
    }

    /// Stores a revocation, applies it here at once and tells the other
    /// instances (who would otherwise see it at their next poll).
    pub async fn revoke(
        &self,
        store: &dyn DocumentStore,
        revocation: Revocation,
    ) -> Result<(), StoreError> {
        store.add_revocation(&revocation).await?;
        if let Some(cluster) = &self.cluster {
            cluster.publish_revocation(&revocation);
        }
        self.revocations.add([revocation]);
        Ok(())
    }

    /// A token for a share link: its own `sub` (`link:` + its `jti`), so
    /// revoking it touches nobody else. `None` without a secret to sign with.
    pub fn mint_link(&self, doc: &str, role: Role, ttl_secs: u64) -> Option<MintedLink> {
        let verifier = self.verifier.as_ref().filter(|v| v.can_mint())?;
        let now = now_secs();
        let jti = uuid::Uuid::new_v4().simple().to_string();
        let claims = Claims {
            sub: format!("link:{jti}"),
            exp: now + ttl_secs,
            iat: Some(now),
            nbf: None,
            jti: Some(jti.clone()),
            name: None,
            docs: Some([(doc.to_owned(), role.as_str().to_owned())].into()),
        };
        Some(MintedLink {
            token: verifier.mint(&claims)?,
            exp: claims.exp,
            jti,
        })
    }
}

/// A freshly signed share-link token.
#[derive(Debug)]
pub struct MintedLink {
    pub token: String,
    pub exp: u64,
    pub jti: String,
}

/// What one request or connection may do.
#[derive(Debug, Clone)]
pub enum Access {
    /// Open mode: everything.
    Open,
    Token(Arc<Token>),
}

impl Access {
    /// The role on document `id`; `None`: not granted.
    pub fn role_on(&self, id: &str) -> Option<Role> {
        match self {
            Access::Open => Some(Role::Admin),
            Access::Token(t) => t.grants.role_on(id),
        }
    }

    /// The role on every document, including ones not created yet.
    pub fn role_on_all(&self) -> Option<Role> {
        match self {
            Access::Open => Some(Role::Admin),
            Access::Token(t) => t.grants.role_on_all(),
        }
    }

    /// The documents a listing may show.
    pub fn readable(&self) -> DocumentFilter {
        match self {
            Access::Open => DocumentFilter::All,
            Access::Token(t) => t.grants.readable(),
        }
    }

    /// The token's user: the author of their ops, the `user_id` of their
    /// presence. `None` in open mode.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Access::Open => None,
            Access::Token(t) => Some(&t.sub),
        }
    }

    pub fn token(&self) -> Option<&Arc<Token>> {
        match self {
            Access::Open => None,
            Access::Token(t) => Some(t),
        }
    }

    /// The token's expiry (Unix seconds); `None` in open mode.
    pub fn exp(&self) -> Option<u64> {
        self.token().map(|t| t.exp)
    }
}

/// The refusal for a document this access may not use as `needed`: a
/// token without `admin` on it must not learn whether it exists.
pub(crate) fn refusal(id: &str, needed: Role, has: Option<Role>) -> crate::error::AppError {
    use crate::error::AppError;
    match has {
        None => AppError::Forbidden(format!("this token does not grant access to document {id}")),
        Some(role) => AppError::Forbidden(format!(
            "this needs the {needed} role on document {id}; the token grants {role}"
        )),
    }
}
