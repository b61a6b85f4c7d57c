//! The storage trait's rules, on both backends, without HTTP: the op log
//! refuses gaps, rewrites and repeated `(client_id, seq)`, writes all or
//! nothing, and snapshots are kept just long enough.

#[macro_use]
mod common;

use collab_ot::Operation;
use collab_server::domain::{DocumentId, Title};
use collab_server::seed;
use collab_server::store::{
    open_store, DocumentStore, NewDocument, NewOp, PostgresStore, StoreError,
};
use collab_server::AppState;
use common::TestDb;

async fn open(db: &TestDb) -> std::sync::Arc<dyn DocumentStore> {
    let store = open_store(&db.url).await.expect("open");
    store.migrate().await.expect("migrate");
    // Migrating twice is fine (`init-db` and `serve` both do it).
    store.migrate().await.expect("migrate again");
    store
}

/// Creates the document `id` with `content`; returns its id.
async fn create(store: &dyn DocumentStore, id: &str, content: &str) -> DocumentId {
    let id = DocumentId::parse(id).unwrap();
    store
        .create_document(NewDocument {
            id: id.clone(),
            title: Title::parse("Doc").unwrap(),
            content: content.to_owned(),
        })
        .await
        .unwrap();
    id
}

fn op(rev: u64, text: &str, client: Option<(&str, u64)>) -> NewOp {
    NewOp {
        rev,
        op: Operation::insert(0, text),
        client_id: client.map(|(c, _)| c.to_owned()),
        seq: client.map(|(_, s)| s),
        author: None,
    }
}

async fn the_log_has_no_gaps_or_repeats(db: &TestDb) {
    let store = open(db).await;
    let id = create(&*store, "doc", "").await;
    let missing = DocumentId::parse("missing").unwrap();

    assert!(matches!(
        store.append_ops(&missing, &[op(1, "x", None)]).await,
        Err(StoreError::NotFound)
    ));
    // Not the next revision, or a gap inside the batch.
    for bad in [
        vec![op(2, "x", None)],
        vec![op(1, "x", None), op(3, "y", None)],
    ] {
        assert!(matches!(
            store.append_ops(&id, &bad).await,
            Err(StoreError::Conflict(_))
        ));
    }
    store
        .append_ops(&id, &[op(1, "a", Some(("c", 1))), op(2, "b", None)])
        .await
        .unwrap();
    // Rewriting a revision, or committing a (client_id, seq) twice.
    assert!(matches!(
        store.append_ops(&id, &[op(2, "z", None)]).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .append_ops(&id, &[op(3, "z", None), op(4, "w", Some(("c", 1)))])
            .await,
        Err(StoreError::Conflict(_))
    ));
    // ... and a failed batch wrote nothing.
    assert_eq!(store.document(&id).await.unwrap().unwrap().rev, 2);
    assert_eq!(store.ops_since(&id, 0, 100).await.unwrap().len(), 2);
    assert_eq!(store.find_committed(&id, "c", 1).await.unwrap(), Some(1));
    assert_eq!(store.find_committed(&id, "c", 2).await.unwrap(), None);
    assert_eq!(store.find_committed(&id, "other", 1).await.unwrap(), None);
    // Other documents have their own (client_id, seq) space.
    let two = create(&*store, "two", "").await;
    store
        .append_ops(&two, &[op(1, "q", Some(("c", 1)))])
        .await
        .unwrap();

    let loaded = store.load(&id, 0).await.unwrap().unwrap();
    assert_eq!(
        (loaded.snapshot_rev, loaded.tail.len(), loaded.meta.rev),
        (0, 2, 2)
    );
    store.close().await;
}

