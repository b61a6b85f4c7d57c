//! The session's access handling against a scripted server: each test plays
//! the server's side frame by frame, so the orderings that a real server
//! only produces by chance (a `forbidden` for the op in flight, a downgrade
//! while an edit is unsynced, a refused refresh) are exact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use collab_client::{Error, ErrorCode, Event, Operation, Options, Role, Session, TokenRefresher};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<TcpStream>;

/// The server's side: accepts connections and tells what they asked for.
struct Fake {
    listener: TcpListener,
}

impl Fake {
    async fn new() -> Fake {
        Fake {
            listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.listener.local_addr().unwrap())
    }

    /// The next connection and its path and query.
    #[allow(clippy::result_large_err)] // the handshake callback's type is tungstenite's
    async fn accept(&self) -> (Ws, String) {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("no connection came")
            .expect("accept");
        let uri = Arc::new(Mutex::new(String::new()));
        let seen = uri.clone();
        let ws =
            tokio_tungstenite::accept_hdr_async(stream, move |req: &Request, res: Response| {
                *seen.lock().unwrap() = req.uri().to_string();
                Ok(res)
            })
            .await
            .expect("handshake");
        let uri = uri.lock().unwrap().clone();
        (ws, uri)
    }
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("send");
}

/// The next text frame from the client, as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame came")
            .expect("the client closed")
            .expect("read");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn welcome(content: &str, role: &str, exp: u64) -> Value {
    json!({"type": "welcome", "client_id": "c", "rev": 0, "content": content,
        "peers": [], "role": role, "exp": exp})
}

fn options(token: &str) -> Options {
    Options {
        client_id: Some("c".into()),
        token: Some(token.into()),
        ..Options::default()
    }
}

/// Connects a session while the fake answers with `first` (a welcome).
async fn connect(fake: &Fake, options: Options, first: Value) -> (Session, Ws, String) {
    let accept_and_answer = async {
        let (mut ws, uri) = fake.accept().await;
        send(&mut ws, first).await;
        (ws, uri)
    };
    let url = fake.url();
    let (session, (ws, uri)) =
        tokio::join!(Session::connect(&url, "doc", options), accept_and_answer);
    (session.expect("connect"), ws, uri)
}

/// Events until one matches; panics after `WAIT`.
async fn events_until(session: &mut Session, done: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, session.next_event())
            .await
            .unwrap_or_else(|_| panic!("timed out; saw {seen:?}"))
            .unwrap_or_else(|| panic!("events ended; saw {seen:?}"));
        let last = done(&event);
        seen.push(event);
        if last {
            return seen;
        }
    }
}

