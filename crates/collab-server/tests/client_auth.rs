//! The Rust client library against a server in token mode: connecting with
//! a token, authorship of its edits, refreshing before the token expires,
//! final refusals (bad token, revocation, another user's token) without a
//! reconnect loop, and a downgrade to read that takes back a refused edit.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use collab_client::{Error, ErrorCode, Event, Operation, Options, Role, Session, TokenRefresher};
use collab_server::auth::now_secs;
use common::auth::{admin, claims, sign, token, token_config};
use common::{spawn_app_with, wait_for, TestApp, TestDb};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A token for `sub` with `docs`, valid for `secs` seconds from now, and
/// its `exp`.
fn token_for(sub: &str, docs: &[(&str, &str)], secs: u64) -> (String, u64) {
    let exp = now_secs() + secs;
    let mut claims = claims(sub, docs);
    claims.exp = exp;
    (sign(&claims), exp)
}

async fn create(app: &TestApp, id: &str, content: &str) {
    let res = app
        .http
        .post(app.url("/api/documents"))
        .bearer_auth(admin())
        .json(&json!({"id": id, "title": id, "content": content}))
        .send()
        .await
        .expect("create");
    assert_eq!(res.status().as_u16(), 201, "create {id}");
}

/// A GET with a bearer token: status and JSON body.
async fn get(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let res = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    let status = res.status().as_u16();
    (status, res.json().await.expect("JSON body"))
}

/// The stored content and revision.
async fn stored(app: &TestApp, id: &str) -> (String, u64) {
    let (status, body) = get(app, &format!("/api/documents/{id}"), &admin()).await;
    assert_eq!(status, 200, "{body}");
    (
        body["content"].as_str().unwrap().to_owned(),
        body["rev"].as_u64().unwrap(),
    )
}

fn options(client_id: &str, token: String) -> Options {
    Options {
        client_id: Some(client_id.to_owned()),
        token: Some(token),
        ..Options::default()
    }
}

async fn connect(app: &TestApp, doc: &str, options: Options) -> Session {
    Session::connect(&app.url(""), doc, options)
        .await
        .expect("connect")
}

/// Drains a session's events into a list the test can look at.
fn record(session: &mut Session) -> Arc<Mutex<Vec<Event>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut events = session.take_events();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            sink.lock().unwrap().push(event);
        }
    });
    seen
}

fn has(events: &Mutex<Vec<Event>>, wanted: impl Fn(&Event) -> bool) -> bool {
    events.lock().unwrap().iter().any(wanted)
}

async fn wait_event(
    events: &Arc<Mutex<Vec<Event>>>,
    what: &str,
    wanted: impl Fn(&Event) -> bool + Copy,
) {
    wait_for(WAIT, what, || async move { has(events, wanted) }).await;
}

/// Waits until `session` ends for good; returns why.
async fn ended(session: &Session) -> Error {
    tokio::time::timeout(WAIT, session.closed())
        .await
        .expect("the session did not end")
}

#[tokio::test]
async fn edits_with_a_token_are_authored_by_its_subject() {
    let db = TestDb::sqlite();
    let app = spawn_app_with(token_config(&db)).await;
    create(&app, "notes", "hello").await;
    let (ann_token, ann_exp) = token_for("ann", &[("notes", "write")], 600);
    let ann = connect(&app, "notes", options("ann-client", ann_token.clone())).await;
    let status = ann.status();
    assert_eq!(
        (status.role, status.exp, status.connected),
        (Some(Role::Write), Some(ann_exp), true)
    );
    let mut bob = connect(
        &app,
        "notes",
        options("bob-client", token("bob", &[("notes", "read")])),
    )
    .await;
    assert_eq!(bob.status().role, Some(Role::Read));
    let bob_events = record(&mut bob);

    ann.edit(Operation::insert(5, " world")).await.unwrap();
    tokio::time::timeout(WAIT, ann.wait_synced())
        .await
        .expect("ack")
        .unwrap();
    assert_eq!(stored(&app, "notes").await, ("hello world".to_owned(), 1));

    // The op log names the token's subject, read with a bearer token.
    let (status, body) = get(&app, "/api/documents/notes/ops", &ann_token).await;
    assert_eq!(status, 200, "{body}");
    let ops = body["ops"].as_array().unwrap();
    assert_eq!(ops.len(), 1, "{body}");
    assert_eq!(ops[0]["author"], "ann");
    assert_eq!(ops[0]["client_id"], "ann-client");

    // A reader sees the edit, with its author.
    wait_event(&bob_events, "ann's edit at bob", |e| {
        matches!(e, Event::Remote { .. })
    })
    .await;
    let remote = bob_events
        .lock()
        .unwrap()
        .iter()
        .find(|e| matches!(e, Event::Remote { .. }))
        .cloned();
    assert_eq!(
        remote,
        Some(Event::Remote {
            rev: 1,
            op: Operation::insert(5, " world"),
            client_id: Some("ann-client".into()),
            seq: Some(1),
            author: Some("ann".into()),
        })
    );
    assert_eq!(bob.content().await.unwrap(), "hello world");
    app.stop().await;
}

