//! Raw WebSocket helpers for tests that speak the live protocol frame by
//! frame: open a socket, send anything, read frames with a timeout, assert
//! the protocol's error frames.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::TestApp;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The longest any single expected frame or state may take to show up.
pub const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Raw WebSocket helpers

pub fn ws_url(app: &TestApp, path_and_query: &str) -> String {
    format!("ws://{}{}", app.addr, path_and_query)
}

/// Opens a raw WebSocket (the handshake only; nothing is read).
pub async fn open_raw(app: &TestApp, path_and_query: &str) -> Ws {
    let url = ws_url(app, path_and_query);
    let Ok(connected) =
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url.as_str())).await
    else {
        panic!("connecting to {url} timed out");
    };
    match connected {
        Ok((ws, _)) => ws,
        Err(e) => panic!("connecting to {url}: {e}"),
    }
}

/// Joins `doc` with the query string `query`; the socket and its welcome.
pub async fn join_with(app: &TestApp, doc: &str, query: &str) -> (Ws, Value) {
    let mut ws = open_raw(app, &format!("/ws/documents/{doc}?{query}")).await;
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "first frame: {welcome}");
    (ws, welcome)
}

pub async fn join(app: &TestApp, doc: &str, client_id: &str) -> (Ws, Value) {
    join_with(app, doc, &format!("client_id={client_id}")).await
}

/// The next text frame, as JSON. Panics on anything else, or after [`WAIT`].
pub async fn next_json(ws: &mut Ws) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str::<Value>(&text)
                        .unwrap_or_else(|e| panic!("server sent non-JSON {text:?}: {e}"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("timed out waiting for a frame from the server")
}

pub async fn send_text(ws: &mut Ws, text: impl Into<String>) {
    ws.send(Message::text(text.into())).await.expect("send");
}

pub async fn send_op(ws: &mut Ws, rev: u64, seq: u64, op: Value) {
    let frame = json!({"type": "op", "rev": rev, "seq": seq, "op": op});
    send_text(ws, frame.to_string()).await;
}

/// How a socket ended.
#[derive(Debug, PartialEq)]
pub enum End {
    /// A close frame, with its code.
    Close(Option<u16>),
    /// The TCP stream ended (or broke) without a close frame.
    Eof,
}

/// Reads until the server ends the connection; the text frames before the
/// end, and how it ended. Panics if it has not ended within `within`.
pub async fn read_until_closed(ws: &mut Ws, within: Duration) -> (Vec<Value>, End) {
    let mut frames = Vec::new();
    let end = tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => frames.push(
                    serde_json::from_str::<Value>(&text)
                        .unwrap_or_else(|e| panic!("server sent non-JSON {text:?}: {e}")),
                ),
                Some(Ok(Message::Close(frame))) => {
                    return End::Close(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return End::Eof,
            }
        }
    })
    .await;
    match end {
        Ok(end) => (frames, end),
        Err(_) => panic!(
            "the server did not close the socket within {within:?} ({} frames read)",
            frames.len()
        ),
    }
}

/// Asserts `frame` is the protocol's error with `code`, carrying `seq`
/// exactly when one is expected.
#[track_caller]
pub fn assert_error_frame(frame: &Value, code: &str, seq: Option<u64>, what: &str) {
    assert_eq!(frame["type"], "error", "{what}: {frame}");
    assert_eq!(frame["code"], code, "{what}: {frame}");
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: error without a message: {frame}"
    );
    assert_eq!(
        frame
            .get("seq")
            .map(|s| s.as_u64().expect("seq is a number")),
        seq,
        "{what}: seq of {frame}"
    );
    let keys = frame.as_object().expect("object").keys();
    for key in keys {
        assert!(
            ["type", "code", "message", "seq"].contains(&key.as_str()),
            "{what}: unexpected field {key} in {frame}"
        );
    }
}

/// The stored content and revision, through REST.
pub async fn stored(app: &TestApp, doc: &str) -> (String, u64) {
    let (status, body) = app.get(&format!("/api/documents/{doc}")).await;
    assert_eq!(status, 200, "{body}");
    (
        body["content"].as_str().expect("content").to_owned(),
        body["rev"].as_u64().expect("rev"),
    )
}
