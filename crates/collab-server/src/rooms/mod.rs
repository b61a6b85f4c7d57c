//! Rooms: one task per open document, owning its engine state.
//!
//! Everything that reads or changes a document's content goes through its
//! room, so edits are serialised without locks and the in-memory state can
//! never run ahead of the op log: the room stores an op before it answers.
//! This module is the registry (id → handle, lazy loading, unloading,
//! shutdown); `room` is the task itself.
//!
//! Live WebSocket sessions join a room ([`Rooms::join`]) and then talk to it
//! through a [`SessionLink`]; the room pushes frames to each session over a
//! bounded queue, and a room with sessions never unloads.

mod room;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use collab_ot::{DocumentLimits, Operation, SubmitError};
use tokio::sync::{mpsc, oneshot, watch};

use crate::cluster::{ClusterLink, ClusterMessage};
use crate::domain::{ClientId, DocumentId};
use crate::snapshot::{LiveContent, SnapshotNotifier};
use crate::store::{DocumentStore, StoreError};

/// One text frame for a session's socket, serialized once and shared by
/// every session it is broadcast to.
pub type Frame = Arc<str>;

/// `message` as a frame.
pub fn frame(message: &collab_ot::protocol::ServerMessage) -> Frame {
    message.to_json().into()
}

/// The protocol's `error` frame (docs/protocol.md §3, "Errors").
pub fn error_frame(code: collab_ot::protocol::ErrorCode, message: &str, seq: Option<u64>) -> Frame {
    frame(&collab_ot::protocol::ServerMessage::Error {
        code,
        message: message.to_owned(),
        seq,
    })
}

/// How rooms behave; built from [`crate::config::Config`].
#[derive(Debug, Clone, Copy)]
pub struct RoomConfig {
    pub limits: DocumentLimits,
    /// A room with no activity and no sessions for this long saves a
    /// snapshot and unloads.
    pub idle: Duration,
    /// Commands a room queues before senders wait (backpressure).
    pub queue: usize,
    /// Frames queued for one session before the room gives up on it: a
    /// client that cannot keep up is disconnected (it resumes) rather than
    /// allowed to stall its room.
    pub session_queue: usize,
    /// The same bound in bytes, so a queue of large frames cannot pin
    /// memory either.
    pub session_queue_bytes: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            limits: DocumentLimits::default(),
            idle: Duration::from_secs(300),
            queue: 256,
            session_queue: 1024,
            session_queue_bytes: 4 << 20,
        }
    }
}

/// A document's content at a revision, as its room holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocState {
    pub content: String,
    pub rev: u64,
}