#[tokio::test]
async fn a_refresh_before_exp_keeps_the_session_alive() {
    let db = TestDb::sqlite();
    let mut config = token_config(&db);
    config.auth_leeway_secs = 0;
    let app = spawn_app_with(config).await;
    create(&app, "notes", "").await;
    let grant = [("notes", "write")];

    // Refreshed: the refresher hands out a long-lived token.
    let (short, short_exp) = token_for("u", &grant, 4);
    let (long, long_exp) = token_for("u", &grant, 600);
    let asked_at = Arc::new(Mutex::new(Vec::new()));
    let asked = asked_at.clone();
    let refresher = TokenRefresher::new(move || {
        asked.lock().unwrap().push(now_secs());
        let long = long.clone();
        async move { Ok::<_, String>(long) }
    });
    let mut refreshed = connect(
        &app,
        "notes",
        Options {
            refresh_token: Some(refresher),
            ..options("refreshed", short.clone())
        },
    )
    .await;
    assert_eq!(refreshed.status().exp, Some(short_exp));
    let refreshed_events = record(&mut refreshed);
    // Not refreshed: the same kind of token, no refresher.
    let (other_short, other_exp) = token_for("v", &grant, 4);
    let expiring = connect(&app, "notes", options("expiring", other_short)).await;

    // The server's answer to the refresh arrives before the first token's exp.
    wait_event(&refreshed_events, "the auth answer", move |e| {
        *e == Event::Auth {
            role: Some(Role::Write),
            exp: Some(long_exp),
        }
    })
    .await;
    let asked: Vec<u64> = asked_at.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "asked once: {asked:?}");
    assert!(asked[0] < short_exp, "asked at {asked:?}, exp {short_exp}");
    assert_eq!(refreshed.status().exp, Some(long_exp));

    // The other session ends at its exp, for good.
    assert_eq!(
        ended(&expiring).await,
        Error::Unauthorized("token expired".into())
    );
    assert!(now_secs() >= other_exp);

    // Past the first token's exp (and a second more), the refreshed
    // session is still the same connection and still edits.
    wait_for(WAIT, "the first token's exp", || async {
        now_secs() > short_exp + 1
    })
    .await;
    let status = refreshed.status();
    assert!(status.connected && !status.closed, "{status:?}");
    refreshed
        .edit(Operation::insert(0, "still here"))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, refreshed.wait_synced())
        .await
        .expect("ack")
        .unwrap();
    assert_eq!(stored(&app, "notes").await.0, "still here");
    assert!(
        !has(&refreshed_events, |e| matches!(
            e,
            Event::Disconnected | Event::Closed { .. } | Event::Error { .. }
        )),
        "{:?}",
        refreshed_events.lock().unwrap()
    );
    // Later connections use the newest token: this one could not have
    // connected with the first.
    refreshed.drop_connection().await.unwrap();
    let welcomes = || {
        let events = refreshed_events.clone();
        async move {
            let events = events.lock().unwrap();
            events
                .iter()
                .filter(|e| matches!(e, Event::Welcome { .. }))
                .count()
                == 2
        }
    };
    wait_for(WAIT, "the reconnect", welcomes).await;
    let status = refreshed.status();
    assert!(status.connected && !status.closed, "{status:?}");
    app.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_for_good() {
    let db = TestDb::sqlite();
    let app = spawn_app_with(token_config(&db)).await;
    create(&app, "notes", "hi").await;
    create(&app, "other", "").await;
    let connect_with = |token: Option<String>| {
        let url = app.url("");
        async move {
            let options = Options {
                token,
                ..Options::default()
            };
            tokio::time::timeout(WAIT, Session::connect(&url, "notes", options))
                .await
                .expect("connect answered")
        }
    };

    // Refused at connect: the error itself, no session, nothing to retry.
    for token in [None, Some("garbage".to_owned())] {
        let refused = connect_with(token.clone()).await.err();
        assert!(
            matches!(refused, Some(Error::Unauthorized(_))),
            "{token:?}: {refused:?}"
        );
    }
    // Expired beyond the server's leeway (30 s).
    let mut expired = claims("u", &[("notes", "write")]);
    expired.exp = now_secs() - 120;
    let expired = sign(&expired);
    let refused = connect_with(Some(expired)).await.err();
    assert!(
        matches!(&refused, Some(Error::Unauthorized(m)) if m.contains("expired")),
        "{refused:?}"
    );
    let refused = connect_with(Some(token("u", &[("other", "write")])))
        .await
        .err();
    assert!(matches!(refused, Some(Error::Forbidden(_))), "{refused:?}");

    // A refresh to another user's token ends a live session: no reconnect.
    let mut session = connect(
        &app,
        "notes",
        options("c", token("u", &[("notes", "write")])),
    )
    .await;
    session
        .set_token(token("someone-else", &[("notes", "write")]))
        .await
        .unwrap();
    assert!(
        matches!(ended(&session).await, Error::Unauthorized(_)),
        "{:?}",
        session.closed_reason()
    );
    let mut events = Vec::new();
    while let Some(e) = tokio::time::timeout(WAIT, session.next_event())
        .await
        .expect("events end")
    {
        events.push(e);
    }
    assert_eq!(
        events.last(),
        Some(&Event::Closed {
            code: ErrorCode::Unauthorized
        }),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::Disconnected)),
        "{events:?}"
    );
    assert!(matches!(
        session.edit(Operation::insert(0, "x")).await,
        Err(Error::Unauthorized(_))
    ));
    assert_eq!(stored(&app, "notes").await, ("hi".to_owned(), 0));
    app.stop().await;
}

