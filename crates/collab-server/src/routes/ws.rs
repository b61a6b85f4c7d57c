//! `GET /ws/documents/{id}`: one live editing session (docs/protocol.md §3).
//!
//! The connection task is a thin adapter: it parses frames with the engine's
//! pure `parse_client_message`, enforces the per-connection limits (ops per
//! second, presence coalescing, message size, keepalive), hands ops and
//! presence to the document's room, and writes whatever the room queues for
//! it. Everything about the document itself happens in the room.
//!
//! Access (docs/protocol.md §6): the token is checked once, when the
//! connection opens, and again on each `auth` frame; in between the
//! session's role gates every `op` and `presence`, and the connection
//! closes when the token is revoked or expires.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use collab_ot::protocol::{
    parse_client_message, ClientMessage, ErrorCode, Role, ServerMessage, User,
};
use futures_util::SinkExt;
use tokio::sync::watch;
use tracing::{debug, info_span, Instrument};

use crate::app::AppState;
use crate::auth::{bearer, Access, Refused, SessionAccess, TokenError};
use crate::domain::{ClientId, DocumentId};
use crate::rate::TokenBucket;
use crate::rooms::{
    error_frame, Frame, Inbox, JoinRequest, Joined, RoomError, SessionGrant, SessionLink,
};

/// Close code 1012 "service restart": the server is stopping; reconnect.
const CLOSE_RESTART: u16 = 1012;
/// Close code 1008 "policy violation", after a refusing error frame.
const CLOSE_POLICY: u16 = 1008;
/// Close code 1001 "going away": the peer went silent (no pong).
const CLOSE_IDLE: u16 = 1001;
/// `auth` frames one connection may send per second (each costs a
/// signature check).
const MAX_AUTH_PER_SECOND: f64 = 2.0;
/// Close code 1009 "message too big", after a frame beyond the hard cap.
const CLOSE_TOO_BIG: u16 = 1009;
/// How long one frame may take to reach a client before it is given up on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most frames written with one flush.
const MAX_WRITE_BATCH: usize = 64;
/// How long a write may still take once the room has let go of the session
/// (a reading client's last frames go out well within it).
const RELEASE_GRACE: Duration = Duration::from_secs(1);
/// How long to wait for the client's half of the closing handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Frames above the configured limit but below this are read and answered
/// with `too_large`; beyond it the socket layer gives up on the connection.
fn hard_cap(limit: usize) -> usize {
    limit.saturating_mul(4).max(limit + 64 * 1024)
}

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    // Browsers cannot set headers on a WebSocket: `?token=` is the usual way.
    let access = match query.get("token") {
        _ if state.auth.is_open() => Ok(Access::Open),
        Some(token) => state.auth.authenticate(Some(token)),
        None => bearer(&headers).and_then(|token| state.auth.authenticate(token)),
    };
    let limit = state.limits.max_message_bytes;
    ws.max_message_size(hard_cap(limit))
        .max_frame_size(hard_cap(limit))
        // Small buffers: an idle connection should cost a few KiB, not 128.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .on_upgrade(move |socket| {
            let span = info_span!("ws", document = %id);
            Connection::start(socket, state, id, query, access).instrument(span)
        })
}

/// Why a connection is refused before it joins.
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    /// "No such document" is for admins of the id (and open mode) only;
    /// anyone else gets the refusal an ungranted document gets, so a token
    /// cannot probe which documents exist.
    fn concealed(self, session: &SessionAccess) -> Refusal {
        if self.code != ErrorCode::NotFound || session.role() == Role::Admin {
            return self;
        }
        Refusal {
            code: ErrorCode::Forbidden,
            message: "this token does not grant access to this document".to_owned(),
        }
    }
}

struct Connection {
    socket: WebSocket,
    state: AppState,
    closing: watch::Receiver<bool>,
}

