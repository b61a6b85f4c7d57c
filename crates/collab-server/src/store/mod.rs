//! Persistence behind one small trait, so the rooms and routes do not care
//! whether documents live in SQLite (the embedded default) or PostgreSQL.
//!
//! The operation log is the source of truth: a document's content is its
//! latest snapshot plus the operations committed after it. Every write that
//! changes a document's revision goes through [`DocumentStore::append_ops`],
//! which checks the expected revision, so two writers can never interleave
//! (or through [`DocumentStore::append_rebased`], the loser's locked retry).
//! The statements both databases share live once, in `sql`.

mod postgres;
mod sql;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use collab_ot::Operation;

use crate::domain::{DocumentId, Timestamp, Title};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// A document's metadata: everything but its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentMeta {
    pub id: DocumentId,
    pub title: String,
    pub rev: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Which documents a listing shows: all of them, or those whose id is one
/// of `exact` or starts with one of `prefixes` (what a token may read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentFilter {
    All,
    Matching {
        exact: Vec<String>,
        prefixes: Vec<String>,
    },
}

/// A revoked token (`Token`, by its `jti`) or every token of a user issued
/// at or before a moment (`User`, by `sub`; `before` in Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    Token { jti: String },
    User { sub: String, before: i64 },
}

/// A document to create, at revision 0 with a snapshot of `content`.
#[derive(Debug, Clone)]
pub struct NewDocument {
    pub id: DocumentId,
    pub title: Title,
    pub content: String,
}

/// One committed operation as the log keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOp {
    /// The revision this operation produced.
    pub rev: u64,
    pub op: Operation,
    pub client_id: Option<String>,
    pub seq: Option<u64>,
    /// The token `sub` it was sent with; `None` in open mode.
    pub author: Option<String>,
    pub created_at: Timestamp,
}

/// An operation to append; `rev` must continue the log without a gap.
#[derive(Debug, Clone)]
pub struct NewOp {
    pub rev: u64,
    pub op: Operation,
    pub client_id: Option<String>,
    pub seq: Option<u64>,
    pub author: Option<String>,
}

impl From<StoredOp> for collab_ot::Committed {
    fn from(o: StoredOp) -> Self {
        Self {
            rev: o.rev,
            op: o.op,
            client_id: o.client_id,
            seq: o.seq,
            author: o.author,
        }
    }
}

impl From<collab_ot::Committed> for NewOp {
    fn from(c: collab_ot::Committed) -> Self {
        Self {
            rev: c.rev,
            op: c.op,
            client_id: c.client_id,
            seq: c.seq,
            author: c.author,
        }
    }
}

/// A document rebuilt from a snapshot at `snapshot_rev` and the log's ops
/// after it, replayed through the engine: how a room loads a document, and
/// how the snapshot worker checks what it is about to write. An op that
/// does not apply means the log or the snapshot is corrupt.
pub fn replay(
    snapshot: &str,
    snapshot_rev: u64,
    tail: impl IntoIterator<Item = StoredOp>,
    limits: collab_ot::DocumentLimits,
) -> Result<collab_ot::Document, StoreError> {
    let mut doc =
        collab_ot::Document::new(collab_ot::Rope::from_str(snapshot), snapshot_rev, limits);
    for op in tail {
        let rev = op.rev;
        doc.replay(op.into())
            .map_err(|e| StoreError::Corrupt(format!("op {rev} does not apply: {e}")))?;
    }
    Ok(doc)
}

/// What a room needs to rebuild a document: a snapshot and the tail of the
/// log after it.
#[derive(Debug, Clone)]
pub struct LoadedDocument {
    pub meta: DocumentMeta,
    pub snapshot_rev: u64,
    pub snapshot: String,
    pub tail: Vec<StoredOp>,
    /// The newest snapshot's revision (at or after `snapshot_rev`).
    pub latest_snapshot_rev: u64,
}

impl LoadedDocument {
    /// Assemble a load result, refusing a tail with gaps or one that does not
    /// end at the document's revision.
    fn checked(
        meta: DocumentMeta,
        (snapshot_rev, snapshot): (u64, String),
        tail: Vec<StoredOp>,
        latest_snapshot_rev: u64,
    ) -> Result<Self, StoreError> {
        let contiguous = tail
            .iter()
            .enumerate()
            .all(|(i, op)| op.rev == snapshot_rev + 1 + i as u64);
        let end = tail.last().map_or(snapshot_rev, |op| op.rev);
        if !contiguous || end != meta.rev {
            return Err(StoreError::Corrupt(format!(
                "document {} at rev {}: snapshot {snapshot_rev} and op tail do not reach it",
                meta.id, meta.rev
            )));
        }
        Ok(Self {
            meta,
            snapshot_rev,
            snapshot,
            tail,
            latest_snapshot_rev: latest_snapshot_rev.max(snapshot_rev),
        })
    }
}

