//! The task behind one open document.
//!
//! It owns the `collab_ot::Document` and its live sessions. It takes commands
//! one batch at a time, runs each edit through the engine, writes the batch's
//! new ops in one transaction (group commit), and only then acknowledges them
//! and broadcasts them, in revision order. If the write fails, it throws its
//! in-memory state away and reloads from the log on the next command, so
//! memory never holds an op the log does not, and no client ever sees one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use collab_ot::protocol::{ErrorCode, OpRecord, PeerInfo, ServerMessage};
use collab_ot::{
    transform, transform_steps, Committed, Document, OpError, Operation, Peer, Side, SubmitError,
    Submitted,
};
use tokio::sync::mpsc;
use tracing::{debug, error, info_span, warn, Instrument};

use super::{
    error_frame, frame, Command, DocState, Frame, JoinRequest, Outbox, Refused, Reply, RoomError,
    Shared, Submission,
};
use crate::cluster::{ClusterMessage, ClusterOp};
use crate::domain::DocumentId;
use crate::rate::TokenBucket;
use crate::store::{NewOp, StoreError, StoredOp};

/// Most commands taken from the queue in one go. Bounds how long the first
/// submitter of a burst waits for the shared commit.
const MAX_BATCH: usize = 64;
/// How often a room of a cluster checks the log for ops it missed and sends
/// its peers' presence heartbeats.
const CLUSTER_TICK: Duration = Duration::from_secs(1);
/// Transform work (components walked) done right on the room's task; about
/// a millisecond. Costlier transforms run on the blocking pool.
const INLINE_STEPS: u64 = 20_000;
/// What reading one op back from the log costs, in transform steps: a row
/// read and decoded is worth about this many components walked.
const LOG_READ_STEPS: u64 = 100;
/// How far behind the in-memory history an edit may be based, in multiples
/// of the history window; the ops in between are read from the log.
const LOG_REACH: u64 = 10;

pub(super) fn spawn(
    shared: Arc<Shared>,
    id: DocumentId,
    generation: u64,
    rx: mpsc::Receiver<Command>,
    stop_guard: mpsc::Sender<()>,
) {
    let span = info_span!("room", document = %id, generation);
    let work_per_second = shared.config.limits.max_transform_steps as f64;
    let room = Room {
        shared,
        id,
        generation,
        doc: None,
        snapshot_rev: 0,
        staged: Vec::new(),
        answers: Vec::new(),
        sessions: HashMap::new(),
        rest_work: TokenBucket::new(work_per_second),
        orphan_peers: Vec::new(),
        gone: false,
        checkpoint: None,
        remote_peers: HashMap::new(),
        last_active: Instant::now(),
        last_heartbeat: Instant::now(),
        _stop_guard: stop_guard,
    };
    tokio::spawn(room.run(rx).instrument(span));
}

/// What a rebase under the write lock produced.
#[derive(Default)]
struct Rebased {
    /// The other instances' ops, for our sessions.
    frames: Vec<Frame>,
    /// The same ops, to move our peers' selections through.
    theirs: Vec<Operation>,
    /// Our batch, transformed past them.
    staged: Vec<NewOp>,
    answers: Vec<Answer>,
    /// Edits that no longer apply after the rebase.
    refused: Vec<(Origin, RoomError)>,
    /// Why the log did not replay, when it did not.
    failure: Option<String>,
}

/// Why a room stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Idle,
    Shutdown,
    Deleted,
}

/// Who is waiting for an edit's outcome.
#[derive(Debug)]
enum Origin {
    Rest(Reply<u64>),
    Session { session: u64, seq: u64 },
}

/// An edit's outcome, answered once the staged ops are stored.
#[derive(Debug)]
enum Answer {
    /// Newly committed: the next op of `staged`, in order. The submission
    /// (as of the revision it was applied at) is kept until the write
    /// succeeds, to submit it again: alone, when a batch failed to store,
    /// or transformed past another instance's ops in a cluster.
    Applied(Origin, Submission),
    /// Committed before, at `rev`.
    Duplicate(Origin, u64),
    /// A presence update, sent after the ops staged before it: its selection
    /// counts positions in the document that includes them.
    Presence { frame: Frame, from: u64 },
}

/// A connected WebSocket session.
struct Session {
    client_id: String,
    /// The token's `sub`: the author of this session's ops.
    user_id: Option<String>,
    outbound: Outbox,
    /// Transform work this session may still cause (its fair share of the
    /// room's time).
    work: TokenBucket,
}