#[tokio::test]
async fn a_forbidden_op_is_dropped_and_the_content_reloaded() {
    let fake = Fake::new().await;
    let far = now_secs() + 3600;
    let (mut session, mut ws, uri) =
        connect(&fake, options("t1"), welcome("hello", "write", far)).await;
    events_until(&mut session, |e| matches!(e, Event::Welcome { .. })).await;
    assert_eq!(uri, "/ws/documents/doc?client_id=c&token=t1");
    assert_eq!(
        (session.status().role, session.status().exp),
        (Some(Role::Write), Some(far))
    );

    // The role dropped to read on the server (the client has not heard):
    // the edit goes out and is refused.
    session.edit(Operation::insert(5, "!")).await.unwrap();
    session.edit(Operation::insert(6, "?")).await.unwrap();
    assert_eq!(session.content().await.unwrap(), "hello!?");
    let op = next_json(&mut ws).await;
    assert_eq!(
        (op["type"].as_str(), op["seq"].as_u64()),
        (Some("op"), Some(1))
    );
    send(
        &mut ws,
        json!({"type": "error", "code": "forbidden", "message": "read only", "seq": 1}),
    )
    .await;

    // The session reloads without `since`, with the same token, and takes
    // the server's content.
    let (mut ws, uri) = fake.accept().await;
    assert_eq!(uri, "/ws/documents/doc?client_id=c&token=t1");
    send(&mut ws, welcome("hello", "read", far)).await;
    let events = events_until(&mut session, |e| matches!(e, Event::Welcome { .. })).await;
    let expected_start = [
        Event::Sent { seq: 1, rev: 0 },
        Event::Error {
            code: ErrorCode::Forbidden,
            message: "read only".into(),
            seq: Some(1),
        },
        Event::Auth {
            role: Some(Role::Read),
            exp: Some(far),
        },
        Event::Disconnected,
        Event::Reset { rev: 0 },
    ];
    assert_eq!(events[..5], expected_start, "{events:?}");
    assert_eq!(session.content().await.unwrap(), "hello");
    let status = session.status();
    assert!(status.connected && !status.pending, "{status:?}");
    assert_eq!(status.role, Some(Role::Read));

    // Read only: the next edit is refused here and changes nothing.
    assert_eq!(
        session.edit(Operation::insert(0, "x")).await,
        Err(Error::ReadOnly)
    );
    assert_eq!(session.content().await.unwrap(), "hello");
    // Nothing was resent: the next frame is the one asked for now.
    session.set_token("t2").await.unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "auth", "token": "t2"})
    );
    // Write again: edits go out.
    send(
        &mut ws,
        json!({"type": "auth", "role": "write", "exp": far}),
    )
    .await;
    events_until(&mut session, |e| {
        matches!(
            e,
            Event::Auth {
                role: Some(Role::Write),
                ..
            }
        )
    })
    .await;
    session.edit(Operation::insert(0, "x")).await.unwrap();
    let op = next_json(&mut ws).await;
    assert_eq!(op["op"], json!(["x"]), "{op}");
    assert_eq!(op["seq"], 2, "the refused seq is not reused");
}

#[tokio::test]
async fn a_downgrade_drops_unsynced_edits() {
    let fake = Fake::new().await;
    let far = now_secs() + 3600;
    let (mut session, mut ws, _) =
        connect(&fake, options("t1"), welcome("abc", "write", far)).await;
    events_until(&mut session, |e| matches!(e, Event::Welcome { .. })).await;
    session.edit(Operation::insert(3, "d")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "op");
    session.set_token("t-read").await.unwrap();
    assert_eq!(next_json(&mut ws).await["token"], "t-read");
    // The op was not applied (the server answers the auth frame first).
    send(
        &mut ws,
        json!({"type": "auth", "role": "read", "exp": far + 1}),
    )
    .await;
    let (mut ws, uri) = fake.accept().await;
    assert!(!uri.contains("since"), "{uri}");
    assert!(uri.ends_with("token=t-read"), "{uri}");
    send(&mut ws, welcome("abc", "read", far + 1)).await;
    let events = events_until(&mut session, |e| matches!(e, Event::Welcome { .. })).await;
    assert!(
        events.contains(&Event::Auth {
            role: Some(Role::Read),
            exp: Some(far + 1)
        }),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Error {
                code: ErrorCode::Forbidden,
                seq: None,
                ..
            }
        )),
        "the drop is reported: {events:?}"
    );
    assert!(events.contains(&Event::Reset { rev: 0 }), "{events:?}");
    assert_eq!(session.content().await.unwrap(), "abc");
    assert!(!session.status().pending);
}

#[tokio::test]
async fn a_refused_refresh_ends_the_session() {
    let fake = Fake::new().await;
    let far = now_secs() + 3600;
    let (mut session, mut ws, _) = connect(&fake, options("t1"), welcome("", "write", far)).await;
    session.set_token("t-other-doc").await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "auth");
    send(
        &mut ws,
        json!({"type": "error", "code": "forbidden", "message": "not this document"}),
    )
    .await;
    let _ = ws.close(None).await;
    assert_eq!(
        session.closed().await,
        Error::Forbidden("not this document".into())
    );
    let events = events_until(&mut session, |e| matches!(e, Event::Closed { .. })).await;
    assert_eq!(
        events.last(),
        Some(&Event::Closed {
            code: ErrorCode::Forbidden
        })
    );
    // The task is gone: no reconnect can follow.
    assert_eq!(session.next_event().await, None);
    assert_eq!(
        session.edit(Operation::insert(0, "x")).await,
        Err(Error::Forbidden("not this document".into()))
    );
}

