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
//!
//! # Access tokens
//!
//! Against a server in token mode (`COLLAB_AUTH_SECRET` or a public key), a
//! session needs a token (a JWT naming the user in `sub` and the documents it
//! may use); [`Options::token`] is sent as `?token=` (URL-encoded) on every
//! connection. The `welcome` tells the session its [`Role`] on the document
//! and when the token expires; both are in [`Session::status`], and
//! [`Event::Auth`] reports every later change.
//!
//! Tokens are short-lived, so give the session a [`TokenRefresher`]: a
//! function that fetches a new token for the same user, typically from the
//! application's backend.
//!
//! ```no_run
//! # async fn fetch_token_from_my_backend() -> Result<String, std::io::Error> { todo!() }
//! # async fn demo() -> Result<(), collab_client::Error> {
//! use collab_client::{Error, Options, Role, Session, TokenRefresher};
//!
//! let options = Options {
//!     token: Some(fetch_token_from_my_backend().await.map_err(|e| Error::Connect(e.to_string()))?),
//!     refresh_token: Some(TokenRefresher::new(fetch_token_from_my_backend)),
//!     ..Options::default()
//! };
//! let session = Session::connect("https://collab.example", "notes", options).await?;
//! if session.status().role == Some(Role::Read) {
//!     println!("read only");
//! }
//! // … later: why did it end?
//! match session.closed().await {
//!     Error::Unauthorized(message) => println!("signed out: {message}"),
//!     Error::Forbidden(message) => println!("no access: {message}"),
//!     other => println!("ended: {other}"),
//! }
//! # Ok(()) }
//! ```
//!
//! * **When it refreshes.** At the later of *60 s before `exp`* and *¾ of the
//!   token's remaining lifetime* (a one-hour token is renewed a minute before
//!   it ends, a two-minute one after 90 s, a 40-second one after 30 s; the
//!   same rule as the JavaScript client), never in the past. The new token
//!   is sent as an `auth` frame; the server's answer carries the new role and
//!   expiry, which apply at once ([`Event::Auth`]), and the next refresh is
//!   timed from it. Every later connection uses the newest token; one about
//!   to run out (under 5 s left) while disconnected is renewed before
//!   reconnecting. Timing uses the local clock (the server allows some skew,
//!   30 s by default).
//! * **When refreshing fails** (an `Err` or an empty token), the session keeps
//!   its current token, reports [`Event::TokenRefreshFailed`] and asks again
//!   after a quarter of the time left, between 1 s and 5 s (every 5 s once
//!   `exp` has passed), until it succeeds or the server ends the session. Without a refresher the session ends at
//!   `exp` (the server's `unauthorized` "token expired").
//! * With no [`Options::token`] but a refresher, the first token comes from
//!   the refresher. [`Session::set_token`] switches to a token at any time.
//! * **Read only.** While the role is [`Role::Read`], [`Session::edit`] fails
//!   with [`Error::ReadOnly`] and changes nothing, and presence is kept but
//!   not sent (the server refuses both from a reader). Remote edits keep
//!   arriving. If the role drops to read while local edits are unsynced (an
//!   `auth` answer, a `welcome`, or the server's `forbidden` for the op in
//!   flight), those edits are dropped, never resent, and the session
//!   reconnects without `since` to take the server's content: an
//!   [`Event::Error`] with [`ErrorCode::Forbidden`] says so, then
//!   [`Event::Reset`] once the content is the server's again.
//! * **Final refusals.** `unauthorized` at any time (a missing, bad, expired
//!   or revoked token, or a refresh for another user) and `forbidden` before
//!   the `welcome` or in answer to a refresh (no access to this document) end
//!   the session: no reconnect; [`Event::Closed`] is the last event, and
//!   [`Session::closed`] (and every later call) returns
//!   [`Error::Unauthorized`] or [`Error::Forbidden`] with the server's
//!   message (e.g. "token expired", "token revoked"). At connect time,
//!   [`Session::connect`] returns that error itself.