/// An edit to commit: `op` was written against `base_rev`. `client_id` and
/// `seq` identify it for exactly-once delivery; REST edits have neither.
/// `author` is the token's `sub` (`None` in open mode).
#[derive(Debug, Clone)]
pub struct Submission {
    pub author: Option<String>,
    pub client_id: Option<String>,
    pub seq: Option<u64>,
    pub base_rev: u64,
    pub op: Operation,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RoomError {
    #[error("document not found")]
    NotFound,
    #[error(transparent)]
    Rejected(#[from] SubmitError),
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// In token mode: the client id belongs to another user (its ops, or a
    /// live connection, carry another `sub`).
    #[error("client_id {0} belongs to another user; connect with a client_id of your own")]
    ClientTaken(String),
    /// The sender has used up its share of the document's time; retry later.
    #[error("this connection has used its share of the document's time; resend in a moment")]
    RateLimited,
    /// The room unloaded while the command waited; [`Rooms`] retries these.
    #[error("room closed")]
    Closed,
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl From<StoreError> for RoomError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => RoomError::NotFound,
            e => RoomError::Store(Arc::new(e)),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, RoomError>>;

/// What a room can be asked to do.
#[derive(Debug)]
enum Command {
    Read {
        reply: Reply<DocState>,
    },
    Submit {
        submission: Submission,
        reply: Reply<u64>,
    },
    /// A WebSocket session joins; the reply is its `welcome` frame.
    Join {
        session: u64,
        request: JoinRequest,
        reply: Reply<Frame>,
    },
    /// An op from a session; answered with an `ack` or `error` frame.
    SessionOp {
        session: u64,
        seq: u64,
        base_rev: u64,
        op: Operation,
    },
    SessionPresence {
        session: u64,
        selection: Option<[usize; 2]>,
        user: Option<serde_json::Value>,
    },
    Leave {
        session: u64,
    },
    /// News from another instance.
    Cluster(ClusterMessage),
    /// Read what other instances committed from the op log.
    CatchUp,
    /// The document was deleted: stop without a snapshot.
    Deleted,
    /// The server is stopping: commit what is pending, snapshot, stop.
    Shutdown,
}

/// What a session brings when it joins.
#[derive(Debug)]
pub struct JoinRequest {
    pub client_id: ClientId,
    /// Who the session is and what it may do, for its `welcome`, its ops'
    /// author and its presence.
    pub grant: SessionGrant,
    /// The revision the client already has, when resuming.
    pub since: Option<u64>,
    /// Where the room sends this session's frames; closed by the room when
    /// the session must go (document deleted, too slow, server stopping).
    pub outbound: Outbox,
}

/// What a session's token says, as far as the room needs to know.
#[derive(Debug, Clone)]
pub struct SessionGrant {
    /// The token's `sub`; `None` in open mode.
    pub user_id: Option<String>,
    /// Shown in the `welcome` (`admin` in open mode).
    pub role: collab_ot::protocol::Role,
    /// The token's expiry (Unix seconds), shown in the `welcome`.
    pub exp: Option<u64>,
}

impl SessionGrant {
    /// Open mode: anyone may do anything, and nobody is named.
    pub fn open() -> Self {
        Self {
            user_id: None,
            role: collab_ot::protocol::Role::Admin,
            exp: None,
        }
    }
}

/// The room's end of one session's outbound queue, bounded in frames and
/// in bytes. A frame that does not fit means the client is too slow: the
/// room lets go of it instead of buffering without end.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Frame>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    /// Dropped with the outbox: tells the connection at once that the room
    /// let go of it, even while it is stuck writing to a full socket.
    _held: watch::Sender<()>,
}

/// The connection's end of the queue.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Frame>,
    queued: Arc<AtomicUsize>,
    held: watch::Receiver<()>,
}

/// Why a frame could not be queued for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: the client is not keeping up.
    Full,
    /// The connection has already ended.
    Closed,
}

impl Outbox {
    /// Queues `frame`. A frame larger than the byte bound still goes
    /// through an empty queue.
    pub fn push(&self, frame: Frame) -> Result<(), Refused> {
        let len = frame.len();
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > self.max_bytes {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return Err(if self.tx.is_closed() {
                Refused::Closed
            } else {
                Refused::Full
            });
        }
        self.tx.try_send(frame).map_err(|e| {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => Refused::Full,
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            }
        })
    }
}

impl Inbox {
    /// The next frame; `None` once the room has let go of the session and
    /// everything queued before that was taken.
    pub async fn recv(&mut self) -> Option<Frame> {
        let frame = self.rx.recv().await?;
        self.queued.fetch_sub(frame.len(), Ordering::Relaxed);
        Some(frame)
    }

    /// A frame that is already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Frame> {
        let frame = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(frame.len(), Ordering::Relaxed);
        Some(frame)
    }

    /// Resolves once the room has let go of this session, whatever is
    /// still queued: for a connection to stop waiting on a client that has
    /// stopped reading.
    pub fn released(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut held = self.held.clone();
        async move { while held.changed().await.is_ok() {} }
    }
}

/// A joined session: its welcome, and its line to the room.
pub struct Joined {
    pub welcome: Frame,
    pub link: SessionLink,
}

/// A session's line to its room. The room is gone when a call fails.
pub struct SessionLink {
    session: u64,
    tx: mpsc::Sender<Command>,
}

/// The room has stopped; the session must end.
#[derive(Debug, Clone, Copy)]
pub struct RoomGone;

impl SessionLink {
    /// Hands an op to the room; its `ack` or `error` arrives as a frame.
    /// Waits while the room's queue is full, which slows this client down.
    pub async fn submit(&self, seq: u64, base_rev: u64, op: Operation) -> Result<(), RoomGone> {
        self.send(Command::SessionOp {
            session: self.session,
            seq,
            base_rev,
            op,
        })
        .await
    }

