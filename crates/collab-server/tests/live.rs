//! Live collaboration over WebSocket with the Rust client library: edits
//! reach everyone, replicas converge with the stored content, reconnecting
//! clients apply every edit exactly once, and presence follows the text.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::time::Duration;

use collab_client::{Event, Operation, Options, Session, User};
use common::{spawn_app_with, test_config, wait_for, TestApp, TestDb};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn live_config(db: &TestDb) -> collab_server::Config {
    let mut config = test_config(db);
    config.max_document_chars = 1_000_000;
    config.max_ops_per_second = 100_000;
    config
}

async fn connect(app: &TestApp, doc: &str, client_id: &str) -> Session {
    let options = Options {
        client_id: Some(client_id.to_owned()),
        ..Options::default()
    };
    Session::connect(&app.url(""), doc, options)
        .await
        .expect("connect")
}

/// The stored document, and its op log checked to be gap-free.
async fn stored(app: &TestApp, doc: &str) -> (String, u64, Vec<Value>) {
    let (status, body) = app.get(&format!("/api/documents/{doc}")).await;
    assert_eq!(status, 200, "{body}");
    let rev = body["rev"].as_u64().unwrap();
    let mut ops = Vec::new();
    while (ops.len() as u64) < rev {
        let (_, page) = app
            .get(&format!(
                "/api/documents/{doc}/ops?since={}&limit=1000",
                ops.len()
            ))
            .await;
        let page = page["ops"].as_array().unwrap().clone();
        assert!(!page.is_empty(), "op log ends before rev {rev}");
        ops.extend(page);
    }
    let revs: Vec<u64> = ops.iter().map(|o| o["rev"].as_u64().unwrap()).collect();
    assert_eq!(revs, (1..=rev).collect::<Vec<_>>(), "gap-free history");
    (body["content"].as_str().unwrap().to_owned(), rev, ops)
}

/// Every `(client_id, seq)` in the log appears once.
fn assert_exactly_once(ops: &[Value]) {
    let mut seen = HashSet::new();
    for op in ops {
        if let (Some(c), Some(s)) = (op["client_id"].as_str(), op["seq"].as_u64()) {
            assert!(seen.insert((c.to_owned(), s)), "({c}, {s}) committed twice");
        }
    }
}

async fn two_clients_see_each_other(db: &TestDb) {
    let app = spawn_app_with(live_config(db)).await;
    app.create("doc", "Doc", "hello").await;
    let mut a = connect(&app, "doc", "alice").await;
    let b = connect(&app, "doc", "bob").await;

    a.edit(Operation::insert(5, " world")).await.unwrap();
    b.edit(Operation::insert(0, "😭 ")).await.unwrap();
    a.wait_synced().await.unwrap();
    b.wait_synced().await.unwrap();
    a.wait_for_rev(2).await.unwrap();
    b.wait_for_rev(2).await.unwrap();

    let (content, rev, _) = stored(&app, "doc").await;
    assert_eq!(content, "😭 hello world");
    assert_eq!(rev, 2);
    assert_eq!(a.content().await.unwrap(), content);
    assert_eq!(b.content().await.unwrap(), content);

    // Alice saw Bob's edit as a remote op, not her own.
    let mut remote_from = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(200), a.next_event()).await
    {
        if let Event::Remote { client_id, .. } = event {
            remote_from.push(client_id);
        }
    }
    assert_eq!(remote_from, vec![Some("bob".to_owned())]);
    app.stop().await;
}

/// Random inserts (with emoji) and deletes from one client, with pauses.
async fn type_randomly(session: Session, seed: u64, ops: usize) -> Session {
    let mut rng = StdRng::seed_from_u64(seed);
    const WORDS: &[&str] = &["a", "bc", "😭", "é", "🎉x", " ", "\n", "中文"];
    for _ in 0..ops {
        // Decided now, placed against the content as it is when applied.
        let (at, delete, len, word) = (
            rng.gen::<f64>(),
            rng.gen_bool(0.35),
            rng.gen_range(1..=3),
            WORDS[rng.gen_range(0..WORDS.len())],
        );
        session
            .edit_with(move |content| {
                let n = content.len_chars();
                let pos = ((n + 1) as f64 * at) as usize;
                Some(if delete && n > pos {
                    Operation::delete(pos, len.min(n - pos))
                } else {
                    Operation::insert(pos.min(n), word)
                })
            })
            .await
            .unwrap();
        // A pause of a few ms after each keystroke: long enough that many ops
        // reach the server concurrently, short enough that others compose.
        tokio::time::sleep(Duration::from_micros(rng.gen_range(0..4000))).await;
    }
    session
}

async fn eight_clients_converge(db: &TestDb) {
    let app = spawn_app_with(live_config(db)).await;
    app.create("doc", "Doc", "start").await;
    let mut sessions = Vec::new();
    for i in 0..8 {
        sessions.push(connect(&app, "doc", &format!("c{i}")).await);
    }
    let typing: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, s)| tokio::spawn(type_randomly(s, i as u64, 500)))
        .collect();
    let mut sessions = Vec::new();
    for t in typing {
        sessions.push(t.await.unwrap());
    }
    for s in &sessions {
        s.wait_synced().await.unwrap();
    }
    let (content, rev, ops) = stored(&app, "doc").await;
    for s in &sessions {
        s.wait_for_rev(rev).await.unwrap();
        assert_eq!(
            s.content().await.unwrap(),
            content,
            "{} diverged",
            s.client_id()
        );
    }
    // Edits made while one is in flight are composed, so fewer revisions
    // than keystrokes; but every client must have committed many.
    assert!(rev >= 8 * 20, "only {rev} revisions");
    eprintln!(
        "8 clients x 500 edits: {rev} revisions, {} chars",
        content.chars().count()
    );
    assert_exactly_once(&ops);
    app.stop().await;
}

