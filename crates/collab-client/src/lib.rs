//! A Rust client for `collab`: join a document over WebSocket, edit it
//! locally, see everyone else's edits and cursors, and survive dropped
//! connections without losing or doubling an edit.
//!
//! The protocol logic is the engine's [`collab_ot::Client`] state machine; this
//! crate only adds the socket, a task that owns it, and reconnection. After a
//! drop it reconnects with `since` = the last revision it saw, recognises its
//! own committed op in the resume list, and resends what is still
//! unacknowledged under the same `(client_id, seq)`, so the server applies
//! each edit exactly once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), collab_client::Error> {
//! use collab_client::{Operation, Options, Session};
//!
//! let mut session = Session::connect("http://127.0.0.1:8000", "notes", Options::default()).await?;
//! session.edit(Operation::insert(0, "hello ")).await?;
//! session.wait_synced().await?;
//! while let Some(event) = session.next_event().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

mod connection;

use std::time::Duration;

pub use collab_ot::protocol::{ErrorCode, PeerInfo, User};
pub use collab_ot::{ClientError, Operation, Rope};
use tokio::sync::{mpsc, oneshot, watch};

/// How a session connects and reconnects.
#[derive(Debug, Clone)]
pub struct Options {
    /// A stable id (`[A-Za-z0-9_-]{1,64}`); the server makes one up when absent.
    pub client_id: Option<String>,
    /// Shown to peers next to this client's cursor.
    pub user: Option<User>,
    /// First wait before reconnecting; doubles up to `max_reconnect_delay`.
    pub reconnect_delay: Duration,
    pub max_reconnect_delay: Duration,
    /// Events kept for [`Session::next_event`]. When full, the session stops
    /// reading the socket until events are taken (the server may then drop
    /// the connection; the session resumes it).
    pub event_capacity: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            client_id: None,
            user: None,
            reconnect_delay: Duration::from_millis(50),
            max_reconnect_delay: Duration::from_secs(2),
            event_capacity: 4096,
        }
    }
}

/// Something that happened to the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Connected (again); `peers` is who else is here.
    Welcome {
        rev: u64,
        peers: Vec<PeerInfo>,
    },
    /// Another client's edit, as applied to the local content.
    Remote {
        rev: u64,
        op: Operation,
        client_id: Option<String>,
        seq: Option<u64>,
    },
    /// Our local edits since the last `Sent` went out as op `seq`, based on
    /// revision `rev` (a resend after a reconnect is not reported again).
    Sent {
        seq: u64,
        rev: u64,
    },
    /// The server stored our op `seq` as revision `rev`.
    Acked {
        seq: u64,
        rev: u64,
    },
    /// The local content was replaced by the server's (after our edit was
    /// refused, or a resume the server could not serve from its history).
    Reset {
        rev: u64,
    },
    Presence {
        client_id: String,
        selection: Option<[usize; 2]>,
        user: serde_json::Value,
    },
    Leave {
        client_id: String,
    },
    /// The server refused something; see `code`.
    Error {
        code: ErrorCode,
        message: String,
        seq: Option<u64>,
    },
    /// The connection dropped; the session is reconnecting.
    Disconnected,
    /// The session ended for good: the document is gone or access was refused.
    Closed {
        code: ErrorCode,
    },
}

/// The session's state at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Last server revision seen.
    pub rev: u64,
    /// Local edits not yet acknowledged.
    pub pending: bool,
    pub connected: bool,
    /// Ended for good (see [`Event::Closed`]).
    pub closed: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("the server refused the session: {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the session has ended")]
    Closed,
    #[error(transparent)]
    Edit(#[from] ClientError),
}

/// Builds an edit from the current local content.
pub(crate) type EditFn = Box<dyn FnOnce(&collab_ot::Rope) -> Option<Operation> + Send>;