/// What the engine made of an edit. Lives for one call; boxing the large
/// variant would cost an allocation per keystroke.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    /// Applied in memory (not yet stored), with the submission as it was
    /// applied (based on the revision before it).
    Applied(Committed, Submission),
    /// Committed before, at this revision.
    Duplicate(u64),
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
    /// Outcomes waiting for `staged` to be written, in the order they came.
    answers: Vec<Answer>,
    sessions: HashMap<u64, Session>,
    /// Transform work REST edits to this document may still cause, shared
    /// by all of them (a session has its own).
    rest_work: TokenBucket,
    /// Peers' presence from state dropped after a failed write, restored
    /// when the document is loaded again.
    orphan_peers: Vec<Peer>,
    /// The document does not exist (any more).
    gone: bool,
    /// In a cluster: the document as of the last write that succeeded, to
    /// rebase on when another instance wrote first.
    checkpoint: Option<Document>,
    /// Peers connected to other instances, and when each was last heard of.
    remote_peers: HashMap<String, Instant>,
    /// Last command that was not cluster news (for unloading when idle).
    last_active: Instant,
    last_heartbeat: Instant,
    /// Dropped when this task ends; see [`Shared::all_stopped`].
    _stop_guard: mpsc::Sender<()>,
}

mod remote;

use remote::{rebase_peers, replay_op};

