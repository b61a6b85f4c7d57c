//! The task behind a [`crate::Session`]: it owns the socket and the engine's
//! client state machine, turns frames into events, and reconnects.
//!
//! Everything that changes the local replica happens on this one task, so the
//! state machine needs no lock; the session talks to it over channels. The
//! task also keeps the session's access: the newest token, the role and
//! expiry the server reported, and when to ask the refresher next.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use collab_ot::protocol::{ClientMessage, ErrorCode, Role, ServerMessage, User};
use collab_ot::{transform_range, Client, Committed, Operation, OutgoingOp, Resumed, Rope};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Command, EditFn, EndReason, Error, Event, Options, Status};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Refresh no later than this before `exp`…
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// …and not before this fraction of the remaining lifetime has passed.
const REFRESH_FRACTION: f64 = 0.75;
/// A failed refresh is tried again after at most this long…
const REFRESH_RETRY: Duration = Duration::from_secs(5);
/// …and at least this long.
const REFRESH_RETRY_MIN: Duration = Duration::from_secs(1);
/// A token with less than this left is renewed before reconnecting.
const STALE_MARGIN: Duration = Duration::from_secs(5);
/// An `auth` frame the server found too soon after another is sent again
/// this much later (the server takes two a second).
const AUTH_RESEND: Duration = Duration::from_secs(1);

/// What ended a connection.
enum Ended {
    /// Reconnect, resuming from the last revision seen.
    Dropped,
    /// Our edit was refused (or would be): drop local edits and reload the
    /// content.
    Reload,
    /// The document is gone or access refused: stop.
    Closed(ErrorCode, String),
    /// The session was dropped by its owner.
    Finished,
}

/// What [`start`] hands to the [`crate::Session`].
pub(crate) struct Started {
    pub commands: mpsc::Sender<Command>,
    pub events: mpsc::Receiver<Event>,
    pub status: watch::Receiver<Status>,
    pub client_id: String,
    pub ended: EndReason,
}

struct Task {
    base: String,
    doc_id: String,
    options: Options,
    client: Client,
    events: mpsc::Sender<Event>,
    status: watch::Sender<Status>,
    connected: bool,
    /// Our last shared selection, moved through every edit since, so a
    /// reconnect can share it again (the server forgot it with the old
    /// connection).
    selection: Option<[usize; 2]>,
    /// The token for the next connection and `auth` frame: the newest one.
    token: Option<String>,
    /// The connection's role and the token's expiry, as the server said.
    role: Option<Role>,
    exp: Option<u64>,
    /// A token the server has not confirmed yet (refreshed or set since the
    /// last `welcome` or `auth` answer): `exp` is the old token's.
    renewed: bool,
    /// An `auth` frame on this connection awaits its answer.
    auth_sent: bool,
    /// When to send the token again after a rate-limited `auth` frame.
    auth_resend_at: Option<Instant>,
    /// When to ask the refresher next.
    refresh_at: Option<Instant>,
    /// The refresher, running.
    refresh_job: Option<JoinHandle<Result<String, String>>>,
    ended: EndReason,
}