/// A document that is due a snapshot, as [`DocumentStore::snapshot_candidates`]
/// finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotCandidate {
    pub id: DocumentId,
    /// `documents.rev` when it was read.
    pub rev: u64,
    /// The newest snapshot's revision.
    pub latest_snapshot_rev: u64,
}

/// What a snapshot at `rev` is built from: the newest snapshot at or before
/// `rev` and every op after it up to exactly `rev`, checked to be contiguous.
#[derive(Debug, Clone)]
pub struct SnapshotBase {
    /// The revision the snapshot is for.
    pub rev: u64,
    /// `documents.rev` when the base was read (at least `rev`).
    pub doc_rev: u64,
    pub snapshot_rev: u64,
    pub snapshot: String,
    /// Ops `snapshot_rev + 1 ..= rev`, in order.
    pub tail: Vec<StoredOp>,
}

impl SnapshotBase {
    /// Refuse a tail with gaps or one that does not end exactly at `rev`.
    fn checked(
        id: &DocumentId,
        rev: u64,
        doc_rev: u64,
        (snapshot_rev, snapshot): (u64, String),
        tail: Vec<StoredOp>,
    ) -> Result<Self, StoreError> {
        let contiguous = tail
            .iter()
            .enumerate()
            .all(|(i, op)| op.rev == snapshot_rev + 1 + i as u64);
        let end = tail.last().map_or(snapshot_rev, |op| op.rev);
        if !contiguous || end != rev {
            return Err(StoreError::Corrupt(format!(
                "document {id}: snapshot {snapshot_rev} and op tail do not reach rev {rev}"
            )));
        }
        Ok(Self {
            rev,
            doc_rev,
            snapshot_rev,
            snapshot,
            tail,
        })
    }
}

/// Turns a [`SnapshotBase`] into the content to store, or `None` to write
/// nothing (the content did not check out).
pub type SnapshotBuilder<'a> = &'a mut (dyn FnMut(SnapshotBase) -> Option<String> + Send);

/// Given the ops another writer committed after the caller's revision
/// (oldest first), returns the caller's ops rebased to follow them, or `None`
/// to write nothing. See [`DocumentStore::append_rebased`].
pub type Rebaser<'a> = Box<dyn FnOnce(Vec<StoredOp>) -> Option<Vec<NewOp>> + Send + 'a>;

/// What [`DocumentStore::snapshot_with`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// A new snapshot at `rev` was stored.
    Written { rev: u64 },
    /// A snapshot at or after the requested revision exists already.
    UpToDate { latest: u64 },
    /// Another worker is snapshotting this document right now (PostgreSQL).
    Busy,
    /// The builder returned `None`; nothing was written.
    Declined,
    /// There is no such document (any more).
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("document not found")]
    NotFound,
    /// A uniqueness rule was hit: a taken id, a revision someone else already
    /// wrote, or a `(client_id, seq)` committed before.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached (closed pool, timeout, I/O).
    #[error("store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Data in the database that this code would never have written.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url {0:?}: use sqlite:// or postgres://")]
    UnsupportedUrl(String),
    /// Settings that cannot work together, found at start.
    #[error("{0}")]
    Config(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolClosed
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(e),
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.message().to_owned())
            }
            // Every foreign key points at `documents`: the document is gone.
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
            _ => StoreError::Database(e),
        }
    }
}

