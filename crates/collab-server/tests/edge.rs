//! The HTTP edge, over real sockets: clients that stall while sending a
//! request head are cut off, connection caps (server-wide and per address)
//! refuse with the protocol error body and free up when connections close,
//! requests hyper cannot parse get the protocol error body too, and only the
//! server's own origin and listed ones may use the API and open WebSockets.
//!
//! No storage is involved, so these run on SQLite only.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use collab_server::Config;
use common::{spawn_app_with, test_config, wait_for, TestApp, TestDb};
use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

/// The longest anything expected here may take to happen.
const WAIT: Duration = Duration::from_secs(10);

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nhost: edge.test\r\nconnection: close\r\n\r\n";

async fn spawn(configure: impl FnOnce(&mut Config)) -> (TestApp, TestDb) {
    let db = TestDb::sqlite();
    let mut config = test_config(&db);
    configure(&mut config);
    (spawn_app_with(config).await, db)
}

/// A response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    /// Lower-cased names and values.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "non-JSON body: {:?} ({self:?})",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts this is a complete protocol error response.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        assert_eq!(
            self.header("content-length"),
            Some(self.body.len().to_string().as_str()),
            "{self:?}"
        );
        common::assert_error(self.status, &self.json(), status, code);
    }
}

/// Reads one response (sized by `content-length`) off `stream`. Reads may
/// run past its end, so send the next request only after reading this.
async fn read_response(stream: &mut TcpStream) -> Raw {
    let read = async {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let mut chunk = [0u8; 4096];
            let n = stream
                .read(&mut chunk)
                .await
                .expect("read the response head");
            assert!(n > 0, "connection closed mid-head: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).expect("UTF-8 head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().expect("content-length"));
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read the body");
            assert!(n > 0, "connection closed mid-body");
            body.extend_from_slice(&chunk[..n]);
        }
        Raw {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a response in time")
}

/// Sends `request` on a new connection and reads the answer.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send the request");
    read_response(&mut stream).await
}