/// The way out of a lost race: `append_rebased` hands over what the winner
/// wrote and appends after it; on PostgreSQL, writers that all fall back
/// to it under contention never lose again.
async fn a_rebased_append_follows_the_winner(db: &TestDb) {
    let store = open(db).await;
    let id = create(&*store, "doc", "").await;
    // Another writer took revisions 1 and 2; ours, built on 0, loses.
    store
        .append_ops(&id, &[op(1, "a", Some(("w", 1))), op(2, "b", None)])
        .await
        .unwrap();
    assert!(matches!(
        store.append_ops(&id, &[op(1, "x", Some(("me", 1)))]).await,
        Err(StoreError::Conflict(_))
    ));
    let mut seen = Vec::new();
    let written = store
        .append_rebased(
            &id,
            0,
            Box::new(|missing| {
                seen = missing
                    .iter()
                    .map(|o| (o.rev, o.client_id.clone()))
                    .collect();
                Some(vec![op(3, "x", Some(("me", 1)))])
            }),
        )
        .await
        .unwrap();
    assert!(written);
    assert_eq!(seen, vec![(1, Some("w".to_owned())), (2, None)]);
    assert_eq!(store.document(&id).await.unwrap().unwrap().rev, 3);
    assert_eq!(store.find_committed(&id, "me", 1).await.unwrap(), Some(3));

    // Declining writes nothing; a rebase that does not continue the log,
    // or repeats a (client_id, seq), is refused whole.
    assert!(!store
        .append_rebased(&id, 3, Box::new(|_| None))
        .await
        .unwrap());
    for bad in [vec![op(5, "y", None)], vec![op(4, "y", Some(("me", 1)))]] {
        let refused = store.append_rebased(&id, 2, Box::new(|_| Some(bad))).await;
        assert!(
            matches!(refused, Err(StoreError::Conflict(_))),
            "{refused:?}"
        );
    }
    assert_eq!(store.ops_since(&id, 0, 100).await.unwrap().len(), 3);
    let missing = DocumentId::parse("missing").unwrap();
    assert!(matches!(
        store
            .append_rebased(&missing, 0, Box::new(|_| Some(vec![op(1, "z", None)])))
            .await,
        Err(StoreError::NotFound)
    ));

    // Several instances writing one document at once: whoever loses the
    // optimistic race falls back to the locked rebase, which always goes
    // through. (SQLite serves a single instance, so this is PostgreSQL's.)
    if store.backend() == "postgres" {
        let writers = 6;
        let each = 15;
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (store, id) = (store.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let mut known = 3;
                let mut rebased = 0;
                for seq in 1..=each {
                    let client = format!("w{w}");
                    let mine = |rev| op(rev, "z", Some((client.as_str(), seq)));
                    match store.append_ops(&id, &[mine(known + 1)]).await {
                        Ok(()) => known += 1,
                        Err(StoreError::Conflict(_)) => {
                            let mut next = known;
                            let written = store
                                .append_rebased(
                                    &id,
                                    known,
                                    Box::new(|missing| {
                                        next = known + missing.len() as u64 + 1;
                                        Some(vec![mine(next)])
                                    }),
                                )
                                .await
                                .expect("a rebased append cannot lose");
                            assert!(written);
                            known = next;
                            rebased += 1;
                        }
                        Err(e) => panic!("append: {e}"),
                    }
                }
                rebased
            }));
        }
        let mut rebased = 0;
        for t in tasks {
            rebased += t.await.unwrap();
        }
        let total = 3 + writers * each;
        assert_eq!(store.document(&id).await.unwrap().unwrap().rev, total);
        let ops = store.ops_since(&id, 0, 1000).await.unwrap();
        assert_eq!(ops.len() as u64, total);
        eprintln!(
            "{rebased} of {} appends lost the race and rebased",
            writers * each
        );
    }
    store.close().await;
}

async fn snapshots_are_pruned_but_history_stays_loadable(db: &TestDb) {
    let store = open(db).await;
    let id = create(&*store, "doc", "0").await;
    let mut content = String::from("0");
    for rev in 1..=30u64 {
        let text = (rev % 10).to_string();
        store
            .append_ops(&id, &[op(rev, &text, None)])
            .await
            .unwrap();
        content.insert_str(0, &text);
        if rev % 5 == 0 {
            store.save_snapshot(&id, rev, &content).await.unwrap();
            // As a room with a 12-op history window does.
            store
                .prune_snapshots(&id, rev.saturating_sub(12))
                .await
                .unwrap();
        }
    }
    assert_eq!(store.latest_snapshot_rev(&id).await.unwrap(), Some(30));
    // With history 12 the load must start at or before rev 18: snapshot 15.
    let loaded = store.load(&id, 12).await.unwrap().unwrap();
    assert_eq!((loaded.snapshot_rev, loaded.tail.len()), (15, 15));
    assert_eq!(loaded.latest_snapshot_rev, 30);
    let mut rebuilt = loaded.snapshot.clone();
    for stored in &loaded.tail {
        rebuilt = stored.op.apply_str(&rebuilt).unwrap();
    }
    assert_eq!(rebuilt, content);
    // Snapshots older than 15 are gone, except the initial one.
    let from_start = store.load(&id, 100).await.unwrap().unwrap();
    assert_eq!(
        (from_start.snapshot_rev, from_start.snapshot.as_str()),
        (0, "0")
    );
    let latest = store.load(&id, 0).await.unwrap().unwrap();
    assert_eq!((latest.snapshot_rev, latest.snapshot), (30, content));
    // Deleting the document takes its log and snapshots with it.
    assert!(store.delete_document(&id).await.unwrap());
    assert!(store.load(&id, 0).await.unwrap().is_none());
    assert_eq!(store.latest_snapshot_rev(&id).await.unwrap(), None);
    assert!(!store.delete_document(&id).await.unwrap());
    store.close().await;
}

