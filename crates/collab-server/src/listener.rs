//! The accept loop: TCP connections in, HTTP/1.1 (and WebSocket upgrades)
//! served by hyper, with the edge's protections that `axum::serve` lacks.
//!
//! * **Header timeout.** hyper only enforces `header_read_timeout` with a
//!   timer, which `axum::serve` never sets: a client that sends half a
//!   request line (or nothing) would hold its socket forever.
//! * **Connection caps.** Open connections are counted server-wide and per
//!   IP address, WebSockets included for as long as they stay open; over a
//!   cap the connection gets a short raw 503 / 429 with the protocol error body
//!   and is closed before hyper sees it.
//! * **Contract bodies for parse errors.** hyper answers a request it cannot
//!   parse itself, with an empty body; [`EdgeIo`] gives those answers the
//!   protocol's JSON body, so every refusal reads the same.
//!
//! Connections speak HTTP/1.1 only, through hyper's own HTTP/1 builder, as
//! they did under `axum::serve` (the server has never offered HTTP/2).
//! hyper-util's version-sniffing `auto` builder would first wait, with no
//! timeout, for enough bytes to tell HTTP/2 from HTTP/1, and a client that
//! never sends one would sit there out of the header timeout's reach.
//!
//! Shutdown is graceful as before: stop accepting, let requests in flight
//! finish, then return. Upgraded WebSockets are not waited for here: they
//! close themselves when the app's `closing` signal turns.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use crate::app::Edge;
use crate::error::AppError;

/// The whole life of a refused connection: writing the answer, then
/// reading what the client still sends so closing does not reset the
/// connection before the client has read the answer.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Refused connections being answered at once; beyond this a refused
/// connection is closed without an answer, so a flood costs nothing more.
const MAX_REFUSALS_IN_FLIGHT: usize = 256;
/// How often a full server says so in the log.
const REFUSAL_WARNING_EVERY: Duration = Duration::from_secs(60);
/// Pause after an accept error that is not about one connection (such as
/// running out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown` resolves, then lets every
/// request in flight finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    edge: &Edge,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let limits = Arc::new(ConnectionLimits::new(
        edge.max_connections,
        edge.max_connections_per_ip,
    ));
    let mut http = http1::Builder::new();
    // Besides request heads, this bounds how long an idle keep-alive
    // connection stays open: hyper rearms it for every next request.
    http.timer(TokioTimer::new())
        .header_read_timeout(edge.header_timeout);
    let http = Arc::new(http);
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let mut last_refusal_warning: Option<Instant> = None;
    // Dropping `stop` tells every connection to finish; each holds a
    // `running` receiver, so `running_tx.closed()` means all have. (hyper-util's
    // `GracefulShutdown` does the same but cannot watch an upgradeable HTTP/1
    // connection without also building HTTP/2 in.)
    let (stop, stop_rx) = watch::channel(());
    let (running_tx, running) = watch::channel(());

    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::error!(error = %e, "accept failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let guard = match limits.admit(peer.ip()) {
            Ok(guard) => guard,
            Err(refusal) => {
                tracing::debug!(%peer, reason = %refusal, "connection refused");
                let now = Instant::now();
                if last_refusal_warning
                    .is_none_or(|at| now.duration_since(at) >= REFUSAL_WARNING_EVERY)
                {
                    last_refusal_warning = Some(now);
                    tracing::warn!(
                        reason = %refusal,
                        "refusing connections over the configured caps \
                         (COLLAB_MAX_CONNECTIONS, COLLAB_MAX_CONNECTIONS_PER_IP)"
                    );
                }
                refuse(tcp, &refusal, &refusals);
                continue;
            }
        };
        // Small frames must leave at once: Nagle's algorithm meeting the
        // peer's delayed ACK would add ~40 ms to edits.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let io = EdgeIo::new(tcp).holding(guard);
        tokio::spawn(serve_connection(
            Arc::clone(&http),
            io,
            peer,
            app.clone(),
            stop_rx.clone(),
            running.clone(),
        ));
    }

    drop(listener);
    drop(stop);
    drop(running);
    running_tx.closed().await;
    Ok(())
}