impl Connection {
    async fn start(
        socket: WebSocket,
        state: AppState,
        id: String,
        query: HashMap<String, String>,
        access: Result<Access, TokenError>,
    ) {
        let closing = state.closing.clone();
        let mut conn = Connection {
            socket,
            state,
            closing,
        };
        // Who first: a missing or bad token is refused whatever it asks for.
        let session = match access {
            Ok(access) => SessionAccess::new(access, &id),
            Err(e) => {
                let code = ErrorCode::Unauthorized;
                return conn
                    .refuse(Refusal {
                        code,
                        message: e.to_string(),
                    })
                    .await;
            }
        };
        let session = match session {
            Ok(session) => session,
            Err(r) => {
                return conn
                    .refuse(Refusal {
                        code: r.code,
                        message: r.message,
                    })
                    .await;
            }
        };
        let (doc, client_id, since) = match parse_target(&id, &query) {
            Ok(target) => target,
            Err(refusal) => return conn.refuse(refusal.concealed(&session)).await,
        };
        let span = info_span!(
            "session",
            client = %client_id.as_str(),
            user = session.access().user_id().unwrap_or("-"),
        );
        async move {
            let (outbound, rx) = conn.state.rooms.session_channel();
            let request = JoinRequest {
                client_id,
                since,
                outbound,
                grant: SessionGrant {
                    user_id: session.access().user_id().map(str::to_owned),
                    role: session.role(),
                    exp: session.access().exp(),
                },
            };
            match conn.state.rooms.join(&doc, request).await {
                Ok(joined) => conn.serve(joined, rx, session).await,
                Err(RoomError::NotFound) => {
                    let refusal = Refusal {
                        code: ErrorCode::NotFound,
                        message: format!("no document with id {doc}"),
                    };
                    conn.refuse(refusal.concealed(&session)).await
                }
                Err(e @ RoomError::ClientTaken(_)) => {
                    let refusal = Refusal {
                        code: ErrorCode::Forbidden,
                        message: e.to_string(),
                    };
                    conn.refuse(refusal).await
                }
                Err(e) => {
                    debug!(error = %e, "could not join");
                    conn.close(CLOSE_RESTART, "try again").await;
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn serve(mut self, joined: Joined, mut outbound: Inbox, mut session: SessionAccess) {
        let Joined { welcome, link } = joined;
        if self.send(welcome).await.is_err() {
            return link.leave().await;
        }
        let limits = self.state.limits;
        let auth = self.state.auth.clone();
        let mut revoked = auth.revocations().subscribe();
        let expiry = tokio::time::sleep_until(until_unix(session.deadline(&auth)));
        tokio::pin!(expiry);
        let mut refreshes = TokenBucket::new(MAX_AUTH_PER_SECOND);
        let mut ops = TokenBucket::new(f64::from(limits.max_ops_per_second));
        let mut presence = Coalesced::new(limits.max_presence_per_second);
        // Keepalive: a peer silent for a quarter of the idle time is pinged
        // (checked that often), so a live peer's pong always lands within
        // about half of it; one silent for all of it (no pong either) is gone.
        let mut heard = Instant::now();
        let quarter = limits.ws_idle / 4;
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + quarter, quarter);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = presence.due();
            tokio::select! {
                frame = outbound.recv() => match frame {
                    Some(frame) => {
                        if self.send_queued(frame, &mut outbound).await.is_err() {
                            break;
                        }
                    }
                    // The room let go of this session (deleted, too slow, stopping).
                    None => {
                        self.close(CLOSE_POLICY, "session ended by the server").await;
                        break;
                    }
                },
                message = self.socket.recv() => {
                    heard = Instant::now();
                    let text = match message {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Binary(_))) => {
                            let reply = error_frame(ErrorCode::BadMessage, "frames must be JSON text", None);
                            if self.send(reply).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Close(_))) | None => break,
                        Some(Err(e)) => {
                            // Beyond even the hard cap, or a broken socket.
                            debug!(error = %e, "socket error");
                            let message = format!(
                                "message too large: the limit is {} bytes",
                                limits.max_message_bytes
                            );
                            if self.send(error_frame(ErrorCode::TooLarge, &message, None)).await.is_ok() {
                                self.close(CLOSE_TOO_BIG, "message too large").await;
                            }
                            break;
                        }
                    };
                    if text.len() > limits.max_message_bytes {
                        let message = format!(
                            "message of {} bytes; the limit is {}",
                            text.len(),
                            limits.max_message_bytes
                        );
                        if self.send(error_frame(ErrorCode::TooLarge, &message, None)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    // A frame the session's role does not allow is refused
                    // like a malformed one: answered, nothing else happens.
                    let parsed = parse_client_message(&text)
                        .and_then(|message| session.permits(&message).map(|()| message));
                    let sent = match parsed {
                        Err(refused) => self.send(refused.to_message().to_json().into()).await,
                        Ok(ClientMessage::Auth { token }) => {
                            if !refreshes.try_take(1.0, Instant::now()) {
                                let message = "too many auth frames; slow down";
                                self.send(error_frame(ErrorCode::RateLimited, message, None)).await
                            } else {
                                match session.refresh(&auth, &token) {
                                    Ok((role, exp)) => {
                                        expiry.as_mut().reset(until_unix(session.deadline(&auth)));
                                        debug!(%role, "token refreshed");
                                        self.send(ServerMessage::Auth { role, exp }.to_json().into()).await
                                    }
                                    Err(r) if r.close => {
                                        self.end(r).await;
                                        break;
                                    }
                                    Err(r) => self.send(error_frame(r.code, &r.message, None)).await,
                                }
                            }
                        }
                        Ok(ClientMessage::Op { rev, seq, op }) => {
                            if ops.try_take(1.0, Instant::now()) {
                                if link.submit(seq, rev, op).await.is_err() {
                                    // The room has ended: deliver its last words.
                                    self.drain(&mut outbound).await;
                                    break;
                                }
                                Ok(())
                            } else {
                                let message = format!(
                                    "more than {} ops per second; slow down",
                                    limits.max_ops_per_second
                                );
                                self.send(error_frame(ErrorCode::RateLimited, &message, Some(seq))).await
                            }
                        }
                        Ok(ClientMessage::Presence { selection, user }) => {
                            presence.set(selection, session.presence_user(user));
                            if presence.forward_now(&link).await.is_err() {
                                self.drain(&mut outbound).await;
                                break;
                            }
                            Ok(())
                        }
                    };
                    if sent.is_err() {
                        break;
                    }
                },
                () = sleep_until(due), if due.is_some() => {
                    if presence.forward_now(&link).await.is_err() {
                        self.drain(&mut outbound).await;
                        break;
                    }
                }
                _ = keepalive.tick() => match keepalive_step(heard.elapsed(), limits.ws_idle) {
                    Keepalive::Wait => {}
                    Keepalive::Ping => {
                        if self.ping().await.is_err() {
                            break;
                        }
                    }
                    Keepalive::Close => {
                        debug!("closing a silent connection");
                        self.close(CLOSE_IDLE, "no answer to pings").await;
                        break;
                    }
                },
                _ = self.closing.changed() => {
                    self.close(CLOSE_RESTART, "server restarting").await;
                    break;
                }
                changed = revoked.changed(), if !auth.is_open() => {
                    if changed.is_err() {
                        break;
                    }
                    if let Err(r) = session.check_live(&auth) {
                        self.end(r).await;
                        break;
                    }
                }
                () = &mut expiry, if !auth.is_open() => match session.check_live(&auth) {
                    Err(r) => {
                        self.end(r).await;
                        break;
                    }
                    // Woke a little early (clocks): look again in a moment.
                    Ok(()) => expiry.as_mut().reset(
                        tokio::time::Instant::now() + Duration::from_millis(100),
                    ),
                },
            }
        }
        link.leave().await;
    }

    /// Ends a live session whose access is gone: the error, then close.
    async fn end(&mut self, r: Refused) {
        debug!(code = ?r.code, message = %r.message, "ending the session");
        if self
            .send(error_frame(r.code, &r.message, None))
            .await
            .is_ok()
        {
            self.close(CLOSE_POLICY, "access ended").await;
        }
    }

    /// Sends the protocol's error, then closes: the session cannot go on.
    async fn refuse(mut self, refusal: Refusal) {
        let _ = self
            .send(error_frame(refusal.code, &refusal.message, None))
            .await;
        self.close(CLOSE_POLICY, "refused").await;
    }

    async fn ping(&mut self) -> Result<(), ()> {
        let ping = self.socket.send(Message::Ping(Default::default()));
        match tokio::time::timeout(WRITE_TIMEOUT, ping).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(()),
        }
    }

