//! The embedded default: one SQLite file in WAL mode.
//!
//! `synchronous = FULL` because an acknowledged op must survive a crash of
//! the machine, not only of the process; group commit keeps the fsync cost
//! per burst, not per op.
//!
//! SQLite has a single writer per file, so the rooms' appends would only
//! queue on its lock and each pay their own fsync. Instead every
//! [`append_ops`](DocumentStore::append_ops) goes to one writer task that
//! commits whatever is pending, across documents, in one transaction: each
//! request in its own savepoint (so one request's conflict undoes only that
//! request), one `COMMIT` and one fsync for the lot. Everything else uses the
//! pool directly.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Connection;
use tokio::sync::{mpsc, oneshot};

use super::sql::{Dialect, EncodedOp};
use super::{
    check_contiguous, to_i64, to_u64, DocumentFilter, DocumentMeta, DocumentStore, LoadedDocument,
    NewDocument, NewOp, Revocation, SnapshotBuilder, SnapshotCandidate, SnapshotOutcome,
    StoreError, StoredOp,
};
use crate::domain::{DocumentId, Timestamp, Title};

/// The most append requests one writer transaction takes.
const MAX_BATCH: usize = 256;
/// Append requests waiting for the writer before `append_ops` waits to send.
const QUEUE: usize = 1024;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The writer task; it ends when every clone of the store is dropped or
    /// the pool is closed.
    writer: mpsc::Sender<AppendRequest>,
    /// The size of every batch the writer took (tests only).
    #[cfg_attr(not(test), allow(dead_code))]
    batches: BatchLog,
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
        let (writer, requests) = mpsc::channel(QUEUE);
        let batches = BatchLog::default();
        tokio::spawn(run_writer(pool.clone(), requests, batches.clone()));
        Ok(Self {
            pool,
            writer,
            batches,
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// The size of every batch the writer took, recorded in tests only.
#[derive(Debug, Clone, Default)]
struct BatchLog {
    #[cfg(test)]
    sizes: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
}

impl BatchLog {
    fn record(&self, n: usize) {
        #[cfg(test)]
        self.sizes.lock().expect("batch log").push(n);
        #[cfg(not(test))]
        let _ = n;
    }
}

/// One `append_ops` call, encoded and checked for gaps by the caller.
#[derive(Debug)]
struct AppendRequest {
    id: DocumentId,
    /// The revision the document must be at.
    current: i64,
    /// The revision it moves to.
    last: i64,
    rows: Vec<EncodedOp>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The writer task: take what is queued (at least one request, at most
/// [`MAX_BATCH`]), commit it in one transaction, answer, repeat. Ends when
/// every sender is gone (the store was dropped) or the pool is closed, and
/// with it its handle on the pool; requests still queued then are dropped,
/// which their callers see as `Unavailable`.
async fn run_writer(
    pool: SqlitePool,
    mut requests: mpsc::Receiver<AppendRequest>,
    batches: BatchLog,
) {
    let closed = pool.close_event();
    tokio::pin!(closed);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            biased;
            () = &mut closed => return,
            n = requests.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return },
        }
        batches.record(batch.len());
        let results = commit_batch(&pool, &batch).await;
        for (request, result) in batch.drain(..).zip(results) {
            // The caller may have given up waiting; the outcome stands.
            let _ = request.reply.send(result);
        }
    }
}

/// Write `batch` in one transaction on one connection: each request in its
/// own savepoint, with exactly the checks and effects of a lone
/// `append_ops`; a request that fails rolls back to its savepoint and gets
/// its own error while the others go on. One result per request, and none
/// is `Ok` unless the `COMMIT` succeeded.
async fn commit_batch(pool: &SqlitePool, batch: &[AppendRequest]) -> Vec<Result<(), StoreError>> {
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => return fail_all(batch.len(), &StoreError::from(e)),
    };
    let (results, sound) = apply_batch(&mut conn, batch).await;
    if !sound {
        // The transaction may still be open, or SQLite rolled it back
        // behind sqlx's back: do not hand this connection out again.
        conn.close_on_drop();
    }
    results
}