/// One connection, until it closes, or is handed over to a WebSocket, or
/// finishes its request after `stop`.
async fn serve_connection(
    http: Arc<http1::Builder>,
    io: EdgeIo<TcpStream>,
    peer: SocketAddr,
    app: Router,
    mut stop: watch::Receiver<()>,
    _running: watch::Receiver<()>,
) {
    let app = app.map_request(move |request: Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let conn = http
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app))
        .with_upgrades();
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            // Resolves (with an error) once `stop` is dropped.
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers a refused connection with `refusal` and closes it, within
/// [`REFUSAL_TIMEOUT`]; or just closes it when too many are being answered.
fn refuse(mut tcp: TcpStream, refusal: &AppError, refusals: &Arc<Semaphore>) {
    let Ok(permit) = Arc::clone(refusals).try_acquire_owned() else {
        return;
    };
    let response = raw_response(refusal, &[]);
    tokio::spawn(async move {
        let _permit = permit;
        let answer = async {
            tcp.write_all(&response).await?;
            tcp.shutdown().await?;
            let mut sink = [0u8; 1024];
            while tcp.read(&mut sink).await? > 0 {}
            io::Result::Ok(())
        };
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, answer).await;
    });
}

/// A complete HTTP/1.1 response carrying `error`'s protocol error body, after
/// which the connection closes. `keep` are header lines (without CRLF) to
/// carry over; a `date` is added when none is among them.
fn raw_response(error: &AppError, keep: &[&[u8]]) -> Vec<u8> {
    let status = error.status();
    let body = error.body().to_string();
    let mut out = Vec::with_capacity(192 + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n\
             content-type: application/json\r\n\
             content-length: {}\r\n\
             connection: close\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .as_bytes(),
    );
    let has_date = keep
        .iter()
        .any(|line| split_header(line).0.eq_ignore_ascii_case(b"date"));
    if !has_date {
        out.extend_from_slice(
            format!("date: {}\r\n", httpdate::fmt_http_date(SystemTime::now())).as_bytes(),
        );
    }
    for line in keep {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// A header line's name and value, trimmed; the value empty without a colon.
fn split_header(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b':') {
        Some(colon) => (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii()),
        None => (line.trim_ascii(), &[]),
    }
}

/// Counts open connections, in total and per IP address.
#[derive(Debug)]
struct ConnectionLimits {
    /// 0: no limit.
    max_total: usize,
    /// 0: no limit (and no per-address bookkeeping).
    max_per_ip: usize,
    open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    /// Only addresses with open connections, so it never outgrows them.
    per_ip: HashMap<IpAddr, usize>,
}

impl ConnectionLimits {
    fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            open: Mutex::new(OpenConnections::default()),
        }
    }

    /// A place for one more connection from `ip`, held until the guard is
    /// dropped; or why there is none. A refusal takes no place.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionGuard, AppError> {
        // An IPv4 client of a dual-stack listener shows up as ::ffff:a.b.c.d;
        // it is the same address either way.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if self.max_total != 0 && open.total >= self.max_total {
            return Err(AppError::TooManyConnections);
        }
        let counted_ip = if self.max_per_ip != 0 {
            let from_ip = open.per_ip.entry(ip).or_insert(0);
            if *from_ip >= self.max_per_ip {
                return Err(AppError::RateLimited(
                    "too many open connections from your address".to_owned(),
                ));
            }
            *from_ip += 1;
            Some(ip)
        } else {
            None
        };
        open.total += 1;
        Ok(ConnectionGuard {
            limits: Arc::clone(self),
            ip: counted_ip,
        })
    }

    #[cfg(test)]
    fn open(&self) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        (open.total, open.per_ip.len())
    }
}

