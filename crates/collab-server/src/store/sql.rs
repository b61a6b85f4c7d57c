//! The SQL that SQLite and PostgreSQL share, written once.
//!
//! The schema is the same in both dialects and both accept `$N`
//! placeholders, so most statements are identical; [`Dialect`] holds them as
//! provided methods, generic over the sqlx database. The backends keep only
//! what really differs: how they open and migrate, how appends are
//! serialised (one writer task on SQLite, row locks on PostgreSQL), and the
//! snapshot worker's locking.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::{
    candidate_from_row, meta_from_row, op_from_row, snapshot_target, to_i64, to_u64, CandidateRow,
    DocumentFilter, DocumentMeta, LoadedDocument, MetaRow, NewDocument, OpRow, Revocation,
    SnapshotBase, SnapshotCandidate, SnapshotOutcome, StoreError, StoredOp,
};
use crate::domain::{DocumentId, Timestamp, Title};

const META_COLUMNS: &str = "id, title, rev, created_at, updated_at";
/// A row of `revocations`: id, jti, sub, revoked_at.
pub(super) type RevocationRow = (i64, Option<String>, Option<String>, i64);

const OP_COLUMNS: &str = "rev, op, client_id, seq, author, created_at";

/// A database that can run the shared statements: the bounds say which Rust
/// types it binds and which rows it decodes.
pub(super) trait Dialect: Database + Sized
where
    for<'c> &'c mut <Self as Database>::Connection: Executor<'c, Database = Self>,
    for<'q> <Self as Database>::Arguments<'q>: IntoArguments<'q, Self>,
    for<'q> &'q str: Encode<'q, Self> + Type<Self>,
    for<'q> Option<&'q str>: Encode<'q, Self> + Type<Self>,
    for<'q> i64: Encode<'q, Self> + Type<Self>,
    for<'q> Option<i64>: Encode<'q, Self> + Type<Self>,
    for<'r> MetaRow: FromRow<'r, <Self as Database>::Row>,
    for<'r> OpRow: FromRow<'r, <Self as Database>::Row>,
    for<'r> CandidateRow: FromRow<'r, <Self as Database>::Row>,
    for<'r> (i64,): FromRow<'r, <Self as Database>::Row>,
    for<'r> (Option<i64>,): FromRow<'r, <Self as Database>::Row>,
    for<'r> (i64, String): FromRow<'r, <Self as Database>::Row>,
    for<'r> RevocationRow: FromRow<'r, <Self as Database>::Row>,
    for<'r> (String,): FromRow<'r, <Self as Database>::Row>,
{
    /// The statement that makes a transaction's reads agree with each other,
    /// if its default isolation does not already.
    const CONSISTENT_READ: Option<&'static str>;

    /// `QueryResult` is the driver's own type, without a common trait.
    fn rows_affected(done: &<Self as Database>::QueryResult) -> u64;

    async fn begin_consistent_read(
        pool: &Pool<Self>,
    ) -> Result<sqlx::Transaction<'static, Self>, StoreError> {
        let mut tx = pool.begin().await?;
        if let Some(statement) = Self::CONSISTENT_READ {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    async fn ping(pool: &Pool<Self>) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(pool).await?;
        Ok(())
    }

    async fn create_document(
        pool: &Pool<Self>,
        new: NewDocument,
    ) -> Result<DocumentMeta, StoreError> {
        let now = Timestamp::now();
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO documents (id, title, rev, created_at, updated_at) VALUES ($1, $2, 0, $3, $4)",
        )
        .bind(new.id.as_str())
        .bind(new.title.as_str())
        .bind(now.as_millis())
        .bind(now.as_millis())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO snapshots (document_id, rev, content, created_at) VALUES ($1, 0, $2, $3)",
        )
        .bind(new.id.as_str())
        .bind(new.content.as_str())
        .bind(now.as_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(DocumentMeta {
            id: new.id,
            title: new.title.as_str().to_owned(),
            rev: 0,
            created_at: now,
            updated_at: now,
        })
    }

    async fn document(
        pool: &Pool<Self>,
        id: &DocumentId,
    ) -> Result<Option<DocumentMeta>, StoreError> {
        let row: Option<MetaRow> = sqlx::query_as(&format!(
            "SELECT {META_COLUMNS} FROM documents WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(pool)
        .await?;
        row.map(meta_from_row).transpose()
    }

    async fn list_documents(
        pool: &Pool<Self>,
        filter: &DocumentFilter,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DocumentMeta>, u64), StoreError> {
        let (condition, binds) = filter_sql(filter, 3);
        if condition == "FALSE" {
            return Ok((Vec::new(), 0));
        }
        // One transaction, so the page and the total agree.
        let mut tx = Self::begin_consistent_read(pool).await?;
        let select = format!(
            "SELECT {META_COLUMNS} FROM documents WHERE {condition} \
             ORDER BY updated_at DESC, id ASC LIMIT $1 OFFSET $2"
        );
        let mut page = sqlx::query_as::<_, MetaRow>(&select)
            .bind(i64::from(limit))
            .bind(to_i64(offset)?);
        for b in &binds {
            page = page.bind(b.as_str());
        }
        let rows = page.fetch_all(&mut *tx).await?;
        // The count's placeholders start at $1.
        let (condition, _) = filter_sql(filter, 1);
        let count = format!("SELECT COUNT(*) FROM documents WHERE {condition}");
        let mut total = sqlx::query_as::<_, (i64,)>(&count);
        for b in &binds {
            total = total.bind(b.as_str());
        }
        let (total,) = total.fetch_one(&mut *tx).await?;
        tx.commit().await?;
        let items = rows
            .into_iter()
            .map(meta_from_row)
            .collect::<Result<_, _>>()?;
        Ok((items, to_u64(total)?))
    }

    async fn client_owner(
        pool: &Pool<Self>,
        id: &DocumentId,
        client_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT author FROM operations \
             WHERE document_id = $1 AND client_id = $2 AND author IS NOT NULL \
             ORDER BY rev DESC LIMIT 1",
        )
        .bind(id.as_str())
        .bind(client_id)
        .fetch_optional(pool)
        .await?;
        Ok(row.map(|(author,)| author))
    }

    async fn add_revocation(pool: &Pool<Self>, revocation: &Revocation) -> Result<u64, StoreError> {
        let (jti, sub, at) = match revocation {
            Revocation::Token { jti } => (
                Some(jti.as_str()),
                None,
                Timestamp::now().as_millis() / 1000,
            ),
            Revocation::User { sub, before } => (None, Some(sub.as_str()), *before),
        };
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO revocations (jti, sub, revoked_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(jti)
        .bind(sub)
        .bind(at)
        .fetch_one(pool)
        .await?;
        to_u64(id)
    }

    async fn revocations_since(
        pool: &Pool<Self>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Revocation)>, StoreError> {
        let rows: Vec<RevocationRow> = sqlx::query_as(
            "SELECT id, jti, sub, revoked_at FROM revocations WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(to_i64(after)?)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
        rows.into_iter()
            .map(|(id, jti, sub, at)| {
                let revocation = match (jti, sub) {
                    (Some(jti), None) => Revocation::Token { jti },
                    (None, Some(sub)) => Revocation::User { sub, before: at },
                    _ => {
                        return Err(StoreError::Corrupt(format!(
                            "revocation {id} names neither a token nor a user"
                        )))
                    }
                };
                Ok((to_u64(id)?, revocation))
            })
            .collect()
    }

    async fn rename_document(
        pool: &Pool<Self>,
        id: &DocumentId,
        title: &Title,
    ) -> Result<Option<DocumentMeta>, StoreError> {
        let row: Option<MetaRow> = sqlx::query_as(&format!(
            "UPDATE documents SET title = $1, updated_at = $2 WHERE id = $3 RETURNING {META_COLUMNS}"
        ))
        .bind(title.as_str())
        .bind(Timestamp::now().as_millis())
        .bind(id.as_str())
        .fetch_optional(pool)
        .await?;
        row.map(meta_from_row).transpose()
    }

    async fn delete_document(pool: &Pool<Self>, id: &DocumentId) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM documents WHERE id = $1")
            .bind(id.as_str())
            .execute(pool)
            .await?;
        Ok(Self::rows_affected(&done) > 0)
    }

    async fn load(
        pool: &Pool<Self>,
        id: &DocumentId,
        history: u64,
    ) -> Result<Option<LoadedDocument>, StoreError> {
        let mut tx = Self::begin_consistent_read(pool).await?;
        let meta: Option<MetaRow> = sqlx::query_as(&format!(
            "SELECT {META_COLUMNS} FROM documents WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(meta) = meta.map(meta_from_row).transpose()? else {
            return Ok(None);
        };
        let base = meta.rev.saturating_sub(history);
        let (snapshot_rev, snapshot) = Self::snapshot_at_or_before(&mut tx, id, base).await?;
        let latest = Self::latest_snapshot_rev(&mut tx, id).await?;
        let tail = Self::ops_between(&mut tx, id, snapshot_rev, None).await?;
        tx.commit().await?;
        let latest = latest.unwrap_or(snapshot_rev);
        LoadedDocument::checked(meta, (snapshot_rev, snapshot), tail, latest).map(Some)
    }

    /// Moves `documents.rev` from `current` to `last`: `Conflict` when it is
    /// not at `current` (another writer got there first), `NotFound` when
    /// the document is gone.
    async fn advance(
        conn: &mut <Self as Database>::Connection,
        id: &DocumentId,
        current: i64,
        last: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let moved = sqlx::query(
            "UPDATE documents SET rev = $1, updated_at = $2 WHERE id = $3 AND rev = $4",
        )
        .bind(last)
        .bind(now)
        .bind(id.as_str())
        .bind(current)
        .execute(&mut *conn)
        .await?;
        if Self::rows_affected(&moved) > 0 {
            return Ok(());
        }
        let exists: Option<(i64,)> = sqlx::query_as("SELECT rev FROM documents WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        Err(match exists {
            None => StoreError::NotFound,
            Some((rev,)) => {
                StoreError::Conflict(format!("document {id} is at rev {rev}, not {current}"))
            }
        })
    }

    /// One row of the op log; the caller has moved `documents.rev`.
    async fn insert_op(
        conn: &mut <Self as Database>::Connection,
        id: &DocumentId,
        op: &EncodedOp,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO operations (document_id, rev, op, client_id, seq, author, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.as_str())
        .bind(op.rev)
        .bind(op.op.as_str())
        .bind(op.client_id.as_deref())
        .bind(op.seq)
        .bind(op.author.as_deref())
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn ops_since(
        pool: &Pool<Self>,
        id: &DocumentId,
        since: u64,
        limit: u32,
    ) -> Result<Vec<StoredOp>, StoreError> {
        let rows: Vec<OpRow> = sqlx::query_as(&format!(
            "SELECT {OP_COLUMNS} FROM operations WHERE document_id = $1 AND rev > $2 \
             ORDER BY rev LIMIT $3"
        ))
        .bind(id.as_str())
        .bind(to_i64(since)?)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
        rows.into_iter().map(op_from_row).collect()
    }

    /// The ops after `after`, up to and including `until` (all when `None`).
    async fn ops_between(
        conn: &mut <Self as Database>::Connection,
        id: &DocumentId,
        after: u64,
        until: Option<u64>,
    ) -> Result<Vec<StoredOp>, StoreError> {
        let until = until.map(to_i64).transpose()?.unwrap_or(i64::MAX);
        let rows: Vec<OpRow> = sqlx::query_as(&format!(
            "SELECT {OP_COLUMNS} FROM operations WHERE document_id = $1 AND rev > $2 AND rev <= $3 \
             ORDER BY rev"
        ))
        .bind(id.as_str())
        .bind(to_i64(after)?)
        .bind(until)
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter().map(op_from_row).collect()
    }

    async fn find_committed(
        pool: &Pool<Self>,
        id: &DocumentId,
        client_id: &str,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT rev FROM operations WHERE document_id = $1 AND client_id = $2 AND seq = $3",
        )
        .bind(id.as_str())
        .bind(client_id)
        .bind(to_i64(seq)?)
        .fetch_optional(pool)
        .await?;
        row.map(|(rev,)| to_u64(rev)).transpose()
    }

    /// Stores a snapshot; `false` when one at `rev` existed already.
    async fn insert_snapshot(
        conn: &mut <Self as Database>::Connection,
        id: &DocumentId,
        rev: u64,
        content: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO snapshots (document_id, rev, content, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (document_id, rev) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(to_i64(rev)?)
        .bind(content)
        .bind(Timestamp::now().as_millis())
        .execute(&mut *conn)
        .await?;
        Ok(Self::rows_affected(&done) > 0)
    }

    /// See [`DocumentStore::prune_snapshots`](super::DocumentStore::prune_snapshots).
    async fn prune_snapshots(
        conn: &mut <Self as Database>::Connection,
        id: &DocumentId,
        rev: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM snapshots WHERE document_id = $1 AND rev > 0 AND rev < \
             (SELECT MAX(rev) FROM snapshots WHERE document_id = $1 AND rev <= $2)",
        )
        .bind(id.as_str())
        .bind(to_i64(rev)?)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn latest_snapshot_rev(
        conn: &mut <Self as Database>::Connection,
        id: &DocumentId,
    ) -> Result<Option<u64>, StoreError> {
        let (rev,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(rev) FROM snapshots WHERE document_id = $1")
                .bind(id.as_str())
                .fetch_one(&mut *conn)
                .await?;
        rev.map(to_u64).transpose()
    }

    /// The newest snapshot at or before `rev`; every document has the one
    /// at 0, so none is corruption.
    async fn snapshot_at_or_before(
        conn: &mut <Self as Database>::Connection,
        id: &DocumentId,
        rev: u64,
    ) -> Result<(u64, String), StoreError> {
        let snapshot: Option<(i64, String)> = sqlx::query_as(
            "SELECT rev, content FROM snapshots WHERE document_id = $1 AND rev <= $2 \
             ORDER BY rev DESC LIMIT 1",
        )
        .bind(id.as_str())
        .bind(to_i64(rev)?)
        .fetch_optional(&mut *conn)
        .await?;
        let (rev, content) = snapshot
            .ok_or_else(|| StoreError::Corrupt(format!("document {id} has no snapshot")))?;
        Ok((to_u64(rev)?, content))
    }

    async fn snapshot_candidates(
        pool: &Pool<Self>,
        every_ops: u64,
        older_than: Timestamp,
        limit: u32,
    ) -> Result<Vec<SnapshotCandidate>, StoreError> {
        let rows: Vec<CandidateRow> = sqlx::query_as(
            "SELECT d.id, d.rev, s.latest FROM documents d \
             JOIN (SELECT document_id, MAX(rev) AS latest FROM snapshots GROUP BY document_id) s \
               ON s.document_id = d.id \
             WHERE d.rev > s.latest AND (d.rev - s.latest >= $1 OR EXISTS ( \
               SELECT 1 FROM operations o \
               WHERE o.document_id = d.id AND o.rev = s.latest + 1 AND o.created_at <= $2)) \
             ORDER BY d.rev - s.latest DESC, d.id LIMIT $3",
        )
        .bind(to_i64(every_ops)?)
        .bind(older_than.as_millis())
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
        rows.into_iter().map(candidate_from_row).collect()
    }

    /// The first half of `snapshot_with`, for a document at `doc_rev`: the
    /// revision to snapshot and what to build it from, or the outcome when
    /// there is nothing to build.
    async fn snapshot_base(
        conn: &mut <Self as Database>::Connection,
        id: &DocumentId,
        at: Option<u64>,
        doc_rev: u64,
    ) -> Result<Result<(u64, SnapshotBase), SnapshotOutcome>, StoreError> {
        let rev = snapshot_target(id, at, doc_rev)?;
        if let Some(latest) = Self::latest_snapshot_rev(&mut *conn, id).await? {
            if latest >= rev {
                return Ok(Err(SnapshotOutcome::UpToDate { latest }));
            }
        }
        let snapshot = Self::snapshot_at_or_before(conn, id, rev).await?;
        let tail = Self::ops_between(conn, id, snapshot.0, Some(rev)).await?;
        let base = SnapshotBase::checked(id, rev, doc_rev, snapshot, tail)?;
        Ok(Ok((rev, base)))
    }

    /// The second half: store the built content and prune what a room
    /// keeping `keep_history` ops can no longer pick.
    async fn write_snapshot(
        conn: &mut <Self as Database>::Connection,
        id: &DocumentId,
        rev: u64,
        content: &str,
        keep_history: u64,
    ) -> Result<SnapshotOutcome, StoreError> {
        let inserted = match Self::insert_snapshot(&mut *conn, id, rev, content).await {
            Ok(inserted) => inserted,
            // The foreign key: the document was deleted meanwhile.
            Err(StoreError::NotFound) => return Ok(SnapshotOutcome::NotFound),
            Err(e) => return Err(e),
        };
        Self::prune_snapshots(&mut *conn, id, rev.saturating_sub(keep_history)).await?;
        Ok(if inserted {
            SnapshotOutcome::Written { rev }
        } else {
            SnapshotOutcome::UpToDate { latest: rev }
        })
    }
}

/// An op ready to bind: encoded and range-checked on the caller's task.
#[derive(Debug)]
pub(super) struct EncodedOp {
    pub rev: i64,
    pub op: String,
    pub client_id: Option<String>,
    pub seq: Option<i64>,
    pub author: Option<String>,
}

impl EncodedOp {
    pub fn new(op: &super::NewOp) -> Result<Self, StoreError> {
        Ok(Self {
            rev: to_i64(op.rev)?,
            op: op.op.to_json(),
            client_id: op.client_id.clone(),
            seq: op.seq.map(to_i64).transpose()?,
            author: op.author.clone(),
        })
    }
}

/// The `WHERE` condition for `filter`, with placeholders numbered from
/// `first`, and the values to bind to them in order. A prefix is compared
/// with `substr` rather than `LIKE`, so `_` in ids needs no escaping.
fn filter_sql(filter: &DocumentFilter, first: usize) -> (String, Vec<String>) {
    let DocumentFilter::Matching { exact, prefixes } = filter else {
        return ("TRUE".to_owned(), Vec::new());
    };
    let mut terms = Vec::new();
    let mut binds = Vec::new();
    let mut n = first;
    if !exact.is_empty() {
        let list: Vec<String> = exact
            .iter()
            .map(|id| {
                binds.push(id.clone());
                n += 1;
                format!("${}", n - 1)
            })
            .collect();
        terms.push(format!("id IN ({})", list.join(", ")));
    }
    for prefix in prefixes {
        binds.push(prefix.clone());
        terms.push(format!("substr(id, 1, {}) = ${n}", prefix.chars().count()));
        n += 1;
    }
    if terms.is_empty() {
        return ("FALSE".to_owned(), binds);
    }
    (format!("({})", terms.join(" OR ")), binds)
}

impl Dialect for sqlx::Sqlite {
    // A WAL read transaction already sees one consistent snapshot.
    const CONSISTENT_READ: Option<&'static str> = None;

    fn rows_affected(done: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        done.rows_affected()
    }
}

impl Dialect for sqlx::Postgres {
    // READ COMMITTED would give every statement its own snapshot.
    const CONSISTENT_READ: Option<&'static str> =
        Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY");

    fn rows_affected(done: &sqlx::postgres::PgQueryResult) -> u64 {
        done.rows_affected()
    }
}