    /// Sends one frame. A client that does not read for `WRITE_TIMEOUT`
    /// is given up on, so it cannot pin its queue and task forever.
    async fn send(&mut self, frame: Frame) -> Result<(), ()> {
        let write = self.socket.send(text(frame));
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(()),
        }
    }

    /// Sends `first` and whatever else is already queued, with one flush:
    /// under load a connection wakes once and writes many frames in one
    /// syscall, instead of one wake-up and one write per frame. A write
    /// still stuck a moment after the room let go of this session (it was
    /// too slow) is abandoned then, not after the whole write timeout.
    async fn send_queued(&mut self, first: Frame, outbound: &mut Inbox) -> Result<(), ()> {
        let released = outbound.released();
        let socket = &mut self.socket;
        let write = async move {
            socket.feed(text(first)).await?;
            for _ in 1..MAX_WRITE_BATCH {
                match outbound.try_recv() {
                    Some(frame) => socket.feed(text(frame)).await?,
                    None => break,
                }
            }
            socket.flush().await
        };
        let given_up = async {
            released.await;
            tokio::time::sleep(RELEASE_GRACE).await;
        };
        tokio::select! {
            written = tokio::time::timeout(WRITE_TIMEOUT, write) => match written {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) | Err(_) => Err(()),
            },
            () = given_up => Err(()),
        }
    }

    /// Sends what the room queued before it let go of this session.
    async fn drain(&mut self, outbound: &mut Inbox) {
        while let Some(frame) = outbound.recv().await {
            if self.send(frame).await.is_err() {
                return;
            }
        }
        self.close(CLOSE_POLICY, "session ended by the server")
            .await;
    }

    /// The closing handshake: send our close frame, then wait (briefly) for
    /// the client's. Dropping a socket with unread input makes the kernel
    /// reset the connection, which can destroy the frames just sent (such
    /// as a `document_deleted` error).
    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        if tokio::time::timeout(WRITE_TIMEOUT, self.socket.send(frame))
            .await
            .is_err()
        {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(message)) = self.socket.recv().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// How long until Unix second `at` (plus its fraction, so the wake-up is