mod connection;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use collab_ot::protocol::{ErrorCode, PeerInfo, Role, User};
pub use collab_ot::{ClientError, Operation, Rope};
use tokio::sync::{mpsc, oneshot, watch};

/// What a [`TokenRefresher`] returns: a new token, or why there is none.
pub type RefreshFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Fetches a fresh token for the same user, e.g. from the application's
/// backend. Called by the session before its token expires (see the crate
/// docs for when); cheap to clone.
#[derive(Clone)]
pub struct TokenRefresher(Arc<dyn Fn() -> RefreshFuture + Send + Sync>);

impl TokenRefresher {
    /// Wraps an async function; its error is reported as text in
    /// [`Event::TokenRefreshFailed`].
    pub fn new<F, Fut, E>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        TokenRefresher(Arc::new(move || {
            let fetching = fetch();
            Box::pin(async move { fetching.await.map_err(|e| e.to_string()) })
        }))
    }

    /// Asks for a token now.
    pub fn fetch(&self) -> RefreshFuture {
        (self.0)()
    }
}

impl fmt::Debug for TokenRefresher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenRefresher(..)")
    }
}

/// How a session connects and reconnects.
#[derive(Clone)]
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
    /// The access token (JWT) for a server in token mode; `None` for one in
    /// open mode. Sent URL-encoded as `?token=` on every connection.
    pub token: Option<String>,
    /// Gets the next token before the current one expires (see the crate
    /// docs). Without it the session ends when its token expires.
    pub refresh_token: Option<TokenRefresher>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            client_id: None,
            user: None,
            reconnect_delay: Duration::from_millis(50),
            max_reconnect_delay: Duration::from_secs(2),
            event_capacity: 4096,
            token: None,
            refresh_token: None,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token itself: options end up in logs.
        f.debug_struct("Options")
            .field("client_id", &self.client_id)
            .field("user", &self.user)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("event_capacity", &self.event_capacity)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("refresh_token", &self.refresh_token)
            .finish()
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
        /// The `sub` of the token it was sent with; `None` in open mode.
        author: Option<String>,
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
    /// The server refused something; see `code`. Also reports local edits
    /// dropped because the session became read only (`Forbidden`, no `seq`).
    Error {
        code: ErrorCode,
        message: String,
        seq: Option<u64>,
    },
    /// The connection's role or its token's expiry (Unix seconds) changed:
    /// the server answered a refresh, a reconnect's `welcome` said so, or
    /// the server refused an op for the role. The values at connect time
    /// are in [`Session::status`]; this reports changes only.
    Auth {
        role: Option<Role>,
        exp: Option<u64>,
    },
    /// The [`TokenRefresher`] failed; the session keeps its token and asks
    /// again a little later.
    TokenRefreshFailed {
        message: String,
    },
    /// The connection dropped; the session is reconnecting.
    Disconnected,
    /// The session ended for good: the document is gone or access was
    /// refused ([`Session::closed`] says why).
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
    /// The connection's role on the document, from the last `welcome` or
    /// `auth` answer (`Admin` in open mode; `None` from a server without
    /// access control).
    pub role: Option<Role>,
    /// When the token expires, in Unix seconds; `None` in open mode.
    pub exp: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("the server refused the session: {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    /// The token is missing, bad, expired or revoked (or a refresh named
    /// another user): the session has ended. The message is the server's.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The token does not grant this document: the session has ended.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The session's role is `read`: local edits are refused.
    #[error("this session is read only")]
    ReadOnly,
    #[error("the session has ended")]
    Closed,
    #[error(transparent)]
    Edit(#[from] ClientError),
}

impl Error {
    /// The error a session ends with after the server's `code`.
    pub(crate) fn ending(code: ErrorCode, message: String) -> Error {
        match code {
            ErrorCode::Unauthorized => Error::Unauthorized(message),
            ErrorCode::Forbidden => Error::Forbidden(message),
            code => Error::Refused { code, message },
        }
    }
}

/// Builds an edit from the current local content.
pub(crate) type EditFn = Box<dyn FnOnce(&collab_ot::Rope) -> Option<Operation> + Send>;

pub(crate) enum Command {
    Edit(EditFn, oneshot::Sender<Result<(), Error>>),
    Presence(Option<[usize; 2]>),
    Content(oneshot::Sender<String>),
    /// Use this token from now on.
    Token(String),
    /// Drop the socket now, as a network failure would.
    Drop,
}

/// Why a session ended, once it has; shared by the session and its task.
pub(crate) type EndReason = Arc<Mutex<Option<Error>>>;

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
    ended: EndReason,
}