#[async_trait]
pub trait DocumentStore: Send + Sync + 'static {
    /// Short name of the backend, for `/health` and logs.
    fn backend(&self) -> &'static str;

    /// Run the embedded migrations; idempotent.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// A real round trip to the database.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Close every connection; later calls fail with `Unavailable`.
    async fn close(&self);

    /// Create a document at revision 0 with a snapshot of its initial content.
    /// `Conflict` when the id is taken.
    async fn create_document(&self, new: NewDocument) -> Result<DocumentMeta, StoreError>;

    async fn document(&self, id: &DocumentId) -> Result<Option<DocumentMeta>, StoreError>;

    /// A page of the documents `filter` lets through, newest `updated_at`
    /// first, and how many it lets through in all.
    async fn list_documents(
        &self,
        filter: &DocumentFilter,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DocumentMeta>, u64), StoreError>;

    /// The author of the latest op committed under `client_id` with a
    /// token (`None`: no such op, or only ops made in open mode).
    async fn client_owner(
        &self,
        id: &DocumentId,
        client_id: &str,
    ) -> Result<Option<String>, StoreError>;

    /// Stores a revocation; its position in the table's order.
    async fn add_revocation(&self, revocation: &Revocation) -> Result<u64, StoreError>;

    /// Revocations stored after position `after` (0: all), oldest first,
    /// at most `limit`, each with its position.
    async fn revocations_since(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Revocation)>, StoreError>;

    /// Set the title (bumps `updated_at`); `None` when there is no such document.
    async fn rename_document(
        &self,
        id: &DocumentId,
        title: &Title,
    ) -> Result<Option<DocumentMeta>, StoreError>;

    /// Delete a document with its log and snapshots; false when there was none.
    async fn delete_document(&self, id: &DocumentId) -> Result<bool, StoreError>;

    /// The newest snapshot at least `history` revisions old (or the initial
    /// one) and the op tail after it, read consistently. Replaying the tail
    /// gives the current content *and* the last `history` ops, so a reloaded
    /// room can still transform late edits and resume clients.
    async fn load(
        &self,
        id: &DocumentId,
        history: u64,
    ) -> Result<Option<LoadedDocument>, StoreError>;

    /// Append ops in one transaction and move `documents.rev` to the last one.
    ///
    /// The first op must have `rev == documents.rev + 1` and the rest follow
    /// without gaps: anything else is a `Conflict` (someone else wrote), as is
    /// a `(client_id, seq)` that was committed before. `NotFound` when the
    /// document is gone. Nothing is written unless everything is.
    async fn append_ops(&self, id: &DocumentId, ops: &[NewOp]) -> Result<(), StoreError>;

    /// The way out of a lost [`append_ops`](Self::append_ops) race: holding
    /// the document's write lock, read every op committed after `since`,
    /// let `rebase` transform the caller's ops past them, and append what it
    /// returns, all in one transaction. Nobody can write in between, so this
    /// cannot lose again: a writer that keeps losing optimistic races still
    /// gets through in one more round trip, however busy the document is.
    ///
    /// `rebase` runs at most once, while the lock is held, so it must be
    /// quick and must not touch the store. Returns `false` when it declined
    /// (nothing written). `NotFound` when the document is gone.
    ///
    /// The default reads and then appends without a lock, which is right
    /// for a store with one writer (SQLite serves one instance).
    async fn append_rebased(
        &self,
        id: &DocumentId,
        since: u64,
        rebase: Rebaser<'_>,
    ) -> Result<bool, StoreError> {
        let mut missing: Vec<StoredOp> = Vec::new();
        loop {
            let from = since + missing.len() as u64;
            let page = self.ops_since(id, from, 1000).await?;
            if page.is_empty() {
                break;
            }
            missing.extend(page);
        }
        if self.document(id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        let Some(ops) = rebase(missing) else {
            return Ok(false);
        };
        self.append_ops(id, &ops).await?;
        Ok(true)
    }

    /// Committed ops producing revisions `since+1 ..`, oldest first, at most `limit`.
    async fn ops_since(
        &self,
        id: &DocumentId,
        since: u64,
        limit: u32,
    ) -> Result<Vec<StoredOp>, StoreError>;

    /// The revision at which `(client_id, seq)` was committed, if it was.
    async fn find_committed(
        &self,
        id: &DocumentId,
        client_id: &str,
        seq: u64,
    ) -> Result<Option<u64>, StoreError>;

    /// Store the content at `rev` (a no-op if that snapshot exists).
    async fn save_snapshot(
        &self,
        id: &DocumentId,
        rev: u64,
        content: &str,
    ) -> Result<(), StoreError>;

    /// Delete snapshots that `load(id, _)` with revision at least `rev` can
    /// no longer pick: those older than the newest one at or before `rev`.
    /// The initial snapshot (rev 0) stays, so with the log every revision
    /// remains reconstructible.
    async fn prune_snapshots(&self, id: &DocumentId, rev: u64) -> Result<(), StoreError>;

    async fn latest_snapshot_rev(&self, id: &DocumentId) -> Result<Option<u64>, StoreError>;

    /// Documents due a snapshot: `rev` at least `every_ops` past their newest
    /// snapshot, or with an op after that snapshot committed at or before
    /// `older_than` (unsnapshotted activity for a while). The furthest behind
    /// first, at most `limit`. Reads every document's newest snapshot, so it
    /// is for a periodic scan, not a hot path.
    async fn snapshot_candidates(
        &self,
        every_ops: u64,
        older_than: Timestamp,
        limit: u32,
    ) -> Result<Vec<SnapshotCandidate>, StoreError>;

    /// Snapshot `id` at revision `at` (its current revision when `None`):
    /// read the newest snapshot at or before it and the ops up to exactly
    /// it, hand them to `build`, store what it returns with
    /// [`save_snapshot`](Self::save_snapshot)'s semantics, then prune what a
    /// room with a `keep_history`-op window can no longer pick (the rules of
    /// [`prune_snapshots`](Self::prune_snapshots)).
    ///
    /// Nothing is built when a snapshot at or after the revision exists.
    /// On PostgreSQL the whole step holds a transaction-scoped advisory lock
    /// on the document, so concurrent workers never snapshot the same
    /// document at once (the loser gets [`SnapshotOutcome::Busy`]). SQLite has
    /// one writer per file; racing processes at worst build the same
    /// snapshot twice and the second insert is a no-op.
    ///
    /// `Corrupt` when `at` is past `documents.rev` or the log does not reach it.
    async fn snapshot_with(
        &self,
        id: &DocumentId,
        at: Option<u64>,
        keep_history: u64,
        build: SnapshotBuilder<'_>,
    ) -> Result<SnapshotOutcome, StoreError>;
}