#[tokio::test]
async fn a_refusal_at_reconnect_is_final() {
    let fake = Fake::new().await;
    let far = now_secs() + 3600;
    for (code, expected) in [
        ("forbidden", Error::Forbidden("no access".into())),
        ("unauthorized", Error::Unauthorized("no access".into())),
    ] {
        let (mut session, ws, _) = connect(&fake, options("t1"), welcome("", "write", far)).await;
        drop(ws);
        let (mut ws, _) = fake.accept().await;
        send(
            &mut ws,
            json!({"type": "error", "code": code, "message": "no access"}),
        )
        .await;
        let _ = ws.close(None).await;
        assert_eq!(session.closed().await, expected);
        assert_eq!(session.closed_reason(), Some(expected.clone()));
        let events = events_until(&mut session, |e| matches!(e, Event::Closed { .. })).await;
        assert!(
            matches!(events.last(), Some(Event::Closed { .. })),
            "{events:?}"
        );
        assert_eq!(session.next_event().await, None, "no reconnect");
        assert!(session.status().closed);
    }
}

#[tokio::test]
async fn a_rate_limited_auth_frame_is_sent_again() {
    let fake = Fake::new().await;
    let far = now_secs() + 3600;
    let (mut session, mut ws, _) = connect(&fake, options("t1"), welcome("", "write", far)).await;
    session.set_token("t2").await.unwrap();
    let auth = json!({"type": "auth", "token": "t2"});
    assert_eq!(next_json(&mut ws).await, auth);
    let limited = std::time::Instant::now();
    send(
        &mut ws,
        json!({"type": "error", "code": "rate_limited", "message": "slow down"}),
    )
    .await;
    // The same token again, a moment later; nothing else is asked for.
    assert_eq!(next_json(&mut ws).await, auth);
    assert!(limited.elapsed() >= Duration::from_millis(900));
    send(&mut ws, json!({"type": "auth", "role": "read", "exp": far})).await;
    let events = events_until(&mut session, |e| matches!(e, Event::Auth { .. })).await;
    assert_eq!(
        events.last(),
        Some(&Event::Auth {
            role: Some(Role::Read),
            exp: Some(far)
        })
    );
    assert!(session.status().connected);
}

#[tokio::test]
async fn a_failed_refresh_is_reported_and_tried_again() {
    let fake = Fake::new().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let refresher = TokenRefresher::new(move || {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Err("backend down".to_owned())
            } else {
                Ok(format!("t{}", n + 1))
            }
        }
    });
    let exp = now_secs() + 3;
    let options = Options {
        refresh_token: Some(refresher),
        ..options("t1")
    };
    let (mut session, mut ws, _) = connect(&fake, options, welcome("", "write", exp)).await;
    // Asked at ¾ of the lifetime, failed, asked again a second later.
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "auth", "token": "t2"})
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let events = events_until(&mut session, |e| {
        matches!(e, Event::TokenRefreshFailed { .. })
    })
    .await;
    assert_eq!(
        events.last(),
        Some(&Event::TokenRefreshFailed {
            message: "backend down".into()
        })
    );
    send(
        &mut ws,
        json!({"type": "auth", "role": "write", "exp": exp + 600}),
    )
    .await;
    session
        .wait_for(|s| s.exp == Some(exp + 600))
        .await
        .unwrap();
    // The new token is used for the next connection.
    session.drop_connection().await.unwrap();
    let (_ws, uri) = fake.accept().await;
    assert!(uri.ends_with("&token=t2"), "{uri}");
}

#[tokio::test]
async fn a_token_from_the_refresher_when_none_is_given() {
    let fake = Fake::new().await;
    let refreshing = Options {
        refresh_token: Some(TokenRefresher::new(|| async {
            Ok::<_, String>("fresh".to_owned())
        })),
        ..Options::default()
    };
    let (session, _ws, uri) =
        connect(&fake, refreshing, welcome("", "read", now_secs() + 600)).await;
    assert_eq!(uri, "/ws/documents/doc?token=fresh");
    assert_eq!(session.status().role, Some(Role::Read));
    // The token never shows in debug output.
    let shown = format!("{:?}", options("secret-token"));
    assert!(!shown.contains("secret-token"), "{shown}");
}