    pub async fn presence(
        &self,
        selection: Option<[usize; 2]>,
        user: Option<serde_json::Value>,
    ) -> Result<(), RoomGone> {
        self.send(Command::SessionPresence {
            session: self.session,
            selection,
            user,
        })
        .await
    }

    /// Tells the room this session has ended.
    pub async fn leave(self) {
        let _ = self
            .send(Command::Leave {
                session: self.session,
            })
            .await;
    }

    async fn send(&self, command: Command) -> Result<(), RoomGone> {
        self.tx.send(command).await.map_err(|_| RoomGone)
    }
}

#[derive(Debug, Clone)]
struct RoomHandle {
    generation: u64,
    tx: mpsc::Sender<Command>,
}

/// The registry of open rooms. Cheap to clone.
#[derive(Clone)]
pub struct Rooms {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn DocumentStore>,
    config: RoomConfig,
    snapshots: SnapshotNotifier,
    /// Set when several instances share the documents.
    cluster: Option<ClusterLink>,
    next_generation: AtomicU64,
    next_session: AtomicU64,
    /// Transforms too costly for an async worker thread run on the blocking
    /// pool, this many at a time: all but one core, so the async threads
    /// always keep one to answer everyone else.
    heavy: tokio::sync::Semaphore,
    registry: Mutex<Registry>,
    /// Closed when every room task has ended (mini-redis's shutdown pattern):
    /// each room holds a sender clone, and the registry drops its own on shutdown.
    all_stopped: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

struct Registry {
    rooms: HashMap<DocumentId, RoomHandle>,
    /// `None` once shutting down: no new rooms after that.
    stop_guard: Option<mpsc::Sender<()>>,
}

/// A room retried after it unloaded under a command; more than a couple of
/// retries means something is badly wrong, so give up rather than spin.
const ATTEMPTS: usize = 3;

impl Rooms {
    pub fn new(
        store: Arc<dyn DocumentStore>,
        config: RoomConfig,
        snapshots: SnapshotNotifier,
        cluster: Option<ClusterLink>,
    ) -> Self {
        let (stop_guard, all_stopped) = mpsc::channel(1);
        Self {
            shared: Arc::new(Shared {
                store,
                config,
                snapshots,
                cluster,
                next_generation: AtomicU64::new(0),
                next_session: AtomicU64::new(0),
                heavy: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism()
                        .map_or(1, |n| n.get().saturating_sub(1))
                        .max(1),
                ),
                registry: Mutex::new(Registry {
                    rooms: HashMap::new(),
                    stop_guard: Some(stop_guard),
                }),
                all_stopped: tokio::sync::Mutex::new(all_stopped),
            }),
        }
    }

    /// The document's current content and revision (only committed ops).
    pub async fn read(&self, id: &DocumentId) -> Result<DocState, RoomError> {
        self.call(id, |reply| Command::Read { reply }).await
    }

    /// Transform, store and apply an edit; the revision it produced, or for
    /// an already committed `(client_id, seq)` the revision it got then.
    pub async fn submit(&self, id: &DocumentId, submission: Submission) -> Result<u64, RoomError> {
        self.call(id, |reply| Command::Submit {
            submission: submission.clone(),
            reply,
        })
        .await
    }

    /// Joins a live session to the document's room. The session then gets
    /// every committed op (and presence) in order through its outbound
    /// queue, starting right after the returned welcome.
    pub async fn join(&self, id: &DocumentId, request: JoinRequest) -> Result<Joined, RoomError> {
        let session = self.shared.next_session.fetch_add(1, Ordering::Relaxed);
        // Retried like any call when the room unloads under us; the request
        // is consumed by whichever room answers.
        let mut request = Some(request);
        for _ in 0..ATTEMPTS {
            let handle = self.handle(id)?;
            let (reply, answer) = oneshot::channel();
            let Some(req) = request.take() else { break };
            let command = Command::Join {
                session,
                request: req,
                reply,
            };
            if let Err(mpsc::error::SendError(command)) = handle.tx.send(command).await {
                self.shared.forget(id, handle.generation);
                if let Command::Join { request: req, .. } = command {
                    request = Some(req);
                }
                continue;
            }
            match answer.await {
                Ok(Ok(welcome)) => {
                    return Ok(Joined {
                        welcome,
                        link: SessionLink {
                            session,
                            tx: handle.tx,
                        },
                    })
                }
                Ok(Err(RoomError::Closed)) | Err(_) => {
                    // The room stopped before taking the request; it is lost
                    // with it, and so is the session's outbound sender.
                    self.shared.forget(id, handle.generation);
                    return Err(RoomError::Closed);
                }
                Ok(Err(e)) => return Err(e),
            }
        }
        Err(RoomError::Closed)
    }

