//! The snapshot worker.
//!
//! Loading a document replays its latest snapshot plus the op tail, so
//! snapshots keep loads short. Rooms report activity through a
//! [`SnapshotNotifier`]; the worker decides when a document is due (every N
//! ops or T seconds of activity), rebuilds the content from the store, checks
//! it against the live room, and writes the snapshot, off the rooms' hot path.
//!
//! Two modes, one loop ([`SnapshotWorker::run`]):
//!
//! * **In-process** ([`SnapshotWorker::in_process`]), the default: driven by
//!   the rooms' notices, with a store scan every `interval` as a backstop for
//!   dropped notices. Before writing it reads the room's live content
//!   ([`LiveContent`]) at revision L, rebuilds the content at exactly L from
//!   the store, and writes nothing (logging at ERROR) when the two differ:
//!   the op log stays the source of truth.
//! * **Standalone** ([`SnapshotWorker::standalone`], `collab worker`): no
//!   rooms, so every tick it asks the store which documents are due
//!   ([`DocumentStore::snapshot_candidates`]) and rebuilds them at their
//!   stored revision, checking that the replayed tail ends exactly there.
//!
//! Several workers may share a database: on PostgreSQL each document's
//! snapshot runs under an advisory lock, so they never snapshot the same
//! document at once (see [`DocumentStore::snapshot_with`]). SQLite has one
//! writer per file; racing workers at worst rebuild the same snapshot twice
//! and the second insert is a no-op.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use collab_ot::DocumentLimits;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use crate::domain::{DocumentId, Timestamp};
use crate::store::{DocumentStore, SnapshotBase, SnapshotOutcome, StoreError};

/// A document that committed ops up to `rev`.
#[derive(Debug, Clone)]
pub struct Dirty {
    pub id: DocumentId,
    pub rev: u64,
}

/// How rooms tell the worker about activity. Never blocks a room: when the
/// worker is behind, notices are dropped and its periodic scan catches up.
#[derive(Debug, Clone, Default)]
pub struct SnapshotNotifier {
    tx: Option<mpsc::Sender<Dirty>>,
}

impl SnapshotNotifier {
    pub fn new(tx: mpsc::Sender<Dirty>) -> Self {
        Self { tx: Some(tx) }
    }

    /// A notifier that tells nobody (no in-process worker).
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    pub fn notify(&self, id: &DocumentId, rev: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Dirty {
                id: id.clone(),
                rev,
            });
        }
    }
}

/// When documents are due a snapshot; built by
/// [`Config::snapshot_config`](crate::config::Config::snapshot_config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Snapshot a document once it is this many ops past its latest snapshot.
    pub every_ops: u64,
    /// Snapshot a document whose oldest unsnapshotted op is this old.
    pub interval: Duration,
    /// After writing a snapshot at R, prune the snapshots a room loading with
    /// this much history can no longer pick (those older than the newest one
    /// at or before `R - keep_history`). The room's history window.
    pub keep_history: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            every_ops: 500,
            interval: Duration::from_secs(60),
            keep_history: 1000,
        }
    }
}

/// The content of documents that are open in memory, for checking a
/// rebuilt snapshot against. Implemented by the rooms.
#[async_trait]
pub trait LiveContent: Send + Sync {
    /// The revision and content of `id` if its room is loaded now (`None`
    /// otherwise; never loads it). Every op up to that revision must already
    /// be stored when this answers.
    async fn read_loaded(&self, id: &DocumentId) -> Option<(u64, String)>;
}

/// Counters of what a worker did, readable while it runs. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SnapshotStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    mismatches: AtomicU64,
    busy: AtomicU64,
    failures: AtomicU64,
    cycles: AtomicU64,
}

impl SnapshotStats {
    /// Snapshots this worker stored.
    pub fn written(&self) -> u64 {
        self.0.written.load(Ordering::Relaxed)
    }

    /// Times the rebuilt content disagreed with the live content (or the
    /// live revision was past the log); no snapshot was written for those.
    pub fn mismatches(&self) -> u64 {
        self.0.mismatches.load(Ordering::Relaxed)
    }

