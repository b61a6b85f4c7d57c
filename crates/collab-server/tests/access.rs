//! Access control on a real server (docs/protocol.md §6): every REST route
//! against every kind of token, WebSocket sessions per role, refresh,
//! downgrade, expiry, revocation (live, lost message, after a restart),
//! authorship, share links, and open mode.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use collab_server::auth::{mint_with, now_secs, Claims, Secret};
use collab_server::store::Revocation;
use common::auth::{admin, claims, sign, token, token_config};
use common::ws::{
    assert_error_frame, next_json, open_raw, read_until_closed, send_op, send_text, End, Ws,
};
use common::{assert_error, spawn_app_with, test_config, TestApp, TestDb};
use reqwest::Method;
use serde_json::{json, Value};

async fn spawn_token_app(db: &TestDb) -> TestApp {
    spawn_app_with(token_config(db)).await
}

/// One request with an optional bearer token.
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.http.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body {text:?}"))
    };
    (status, body)
}

async fn get(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    call(app, Method::GET, path, Some(token), None).await
}

async fn post(app: &TestApp, path: &str, token: &str, body: Value) -> (u16, Value) {
    call(app, Method::POST, path, Some(token), Some(body)).await
}

async fn create(app: &TestApp, token: &str, id: &str, content: &str) {
    let body = json!({"id": id, "title": id, "content": content});
    let (status, body) = call(app, Method::POST, "/api/documents", Some(token), Some(body)).await;
    assert_eq!(status, 201, "create {id}: {body}");
}

