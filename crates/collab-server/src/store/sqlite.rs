//! The embedded default: one SQLite file in WAL mode.
//!
//! `synchronous = FULL` because an acknowledged op must survive a crash of
//! the machine, not only of the process; group commit keeps the fsync cost
//! per burst, not per op.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{
    candidate_from_row, check_contiguous, meta_from_row, op_from_row, snapshot_target, to_i64,
    to_u64, CandidateRow, DocumentMeta, DocumentStore, LoadedDocument, MetaRow, NewDocument, NewOp,
    OpRow, SnapshotBase, SnapshotBuilder, SnapshotCandidate, SnapshotOutcome, StoreError, StoredOp,
};
use crate::domain::{DocumentId, Timestamp, Title};

const META_COLUMNS: &str = "id, title, rev, created_at, updated_at";
const OP_COLUMNS: &str = "rev, op, client_id, seq, created_at";

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Open (creating the file and its directory if missing) the database at `url`.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Writers queue on SQLite's single write lock instead of failing.
            .busy_timeout(Duration::from_secs(5));
        if let Some(dir) = options.get_filename().parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(e.into()))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[async_trait]
impl DocumentStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
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
            "INSERT INTO documents (id, title, rev, created_at, updated_at) VALUES (?, ?, 0, ?, ?)",
        )
        .bind(new.id.as_str())
        .bind(new.title.as_str())
        .bind(now.as_millis())
        .bind(now.as_millis())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO snapshots (document_id, rev, content, created_at) VALUES (?, 0, ?, ?)",
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
            "SELECT {META_COLUMNS} FROM documents WHERE id = ?"
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
        // One read transaction so the page and the total agree.
        let mut tx = self.pool.begin().await?;
        let rows: Vec<MetaRow> = sqlx::query_as(&format!(
            "SELECT {META_COLUMNS} FROM documents ORDER BY updated_at DESC, id ASC LIMIT ? OFFSET ?"
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
            "UPDATE documents SET title = ?, updated_at = ? WHERE id = ? RETURNING {META_COLUMNS}"
        ))
        .bind(title.as_str())
        .bind(Timestamp::now().as_millis())
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(meta_from_row).transpose()
    }

    async fn delete_document(&self, id: &DocumentId) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM documents WHERE id = ?")
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
        // In WAL mode a read transaction sees one consistent snapshot.
        let mut tx = self.pool.begin().await?;
        let meta: Option<MetaRow> = sqlx::query_as(&format!(
            "SELECT {META_COLUMNS} FROM documents WHERE id = ?"
        ))
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(meta) = meta.map(meta_from_row).transpose()? else {
            return Ok(None);
        };
        let base = to_i64(meta.rev.saturating_sub(history))?;
        let snapshot: Option<(i64, String)> = sqlx::query_as(
            "SELECT rev, content FROM snapshots WHERE document_id = ? AND rev <= ? \
             ORDER BY rev DESC LIMIT 1",
        )
        .bind(id.as_str())
        .bind(base)
        .fetch_optional(&mut *tx)
        .await?;
        let (latest,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(rev) FROM snapshots WHERE document_id = ?")
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await?;
        let (snapshot_rev, snapshot) = snapshot
            .ok_or_else(|| StoreError::Corrupt(format!("document {id} has no snapshot")))?;
        let tail: Vec<OpRow> = sqlx::query_as(&format!(
            "SELECT {OP_COLUMNS} FROM operations WHERE document_id = ? AND rev > ? ORDER BY rev"
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
        // Writing first takes SQLite's write lock at once, so this transaction
        // never has to upgrade a read lock (which could fail with SQLITE_BUSY).
        let moved =
            sqlx::query("UPDATE documents SET rev = ?, updated_at = ? WHERE id = ? AND rev = ?")
                .bind(to_i64(last.rev)?)
                .bind(now)
                .bind(id.as_str())
                .bind(to_i64(current)?)
                .execute(&mut *tx)
                .await?;
        if moved.rows_affected() == 0 {
            let exists: Option<(i64,)> = sqlx::query_as("SELECT rev FROM documents WHERE id = ?")
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
        for op in ops {
            sqlx::query(
                "INSERT INTO operations (document_id, rev, op, client_id, seq, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(id.as_str())
            .bind(to_i64(op.rev)?)
            .bind(op.op.to_json())
            .bind(op.client_id.as_deref())
            .bind(op.seq.map(to_i64).transpose()?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn ops_since(
        &self,
        id: &DocumentId,
        since: u64,
        limit: u32,
    ) -> Result<Vec<StoredOp>, StoreError> {
        let rows: Vec<OpRow> = sqlx::query_as(&format!(
            "SELECT {OP_COLUMNS} FROM operations WHERE document_id = ? AND rev > ? \
             ORDER BY rev LIMIT ?"
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
            "SELECT rev FROM operations WHERE document_id = ? AND client_id = ? AND seq = ?",
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
             VALUES (?, ?, ?, ?) ON CONFLICT (document_id, rev) DO NOTHING",
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
            "DELETE FROM snapshots WHERE document_id = ? AND rev > 0 AND rev < \
             (SELECT MAX(rev) FROM snapshots WHERE document_id = ? AND rev <= ?)",
        )
        .bind(id.as_str())
        .bind(id.as_str())
        .bind(to_i64(rev)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn latest_snapshot_rev(&self, id: &DocumentId) -> Result<Option<u64>, StoreError> {
        let row: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT MAX(rev) FROM snapshots WHERE document_id = ?")
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
             WHERE d.rev > s.latest AND (d.rev - s.latest >= ? OR EXISTS ( \
               SELECT 1 FROM operations o \
               WHERE o.document_id = d.id AND o.rev = s.latest + 1 AND o.created_at <= ?)) \
             ORDER BY d.rev - s.latest DESC, d.id LIMIT ?",
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
        // Read in one transaction (a consistent WAL snapshot), build outside
        // any transaction, then write in a short one. SQLite has a single
        // writer per file, so there is no lock to take: two processes racing
        // here build the same content and the second insert does nothing.
        let mut tx = self.pool.begin().await?;
        let doc: Option<(i64,)> = sqlx::query_as("SELECT rev FROM documents WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some((doc_rev,)) = doc else {
            return Ok(SnapshotOutcome::NotFound);
        };
        let doc_rev = to_u64(doc_rev)?;
        let rev = snapshot_target(id, at, doc_rev)?;
        let (latest,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(rev) FROM snapshots WHERE document_id = ?")
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await?;
        if let Some(latest) = latest.map(to_u64).transpose()? {
            if latest >= rev {
                return Ok(SnapshotOutcome::UpToDate { latest });
            }
        }
        let snapshot: Option<(i64, String)> = sqlx::query_as(
            "SELECT rev, content FROM snapshots WHERE document_id = ? AND rev <= ? \
             ORDER BY rev DESC LIMIT 1",
        )
        .bind(id.as_str())
        .bind(to_i64(rev)?)
        .fetch_optional(&mut *tx)
        .await?;
        let (snapshot_rev, snapshot) = snapshot
            .ok_or_else(|| StoreError::Corrupt(format!("document {id} has no snapshot")))?;
        let tail: Vec<OpRow> = sqlx::query_as(&format!(
            "SELECT {OP_COLUMNS} FROM operations WHERE document_id = ? AND rev > ? AND rev <= ? \
             ORDER BY rev"
        ))
        .bind(id.as_str())
        .bind(snapshot_rev)
        .bind(to_i64(rev)?)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let tail = tail
            .into_iter()
            .map(op_from_row)
            .collect::<Result<Vec<StoredOp>, _>>()?;
        let base =
            SnapshotBase::checked(id, rev, doc_rev, (to_u64(snapshot_rev)?, snapshot), tail)?;
        let Some(content) = build(base) else {
            return Ok(SnapshotOutcome::Declined);
        };

        // Writing first takes the write lock at once (see `append_ops`).
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO snapshots (document_id, rev, content, created_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT (document_id, rev) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(to_i64(rev)?)
        .bind(&content)
        .bind(Timestamp::now().as_millis())
        .execute(&mut *tx)
        .await;
        let inserted = match inserted {
            Ok(done) => done.rows_affected() > 0,
            // The foreign key: the document was deleted meanwhile.
            Err(e) => {
                return match StoreError::from(e) {
                    StoreError::NotFound => Ok(SnapshotOutcome::NotFound),
                    e => Err(e),
                }
            }
        };
        sqlx::query(
            "DELETE FROM snapshots WHERE document_id = ? AND rev > 0 AND rev < \
             (SELECT MAX(rev) FROM snapshots WHERE document_id = ? AND rev <= ?)",
        )
        .bind(id.as_str())
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