/// Open the store that `url` names (`sqlite:` or `postgres:`/`postgresql:`),
/// creating the database when it does not exist yet. Does not migrate.
pub async fn open_store(url: &str) -> Result<Arc<dyn DocumentStore>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PostgresStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

// Both databases store integers as signed 64-bit; these conversions are where
// a negative or oversized value would surface as corruption, not a panic.

fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{n} does not fit in a BIGINT")))
}

fn to_u64(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative value {n}")))
}

fn parse_id(s: String) -> Result<DocumentId, StoreError> {
    DocumentId::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("bad document id {s:?}")))
}

fn parse_op(json: &str) -> Result<Operation, StoreError> {
    Operation::from_json(json).map_err(|e| StoreError::Corrupt(format!("bad stored op: {e}")))
}

/// Check that `ops` continue a log at `current` without gaps.
fn check_contiguous(current: u64, ops: &[NewOp]) -> Result<(), StoreError> {
    for (i, op) in ops.iter().enumerate() {
        let expected = current + 1 + i as u64;
        if op.rev != expected {
            return Err(StoreError::Conflict(format!(
                "expected rev {expected}, got {}",
                op.rev
            )));
        }
    }
    Ok(())
}

/// The revision a snapshot is for: `at`, or the document's current one.
fn snapshot_target(id: &DocumentId, at: Option<u64>, doc_rev: u64) -> Result<u64, StoreError> {
    match at {
        Some(rev) if rev > doc_rev => Err(StoreError::Corrupt(format!(
            "document {id}: snapshot requested at rev {rev}, but the log ends at {doc_rev}"
        ))),
        Some(rev) => Ok(rev),
        None => Ok(doc_rev),
    }
}

/// A row of `snapshot_candidates` as both backends read it.
type CandidateRow = (String, i64, i64);

fn candidate_from_row((id, rev, latest): CandidateRow) -> Result<SnapshotCandidate, StoreError> {
    Ok(SnapshotCandidate {
        id: parse_id(id)?,
        rev: to_u64(rev)?,
        latest_snapshot_rev: to_u64(latest)?,
    })
}

/// A row of `documents` as both backends read it.
type MetaRow = (String, String, i64, i64, i64);

fn meta_from_row((id, title, rev, created, updated): MetaRow) -> Result<DocumentMeta, StoreError> {
    Ok(DocumentMeta {
        id: parse_id(id)?,
        title,
        rev: to_u64(rev)?,
        created_at: Timestamp::from_millis(created),
        updated_at: Timestamp::from_millis(updated),
    })
}

/// A row of `operations` as both backends read it.
type OpRow = (
    i64,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    i64,
);

fn op_from_row((rev, op, client_id, seq, author, created): OpRow) -> Result<StoredOp, StoreError> {
    Ok(StoredOp {
        rev: to_u64(rev)?,
        op: parse_op(&op)?,
        client_id,
        seq: seq.map(to_u64).transpose()?,
        author,
        created_at: Timestamp::from_millis(created),
    })
}