    /// Documents skipped because another worker held them.
    pub fn busy(&self) -> u64 {
        self.0.busy.load(Ordering::Relaxed)
    }

    /// Snapshots that failed: store errors, or a log that does not replay.
    pub fn failures(&self) -> u64 {
        self.0.failures.load(Ordering::Relaxed)
    }

    /// Ticks handled so far.
    pub fn cycles(&self) -> u64 {
        self.0.cycles.load(Ordering::Relaxed)
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Notices queued before rooms' notices are dropped (and the scan catches up).
const NOTICE_QUEUE: usize = 4096;
/// Most documents one store scan returns; the rest wait for the next tick.
const SCAN_BATCH: u32 = 256;
/// The longest time between ticks.
const MAX_TICK: Duration = Duration::from_secs(1);

/// What the worker knows about one document with unsnapshotted activity.
#[derive(Debug)]
struct Tracked {
    /// The newest revision known to be committed.
    rev: u64,
    /// The newest snapshot's revision, once known.
    base: Option<u64>,
    /// When activity past `base` was first seen.
    since: Instant,
    /// Due regardless of `every_ops` and `since` (the store said so).
    forced: bool,
    /// After a failure or a mismatch: not before then.
    retry_at: Option<Instant>,
}

/// What one cycle did, for its log line.
#[derive(Debug, Default)]
struct Summary {
    written: u64,
    up_to_date: u64,
    busy: u64,
    mismatches: u64,
    failures: u64,
}

impl Summary {
    fn attempted(&self) -> u64 {
        self.written + self.up_to_date + self.busy + self.mismatches + self.failures
    }
}

/// The worker; see the module docs. Build it with [`Self::in_process`] or
/// [`Self::standalone`], then spawn [`Self::run`].
pub struct SnapshotWorker {
    store: Arc<dyn DocumentStore>,
    config: SnapshotConfig,
    live: Option<Arc<dyn LiveContent>>,
    /// `Some` in-process (until every notifier is gone); `None` standalone.
    notices: Option<mpsc::Receiver<Dirty>>,
    standalone: bool,
    dirty: HashMap<DocumentId, Tracked>,
    last_scan: Option<Instant>,
    stats: SnapshotStats,
}

impl SnapshotWorker {
    /// The in-process worker and the notifier the rooms report to. `live` is
    /// usually the rooms themselves, which need the notifier to be built
    /// first: pass `None` here and add them with [`Self::with_live`].
    pub fn in_process(
        store: Arc<dyn DocumentStore>,
        config: SnapshotConfig,
        live: Option<Arc<dyn LiveContent>>,
    ) -> (SnapshotNotifier, SnapshotWorker) {
        let (tx, rx) = mpsc::channel(NOTICE_QUEUE);
        let worker = Self::new(store, config, live, Some(rx));
        (SnapshotNotifier::new(tx), worker)
    }

    /// The worker of `collab worker`: no rooms; it polls the store for
    /// documents that are due.
    pub fn standalone(store: Arc<dyn DocumentStore>, config: SnapshotConfig) -> SnapshotWorker {
        Self::new(store, config, None, None)
    }

    fn new(
        store: Arc<dyn DocumentStore>,
        config: SnapshotConfig,
        live: Option<Arc<dyn LiveContent>>,
        notices: Option<mpsc::Receiver<Dirty>>,
    ) -> Self {
        let config = SnapshotConfig {
            every_ops: config.every_ops.max(1),
            interval: config.interval.max(Duration::from_millis(10)),
            ..config
        };
        Self {
            store,
            config,
            live,
            standalone: notices.is_none(),
            notices,
            dirty: HashMap::new(),
            last_scan: None,
            stats: SnapshotStats::default(),
        }
    }

    /// Check snapshots against this live content before writing them.
    pub fn with_live(mut self, live: Arc<dyn LiveContent>) -> Self {
        self.live = Some(live);
        self
    }

    /// Counters that stay readable after [`Self::run`] takes the worker.
    pub fn stats(&self) -> SnapshotStats {
        self.stats.clone()
    }

    /// How often the worker looks for due documents.
    fn tick_period(&self) -> Duration {
        (self.config.interval / 4).clamp(Duration::from_millis(10), MAX_TICK)
    }

    /// Work until `cancel` resolves, then snapshot every document that is
    /// still dirty and return. One loop: notices, ticks and cancellation
    /// never run concurrently, and a cycle is never cut short.
    pub async fn run(mut self, cancel: impl Future<Output = ()>) {
        let mut cancel = std::pin::pin!(cancel);
        let mut tick = tokio::time::interval(self.tick_period());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mode = if self.standalone {
            "standalone"
        } else {
            "in-process"
        };
        info!(
            mode,
            every_ops = self.config.every_ops,
            interval_ms = self.config.interval.as_millis() as u64,
            "snapshot worker started"
        );
        loop {
            tokio::select! {
                biased;
                () = &mut cancel => break,
                _ = tick.tick() => self.cycle().await,
                notice = next_notice(&mut self.notices) => match notice {
                    Some(dirty) => self.mark(dirty),
                    // Every notifier is gone; the scan still runs.
                    None => self.notices = None,
                },
            }
        }
        self.drain().await;
        info!(mode, "snapshot worker stopped");
    }

    /// Record that `dirty.id` committed up to `dirty.rev`.
    fn mark(&mut self, dirty: Dirty) {
        let now = Instant::now();
        match self.dirty.get_mut(&dirty.id) {
            Some(tracked) => tracked.rev = tracked.rev.max(dirty.rev),
            None => {
                self.dirty.insert(
                    dirty.id,
                    Tracked {
                        rev: dirty.rev,
                        base: None,
                        since: now,
                        forced: false,
                        retry_at: None,
                    },
                );
            }
        }
    }

    /// One tick: find the documents that are due and snapshot them.
    async fn cycle(&mut self) {
        SnapshotStats::bump(&self.stats.0.cycles);
        let started = Instant::now();
        let scan_every = if self.standalone {
            Duration::ZERO
        } else {
            self.config.interval
        };
        if self.last_scan.is_none_or(|at| at.elapsed() >= scan_every) {
            self.last_scan = Some(started);
            self.scan().await;
        }
        self.resolve_bases().await;

        let now = Instant::now();
        let mut due: Vec<(DocumentId, u64)> = Vec::new();
        self.dirty.retain(|id, t| {
            let Some(base) = t.base else { return true };
            if t.rev <= base {
                return false;
            }
            let waiting = t.retry_at.is_some_and(|at| now < at);
            let is_due = t.forced
                || t.rev - base >= self.config.every_ops
                || now.duration_since(t.since) >= self.config.interval;
            if is_due && !waiting {
                due.push((id.clone(), t.rev - base));
            }
            true
        });
        // The furthest behind first.
        due.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));

        let mut summary = Summary::default();
        for (id, _) in due {
            self.snapshot_tracked(id, &mut summary).await;
        }
        self.log_summary("snapshot cycle", &summary, started);
    }