/// One connection's place in the caps; dropping it frees the place.
#[derive(Debug)]
struct ConnectionGuard {
    limits: Arc<ConnectionLimits>,
    ip: Option<IpAddr>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(from_ip) = open.per_ip.get_mut(&ip) {
                *from_ip = from_ip.saturating_sub(1);
                if *from_ip == 0 {
                    open.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// The accepted socket as hyper sees it.
///
/// It holds the connection's [`ConnectionGuard`], so the place in the caps
/// lasts as long as the socket does, through a WebSocket upgrade (which
/// takes the socket over) too.
///
/// And it rewrites hyper's own answers to unparsable requests (400, 414,
/// 431 with an empty body; see `on_error` in hyper's `proto::h1::role`),
/// which would otherwise be the only error responses without the protocol's
/// body. They are recognised by shape: one of those statuses with
/// `content-length: 0`, something the app never sends, since every error
/// it returns has a body. Reporting no vectored writes makes hyper flatten
/// each response head into one buffer, so a head arrives in one `write`.
/// What hyper writes before a response it failed to parse (pipelined
/// responses still buffered) hides the head at a later offset; that rare
/// case keeps hyper's empty body.
#[derive(Debug)]
pub(crate) struct EdgeIo<T> {
    inner: T,
    /// Bytes that stand in for something already reported as written.
    pending: Vec<u8>,
    /// How much of `pending` has gone out.
    sent: usize,
    /// Off once the stream carries something other than HTTP/1.1
    /// responses (after a 101), or after a rewrite (hyper closes then).
    watching: bool,
    _guard: Option<ConnectionGuard>,
}

impl<T> EdgeIo<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            sent: 0,
            watching: true,
            _guard: None,
        }
    }

    fn holding(mut self, guard: ConnectionGuard) -> Self {
        self._guard = Some(guard);
        self
    }
}

