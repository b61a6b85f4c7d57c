//! The task behind one open document.
//!
//! It owns the `collab_ot::Document`, takes commands one batch at a time and
//! writes each batch's new ops in one transaction (group commit) before it
//! answers any of them. If that write fails, it throws its in-memory state
//! away and reloads from the log on the next command, so memory never holds
//! an op the log does not.

use std::sync::Arc;

use collab_ot::{Committed, Document, Rope, SubmitError, Submitted};
use tokio::sync::mpsc;
use tracing::{debug, error, info_span, warn, Instrument};

use super::{Command, DocState, Reply, RoomError, Shared, Submission};
use crate::domain::DocumentId;
use crate::store::{NewOp, StoreError};

/// Most commands taken from the queue in one go. Bounds how long the first
/// submitter of a burst waits for the shared commit.
const MAX_BATCH: usize = 64;

pub(super) fn spawn(
    shared: Arc<Shared>,
    id: DocumentId,
    generation: u64,
    rx: mpsc::Receiver<Command>,
    stop_guard: mpsc::Sender<()>,
) {
    let span = info_span!("room", document = %id, generation);
    let room = Room {
        shared,
        id,
        generation,
        doc: None,
        snapshot_rev: 0,
        staged: Vec::new(),
        waiting: Vec::new(),
        gone: false,
        _stop_guard: stop_guard,
    };
    tokio::spawn(room.run(rx).instrument(span));
}

/// Why a room stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Idle,
    Shutdown,
    Deleted,
}

struct Room {
    shared: Arc<Shared>,
    id: DocumentId,
    generation: u64,
    /// `None` until loaded, and again after a failed write.
    doc: Option<Document>,
    snapshot_rev: u64,
    /// Ops applied in memory but not yet in the log, in revision order.
    staged: Vec<NewOp>,
    /// Submitters waiting for `staged` to be written, with their revisions.
    waiting: Vec<(Reply<u64>, u64)>,
    /// The document does not exist (any more).
    gone: bool,
    /// Dropped when this task ends; see [`Shared::all_stopped`].
    _stop_guard: mpsc::Sender<()>,
}

impl Room {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let exit = loop {
            let first = match tokio::time::timeout(self.shared.config.idle, rx.recv()).await {
                Ok(Some(command)) => command,
                // Every handle is gone: nobody can reach this room any more.
                Ok(None) => break Exit::Idle,
                Err(_elapsed) => break Exit::Idle,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            let mut exit = None;
            for command in batch {
                match (exit, command) {
                    (Some(exit), command) => refuse(command, exit),
                    (None, Command::Submit { submission, reply }) => {
                        self.stage(submission, reply).await;
                    }
                    (None, Command::Read { reply }) => {
                        // A read must not see ops that are not stored yet.
                        self.flush().await;
                        let _ = reply.send(self.read().await);
                    }
                    (None, Command::Deleted) => exit = Some(Exit::Deleted),
                    (None, Command::Shutdown) => exit = Some(Exit::Shutdown),
                }
            }
            self.flush().await;
            if self.gone {
                break Exit::Deleted;
            }
            if let Some(exit) = exit {
                break exit;
            }
        };

        // Leave the registry first, so new requests go to a fresh room, then
        // turn away whatever is still queued here (callers retry on `Closed`).
        self.shared.forget(&self.id, self.generation);
        rx.close();
        while let Some(command) = rx.recv().await {
            refuse(command, exit);
        }
        if exit != Exit::Deleted {
            self.snapshot(true).await;
        }
        debug!(?exit, "room stopped");
    }