/// Waits for the server to close `stream` (EOF or reset), failing if it
/// sends anything or takes longer than `within`.
async fn assert_closed_within(stream: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Err(_) => panic!("the connection is still open after {within:?}"),
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// A connection that has been served one request and stays open (keep-alive),
/// so it surely holds a place in the caps; `None` if it was refused.
async fn held_connection(addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: edge.test\r\n\r\n")
        .await
        .expect("send the request");
    let response = read_response(&mut stream).await;
    (response.status == 200).then_some(stream)
}

async fn held_connections(app: &TestApp, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for i in 0..n {
        let stream = held_connection(app.addr).await;
        held.push(stream.unwrap_or_else(|| panic!("connection {i} of {n} was refused")));
    }
    held
}

/// Polls with fresh connections until one is served; the refusals meanwhile
/// must be `status` / `code`. The places of connections closed just before
/// free up once the server has noticed.
async fn wait_until_served(app: &TestApp, status: u16, code: &str) {
    wait_for(WAIT, "a connection to be served again", || async {
        let response = exchange(app.addr, HEALTH).await;
        if response.status == 200 {
            assert_eq!(response.json()["status"], "ok");
            return true;
        }
        response.assert_error(status, code);
        false
    })
    .await;
}

/// Takes the place of the connection that [`wait_until_served`] just used,
/// once that one has been let go.
async fn hold_one_more(app: &TestApp) -> TcpStream {
    let mut held;
    let deadline = Instant::now() + WAIT;
    loop {
        held = held_connection(app.addr).await;
        if held.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no place freed up");
        // A refusal is a full round trip already; this only keeps the poll polite.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.unwrap()
}

// ---------------------------------------------------------------------------
// Header timeout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_head_is_cut_off_while_others_are_served() {
    let (app, _db) = spawn(|c| c.header_timeout_secs = 1).await;
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    stalled.write_all(b"GET /hea").await.unwrap();
    let started = Instant::now();

    let (status, body) = app.get("/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(exchange(app.addr, HEALTH).await.status, 200);

    assert_closed_within(&mut stalled, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "cut off after {:?}, before the timeout",
        started.elapsed()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_keep_alive_connections_are_closed() {
    let (app, _db) = spawn(|c| c.header_timeout_secs = 1).await;
    // Never sends a byte.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    // Sends one request, keeps the connection, then says nothing more.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: edge.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle).await.status, 200);

    assert_closed_within(&mut silent, Duration::from_secs(5)).await;
    assert_closed_within(&mut idle, Duration::from_secs(5)).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_on_a_stalled_head_beyond_the_timeout() {
    let (app, _db) = spawn(|c| c.header_timeout_secs = 1).await;
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    stalled.write_all(b"POST /api/docu").await.unwrap();
    let _silent = TcpStream::connect(app.addr).await.unwrap();
    // Make sure the server is serving both before stopping it.
    assert_eq!(exchange(app.addr, HEALTH).await.status, 200);
    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("graceful shutdown finishes");
    assert_closed_within(&mut stalled, Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------
// Connection caps

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_cap_get_429_until_one_closes() {
    const CAP: usize = 5;
    let (app, _db) = spawn(|c| {
        c.max_connections_per_ip = CAP;
        c.max_connections = 0;
    })
    .await;
    let mut held = held_connections(&app, CAP).await;

    let refused = exchange(app.addr, HEALTH).await;
    refused.assert_error(429, "rate_limited");
    assert_eq!(refused.header("connection"), Some("close"));
    assert_eq!(
        refused.json()["error"]["message"],
        "too many open connections from your address"
    );
    // Refusals take no place: still refused, for the same reason.
    exchange(app.addr, HEALTH)
        .await
        .assert_error(429, "rate_limited");

    drop(held.pop());
    wait_until_served(&app, 429, "rate_limited").await;

    // Full again: the next one is refused.
    held.push(hold_one_more(&app).await);
    exchange(app.addr, HEALTH)
        .await
        .assert_error(429, "rate_limited");
    drop(held);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_server_cap_get_503_until_one_closes() {
    const CAP: usize = 4;
    let (app, _db) = spawn(|c| {
        c.max_connections = CAP;
        c.max_connections_per_ip = 0;
    })
    .await;
    let mut held = held_connections(&app, CAP).await;

    let refused = exchange(app.addr, HEALTH).await;
    refused.assert_error(503, "unavailable");
    assert_eq!(refused.header("connection"), Some("close"));
    assert_eq!(
        refused.json()["error"]["message"],
        "the server has too many open connections; retry later"
    );

    drop(held.pop());
    wait_until_served(&app, 503, "unavailable").await;
    held.push(hold_one_more(&app).await);
    exchange(app.addr, HEALTH)
        .await
        .assert_error(503, "unavailable");
    drop(held);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_its_place() {
    let (app, _db) = spawn(|c| c.max_connections_per_ip = 2).await;
    // Created over a connection kept open, which takes the second place
    // (the test client's pool would take one for who knows how long).
    let mut held = TcpStream::connect(app.addr).await.unwrap();
    let body = r#"{"id":"doc","title":"Doc","content":"hi"}"#;
    let create = format!(
        "POST /api/documents HTTP/1.1\r\nhost: edge.test\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    held.write_all(create.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut held).await.status, 201);

    let url = format!("ws://{}/ws/documents/doc", app.addr);
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("WebSocket handshake");
    let welcome = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("welcome in time");
    assert!(matches!(welcome, Some(Ok(Message::Text(_)))), "{welcome:?}");

    // Upgraded, the WebSocket is no longer an HTTP connection, but it is
    // still an open socket and counts as one.
    exchange(app.addr, HEALTH)
        .await
        .assert_error(429, "rate_limited");

    drop(ws);
    wait_until_served(&app, 429, "rate_limited").await;
    drop(held);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Requests hyper cannot parse

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_requests_get_the_contract_body() {
    let (app, _db) = spawn(|_| {}).await;

    let long = format!(
        "GET /{} HTTP/1.1\r\nhost: edge.test\r\n\r\n",
        "a".repeat(100_000)
    );
    let response = exchange(app.addr, long.as_bytes()).await;
    response.assert_error(414, "too_large");
    assert_eq!(
        response.json()["error"]["message"],
        "the request URI is too long"
    );
    assert_eq!(response.header("connection"), Some("close"));

    let negative = b"POST /api/documents HTTP/1.1\r\nhost: edge.test\r\ncontent-length: -1\r\n\r\n";
    exchange(app.addr, negative)
        .await
        .assert_error(400, "bad_request");

    let bad_header = b"GET /health HTTP/1.1\r\nhost: edge.test\r\nbad header: x\r\n\r\n";
    exchange(app.addr, bad_header)
        .await
        .assert_error(400, "bad_request");

    let mut crowded = String::from("GET /health HTTP/1.1\r\nhost: edge.test\r\n");
    for i in 0..150 {
        crowded.push_str(&format!("x-{i}: {i}\r\n"));
    }
    crowded.push_str("\r\n");
    let response = exchange(app.addr, crowded.as_bytes()).await;
    response.assert_error(431, "too_large");
    assert_eq!(
        response.json()["error"]["message"],
        "the request headers are too large"
    );

    // Well-formed requests, and the app's own errors, pass untouched.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    for (path, status) in [("/health", 200), ("/nope", 404), ("/health", 200)] {
        let request = format!("GET {path} HTTP/1.1\r\nhost: edge.test\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut stream).await;
        assert_eq!(response.status, status, "{response:?}");
        assert_ne!(response.header("connection"), Some("close"), "{response:?}");
    }
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Origins

const LISTED: &str = "https://app.example.com";

async fn request(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HeaderMap, Value) {
    let mut req = app.http.request(method, app.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body: {text:?}"))
    };
    (status, headers, body)
}

fn allow_origin(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_own_and_listed_origins_may_use_the_api() {
    let (app, _db) = spawn(|c| c.allowed_origins = vec![format!("{LISTED}/")]).await;
    app.create("doc", "Doc", "hi").await;
    let own = format!("http://{}", app.addr);

    for (method, path) in [
        (Method::GET, "/api/documents"),
        (Method::GET, "/api/documents/doc"),
        (Method::DELETE, "/api/documents/doc"),
        (Method::GET, "/no-such-route"),
    ] {
        let (status, headers, body) = request(
            &app,
            method.clone(),
            path,
            &[("origin", "http://evil.test")],
        )
        .await;
        common::assert_error(status, &body, 403, "forbidden");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("http://evil.test"), "{message}");
        assert!(message.contains("COLLAB_ALLOWED_ORIGINS"), "{message}");
        assert_eq!(allow_origin(&headers), None, "{method} {path}");
    }
    // Still there: the refused DELETE did nothing.
    let (status, _) = app.get("/api/documents/doc").await;
    assert_eq!(status, 200);

    let (status, _, body) = request(&app, Method::GET, "/health", &[("origin", "null")]).await;
    common::assert_error(status, &body, 403, "forbidden");

    // The server's own origin, whatever the case.
    let (status, headers, body) = request(
        &app,
        Method::GET,
        "/api/documents/doc",
        &[("origin", &own.to_uppercase())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["content"], "hi");
    assert_eq!(allow_origin(&headers), None, "same origin needs no CORS");

    // A listed origin, with CORS headers.
    let (status, headers, body) = request(
        &app,
        Method::GET,
        "/api/documents/doc",
        &[("origin", LISTED)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(allow_origin(&headers), Some(LISTED));

    // No Origin: a non-browser client.
    let (status, headers, _) = request(&app, Method::GET, "/api/documents/doc", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(allow_origin(&headers), None);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_for_listed_origins_only() {
    let (app, _db) = spawn(|c| c.allowed_origins = vec![LISTED.to_owned()]).await;
    async fn preflight(app: &TestApp, origin: &str) -> (u16, HeaderMap, Value) {
        let headers = [
            ("origin", origin),
            ("access-control-request-method", "PATCH"),
            (
                "access-control-request-headers",
                "content-type,authorization",
            ),
        ];
        request(app, Method::OPTIONS, "/api/documents/doc", &headers).await
    }

    let (status, headers, _) = preflight(&app, LISTED).await;
    assert!((200..300).contains(&status), "preflight: {status}");
    assert_eq!(allow_origin(&headers), Some(LISTED));
    let methods = headers
        .get("access-control-allow-methods")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_uppercase();
    assert!(methods.contains("PATCH"), "{methods}");
    let allowed_headers = headers
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );

    let (status, headers, body) = preflight(&app, "https://evil.test").await;
    common::assert_error(status, &body, 403, "forbidden");
    assert_eq!(allow_origin(&headers), None);
    app.stop().await;
}

/// Opens a WebSocket to `doc` with `origin`; the welcome frame, or the
/// status the handshake was refused with.
async fn ws_with_origin(app: &TestApp, doc: &str, origin: &str) -> Result<Value, u16> {
    let mut request = format!("ws://{}/ws/documents/{doc}", app.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    let connected = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time");
    let mut ws = match connected {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            let body: Value = serde_json::from_slice(body).expect("JSON refusal");
            common::assert_error(response.status().as_u16(), &body, 403, "forbidden");
            return Err(response.status().as_u16());
        }
        Err(e) => panic!("handshake failed: {e}"),
    };
    let frame = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("welcome in time");
    match frame {
        Some(Ok(Message::Text(text))) => Ok(serde_json::from_str(text.as_str()).unwrap()),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_check_the_origin() {
    let (app, _db) = spawn(|c| c.allowed_origins = vec![LISTED.to_owned()]).await;
    app.create("doc", "Doc", "hi").await;

    assert_eq!(
        ws_with_origin(&app, "doc", "http://evil.test").await,
        Err(403)
    );
    assert_eq!(ws_with_origin(&app, "doc", "null").await, Err(403));
    // Refused before anything looks at the document.
    assert_eq!(
        ws_with_origin(&app, "nope", "http://evil.test").await,
        Err(403)
    );

    let own = format!("http://{}", app.addr);
    let welcome = ws_with_origin(&app, "doc", &own).await.expect("own origin");
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["content"], "hi");
    let welcome = ws_with_origin(&app, "doc", LISTED)
        .await
        .expect("listed origin");
    assert_eq!(welcome["type"], "welcome");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_body_is_refused_once_its_time_is_up() {
    // Bodies get three header timeouts: 3 s here.
    let (app, _db) = spawn(|c| c.header_timeout_secs = 1).await;
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    stalled
        .write_all(
            b"POST /api/documents HTTP/1.1\r\nhost: edge.test\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"title\": ",
        )
        .await
        .unwrap();
    let started = Instant::now();
    // Meanwhile everyone else is served.
    assert_eq!(exchange(app.addr, HEALTH).await.status, 200);
    let answer = read_response(&mut stalled).await;
    answer.assert_error(400, "bad_request");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "refused after {:?}, before its time",
        started.elapsed()
    );
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not arrive"),
        "{answer:?}"
    );
    assert_eq!(app.get("/api/documents").await.1["total"], 0);
    app.stop().await;
}