pub(crate) enum Command {
    Edit(EditFn, oneshot::Sender<Result<(), ClientError>>),
    Presence(Option<[usize; 2]>),
    Content(oneshot::Sender<String>),
    /// Drop the socket now, as a network failure would.
    Drop,
}

/// A session's events, taken out of it with [`Session::take_events`].
pub struct Events(mpsc::Receiver<Event>);

impl Events {
    /// The next event, or `None` once the session has ended.
    pub async fn next(&mut self) -> Option<Event> {
        self.0.recv().await
    }
}

/// One client's live view of one document.
pub struct Session {
    client_id: String,
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    status: watch::Receiver<Status>,
}

impl Session {
    /// Connects to `base_url` (`http://host:port` or `ws://host:port`) and
    /// joins document `doc_id`; returns once the welcome has arrived.
    pub async fn connect(base_url: &str, doc_id: &str, options: Options) -> Result<Session, Error> {
        let (commands, events, status, client_id) =
            connection::start(base_url, doc_id, options).await?;
        Ok(Session {
            client_id,
            commands,
            events,
            status,
        })
    }

    /// The id the server knows this client by.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Applies `op` to the local content now and sends it as soon as the
    /// protocol allows (one op in flight; later edits are composed).
    pub async fn edit(&self, op: Operation) -> Result<(), Error> {
        self.edit_with(move |_| Some(op)).await
    }

    /// Like [`Session::edit`], with the op built from the local content as
    /// it is at that moment: remote edits that arrive meanwhile cannot make
    /// it stale. `None` skips the edit.
    pub async fn edit_with(
        &self,
        build: impl FnOnce(&collab_ot::Rope) -> Option<Operation> + Send + 'static,
    ) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Edit(Box::new(build), tx)).await?;
        Ok(rx.await.map_err(|_| Error::Closed)??)
    }

    /// Shares this client's selection (`[anchor, head]`, in characters of
    /// the local content) with its peers. The session keeps it next to the
    /// same characters through later edits, local and remote, and shares it
    /// again by itself after a reconnect.
    pub async fn set_presence(&self, selection: Option<[usize; 2]>) -> Result<(), Error> {
        self.send(Command::Presence(selection)).await
    }

    /// The local content, with local edits applied.
    pub async fn content(&self) -> Result<String, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Content(tx)).await?;
        rx.await.map_err(|_| Error::Closed)
    }

    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// Waits until every local edit is acknowledged.
    pub async fn wait_synced(&self) -> Result<(), Error> {
        self.wait_for(|s| s.connected && !s.pending)
            .await
            .map(|_| ())
    }

    /// Waits until the session has seen revision `rev`.
    pub async fn wait_for_rev(&self, rev: u64) -> Result<(), Error> {
        self.wait_for(|s| s.rev >= rev).await.map(|_| ())
    }

    /// Waits for a status that satisfies `ready`.
    pub async fn wait_for(&self, ready: impl Fn(&Status) -> bool) -> Result<Status, Error> {
        let mut status = self.status.clone();
        let seen = status
            .wait_for(|s| ready(s) || s.closed)
            .await
            .map_err(|_| Error::Closed)?;
        if ready(&seen) {
            Ok(*seen)
        } else {
            Err(Error::Closed)
        }
    }

    /// The next event, or `None` once the session has ended (or its events
    /// were taken with [`Session::take_events`]).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Hands the event stream to someone else, e.g. a task that drains it
    /// while this one edits. Events must be taken: when
    /// `Options::event_capacity` of them wait, the session stops reading.
    pub fn take_events(&mut self) -> Events {
        let (_, closed) = mpsc::channel(1);
        Events(std::mem::replace(&mut self.events, closed))
    }

    /// Drops the connection as a network failure would; the session
    /// reconnects and resumes by itself. For tests and demos.
    pub async fn drop_connection(&self) -> Result<(), Error> {
        self.send(Command::Drop).await
    }

    async fn send(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).await.map_err(|_| Error::Closed)
    }
}