impl<T: AsyncWrite + Unpin> EdgeIo<T> {
    /// Writes out what is pending; ready once nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if !self.pending.is_empty() {
            self.pending = Vec::new();
            self.sent = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for EdgeIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for EdgeIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if this.watching {
            match inspect(buf) {
                Head::ParseError { len, replacement } => {
                    this.watching = false;
                    this.pending = replacement;
                    this.sent = 0;
                    // Start sending now; whatever does not fit goes out on
                    // the next write, flush or shutdown, which hyper always
                    // makes after a response.
                    if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Ready(Ok(len));
                }
                Head::Upgrade => this.watching = false,
                Head::Other => {}
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// What a write that may start a response head holds.
#[derive(Debug, PartialEq)]
enum Head {
    /// hyper's answer to an unparsable request: its first `len` bytes are
    /// to be replaced.
    ParseError {
        len: usize,
        replacement: Vec<u8>,
    },
    /// `101 Switching Protocols`: what follows is no longer HTTP.
    Upgrade,
    Other,
}

/// Longest head hyper's parse-error answer could have (status line, `date`,
/// maybe `connection`): a bound on how far to look for its end.
const MAX_ERROR_HEAD: usize = 512;

fn inspect(buf: &[u8]) -> Head {
    // "HTTP/1.1 400 " — the status code sits at bytes 9..12.
    if buf.len() < 13 || !buf.starts_with(b"HTTP/1.") || buf[8] != b' ' || buf[12] != b' ' {
        return Head::Other;
    }
    let error = match &buf[9..12] {
        b"101" => return Head::Upgrade,
        b"400" => AppError::BadRequest(
            "the request is not valid HTTP/1.1 (a malformed request line or header)".to_owned(),
        ),
        b"414" => AppError::UriTooLong,
        b"431" => AppError::HeadersTooLarge,
        _ => return Head::Other,
    };
    let window = &buf[..buf.len().min(MAX_ERROR_HEAD)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Head::Other;
    };
    let mut empty = false;
    let mut keep = Vec::new();
    for line in window[..end].split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (name, value) = split_header(line);
        if name.eq_ignore_ascii_case(b"content-length") {
            empty = value == b"0";
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Head::Other;
        } else if !name.eq_ignore_ascii_case(b"connection")
            && !name.eq_ignore_ascii_case(b"content-type")
        {
            keep.push(line);
        }
    }
    if !empty {
        return Head::Other;
    }
    Head::ParseError {
        len: end + 4,
        replacement: raw_response(&error, &keep),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use tokio::io::duplex;

    /// Splits a response into status, lower-cased header lines and body.
    fn parse(response: &[u8]) -> (u16, Vec<String>, Value) {
        let text = std::str::from_utf8(response).expect("UTF-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers = lines.map(str::to_ascii_lowercase).collect::<Vec<_>>();
        let length: usize = headers
            .iter()
            .find_map(|h| h.strip_prefix("content-length: "))
            .expect("content-length")
            .parse()
            .unwrap();
        assert_eq!(length, body.len(), "content-length matches the body");
        (
            status,
            headers,
            serde_json::from_str(body).expect("JSON body"),
        )
    }

    const HYPER_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\
          date: Tue, 01 Jul 2025 10:00:00 GMT\r\n\r\n";

    /// Writes `writes` through an adapter whose peer accepts `capacity`
    /// bytes at a time, then flushes and shuts down; returns what arrived.
    async fn through(capacity: usize, writes: &[&[u8]]) -> Vec<u8> {
        let (ours, mut theirs) = duplex(capacity);
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            theirs.read_to_end(&mut out).await.unwrap();
            out
        });
        let mut io = EdgeIo::new(ours);
        for buf in writes {
            // `write_all` loops over partial writes as hyper does.
            io.write_all(buf).await.unwrap();
        }
        io.flush().await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("peer reads to the end")
            .unwrap()
    }

    #[tokio::test]
    async fn hypers_empty_400_gets_the_contract_body() {
        for capacity in [4096, 7, 1] {
            let out = through(capacity, &[HYPER_400]).await;
            let (status, headers, body) = parse(&out);
            assert_eq!(status, 400);
            assert_eq!(body["error"]["code"], "bad_request");
            assert!(headers.contains(&"content-type: application/json".to_owned()));
            assert!(headers.contains(&"connection: close".to_owned()));
            assert!(
                headers.contains(&"date: tue, 01 jul 2025 10:00:00 gmt".to_owned()),
                "hyper's date is kept: {headers:?}"
            );
            assert_eq!(headers.iter().filter(|h| h.starts_with("date:")).count(), 1);
        }
    }

    #[tokio::test]
    async fn uri_and_header_size_errors_get_too_large() {
        let out = through(
            16,
            &[b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"],
        )
        .await;
        let (status, headers, body) = parse(&out);
        assert_eq!(status, 414);
        assert_eq!(body["error"]["code"], "too_large");
        assert_eq!(body["error"]["message"], "the request URI is too long");
        assert_eq!(
            headers
                .iter()
                .filter(|h| h.starts_with("connection:"))
                .count(),
            1
        );

        let out = through(
            4096,
            &[b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"],
        )
        .await;
        let (status, _, body) = parse(&out);
        assert_eq!(status, 431);
        assert_eq!(body["error"]["code"], "too_large");
        assert_eq!(
            body["error"]["message"],
            "the request headers are too large"
        );
    }

    #[tokio::test]
    async fn bytes_after_the_error_head_follow_the_replacement() {
        let mut buf = HYPER_400.to_vec();
        buf.extend_from_slice(b"tail");
        let out = through(5, &[&buf, b"-more"]).await;
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("}tail-more"), "{text:?}");
        assert!(text.contains("bad_request"), "{text:?}");
    }

    #[tokio::test]
    async fn other_responses_pass_unchanged() {
        let writes: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            // The app's own errors have bodies.
            b"HTTP/1.1 400 Bad Request\r\n\
              content-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\ncontent-length: 0\r\n\r\n",
        ];
        for write in writes {
            assert_eq!(through(3, &[write]).await, write);
        }
        // A head split over writes is not hyper's error answer (that comes
        // in one write) and is left alone.
        let split: [&[u8]; 2] = [
            b"HTTP/1.1 400 Bad Request\r\n",
            b"content-length: 0\r\n\r\n",
        ];
        assert_eq!(through(4096, &split).await, split.concat());
    }

    #[tokio::test]
    async fn nothing_is_rewritten_after_an_upgrade() {
        let upgrade: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
              connection: upgrade\r\nupgrade: websocket\r\n\r\n";
        let out = through(4096, &[upgrade, HYPER_400]).await;
        assert_eq!(out, [upgrade, HYPER_400].concat());
    }

    #[test]
    fn vectored_writes_are_declined() {
        let (ours, _theirs) = duplex(64);
        assert!(!EdgeIo::new(ours).is_write_vectored());
    }

    /// hyper itself, on in-memory IO, answers a malformed request through
    /// the adapter with the protocol error body.
    #[tokio::test]
    async fn hyper_parse_errors_carry_the_contract_body() {
        let cases: [(&[u8], u16, &str); 2] = [
            (
                b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
                400,
                "bad_request",
            ),
            (b"GET /\x01 HTTP/1.1\r\n\r\n", 400, "bad_request"),
        ];
        for (request, expected, code) in cases {
            let (ours, mut theirs) = duplex(64);
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(String::from("unreached")))
            });
            let server = tokio::spawn(
                http1::Builder::new().serve_connection(TokioIo::new(EdgeIo::new(ours)), service),
            );
            theirs.write_all(request).await.unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), theirs.read_to_end(&mut out))
                .await
                .expect("hyper answers and closes")
                .unwrap();
            let (status, _, body) = parse(&out);
            assert_eq!(status, expected);
            assert_eq!(body["error"]["code"], code);
            let _ = server.await;
        }
    }

    #[test]
    fn caps_count_and_release_connections() {
        let limits = Arc::new(ConnectionLimits::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        // The same address, seen through a dual-stack socket.
        let a2 = limits.admit("::ffff:10.0.0.1".parse().unwrap()).unwrap();
        let err = limits.admit(a).unwrap_err();
        assert_eq!((err.status().as_u16(), err.code()), (429, "rate_limited"));
        assert_eq!(limits.open(), (2, 1), "a refusal takes no place");
        let b1 = limits.admit(b).unwrap();
        let err = limits.admit("10.0.0.3".parse().unwrap()).unwrap_err();
        assert_eq!((err.status().as_u16(), err.code()), (503, "unavailable"));
        drop(a1);
        assert_eq!(limits.open(), (2, 2));
        let a3 = limits.admit(a).unwrap();
        drop((a2, a3, b1));
        assert_eq!(limits.open(), (0, 0), "addresses leave the map at zero");
    }

    #[test]
    fn zero_means_no_limit() {
        let limits = Arc::new(ConnectionLimits::new(0, 0));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let guards: Vec<_> = (0..100).map(|_| limits.admit(ip).unwrap()).collect();
        assert_eq!(limits.open(), (100, 0));
        drop(guards);
        assert_eq!(limits.open(), (0, 0));
    }

    #[test]
    fn refusals_are_complete_responses() {
        let (status, headers, body) = parse(&raw_response(&AppError::TooManyConnections, &[]));
        assert_eq!(status, 503);
        assert_eq!(body["error"]["code"], "unavailable");
        assert!(headers.iter().any(|h| h.starts_with("date: ")));
        assert!(headers.contains(&"connection: close".to_owned()));
    }
}