async fn seeding_is_idempotent(db: &TestDb) {
    let config = common::test_config(db);
    let state = AppState::connect(&config).await.unwrap();
    let report = seed::seed(&state).await.unwrap();
    assert_eq!(report.created.len(), 3);
    assert!(report.skipped.is_empty());
    let again = seed::seed(&state).await.unwrap();
    assert!(again.created.is_empty());
    assert_eq!(again.skipped.len(), 3);
    let welcome = DocumentId::parse("welcome").unwrap();
    let doc = state.rooms.read(&welcome).await.unwrap();
    assert_eq!(
        (doc.content.as_str(), doc.rev),
        (
            "👋 Welcome friends to collab!\nEdit this document together.\n",
            3
        )
    );
    let list = state
        .rooms
        .read(&DocumentId::parse("shopping-list").unwrap())
        .await
        .unwrap();
    assert_eq!(list.content, "- oat milk\n- bread\n- apples\n");
    state.rooms.shutdown().await;
    state.store.close().await;
}

backend_tests!(
    the_log_has_no_gaps_or_repeats,
    a_rebased_append_follows_the_winner,
    snapshots_are_pruned_but_history_stays_loadable,
    seeding_is_idempotent,
);

/// Production databases are reached over TLS: `sslmode=require` in the URL
/// must give an encrypted connection (this machine's PostgreSQL has TLS on
/// with a self-signed certificate, which `require` accepts unverified).
#[tokio::test]
async fn postgres_over_tls() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    common::run_test(db, |db| async move {
        let plain = PostgresStore::open(&db.url).await.expect("open");
        let (ssl_on,): (String,) = sqlx::query_as("SHOW ssl")
            .fetch_one(plain.pool())
            .await
            .expect("SHOW ssl");
        plain.close().await;
        if ssl_on != "on" {
            eprintln!("skipping postgres_over_tls: this PostgreSQL server has ssl = {ssl_on}");
            return db;
        }
        let sep = if db.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}sslmode=require", db.url);
        let store = PostgresStore::open(&url).await.expect("open over TLS");
        let (encrypted,): (bool,) =
            sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(store.pool())
                .await
                .expect("pg_stat_ssl");
        assert!(encrypted, "sslmode=require gave a plain connection");
        // And the store works over it.
        store.migrate().await.expect("migrate");
        let id = DocumentId::parse("tls").unwrap();
        store
            .create_document(NewDocument {
                id: id.clone(),
                title: Title::parse("TLS").unwrap(),
                content: "secret".into(),
            })
            .await
            .expect("create");
        let loaded = store.load(&id, 0).await.unwrap().expect("loaded");
        assert_eq!(loaded.snapshot, "secret");
        store.close().await;
        db
    })
    .await;
}

/// A frozen instance (here: a connection that took a document's row lock in
/// an append and then went quiet, as a SIGSTOPped process would) does not
/// stall the document's other writers for long: PostgreSQL ends its idle
/// transaction (default 10 s; this test sets 1 s through the URL's
/// `options`, which also shows a user's own setting wins).
#[tokio::test]
async fn a_frozen_lock_holder_is_cut_off() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    common::run_test(db, |db| async move {
        let live = PostgresStore::open(&db.url).await.expect("open");
        live.migrate().await.expect("migrate");
        let (default,): (String,) = sqlx::query_as("SHOW idle_in_transaction_session_timeout")
            .fetch_one(live.pool())
            .await
            .unwrap();
        assert_eq!(default, "10s");
        let id = create(&live, "doc", "").await;

        let sep = if db.url.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{sep}options=-c%20idle_in_transaction_session_timeout%3D1s",
            db.url
        );
        let frozen = PostgresStore::open(&url).await.expect("open");
        let mut conn = frozen.pool().acquire().await.unwrap();
        sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
        sqlx::query("SELECT rev FROM documents WHERE id = $1 FOR UPDATE")
            .bind(id.as_str())
            .execute(&mut *conn)
            .await
            .unwrap();

        let started = std::time::Instant::now();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            live.append_ops(&id, &[op(1, "a", Some(("c", 1)))]),
        )
        .await
        .expect("the writer is still blocked by the frozen lock holder")
        .expect("append");
        let waited = started.elapsed();
        // The URL's 1 s, not the 10 s default it would have got if ours
        // overrode the user's setting.
        assert!(
            waited < std::time::Duration::from_secs(8),
            "the writer waited {waited:?}"
        );
        assert_eq!(live.document(&id).await.unwrap().unwrap().rev, 1);
        // The frozen session is gone: its next statement fails.
        assert!(sqlx::query("SELECT 1").execute(&mut *conn).await.is_err());
        drop(conn);
        frozen.close().await;
        live.close().await;
        db
    })
    .await;
}
