//! PostgreSQL, for deployments where several processes share one database.
//!
//! Reads that must agree with each other (a page and its total, a snapshot
//! and its op tail) run in REPEATABLE READ transactions, because the default
//! READ COMMITTED gives every statement its own snapshot.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::{
    candidate_from_row, check_contiguous, meta_from_row, op_from_row, snapshot_target, to_i64,
    to_u64, CandidateRow, DocumentMeta, DocumentStore, LoadedDocument, MetaRow, NewDocument, NewOp,
    OpRow, Rebaser, SnapshotBase, SnapshotBuilder, SnapshotCandidate, SnapshotOutcome, StoreError,
    StoredOp,
};
use crate::domain::{DocumentId, Timestamp, Title};

const META_COLUMNS: &str = "id, title, rev, created_at, updated_at";
const OP_COLUMNS: &str = "rev, op, client_id, seq, created_at";

/// The first key of the advisory locks that guard snapshot writers (the
/// second is a hash of the document id), so they cannot collide with
/// advisory locks taken for anything else. "snap" in ASCII.
const SNAPSHOT_LOCK_CLASS: i32 = 0x736e_6170;

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connect to the database at `url`, creating it first if it does not exist.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        if !Postgres::database_exists(url).await? {
            Postgres::create_database(url).await?;
        }
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_consistent_read(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

#[async_trait]
impl DocumentStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn create_document(&self, new: NewDocument) -> Result<DocumentMeta, StoreError> {
        let now = Timestamp::now();
        let mut tx = self.pool.begin().await?;
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
        .bind(&new.content)
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

    async fn document(&self, id: &DocumentId) -> Result<Option<DocumentMeta>, StoreError> {
        let row: Option<MetaRow> = sqlx::query_as(&format!(
            "SELECT {META_COLUMNS} FROM documents WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(meta_from_row).transpose()
    }

    async fn list_documents(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DocumentMeta>, u64), StoreError> {
        let mut tx = self.begin_consistent_read().await?;
        let rows: Vec<MetaRow> = sqlx::query_as(&format!(
            "SELECT {META_COLUMNS} FROM documents ORDER BY updated_at DESC, id ASC LIMIT $1 OFFSET $2"
        ))
        .bind(i64::from(limit))
        .bind(to_i64(offset)?)
        .fetch_all(&mut *tx)
        .await?;
        let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM documents")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        let items = rows
            .into_iter()
            .map(meta_from_row)
            .collect::<Result<_, _>>()?;
        Ok((items, to_u64(total)?))
    }

    async fn rename_document(
        &self,
        id: &DocumentId,
        title: &Title,
    ) -> Result<Option<DocumentMeta>, StoreError> {
        let row: Option<MetaRow> = sqlx::query_as(&format!(
            "UPDATE documents SET title = $1, updated_at = $2 WHERE id = $3 RETURNING {META_COLUMNS}"
        ))
        .bind(title.as_str())
        .bind(Timestamp::now().as_millis())
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(meta_from_row).transpose()
    }

    async fn delete_document(&self, id: &DocumentId) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM documents WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn load(
        &self,
        id: &DocumentId,
        history: u64,
    ) -> Result<Option<LoadedDocument>, StoreError> {
        let mut tx = self.begin_consistent_read().await?;
        let meta: Option<MetaRow> = sqlx::query_as(&format!(
            "SELECT {META_COLUMNS} FROM documents WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(meta) = meta.map(meta_from_row).transpose()? else {
            return Ok(None);
        };
        let base = to_i64(meta.rev.saturating_sub(history))?;
        let snapshot: Option<(i64, String)> = sqlx::query_as(
            "SELECT rev, content FROM snapshots WHERE document_id = $1 AND rev <= $2 \
             ORDER BY rev DESC LIMIT 1",
        )
        .bind(id.as_str())
        .bind(base)
        .fetch_optional(&mut *tx)
        .await?;
        let (latest,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(rev) FROM snapshots WHERE document_id = $1")
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await?;
        let (snapshot_rev, snapshot) = snapshot
            .ok_or_else(|| StoreError::Corrupt(format!("document {id} has no snapshot")))?;
        let tail: Vec<OpRow> = sqlx::query_as(&format!(
            "SELECT {OP_COLUMNS} FROM operations WHERE document_id = $1 AND rev > $2 ORDER BY rev"
        ))
        .bind(id.as_str())
        .bind(snapshot_rev)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let tail = tail
            .into_iter()
            .map(op_from_row)
            .collect::<Result<Vec<StoredOp>, _>>()?;
        let latest = to_u64(latest.unwrap_or(snapshot_rev))?;
        LoadedDocument::checked(meta, (to_u64(snapshot_rev)?, snapshot), tail, latest).map(Some)
    }

    async fn append_ops(&self, id: &DocumentId, ops: &[NewOp]) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (ops.first(), ops.last()) else {
            return Ok(());
        };
        let current = first.rev.saturating_sub(1);
        check_contiguous(current, ops)?;
        let now = Timestamp::now().as_millis();
        let mut tx = self.pool.begin().await?;
        // The conditional UPDATE row-locks the document, so concurrent
        // appenders serialise here and the loser sees a moved `rev`.
        let moved = sqlx::query(
            "UPDATE documents SET rev = $1, updated_at = $2 WHERE id = $3 AND rev = $4",
        )
        .bind(to_i64(last.rev)?)
        .bind(now)
        .bind(id.as_str())
        .bind(to_i64(current)?)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            let exists: Option<(i64,)> = sqlx::query_as("SELECT rev FROM documents WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            return Err(match exists {
                None => StoreError::NotFound,
                Some((rev,)) => {
                    StoreError::Conflict(format!("document {id} is at rev {rev}, not {current}"))
                }
            });
        }
        insert_ops(&mut tx, id, ops, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append_rebased(
        &self,
        id: &DocumentId,
        since: u64,
        rebase: Rebaser<'_>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The same row lock `append_ops` takes: until this transaction ends,
        // every other writer of the document waits.
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT rev FROM documents WHERE id = $1 FOR UPDATE")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some((current,)) = row else {
            return Err(StoreError::NotFound);
        };
        let current = to_u64(current)?;
        let rows: Vec<OpRow> = sqlx::query_as(&format!(
            "SELECT {OP_COLUMNS} FROM operations WHERE document_id = $1 AND rev > $2 ORDER BY rev"
        ))
        .bind(id.as_str())
        .bind(to_i64(since)?)
        .fetch_all(&mut *tx)
        .await?;
        if current < since || rows.len() as u64 != current - since {
            return Err(StoreError::Corrupt(format!(
                "document {id} is at rev {current}, but the log holds {} ops after {since}",
                rows.len()
            )));
        }
        let missing = rows
            .into_iter()
            .map(op_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let Some(ops) = rebase(missing) else {
            return Ok(false);
        };
        let Some(last) = ops.last() else {
            return Ok(true);
        };
        check_contiguous(current, &ops)?;
        let now = Timestamp::now().as_millis();
        sqlx::query("UPDATE documents SET rev = $1, updated_at = $2 WHERE id = $3")
            .bind(to_i64(last.rev)?)
            .bind(now)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        insert_ops(&mut tx, id, &ops, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn ops_since(
        &self,
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
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(op_from_row).collect()
    }

    async fn find_committed(
        &self,
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
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(rev,)| to_u64(rev)).transpose()
    }

    async fn save_snapshot(
        &self,
        id: &DocumentId,
        rev: u64,
        content: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO snapshots (document_id, rev, content, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (document_id, rev) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(to_i64(rev)?)
        .bind(content)
        .bind(Timestamp::now().as_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn prune_snapshots(&self, id: &DocumentId, rev: u64) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM snapshots WHERE document_id = $1 AND rev > 0 AND rev < \
             (SELECT MAX(rev) FROM snapshots WHERE document_id = $1 AND rev <= $2)",
        )
        .bind(id.as_str())
        .bind(to_i64(rev)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn latest_snapshot_rev(&self, id: &DocumentId) -> Result<Option<u64>, StoreError> {
        let row: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT MAX(rev) FROM snapshots WHERE document_id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        row.and_then(|(rev,)| rev).map(to_u64).transpose()
    }

    async fn snapshot_candidates(
        &self,
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
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(candidate_from_row).collect()
    }

    async fn snapshot_with(
        &self,
        id: &DocumentId,
        at: Option<u64>,
        keep_history: u64,
        build: SnapshotBuilder<'_>,
    ) -> Result<SnapshotOutcome, StoreError> {
        // One READ COMMITTED transaction under an advisory lock: workers in
        // other processes skip the document while it is held, and the lock
        // goes with the transaction, whatever happens to this task.
        let mut tx = self.pool.begin().await?;
        let (locked,): (bool,) =
            sqlx::query_as("SELECT pg_try_advisory_xact_lock($1, hashtext($2))")
                .bind(SNAPSHOT_LOCK_CLASS)
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await?;
        if !locked {
            return Ok(SnapshotOutcome::Busy);
        }
        // KEY SHARE keeps the document from being deleted under us without
        // holding up `append_ops` (its UPDATE takes NO KEY UPDATE, which does
        // not conflict). The ops up to `rev` never change once committed, so
        // the reads below agree with each other.
        let doc: Option<(i64,)> =
            sqlx::query_as("SELECT rev FROM documents WHERE id = $1 FOR KEY SHARE")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some((doc_rev,)) = doc else {
            return Ok(SnapshotOutcome::NotFound);
        };
        let doc_rev = to_u64(doc_rev)?;
        let rev = snapshot_target(id, at, doc_rev)?;
        // Read after taking the lock, so a worker that held it just before
        // is seen to have written.
        let (latest,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(rev) FROM snapshots WHERE document_id = $1")
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await?;
        if let Some(latest) = latest.map(to_u64).transpose()? {
            if latest >= rev {
                return Ok(SnapshotOutcome::UpToDate { latest });
            }
        }
        let snapshot: Option<(i64, String)> = sqlx::query_as(
            "SELECT rev, content FROM snapshots WHERE document_id = $1 AND rev <= $2 \
             ORDER BY rev DESC LIMIT 1",
        )
        .bind(id.as_str())
        .bind(to_i64(rev)?)
        .fetch_optional(&mut *tx)
        .await?;
        let (snapshot_rev, snapshot) = snapshot
            .ok_or_else(|| StoreError::Corrupt(format!("document {id} has no snapshot")))?;
        let tail: Vec<OpRow> = sqlx::query_as(&format!(
            "SELECT {OP_COLUMNS} FROM operations WHERE document_id = $1 AND rev > $2 AND rev <= $3 \
             ORDER BY rev"
        ))
        .bind(id.as_str())
        .bind(snapshot_rev)
        .bind(to_i64(rev)?)
        .fetch_all(&mut *tx)
        .await?;
        let tail = tail
            .into_iter()
            .map(op_from_row)
            .collect::<Result<Vec<StoredOp>, _>>()?;
        let base =
            SnapshotBase::checked(id, rev, doc_rev, (to_u64(snapshot_rev)?, snapshot), tail)?;
        let Some(content) = build(base) else {
            return Ok(SnapshotOutcome::Declined);
        };
        let inserted = sqlx::query(
            "INSERT INTO snapshots (document_id, rev, content, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (document_id, rev) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(to_i64(rev)?)
        .bind(&content)
        .bind(Timestamp::now().as_millis())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        sqlx::query(
            "DELETE FROM snapshots WHERE document_id = $1 AND rev > 0 AND rev < \
             (SELECT MAX(rev) FROM snapshots WHERE document_id = $1 AND rev <= $2)",
        )
        .bind(id.as_str())
        .bind(to_i64(rev.saturating_sub(keep_history))?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(if inserted {
            SnapshotOutcome::Written { rev }
        } else {
            SnapshotOutcome::UpToDate { latest: rev }
        })
    }
}

/// Inserts `ops` into the log inside `tx`; the caller has moved `documents.rev`.
async fn insert_ops(
    tx: &mut Transaction<'_, Postgres>,
    id: &DocumentId,
    ops: &[NewOp],
    now: i64,
) -> Result<(), StoreError> {
    for op in ops {
        sqlx::query(
            "INSERT INTO operations (document_id, rev, op, client_id, seq, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.as_str())
        .bind(to_i64(op.rev)?)
        .bind(op.op.to_json())
        .bind(op.client_id.as_deref())
        .bind(op.seq.map(to_i64).transpose()?)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