#[tokio::test]
async fn a_revocation_ends_the_session() {
    let db = TestDb::sqlite();
    let app = spawn_app_with(token_config(&db)).await;
    create(&app, "notes", "").await;
    let mut eve = connect(
        &app,
        "notes",
        options("eve", token("eve", &[("notes", "write")])),
    )
    .await;
    let bob = connect(
        &app,
        "notes",
        options("bob", token("bob", &[("notes", "write")])),
    )
    .await;
    let eve_events = record(&mut eve);

    let res = app
        .http
        .post(app.url("/api/auth/revocations"))
        .bearer_auth(admin())
        .json(&json!({"sub": "eve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    assert_eq!(
        ended(&eve).await,
        Error::Unauthorized("token revoked".into())
    );
    assert!(eve.status().closed && !eve.status().connected);
    wait_event(&eve_events, "the Closed event", |e| {
        matches!(e, Event::Closed { .. })
    })
    .await;
    let events = eve_events.lock().unwrap().clone();
    let n = events.len();
    assert_eq!(
        events[n - 2..],
        [
            Event::Error {
                code: ErrorCode::Unauthorized,
                message: "token revoked".into(),
                seq: None
            },
            Event::Closed {
                code: ErrorCode::Unauthorized
            }
        ],
        "{events:?}"
    );
    assert!(!events.contains(&Event::Disconnected), "{events:?}");

    // Bob is untouched.
    bob.edit(Operation::insert(0, "b")).await.unwrap();
    tokio::time::timeout(WAIT, bob.wait_synced())
        .await
        .expect("ack")
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_downgrade_to_read_takes_back_the_refused_edit() {
    let db = TestDb::sqlite();
    let mut config = token_config(&db);
    config.auth_leeway_secs = 0;
    let app = spawn_app_with(config).await;
    create(&app, "notes", "hello").await;

    // A writer whose refresher hands out a read token.
    let (write, _) = token_for("u", &[("notes", "write")], 3);
    let (read, read_exp) = token_for("u", &[("notes", "read")], 600);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let refresher = TokenRefresher::new(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        let read = read.clone();
        async move { Ok::<_, String>(read) }
    });
    let mut session = connect(
        &app,
        "notes",
        Options {
            refresh_token: Some(refresher),
            ..options("c", write)
        },
    )
    .await;
    let events = record(&mut session);
    session.edit(Operation::insert(5, "!")).await.unwrap();
    tokio::time::timeout(WAIT, session.wait_synced())
        .await
        .expect("ack")
        .unwrap();
    wait_event(&events, "the downgrade", move |e| {
        *e == Event::Auth {
            role: Some(Role::Read),
            exp: Some(read_exp),
        }
    })
    .await;
    assert_eq!(session.status().role, Some(Role::Read));

    // The next local edit is refused and leaves the server's content.
    assert_eq!(
        session.edit(Operation::insert(0, "nope ")).await,
        Err(Error::ReadOnly)
    );
    assert_eq!(session.content().await.unwrap(), "hello!");
    assert_eq!(stored(&app, "notes").await, ("hello!".to_owned(), 1));
    // Remote edits keep arriving.
    let writer = connect(
        &app,
        "notes",
        options("w", token("w", &[("notes", "write")])),
    )
    .await;
    writer.edit(Operation::insert(0, ">")).await.unwrap();
    tokio::time::timeout(WAIT, session.wait_for_rev(2))
        .await
        .expect("remote edit")
        .unwrap();
    assert_eq!(session.content().await.unwrap(), ">hello!");

    // An edit racing a downgrade: sent before the server's answer arrives
    // (refused by the server, then taken back) or refused here. Either way
    // the local content ends as the server's and nothing is resent. (A
    // fresh connection each round: `auth` frames are rate limited per
    // connection.)
    let mut refused_by_server = 0;
    for round in 0..5 {
        let mut racer = connect(
            &app,
            "notes",
            options(&format!("race-{round}"), token("u", &[("notes", "write")])),
        )
        .await;
        let racer_events = record(&mut racer);
        racer
            .set_token(token("u", &[("notes", "read")]))
            .await
            .unwrap();
        let edit = racer.edit(Operation::insert(0, "racing ")).await;
        assert!(
            matches!(edit, Ok(()) | Err(Error::ReadOnly)),
            "round {round}: {edit:?}"
        );
        let status = tokio::time::timeout(
            WAIT,
            racer.wait_for(|s| s.connected && !s.pending && s.role == Some(Role::Read)),
        )
        .await
        .expect("settled")
        .unwrap();
        let (content, rev) = stored(&app, "notes").await;
        assert_eq!((content.as_str(), rev), (">hello!", 2), "round {round}");
        assert_eq!(status.rev, 2);
        assert_eq!(racer.content().await.unwrap(), content, "round {round}");
        if edit.is_ok() {
            refused_by_server += 1;
            // Dropped (reported) and reloaded.
            let forbidden = |e: &Event| {
                matches!(
                    e,
                    Event::Error {
                        code: ErrorCode::Forbidden,
                        ..
                    }
                )
            };
            assert!(has(&racer_events, forbidden), "round {round}");
            assert!(has(&racer_events, |e| matches!(e, Event::Reset { .. })));
        }
    }
    eprintln!("{refused_by_server} of 5 racing edits were sent before the downgrade");
    assert!(
        !has(&events, |e| matches!(e, Event::Closed { .. })),
        "{:?}",
        events.lock().unwrap()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    app.stop().await;
}
