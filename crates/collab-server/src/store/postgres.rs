//! PostgreSQL, for deployments where several processes share one database.
//!
//! Reads that must agree with each other (a page and its total, a snapshot
//! and its op tail) run in REPEATABLE READ transactions, because the default
//! READ COMMITTED gives every statement its own snapshot. Writers of one
//! document serialise on its `documents` row.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Postgres;

use super::sql::{Dialect, EncodedOp};
use super::{
    check_contiguous, to_i64, to_u64, DocumentFilter, DocumentMeta, DocumentStore, LoadedDocument,
    NewDocument, NewOp, Rebaser, Revocation, SnapshotBuilder, SnapshotCandidate, SnapshotOutcome,
    StoreError, StoredOp,
};
use crate::domain::{DocumentId, Timestamp, Title};

/// The first key of the advisory locks that guard snapshot writers (the
/// second is a hash of the document id), so they cannot collide with
/// advisory locks taken for anything else. "snap" in ASCII.
const SNAPSHOT_LOCK_CLASS: i32 = 0x736e_6170;

/// How long a transaction of ours may sit idle before PostgreSQL ends it.
const IDLE_TX_TIMEOUT: (&str, &str) = ("idle_in_transaction_session_timeout", "10s");

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
        let mut options = PgConnectOptions::from_str(url)?;
        // A frozen instance (SIGSTOP, a paused VM, a network partition that
        // leaves its TCP connection open) could otherwise hold a document's
        // row lock mid-append for as long as TCP takes to notice, stalling
        // every other instance's writers. Our transactions never wait on
        // anything outside the database, so one idle this long is stuck, and
        // PostgreSQL ends it. An `options` parameter in the URL that sets the
        // same setting wins.
        if !options
            .get_options()
            .is_some_and(|o| o.contains(IDLE_TX_TIMEOUT.0))
        {
            options = options.options([IDLE_TX_TIMEOUT]);
        }
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
}

/// Moves the document from `current` to the last of `ops` and logs them:
/// `Conflict` unless they continue the log at `current` and the document is
/// still there. Nothing to write is fine.
async fn write_ops(
    conn: &mut PgConnection,
    id: &DocumentId,
    current: u64,
    ops: &[NewOp],
) -> Result<(), StoreError> {
    let Some(last) = ops.last() else {
        return Ok(());
    };
    check_contiguous(current, ops)?;
    let rows = ops
        .iter()
        .map(EncodedOp::new)
        .collect::<Result<Vec<_>, _>>()?;
    let now = Timestamp::now().as_millis();
    Postgres::advance(conn, id, to_i64(current)?, to_i64(last.rev)?, now).await?;
    for row in &rows {
        Postgres::insert_op(conn, id, row, now).await?;
    }
    Ok(())
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
        Postgres::ping(&self.pool).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn create_document(&self, new: NewDocument) -> Result<DocumentMeta, StoreError> {
        Postgres::create_document(&self.pool, new).await
    }

    async fn document(&self, id: &DocumentId) -> Result<Option<DocumentMeta>, StoreError> {
        Postgres::document(&self.pool, id).await
    }

    async fn list_documents(
        &self,
        filter: &DocumentFilter,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DocumentMeta>, u64), StoreError> {
        Postgres::list_documents(&self.pool, filter, limit, offset).await
    }

    async fn client_owner(
        &self,
        id: &DocumentId,
        client_id: &str,
    ) -> Result<Option<String>, StoreError> {
        Postgres::client_owner(&self.pool, id, client_id).await
    }

    async fn add_revocation(&self, revocation: &Revocation) -> Result<u64, StoreError> {
        Postgres::add_revocation(&self.pool, revocation).await
    }

    async fn revocations_since(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Revocation)>, StoreError> {
        Postgres::revocations_since(&self.pool, after, limit).await
    }

    async fn rename_document(
        &self,
        id: &DocumentId,
        title: &Title,
    ) -> Result<Option<DocumentMeta>, StoreError> {
        Postgres::rename_document(&self.pool, id, title).await
    }

    async fn delete_document(&self, id: &DocumentId) -> Result<bool, StoreError> {
        Postgres::delete_document(&self.pool, id).await
    }

    async fn load(
        &self,
        id: &DocumentId,
        history: u64,
    ) -> Result<Option<LoadedDocument>, StoreError> {
        Postgres::load(&self.pool, id, history).await
    }

    async fn append_ops(&self, id: &DocumentId, ops: &[NewOp]) -> Result<(), StoreError> {
        let Some(first) = ops.first() else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await?;
        // The conditional UPDATE row-locks the document, so concurrent
        // appenders serialise here and the loser sees a moved `rev`.
        write_ops(&mut tx, id, first.rev.saturating_sub(1), ops).await?;
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
        let missing = Postgres::ops_between(&mut tx, id, since, None).await?;
        if current < since || missing.len() as u64 != current - since {
            return Err(StoreError::Corrupt(format!(
                "document {id} is at rev {current}, but the log holds {} ops after {since}",
                missing.len()
            )));
        }
        let Some(ops) = rebase(missing) else {
            return Ok(false);
        };
        write_ops(&mut tx, id, current, &ops).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn ops_since(
        &self,
        id: &DocumentId,
        since: u64,
        limit: u32,
    ) -> Result<Vec<StoredOp>, StoreError> {
        Postgres::ops_since(&self.pool, id, since, limit).await
    }

    async fn find_committed(
        &self,
        id: &DocumentId,
        client_id: &str,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        Postgres::find_committed(&self.pool, id, client_id, seq).await
    }

    async fn save_snapshot(
        &self,
        id: &DocumentId,
        rev: u64,
        content: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        Postgres::insert_snapshot(&mut conn, id, rev, content).await?;
        Ok(())
    }

    async fn prune_snapshots(&self, id: &DocumentId, rev: u64) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        Postgres::prune_snapshots(&mut conn, id, rev).await
    }

    async fn latest_snapshot_rev(&self, id: &DocumentId) -> Result<Option<u64>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Postgres::latest_snapshot_rev(&mut conn, id).await
    }

    async fn snapshot_candidates(
        &self,
        every_ops: u64,
        older_than: Timestamp,
        limit: u32,
    ) -> Result<Vec<SnapshotCandidate>, StoreError> {
        Postgres::snapshot_candidates(&self.pool, every_ops, older_than, limit).await
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
        // not conflict). The ops up to the snapshot's revision never change
        // once committed, and the snapshots are read after taking the lock
        // (so a worker that held it just before is seen to have written): the
        // reads agree with each other.
        let doc: Option<(i64,)> =
            sqlx::query_as("SELECT rev FROM documents WHERE id = $1 FOR KEY SHARE")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some((doc_rev,)) = doc else {
            return Ok(SnapshotOutcome::NotFound);
        };
        let (rev, base) = match Postgres::snapshot_base(&mut tx, id, at, to_u64(doc_rev)?).await? {
            Ok(found) => found,
            Err(outcome) => return Ok(outcome),
        };
        let Some(content) = build(base) else {
            return Ok(SnapshotOutcome::Declined);
        };
        let outcome = Postgres::write_snapshot(&mut tx, id, rev, &content, keep_history).await?;
        tx.commit().await?;
        Ok(outcome)
    }
}
