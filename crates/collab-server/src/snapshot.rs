//! The snapshot worker (the brief's `workers/snapshot_worker`).
//!
//! Loading a document replays its latest snapshot plus the op tail, so
//! snapshots keep loads short. Rooms report activity through a
//! [`SnapshotNotifier`]; the worker decides when a document is due (every N
//! ops or T seconds of activity), rebuilds the content from the store, checks
//! it against the live room, and writes the snapshot, off the rooms' hot path.

use tokio::sync::mpsc;

use crate::domain::DocumentId;

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