/// never early); a far future for `None`.
fn until_unix(at: Option<u64>) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let Some(at) = at else {
        return now + Duration::from_secs(365 * 24 * 3600);
    };
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now + Duration::from_secs(at).saturating_sub(unix_now)
}

fn text(frame: Frame) -> Message {
    Message::Text(Utf8Bytes::from(frame.as_ref()))
}

/// The document, client id and resume point a connection asks for.
fn parse_target(
    id: &str,
    query: &HashMap<String, String>,
) -> Result<(DocumentId, ClientId, Option<u64>), Refusal> {
    let doc = DocumentId::parse(id).ok_or_else(|| Refusal {
        code: ErrorCode::NotFound,
        message: "no document with this id".to_owned(),
    })?;
    let bad = |message: &str| Refusal {
        code: ErrorCode::BadMessage,
        message: message.to_owned(),
    };
    let client_id = match query.get("client_id") {
        None => ClientId::generate(),
        Some(c) => {
            ClientId::parse(c).ok_or_else(|| bad("client_id must match [A-Za-z0-9_-]{1,64}"))?
        }
    };
    let since = query
        .get("since")
        .map(|s| s.parse::<u64>())
        .transpose()
        .map_err(|_| bad("since must be a non-negative integer revision"))?;
    Ok((doc, client_id, since))
}

/// What the keepalive does at a check (one every quarter of `idle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keepalive {
    Wait,
    Ping,
    Close,
}