impl Session {
    /// Connects to `base_url` (`http://host:port` or `ws://host:port`) and
    /// joins document `doc_id`; returns once the welcome has arrived. A
    /// refusal is returned as is: [`Error::Unauthorized`],
    /// [`Error::Forbidden`], or [`Error::Refused`] (e.g. `not_found`).
    pub async fn connect(base_url: &str, doc_id: &str, options: Options) -> Result<Session, Error> {
        let started = connection::start(base_url, doc_id, options).await?;
        Ok(Session {
            client_id: started.client_id,
            commands: started.commands,
            events: started.events,
            status: started.status,
            ended: started.ended,
        })
    }

    /// The id the server knows this client by.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Applies `op` to the local content now and sends it as soon as the
    /// protocol allows (one op in flight; later edits are composed). Fails
    /// with [`Error::ReadOnly`], changing nothing, while the role is `read`.
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
        rx.await.map_err(|_| self.end_reason())?
    }

    /// Shares this client's selection (`[anchor, head]`, in characters of
    /// the local content) with its peers. The session keeps it next to the
    /// same characters through later edits, local and remote, and shares it
    /// again by itself after a reconnect. While the role is `read` it is
    /// kept but not sent (the server would refuse it); it goes out if the
    /// role becomes `write` again.
    pub async fn set_presence(&self, selection: Option<[usize; 2]>) -> Result<(), Error> {
        self.send(Command::Presence(selection)).await
    }

    /// Uses `token` from now on: sent as an `auth` frame when connected (the
    /// answer comes as [`Event::Auth`]), and used for every later
    /// connection. A token for another user, or without this document, ends
    /// the session.
    pub async fn set_token(&self, token: impl Into<String>) -> Result<(), Error> {
        self.send(Command::Token(token.into())).await
    }

    /// The local content, with local edits applied.
    pub async fn content(&self) -> Result<String, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Content(tx)).await?;
        rx.await.map_err(|_| self.end_reason())
    }

    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// Why the session ended, once it has ended for good.
    pub fn closed_reason(&self) -> Option<Error> {
        self.ended.lock().expect("end reason lock").clone()
    }

    /// Waits until the session has ended for good and says why (e.g.
    /// [`Error::Unauthorized`] with "token revoked").
    pub async fn closed(&self) -> Error {
        let mut status = self.status.clone();
        let _ = status.wait_for(|s| s.closed).await;
        self.end_reason()
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

    /// Waits for a status that satisfies `ready`; fails with the reason the
    /// session ended if it ends first.
    pub async fn wait_for(&self, ready: impl Fn(&Status) -> bool) -> Result<Status, Error> {
        let mut status = self.status.clone();
        let seen = status
            .wait_for(|s| ready(s) || s.closed)
            .await
            .map_err(|_| self.end_reason())?;
        if ready(&seen) {
            Ok(*seen)
        } else {
            Err(self.end_reason())
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
        self.commands
            .send(command)
            .await
            .map_err(|_| self.end_reason())
    }

    /// Why calls fail once the session's task is gone.
    fn end_reason(&self) -> Error {
        self.closed_reason().unwrap_or(Error::Closed)
    }
}