impl Room {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let idle = self.shared.config.idle;
        let clustered = self.shared.cluster.is_some();
        let exit = loop {
            // Only a room nobody is connected to counts down to unloading;
            // a room of a cluster also wakes up every tick.
            let idle_left = idle.saturating_sub(self.last_active.elapsed());
            let wait = match (clustered, self.sessions.is_empty()) {
                (true, true) => Some(CLUSTER_TICK.min(idle_left)),
                (true, false) => Some(CLUSTER_TICK),
                (false, true) => Some(idle_left),
                (false, false) => None,
            };
            let received = match wait {
                None => rx.recv().await,
                Some(wait) => match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(received) => received,
                    Err(_quiet) => {
                        if self.sessions.is_empty() && self.last_active.elapsed() >= idle {
                            break Exit::Idle;
                        }
                        self.tick().await;
                        continue;
                    }
                },
            };
            // Every handle gone: nobody can reach this room any more.
            let Some(first) = received else {
                break Exit::Idle;
            };
            if !matches!(first, Command::Cluster(_) | Command::CatchUp) {
                self.last_active = Instant::now();
            }
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
                    (None, command) => exit = self.handle(command).await,
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
        if exit == Exit::Deleted {
            let frame = error_frame(
                ErrorCode::DocumentDeleted,
                "this document was deleted",
                None,
            );
            for session in self.sessions.values() {
                let _ = session.outbound.push(Arc::clone(&frame));
            }
        } else {
            self.snapshot().await;
        }
        // Dropping the sessions' senders ends their connections.
        self.sessions.clear();
        debug!(?exit, "room stopped");
    }

    /// Runs one command; `Some` when the room must stop after this batch.
    async fn handle(&mut self, command: Command) -> Option<Exit> {
        match command {
            Command::Submit { submission, reply } => {
                self.stage(submission, Origin::Rest(reply)).await;
            }
            Command::SessionOp {
                session,
                seq,
                base_rev,
                op,
            } => {
                // A session the room already let go of has nobody to answer.
                if let Some(s) = self.sessions.get(&session) {
                    let submission = Submission {
                        author: s.user_id.clone(),
                        client_id: Some(s.client_id.clone()),
                        seq: Some(seq),
                        base_rev,
                        op,
                    };
                    self.stage(submission, Origin::Session { session, seq })
                        .await;
                }
            }
            Command::Read { reply } => {
                // A read must not see ops that are not stored yet, and in a
                // cluster it must see what the other instances stored.
                self.flush().await;
                self.catch_up_if_clustered().await;
                let _ = reply.send(self.read().await);
            }
            Command::Join {
                session,
                request,
                reply,
            } => {
                self.flush().await;
                self.catch_up_if_clustered().await;
                let _ = reply.send(self.join(session, request).await);
            }
            Command::SessionPresence {
                session,
                selection,
                user,
            } => self.presence(session, selection, user),
            Command::Leave { session } => self.leave(session),
            Command::Cluster(ClusterMessage::Deleted { .. }) => return Some(Exit::Deleted),
            Command::Cluster(message) => {
                self.flush().await;
                self.remote(message).await;
            }
            Command::CatchUp => {
                self.flush().await;
                self.catch_up().await;
            }
            Command::Deleted => return Some(Exit::Deleted),
            Command::Shutdown => return Some(Exit::Shutdown),
        }
        None
    }

    /// Runs an edit through the engine; its answer waits for the flush.
    async fn stage(&mut self, submission: Submission, origin: Origin) {
        match self.apply(submission, &origin).await {
            Ok(Outcome::Applied(committed, submission)) => {
                self.staged.push(NewOp::from(committed));
                self.answers.push(Answer::Applied(origin, submission));
            }
            Ok(Outcome::Duplicate(rev)) => {
                self.answers.push(Answer::Duplicate(origin, rev));
            }
            // A refused op changed nothing, so it can be answered right away.
            Err(e) => self.refuse_edit(origin, e),
        }
    }

    fn refuse_edit(&mut self, origin: Origin, e: RoomError) {
        match origin {
            Origin::Rest(reply) => {
                let _ = reply.send(Err(e));
            }
            Origin::Session { session, seq } => {
                let (code, message) = session_error(&e);
                self.send_to(session, error_frame(code, &message, Some(seq)));
                if !code.is_recoverable() {
                    self.drop_session(session, "its edit could not be taken");
                }
            }
        }
    }

    /// Runs a submission through the engine: exactly-once first, then the
    /// transform to the current revision within the document's work bounds.
    async fn apply(
        &mut self,
        submission: Submission,
        origin: &Origin,
    ) -> Result<Outcome, RoomError> {
        self.ensure_loaded().await?;
        let Submission {
            author,
            client_id,
            seq,
            base_rev,
            op,
        } = submission;

        // In token mode a client id belongs to the user who committed under
        // it: another user's op under it is neither applied nor acknowledged.
        if let (Some(client), Some(author)) = (client_id.as_deref(), author.as_deref()) {
            let doc = self.doc.as_ref().ok_or(RoomError::NotFound)?;
            if doc
                .client_owner(client)
                .is_some_and(|owner| owner != author)
            {
                return Err(RoomError::ClientTaken(client.to_owned()));
            }
        }
        if let (Some(client), Some(seq)) = (client_id.as_deref(), seq) {
            if let Some(rev) = self.duplicate(client, seq, base_rev, &op).await? {
                return Ok(Outcome::Duplicate(rev));
            }
        }
        let (base_rev, op) = self.bring_up_to_date(base_rev, op, origin).await?;
        let doc = self.doc.as_mut().ok_or(RoomError::NotFound)?;
        let kept = Submission {
            author: author.clone(),
            client_id: client_id.clone(),
            seq,
            base_rev,
            op: op.clone(),
        };
        match doc.submit_as(author.as_deref(), client_id.as_deref(), seq, base_rev, op)? {
            Submitted::Applied(committed) => Ok(Outcome::Applied(committed, kept)),
            Submitted::Duplicate { rev } => Ok(Outcome::Duplicate(rev)),
        }
    }

    /// `Some(rev)` when `(client, seq)` was committed before, asking the log
    /// about what memory does not hold (a client not seen since this room
    /// loaded, or a seq older than the history window).
    async fn duplicate(
        &mut self,
        client: &str,
        seq: u64,
        base_rev: u64,
        op: &Operation,
    ) -> Result<Option<u64>, RoomError> {
        let doc = self.doc.as_mut().ok_or(RoomError::NotFound)?;
        if !doc.knows_client(client) {
            let found = self
                .shared
                .store
                .find_committed(&self.id, client, seq)
                .await?;
            if let Some(rev) = found {
                let doc = self.doc.as_mut().ok_or(RoomError::NotFound)?;
                doc.remember(client, seq, rev);
                return Ok(Some(rev));
            }
        }
        let doc = self.doc.as_ref().ok_or(RoomError::NotFound)?;
        match doc.duplicate(client, seq, base_rev, op) {
            Err(SubmitError::StaleSeq { seq: stale, last }) => {
                match self
                    .shared
                    .store
                    .find_committed(&self.id, client, stale)
                    .await?
                {
                    Some(rev) => Ok(Some(rev)),
                    None => Err(SubmitError::StaleSeq { seq: stale, last }.into()),
                }
            }
            other => Ok(other?),
        }
    }

    /// Brings `op` from `base_rev` to the document's current revision (or
    /// leaves a cheap transform to the engine), charging the work to whoever
    /// sent it. Everything that can be checked without transforming is
    /// checked first; a costly transform runs on the blocking pool, so one
    /// document's expensive edit never holds an async worker thread.
    async fn bring_up_to_date(
        &mut self,
        base_rev: u64,
        op: Operation,
        origin: &Origin,
    ) -> Result<(u64, Operation), RoomError> {
        let doc = self.doc.as_ref().ok_or(RoomError::NotFound)?;
        // Moved only up to the last stored revision: the ops of the batch
        // being built are left to the engine, so the submission stays valid
        // if that batch fails or is rebased.
        let stored = doc.rev() - self.staged.len() as u64;
        let (mut ops, cost) = if base_rev >= doc.oldest_rev() {
            let cost = doc.check_submission(base_rev, &op)?;
            if cost <= INLINE_STEPS || base_rev >= stored {
                self.charge(origin, cost)?;
                return Ok((base_rev, op));
            }
            (doc.ops_after(base_rev).unwrap_or_default(), cost)
        } else {
            self.ops_from_log(base_rev, &op, origin).await?
        };
        self.charge(origin, cost)?;
        ops.truncate(stored.saturating_sub(base_rev) as usize);
        let op = self.transform_past(op, ops, cost).await?;
        Ok((stored.max(base_rev), op))
    }

    /// The ops an edit older than the in-memory history must be transformed
    /// past (read back from the log, then the history), and the cost. A
    /// hopeless edit is refused before the log is read.
    async fn ops_from_log(
        &mut self,
        base_rev: u64,
        op: &Operation,
        origin: &Origin,
    ) -> Result<(Vec<Operation>, u64), RoomError> {
        let doc = self.doc.as_ref().ok_or(RoomError::NotFound)?;
        let limits = doc.limits();
        let (rev, oldest) = (doc.rev(), doc.oldest_rev());
        let reach = limits.history as u64 * LOG_REACH;
        let out_of_range = SubmitError::RevOutOfRange {
            rev: base_rev,
            oldest: oldest.saturating_sub(reach),
            current: rev,
        };
        let behind = oldest - base_rev;
        if behind > reach {
            return Err(out_of_range.into());
        }
        let components = op.components().len();
        if components > limits.max_op_components {
            return Err(SubmitError::TooComplex {
                components,
                max: limits.max_op_components,
            }
            .into());
        }
        let too_costly = |steps| SubmitError::TooFarBehind {
            rev: base_rev,
            steps,
            max: limits.max_transform_steps,
        };
        // Every op in between costs a read and at least one step each side.
        let floor = (rev - base_rev) * (components as u64 + 1) + behind * LOG_READ_STEPS;
        if floor > limits.max_transform_steps {
            return Err(too_costly(floor).into());
        }
        self.charge(origin, floor)?;
        let missing = self
            .shared
            .store
            .ops_since(&self.id, base_rev, behind as u32)
            .await?;
        if missing.len() as u64 != behind {
            return Err(out_of_range.into());
        }
        let doc = self.doc.as_ref().ok_or(RoomError::NotFound)?;
        // The document's length at `base_rev`, to check the edit against
        // before paying for any transform.
        let len_then = doc.len_at(oldest).unwrap_or_default() as i64
            - missing.iter().map(|m| m.op.len_delta() as i64).sum::<i64>();
        let needed = op.base_len();
        if needed as i64 > len_then {
            return Err(SubmitError::from(OpError::PastEnd {
                needed,
                len: len_then.max(0) as usize,
            })
            .into());
        }
        let mut ops: Vec<Operation> = missing.into_iter().map(|m| m.op).collect();
        ops.extend(doc.ops_after(oldest).unwrap_or_default());
        let steps = transform_steps(op, &ops) + behind * LOG_READ_STEPS;
        if steps > limits.max_transform_steps {
            return Err(too_costly(steps).into());
        }
        // The floor was charged already.
        Ok((ops, steps - floor))
    }

    /// `op` transformed past `ops` in order (side `Left`, as the engine does).
    async fn transform_past(
        &self,
        op: Operation,
        ops: Vec<Operation>,
        cost: u64,
    ) -> Result<Operation, RoomError> {
        let fold = move || {
            ops.iter()
                .fold(op, |op, other| transform(&op, other, Side::Left))
        };
        if cost <= INLINE_STEPS {
            return Ok(fold());
        }
        let _permit = self.shared.heavy.acquire().await;
        tokio::task::spawn_blocking(fold).await.map_err(|e| {
            error!(error = %e, "transform task failed");
            RoomError::from(SubmitError::from(OpError::Malformed(
                "the operation could not be transformed".into(),
            )))
        })
    }

    /// Takes `cost` from the sender's share of the room's time.
    fn charge(&mut self, origin: &Origin, cost: u64) -> Result<(), RoomError> {
        let now = Instant::now();
        let bucket = match origin {
            Origin::Rest(_) => &mut self.rest_work,
            Origin::Session { session, .. } => match self.sessions.get_mut(session) {
                Some(s) => &mut s.work,
                None => return Ok(()),
            },
        };
        if bucket.try_take(cost as f64, now) {
            Ok(())
        } else {
            Err(RoomError::RateLimited)
        }
    }

    /// Writes the staged ops in one transaction, then answers and broadcasts
    /// them in revision order. In a cluster, a write that lost the race to
    /// another instance is rebased on what that instance wrote and retried.
    async fn flush(&mut self) {
        if self.answers.is_empty() {
            return;
        }
        let result = if self.staged.is_empty() {
            Ok(())
        } else {
            self.shared.store.append_ops(&self.id, &self.staged).await
        };
        match result {
            Ok(()) => {
                let staged = std::mem::take(&mut self.staged);
                let answers = std::mem::take(&mut self.answers);
                self.committed(staged, answers);
            }
            Err(StoreError::Conflict(why)) if self.shared.cluster.is_some() => {
                debug!(why, "another instance wrote first; rebasing");
                self.rebase().await;
            }
            Err(e) => {
                self.staged.clear();
                let answers = std::mem::take(&mut self.answers);
                self.write_failed(e, answers).await;
            }
        }
    }

    /// Another instance wrote first. Under the document's write lock, replay
    /// what it wrote onto the last state we stored, transform our batch past
    /// it and write that. Holding the lock, nobody can win the race again, so
    /// a busy document cannot starve this instance's writers (retrying
    /// optimistically could lose to the others indefinitely, with this room
    /// deaf to everything else meanwhile).
    async fn rebase(&mut self) {
        let ours: Vec<Operation> = self.staged.drain(..).map(|o| o.op).collect();
        let peers: Option<Vec<Peer>> = self.doc.as_ref().map(|d| d.peers().cloned().collect());
        let answers = std::mem::take(&mut self.answers);
        let Some(mut doc) = self.checkpoint.clone() else {
            let e = StoreError::Corrupt("no stored state to rebase on".into());
            return self.write_failed(e, answers).await;
        };
        let since = doc.rev();
        let mut unsent = Some(answers);
        let mut rebased = Rebased::default();
        let outcome = {
            let (doc, unsent, rebased) = (&mut doc, &mut unsent, &mut rebased);
            let rebase = move |missing: Vec<StoredOp>| {
                for o in missing {
                    rebased.theirs.push(o.op.clone());
                    let rev = o.rev;
                    match replay_op(doc, o.into()) {
                        Ok(frame) => rebased.frames.push(frame),
                        Err(e) => {
                            rebased.failure = Some(format!("op {rev} does not apply: {e}"));
                            return None;
                        }
                    }
                }
                for answer in unsent.take().unwrap_or_default() {
                    match answer {
                        Answer::Applied(origin, s) => {
                            let kept = s.clone();
                            let submitted = doc.submit_as(
                                s.author.as_deref(),
                                s.client_id.as_deref(),
                                s.seq,
                                s.base_rev,
                                s.op,
                            );
                            match submitted {
                                Ok(Submitted::Applied(c)) => {
                                    rebased.staged.push(NewOp::from(c));
                                    rebased.answers.push(Answer::Applied(origin, kept));
                                }
                                Ok(Submitted::Duplicate { rev }) => {
                                    rebased.answers.push(Answer::Duplicate(origin, rev));
                                }
                                Err(e) => rebased.refused.push((origin, e.into())),
                            }
                        }
                        other => rebased.answers.push(other),
                    }
                }
                Some(rebased.staged.clone())
            };
            self.shared
                .store
                .append_rebased(&self.id, since, Box::new(rebase))
                .await
        };
        let mut answers = unsent.unwrap_or_default();
        answers.extend(rebased.answers);
        let failure = match outcome {
            Ok(true) => None,
            Ok(false) => Some(StoreError::Corrupt(
                rebased.failure.unwrap_or_else(|| "rebase declined".into()),
            )),
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            for (origin, refusal) in rebased.refused {
                self.refuse_edit(origin, refusal);
            }
            return self.write_failed(e, answers).await;
        }
        // Presence set since the last write lives in the state we rebased
        // away from: carry it over, moved past the other instances' ops.
        if let Some(peers) = peers {
            let moved = rebase_peers(peers, &ours, &rebased.theirs);
            let gone: Vec<String> = doc
                .peers()
                .filter(|p| !moved.iter().any(|m| m.client_id == p.client_id))
                .map(|p| p.client_id.clone())
                .collect();
            for client in gone {
                doc.remove_peer(&client);
            }
            for peer in moved {
                doc.set_presence(
                    &peer.client_id,
                    peer.selection,
                    Some(peer.user),
                    peer.user_id.as_deref(),
                );
            }
        }
        self.doc = Some(doc);
        // Sessions see the other instance's ops before ours, as in the log.
        for frame in &rebased.frames {
            self.broadcast(frame, None);
        }
        for (origin, e) in rebased.refused {
            self.refuse_edit(origin, e);
        }
        self.committed(rebased.staged, answers);
    }

    /// The batch is stored: answer, broadcast, tell the other instances.
    fn committed(&mut self, staged: Vec<NewOp>, answers: Vec<Answer>) {
        if let Some(cluster) = &self.shared.cluster {
            if !staged.is_empty() {
                let ops = staged
                    .iter()
                    .map(|o| ClusterOp {
                        rev: o.rev,
                        op: o.op.clone(),
                        client_id: o.client_id.clone(),
                        seq: o.seq,
                        author: o.author.clone(),
                    })
                    .collect();
                let from = cluster.instance().to_owned();
                cluster.publish(&self.id, &ClusterMessage::Ops { from, ops });
            }
            self.checkpoint = self.doc.clone();
        }
        let mut ops = staged.into_iter();
        for answer in answers {
            match answer {
                Answer::Applied(origin, _) => {
                    let op = ops.next().expect("one staged op per applied answer");
                    let rev = op.rev;
                    // The session that sent it gets an ack instead.
                    let from = match &origin {
                        Origin::Session { session, .. } => Some(*session),
                        Origin::Rest(_) => None,
                    };
                    let frame = frame(&ServerMessage::Op {
                        rev,
                        op: op.op,
                        client_id: op.client_id,
                        seq: op.seq,
                        author: op.author,
                    });
                    self.broadcast(&frame, from);
                    self.answer(origin, rev);
                }
                Answer::Duplicate(origin, rev) => self.answer(origin, rev),
                Answer::Presence { frame, from } => self.broadcast(&frame, Some(from)),
            }
        }
        if let Some(doc) = &self.doc {
            self.shared.snapshots.notify(&self.id, doc.rev());
        }
    }

    /// The log refused the batch: nothing of it happened. Memory is ahead of
    /// the log, so it is dropped (the next command reloads; peers' presence
    /// is carried over). Nobody saw the batch's ops (broadcasts wait for the
    /// write), so the sessions stay. Whose fault was it? With one edit in
    /// the batch, or a store that cannot be reached, the edits are refused
    /// (`unavailable`: resend). With several, each is submitted again and
    /// stored on its own, so a failure caused by one submission fails that
    /// submission alone.
    async fn write_failed(&mut self, e: StoreError, answers: Vec<Answer>) {
        if let Some(doc) = self.doc.take() {
            self.orphan_peers = doc.peers().cloned().collect();
        }
        if matches!(e, StoreError::NotFound) {
            self.gone = true;
        } else {
            error!(error = %e, "could not store ops; dropping in-memory state");
        }
        let applied = answers
            .iter()
            .filter(|a| matches!(a, Answer::Applied(..)))
            .count();
        let isolate = applied > 1 && !self.gone && !matches!(e, StoreError::Unavailable(_));
        let e = RoomError::from(e);
        for answer in answers {
            match answer {
                Answer::Applied(origin, submission) if isolate => {
                    self.stage(submission, origin).await;
                    Box::pin(self.flush()).await;
                }
                // A duplicate may name a revision of this very batch: the
                // client resends and learns the truth.
                Answer::Applied(origin, _) | Answer::Duplicate(origin, _) => {
                    self.refuse_edit(origin, e.clone());
                }
                // Its selection counted positions in ops that are gone; the
                // next presence update from that client is exact again.
                Answer::Presence { .. } => {}
            }
        }
    }

    fn answer(&mut self, origin: Origin, rev: u64) {
        match origin {
            Origin::Rest(reply) => {
                let _ = reply.send(Ok(rev));
            }
            Origin::Session { session, seq } => {
                self.send_to(session, frame(&ServerMessage::Ack { seq, rev }));
            }
        }
    }

    async fn join(&mut self, session: u64, request: JoinRequest) -> Result<Frame, RoomError> {
        self.ensure_loaded().await?;
        let client_id = request.client_id.into_string();
        if let Some(user) = &request.grant.user_id {
            self.check_client_owner(&client_id, user).await?;
        }
        let doc = self.doc.as_ref().ok_or(RoomError::NotFound)?;
        let rev = doc.rev();
        let peers = doc
            .peers()
            .filter(|p| p.client_id != client_id)
            .map(PeerInfo::from)
            .collect();
        let window = self.shared.config.limits.history as u64;
        let ops = match request.since {
            Some(since) if since <= rev && rev - since <= window => {
                // Everything up to `rev` is stored: the batch was flushed.
                let stored = self
                    .shared
                    .store
                    .ops_since(&self.id, since, (rev - since) as u32)
                    .await?;
                (stored.len() as u64 == rev - since).then(|| {
                    stored
                        .into_iter()
                        .map(|o| OpRecord {
                            rev: o.rev,
                            op: o.op,
                            client_id: o.client_id,
                            seq: o.seq,
                            author: o.author,
                            created_at: o.created_at.to_rfc3339(),
                        })
                        .collect()
                })
            }
            _ => None,
        };
        let doc = self.doc.as_ref().ok_or(RoomError::NotFound)?;
        let welcome = ServerMessage::Welcome {
            client_id: client_id.clone(),
            rev,
            content: ops.is_none().then(|| doc.content().to_string()),
            ops,
            peers,
            role: Some(request.grant.role),
            exp: request.grant.exp,
        };
        debug!(session, client = %client_id, rev, "session joined");
        self.sessions.insert(
            session,
            Session {
                client_id,
                user_id: request.grant.user_id,
                outbound: request.outbound,
                work: TokenBucket::new(self.shared.config.limits.max_transform_steps as f64),
            },
        );
        Ok(frame(&welcome))
    }

    /// Token mode: refuses a client id under which another user committed
    /// ops, or that another user's live session here uses. Ops made in open
    /// mode (no author) bind nobody.
    async fn check_client_owner(&mut self, client: &str, user: &str) -> Result<(), RoomError> {
        let taken_live = self
            .sessions
            .values()
            .any(|s| s.client_id == client && s.user_id.as_deref().is_some_and(|u| u != user));
        let doc = self.doc.as_ref().ok_or(RoomError::NotFound)?;
        let owner = match doc.client_owner(client) {
            Some(owner) => Some(owner.to_owned()),
            None => self.shared.store.client_owner(&self.id, client).await?,
        };
        if taken_live || owner.as_deref().is_some_and(|o| o != user) {
            return Err(RoomError::ClientTaken(client.to_owned()));
        }
        if let (Some(owner), Some(doc)) = (owner, self.doc.as_mut()) {
            doc.set_client_owner(client, &owner);
        }
        Ok(())
    }

    fn presence(
        &mut self,
        session: u64,
        selection: Option<[usize; 2]>,
        user: Option<serde_json::Value>,
    ) {
        let (Some(s), Some(doc)) = (self.sessions.get(&session), self.doc.as_mut()) else {
            return;
        };
        let peer = doc.set_presence(&s.client_id, selection, user, s.user_id.as_deref());
        if let Some(cluster) = &self.shared.cluster {
            cluster.announce(&self.id, peer);
        }
        let frame = frame(&ServerMessage::Presence {
            client_id: peer.client_id.clone(),
            selection: peer.selection,
            user: peer.user.clone(),
            user_id: peer.user_id.clone(),
        });
        if self.answers.is_empty() {
            self.broadcast(&frame, Some(session));
        } else {
            self.answers.push(Answer::Presence {
                frame,
                from: session,
            });
        }
    }

    fn leave(&mut self, session: u64) {
        if let Some(frame) = self.remove_session(session) {
            self.broadcast(&frame, None);
        }
    }

    /// Forgets a session; the `leave` frame to broadcast when that was the
    /// client's last connection and others could see it.
    fn remove_session(&mut self, session: u64) -> Option<Frame> {
        let gone = self.sessions.remove(&session)?;
        debug!(session, client = %gone.client_id, "session left");
        // The same client may still be here on another connection.
        if self
            .sessions
            .values()
            .any(|s| s.client_id == gone.client_id)
        {
            return None;
        }
        self.doc.as_mut()?.remove_peer(&gone.client_id)?;
        if let Some(cluster) = &self.shared.cluster {
            cluster.publish(
                &self.id,
                &ClusterMessage::Leave {
                    from: cluster.instance().to_owned(),
                    client_id: gone.client_id.clone(),
                },
            );
        }
        Some(frame(&ServerMessage::Leave {
            client_id: gone.client_id,
        }))
    }

    /// Sends to every session but `except`. A session whose queue is full is
    /// let go of instead of slowing everyone down; one whose connection has
    /// already ended is forgotten quietly. The `leave` frames this causes are
    /// broadcast in turn, in a loop rather than by recursion, so a crowd
    /// leaving at once costs one pass per round, never a deep stack.
    fn broadcast(&mut self, frame: &Frame, except: Option<u64>) {
        let mut pending = vec![(Arc::clone(frame), except)];
        while let Some((frame, except)) = pending.pop() {
            let failed: Vec<(u64, Refused)> = self
                .sessions
                .iter()
                .filter(|(id, _)| Some(**id) != except)
                .filter_map(|(id, s)| {
                    let refused = s.outbound.push(Arc::clone(&frame)).err()?;
                    Some((*id, refused))
                })
                .collect();
            for (session, refused) in failed {
                pending.extend(self.let_go(session, refused).map(|leave| (leave, None)));
            }
        }
    }

    fn send_to(&mut self, session: u64, frame: Frame) {
        let refused = self
            .sessions
            .get(&session)
            .and_then(|s| s.outbound.push(frame).err());
        if let Some(refused) = refused {
            if let Some(leave) = self.let_go(session, refused) {
                self.broadcast(&leave, None);
            }
        }
    }

    /// Ends a session from the room's side (its connection closes and the
    /// client resumes on a new one); the `leave` frame to broadcast, if any.
    fn let_go(&mut self, session: u64, why: Refused) -> Option<Frame> {
        match why {
            Refused::Full => warn!(session, "disconnecting a session that cannot keep up"),
            Refused::Closed => debug!(session, "forgetting a session whose connection ended"),
        }
        self.remove_session(session)
    }

    /// Ends a session from the room's side for a reason of the room's.
    fn drop_session(&mut self, session: u64, why: &str) {
        warn!(session, why, "disconnecting a session");
        self.leave(session);
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
        let mut doc = crate::store::replay(
            &loaded.snapshot,
            loaded.snapshot_rev,
            loaded.tail,
            self.shared.config.limits,
        )
        .inspect_err(|e| error!(error = %e, "op log does not replay onto its snapshot"))?;
        debug!(
            rev = doc.rev(),
            snapshot_rev = loaded.snapshot_rev,
            "room loaded"
        );
        self.snapshot_rev = loaded.latest_snapshot_rev;
        for peer in std::mem::take(&mut self.orphan_peers) {
            doc.set_presence(
                &peer.client_id,
                peer.selection,
                Some(peer.user),
                peer.user_id.as_deref(),
            );
        }
        if let Some(cluster) = &self.shared.cluster {
            // Who is already here, connected to other instances.
            for peer in cluster.peers(&self.id).await {
                doc.set_presence(
                    &peer.client_id,
                    peer.selection,
                    Some(peer.user),
                    peer.user_id.as_deref(),
                );
                self.remote_peers.insert(peer.client_id, Instant::now());
            }
            self.checkpoint = Some(doc.clone());
        }
        self.doc = Some(doc);
        Ok(())
    }

    /// Saves a snapshot as the room unloads, so the next load replays a short
    /// tail (the snapshot worker takes them while the room is open).
    async fn snapshot(&mut self) {
        let Some(doc) = &self.doc else { return };
        if doc.rev() == self.snapshot_rev {
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

/// The protocol's error for a refused session op.
fn session_error(e: &RoomError) -> (ErrorCode, String) {
    let code = match e {
        RoomError::Rejected(SubmitError::RevOutOfRange { .. }) => ErrorCode::RevOutOfRange,
        RoomError::Rejected(SubmitError::InvalidOp(_)) => ErrorCode::InvalidOp,
        RoomError::Rejected(SubmitError::TooLarge { .. }) => ErrorCode::TooLarge,
        RoomError::Rejected(SubmitError::StaleSeq { .. } | SubmitError::SeqReused { .. }) => {
            ErrorCode::BadMessage
        }
        RoomError::Rejected(SubmitError::TooComplex { .. }) => ErrorCode::TooLarge,
        RoomError::Rejected(SubmitError::TooFarBehind { .. }) => ErrorCode::RevOutOfRange,
        RoomError::RateLimited => ErrorCode::RateLimited,
        RoomError::ClientTaken(_) => ErrorCode::Forbidden,
        RoomError::NotFound => ErrorCode::DocumentDeleted,
        RoomError::Store(_) | RoomError::Closed | RoomError::ShuttingDown => {
            // Not the client's fault: nothing was applied; it resends.
            return (
                ErrorCode::Unavailable,
                "the server could not store this edit; resend it".to_owned(),
            );
        }
    };
    (code, e.to_string())
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
        Command::Join { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Command::SessionOp { .. }
        | Command::SessionPresence { .. }
        | Command::Leave { .. }
        | Command::Cluster(_)
        | Command::CatchUp
        | Command::Deleted
        | Command::Shutdown => {}
    }
}