async fn content(app: &TestApp, id: &str) -> (String, u64) {
    let (status, body) = call(
        app,
        Method::GET,
        &format!("/api/documents/{id}"),
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (
        body["content"].as_str().unwrap().to_owned(),
        body["rev"].as_u64().unwrap(),
    )
}

/// Every REST route, with a body that would succeed given the role.
fn routes(id: &str) -> Vec<(Method, String, Option<Value>, &'static str)> {
    vec![
        (Method::GET, "/api/documents".into(), None, "list"),
        (
            Method::POST,
            "/api/documents".into(),
            Some(json!({"title": "t"})),
            "create",
        ),
        (Method::GET, format!("/api/documents/{id}"), None, "get"),
        (
            Method::PATCH,
            format!("/api/documents/{id}"),
            Some(json!({"title": "renamed"})),
            "rename",
        ),
        (Method::GET, format!("/api/documents/{id}/ops"), None, "ops"),
        (
            Method::POST,
            format!("/api/documents/{id}/ops"),
            Some(json!({"rev": 0, "op": ["x"]})),
            "edit",
        ),
        (
            Method::POST,
            format!("/api/documents/{id}/links"),
            Some(json!({"role": "read", "ttl_secs": 60})),
            "share",
        ),
        (
            Method::POST,
            "/api/auth/revocations".into(),
            Some(json!({"jti": "nothing"})),
            "revoke",
        ),
        (
            Method::DELETE,
            format!("/api/documents/{id}"),
            None,
            "delete",
        ),
    ]
}

/// Tokens that must get 401 on every route: missing, malformed, forged,
/// unsigned, expired, not yet valid, revoked (by jti and by sub).
async fn unauthorized_tokens(app: &TestApp) -> Vec<(Option<String>, &'static str)> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let now = now_secs();
    let full = [("*", "admin")];
    let mut expired = claims("u", &full);
    expired.exp = now - 120; // past the 30 s leeway
    let mut early = claims("u", &full);
    early.nbf = Some(now + 120);
    let forged = mint_with(
        &Secret::new("another-secret-another-secret-xx"),
        &claims("u", &full),
    )
    .unwrap();
    let payload = b64(&serde_json::to_string(&claims("u", &full)).unwrap());
    let unsigned = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
    let by_jti = claims("jti-victim", &full);
    let by_sub = claims("sub-victim", &full);
    let revoked_jti = sign(&by_jti);
    let revoked_sub = sign(&by_sub);
    for body in [
        json!({"jti": by_jti.jti.clone().unwrap()}),
        json!({"sub": "sub-victim"}),
    ] {
        let (s, b) = call(
            app,
            Method::POST,
            "/api/auth/revocations",
            Some(&admin()),
            Some(body),
        )
        .await;
        assert_eq!(s, 204, "{b}");
    }
    vec![
        (None, "no token"),
        (Some("not-a-jwt".into()), "malformed"),
        (Some(forged), "bad signature"),
        (Some(unsigned), "alg none"),
        (Some(sign(&expired)), "expired"),
        (Some(sign(&early)), "not yet valid"),
        (Some(revoked_jti), "revoked by jti"),
        (Some(revoked_sub), "revoked by sub"),
    ]
}

async fn rest_matrix(db: &TestDb) {
    let app = spawn_token_app(db).await;
    for id in ["notes", "team-a-1", "team-b-1", "other"] {
        create(&app, &admin(), id, "hello").await;
    }

    // 401, whatever the route, the document or its existence.
    for (token, what) in unauthorized_tokens(&app).await {
        for id in ["notes", "missing"] {
            for (method, path, body, route) in routes(id) {
                let (s, b) = call(&app, method, &path, token.as_deref(), body).await;
                assert_error(s, &b, 401, "unauthorized");
                let _ = (what, route);
            }
        }
    }

    // Each role on each pattern kind: what every route answers.
    let read_exact = token("r", &[("notes", "read")]);
    let write_prefix = token("w", &[("team-a-*", "write")]);
    let admin_prefix = token("a", &[("team-a-*", "admin")]);
    let read_all_write_one = token("m", &[("*", "read"), ("notes", "write")]);
    let nothing = sign(&Claims {
        docs: None,
        ..claims("n", &[])
    });
    let expect = |tok: &str, id: &str, route: &str| -> u16 {
        let role = |t: &str| -> Option<&str> {
            if t == read_exact {
                (id == "notes").then_some("read")
            } else if t == write_prefix {
                id.starts_with("team-a-").then_some("write")
            } else if t == admin_prefix {
                id.starts_with("team-a-").then_some("admin")
            } else if t == read_all_write_one {
                Some(if id == "notes" { "write" } else { "read" })
            } else {
                None
            }
        };
        let exists = id != "team-a-missing" && id != "missing";
        match (route, role(tok)) {
            ("list", _) => 200,
            ("create", _) | ("revoke", _) => 403, // none of these is admin on *
            (_, None) => 403,
            ("get" | "ops", Some(r)) if !exists => {
                if r == "admin" {
                    404
                } else {
                    403
                }
            }
            ("get" | "ops", Some(_)) => 200,
            ("edit", Some("read")) => 403,
            ("edit", Some(r)) if !exists => {
                if r == "admin" {
                    404
                } else {
                    403
                }
            }
            ("edit", Some(_)) => 200,
            (_, Some("admin")) if !exists => 404,
            ("rename", Some("admin")) => 200,
            ("share", Some("admin")) => 201,
            ("delete", Some("admin")) => 204,
            (_, Some(_)) => 403,
        }
    };
    for tok in [
        &read_exact,
        &write_prefix,
        &admin_prefix,
        &read_all_write_one,
        &nothing,
    ] {
        for id in ["notes", "team-a-1", "team-b-1", "team-a-missing", "missing"] {
            for (method, path, body, route) in routes(id) {
                if route == "delete" {
                    continue; // below, once the rest is checked
                }
                let want = expect(tok, id, route);
                let body = match (route, body) {
                    // Each edit is written against the current revision.
                    ("edit", Some(_)) if want == 200 => {
                        let rev = content(&app, id).await.1;
                        Some(json!({"rev": rev, "op": ["x"]}))
                    }
                    (_, b) => b,
                };
                let (s, b) = call(&app, method.clone(), &path, Some(tok), body).await;
                assert_eq!(s, want, "{route} {id} with {}: {b}", claims_of(tok));
                if s >= 400 {
                    let code = match s {
                        403 => "forbidden",
                        404 => "not_found",
                        _ => unreachable!(),
                    };
                    assert_error(s, &b, s, code);
                }
            }
        }
    }
    // A missing document and an ungranted one look the same to a reader.
    let (_, a) = get(&app, "/api/documents/missing", &read_all_write_one).await;
    let (_, b) = get(&app, "/api/documents/nope", &read_all_write_one).await;
    assert_eq!(a["error"]["code"], b["error"]["code"]);

    // Creating: admin on the id, or on * without one.
    let (s, b) = post(
        &app,
        "/api/documents",
        &admin_prefix,
        json!({"id": "team-a-new", "title": "t"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = post(
        &app,
        "/api/documents",
        &admin_prefix,
        json!({"id": "team-a-new", "title": "t"}),
    )
    .await;
    assert_error(s, &b, 409, "conflict");
    let (s, b) = post(&app, "/api/documents", &admin(), json!({"title": "t"})).await;
    assert_eq!(s, 201, "{b}");

    // Deleting: admin only.
    for tok in [&read_exact, &write_prefix, &read_all_write_one] {
        let (s, b) = call(
            &app,
            Method::DELETE,
            "/api/documents/team-a-1",
            Some(tok),
            None,
        )
        .await;
        assert_error(s, &b, 403, "forbidden");
    }
    let (s, _) = call(
        &app,
        Method::DELETE,
        "/api/documents/team-a-1",
        Some(&admin_prefix),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = call(
        &app,
        Method::DELETE,
        "/api/documents/team-a-1",
        Some(&admin_prefix),
        None,
    )
    .await;
    assert_error(s, &b, 404, "not_found");

    // Listing: only what the token may read, counted the same way.
    for i in 0..5 {
        create(&app, &admin(), &format!("team-b-{}", i + 10), "").await;
    }
    let list = |tok: String, query: &'static str| {
        let app = &app;
        async move {
            let (s, b) = call(
                app,
                Method::GET,
                &format!("/api/documents{query}"),
                Some(&tok),
                None,
            )
            .await;
            assert_eq!(s, 200, "{b}");
            let ids: Vec<String> = b["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_owned())
                .collect();
            (ids, b["total"].as_u64().unwrap())
        }
    };
    let (ids, total) = list(
        token("l", &[("notes", "read"), ("team-b-*", "read")]),
        "?limit=3",
    )
    .await;
    assert_eq!((ids.len(), total), (3, 7), "{ids:?}");
    assert!(
        ids.iter().all(|i| i == "notes" || i.starts_with("team-b-")),
        "{ids:?}"
    );
    let (ids, total) = list(
        token("l", &[("notes", "read"), ("team-b-*", "read")]),
        "?limit=3&offset=6",
    )
    .await;
    assert_eq!((ids.len(), total), (1, 7));
    let (ids, total) = list(nothing.clone(), "").await;
    assert_eq!((ids.len(), total), (0, 0));
    let (_, everything) = list(admin(), "?limit=100").await;
    let (_, all_read) = list(token("l", &[("*", "read")]), "?limit=100").await;
    assert_eq!(everything, all_read);

    // A malformed Authorization header is refused, not ignored.
    for header in ["Basic abc", "Bearer", "token abc"] {
        let res = app
            .http
            .get(app.url("/api/documents"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 401, "{header}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
    }
    app.stop().await;
}

fn claims_of(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap_or("");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn revocations_survive_a_restart(db: &TestDb) {
    let app = spawn_token_app(db).await;
    create(&app, &admin(), "notes", "x").await;
    let victim = claims("eve", &[("*", "read")]);
    let t = sign(&victim);
    let other = token("bob", &[("*", "read")]);
    let (s, _) = post(
        &app,
        "/api/auth/revocations",
        &admin(),
        json!({"jti": victim.jti.clone().unwrap()}),
    )
    .await;
    assert_eq!(s, 204);
    app.stop().await;

    let app = spawn_token_app(db).await;
    let (s, b) = get(&app, "/api/documents/notes", &t).await;
    assert_error(s, &b, 401, "unauthorized");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("revoked"),
        "{b}"
    );
    let (s, _) = get(&app, "/api/documents/notes", &other).await;
    assert_eq!(s, 200, "only that token is revoked");
    app.stop().await;
}

async fn authorship_is_recorded(db: &TestDb) {
    let app = spawn_token_app(db).await;
    create(&app, &admin(), "notes", "").await;
    let ann = token("ann", &[("notes", "write")]);
    let (mut ws, welcome) = join(&app, "notes", &ann, "c1").await;
    assert_eq!(welcome["role"], "write");
    send_op(&mut ws, 0, 1, json!(["a"])).await;
    assert_eq!(next_json(&mut ws).await["type"], "ack");
    let bob = token("bob", &[("notes", "write")]);
    let (s, _) = post(
        &app,
        "/api/documents/notes/ops",
        &bob,
        json!({"rev": 1, "op": [1, "b"]}),
    )
    .await;
    assert_eq!(s, 200);
    let op = next_json(&mut ws).await;
    assert_eq!(
        (op["type"].as_str(), op["author"].as_str()),
        (Some("op"), Some("bob")),
        "{op}"
    );
    let (_, ops) = get(&app, "/api/documents/notes/ops", &ann).await;
    let authors: Vec<&str> = ops["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["author"].as_str().unwrap())
        .collect();
    assert_eq!(authors, ["ann", "bob"]);
    // A resuming client sees authors in its welcome too.
    let (_, resumed) =
        join_query(&app, "notes", &format!("token={ann}&since=0&client_id=c1")).await;
    let authors: Vec<&str> = resumed["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["author"].as_str().unwrap())
        .collect();
    assert_eq!(authors, ["ann", "bob"]);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// WebSocket sessions (the store does not matter here: SQLite).

async fn join(app: &TestApp, doc: &str, token: &str, client: &str) -> (Ws, Value) {
    join_query(app, doc, &format!("token={token}&client_id={client}")).await
}

async fn join_query(app: &TestApp, doc: &str, query: &str) -> (Ws, Value) {
    let mut ws = open_raw(app, &format!("/ws/documents/{doc}?{query}")).await;
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The refusal a connection gets before any welcome: one error, then 1008.
async fn refused(app: &TestApp, path_and_query: &str, code: &str) -> String {
    let mut ws = open_raw(app, path_and_query).await;
    let (frames, end) = read_until_closed(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(frames.len(), 1, "{path_and_query}: {frames:?}");
    assert_error_frame(&frames[0], code, None, path_and_query);
    assert_eq!(end, End::Close(Some(1008)), "{path_and_query}");
    frames[0]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn websocket_connect_per_token_and_role() {
    let db = TestDb::sqlite();
    let app = spawn_token_app(&db).await;
    create(&app, &admin(), "notes", "hi").await;
    create(&app, &admin(), "other", "").await;

    for (t, _) in unauthorized_tokens(&app).await {
        let query = t.map(|t| format!("?token={t}")).unwrap_or_default();
        refused(&app, &format!("/ws/documents/notes{query}"), "unauthorized").await;
    }
    let reader = token("r", &[("notes", "read")]);
    refused(
        &app,
        &format!("/ws/documents/other?token={reader}"),
        "forbidden",
    )
    .await;
    // Existence is not revealed to a reader, but is to an admin of the id.
    let message = refused(
        &app,
        &format!(
            "/ws/documents/missing?token={}",
            token("r", &[("*", "read")])
        ),
        "forbidden",
    )
    .await;
    assert!(!message.contains("exist"), "{message}");
    refused(
        &app,
        &format!("/ws/documents/missing?token={}", admin()),
        "not_found",
    )
    .await;

    // The header works as well as the query.
    let url = common::ws::ws_url(&app, "/ws/documents/notes");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            url.as_str(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {reader}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let welcome = next_json(&mut ws).await;
    assert_eq!(
        (welcome["type"].as_str(), welcome["role"].as_str()),
        (Some("welcome"), Some("read"))
    );
    assert!(welcome["exp"].as_u64().unwrap() > now_secs());
    drop(ws);

    // A reader receives everything but may send neither ops nor presence.
    let writer = token("w", &[("notes", "write")]);
    let (mut r, _) = join(&app, "notes", &reader, "reader").await;
    let (mut w, welcome) = join(&app, "notes", &writer, "writer").await;
    assert_eq!(welcome["role"], "write");
    send_op(&mut r, 0, 1, json!(["nope"])).await;
    assert_error_frame(
        &next_json(&mut r).await,
        "forbidden",
        Some(1),
        "op from a reader",
    );
    send_text(
        &mut r,
        json!({"type": "presence", "selection": [0, 1]}).to_string(),
    )
    .await;
    assert_error_frame(
        &next_json(&mut r).await,
        "forbidden",
        None,
        "presence from a reader",
    );
    assert_eq!(
        content(&app, "notes").await,
        ("hi".to_owned(), 0),
        "nothing changed"
    );
    // The reader is still connected and sees the writer's edit.
    send_op(&mut w, 0, 1, json!([2, "!"])).await;
    assert_eq!(next_json(&mut w).await["type"], "ack");
    let op = next_json(&mut r).await;
    assert_eq!(
        (op["type"].as_str(), op["author"].as_str()),
        (Some("op"), Some("w")),
        "{op}"
    );
    app.stop().await;
}

#[tokio::test]
async fn presence_names_come_from_the_token() {
    let db = TestDb::sqlite();
    let app = spawn_token_app(&db).await;
    create(&app, &admin(), "notes", "hello").await;
    let ann = sign(&Claims {
        name: Some("Ann".into()),
        ..claims("ann-id", &[("notes", "write")])
    });
    let (mut a, _) = join(&app, "notes", &ann, "a").await;
    let (mut b, _) = join(&app, "notes", &token("bob", &[("notes", "read")]), "b").await;
    let claimed = json!({"type": "presence", "selection": [1, 2], "user_id": "root",
        "user": {"name": "Root", "color": "#f00"}});
    send_text(&mut a, claimed.to_string()).await;
    let p = next_json(&mut b).await;
    assert_eq!(p["type"], "presence", "{p}");
    assert_eq!(p["user_id"], "ann-id", "{p}");
    assert_eq!(p["user"], json!({"name": "Ann", "color": "#f00"}));
    let (_, welcome) = join(&app, "notes", &token("carl", &[("notes", "read")]), "c").await;
    let peer = &welcome["peers"].as_array().unwrap()[0];
    assert_eq!(
        (peer["user_id"].as_str(), peer["user"]["name"].as_str()),
        (Some("ann-id"), Some("Ann"))
    );
    app.stop().await;
}

#[tokio::test]
async fn refresh_downgrade_and_bad_refreshes() {
    let db = TestDb::sqlite();
    let app = spawn_token_app(&db).await;
    create(&app, &admin(), "notes", "").await;
    let (mut ws, _) = join(&app, "notes", &token("u", &[("notes", "write")]), "c").await;
    let send_auth = |t: String| json!({"type": "auth", "token": t}).to_string();

    let read = claims("u", &[("*", "read")]);
    send_text(&mut ws, send_auth(sign(&read))).await;
    let reply = next_json(&mut ws).await;
    assert_eq!(
        reply,
        json!({"type": "auth", "role": "read", "exp": read.exp})
    );
    send_op(&mut ws, 0, 1, json!(["x"])).await;
    assert_error_frame(
        &next_json(&mut ws).await,
        "forbidden",
        Some(1),
        "op after a downgrade",
    );
    send_text(&mut ws, send_auth(token("u", &[("notes", "admin")]))).await;
    assert_eq!(next_json(&mut ws).await["role"], "admin");
    send_op(&mut ws, 0, 1, json!(["x"])).await;
    assert_eq!(next_json(&mut ws).await["type"], "ack", "upgraded again");

    // Another user's token, a bad one, or one without this document: closed.
    for (t, code) in [
        (token("someone-else", &[("notes", "write")]), "unauthorized"),
        ("garbage".to_owned(), "unauthorized"),
        (token("u", &[("other", "write")]), "forbidden"),
    ] {
        let (mut ws, _) = join(&app, "notes", &token("u", &[("notes", "write")]), "d").await;
        send_text(&mut ws, send_auth(t)).await;
        let (frames, end) = read_until_closed(&mut ws, Duration::from_secs(10)).await;
        assert_error_frame(&frames[0], code, None, "bad refresh");
        assert_eq!(end, End::Close(Some(1008)));
    }
    app.stop().await;
}

#[tokio::test]
async fn expiry_closes_unless_refreshed() {
    let db = TestDb::sqlite();
    let mut config = token_config(&db);
    config.auth_leeway_secs = 0;
    let app = spawn_app_with(config).await;
    create(&app, &admin(), "notes", "").await;
    let short = |secs: u64| {
        let mut c = claims("u", &[("notes", "write")]);
        c.exp = now_secs() + secs;
        sign(&c)
    };
    let (mut expiring, welcome) = join(&app, "notes", &short(2), "a").await;
    let exp = welcome["exp"].as_u64().unwrap();
    let (mut refreshed, _) = join(&app, "notes", &short(2), "b").await;
    send_text(
        &mut refreshed,
        json!({"type": "auth", "token": short(600)}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut refreshed).await["type"], "auth");

    let (frames, end) = read_until_closed(&mut expiring, Duration::from_secs(10)).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_error_frame(&frames[0], "unauthorized", None, "expiry");
    assert_eq!(frames[0]["message"], "token expired");
    assert_eq!(end, End::Close(Some(1008)));
    assert!(now_secs() >= exp, "not closed before exp");
    // The refreshed session outlives its first token.
    send_op(&mut refreshed, 0, 1, json!(["x"])).await;
    let ack = next_json(&mut refreshed).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    app.stop().await;
}

#[tokio::test]
async fn revocation_closes_live_sessions_within_a_second() {
    let db = TestDb::sqlite();
    let app = spawn_token_app(&db).await;
    create(&app, &admin(), "notes", "").await;
    let (mut eve, _) = join(&app, "notes", &token("eve", &[("notes", "write")]), "e").await;
    let (mut bob, _) = join(&app, "notes", &token("bob", &[("notes", "write")]), "b").await;
    let started = Instant::now();
    let (s, _) = post(
        &app,
        "/api/auth/revocations",
        &admin(),
        json!({"sub": "eve"}),
    )
    .await;
    assert_eq!(s, 204);
    let (frames, end) = read_until_closed(&mut eve, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_error_frame(frames.last().unwrap(), "unauthorized", None, "revoked");
    assert_eq!(frames.last().unwrap()["message"], "token revoked");
    assert_eq!(end, End::Close(Some(1008)));
    // Bob is untouched; a token eve gets after the revocation works.
    send_op(&mut bob, 0, 1, json!(["b"])).await;
    let ack = next_json(&mut bob).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut fresh = claims("eve", &[("notes", "read")]);
    fresh.iat = Some(now_secs() + 1);
    join(&app, "notes", &sign(&fresh), "e2").await;

    // A revocation this instance did not hear about (another instance's, its
    // message lost): the table poll finds it.
    let (mut bob2, _) = join(&app, "notes", &token("bob", &[("notes", "read")]), "b2").await;
    let started = Instant::now();
    app.state
        .store
        .add_revocation(&Revocation::User {
            sub: "bob".into(),
            before: now_secs() as i64,
        })
        .await
        .unwrap();
    let (frames, _) = read_until_closed(&mut bob2, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(frames.last().unwrap()["message"], "token revoked");
    let (frames, _) = read_until_closed(&mut bob, Duration::from_secs(5)).await;
    assert_eq!(frames.last().unwrap()["message"], "token revoked");
    app.stop().await;
}

#[tokio::test]
async fn share_links() {
    let db = TestDb::sqlite();
    let app = spawn_token_app(&db).await;
    create(&app, &admin(), "notes", "hi").await;
    let owner = token("owner", &[("notes", "admin")]);
    let (s, link) = post(
        &app,
        "/api/documents/notes/links",
        &owner,
        json!({"role": "read", "ttl_secs": 3600}),
    )
    .await;
    assert_eq!(s, 201, "{link}");
    let t = link["token"].as_str().unwrap();
    assert_eq!(link["url"], format!("/d/notes#token={t}"));
    let jti = link["jti"].as_str().unwrap();
    let exp = link["exp"].as_u64().unwrap();
    assert!((now_secs() + 3590..=now_secs() + 3600).contains(&exp));
    let seen = claims_of(t);
    let seen: Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen["sub"], format!("link:{jti}"));
    assert_eq!(seen["docs"], json!({"notes": "read"}));

    // The link reads, and only this document; it cannot write.
    let (s, _) = get(&app, "/api/documents/notes", t).await;
    assert_eq!(s, 200);
    let (s, _) = post(
        &app,
        "/api/documents/notes/ops",
        t,
        json!({"rev": 0, "op": ["x"]}),
    )
    .await;
    assert_eq!(s, 403);
    let (mut ws, welcome) = join(&app, "notes", t, "guest").await;
    assert_eq!(welcome["role"], "read");

    // Revoking the link by its jti closes it and leaves its creator alone.
    let (s, _) = post(&app, "/api/auth/revocations", &admin(), json!({"jti": jti})).await;
    assert_eq!(s, 204);
    let (frames, _) = read_until_closed(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(frames.last().unwrap()["message"], "token revoked");
    let (s, _) = get(&app, "/api/documents/notes", &owner).await;
    assert_eq!(s, 200);

    // Bad requests, and who may share.
    for body in [
        json!({"role": "admin", "ttl_secs": 60}),
        json!({"role": "owner"}),
        json!({"role": "read", "ttl_secs": 0}),
        json!({"role": "read", "ttl_secs": 400 * 24 * 3600}),
    ] {
        let (s, b) = post(&app, "/api/documents/notes/links", &owner, body.clone()).await;
        assert_error(s, &b, 400, "bad_request");
    }
    let (s, b) = call(
        &app,
        Method::POST,
        "/api/documents/notes/links",
        Some(&token("w", &[("notes", "write")])),
        Some(json!({"role": "read"})),
    )
    .await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = post(
        &app,
        "/api/documents/gone/links",
        &admin(),
        json!({"role": "read"}),
    )
    .await;
    assert_error(s, &b, 404, "not_found");
    app.stop().await;
}

#[tokio::test]
async fn open_mode_is_unchanged_and_names_nobody() {
    let db = TestDb::sqlite();
    let app = spawn_app_with(test_config(&db)).await;
    app.create("notes", "n", "").await;
    // Any token, even garbage, is ignored.
    let (s, _) = get(&app, "/api/documents/notes", "garbage").await;
    assert_eq!(s, 200);
    let res = app
        .http
        .get(app.url("/api/documents"))
        .header("authorization", "Basic x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "open mode ignores credentials");
    let (mut a, welcome) = join_query(&app, "notes", "client_id=a").await;
    assert_eq!(
        (welcome["role"].as_str(), welcome["exp"].is_null()),
        (Some("admin"), true)
    );
    let (mut b, _) = join_query(&app, "notes", "client_id=b").await;
    send_op(&mut a, 0, 1, json!(["x"])).await;
    assert_eq!(next_json(&mut a).await["type"], "ack");
    let op = next_json(&mut b).await;
    assert!(
        op["author"].is_null() && op.as_object().unwrap().contains_key("author"),
        "{op}"
    );
    let (_, ops) = app.get("/api/documents/notes/ops").await;
    assert!(ops["ops"][0]["author"].is_null());
    send_text(
        &mut a,
        json!({"type": "presence", "selection": [0, 0]}).to_string(),
    )
    .await;
    let p = next_json(&mut b).await;
    assert!(p.get("user_id").is_none(), "{p}");
    // Share links need a secret to sign with.
    let (s, body) = app
        .post("/api/documents/notes/links", &json!({"role": "read"}))
        .await;
    assert_error(s, &body, 409, "conflict");
    // There is nothing to refresh.
    send_text(&mut a, json!({"type": "auth", "token": "x"}).to_string()).await;
    assert_error_frame(
        &next_json(&mut a).await,
        "bad_message",
        None,
        "auth in open mode",
    );
    app.stop().await;
}

/// In token mode a client id belongs to the user who edits under it: another
/// user cannot join with it (live or not, before or after a restart), so
/// nobody's edits can be passed off or acknowledged as someone else's.
async fn client_ids_belong_to_their_user(db: &TestDb) {
    let app = spawn_token_app(db).await;
    create(&app, &admin(), "notes", "").await;
    let alice = token("alice", &[("notes", "write")]);
    let mallory = token("mallory", &[("notes", "write")]);
    let (mut a, _) = join(&app, "notes", &alice, "shared").await;
    send_op(&mut a, 0, 1, json!(["a"])).await;
    assert_eq!(next_json(&mut a).await["type"], "ack");
    let message = refused(
        &app,
        &format!("/ws/documents/notes?token={mallory}&client_id=shared"),
        "forbidden",
    )
    .await;
    assert!(message.contains("another user"), "{message}");
    drop(a);
    refused(
        &app,
        &format!("/ws/documents/notes?token={mallory}&client_id=shared"),
        "forbidden",
    )
    .await;
    // A fresh id of mallory's own is fine, and alice keeps hers.
    join(&app, "notes", &mallory, "mine").await;
    join(&app, "notes", &alice, "shared").await;
    app.stop().await;

    let app = spawn_token_app(db).await;
    refused(
        &app,
        &format!("/ws/documents/notes?token={mallory}&client_id=shared"),
        "forbidden",
    )
    .await;
    let (mut a, welcome) = join(&app, "notes", &alice, "shared").await;
    // Her resend after the restart is still recognised as hers.
    send_op(&mut a, 0, 1, json!(["a"])).await;
    let ack = next_json(&mut a).await;
    assert_eq!(
        (ack["type"].as_str(), ack["rev"].as_u64()),
        (Some("ack"), Some(1)),
        "{ack} after {welcome}"
    );
    app.stop().await;
}

backend_tests!(
    rest_matrix,
    revocations_survive_a_restart,
    authorship_is_recorded,
    client_ids_belong_to_their_user
);