async fn reconnecting_clients_apply_each_edit_once(db: &TestDb) {
    let app = spawn_app_with(live_config(db)).await;
    app.create("doc", "Doc", "").await;
    let a = connect(&app, "doc", "alice").await;
    let b = connect(&app, "doc", "bob").await;
    let mut markers = Vec::new();
    for round in 0..30 {
        // An op goes out, more edits buffer behind it, and the connection
        // drops before (or after) the ack: a race the client must survive.
        for k in 0..3 {
            let marker = format!("<{round}.{k}>");
            a.edit(Operation::insert(0, &marker)).await.unwrap();
            markers.push(marker);
        }
        a.drop_connection().await.unwrap();
        b.edit(Operation::insert(0, "b")).await.unwrap();
    }
    a.wait_synced().await.unwrap();
    b.wait_synced().await.unwrap();
    let (content, rev, ops) = stored(&app, "doc").await;
    a.wait_for_rev(rev).await.unwrap();
    b.wait_for_rev(rev).await.unwrap();
    for marker in &markers {
        assert_eq!(
            content.matches(marker.as_str()).count(),
            1,
            "{marker} in {content}"
        );
    }
    assert_eq!(content.matches('b').count(), 30);
    assert_eq!(a.content().await.unwrap(), content);
    assert_eq!(b.content().await.unwrap(), content);
    assert_exactly_once(&ops);
    app.stop().await;
}

async fn presence_follows_the_text(db: &TestDb) {
    let app = spawn_app_with(live_config(db)).await;
    app.create("doc", "Doc", "hello world").await;
    let user = |name: &str| User {
        name: name.to_owned(),
        color: "#123456".to_owned(),
    };
    let a = Session::connect(
        &app.url(""),
        "doc",
        Options {
            client_id: Some("alice".into()),
            user: Some(user("Alice")),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let mut b = connect(&app, "doc", "bob").await;
    a.set_presence(Some([6, 11])).await.unwrap();

    // Alice's client first announced who she is (no selection yet); wait
    // for the selection itself.
    let seen = next_matching(&mut b, |e| {
        matches!(
            e,
            Event::Presence {
                selection: Some(_),
                ..
            }
        )
    })
    .await;
    let Event::Presence {
        client_id,
        selection,
        user: u,
    } = seen
    else {
        unreachable!()
    };
    assert_eq!((client_id.as_str(), selection), ("alice", Some([6, 11])));
    assert_eq!(u["name"], "Alice");

    // Bob types before Alice's selection: it moves with the text.
    b.edit(Operation::insert(0, ">> ")).await.unwrap();
    b.wait_synced().await.unwrap();

    let mut c = connect(&app, "doc", "carol").await;
    let welcome = next_matching(&mut c, |e| matches!(e, Event::Welcome { .. })).await;
    let Event::Welcome { peers, rev } = welcome else {
        unreachable!()
    };
    assert_eq!(rev, 1);
    let alice = peers
        .iter()
        .find(|p| p.client_id == "alice")
        .expect("alice in peers");
    assert_eq!(alice.selection, Some([9, 14]));
    assert_eq!(alice.user["name"], "Alice");
    assert!(peers.iter().all(|p| p.client_id != "carol"));

    // Alice's own edit moves her selection too; when her connection drops,
    // her client shares the moved selection again as it reconnects.
    a.edit(Operation::insert(0, "!")).await.unwrap();
    a.wait_synced().await.unwrap();
    a.drop_connection().await.unwrap();
    next_matching(
        &mut c,
        |e| matches!(e, Event::Leave { client_id } if client_id == "alice"),
    )
    .await;
    let back = next_matching(&mut c, |e| {
        matches!(e, Event::Presence { client_id, selection: Some(_), .. } if client_id == "alice")
    })
    .await;
    let Event::Presence { selection, .. } = back else {
        unreachable!()
    };
    assert_eq!(
        selection,
        Some([10, 15]),
        "alice's selection after reconnecting"
    );

    drop(a);
    let left = next_matching(&mut c, |e| matches!(e, Event::Leave { .. })).await;
    assert_eq!(
        left,
        Event::Leave {
            client_id: "alice".into()
        }
    );
    app.stop().await;
}

async fn next_matching(session: &mut Session, want: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = session.next_event().await.expect("session ended");
            if want(&event) {
                return event;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

async fn rest_edits_reach_live_clients(db: &TestDb) {
    let app = spawn_app_with(live_config(db)).await;
    app.create("doc", "Doc", "abc").await;
    let a = connect(&app, "doc", "alice").await;
    app.edit("doc", 0, serde_json::json!([3, "d"])).await;
    a.wait_for_rev(1).await.unwrap();
    assert_eq!(a.content().await.unwrap(), "abcd");
    wait_for(
        WAIT,
        "rooms stay loaded while clients are connected",
        || async { app.state.rooms.open_rooms() == 1 },
    )
    .await;
    app.stop().await;
}

backend_tests!(
    two_clients_see_each_other,
    eight_clients_converge,
    reconnecting_clients_apply_each_edit_once,
    presence_follows_the_text,
    rest_edits_reach_live_clients,
);