/// The results, and whether the connection is known to be out of any
/// transaction again.
async fn apply_batch(
    conn: &mut PoolConnection<Sqlite>,
    batch: &[AppendRequest],
) -> (Vec<Result<(), StoreError>>, bool) {
    // IMMEDIATE takes the write lock at once (waiting up to the busy
    // timeout), so no statement in the batch ever has to upgrade a read
    // lock, which could fail with SQLITE_BUSY.
    let mut tx = match conn.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => return (fail_all(batch.len(), &StoreError::from(e)), false),
    };
    let mut results = Vec::with_capacity(batch.len());
    for request in batch {
        match in_savepoint(&mut tx, request).await {
            Ok(result) => results.push(result),
            Err(broken) => {
                // SQLite may have rolled back the whole transaction (it does
                // on I/O errors, a full disk, out of memory): nothing in this
                // batch can be trusted to commit.
                let _ = tx.rollback().await;
                let mut results = results;
                for result in &mut results {
                    if result.is_ok() {
                        *result = Err(copy_error(&broken));
                    }
                }
                results.resize_with(batch.len(), || Err(copy_error(&broken)));
                return (results, false);
            }
        }
    }
    if !results.iter().any(Result::is_ok) {
        // Nothing to keep: every request rolled back to its savepoint.
        let sound = tx.rollback().await.is_ok();
        return (results, sound);
    }
    match tx.commit().await {
        Ok(()) => (results, true),
        Err(e) => {
            let e = StoreError::from(e);
            // Every request in the batch gets the commit's error, including
            // those that had failed on their own: none of them is durable.
            (fail_all(batch.len(), &e), false)
        }
    }
}

/// Run one request inside a savepoint. `Ok` holds the request's own result
/// (its changes released into the transaction, or rolled back to the
/// savepoint); `Err` means the transaction itself is broken.
async fn in_savepoint(
    conn: &mut SqliteConnection,
    request: &AppendRequest,
) -> Result<Result<(), StoreError>, StoreError> {
    sqlx::query("SAVEPOINT append_ops")
        .execute(&mut *conn)
        .await?;
    let result = append_one(conn, request).await;
    if let Err(own) = &result {
        let undone = sqlx::query("ROLLBACK TO SAVEPOINT append_ops")
            .execute(&mut *conn)
            .await;
        if let Err(e) = undone {
            // The request's own error (an I/O error, a full disk) is the
            // better explanation, unless it is one of the ordinary outcomes.
            return Err(match own {
                StoreError::Conflict(_) | StoreError::NotFound => StoreError::from(e),
                own => copy_error(own),
            });
        }
    }
    sqlx::query("RELEASE SAVEPOINT append_ops")
        .execute(&mut *conn)
        .await?;
    Ok(result)
}

/// What `append_ops` did in its own transaction before the writer batched
/// them: move `documents.rev` (checking the expected revision), insert the ops.
async fn append_one(
    conn: &mut SqliteConnection,
    request: &AppendRequest,
) -> Result<(), StoreError> {
    let AppendRequest {
        id,
        current,
        last,
        rows,
        ..
    } = request;
    let now = Timestamp::now().as_millis();
    Sqlite::advance(conn, id, *current, *last, now).await?;
    for row in rows {
        Sqlite::insert_op(conn, id, row, now).await?;
    }
    Ok(())
}

fn fail_all(n: usize, e: &StoreError) -> Vec<Result<(), StoreError>> {
    (0..n).map(|_| Err(copy_error(e))).collect()
}