pub(crate) async fn start(
    base_url: &str,
    doc_id: &str,
    options: Options,
) -> Result<Started, Error> {
    let base = ws_base(base_url)?;
    let mut token = options.token.clone();
    if let (None, Some(refresher)) = (&token, &options.refresh_token) {
        match refresher.fetch().await {
            Ok(t) if !t.is_empty() => token = Some(t),
            Ok(_) => {
                return Err(Error::Connect(
                    "the token refresher returned no token".into(),
                ))
            }
            Err(e) => return Err(Error::Connect(format!("could not get a token: {e}"))),
        }
    }
    let url = ws_url(
        &base,
        doc_id,
        options.client_id.as_deref(),
        None,
        token.as_deref(),
    );
    let (mut socket, welcome) = open(&url).await.map_err(|e| match e {
        Error::Refused { code, message } => Error::ending(code, message),
        e => e,
    })?;
    let ServerMessage::Welcome {
        client_id,
        rev,
        content,
        peers,
        role,
        exp,
        ..
    } = welcome
    else {
        unreachable!("open returns only welcomes")
    };
    let content = content.unwrap_or_default();
    let client = Client::new(client_id.clone(), Rope::from_str(&content), rev);
    if let (Some(user), false) = (&options.user, role == Some(Role::Read)) {
        send(&mut socket, &presence(None, Some(user))).await.ok();
    }
    let (events_tx, events_rx) = mpsc::channel(options.event_capacity.max(1));
    let (commands_tx, commands_rx) = mpsc::channel(64);
    let (status_tx, status_rx) = watch::channel(Status {
        rev,
        pending: false,
        connected: true,
        closed: false,
        role,
        exp,
    });
    let _ = events_tx.try_send(Event::Welcome { rev, peers });
    let ended = EndReason::default();
    let mut task = Task {
        base,
        doc_id: doc_id.to_owned(),
        options,
        client,
        events: events_tx,
        status: status_tx,
        connected: true,
        selection: None,
        token,
        role,
        exp,
        renewed: false,
        auth_sent: false,
        auth_resend_at: None,
        refresh_at: None,
        refresh_job: None,
        ended: ended.clone(),
    };
    task.schedule_refresh();
    tokio::spawn(task.run(socket, commands_rx));
    Ok(Started {
        commands: commands_tx,
        events: events_rx,
        status: status_rx,
        client_id,
        ended,
    })
}

impl Task {
    async fn run(mut self, socket: Socket, mut commands: mpsc::Receiver<Command>) {
        let mut socket = Some(socket);
        let mut delay = self.options.reconnect_delay;
        let mut reload = false;
        loop {
            let ended = match socket.take() {
                Some(s) => self.serve(s, &mut commands).await,
                None => match self.reconnect(reload, &mut commands, &mut delay).await {
                    Ok(s) => {
                        socket = Some(s);
                        reload = false;
                        continue;
                    }
                    Err(ended) => ended,
                },
            };
            match ended {
                Ended::Dropped => {}
                Ended::Reload => reload = true,
                Ended::Closed(code, message) => {
                    self.finish(code, message).await;
                    return;
                }
                Ended::Finished => {
                    self.stop_refreshing();
                    return;
                }
            }
            if self.connected {
                self.set_connected(false);
                let _ = self.events.send(Event::Disconnected).await;
            }
        }
    }

    /// Ends the session for good: why, then the status, then the last event.
    async fn finish(&mut self, code: ErrorCode, message: String) {
        self.stop_refreshing();
        *self.ended.lock().expect("end reason lock") = Some(Error::ending(code, message));
        self.set_connected(false);
        self.status.send_modify(|s| s.closed = true);
        let _ = self.events.send(Event::Closed { code }).await;
    }

