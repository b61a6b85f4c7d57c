//! The live protocol frame by frame (docs/protocol.md §3–§4), with raw
//! WebSocket clients that can send anything, next to a well-behaved
//! `collab-client` session: malformed and oversized frames get exactly the
//! protocol's error and change nothing, limits are enforced per connection,
//! unknown and deleted documents close the socket, rooms unload when nobody
//! uses them, a client that stops reading is cut off without stalling its
//! room, and resuming connections get the ops they missed.

#[macro_use]
mod common;

use std::time::Duration;

use collab_client::{ErrorCode, Event, Operation, Options, Session};
use collab_server::domain::DocumentId;
use common::ws::*;
use common::{spawn_app_with, test_config, wait_for, TestApp, TestDb};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

// ---------------------------------------------------------------------------
// Well-behaved client and store helpers

async fn session(app: &TestApp, doc: &str, client_id: &str) -> Session {
    let options = Options {
        client_id: Some(client_id.to_owned()),
        ..Options::default()
    };
    tokio::time::timeout(WAIT, Session::connect(&app.url(""), doc, options))
        .await
        .expect("session connect timed out")
        .expect("session connect")
}

/// Events up to and including the first one `want` accepts.
async fn events_until(session: &mut Session, want: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let event = session.next_event().await.expect("session ended");
            let done = want(&event);
            seen.push(event);
            if done {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for an event; saw {seen:?}"));
    seen
}

/// The stored op log (at most 1000 ops), through REST.
async fn stored_ops(app: &TestApp, doc: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/api/documents/{doc}/ops?limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["ops"].as_array().expect("ops").clone()
}

// ---------------------------------------------------------------------------
// 1. Bad frames

async fn bad_frames_get_one_error_each_and_change_nothing(db: &TestDb) {
    let app = spawn_app_with(test_config(db)).await;
    app.create("doc", "Doc", "hello").await;
    let mut peer = session(&app, "doc", "peer").await;
    let (mut ws, welcome) = join(&app, "doc", "raw").await;
    assert_eq!(welcome["rev"], 0, "{welcome}");
    assert_eq!(welcome["content"], "hello", "{welcome}");

    // A well-formed op, one byte over the message limit.
    let limit = app.state.limits.max_message_bytes;
    let (head, tail) = (r#"{"type":"op","rev":0,"seq":40,"op":[""#, r#""]}"#);
    let oversized = format!(
        "{head}{}{tail}",
        "x".repeat(limit + 1 - head.len() - tail.len())
    );
    assert_eq!(oversized.len(), limit + 1);

    let text = |s: &str| Message::text(s.to_owned());
    let corpus: Vec<(&str, Message, &str, Option<u64>)> = vec![
        (
            "non-JSON text",
            text("this is not json"),
            "bad_message",
            None,
        ),
        ("empty text", text(""), "bad_message", None),
        ("JSON array", text("[]"), "bad_message", None),
        ("empty object", text("{}"), "bad_message", None),
        ("JSON string", text(r#""op""#), "bad_message", None),
        (
            "unknown type",
            text(r#"{"type":"hello","rev":0,"seq":1,"op":[5,"!"]}"#),
            "bad_message",
            None,
        ),
        (
            "type not a string",
            text(r#"{"type":1,"rev":0,"seq":1,"op":[5,"!"]}"#),
            "bad_message",
            None,
        ),
        (
            "op without seq",
            text(r#"{"type":"op","rev":0,"op":[5,"!"]}"#),
            "bad_message",
            None,
        ),
        (
            "op without rev",
            text(r#"{"type":"op","seq":1,"op":[5,"!"]}"#),
            "bad_message",
            None,
        ),
        (
            "op without op",
            text(r#"{"type":"op","rev":0,"seq":1}"#),
            "bad_message",
            None,
        ),
        (
            "seq 0",
            text(r#"{"type":"op","rev":0,"seq":0,"op":[5,"!"]}"#),
            "bad_message",
            None,
        ),
        (
            "negative seq",
            text(r#"{"type":"op","rev":0,"seq":-1,"op":[5,"!"]}"#),
            "bad_message",
            None,
        ),
        (
            "negative rev",
            text(r#"{"type":"op","rev":-1,"seq":1,"op":[5,"!"]}"#),
            "bad_message",
            None,
        ),
        (
            "string rev",
            text(r#"{"type":"op","rev":"0","seq":1,"op":[5,"!"]}"#),
            "bad_message",
            None,
        ),
        (
            "float seq",
            text(r#"{"type":"op","rev":0,"seq":1.5,"op":[5,"!"]}"#),
            "bad_message",
            None,
        ),
        (
            "op [0]",
            text(r#"{"type":"op","rev":0,"seq":2,"op":[0]}"#),
            "invalid_op",
            Some(2),
        ),
        (
            "op [{\"d\":0}]",
            text(r#"{"type":"op","rev":0,"seq":3,"op":[{"d":0}]}"#),
            "invalid_op",
            Some(3),
        ),
        (
            "op [\"\"]",
            text(r#"{"type":"op","rev":0,"seq":4,"op":[""]}"#),
            "invalid_op",
            Some(4),
        ),
        (
            "op not an array",
            text(r#"{"type":"op","rev":0,"seq":5,"op":{"d":1}}"#),
            "invalid_op",
            Some(5),
        ),
        (
            "op skipping past the end",
            text(r#"{"type":"op","rev":0,"seq":6,"op":[6,"!"]}"#),
            "invalid_op",
            Some(6),
        ),
        (
            "op deleting past the end",
            text(r#"{"type":"op","rev":0,"seq":7,"op":[5,{"d":1}]}"#),
            "invalid_op",
            Some(7),
        ),
        (
            "text delete that does not match",
            text(r#"{"type":"op","rev":0,"seq":8,"op":[{"d":"xyz"}]}"#),
            "invalid_op",
            Some(8),
        ),
        (
            "rev one in the future",
            text(r#"{"type":"op","rev":1,"seq":9,"op":[5,"!"]}"#),
            "rev_out_of_range",
            Some(9),
        ),
        (
            "rev far in the future",
            text(r#"{"type":"op","rev":1000000,"seq":10,"op":[5,"!"]}"#),
            "rev_out_of_range",
            Some(10),
        ),
        (
            "presence with a 1-element selection",
            text(r#"{"type":"presence","selection":[1]}"#),
            "bad_message",
            None,
        ),
        (
            "presence with a 3-element selection",
            text(r#"{"type":"presence","selection":[1,2,3]}"#),
            "bad_message",
            None,
        ),
        (
            "presence with user as a string",
            text(r#"{"type":"presence","selection":[1,2],"user":"me"}"#),
            "bad_message",
            None,
        ),
        (
            "binary frame",
            Message::binary(br#"{"type":"op","rev":0,"seq":11,"op":[5,"!"]}"#.to_vec()),
            "bad_message",
            None,
        ),
        (
            "text frame over the message limit",
            Message::text(oversized),
            "too_large",
            None,
        ),
    ];

    // One frame at a time: each gets its one answer before the next goes out.
    for (what, message, code, seq) in corpus {
        ws.send(message)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let reply = next_json(&mut ws).await;
        assert_error_frame(&reply, code, seq, what);
    }

    // Still open, and still in step: a valid op is taken. Were any bad frame
    // answered twice, the extra answer would arrive before this ack.
    send_op(&mut ws, 0, 100, json!([5, " world"])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "ack", "seq": 100, "rev": 1})
    );

    // The peer saw the valid op and nothing else: no error, no presence from
    // the refused presence frames, no reset, no reconnect.
    let events = events_until(&mut peer, |e| matches!(e, Event::Remote { .. })).await;
    assert!(
        matches!(events.first(), Some(Event::Welcome { rev: 0, .. })),
        "{events:?}"
    );
    assert_eq!(events.len(), 2, "peer saw more than the op: {events:?}");
    assert_eq!(
        events[1],
        Event::Remote {
            rev: 1,
            op: Operation::insert(5, " world"),
            client_id: Some("raw".to_owned()),
            seq: Some(100),
            author: None,
        }
    );
    assert_eq!(peer.content().await.unwrap(), "hello world");
    assert!(peer.status().connected);

    // The store changed by that op alone.
    assert_eq!(stored(&app, "doc").await, ("hello world".to_owned(), 1));
    let ops = stored_ops(&app, "doc").await;
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0]["client_id"], "raw");
    assert_eq!(ops[0]["seq"], 100);
    assert_eq!(ops[0]["op"], json!([5, " world"]));
    app.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Document size limit

async fn document_size_limit_refuses_and_keeps_the_connection(db: &TestDb) {
    let config = test_config(db);
    let max = config.max_document_chars;
    let app = spawn_app_with(config).await;
    let start = "a".repeat(max - 5);
    app.create("doc", "Doc", &start).await;
    let (mut ws, _) = join(&app, "doc", "raw").await;

    // Six more characters would be one too many.
    send_op(&mut ws, 0, 1, json!([max - 5, "bcdefg"])).await;
    assert_error_frame(&next_json(&mut ws).await, "too_large", Some(1), "6 over");
    assert_eq!(stored(&app, "doc").await, (start.clone(), 0));

    // Multi-byte characters count once each: five emoji reach the limit exactly.
    send_op(&mut ws, 0, 2, json!([max - 5, "😭😭😭😭😭"])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "ack", "seq": 2, "rev": 1})
    );
    let full = format!("{start}😭😭😭😭😭");
    assert_eq!(stored(&app, "doc").await, (full.clone(), 1));

    // One more is refused, wherever it goes, and the connection stays open.
    send_op(&mut ws, 1, 3, json!(["z"])).await;
    assert_error_frame(&next_json(&mut ws).await, "too_large", Some(3), "1 over");
    // A replacement that keeps the length is fine.
    send_op(&mut ws, 1, 4, json!([{"d": 1}, "b"])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "ack", "seq": 4, "rev": 2})
    );
    assert_eq!(
        stored(&app, "doc").await,
        (format!("b{}", &full[1..]), 2),
        "only the accepted ops are stored"
    );
    assert_eq!(stored_ops(&app, "doc").await.len(), 2);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Rate limit

async fn rate_limit_refuses_excess_ops_and_keeps_the_connection(db: &TestDb) {
    let mut config = test_config(db);
    config.max_ops_per_second = 5;
    let app = spawn_app_with(config).await;
    app.create("doc", "Doc", "").await;
    let (mut ws, _) = join(&app, "doc", "raw").await;

    // Twenty ops at once, all written against rev 0: the server transforms
    // the ones it takes.
    const BURST: u64 = 20;
    for seq in 1..=BURST {
        send_op(&mut ws, 0, seq, json!(["x"])).await;
    }
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..BURST {
        let frame = next_json(&mut ws).await;
        match frame["type"].as_str() {
            Some("ack") => acked.push((
                frame["seq"].as_u64().unwrap(),
                frame["rev"].as_u64().unwrap(),
            )),
            Some("error") => {
                let seq = frame["seq"].as_u64();
                assert_error_frame(&frame, "rate_limited", seq, "burst");
                refused.push(seq.expect("rate_limited carries the seq"));
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    // Every op got exactly one answer.
    let mut answered: Vec<u64> = acked
        .iter()
        .map(|(s, _)| *s)
        .chain(refused.clone())
        .collect();
    answered.sort_unstable();
    assert_eq!(answered, (1..=BURST).collect::<Vec<_>>());
    // A full bucket lets the first five through; twenty in a few
    // milliseconds cannot all fit.
    assert!(acked.len() >= 5, "acked {acked:?}");
    assert!(!refused.is_empty(), "nothing was rate limited: {acked:?}");
    let mut revs: Vec<u64> = acked.iter().map(|(_, r)| *r).collect();
    revs.sort_unstable();
    assert_eq!(revs, (1..=acked.len() as u64).collect::<Vec<_>>());

    // Still open: once the bucket refills, an op goes through.
    let mut seq = BURST;
    let last_rev = loop {
        seq += 1;
        assert!(seq < BURST + 100, "never accepted again");
        send_op(&mut ws, 0, seq, json!(["x"])).await;
        let frame = next_json(&mut ws).await;
        if frame["type"] == "ack" {
            assert_eq!(frame["seq"], seq, "{frame}");
            acked.push((seq, frame["rev"].as_u64().unwrap()));
            break frame["rev"].as_u64().unwrap();
        }
        assert_error_frame(&frame, "rate_limited", Some(seq), "retry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Exactly the acknowledged ops are stored.
    assert_eq!(last_rev, acked.len() as u64);
    let (content, rev) = stored(&app, "doc").await;
    assert_eq!(rev, acked.len() as u64);
    assert_eq!(content, "x".repeat(acked.len()));
    let mut stored_seqs: Vec<u64> = stored_ops(&app, "doc")
        .await
        .iter()
        .map(|o| o["seq"].as_u64().unwrap())
        .collect();
    stored_seqs.sort_unstable();
    let mut acked_seqs: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
    acked_seqs.sort_unstable();
    assert_eq!(stored_seqs, acked_seqs);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Refused connections

async fn unknown_documents_and_bad_queries_are_refused_and_closed(db: &TestDb) {
    let app = spawn_app_with(test_config(db)).await;
    app.create("doc", "Doc", "x").await;
    let long_id = "a".repeat(65);
    let cases = [
        ("/ws/documents/nope".to_owned(), "not_found"),
        (
            "/ws/documents/nope?client_id=c&since=0".to_owned(),
            "not_found",
        ),
        ("/ws/documents/bad!id".to_owned(), "not_found"),
        ("/ws/documents/has%20space".to_owned(), "not_found"),
        (
            "/ws/documents/doc?client_id=has%20space".to_owned(),
            "bad_message",
        ),
        (
            format!("/ws/documents/doc?client_id={long_id}"),
            "bad_message",
        ),
        ("/ws/documents/doc?client_id=".to_owned(), "bad_message"),
        ("/ws/documents/doc?since=abc".to_owned(), "bad_message"),
        ("/ws/documents/doc?since=-1".to_owned(), "bad_message"),
    ];
    for (path, code) in cases {
        let mut ws = open_raw(&app, &path).await;
        let (frames, end) = read_until_closed(&mut ws, WAIT).await;
        assert_eq!(frames.len(), 1, "{path}: {frames:?}");
        assert_error_frame(&frames[0], code, None, &path);
        assert!(matches!(end, End::Close(_)), "{path}: ended with {end:?}");
    }
    // Nothing was loaded for the refused connections, nor changed.
    assert_eq!(app.state.rooms.open_rooms(), 0);
    assert_eq!(stored(&app, "doc").await, ("x".to_owned(), 0));
    app.stop().await;
}

// ---------------------------------------------------------------------------
// 5. Deletion

async fn deleting_a_document_closes_its_sessions(db: &TestDb) {
    let app = spawn_app_with(test_config(db)).await;
    app.create("doc", "Doc", "x").await;
    let mut client = session(&app, "doc", "lib").await;
    let (mut ws, _) = join(&app, "doc", "raw").await;
    // Another document's session must not notice.
    app.create("other", "Other", "y").await;
    let (mut bystander, _) = join(&app, "other", "bystander").await;

    let (status, body) = app.delete("/api/documents/doc").await;
    assert_eq!(status, 204, "{body}");

    let (frames, end) = read_until_closed(&mut ws, WAIT).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_error_frame(&frames[0], "document_deleted", None, "raw client");
    assert!(matches!(end, End::Close(_)), "ended with {end:?}");

    let events = events_until(&mut client, |e| matches!(e, Event::Closed { .. })).await;
    assert_eq!(
        events.last(),
        Some(&Event::Closed {
            code: ErrorCode::DocumentDeleted
        }),
        "{events:?}"
    );
    assert!(client.status().closed);
    assert!(!client.status().connected);

    // Rejoining finds nothing; the other document carries on.
    let mut again = open_raw(&app, "/ws/documents/doc?client_id=raw").await;
    let (frames, _) = read_until_closed(&mut again, WAIT).await;
    assert_error_frame(&frames[0], "not_found", None, "rejoin");
    send_op(&mut bystander, 0, 1, json!([1, "z"])).await;
    assert_eq!(
        next_json(&mut bystander).await,
        json!({"type": "ack", "seq": 1, "rev": 1})
    );
    wait_for(WAIT, "the deleted document's room to go", || async {
        app.state.rooms.open_rooms() == 1
    })
    .await;
    app.stop().await;
}

/// Deletion while a client is busy editing: the room is still working
/// through that client's queued ops when the store has already dropped the
/// document, and every session must still be told `document_deleted`.
async fn deleting_a_document_being_edited_closes_its_sessions_with_document_deleted(db: &TestDb) {
    let mut config = test_config(db);
    config.max_ops_per_second = 1_000_000;
    config.max_document_chars = 1_000_000;
    let app = spawn_app_with(config).await;
    app.create("doc", "Doc", "").await;
    // An idle peer, and a raw client that keeps the room's queue full: it
    // pipelines single-character inserts, each written against the revision
    // its previous op produced.
    let mut watcher = session(&app, "doc", "watcher").await;
    let (ws, _) = join(&app, "doc", "busy").await;
    let (mut sink, mut stream) = ws.split();
    let typing = tokio::spawn(async move {
        for seq in 1..=200_000u64 {
            let frame = json!({"type": "op", "rev": seq - 1, "seq": seq, "op": ["x"]});
            if sink.send(Message::text(frame.to_string())).await.is_err() {
                return;
            }
        }
    });
    let mut acks = 0;
    while acks < 100 {
        let frame = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("timed out waiting for acks");
        match frame {
            Some(Ok(Message::Text(text))) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["type"], "ack", "{v}");
                acks += 1;
            }
            Some(Ok(_)) => {}
            other => panic!("busy client's socket ended early: {other:?}"),
        }
    }

    let (status, body) = app.delete("/api/documents/doc").await;
    assert_eq!(status, 204, "{body}");

    // The busy client: acks for what was stored before, then the error, then the end.
    let mut others = Vec::new();
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if v["type"] != "ack" {
                        others.push(v);
                    }
                }
                Some(Ok(Message::Close(frame))) => return format!("close frame {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return format!("error {e}"),
                None => return "end of stream".to_owned(),
            }
        }
    })
    .await
    .expect("the busy client's socket was never closed");
    typing.abort();
    let watcher_events = events_until(&mut watcher, |e| matches!(e, Event::Closed { .. })).await;
    let watcher_end = watcher_events.last().cloned();

    let busy_told = others.len() == 1
        && others[0]["type"] == "error"
        && others[0]["code"] == "document_deleted";
    let watcher_told = watcher_end
        == Some(Event::Closed {
            code: ErrorCode::DocumentDeleted,
        });
    assert!(
        busy_told && watcher_told,
        "deletion during editing must end every session with document_deleted;\n\
         busy client got {others:?} (besides acks), then {end};\n\
         idle watcher's events: {:?}",
        watcher_events
            .iter()
            .filter(|e| !matches!(e, Event::Remote { .. }))
            .collect::<Vec<_>>()
    );
    assert!(watcher.status().closed);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// 6. Memory follows use

async fn idle_rooms_unload_with_a_snapshot_but_connected_ones_stay(db: &TestDb) {
    let mut config = test_config(db);
    config.room_idle_secs = 1;
    let app = spawn_app_with(config).await;
    app.create("doc", "Doc", "abc").await;
    let id = DocumentId::parse("doc").unwrap();

    let client = session(&app, "doc", "lib").await;
    client.edit(Operation::insert(3, "d")).await.unwrap();
    client.edit(Operation::insert(4, "e")).await.unwrap();
    client.wait_synced().await.unwrap();
    let rev = client.status().rev;
    assert!(rev >= 1);
    assert_eq!(app.state.rooms.open_rooms(), 1);
    drop(client);

    wait_for(WAIT, "the idle room to unload", || async {
        app.state.rooms.open_rooms() == 0
    })
    .await;
    // The room leaves the registry first and then writes its snapshot.
    wait_for(WAIT, "a snapshot at the final revision", || async {
        app.state.store.latest_snapshot_rev(&id).await.unwrap() == Some(rev)
    })
    .await;
    // A reload serves the same content.
    assert_eq!(stored(&app, "doc").await, ("abcde".to_owned(), rev));

    // A connected but idle client keeps its room loaded, well past the idle
    // period (a negative property: it has to be watched for a while).
    let (mut ws, _) = join(&app, "doc", "idle").await;
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < until {
        assert_eq!(
            app.state.rooms.open_rooms(),
            1,
            "a room with a session unloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the session is still served by that room.
    send_op(&mut ws, rev, 1, json!([5, "f"])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "ack", "seq": 1, "rev": rev + 1})
    );
    ws.close(None).await.expect("close");
    wait_for(
        WAIT,
        "the room to unload after the last session",
        || async { app.state.rooms.open_rooms() == 0 },
    )
    .await;
    wait_for(WAIT, "a snapshot at the new final revision", || async {
        app.state.store.latest_snapshot_rev(&id).await.unwrap() == Some(rev + 1)
    })
    .await;
    app.stop().await;
}

// ---------------------------------------------------------------------------
// 7. Slow consumer

/// The kernel's ceiling on a TCP send buffer: all the server side can hold
/// for a socket nobody reads, beyond the session's queue.
fn max_tcp_send_buffer() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

async fn a_client_that_stops_reading_is_cut_off_without_stalling_the_room(db: &TestDb) {
    const CHUNK: usize = 8 * 1024;
    let mut config = test_config(db);
    config.max_document_chars = 4 * CHUNK;
    config.max_ops_per_second = 1_000_000;
    let app = spawn_app_with(config).await;
    app.create("doc", "Doc", "").await;

    // The slow client: a tiny receive buffer (which also turns off receive
    // autotuning), so what the server cannot queue in its session queue has
    // to fit in its own send buffer, whose ceiling the kernel tells us.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let recv_buffer = tcp.recv_buffer_size().unwrap() as usize;
    let tcp = tcp.connect(app.addr).await.unwrap();
    let url = ws_url(&app, "/ws/documents/doc?client_id=slow");
    let (mut slow, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
        .await
        .expect("slow client connects");
    assert_eq!(next_json(&mut slow).await["type"], "welcome");
    // ... and from here on it reads nothing until the end.

    let mut watcher = session(&app, "doc", "watcher").await;

    // Enough ~8 KiB frames to fill the session queue, every byte of buffer
    // between the room and the slow client, and as much again.
    let queue = app.state.rooms.session_queue();
    let buffers = max_tcp_send_buffer() + recv_buffer + 64 * 1024;
    let total = (2 * queue + buffers / CHUNK) as u64;

    // The writer pipelines its ops (each written against the revision its
    // previous op produced) and reads its acks on another task. Each op
    // replaces the previous chunk, so the document stays small.
    let (writer, _) = join(&app, "doc", "writer").await;
    let (mut sink, mut stream) = writer.split();
    let acks = tokio::spawn(async move {
        let mut acks = Vec::new();
        while (acks.len() as u64) < total {
            let frame = tokio::time::timeout(WAIT, stream.next())
                .await
                .expect("timed out waiting for an ack");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(v["type"], "ack", "writer got {v}");
                    acks.push((v["seq"].as_u64().unwrap(), v["rev"].as_u64().unwrap()));
                }
                Some(Ok(_)) => {}
                other => panic!("writer's socket ended: {other:?}"),
            }
        }
        acks
    });
    let chunk = |i: u64| {
        let stamp = format!("<{i:08}>");
        let mut s = stamp.repeat(CHUNK / stamp.len());
        s.push_str(&"-".repeat(CHUNK - s.len()));
        s
    };
    for i in 1..=total {
        let op = if i == 1 {
            json!([chunk(i)])
        } else {
            json!([{"d": CHUNK}, chunk(i)])
        };
        let frame = json!({"type": "op", "rev": i - 1, "seq": i, "op": op});
        sink.send(Message::text(frame.to_string()))
            .await
            .expect("writer send");
    }
    let acks = tokio::time::timeout(Duration::from_secs(300), acks)
        .await
        .expect("writer never got all its acks")
        .expect("writer's reader");
    let expected: Vec<(u64, u64)> = (1..=total).map(|i| (i, i)).collect();
    assert_eq!(acks, expected, "every op acked once, in order");

    // The room carried on: the store, the watcher and the writer agree.
    let (content, rev) = stored(&app, "doc").await;
    assert_eq!(rev, total);
    assert_eq!(content, chunk(total));
    watcher.wait_for_rev(total).await.unwrap();
    assert_eq!(watcher.content().await.unwrap(), content);
    let events = events_until(
        &mut watcher,
        |e| matches!(e, Event::Remote { rev, .. } if *rev == total),
    )
    .await;
    assert!(
        events
            .iter()
            .all(|e| matches!(e, Event::Welcome { .. } | Event::Remote { .. })),
        "the watcher was disturbed: {:?}",
        events
            .iter()
            .filter(|e| !matches!(e, Event::Remote { .. }))
            .collect::<Vec<_>>()
    );
    assert_eq!(events.len() as u64, total + 1, "welcome plus every op once");
    assert_eq!(app.state.rooms.open_rooms(), 1);

    // The slow client was let go: reading now drains what was queued and
    // buffered for it — a gap-free prefix of the ops — and then the end.
    let (frames, end) = read_until_closed(&mut slow, Duration::from_secs(120)).await;
    let revs: Vec<u64> = frames
        .iter()
        .map(|f| {
            assert_eq!(f["type"], "op", "slow client got {f}");
            f["rev"].as_u64().unwrap()
        })
        .collect();
    assert!(
        (revs.len() as u64) < total,
        "the slow client was never disconnected ({} of {total} ops delivered, ended {end:?})",
        revs.len()
    );
    assert_eq!(
        revs,
        (1..=revs.len() as u64).collect::<Vec<_>>(),
        "the slow client's ops have a gap"
    );
    eprintln!(
        "slow client: {} of {total} ops delivered before it was dropped ({end:?})",
        revs.len()
    );
    drop(sink);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// 8. Resume

async fn resuming_clients_get_the_ops_they_missed(db: &TestDb) {
    let mut config = test_config(db);
    // Short, so the end of the test can resume from an unloaded room.
    config.room_idle_secs = 1;
    let app = spawn_app_with(config).await;
    app.create("doc", "Doc", "abc").await;
    let (mut writer, _) = join(&app, "doc", "w").await;
    for (seq, op) in [
        (1, json!([3, "d"])),
        (2, json!([4, "e"])),
        (3, json!([5, "f"])),
    ] {
        send_op(&mut writer, seq - 1, seq, op).await;
        assert_eq!(
            next_json(&mut writer).await,
            json!({"type": "ack", "seq": seq, "rev": seq})
        );
    }
    // And one REST edit: no client_id, no seq.
    assert_eq!(app.edit("doc", 3, json!([6, "g"])).await, 4);

    // Behind by three: the three ops, no content.
    let (mut ws, welcome) = join_with(&app, "doc", "client_id=x&since=1").await;
    assert_eq!(welcome["client_id"], "x");
    assert_eq!(welcome["rev"], 4);
    assert!(welcome.get("content").is_none(), "{welcome}");
    assert!(welcome["peers"].is_array(), "{welcome}");
    let ops = welcome["ops"].as_array().expect("ops");
    assert_eq!(ops.len(), 3, "{welcome}");
    let expected = [
        (2, json!([4, "e"]), json!("w"), json!(2)),
        (3, json!([5, "f"]), json!("w"), json!(3)),
        (4, json!([6, "g"]), Value::Null, Value::Null),
    ];
    for (op, (rev, body, client_id, seq)) in ops.iter().zip(expected) {
        assert_eq!(op["rev"], rev, "{op}");
        assert_eq!(op["op"], body, "{op}");
        assert_eq!(op["client_id"], client_id, "{op}");
        assert_eq!(op["seq"], seq, "{op}");
        let created = op["created_at"].as_str().expect("created_at");
        assert!(
            created.contains('T') && (created.ends_with('Z') || created.ends_with("+00:00")),
            "created_at is RFC 3339 UTC: {created}"
        );
        let mut keys: Vec<&str> = op.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["author", "client_id", "created_at", "op", "rev", "seq"],
            "{op}"
        );
    }
    // The resumed session is live: its op, based on rev 4, is taken.
    send_op(&mut ws, 4, 1, json!([7, "h"])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "ack", "seq": 1, "rev": 5})
    );
    assert_eq!(
        next_json(&mut writer).await["rev"],
        4,
        "writer sees the REST op"
    );
    assert_eq!(next_json(&mut writer).await["rev"], 5);

    // Up to date: an empty list.
    let (_, welcome) = join_with(&app, "doc", "client_id=y&since=5").await;
    assert_eq!(welcome["rev"], 5);
    assert_eq!(welcome["ops"], json!([]), "{welcome}");
    assert!(welcome.get("content").is_none(), "{welcome}");

    // From the very start: every op.
    let (_, welcome) = join_with(&app, "doc", "client_id=y2&since=0").await;
    let revs: Vec<u64> = welcome["ops"]
        .as_array()
        .expect("ops")
        .iter()
        .map(|o| o["rev"].as_u64().unwrap())
        .collect();
    assert_eq!(revs, [1, 2, 3, 4, 5]);

    // Ahead of the server (it lost nothing, so the client is confused): the
    // full content instead.
    let (_, welcome) = join_with(&app, "doc", "client_id=z&since=6").await;
    assert_eq!(welcome["rev"], 5);
    assert_eq!(welcome["content"], "abcdefgh", "{welcome}");
    assert!(welcome.get("ops").is_none(), "{welcome}");

    // Resuming after the room unloaded reads the ops back from the store.
    drop((ws, writer));
    wait_for(WAIT, "the room to unload", || async {
        app.state.rooms.open_rooms() == 0
    })
    .await;
    let (_, welcome) = join_with(&app, "doc", "client_id=x&since=2").await;
    assert_eq!(welcome["rev"], 5);
    assert!(welcome.get("content").is_none(), "{welcome}");
    let resumed: Vec<(u64, Value)> = welcome["ops"]
        .as_array()
        .expect("ops")
        .iter()
        .map(|o| (o["rev"].as_u64().unwrap(), o["op"].clone()))
        .collect();
    assert_eq!(
        resumed,
        [
            (3, json!([5, "f"])),
            (4, json!([6, "g"])),
            (5, json!([7, "h"]))
        ]
    );
    app.stop().await;
}

backend_tests!(
    bad_frames_get_one_error_each_and_change_nothing,
    document_size_limit_refuses_and_keeps_the_connection,
    rate_limit_refuses_excess_ops_and_keeps_the_connection,
    unknown_documents_and_bad_queries_are_refused_and_closed,
    deleting_a_document_closes_its_sessions,
    deleting_a_document_being_edited_closes_its_sessions_with_document_deleted,
    idle_rooms_unload_with_a_snapshot_but_connected_ones_stay,
    a_client_that_stops_reading_is_cut_off_without_stalling_the_room,
    resuming_clients_get_the_ops_they_missed,
);