    /// Hands news from another instance to the document's room, if it is
    /// open here (a closed room loads fresh from the log anyway). Never
    /// waits: a dropped message is caught up from the log.
    pub fn deliver(&self, id: &DocumentId, message: ClusterMessage) {
        let handle = self.shared.lock().rooms.get(id).cloned();
        if let Some(handle) = handle {
            let _ = handle.tx.try_send(Command::Cluster(message));
        }
    }

    /// Every open room reads what it missed from the op log.
    pub fn catch_up_all(&self) {
        let handles: Vec<RoomHandle> = self.shared.lock().rooms.values().cloned().collect();
        for handle in handles {
            let _ = handle.tx.try_send(Command::CatchUp);
        }
    }

    /// Tell the document's room, if it is open, that the document is gone.
    pub async fn document_deleted(&self, id: &DocumentId) {
        if let Some(cluster) = &self.shared.cluster {
            let from = cluster.instance().to_owned();
            cluster.publish(id, &ClusterMessage::Deleted { from });
        }
        let handle = self.shared.lock().rooms.remove(id);
        if let Some(handle) = handle {
            // A room that already stopped has nothing to be told.
            let _ = handle.tx.send(Command::Deleted).await;
        }
    }

    /// The live content of a loaded document, without loading it: the
    /// snapshot worker's check. Everything up to the returned revision is
    /// stored (a read flushes first).
    async fn read_if_loaded(&self, id: &DocumentId) -> Option<DocState> {
        let handle = self.shared.lock().rooms.get(id).cloned()?;
        let (reply, answer) = oneshot::channel();
        handle.tx.send(Command::Read { reply }).await.ok()?;
        answer.await.ok()?.ok()
    }

    /// Frames a session's outbound queue holds (see [`RoomConfig::session_queue`]).
    pub fn session_queue(&self) -> usize {
        self.shared.config.session_queue.max(1)
    }

    /// A session's outbound queue, bounded as [`RoomConfig::session_queue`]
    /// and [`RoomConfig::session_queue_bytes`] say.
    pub fn session_channel(&self) -> (Outbox, Inbox) {
        let (tx, rx) = mpsc::channel(self.session_queue());
        let queued = Arc::new(AtomicUsize::new(0));
        let (held_tx, held) = watch::channel(());
        let outbox = Outbox {
            tx,
            queued: Arc::clone(&queued),
            max_bytes: self.shared.config.session_queue_bytes.max(1),
            _held: held_tx,
        };
        (outbox, Inbox { rx, queued, held })
    }

    /// How many rooms are loaded now.
    pub fn open_rooms(&self) -> usize {
        self.shared.lock().rooms.len()
    }

    /// Stop every room after it commits what it holds, and wait for all of
    /// them. Later calls get [`RoomError::ShuttingDown`].
    pub async fn shutdown(&self) {
        let handles: Vec<RoomHandle> = {
            let mut registry = self.shared.lock();
            registry.stop_guard = None;
            registry.rooms.drain().map(|(_, h)| h).collect()
        };
        for handle in handles {
            let _ = handle.tx.send(Command::Shutdown).await;
        }
        // Resolves once every room task has dropped its guard.
        let _ = self.shared.all_stopped.lock().await.recv().await;
    }