    /// Run a submission through the engine; its answer waits for the flush.
    async fn stage(&mut self, submission: Submission, reply: Reply<u64>) {
        match self.apply(submission).await {
            Ok(rev) => self.waiting.push((reply, rev)),
            // A refused op changed nothing, so it can be answered right away.
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    async fn apply(&mut self, submission: Submission) -> Result<u64, RoomError> {
        self.ensure_loaded().await?;
        let Some(doc) = self.doc.as_mut() else {
            return Err(RoomError::NotFound);
        };
        let Submission {
            client_id,
            seq,
            base_rev,
            op,
        } = submission;

        // Exactly once across restarts: memory only knows what was committed
        // since this room loaded, so ask the log about a client it has not seen.
        if let (Some(client), Some(seq)) = (client_id.as_deref(), seq) {
            if !doc.knows_client(client) {
                if let Some(rev) = self
                    .shared
                    .store
                    .find_committed(&self.id, client, seq)
                    .await?
                {
                    doc.remember(client, seq, rev);
                    return Ok(rev);
                }
            }
        }

        match doc.submit(client_id.as_deref(), seq, base_rev, op) {
            Ok(Submitted::Applied(committed)) => {
                let rev = committed.rev;
                self.staged.push(NewOp {
                    rev,
                    op: committed.op,
                    client_id: committed.client_id,
                    seq: committed.seq,
                });
                Ok(rev)
            }
            Ok(Submitted::Duplicate { rev }) => Ok(rev),
            // Older than the history in memory: the log still knows.
            Err(SubmitError::StaleSeq { seq: stale, last }) => {
                let client = client_id.as_deref().unwrap_or_default();
                match self
                    .shared
                    .store
                    .find_committed(&self.id, client, stale)
                    .await?
                {
                    Some(rev) => Ok(rev),
                    None => Err(SubmitError::StaleSeq { seq: stale, last }.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Write the staged ops in one transaction, then answer their submitters.
    async fn flush(&mut self) {
        if self.waiting.is_empty() && self.staged.is_empty() {
            return;
        }
        let result = if self.staged.is_empty() {
            Ok(())
        } else {
            self.shared.store.append_ops(&self.id, &self.staged).await
        };
        self.staged.clear();
        match result {
            Ok(()) => {
                // Issue 4 broadcasts the written ops to the sessions here, in
                // revision order, alongside these acknowledgements.
                for (reply, rev) in self.waiting.drain(..) {
                    let _ = reply.send(Ok(rev));
                }
                self.snapshot(false).await;
            }
            Err(e) => {
                // Memory is now ahead of the log: forget it and reload later.
                self.doc = None;
                if matches!(e, StoreError::NotFound) {
                    self.gone = true;
                } else {
                    error!(error = %e, "could not store ops; dropping in-memory state");
                }
                let e = RoomError::from(e);
                for (reply, _) in self.waiting.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    async fn read(&mut self) -> Result<DocState, RoomError> {
        self.ensure_loaded().await?;
        let doc = self.doc.as_ref().ok_or(RoomError::NotFound)?;
        Ok(DocState {
            content: doc.content().to_string(),
            rev: doc.rev(),
        })
    }

    /// Rebuild the document from a snapshot and the op tail, far enough back
    /// to refill the engine's history window.
    async fn ensure_loaded(&mut self) -> Result<(), RoomError> {
        if self.doc.is_some() {
            return Ok(());
        }
        let history = self.shared.config.limits.history as u64;
        let Some(loaded) = self.shared.store.load(&self.id, history).await? else {
            self.gone = true;
            return Err(RoomError::NotFound);
        };
        let mut doc = Document::new(
            Rope::from_str(&loaded.snapshot),
            loaded.snapshot_rev,
            self.shared.config.limits,
        );
        for op in loaded.tail {
            let rev = op.rev;
            doc.replay(Committed {
                rev,
                op: op.op,
                client_id: op.client_id,
                seq: op.seq,
            })
            .map_err(|e| {
                error!(rev, error = %e, "op log does not replay onto its snapshot");
                StoreError::Corrupt(format!("op {rev} does not apply: {e}"))
            })?;
        }
        debug!(
            rev = doc.rev(),
            snapshot_rev = loaded.snapshot_rev,
            "room loaded"
        );
        self.snapshot_rev = loaded.latest_snapshot_rev;
        self.doc = Some(doc);
        Ok(())
    }

    /// Save a snapshot when enough ops piled up since the last one (or, when
    /// `force`, any at all) so the next load replays a short tail.
    async fn snapshot(&mut self, force: bool) {
        let Some(doc) = &self.doc else { return };
        let behind = doc.rev() - self.snapshot_rev;
        if behind == 0 || (!force && behind < self.shared.config.snapshot_every_ops) {
            return;
        }
        let (rev, content) = (doc.rev(), doc.content().to_string());
        match self
            .shared
            .store
            .save_snapshot(&self.id, rev, &content)
            .await
        {
            Ok(()) => self.snapshot_rev = rev,
            // Not fatal: the log is complete, the next load replays more.
            Err(e) => warn!(rev, error = %e, "could not save snapshot"),
        }
    }
}

/// Answer a command this room will not run.
fn refuse(command: Command, exit: Exit) {
    let error = match exit {
        Exit::Idle => RoomError::Closed,
        Exit::Shutdown => RoomError::ShuttingDown,
        Exit::Deleted => RoomError::NotFound,
    };
    match command {
        Command::Read { reply } => {
            let _ = reply.send(Err(error));
        }
        Command::Submit { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Command::Deleted | Command::Shutdown => {}
    }
}