/// The same error again, for each request of a batch that failed as a
/// whole: same variant, so callers classify it alike (`sqlx::Error` is not
/// `Clone`, so a database error keeps its message only).
fn copy_error(e: &StoreError) -> StoreError {
    let sqlx_copy = |e: &sqlx::Error| match e {
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        other => sqlx::Error::Protocol(other.to_string()),
    };
    match e {
        StoreError::NotFound => StoreError::NotFound,
        StoreError::Conflict(s) => StoreError::Conflict(s.clone()),
        StoreError::Unavailable(e) => StoreError::Unavailable(sqlx_copy(e)),
        StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
        StoreError::Database(e) => StoreError::Database(sqlx_copy(e)),
        other => StoreError::Database(sqlx::Error::Protocol(other.to_string())),
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
        Sqlite::ping(&self.pool).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn create_document(&self, new: NewDocument) -> Result<DocumentMeta, StoreError> {
        Sqlite::create_document(&self.pool, new).await
    }

    async fn document(&self, id: &DocumentId) -> Result<Option<DocumentMeta>, StoreError> {
        Sqlite::document(&self.pool, id).await
    }

    async fn list_documents(
        &self,
        filter: &DocumentFilter,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DocumentMeta>, u64), StoreError> {
        Sqlite::list_documents(&self.pool, filter, limit, offset).await
    }

    async fn client_owner(
        &self,
        id: &DocumentId,
        client_id: &str,
    ) -> Result<Option<String>, StoreError> {
        Sqlite::client_owner(&self.pool, id, client_id).await
    }

    async fn add_revocation(&self, revocation: &Revocation) -> Result<u64, StoreError> {
        Sqlite::add_revocation(&self.pool, revocation).await
    }

    async fn revocations_since(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Revocation)>, StoreError> {
        Sqlite::revocations_since(&self.pool, after, limit).await
    }

    async fn rename_document(
        &self,
        id: &DocumentId,
        title: &Title,
    ) -> Result<Option<DocumentMeta>, StoreError> {
        Sqlite::rename_document(&self.pool, id, title).await
    }

    async fn delete_document(&self, id: &DocumentId) -> Result<bool, StoreError> {
        Sqlite::delete_document(&self.pool, id).await
    }

    async fn load(
        &self,
        id: &DocumentId,
        history: u64,
    ) -> Result<Option<LoadedDocument>, StoreError> {
        Sqlite::load(&self.pool, id, history).await
    }

    async fn append_ops(&self, id: &DocumentId, ops: &[NewOp]) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (ops.first(), ops.last()) else {
            return Ok(());
        };
        let current = first.rev.saturating_sub(1);
        check_contiguous(current, ops)?;
        // Encode here, on the caller's task, so the one writer only writes.
        let rows = ops
            .iter()
            .map(EncodedOp::new)
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            id: id.clone(),
            current: to_i64(current)?,
            last: to_i64(last.rev)?,
            rows,
            reply,
        };
        // The writer is gone only once the pool is closed; either way the
        // request was not (or may not have been) written.
        self.writer
            .send(request)
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolClosed))?;
        answer
            .await
            .unwrap_or(Err(StoreError::Unavailable(sqlx::Error::PoolClosed)))
    }

    async fn ops_since(
        &self,
        id: &DocumentId,
        since: u64,
        limit: u32,
    ) -> Result<Vec<StoredOp>, StoreError> {
        Sqlite::ops_since(&self.pool, id, since, limit).await
    }

    async fn find_committed(
        &self,
        id: &DocumentId,
        client_id: &str,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        Sqlite::find_committed(&self.pool, id, client_id, seq).await
    }

    async fn save_snapshot(
        &self,
        id: &DocumentId,
        rev: u64,
        content: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        Sqlite::insert_snapshot(&mut conn, id, rev, content).await?;
        Ok(())
    }

    async fn prune_snapshots(&self, id: &DocumentId, rev: u64) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        Sqlite::prune_snapshots(&mut conn, id, rev).await
    }

    async fn latest_snapshot_rev(&self, id: &DocumentId) -> Result<Option<u64>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Sqlite::latest_snapshot_rev(&mut conn, id).await
    }

    async fn snapshot_candidates(
        &self,
        every_ops: u64,
        older_than: Timestamp,
        limit: u32,
    ) -> Result<Vec<SnapshotCandidate>, StoreError> {
        Sqlite::snapshot_candidates(&self.pool, every_ops, older_than, limit).await
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
        let doc: Option<(i64,)> = sqlx::query_as("SELECT rev FROM documents WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some((doc_rev,)) = doc else {
            return Ok(SnapshotOutcome::NotFound);
        };
        let found = Sqlite::snapshot_base(&mut tx, id, at, to_u64(doc_rev)?).await?;
        tx.commit().await?;
        let (rev, base) = match found {
            Ok(found) => found,
            Err(outcome) => return Ok(outcome),
        };
        let Some(content) = build(base) else {
            return Ok(SnapshotOutcome::Declined);
        };
        // Writing first takes the write lock at once (see `append_ops`).
        let mut tx = self.pool.begin().await?;
        let outcome = Sqlite::write_snapshot(&mut tx, id, rev, &content, keep_history).await?;
        tx.commit().await?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use collab_ot::Operation;
    use futures_util::future::join_all;

    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        store.migrate().await.expect("migrate");
        (dir, store)
    }

    async fn create(store: &SqliteStore, n: usize) -> Vec<DocumentId> {
        let mut ids = Vec::new();
        for i in 0..n {
            let id = DocumentId::parse(&format!("doc-{i}")).expect("id");
            store
                .create_document(NewDocument {
                    id: id.clone(),
                    title: Title::parse("t").expect("title"),
                    content: String::new(),
                })
                .await
                .expect("create");
            ids.push(id);
        }
        ids
    }

    fn ops(from_rev: u64, n: u64, client: &str) -> Vec<NewOp> {
        (from_rev..from_rev + n)
            .map(|rev| NewOp {
                rev,
                op: Operation::insert(0, "x"),
                client_id: Some(client.to_owned()),
                seq: Some(rev),
                author: None,
            })
            .collect()
    }

    async fn rev(store: &SqliteStore, id: &DocumentId) -> u64 {
        store.document(id).await.expect("read").expect("exists").rev
    }

    /// Appends to many documents issued together commit in one writer
    /// transaction; a request that fails (wrong revision, a `(client_id, seq)`
    /// committed before, a missing document) rolls back only itself.
    // One thread: every append below is queued before the writer runs, so
    // they all land in one batch.
    #[tokio::test(flavor = "current_thread")]
    async fn appends_to_many_documents_commit_together_and_fail_alone() {
        let (_dir, store) = store().await;
        let ids = create(&store, 53).await;
        // Doc 51 already has rev 1 committed by client "dup" with seq 1.
        store
            .append_ops(&ids[51], &ops(1, 1, "dup"))
            .await
            .expect("first append");
        store.batches.sizes.lock().expect("log").clear();

        let good: Vec<(DocumentId, Vec<NewOp>)> = ids[..50]
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), ops(1, 1 + i as u64 % 3, "c")))
            .collect();
        let wrong_rev = ops(5, 2, "c"); // doc 50 is at rev 0, not 4
                                        // Doc 51: rev 2 and 3 continue the log, but seq 1 of "dup" is taken,
                                        // so the second insert fails after the update and the first insert.
        let mut dup_seq = ops(2, 2, "dup");
        dup_seq[1].seq = Some(1);
        let gone = DocumentId::parse("no-such-doc").expect("id");
        let gone_ops = ops(1, 1, "c");

        let mut calls: Vec<_> = good
            .iter()
            .map(|(id, ops)| Box::pin(store.append_ops(id, ops)))
            .collect();
        calls.insert(20, Box::pin(store.append_ops(&ids[50], &wrong_rev)));
        calls.insert(30, Box::pin(store.append_ops(&ids[51], &dup_seq)));
        calls.insert(40, Box::pin(store.append_ops(&gone, &gone_ops)));
        let mut results = join_all(calls).await;

        assert!(
            matches!(results.remove(40), Err(StoreError::NotFound)),
            "missing document"
        );
        let dup = results.remove(30);
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        let wrong = results.remove(20);
        assert!(matches!(wrong, Err(StoreError::Conflict(_))), "{wrong:?}");
        for (result, (id, ops)) in results.into_iter().zip(&good) {
            result.unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(rev(&store, id).await, ops.len() as u64, "{id}");
            let stored = store.ops_since(id, 0, 100).await.expect("ops");
            assert_eq!(stored.len(), ops.len(), "{id}");
        }
        assert_eq!(rev(&store, &ids[50]).await, 0);
        assert!(store
            .ops_since(&ids[50], 0, 10)
            .await
            .expect("ops")
            .is_empty());
        // The failed request left nothing behind, not even its first op.
        assert_eq!(rev(&store, &ids[51]).await, 1);
        assert_eq!(
            store.ops_since(&ids[51], 0, 10).await.expect("ops").len(),
            1
        );
        assert_eq!(rev(&store, &ids[52]).await, 0);

        assert_eq!(
            *store.batches.sizes.lock().expect("log"),
            [53],
            "all 53 appends in one writer transaction"
        );

        // The documents that moved continue from their new revision.
        store
            .append_ops(&ids[2], &ops(4, 1, "c"))
            .await
            .expect("append after the batch");
        assert_eq!(rev(&store, &ids[2]).await, 4);
    }

    /// Many concurrent appends from many tasks all land, in fewer
    /// transactions than appends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_from_many_tasks_all_commit() {
        let (_dir, store) = store().await;
        let ids = create(&store, 50).await;
        let tasks: Vec<_> = ids
            .iter()
            .cloned()
            .map(|id| {
                let store = store.clone();
                tokio::spawn(async move {
                    for rev in 1..=20 {
                        store.append_ops(&id, &ops(rev, 1, "c")).await?;
                    }
                    Ok::<_, StoreError>(())
                })
            })
            .collect();
        for task in join_all(tasks).await {
            task.expect("task").expect("appends");
        }
        for id in &ids {
            assert_eq!(rev(&store, id).await, 20, "{id}");
        }
        let batches = store.batches.sizes.lock().expect("log").clone();
        assert_eq!(batches.iter().sum::<usize>(), 1000);
        assert!(batches.len() < 1000, "no batching: {batches:?}");
    }

    /// After `close`, appends fail as `Unavailable` and the writer ends.
    #[tokio::test]
    async fn appends_after_close_are_unavailable() {
        let (_dir, store) = store().await;
        let ids = create(&store, 1).await;
        store
            .append_ops(&ids[0], &ops(1, 1, "c"))
            .await
            .expect("append");
        store.close().await;
        let after = store.append_ops(&ids[0], &ops(2, 1, "c")).await;
        assert!(
            matches!(after, Err(StoreError::Unavailable(_))),
            "{after:?}"
        );
        tokio::time::timeout(Duration::from_secs(5), store.writer.closed())
            .await
            .expect("the writer ended");
    }
}
