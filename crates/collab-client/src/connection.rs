//! The task behind a [`crate::Session`]: it owns the socket and the engine's
//! client state machine, turns frames into events, and reconnects.
//!
//! Everything that changes the local replica happens on this one task, so the
//! state machine needs no lock; the session talks to it over channels.

use std::time::Duration;

use collab_ot::protocol::{ClientMessage, ErrorCode, ServerMessage, User};
use collab_ot::{
    transform_position, Client, ClientError, Committed, Operation, OutgoingOp, Resumed, Rope,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Command, EditFn, Error, Event, Options, Status};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What ended a connection.
enum Ended {
    /// Reconnect, resuming from the last revision seen.
    Dropped,
    /// Our edit was refused: drop local edits and reload the content.
    Reload,
    /// The document is gone or access refused: stop.
    Closed(ErrorCode),
    /// The session was dropped by its owner.
    Finished,
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
}

pub(crate) async fn start(
    base_url: &str,
    doc_id: &str,
    options: Options,
) -> Result<
    (
        mpsc::Sender<Command>,
        mpsc::Receiver<Event>,
        watch::Receiver<Status>,
        String,
    ),
    Error,
> {
    let base = ws_base(base_url)?;
    let url = ws_url(&base, doc_id, options.client_id.as_deref(), None);
    let (mut socket, welcome) = open(&url).await?;
    let ServerMessage::Welcome {
        client_id,
        rev,
        content,
        peers,
        ..
    } = welcome
    else {
        unreachable!("open returns only welcomes")
    };
    let content = content.unwrap_or_default();
    let client = Client::new(client_id.clone(), Rope::from_str(&content), rev);
    if let Some(user) = &options.user {
        send(&mut socket, &presence(None, Some(user))).await.ok();
    }
    let (events_tx, events_rx) = mpsc::channel(options.event_capacity.max(1));
    let (commands_tx, commands_rx) = mpsc::channel(64);
    let (status_tx, status_rx) = watch::channel(Status {
        rev,
        pending: false,
        connected: true,
        closed: false,
    });
    let _ = events_tx.try_send(Event::Welcome { rev, peers });
    let task = Task {
        base,
        doc_id: doc_id.to_owned(),
        options,
        client,
        events: events_tx,
        status: status_tx,
        connected: true,
        selection: None,
    };
    tokio::spawn(task.run(socket, commands_rx));
    Ok((commands_tx, events_rx, status_rx, client_id))
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
                Ended::Closed(code) => {
                    self.set_connected(false);
                    self.status.send_modify(|s| s.closed = true);
                    let _ = self.events.send(Event::Closed { code }).await;
                    return;
                }
                Ended::Finished => return,
            }
            if self.connected {
                self.set_connected(false);
                let _ = self.events.send(Event::Disconnected).await;
            }
        }
    }

    /// Runs one connection until it ends.
    async fn serve(&mut self, mut socket: Socket, commands: &mut mpsc::Receiver<Command>) -> Ended {
        if let Some(out) = self.client.resend() {
            if send(&mut socket, &op_frame(&out)).await.is_err() {
                return Ended::Dropped;
            }
        }
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else {
                        let _ = socket.close(None).await;
                        return Ended::Finished;
                    };
                    let frame = match command {
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
                            Some(presence(selection, self.options.user.as_ref()))
                        }
                        Command::Content(reply) => {
                            let _ = reply.send(self.client.content().to_string());
                            None
                        }
                        Command::Drop => return Ended::Dropped,
                    };
                    if let Some(frame) = frame {
                        if send(&mut socket, &frame).await.is_err() {
                            return Ended::Dropped;
                        }
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
                        Ok(Some(out)) => {
                            if send(&mut socket, &op_frame(&out)).await.is_err() {
                                return Ended::Dropped;
                            }
                        }
                        Ok(None) => {}
                        Err(ended) => return ended,
                    }
                }
            }
        }
    }

    /// Applies one server message; returns an op to send next, if any.
    async fn receive(&mut self, message: ServerMessage) -> Result<Option<OutgoingOp>, Ended> {
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
                return Ok(next);
            }
            ServerMessage::Op {
                rev,
                op,
                client_id,
                seq,
                ..
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
                let ours = seq.is_some() && seq == self.client.resend().map(|o| o.seq);
                self.emit(Event::Error { code, message, seq }).await;
                if !code.is_recoverable() {
                    return Err(Ended::Closed(code));
                }
                if ours && matches!(code, ErrorCode::RateLimited | ErrorCode::Unavailable) {
                    // Not applied: try again a little later on a fresh connection.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Err(Ended::Dropped);
                }
                if ours {
                    return Err(Ended::Reload);
                }
                return Ok(None);
            }
            ServerMessage::Welcome { .. } => return Err(Ended::Dropped),
            ServerMessage::Auth { .. } => return Ok(None),
        };
        self.emit(event).await;
        Ok(None)
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
                    command = commands.recv() => match command {
                        None => return Err(Ended::Finished),
                        Some(Command::Edit(build, reply)) => {
                            // Kept as pending; sent once reconnected.
                            let _ = reply.send(self.local_edit(build).map(|_| ()));
                        }
                        Some(Command::Content(reply)) => {
                            let _ = reply.send(self.client.content().to_string());
                        }
                        Some(Command::Presence(_)) | Some(Command::Drop) => {}
                    }
                }
            }
            *delay = (*delay * 2).min(self.options.max_reconnect_delay);
            let since = (!reload).then(|| self.client.rev());
            let url = ws_url(
                &self.base,
                &self.doc_id,
                Some(self.client.client_id()),
                since,
            );
            match open(&url).await {
                Ok((socket, welcome)) => {
                    *delay = self.options.reconnect_delay;
                    return self.resume(socket, welcome, reload).await;
                }
                Err(Error::Refused { code, .. }) if !code.is_recoverable() => {
                    return Err(Ended::Closed(code));
                }
                Err(e) => tracing::debug!(error = %e, "reconnect failed; retrying"),
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
            ..
        } = welcome
        else {
            unreachable!("open returns only welcomes")
        };
        if reload {
            self.client.discard_pending();
        }
        if let Some(ops) = ops {
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
                    },
                })
                .await;
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
        if self.selection.is_some() || self.options.user.is_some() {
            let frame = presence(self.selection, self.options.user.as_ref());
            if send(&mut socket, &frame).await.is_err() {
                return Err(Ended::Dropped);
            }
        }
        self.set_connected(true);
        self.emit(Event::Welcome { rev, peers }).await;
        Ok(socket)
    }

    /// Applies a local edit built from the current content.
    fn local_edit(&mut self, build: EditFn) -> Result<Option<OutgoingOp>, ClientError> {
        let Some(op) = build(self.client.content()) else {
            return Ok(None);
        };
        let moved = self.selection.map(|s| move_selection(s, &op));
        let sent = self.client.local_edit(op);
        if sent.is_ok() {
            self.selection = moved;
        }
        self.publish();
        sent
    }

    /// Keeps our selection next to the same characters as `op` changes the
    /// text. Peers are not told: each moves our selection through the same
    /// op itself; only a reconnect sends it again.
    fn move_selection(&mut self, op: &Operation) {
        self.selection = self.selection.map(|s| move_selection(s, op));
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
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }
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

fn move_selection([anchor, head]: [usize; 2], op: &Operation) -> [usize; 2] {
    [transform_position(anchor, op), transform_position(head, op)]
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

fn ws_url(base: &str, doc_id: &str, client_id: Option<&str>, since: Option<u64>) -> String {
    let mut url = format!("{base}/ws/documents/{doc_id}");
    let mut sep = '?';
    if let Some(id) = client_id {
        url.push_str(&format!("{sep}client_id={id}"));
        sep = '&';
    }
    if let Some(since) = since {
        url.push_str(&format!("{sep}since={since}"));
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_urls() {
        assert_eq!(ws_base("http://h:1/").unwrap(), "ws://h:1");
        assert_eq!(ws_base("wss://h").unwrap(), "wss://h");
        assert!(ws_base("ftp://h").is_err());
        assert_eq!(ws_url("ws://h", "d", None, None), "ws://h/ws/documents/d");
        assert_eq!(
            ws_url("ws://h", "d", Some("c"), Some(4)),
            "ws://h/ws/documents/d?client_id=c&since=4"
        );
    }
}