    async fn call<T>(
        &self,
        id: &DocumentId,
        command: impl Fn(Reply<T>) -> Command,
    ) -> Result<T, RoomError> {
        for _ in 0..ATTEMPTS {
            let handle = self.handle(id)?;
            let (reply, answer) = oneshot::channel();
            if handle.tx.send(command(reply)).await.is_err() {
                self.shared.forget(id, handle.generation);
                continue;
            }
            match answer.await {
                Ok(Err(RoomError::Closed)) | Err(_) => {
                    self.shared.forget(id, handle.generation);
                }
                Ok(result) => return result,
            }
        }
        Err(RoomError::Closed)
    }

    /// The room for `id`, spawning it if needed. The room loads the document
    /// itself, so no lock is held while the store is read and concurrent
    /// first requests queue on the same room instead of loading twice.
    fn handle(&self, id: &DocumentId) -> Result<RoomHandle, RoomError> {
        let mut registry = self.shared.lock();
        if let Some(handle) = registry.rooms.get(id) {
            return Ok(handle.clone());
        }
        let guard = registry.stop_guard.clone().ok_or(RoomError::ShuttingDown)?;
        let generation = self.shared.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.shared.config.queue);
        let handle = RoomHandle { generation, tx };
        registry.rooms.insert(id.clone(), handle.clone());
        drop(registry);
        room::spawn(Arc::clone(&self.shared), id.clone(), generation, rx, guard);
        Ok(handle)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every critical section is a single insert/remove), so keep going.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drop the registry entry of room `generation`, unless a newer room
    /// has replaced it already.
    fn forget(&self, id: &DocumentId, generation: u64) {
        let mut registry = self.lock();
        if registry
            .rooms
            .get(id)
            .is_some_and(|h| h.generation == generation)
        {
            registry.rooms.remove(id);
        }
    }
}

#[async_trait::async_trait]
impl LiveContent for Rooms {
    async fn read_loaded(&self, id: &DocumentId) -> Option<(u64, String)> {
        self.read_if_loaded(id).await.map(|d| (d.rev, d.content))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(frames: usize, max_bytes: usize) -> (Outbox, Inbox) {
        let (tx, rx) = mpsc::channel(frames);
        let queued = Arc::new(AtomicUsize::new(0));
        let (held_tx, held) = watch::channel(());
        let outbox = Outbox {
            tx,
            queued: Arc::clone(&queued),
            max_bytes,
            _held: held_tx,
        };
        (outbox, Inbox { rx, queued, held })
    }

    fn frame(bytes: usize) -> Frame {
        "x".repeat(bytes).into()
    }

    #[test]
    fn outbound_queues_are_bounded_in_bytes_and_frames() {
        let (out, mut inbox) = outbox(8, 100);
        assert_eq!(out.push(frame(60)), Ok(()));
        assert_eq!(out.push(frame(40)), Ok(()));
        assert_eq!(out.push(frame(1)), Err(Refused::Full), "101 bytes queued");
        assert_eq!(inbox.try_recv().map(|f| f.len()), Some(60));
        assert_eq!(out.push(frame(60)), Ok(()));
        assert_eq!(out.push(frame(1)), Err(Refused::Full));
        while inbox.try_recv().is_some() {}
        // An empty queue takes one frame larger than the bound.
        assert_eq!(out.push(frame(500)), Ok(()));
        assert_eq!(out.push(frame(1)), Err(Refused::Full));
        assert!(inbox.try_recv().is_some());
        for _ in 0..8 {
            assert_eq!(out.push(frame(1)), Ok(()));
        }
        assert_eq!(
            out.push(frame(1)),
            Err(Refused::Full),
            "nine frames in eight"
        );
        assert_eq!(inbox.queued.load(Ordering::Relaxed), 8);
    }

    #[tokio::test]
    async fn a_closed_connection_is_told_apart_and_a_released_one_hears_at_once() {
        let (out, inbox) = outbox(8, 100);
        drop(inbox);
        assert_eq!(out.push(frame(1)), Err(Refused::Closed));

        let (out, mut inbox) = outbox(8, 100);
        assert_eq!(out.push(frame(1)), Ok(()));
        let released = tokio::spawn(inbox.released());
        drop(out);
        tokio::time::timeout(std::time::Duration::from_secs(10), released)
            .await
            .expect("released resolves when the room lets go")
            .unwrap();
        // What was queued before is still delivered.
        assert!(inbox.recv().await.is_some());
        assert!(inbox.recv().await.is_none());
    }
}
