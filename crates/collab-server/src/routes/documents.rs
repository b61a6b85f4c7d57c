//! The documents REST API (docs/protocol.md §2).
//!
//! Metadata comes straight from the store; content and edits go through the
//! document's room, so a REST edit takes exactly the path of a live one.
//! Each handler states the role it needs in its signature (`Doc<Reader>`,
//! `Doc<Writer>`, `Doc<Admin>`; see `auth`), and hides a missing document
//! behind 403 from anyone who may not learn that it is missing.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use collab_ot::protocol::Role;
use collab_ot::Operation;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::auth::{Access, Admin, Doc, Reader, Writer, MAX_LINK_TTL_SECS};
use crate::domain::{DocumentId, Timestamp, Title};
use crate::error::AppError;
use crate::extract::{Json, Query};
use crate::rooms::Submission;
use crate::store::{DocumentMeta, NewDocument, StoredOp};

const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;
const DEFAULT_OPS_PAGE: u32 = 100;
const MAX_OPS_PAGE: u32 = 1000;

/// A document with its content.
#[derive(Debug, Serialize)]
struct Document {
    id: DocumentId,
    title: String,
    content: String,
    rev: u64,
    created_at: Timestamp,
    updated_at: Timestamp,
}

/// A document without its content, as listings show it.
#[derive(Debug, Serialize)]
struct Summary {
    id: DocumentId,
    title: String,
    rev: u64,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<DocumentMeta> for Summary {
    fn from(m: DocumentMeta) -> Self {
        Self {
            id: m.id,
            title: m.title,
            rev: m.rev,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// One committed operation, as `GET …/ops` lists it.
#[derive(Debug, Serialize)]
struct Op {
    rev: u64,
    op: Operation,
    client_id: Option<String>,
    seq: Option<u64>,
    author: Option<String>,
    created_at: Timestamp,
}

impl From<StoredOp> for Op {
    fn from(o: StoredOp) -> Self {
        Self {
            rev: o.rev,
            op: o.op,
            client_id: o.client_id,
            seq: o.seq,
            author: o.author,
            created_at: o.created_at,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CreateBody {
    title: String,
    content: Option<String>,
    id: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    access: Access,
    Json(body): Json<CreateBody>,
) -> Result<impl IntoResponse, AppError> {
    // Creating needs admin on the id it will have: on that id when the
    // client names it, on every id (`*`) when the server picks one.
    let role = match body.id.as_deref() {
        Some(id) => access.role_on(id),
        None => access.role_on_all(),
    };
    if role != Some(Role::Admin) {
        return Err(AppError::Forbidden(match body.id.as_deref() {
            Some(id) => format!("creating document {id} needs the admin role on it"),
            None => "creating a document without an id needs the admin role on \"*\"".to_owned(),
        }));
    }
    let title = parse_title(&body.title)?;
    let id = match body.id.as_deref() {
        Some(id) => DocumentId::parse(id)
            .ok_or_else(|| AppError::InvalidId("id must match [A-Za-z0-9_-]{1,64}".to_owned()))?,
        None => DocumentId::generate(),
    };
    let content = body.content.unwrap_or_default();
    if content.contains('\0') {
        return Err(AppError::InvalidContent(
            "content must not contain U+0000 (NUL)".to_owned(),
        ));
    }
    let chars = content.chars().count();
    let max = state.limits.max_document_chars;
    if chars > max {
        return Err(AppError::TooLarge(format!(
            "content has {chars} characters; the limit is {max}"
        )));
    }
    let new = NewDocument {
        id: id.clone(),
        title,
        content,
    };
    let content = new.content.clone();
    let meta = state
        .store
        .create_document(new)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict(_) => {
                AppError::Conflict(format!("a document with id \"{id}\" already exists"))
            }
            e => e.into(),
        })?;
    tracing::info!(document = %meta.id, "document created");
    Ok((
        StatusCode::CREATED,
        axum::Json(with_content(meta, content, 0)),
    ))
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    limit: Option<u32>,
    offset: Option<u64>,
}

pub async fn list(
    State(state): State<AppState>,
    access: Access,
    Query(params): Query<ListParams>,
) -> Result<impl IntoResponse, AppError> {
    let limit = page_limit(params.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let offset = params.offset.unwrap_or(0);
    check_safe("offset", offset)?;
    let (items, total) = state
        .store
        .list_documents(&access.readable(), limit, offset)
        .await?;
    let items: Vec<Summary> = items.into_iter().map(Summary::from).collect();
    Ok(axum::Json(
        serde_json::json!({"items": items, "total": total}),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    doc: Doc<Reader>,
) -> Result<impl IntoResponse, AppError> {
    let found = async {
        let meta = state
            .store
            .document(&doc.id)
            .await?
            .ok_or(AppError::NotFound)?;
        let content = state.rooms.read(&doc.id).await?;
        Ok(with_content(meta, content.content, content.rev))
    };
    Ok(axum::Json(found.await.map_err(|e| doc.conceal(e))?))
}

#[derive(Debug, Deserialize)]
pub struct RenameBody {
    title: String,
}

pub async fn rename(
    State(state): State<AppState>,
    doc: Doc<Admin>,
    Json(body): Json<RenameBody>,
) -> Result<impl IntoResponse, AppError> {
    let id = doc.id;
    let title = parse_title(&body.title)?;
    let meta = state
        .store
        .rename_document(&id, &title)
        .await?
        .ok_or(AppError::NotFound)?;
    let doc = state.rooms.read(&id).await?;
    Ok(axum::Json(with_content(meta, doc.content, doc.rev)))
}

pub async fn delete(
    State(state): State<AppState>,
    doc: Doc<Admin>,
) -> Result<impl IntoResponse, AppError> {
    let id = doc.id;
    if !state.store.delete_document(&id).await? {
        return Err(AppError::NotFound);
    }
    state.rooms.document_deleted(&id).await;
    tracing::info!(document = %id, "document deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct OpsParams {
    since: Option<u64>,
    limit: Option<u32>,
}

pub async fn list_ops(
    State(state): State<AppState>,
    doc: Doc<Reader>,
    Query(params): Query<OpsParams>,
) -> Result<impl IntoResponse, AppError> {
    let limit = page_limit(params.limit, DEFAULT_OPS_PAGE, MAX_OPS_PAGE)?;
    let since = params.since.unwrap_or(0);
    check_safe("since", since)?;
    let id = &doc.id;
    if state.store.document(id).await?.is_none() {
        return Err(doc.conceal(AppError::NotFound));
    }
    let ops: Vec<Op> = state
        .store
        .ops_since(id, since, limit)
        .await?
        .into_iter()
        .map(Op::from)
        .collect();
    Ok(axum::Json(serde_json::json!({"ops": ops})))
}

#[derive(Debug, Deserialize)]
pub struct SubmitBody {
    rev: u64,
    /// Parsed separately: a well-formed body with a bad operation is
    /// invalid content (422 `invalid_op`), not a malformed request.
    op: serde_json::Value,
}

pub async fn submit_op(
    State(state): State<AppState>,
    doc: Doc<Writer>,
    Json(body): Json<SubmitBody>,
) -> Result<impl IntoResponse, AppError> {
    let op: Operation = serde_json::from_value(body.op).map_err(|e| {
        AppError::InvalidOp(format!(
            "invalid operation: {}",
            crate::extract::human(&e.to_string())
        ))
    })?;
    let submission = Submission {
        author: doc.access.user_id().map(str::to_owned),
        client_id: None,
        seq: None,
        base_rev: body.rev,
        op,
    };
    let rev = state
        .rooms
        .submit(&doc.id, submission)
        .await
        .map_err(|e| doc.conceal(e.into()))?;
    Ok(axum::Json(serde_json::json!({"rev": rev})))
}

#[derive(Debug, Deserialize)]
pub struct ShareBody {
    role: String,
    ttl_secs: Option<u64>,
}

/// A share link lasts a week unless asked otherwise.
const DEFAULT_LINK_TTL_SECS: u64 = 7 * 24 * 3600;

/// `POST /api/documents/{id}/links`: a token for this document alone, and
/// the editor URL that carries it in its fragment (never sent to servers).
pub async fn share(
    State(state): State<AppState>,
    doc: Doc<Admin>,
    Json(body): Json<ShareBody>,
) -> Result<impl IntoResponse, AppError> {
    let role = match Role::parse(&body.role) {
        Some(role @ (Role::Read | Role::Write)) => role,
        _ => {
            return Err(AppError::BadRequest(
                "role must be \"read\" or \"write\"".to_owned(),
            ))
        }
    };
    let ttl = body.ttl_secs.unwrap_or(DEFAULT_LINK_TTL_SECS);
    if !(1..=MAX_LINK_TTL_SECS).contains(&ttl) {
        return Err(AppError::BadRequest(format!(
            "ttl_secs must be between 1 and {MAX_LINK_TTL_SECS}"
        )));
    }
    if state.store.document(&doc.id).await?.is_none() {
        return Err(doc.conceal(AppError::NotFound));
    }
    let link = state
        .auth
        .mint_link(doc.id.as_str(), role, ttl)
        .ok_or_else(|| {
            AppError::Conflict(if state.auth.is_open() {
                "the server is open (no COLLAB_AUTH_SECRET): anyone may open /d/{id} already"
                    .to_owned()
            } else {
                "share links are signed with COLLAB_AUTH_SECRET, which is not set".to_owned()
            })
        })?;
    tracing::info!(document = %doc.id, %role, jti = %link.jti, "share link created");
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({
            "url": format!("/d/{}#token={}", doc.id, link.token),
            "token": link.token,
            "exp": link.exp,
            "jti": link.jti,
        })),
    ))
}

fn with_content(meta: DocumentMeta, content: String, rev: u64) -> Document {
    Document {
        id: meta.id,
        title: meta.title,
        content,
        rev,
        created_at: meta.created_at,
        updated_at: meta.updated_at,
    }
}

fn parse_title(title: &str) -> Result<Title, AppError> {
    Title::parse(title).map_err(|e| AppError::InvalidTitle(e.to_string()))
}

fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, AppError> {
    match limit.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n),
        n => Err(AppError::BadRequest(format!(
            "limit must be between 1 and {max}, got {n}"
        ))),
    }
}

/// Integers on the wire are at most 2^53 − 1, in queries as in bodies.
fn check_safe(name: &str, n: u64) -> Result<(), AppError> {
    if n > collab_ot::json::MAX_SAFE_INTEGER {
        return Err(AppError::BadRequest(format!(
            "{name} must be at most 2^53 - 1 ({})",
            collab_ot::json::MAX_SAFE_INTEGER
        )));
    }
    Ok(())
}