/// A peer silent for a quarter of `idle` is pinged, one silent for all of
/// it is closed. Pinging at a quarter, checked every quarter, keeps a live
/// peer's silence under about half of `idle`, far from the close.
fn keepalive_step(silent: Duration, idle: Duration) -> Keepalive {
    if silent >= idle {
        Keepalive::Close
    } else if silent >= idle / 4 {
        Keepalive::Ping
    } else {
        Keepalive::Wait
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// A connection's presence, coalesced: only the latest selection matters,
/// so updates beyond the per-second budget are merged and the result passed
/// on when the budget allows, never refused and never queued up.
struct Coalesced {
    bucket: TokenBucket,
    pending: Option<(Option<[usize; 2]>, Option<User>)>,
    due: Option<Instant>,
}

impl Coalesced {
    fn new(per_second: u32) -> Self {
        Coalesced {
            bucket: TokenBucket::new(f64::from(per_second)),
            pending: None,
            due: None,
        }
    }

    /// Records an update; a `user` is kept until a later one replaces it.
    fn set(&mut self, selection: Option<[usize; 2]>, user: Option<User>) {
        let user = user.or_else(|| self.pending.take().and_then(|(_, u)| u));
        self.pending = Some((selection, user));
    }

    /// When a held-back update may go out.
    fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Passes the pending update to the room if the budget allows, or
    /// schedules it for when it will.
    async fn forward_now(&mut self, link: &SessionLink) -> Result<(), crate::rooms::RoomGone> {
        let now = Instant::now();
        if self.pending.is_none() {
            self.due = None;
            return Ok(());
        }
        if !self.bucket.try_take(1.0, now) {
            self.due = Some(self.bucket.next_token_at(now));
            return Ok(());
        }
        self.due = None;
        let (selection, user) = self.pending.take().expect("checked above");
        let user = user.map(|u| serde_json::to_value(u).unwrap_or_default());
        link.presence(selection, user).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that answers each ping within `rtt` is never closed, however
    /// late the checks run (up to a quarter of the interval); one that never
    /// answers is closed within about a quarter past the idle time.
    #[test]
    fn keepalive_keeps_answering_peers_and_closes_silent_ones() {
        let idle = Duration::from_secs(60);
        let check = idle / 4;
        for rtt_ms in [0, 1, 50, 2_000, 10_000] {
            for jitter_ms in [0, 7, 300, 3_000] {
                let rtt = Duration::from_millis(rtt_ms);
                let mut heard = Duration::ZERO;
                let mut pong_at = None;
                for tick in 1..200u32 {
                    let now = check * tick + Duration::from_millis(jitter_ms * u64::from(tick % 2));
                    if let Some(at) = pong_at.take_if(|at| *at <= now) {
                        heard = at;
                    }
                    match keepalive_step(now - heard, idle) {
                        Keepalive::Close => panic!("closed a live peer (rtt {rtt:?})"),
                        Keepalive::Ping => pong_at = pong_at.or(Some(now + rtt)),
                        Keepalive::Wait => {}
                    }
                }
            }
        }
        let closed_at = (1..)
            .map(|tick| check * tick)
            .find(|t| keepalive_step(*t, idle) == Keepalive::Close);
        assert_eq!(closed_at, Some(idle));
    }

    #[test]
    fn coalesced_presence_keeps_the_latest_selection_and_the_last_user() {
        let mut p = Coalesced::new(1);
        let user = User {
            name: "A".into(),
            color: "#f00".into(),
        };
        p.set(Some([1, 1]), Some(user.clone()));
        p.set(Some([2, 2]), None);
        assert_eq!(p.pending, Some((Some([2, 2]), Some(user))));
        p.set(None, None);
        assert_eq!(p.pending.as_ref().map(|(s, _)| *s), Some(None));
    }

    #[test]
    fn targets_are_validated() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert!(parse_target("doc", &q(&[("client_id", "a-1"), ("since", "3")])).is_ok());
        let refused = |id, pairs: &[(&str, &str)]| parse_target(id, &q(pairs)).err().unwrap().code;
        assert_eq!(refused("bad id", &[]), ErrorCode::NotFound);
        assert_eq!(
            refused("doc", &[("client_id", "no spaces")]),
            ErrorCode::BadMessage
        );
        assert_eq!(refused("doc", &[("since", "-1")]), ErrorCode::BadMessage);
        assert_eq!(refused("doc", &[("since", "x")]), ErrorCode::BadMessage);
    }
}