    /// Runs one connection until it ends.
    async fn serve(&mut self, mut socket: Socket, commands: &mut mpsc::Receiver<Command>) -> Ended {
        // A new connection starts with the newest token.
        self.auth_sent = false;
        self.auth_resend_at = None;
        if let Some(out) = self.client.resend() {
            if send(&mut socket, &op_frame(&out)).await.is_err() {
                return Ended::Dropped;
            }
        }
        loop {
            let refresh_due = self.refresh_at.filter(|_| self.refresh_job.is_none());
            let resend_due = self.auth_resend_at;
            let frame = tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else {
                        let _ = socket.close(None).await;
                        return Ended::Finished;
                    };
                    match command {
                        Command::Edit(build, reply) => {
                            let sent = self.local_edit(build);
                            let _ = reply.send(sent.as_ref().map(|_| ()).map_err(Clone::clone));
                            match sent.ok().flatten() {
                                Some(out) => {
                                    self.emit(Event::Sent { seq: out.seq, rev: out.rev }).await;
                                    Some(op_frame(&out))
                                }
                                None => None,
                            }
                        }
                        Command::Presence(selection) => {
                            self.selection = selection;
                            (!self.read_only())
                                .then(|| presence(selection, self.options.user.as_ref()))
                        }
                        Command::Content(reply) => {
                            let _ = reply.send(self.client.content().to_string());
                            None
                        }
                        Command::Token(token) => {
                            self.take_token(token.clone());
                            Some(self.send_auth(token))
                        }
                        Command::Drop => return Ended::Dropped,
                    }
                }
                frame = socket.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ended::Dropped,
                        Some(Ok(_)) => continue,
                    };
                    let Ok(message) = serde_json::from_str::<ServerMessage>(&text) else {
                        tracing::warn!(frame = %text, "unreadable frame from server");
                        continue;
                    };
                    match self.receive(message).await {
                        Ok(frame) => frame,
                        Err(ended) => return ended,
                    }
                }
                () = sleep_until(resend_due), if resend_due.is_some() => {
                    self.auth_resend_at = None;
                    self.token.clone().map(|token| self.send_auth(token))
                }
                () = sleep_until(refresh_due), if refresh_due.is_some() => {
                    self.refresh_at = None;
                    self.start_refreshing();
                    None
                }
                result = refresh_result(&mut self.refresh_job), if self.refresh_job.is_some() => {
                    let token = self.refreshed(result).await;
                    token.map(|token| self.send_auth(token))
                }
            };
            if let Some(frame) = frame {
                if send(&mut socket, &frame).await.is_err() {
                    return Ended::Dropped;
                }
            }
        }
    }

    /// Applies one server message; returns a frame to send next, if any.
    async fn receive(&mut self, message: ServerMessage) -> Result<Option<String>, Ended> {
        let event = match message {
            ServerMessage::Ack { seq, rev } => {
                let next = self.client.ack(seq, rev).map_err(|e| {
                    tracing::warn!(error = %e, "out of step with the server; resuming");
                    Ended::Dropped
                })?;
                self.publish();
                self.emit(Event::Acked { seq, rev }).await;
                if let Some(out) = &next {
                    self.emit(Event::Sent {
                        seq: out.seq,
                        rev: out.rev,
                    })
                    .await;
                }
                return Ok(next.as_ref().map(op_frame));
            }
            ServerMessage::Op {
                rev,
                op,
                client_id,
                seq,
                author,
            } => {
                let op = self.client.remote(rev, op).map_err(|e| {
                    tracing::warn!(error = %e, "out of step with the server; resuming");
                    Ended::Dropped
                })?;
                self.publish();
                self.move_selection(&op);
                Event::Remote {
                    rev,
                    op,
                    client_id,
                    seq,
                    author,
                }
            }
            ServerMessage::Presence {
                client_id,
                selection,
                user,
                ..
            } => Event::Presence {
                client_id,
                selection,
                user,
            },
            ServerMessage::Leave { client_id } => Event::Leave { client_id },
            ServerMessage::Error { code, message, seq } => {
                return self.refused(code, message, seq).await
            }
            ServerMessage::Welcome { .. } => return Err(Ended::Dropped),
            ServerMessage::Auth { role, exp } => return self.auth_answer(role, exp).await,
        };
        self.emit(event).await;
        Ok(None)
    }

    /// The server refused something.
    async fn refused(
        &mut self,
        code: ErrorCode,
        message: String,
        seq: Option<u64>,
    ) -> Result<Option<String>, Ended> {
        let ours = seq.is_some() && seq == self.client.resend().map(|o| o.seq);
        self.emit(Event::Error {
            code,
            message: message.clone(),
            seq,
        })
        .await;
        if code == ErrorCode::Forbidden {
            if seq.is_none() && self.auth_sent {
                // The answer to our refresh (an `auth` answer would have
                // come before any refusal of a later frame): the new token
                // does not grant this document. The server closes.
                return Err(Ended::Closed(code, message));
            }
            // An op or a presence refused for the role: read only now.
            self.set_auth(Some(Role::Read), self.exp).await;
            if ours {
                // The refused edit, and any composed after it, must go: the
                // reload drops them and takes the server's content again
                // (until then they are still pending, so nobody mistakes
                // the local content for the server's).
                return Err(Ended::Reload);
            }
            return Ok(None);
        }
        if seq.is_none() && self.auth_sent && code == ErrorCode::RateLimited {
            // Our `auth` frame came too soon after another: the token is
            // not in force yet; send it again shortly.
            self.auth_sent = false;
            self.auth_resend_at = Some(Instant::now() + AUTH_RESEND);
            return Ok(None);
        }
        if !code.is_recoverable() {
            return Err(Ended::Closed(code, message));
        }
        if ours && matches!(code, ErrorCode::RateLimited | ErrorCode::Unavailable) {
            // Not applied: try again a little later on a fresh connection.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Err(Ended::Dropped);
        }
        if ours {
            return Err(Ended::Reload);
        }
        Ok(None)
    }

    /// The server's answer to our `auth` frame: the new token is in force.
    async fn auth_answer(&mut self, role: Role, exp: u64) -> Result<Option<String>, Ended> {
        self.auth_sent = false;
        self.renewed = false;
        let was = self.role;
        self.set_auth(Some(role), Some(exp)).await;
        self.schedule_refresh();
        if role == Role::Read {
            if self.client.has_pending() {
                self.drop_unsynced().await;
                return Err(Ended::Reload);
            }
            return Ok(None);
        }
        let share = self.selection.is_some() || self.options.user.is_some();
        Ok((was == Some(Role::Read) && share)
            .then(|| presence(self.selection, self.options.user.as_ref())))
    }

    /// Connects again, retrying with backoff while still taking local edits.
    async fn reconnect(
        &mut self,
        reload: bool,
        commands: &mut mpsc::Receiver<Command>,
        delay: &mut Duration,
    ) -> Result<Socket, Ended> {
        loop {
            let pause = tokio::time::sleep(*delay);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = &mut pause => break,
                    command = commands.recv() => self.offline(command)?,
                }
            }
            *delay = (*delay * 2).min(self.options.max_reconnect_delay);
            if self.token_stale() {
                self.refresh_offline(commands).await?;
            }
            let since = (!reload).then(|| self.client.rev());
            let url = ws_url(
                &self.base,
                &self.doc_id,
                Some(self.client.client_id()),
                since,
                self.token.as_deref(),
            );
            match open(&url).await {
                Ok((socket, welcome)) => {
                    *delay = self.options.reconnect_delay;
                    return self.resume(socket, welcome, reload).await;
                }
                Err(Error::Refused { code, message }) if final_at_connect(code) => {
                    return Err(Ended::Closed(code, message));
                }
                Err(e) => tracing::debug!(error = %e, "reconnect failed; retrying"),
            }
        }
    }

    /// A command while disconnected.
    fn offline(&mut self, command: Option<Command>) -> Result<(), Ended> {
        match command {
            None => return Err(Ended::Finished),
            Some(Command::Edit(build, reply)) => {
                // Kept as pending; sent once reconnected.
                let _ = reply.send(self.local_edit(build).map(|_| ()));
            }
            Some(Command::Content(reply)) => {
                let _ = reply.send(self.client.content().to_string());
            }
            // For the next connection.
            Some(Command::Token(token)) => self.take_token(token),
            Some(Command::Presence(_)) | Some(Command::Drop) => {}
        }
        Ok(())
    }

    /// Renews a token about to run out before connecting with it; on
    /// failure the old one is tried (the server decides).
    async fn refresh_offline(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Result<(), Ended> {
        if self.refresh_job.is_none() {
            self.start_refreshing();
        }
        loop {
            tokio::select! {
                result = refresh_result(&mut self.refresh_job) => {
                    self.refreshed(result).await;
                    return Ok(());
                }
                command = commands.recv() => self.offline(command)?,
            }
        }
    }

    /// Brings the local replica up to the welcome's revision.
    async fn resume(
        &mut self,
        mut socket: Socket,
        welcome: ServerMessage,
        reload: bool,
    ) -> Result<Socket, Ended> {
        let ServerMessage::Welcome {
            rev,
            content,
            ops,
            peers,
            role,
            exp,
            ..
        } = welcome
        else {
            unreachable!("open returns only welcomes")
        };
        if reload {
            self.client.discard_pending();
        }
        // This connection was opened with the newest token.
        self.renewed = false;
        self.set_auth(role, exp).await;
        self.schedule_refresh();
        if let Some(ops) = ops {
            let authors: HashMap<u64, Option<String>> =
                ops.iter().map(|r| (r.rev, r.author.clone())).collect();
            let committed: Vec<Committed> = ops
                .into_iter()
                .map(|r| Committed {
                    rev: r.rev,
                    op: r.op,
                    client_id: r.client_id,
                    seq: r.seq,
                    author: r.author,
                })
                .collect();
            let seen = self.client.resume(&committed).map_err(|e| {
                tracing::warn!(error = %e, "resume did not fit; reloading");
                Ended::Reload
            })?;
            for resumed in seen {
                if let Resumed::Remote { op, .. } = &resumed {
                    self.move_selection(op);
                }
                self.emit(match resumed {
                    Resumed::Acked { seq, rev } => Event::Acked { seq, rev },
                    Resumed::Remote {
                        rev,
                        op,
                        client_id,
                        seq,
                    } => Event::Remote {
                        rev,
                        op,
                        client_id,
                        seq,
                        author: authors.get(&rev).cloned().flatten(),
                    },
                })
                .await;
            }
            if self.read_only() && self.client.has_pending() {
                // The server would refuse what is left: take its content.
                self.drop_unsynced().await;
                return Err(Ended::Reload);
            }
        } else {
            if self.client.has_pending() {
                // The server could not list what we missed, so our unacknowledged
                // edits cannot be rebased; say so rather than corrupt the text.
                self.client.discard_pending();
                self.emit(Event::Error {
                    code: ErrorCode::Unknown,
                    message: "unacknowledged local edits were dropped: the server sent the whole document".into(),
                    seq: None,
                })
                .await;
            }
            let content = content.unwrap_or_default();
            if let Err(e) = self.client.reset(Rope::from_str(&content), rev) {
                tracing::error!(error = %e, "could not take the server's content");
                return Err(Ended::Reload);
            }
            // A new text: keep the selection only where it still fits.
            let len = self.client.content().len_chars();
            self.selection = self.selection.map(|[a, h]| [a.min(len), h.min(len)]);
            self.emit(Event::Reset { rev }).await;
        }
        if !self.read_only() && (self.selection.is_some() || self.options.user.is_some()) {
            let frame = presence(self.selection, self.options.user.as_ref());
            if send(&mut socket, &frame).await.is_err() {
                return Err(Ended::Dropped);
            }
        }
        self.set_connected(true);
        self.emit(Event::Welcome { rev, peers }).await;
        Ok(socket)
    }

    /// Applies a local edit built from the current content; refused while
    /// the role is `read`.
    fn local_edit(&mut self, build: EditFn) -> Result<Option<OutgoingOp>, Error> {
        if self.read_only() {
            return Err(Error::ReadOnly);
        }
        let Some(op) = build(self.client.content()) else {
            return Ok(None);
        };
        let moved = self.selection.map(|s| transform_range(s, &op));
        let sent = self.client.local_edit(op);
        if sent.is_ok() {
            self.selection = moved;
        }
        self.publish();
        Ok(sent?)
    }

    /// The role dropped to `read` with local edits unsynced: the server
    /// would refuse them, so they go. Says so; the caller reloads, which
    /// drops them and takes the server's content.
    async fn drop_unsynced(&mut self) {
        self.emit(Event::Error {
            code: ErrorCode::Forbidden,
            message: "this session is read only now: unsynced local edits were dropped".into(),
            seq: None,
        })
        .await;
    }

    fn read_only(&self) -> bool {
        self.role == Some(Role::Read)
    }

    /// Records the role and expiry the server reported; says so if either
    /// changed.
    async fn set_auth(&mut self, role: Option<Role>, exp: Option<u64>) {
        if (role, exp) == (self.role, self.exp) {
            return;
        }
        self.role = role;
        self.exp = exp;
        self.publish();
        self.emit(Event::Auth { role, exp }).await;
    }

    /// The `auth` frame for `token`, about to go out on this connection
    /// (it replaces any still to be resent).
    fn send_auth(&mut self, token: String) -> String {
        self.auth_sent = true;
        self.auth_resend_at = None;
        auth_frame(token)
    }

    /// Uses `token` from now on.
    fn take_token(&mut self, token: String) {
        self.token = Some(token);
        self.renewed = true;
    }

    /// Times the next refresh from the current token's expiry.
    fn schedule_refresh(&mut self) {
        self.refresh_at = match (&self.options.refresh_token, self.exp) {
            (Some(_), Some(exp)) => Some(Instant::now() + refresh_delay(exp, unix_now())),
            _ => None,
        };
    }

    /// Whether the token runs out too soon to connect with.
    fn token_stale(&self) -> bool {
        self.options.refresh_token.is_some()
            && !self.renewed
            && self
                .exp
                .is_some_and(|exp| Duration::from_secs(exp) < unix_now() + STALE_MARGIN)
    }

    /// Runs the refresher on its own task, so a slow one holds up nothing.
    fn start_refreshing(&mut self) {
        if let Some(refresher) = &self.options.refresh_token {
            self.refresh_job = Some(tokio::spawn(refresher.fetch()));
        }
    }

    fn stop_refreshing(&mut self) {
        if let Some(job) = self.refresh_job.take() {
            job.abort();
        }
        self.refresh_at = None;
    }

    /// Takes what the refresher returned: the new token, or (reported)
    /// nothing, with another try scheduled.
    async fn refreshed(&mut self, result: Result<String, String>) -> Option<String> {
        let message = match result {
            Ok(token) if !token.is_empty() => {
                self.take_token(token.clone());
                return Some(token);
            }
            Ok(_) => "the token refresher returned an empty token".to_owned(),
            Err(message) => message,
        };
        tracing::debug!(error = %message, "token refresh failed; retrying");
        self.refresh_at = Some(Instant::now() + retry_delay(self.exp, unix_now()));
        self.emit(Event::TokenRefreshFailed { message }).await;
        None
    }

    /// Keeps our selection next to the same characters as `op` changes the
    /// text. Peers are not told: each moves our selection through the same
    /// op itself; only a reconnect sends it again.
    fn move_selection(&mut self, op: &Operation) {
        self.selection = self.selection.map(|s| transform_range(s, op));
    }

    async fn emit(&self, event: Event) {
        let _ = self.events.send(event).await;
    }

    fn set_connected(&mut self, connected: bool) {
        self.connected = connected;
        self.publish();
    }

    fn publish(&self) {
        let status = Status {
            rev: self.client.rev(),
            pending: self.client.has_pending(),
            connected: self.connected,
            closed: false,
            role: self.role,
            exp: self.exp,
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }
}

/// Refusals at connect time that end the session: the document is gone, or
/// the token is bad or does not grant it (retrying cannot help).
fn final_at_connect(code: ErrorCode) -> bool {
    !code.is_recoverable() || code == ErrorCode::Forbidden
}

/// How long until the refresh of a token expiring at Unix second `exp`,
/// `now` being the time since the epoch: at the later of `REFRESH_MARGIN`
/// before `exp` and `REFRESH_FRACTION` of the remaining lifetime; at once
/// for a token already expired.
fn refresh_delay(exp: u64, now: Duration) -> Duration {
    let left = Duration::from_secs(exp).saturating_sub(now);
    left.saturating_sub(REFRESH_MARGIN)
        .max(left.mul_f64(REFRESH_FRACTION))
}

/// How long until a failed refresh is tried again: a quarter of what is
/// left of the token, between `REFRESH_RETRY_MIN` and `REFRESH_RETRY`;
/// `REFRESH_RETRY` once it has expired (the server's leeway may still keep
/// the session, but there is no hurry worth a request a second).
fn retry_delay(exp: Option<u64>, now: Duration) -> Duration {
    let left = exp.map_or(Duration::MAX, |exp| {
        Duration::from_secs(exp).saturating_sub(now)
    });
    if left.is_zero() {
        return REFRESH_RETRY;
    }
    (left / 4).clamp(REFRESH_RETRY_MIN, REFRESH_RETRY)
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the running refresher returned (a panic counts as a failure).
async fn refresh_result(
    job: &mut Option<JoinHandle<Result<String, String>>>,
) -> Result<String, String> {
    let Some(handle) = job.as_mut() else {
        return std::future::pending().await;
    };
    let result = handle
        .await
        .unwrap_or_else(|e| Err(format!("the token refresher failed: {e}")));
    *job = None;
    result
}

/// Opens a socket and reads its welcome (or the error that refused it).
async fn open(url: &str) -> Result<(Socket, ServerMessage), Error> {
    // No Nagle: an edit is a small frame that must leave at once.
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .map_err(|e| Error::Connect(e.to_string()))?;
    loop {
        let frame = socket
            .next()
            .await
            .ok_or_else(|| Error::Connect("closed before the welcome".into()))?
            .map_err(|e| Error::Connect(e.to_string()))?;
        let Message::Text(text) = frame else { continue };
        match serde_json::from_str::<ServerMessage>(&text) {
            Ok(welcome @ ServerMessage::Welcome { .. }) => return Ok((socket, welcome)),
            Ok(ServerMessage::Error { code, message, .. }) => {
                return Err(Error::Refused { code, message })
            }
            _ => return Err(Error::Connect(format!("expected a welcome, got {text}"))),
        }
    }
}

async fn send(socket: &mut Socket, frame: &str) -> Result<(), ()> {
    socket
        .send(Message::Text(frame.into()))
        .await
        .map_err(|_| ())
}

fn op_frame(out: &OutgoingOp) -> String {
    ClientMessage::Op {
        rev: out.rev,
        seq: out.seq,
        op: out.op.clone(),
    }
    .to_json()
}

fn auth_frame(token: String) -> String {
    ClientMessage::Auth { token }.to_json()
}

fn presence(selection: Option<[usize; 2]>, user: Option<&User>) -> String {
    ClientMessage::Presence {
        selection,
        user: user.cloned(),
    }
    .to_json()
}

/// `ws://host:port` from `http://host:port` (or a `ws` URL as is).
fn ws_base(base_url: &str) -> Result<String, Error> {
    let base = base_url.trim_end_matches('/');
    for (from, to) in [
        ("http://", "ws://"),
        ("https://", "wss://"),
        ("ws://", "ws://"),
        ("wss://", "wss://"),
    ] {
        if let Some(rest) = base.strip_prefix(from) {
            return Ok(format!("{to}{rest}"));
        }
    }
    Err(Error::Connect(format!(
        "{base_url}: expected an http(s):// or ws(s):// URL"
    )))
}

fn ws_url(
    base: &str,
    doc_id: &str,
    client_id: Option<&str>,
    since: Option<u64>,
    token: Option<&str>,
) -> String {
    let mut url = format!("{base}/ws/documents/{doc_id}");
    let mut params = Vec::new();
    if let Some(id) = client_id {
        params.push(format!("client_id={}", url_encode(id)));
    }
    if let Some(since) = since {
        params.push(format!("since={since}"));
    }
    if let Some(token) = token {
        params.push(format!("token={}", url_encode(token)));
    }
    if !params.is_empty() {
        url.push('?');
        url.push_str(&params.join("&"));
    }
    url
}

/// Percent-encodes everything but the URL's unreserved characters.
fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_urls() {
        assert_eq!(ws_base("http://h:1/").unwrap(), "ws://h:1");
        assert_eq!(ws_base("wss://h").unwrap(), "wss://h");
        assert!(ws_base("ftp://h").is_err());
        assert_eq!(
            ws_url("ws://h", "d", None, None, None),
            "ws://h/ws/documents/d"
        );
        assert_eq!(
            ws_url("ws://h", "d", Some("c"), Some(4), None),
            "ws://h/ws/documents/d?client_id=c&since=4"
        );
        assert_eq!(
            ws_url("ws://h", "d", None, None, Some("a.b_c-d")),
            "ws://h/ws/documents/d?token=a.b_c-d"
        );
        assert_eq!(
            ws_url("ws://h", "d", Some("c"), None, Some("x+y/z=&w ")),
            "ws://h/ws/documents/d?client_id=c&token=x%2By%2Fz%3D%26w%20"
        );
        assert_eq!(url_encode("é"), "%C3%A9");
    }

    #[test]
    fn refreshes_at_the_later_of_a_minute_before_and_three_quarters() {
        let now = Duration::from_secs(1_000_000);
        let exp = |secs: u64| 1_000_000 + secs;
        // An hour: a minute before it ends.
        assert_eq!(refresh_delay(exp(3600), now), Duration::from_secs(3540));
        // Two minutes: after 90 s (¾), later than 60 s before.
        assert_eq!(refresh_delay(exp(120), now), Duration::from_secs(90));
        // 40 s: after 30 s.
        assert_eq!(refresh_delay(exp(40), now), Duration::from_secs(30));
        // 4 s: after 3 s.
        assert_eq!(refresh_delay(exp(4), now), Duration::from_secs(3));
        // Fractions of a second count.
        let later = now + Duration::from_millis(400);
        assert_eq!(refresh_delay(exp(4), later), Duration::from_millis(2700));
        // Expired, or expiring now: at once, never in the past.
        assert_eq!(refresh_delay(exp(0), now), Duration::ZERO);
        assert_eq!(refresh_delay(999_000, now), Duration::ZERO);
    }

    #[test]
    fn failed_refreshes_are_retried_within_bounds() {
        let now = Duration::from_secs(1_000_000);
        assert_eq!(retry_delay(Some(1_000_600), now), REFRESH_RETRY);
        assert_eq!(retry_delay(Some(1_000_008), now), Duration::from_secs(2));
        assert_eq!(retry_delay(Some(1_000_001), now), REFRESH_RETRY_MIN);
        // Expired: every 5 s, as long as the server keeps the session.
        assert_eq!(retry_delay(Some(1_000_000), now), REFRESH_RETRY);
        assert_eq!(retry_delay(Some(10), now), REFRESH_RETRY);
        assert_eq!(retry_delay(None, now), REFRESH_RETRY);
    }

    #[test]
    fn refusals_at_connect_that_end_the_session() {
        for code in [
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::DocumentDeleted,
        ] {
            assert!(final_at_connect(code), "{code:?}");
        }
        for code in [ErrorCode::RateLimited, ErrorCode::Unavailable] {
            assert!(!final_at_connect(code), "{code:?}");
        }
    }
}