    /// Ask the store which documents are due, and track them as due.
    async fn scan(&mut self) {
        let older_than =
            Timestamp::from_millis(Timestamp::now().as_millis().saturating_sub(
                i64::try_from(self.config.interval.as_millis()).unwrap_or(i64::MAX),
            ));
        let candidates = match self
            .store
            .snapshot_candidates(self.config.every_ops, older_than, SCAN_BATCH)
            .await
        {
            Ok(candidates) => candidates,
            Err(e) => {
                warn!(error = %e, "could not look for documents due a snapshot");
                return;
            }
        };
        let now = Instant::now();
        for c in candidates {
            let tracked = self.dirty.entry(c.id).or_insert(Tracked {
                rev: c.rev,
                base: None,
                since: now,
                forced: true,
                retry_at: None,
            });
            tracked.rev = tracked.rev.max(c.rev);
            tracked.base = Some(c.latest_snapshot_rev);
            tracked.forced = true;
        }
    }

    /// Look up the latest snapshot of documents first seen through a notice.
    async fn resolve_bases(&mut self) {
        let unknown: Vec<DocumentId> = self
            .dirty
            .iter()
            .filter(|(_, t)| t.base.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in unknown {
            match self.store.latest_snapshot_rev(&id).await {
                Ok(Some(base)) => {
                    if let Some(t) = self.dirty.get_mut(&id) {
                        t.base = Some(base);
                    }
                }
                // No snapshot at all: the document is gone.
                Ok(None) => {
                    self.dirty.remove(&id);
                }
                Err(e) => warn!(document = %id, error = %e, "could not read the latest snapshot"),
            }
        }
    }

    /// Snapshot a tracked document and update what is known about it.
    async fn snapshot_tracked(&mut self, id: DocumentId, summary: &mut Summary) {
        let outcome = self.snapshot_one(&id, summary).await;
        let now = Instant::now();
        let retry_later = now + self.config.interval;
        let Some(t) = self.dirty.get_mut(&id) else {
            return;
        };
        match outcome {
            Some(SnapshotOutcome::Written { rev })
            | Some(SnapshotOutcome::UpToDate { latest: rev }) => {
                t.base = Some(t.base.map_or(rev, |b| b.max(rev)));
                if t.rev <= rev {
                    self.dirty.remove(&id);
                } else {
                    // Newer ops arrived meanwhile: they are the next batch.
                    t.since = now;
                    t.forced = false;
                    // Up to date yet behind a notice: the live room answered
                    // an older revision than it reported. Do not spin on it.
                    let stuck = matches!(outcome, Some(SnapshotOutcome::UpToDate { .. }));
                    t.retry_at = stuck.then_some(retry_later);
                }
            }
            Some(SnapshotOutcome::NotFound) => {
                self.dirty.remove(&id);
            }
            // Another worker has it; it will be up to date next time.
            Some(SnapshotOutcome::Busy) => {}
            // A mismatch, a log that does not replay, or a store error: the
            // log is intact, so try again later rather than every tick.
            Some(SnapshotOutcome::Declined) | None => t.retry_at = Some(retry_later),
        }
    }

    /// Rebuild `id` from the store, check it against the live room when it
    /// is loaded, and write it. `None` after an error (already logged).
    async fn snapshot_one(
        &self,
        id: &DocumentId,
        summary: &mut Summary,
    ) -> Option<SnapshotOutcome> {
        let live = match &self.live {
            Some(live) => live.read_loaded(id).await,
            None => None,
        };
        let at = live.as_ref().map(|(rev, _)| *rev);
        let mut mismatch = false;
        let mut broken = false;
        let mut build = |base: SnapshotBase| -> Option<String> {
            let rebuilt = match rebuild(&base) {
                Ok(content) => content,
                Err(e) => {
                    error!(
                        document = %id,
                        rev = base.rev,
                        snapshot_rev = base.snapshot_rev,
                        error = %e,
                        "op log does not replay onto its snapshot; no snapshot written"
                    );
                    broken = true;
                    return None;
                }
            };
            if let Some((rev, content)) = &live {
                if rebuilt != *content {
                    error!(
                        document = %id,
                        rev,
                        snapshot_rev = base.snapshot_rev,
                        stored_chars = rebuilt.chars().count(),
                        live_chars = content.chars().count(),
                        "SNAPSHOT MISMATCH: snapshot plus op tail differs from the live content; \
                         no snapshot written, the op log stays the source of truth"
                    );
                    mismatch = true;
                    return None;
                }
            }
            Some(rebuilt)
        };
        let result = self
            .store
            .snapshot_with(id, at, self.config.keep_history, &mut build)
            .await;
        let counters = &self.stats.0;
        match result {
            Ok(outcome) => {
                match outcome {
                    SnapshotOutcome::Written { rev } => {
                        debug!(document = %id, rev, verified = live.is_some(), "snapshot written");
                        summary.written += 1;
                        SnapshotStats::bump(&counters.written);
                    }
                    SnapshotOutcome::UpToDate { .. } | SnapshotOutcome::NotFound => {
                        summary.up_to_date += 1;
                    }
                    SnapshotOutcome::Busy => {
                        debug!(document = %id, "another worker is snapshotting this document");
                        summary.busy += 1;
                        SnapshotStats::bump(&counters.busy);
                    }
                    SnapshotOutcome::Declined if mismatch => {
                        summary.mismatches += 1;
                        SnapshotStats::bump(&counters.mismatches);
                    }
                    SnapshotOutcome::Declined => {
                        debug_assert!(broken);
                        summary.failures += 1;
                        SnapshotStats::bump(&counters.failures);
                    }
                }
                Some(outcome)
            }
            Err(StoreError::Corrupt(reason)) if live.is_some() => {
                // The live revision is past the log, or the log has a gap.
                error!(
                    document = %id,
                    live_rev = at,
                    %reason,
                    "SNAPSHOT MISMATCH: the store cannot rebuild the live revision; \
                     no snapshot written"
                );
                summary.mismatches += 1;
                SnapshotStats::bump(&counters.mismatches);
                None
            }
            Err(e @ StoreError::Corrupt(_)) => {
                error!(document = %id, error = %e, "cannot rebuild the document; no snapshot written");
                summary.failures += 1;
                SnapshotStats::bump(&counters.failures);
                None
            }
            Err(e) => {
                warn!(document = %id, error = %e, "could not snapshot; will retry");
                summary.failures += 1;
                SnapshotStats::bump(&counters.failures);
                None
            }
        }
    }

    /// On the way out: snapshot everything still dirty, due or not.
    async fn drain(&mut self) {
        let started = Instant::now();
        if let Some(rx) = &mut self.notices {
            let mut late = Vec::new();
            while let Ok(dirty) = rx.try_recv() {
                late.push(dirty);
            }
            for dirty in late {
                self.mark(dirty);
            }
        }
        self.resolve_bases().await;
        let pending: Vec<DocumentId> = self
            .dirty
            .iter()
            .filter(|(_, t)| t.base.is_some_and(|base| t.rev > base))
            .map(|(id, _)| id.clone())
            .collect();
        let mut summary = Summary::default();
        for id in pending {
            self.snapshot_tracked(id, &mut summary).await;
        }
        self.log_summary("final snapshot cycle", &summary, started);
    }

    fn log_summary(&self, what: &str, s: &Summary, started: Instant) {
        let elapsed_ms = started.elapsed().as_millis() as u64;
        // An idle worker ticks every second; only cycles that did something
        // are worth an INFO line.
        if s.attempted() > 0 {
            info!(
                written = s.written,
                up_to_date = s.up_to_date,
                busy = s.busy,
                mismatches = s.mismatches,
                failures = s.failures,
                still_dirty = self.dirty.len(),
                elapsed_ms,
                "{what}"
            );
        } else {
            debug!(
                still_dirty = self.dirty.len(),
                elapsed_ms, "{what}: nothing due"
            );
        }
    }
}

async fn next_notice(notices: &mut Option<mpsc::Receiver<Dirty>>) -> Option<Dirty> {
    match notices {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The content at `base.rev`: the snapshot with the tail replayed through
/// the engine, exactly as a room loads it ([`crate::store::replay`]).
pub fn rebuild(base: &SnapshotBase) -> Result<String, String> {
    let limits = DocumentLimits {
        max_chars: usize::MAX,
        history: 0,
        ..DocumentLimits::default()
    };
    let doc = crate::store::replay(
        &base.snapshot,
        base.snapshot_rev,
        base.tail.iter().cloned(),
        limits,
    )
    .map_err(|e| e.to_string())?;
    if doc.rev() != base.rev {
        return Err(format!(
            "replay ended at rev {}, not {}",
            doc.rev(),
            base.rev
        ));
    }
    Ok(doc.content().to_string())
}
