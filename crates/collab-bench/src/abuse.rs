//! `collab-bench abuse`: hostile clients against a running server, and what
//! a well-behaved client experiences meanwhile.
//!
//! A *baseline* phase runs first (the victim alone, for 3 × `--seconds`, at
//! least 15 s, so its p99 rests on 150 samples or more), then each attack,
//! for `--seconds` each (the half-open and slow-reader attacks watch at
//! least 13 s: the server's timeouts are 10 s), each on documents of its own
//! created for this run and deleted after it. During every phase:
//!
//! * a **victim** types one-character inserts at 10/s over the WebSocket
//!   protocol and waits for each `ack` (closed loop: an ack slower than
//!   100 ms delays the next keystroke rather than piling keystrokes up); its
//!   ack latencies are the figure of merit, quoted also as a ratio to the
//!   baseline's;
//! * `/health` is polled every 100 ms, each time over a fresh connection (so
//!   the accept path is measured too);
//! * the server's RSS (`/proc/PID/status`) and open file descriptors are
//!   sampled every 100 ms.
//!
//! When the server listens on 127.0.0.1, victims and the health poller
//! connect from 127.0.0.2 and attackers from 127.0.0.1 (both are loopback):
//! per-IP limits then apply to the attacker, as they would to a remote one.
//! Nothing leaves loopback (other addresses are refused), every loop is
//! bounded in count and in time, and one failed attack is reported and the
//! next one runs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::procstat;

#[derive(Args, Debug, Clone)]
pub struct AbuseArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8101 (loopback only;
    /// nothing is started).
    #[arg(long)]
    url: String,
    /// The server's process id (its memory and descriptors are sampled).
    #[arg(long)]
    server_pid: u32,
    /// Seconds each attack and the baseline last.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Only these attacks (comma-separated); the baseline always runs.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also print one JSON object line per attack, and a summary line.
    #[arg(long)]
    json: bool,
}

/// The attacks, in the order they run.
const ATTACKS: [&str; 7] = [
    "huge-seq",
    "old-revision",
    "big-op",
    "presence-flood",
    "welcome-size",
    "half-open",
    "slow-reader",
];

/// The victim's keystroke period, and the sampling period of everything else.
const TICK: Duration = Duration::from_millis(100);
/// An ack (or any awaited answer) later than this counts as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an attacker's last answers may take after its attack ends.
const GRACE: Duration = Duration::from_secs(3);
/// What the half-open and slow-reader attacks watch at least: the server's
/// header-read and write timeouts are 10 s by default.
const LONG_WATCH_SECS: f64 = 13.0;

type Ws = WebSocketStream<TcpStream>;

pub fn run(args: &AbuseArgs) -> anyhow::Result<()> {
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        bail!("--seconds must be in (0, 600]");
    }
    for name in &args.only {
        if !ATTACKS.contains(&name.as_str()) {
            bail!(
                "unknown attack {name:?}; the attacks are {}",
                ATTACKS.join(", ")
            );
        }
    }
    crate::load::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(abuse(args))
}

async fn abuse(args: &AbuseArgs) -> anyhow::Result<()> {
    let ctx = Arc::new(Ctx::new(args).await?);
    let health = ctx.health.get(format!("{}/health", ctx.base)).send().await;
    match health {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => bail!("{}/health answers {}", ctx.base, r.status()),
        Err(e) => bail!("cannot reach {}: {e}", ctx.base),
    }
    let from = |ip: Option<IpAddr>| {
        ip.map_or_else(|| "the default address".to_owned(), |ip| ip.to_string())
    };
    println!(
        "abuse: server {} (pid {}), {} s per attack; victims and /health from {}, attackers from {}",
        ctx.base,
        ctx.pid,
        ctx.secs,
        from(ctx.victim_ip),
        from(Some(ctx.server.ip())),
    );

    let baseline = run_phase(&ctx, "baseline").await;
    let base_victim = baseline
        .as_ref()
        .ok()
        .and_then(|r| r.measured.victims.first());
    print_phase("baseline", &baseline, base_victim, args.json);

    let names: Vec<&str> = ATTACKS
        .iter()
        .copied()
        .filter(|n| args.only.is_empty() || args.only.iter().any(|o| o == n))
        .collect();
    let mut results = Vec::new();
    for name in names {
        let result = run_phase(&ctx, name).await;
        print_phase(name, &result, base_victim, args.json);
        results.push((name, result));
    }
    summarize(&ctx, &baseline, &results, args.json);
    Ok(())
}

// ---------------------------------------------------------------------------
// The run's context: where the server is, who connects from where.

struct Ctx {
    base: String,
    server: SocketAddr,
    pid: String,
    secs: f64,
    run_id: String,
    /// Victims' (and the health poller's) source address; `None`: the default.
    victim_ip: Option<IpAddr>,
    /// Setup and cleanup requests (pooled).
    http: reqwest::Client,
    /// `/health` from the victims' address, a fresh connection each time.
    health: reqwest::Client,
    next_doc: AtomicUsize,
    docs: Mutex<Vec<String>>,
}

impl Ctx {
    async fn new(args: &AbuseArgs) -> anyhow::Result<Self> {
        let url =
            reqwest::Url::parse(&args.url).with_context(|| format!("bad --url {}", args.url))?;
        if url.scheme() != "http" {
            bail!("--url must be http://…");
        }
        let server = *url
            .socket_addrs(|| Some(80))
            .context("cannot resolve --url")?
            .first()
            .context("--url resolves to nothing")?;
        if !server.ip().is_loopback() {
            bail!("abuse only runs against a loopback server, not {server}");
        }
        let victim_ip = other_loopback(server).await;
        Ok(Ctx {
            base: format!("http://{server}"),
            server,
            pid: args.server_pid.to_string(),
            secs: args.seconds,
            run_id: format!("{:08x}", rand::random::<u32>()),
            victim_ip,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            health: health_client(victim_ip)?,
            next_doc: AtomicUsize::new(0),
            docs: Mutex::new(Vec::new()),
        })
    }

    fn secs(&self) -> Duration {
        Duration::from_secs_f64(self.secs)
    }

    fn client_id(&self, who: &str) -> String {
        format!("{}-{who}", self.run_id)
    }

    /// A fresh document with a unique id, deleted when the phase ends.
    async fn create_doc(&self, tag: &str, content: &str) -> anyhow::Result<String> {
        let n = self.next_doc.fetch_add(1, Ordering::Relaxed);
        let id = format!("abuse-{}-{tag}-{n}", self.run_id);
        let res = self
            .http
            .post(format!("{}/api/documents", self.base))
            .json(&json!({"id": id, "title": format!("abuse {tag}"), "content": content}))
            .send()
            .await
            .with_context(|| format!("creating {id}"))?;
        if !res.status().is_success() {
            bail!(
                "creating {id}: {} {}",
                res.status(),
                res.text().await.unwrap_or_default()
            );
        }
        self.docs.lock().unwrap().push(id.clone());
        Ok(id)
    }

    async fn cleanup(&self) {
        let docs = std::mem::take(&mut *self.docs.lock().unwrap());
        for doc in docs {
            let _ = self
                .http
                .delete(format!("{}/api/documents/{doc}", self.base))
                .send()
                .await;
        }
    }
}

/// 127.0.0.2 when the server is on 127.0.0.1 and that address works here.
async fn other_loopback(server: SocketAddr) -> Option<IpAddr> {
    if server.ip() != IpAddr::V4(Ipv4Addr::LOCALHOST) {
        return None;
    }
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, tcp_connect(server, Some(ip))).await;
    matches!(probe, Ok(Ok(_))).then_some(ip)
}

fn health_client(from: Option<IpAddr>) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .local_address(from)
        .pool_max_idle_per_host(0)
        .timeout(HEALTH_TIMEOUT)
        .build()?)
}

async fn tcp_connect(server: SocketAddr, from: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(server).await
}

/// Joins `doc` as `client_id` from `from`: the socket, its welcome, and the
/// welcome's size in bytes.
async fn ws_join(
    ctx: &Ctx,
    doc: &str,
    client_id: &str,
    from: Option<IpAddr>,
) -> anyhow::Result<(Ws, Value, usize)> {
    let join = async {
        let stream = tcp_connect(ctx.server, from).await?;
        let url = format!(
            "ws://{}/ws/documents/{doc}?client_id={client_id}",
            ctx.server
        );
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, None).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let welcome: Value = serde_json::from_str(&text)?;
                    if welcome["type"] != "welcome" {
                        bail!("first frame is not a welcome: {}", clip(&text));
                    }
                    return Ok((ws, welcome, text.len()));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => bail!("no welcome: {other:?}"),
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, join)
        .await
        .map_err(|_| anyhow!("joining {doc} timed out"))?
        .with_context(|| format!("joining {doc} as {client_id}"))
}

fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}

fn op_frame(rev: u64, seq: u64, op: &str) -> String {
    format!(r#"{{"type":"op","rev":{rev},"seq":{seq},"op":{op}}}"#)
}

/// An op of `n` components: one-character skips and inserts alternately
/// (an even `n` ends with an insert), as JSON text.
fn many_components(n: usize) -> String {
    let mut s = String::with_capacity(n * 4 + 2);
    s.push('[');
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(if i % 2 == 0 { "1" } else { "\"x\"" });
    }
    s.push(']');
    s
}

fn pacer(per_second: f64) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// `n` one-character REST edits, `tasks` at a time, each based on the
/// newest revision any of them has seen: the quickest way to give a
/// document a long history through the public API.
async fn rest_edits(
    ctx: &Ctx,
    doc: &str,
    n: usize,
    tasks: usize,
) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let latest = Arc::new(AtomicU64::new(0));
    let url = format!("{}/api/documents/{doc}/ops", ctx.base);
    let workers: Vec<JoinHandle<anyhow::Result<()>>> = (0..tasks)
        .map(|_| {
            let (next, latest, url, http) = (
                Arc::clone(&next),
                Arc::clone(&latest),
                url.clone(),
                ctx.http.clone(),
            );
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let rev = latest.load(Ordering::Relaxed);
                    let res = http
                        .post(&url)
                        .json(&json!({"rev": rev, "op": ["h"]}))
                        .send()
                        .await?;
                    if !res.status().is_success() {
                        bail!(
                            "REST edit refused: {} {}",
                            res.status(),
                            res.text().await.unwrap_or_default()
                        );
                    }
                    let body: Value = res.json().await?;
                    latest.fetch_max(body["rev"].as_u64().unwrap_or(0), Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    Ok((started.elapsed(), latest.load(Ordering::Relaxed)))
}

// ---------------------------------------------------------------------------
// Measuring: the victim, /health, the server process.

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).clamp(1, 120_000_000));
}

fn q(h: &Histogram<u64>, quantile: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.value_at_quantile(quantile) as f64 / 1000.0
}

fn hmax(h: &Histogram<u64>) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.max() as f64 / 1000.0
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    *map.entry(key.to_owned()).or_default() += 1;
}

struct VictimStats {
    label: String,
    sent: u64,
    acks: u64,
    ack: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    /// Acks that did not come within [`ANSWER_TIMEOUT`].
    timeouts: u64,
    disconnects: u64,
    reconnects: u64,
    connect_failures: u64,
    frames: u64,
    bytes: u64,
    connected_at_end: bool,
}

impl VictimStats {
    fn new(label: &str) -> Self {
        VictimStats {
            label: label.to_owned(),
            sent: 0,
            acks: 0,
            ack: histogram(),
            errors: BTreeMap::new(),
            timeouts: 0,
            disconnects: 0,
            reconnects: 0,
            connect_failures: 0,
            frames: 0,
            bytes: 0,
            connected_at_end: false,
        }
    }

    fn stayed_connected(&self) -> bool {
        self.disconnects == 0 && self.connected_at_end
    }

    fn ratios(&self, base: Option<&VictimStats>) -> [f64; 3] {
        let Some(b) = base else {
            return [f64::NAN; 3];
        };
        [
            q(&self.ack, 0.5) / q(&b.ack, 0.5),
            q(&self.ack, 0.99) / q(&b.ack, 0.99),
            hmax(&self.ack) / hmax(&b.ack),
        ]
    }

    fn to_json(&self, base: Option<&VictimStats>) -> Value {
        let [r50, r99, rmax] = self.ratios(base);
        json!({
            "label": self.label,
            "sent": self.sent,
            "acks": self.acks,
            "ack_p50_ms": q(&self.ack, 0.5),
            "ack_p99_ms": q(&self.ack, 0.99),
            "ack_max_ms": hmax(&self.ack),
            "p50_vs_baseline": r50,
            "p99_vs_baseline": r99,
            "max_vs_baseline": rmax,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "disconnects": self.disconnects,
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
            "connected": self.stayed_connected(),
            "frames_received": self.frames,
            "bytes_received": self.bytes,
        })
    }

    fn text(&self, base: Option<&VictimStats>) -> String {
        let [r50, r99, rmax] = self.ratios(base);
        let mut s = format!(
            "victim[{}] ack p50/p99/max {:.2}/{:.2}/{:.2} ms (x{:.1}/x{:.1}/x{:.1} baseline), {}/{} acked",
            self.label,
            q(&self.ack, 0.5),
            q(&self.ack, 0.99),
            hmax(&self.ack),
            r50,
            r99,
            rmax,
            self.acks,
            self.sent
        );
        if self.timeouts > 0 {
            s += &format!(", {} ack timeouts", self.timeouts);
        }
        if !self.errors.is_empty() {
            s += &format!(", errors {:?}", self.errors);
        }
        if self.stayed_connected() {
            s += ", stayed connected";
        } else {
            s += &format!(
                ", DISCONNECTED {} time(s) (reconnected {})",
                self.disconnects.max(1),
                self.reconnects
            );
        }
        s
    }
}

/// Who a victim is, for reconnecting.
struct Victim {
    ctx: Arc<Ctx>,
    label: String,
    doc: String,
    client_id: String,
}

enum VictimEvent {
    Frame(Utf8Bytes),
    Gone,
    Wake,
}

/// Types `["v"]` (an insert at 0: valid at any revision) every 100 ms until
/// `end`, each based on the newest revision seen, and times each ack. A
/// disconnected victim reconnects (counted) and goes on.
async fn type_as_victim(v: Victim, ws: Ws, mut rev: u64, end: Instant) -> VictimStats {
    let mut stats = VictimStats::new(&v.label);
    let mut ws = Some(ws);
    let mut seq = 0u64;
    let mut inflight: Option<(u64, Instant)> = None;
    let mut next_send = Instant::now();
    loop {
        let now = Instant::now();
        if inflight.is_none() && now >= end {
            break;
        }
        let Some(socket) = ws.as_mut() else {
            match ws_join(&v.ctx, &v.doc, &v.client_id, v.ctx.victim_ip).await {
                Ok((socket, welcome, _)) => {
                    rev = welcome["rev"].as_u64().unwrap_or(rev);
                    ws = Some(socket);
                    stats.reconnects += 1;
                }
                Err(_) => {
                    stats.connect_failures += 1;
                    tokio::time::sleep(TICK).await;
                }
            }
            continue;
        };
        let wake = match inflight {
            Some((_, at)) => at + ANSWER_TIMEOUT,
            None => next_send.min(end),
        };
        let event = tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => VictimEvent::Frame(text),
                Some(Ok(Message::Close(_)) | Err(_)) | None => VictimEvent::Gone,
                Some(Ok(_)) => continue,
            },
            () = tokio::time::sleep_until(wake.into()) => VictimEvent::Wake,
        };
        match event {
            VictimEvent::Frame(text) => {
                stats.frames += 1;
                stats.bytes += text.len() as u64;
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    bump(&mut stats.errors, "non_json_frame");
                    continue;
                };
                if let Some(r) = frame["rev"].as_u64() {
                    rev = rev.max(r);
                }
                let ours = inflight.is_some_and(|(s, _)| frame["seq"].as_u64() == Some(s));
                match frame["type"].as_str() {
                    Some("ack") if ours => {
                        let (_, at) = inflight.take().expect("checked");
                        record(&mut stats.ack, at.elapsed());
                        stats.acks += 1;
                    }
                    Some("error") => {
                        bump(&mut stats.errors, frame["code"].as_str().unwrap_or("?"));
                        if ours {
                            inflight = None;
                        }
                    }
                    _ => {}
                }
            }
            VictimEvent::Gone => {
                stats.disconnects += 1;
                ws = None;
                inflight = None;
            }
            VictimEvent::Wake => {
                if let Some((_, at)) = inflight.take() {
                    stats.timeouts += 1;
                    record(&mut stats.ack, at.elapsed());
                } else if Instant::now() < end {
                    seq += 1;
                    let frame = op_frame(rev, seq, r#"["v"]"#);
                    if socket.send(Message::text(frame)).await.is_err() {
                        stats.disconnects += 1;
                        ws = None;
                        continue;
                    }
                    stats.sent += 1;
                    let now = Instant::now();
                    inflight = Some((seq, now));
                    next_send = (next_send + TICK).max(now);
                }
            }
        }
    }
    if let Some(mut socket) = ws {
        stats.connected_at_end = true;
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
    }
    stats
}

struct HealthStats {
    ok: Histogram<u64>,
    max: Duration,
    polls: u64,
    failures: BTreeMap<String, u64>,
}

impl HealthStats {
    fn to_json(&self) -> Value {
        json!({
            "p50_ms": q(&self.ok, 0.5),
            "max_ms": self.max.as_secs_f64() * 1e3,
            "polls": self.polls,
            "failures": self.failures,
        })
    }
}

/// GET `/health` every 100 ms until `end`; the latency of each (including
/// reading the body), and failures by status or kind.
async fn poll_health(client: reqwest::Client, url: String, end: Instant) -> HealthStats {
    let mut stats = HealthStats {
        ok: histogram(),
        max: Duration::ZERO,
        polls: 0,
        failures: BTreeMap::new(),
    };
    let mut tick = pacer(10.0);
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let start = Instant::now();
        let res = client.get(&url).send().await;
        let outcome = match res {
            Ok(r) if r.status().is_success() => {
                r.bytes().await.map(|_| ()).map_err(|_| "body".to_owned())
            }
            Ok(r) => Err(r.status().as_u16().to_string()),
            Err(e) if e.is_timeout() => Err("timeout".to_owned()),
            Err(e) if e.is_connect() => Err("connect".to_owned()),
            Err(e) => Err(root_cause(&e)),
        };
        let took = start.elapsed();
        stats.polls += 1;
        stats.max = stats.max.max(took);
        match outcome {
            Ok(()) => record(&mut stats.ok, took),
            Err(why) => bump(&mut stats.failures, &why),
        }
    }
    stats
}

/// The innermost cause of an error, e.g. "connection reset by peer".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    clip(&cause.to_string())
}

struct ServerStats {
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    rss_peak: Option<u64>,
    fds_before: Option<usize>,
    fds_peak: Option<usize>,
    alive: bool,
}

fn mib(bytes: Option<u64>) -> f64 {
    bytes.map_or(f64::NAN, |b| b as f64 / 1048576.0)
}

fn open_fds(pid: &str) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// The server's RSS and open descriptors every 100 ms until `end`.
async fn watch_server(pid: String, end: Instant) -> ServerStats {
    let rss = || procstat::sample(&pid).map(|s| s.rss_bytes);
    let mut stats = ServerStats {
        rss_before: rss(),
        rss_after: None,
        rss_peak: None,
        fds_before: open_fds(&pid),
        fds_peak: None,
        alive: true,
    };
    stats.rss_peak = stats.rss_before;
    stats.rss_after = stats.rss_before;
    stats.fds_peak = stats.fds_before;
    let mut tick = pacer(10.0);
    while Instant::now() < end {
        tick.tick().await;
        let now = rss();
        stats.alive = now.is_some();
        stats.rss_after = now.or(stats.rss_after);
        stats.rss_peak = stats.rss_peak.max(now);
        stats.fds_peak = stats.fds_peak.max(open_fds(&pid));
    }
    stats
}

/// Everything measured during one phase.
struct Measured {
    victims: Vec<VictimStats>,
    health: HealthStats,
    server: ServerStats,
}

/// The victims, the health poller and the server sampler of one phase.
struct Watch {
    start: Instant,
    end: Instant,
    victims: Vec<JoinHandle<VictimStats>>,
    health: JoinHandle<HealthStats>,
    server: JoinHandle<ServerStats>,
}

impl Watch {
    /// Joins one victim per `(label, document)`, then starts measuring for
    /// `length`.
    async fn start(
        ctx: &Arc<Ctx>,
        victims: &[(&str, &str)],
        length: Duration,
    ) -> anyhow::Result<Watch> {
        let mut joined = Vec::new();
        for (label, doc) in victims {
            let client_id = ctx.client_id(&format!("victim-{label}"));
            let (ws, welcome, _) = ws_join(ctx, doc, &client_id, ctx.victim_ip).await?;
            let rev = welcome["rev"].as_u64().unwrap_or(0);
            let victim = Victim {
                ctx: Arc::clone(ctx),
                label: (*label).to_owned(),
                doc: (*doc).to_owned(),
                client_id,
            };
            joined.push((victim, ws, rev));
        }
        let start = Instant::now();
        let end = start + length;
        Ok(Watch {
            start,
            end,
            victims: joined
                .into_iter()
                .map(|(v, ws, rev)| tokio::spawn(type_as_victim(v, ws, rev, end)))
                .collect(),
            health: tokio::spawn(poll_health(
                ctx.health.clone(),
                format!("{}/health", ctx.base),
                end,
            )),
            server: tokio::spawn(watch_server(ctx.pid.clone(), end)),
        })
    }

    async fn until_end(&self) {
        tokio::time::sleep_until(self.end.into()).await;
    }

    async fn finish(self) -> anyhow::Result<Measured> {
        let mut victims = Vec::new();
        for v in self.victims {
            victims.push(v.await?);
        }
        Ok(Measured {
            victims,
            health: self.health.await?,
            server: self.server.await?,
        })
    }
}

// ---------------------------------------------------------------------------
// Attackers: a raw WebSocket whose answers are counted by a reader task.

#[derive(Default, Clone)]
struct Replies {
    frames: u64,
    bytes: u64,
    acks: u64,
    ops: u64,
    presence: u64,
    errors: BTreeMap<String, u64>,
    /// How the server ended the connection, if it did.
    ended: Option<String>,
}

impl Replies {
    fn answered(&self) -> u64 {
        self.acks + self.errors.values().sum::<u64>()
    }

    fn to_json(&self) -> Value {
        json!({
            "acks": self.acks,
            "errors": self.errors,
            "frames_received": self.frames,
            "bytes_received": self.bytes,
            "ended_by_server": self.ended,
        })
    }
}

/// An `ack` or `error` the attacker received.
struct Answer {
    code: Option<String>,
    seq: Option<u64>,
    rev: Option<u64>,
}

impl Answer {
    fn name(&self) -> &str {
        self.code.as_deref().unwrap_or("ack")
    }
}

struct Attacker {
    sink: SplitSink<Ws, Message>,
    answers: mpsc::UnboundedReceiver<Answer>,
    rev: Arc<AtomicU64>,
    replies: Arc<Mutex<Replies>>,
    reader: JoinHandle<()>,
}

impl Attacker {
    async fn join(ctx: &Ctx, doc: &str, who: &str) -> anyhow::Result<Self> {
        // From the server's own address (127.0.0.1), not the victims'.
        let from = Some(ctx.server.ip());
        let (ws, welcome, _) = ws_join(ctx, doc, &ctx.client_id(who), from).await?;
        let (sink, stream) = ws.split();
        let rev = Arc::new(AtomicU64::new(welcome["rev"].as_u64().unwrap_or(0)));
        let replies = Arc::new(Mutex::new(Replies::default()));
        let (tx, answers) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_replies(
            stream,
            Arc::clone(&replies),
            Arc::clone(&rev),
            tx,
        ));
        Ok(Attacker {
            sink,
            answers,
            rev,
            replies,
            reader,
        })
    }

    fn rev(&self) -> u64 {
        self.rev.load(Ordering::Relaxed)
    }

    async fn send(&mut self, text: impl Into<Utf8Bytes>) -> anyhow::Result<()> {
        self.sink
            .send(Message::Text(text.into()))
            .await
            .context("send")
    }

    /// The next answer about `seq` (or about no seq in particular).
    async fn answer(&mut self, seq: Option<u64>, within: Duration) -> Option<Answer> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let a = tokio::time::timeout_at(deadline, self.answers.recv())
                .await
                .ok()??;
            if a.seq.is_none() || a.seq == seq {
                return Some(a);
            }
        }
    }

    /// Waits (up to `grace`) until `expect` answers have come, then closes.
    async fn finish(mut self, expect: u64, grace: Duration) -> Replies {
        let deadline = Instant::now() + grace;
        while self.replies.lock().unwrap().answered() < expect && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
        self.reader.abort();
        let replies = self.replies.lock().unwrap().clone();
        replies
    }
}

async fn read_replies(
    mut stream: SplitStream<Ws>,
    replies: Arc<Mutex<Replies>>,
    rev: Arc<AtomicU64>,
    answers: mpsc::UnboundedSender<Answer>,
) {
    let ended = loop {
        let text = match stream.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                break format!("close {}", frame.map_or(0, |f| u16::from(f.code)));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => break format!("error: {e}"),
            None => break "eof".to_owned(),
        };
        let frame: Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(r) = frame["rev"].as_u64() {
            rev.fetch_max(r, Ordering::Relaxed);
        }
        let mut r = replies.lock().unwrap();
        r.frames += 1;
        r.bytes += text.len() as u64;
        let answer = match frame["type"].as_str() {
            Some("ack") => {
                r.acks += 1;
                Some(None)
            }
            Some("error") => {
                let code = frame["code"].as_str().unwrap_or("?").to_owned();
                bump(&mut r.errors, &code);
                Some(Some(code))
            }
            Some("op") => {
                r.ops += 1;
                None
            }
            Some("presence") => {
                r.presence += 1;
                None
            }
            _ => None,
        };
        drop(r);
        if let Some(code) = answer {
            let _ = answers.send(Answer {
                code,
                seq: frame["seq"].as_u64(),
                rev: frame["rev"].as_u64(),
            });
        }
    };
    replies.lock().unwrap().ended = Some(ended);
}

// ---------------------------------------------------------------------------
// The phases.

/// What an attack measured, before it is named and printed.
struct Outcome {
    measured: Measured,
    counters: Value,
}

struct Report {
    /// Wall-clock start, `HH:MM:SS.mmmZ`, to find the phase in server logs.
    started: String,
    seconds: f64,
    measured: Measured,
    counters: Value,
}

async fn run_phase(ctx: &Arc<Ctx>, name: &str) -> anyhow::Result<Report> {
    if procstat::sample(&ctx.pid).is_none() {
        bail!("the server (pid {}) is not running", ctx.pid);
    }
    let limit = Duration::from_secs_f64(ctx.secs.max(LONG_WATCH_SECS) * 3.0 + 60.0);
    let started = Instant::now();
    let started_utc = utc_time_of_day();
    let outcome = tokio::time::timeout(limit, async {
        match name {
            "baseline" => baseline(ctx).await,
            "huge-seq" => huge_seq(ctx).await,
            "old-revision" => old_revision(ctx).await,
            "big-op" => big_op(ctx).await,
            "presence-flood" => presence_flood(ctx).await,
            "welcome-size" => welcome_size(ctx).await,
            "half-open" => half_open(ctx).await,
            "slow-reader" => slow_reader(ctx).await,
            _ => Err(anyhow!("no attack {name}")),
        }
    })
    .await;
    ctx.cleanup().await;
    // Let the server settle (and free memory) before the next phase.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcome = outcome.map_err(|_| anyhow!("gave up after {} s", limit.as_secs()))??;
    let mut counters = outcome.counters;
    if let Some(map) = counters.as_object_mut() {
        map.insert(
            "phase_ms".to_owned(),
            json!(started.elapsed().as_millis() as u64),
        );
    }
    let seconds = match name {
        "baseline" => baseline_secs(ctx.secs),
        "half-open" | "slow-reader" => ctx.secs.max(LONG_WATCH_SECS),
        _ => ctx.secs,
    };
    Ok(Report {
        started: started_utc,
        seconds,
        measured: outcome.measured,
        counters,
    })
}

/// How long the baseline runs: longer than an attack, so that the reference
/// p99 rests on more than one or two samples.
fn baseline_secs(secs: f64) -> f64 {
    (secs * 3.0).max(15.0)
}

/// The victim alone, on a document of its own.
async fn baseline(ctx: &Arc<Ctx>) -> anyhow::Result<Outcome> {
    let doc = ctx.create_doc("baseline", "hello").await?;
    let length = Duration::from_secs_f64(baseline_secs(ctx.secs));
    let watch = Watch::start(ctx, &[("same", &doc)], length).await?;
    watch.until_end().await;
    Ok(Outcome {
        measured: watch.finish().await?,
        counters: json!({}),
    })
}

/// Ops whose `seq` is beyond 2^53 (2^63 and 2^53 alternately), 100 a
/// second, on the victim's document: each should get `bad_message` alone.
async fn huge_seq(ctx: &Arc<Ctx>) -> anyhow::Result<Outcome> {
    let doc = ctx.create_doc("huge-seq", "abc").await?;
    let watch = Watch::start(ctx, &[("same", &doc)], ctx.secs()).await?;
    let mut attacker = Attacker::join(ctx, &doc, "attacker").await?;
    let frames = [
        r#"{"type":"op","rev":0,"seq":9223372036854775808,"op":["x"]}"#,
        r#"{"type":"op","rev":0,"seq":9007199254740992,"op":["x"]}"#,
    ];
    let mut sent = 0u64;
    let mut tick = pacer(100.0);
    loop {
        tick.tick().await;
        if Instant::now() >= watch.end {
            break;
        }
        if attacker.send(frames[(sent % 2) as usize]).await.is_err() {
            break;
        }
        sent += 1;
    }
    let replies = attacker.finish(sent, GRACE).await;
    Ok(Outcome {
        measured: watch.finish().await?,
        counters: json!({"sent": sent, "attacker": replies.to_json()}),
    })
}

/// A document with a history longer than the server's in-memory window
/// (1,000 by default), then one-character ops based on revision 0 or 1,
/// 100 a second: each must be transformed against ops read back from the
/// log.
async fn old_revision(ctx: &Arc<Ctx>) -> anyhow::Result<Outcome> {
    const EDITS: usize = 1_100;
    const TASKS: usize = 8;
    let doc = ctx.create_doc("old-revision", "").await?;
    let (built, rev) = rest_edits(ctx, &doc, EDITS, TASKS).await?;
    let watch = Watch::start(ctx, &[("same", &doc)], ctx.secs()).await?;
    let mut attacker = Attacker::join(ctx, &doc, "attacker").await?;
    let mut sent = 0u64;
    let mut tick = pacer(100.0);
    loop {
        tick.tick().await;
        if Instant::now() >= watch.end {
            break;
        }
        let seq = sent + 1;
        if attacker
            .send(op_frame(seq % 2, seq, r#"["a"]"#))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    let replies = attacker.finish(sent, GRACE).await;
    Ok(Outcome {
        measured: watch.finish().await?,
        counters: json!({
            "history": format!("{EDITS} REST one-character edits, {TASKS} concurrent"),
            "history_build_ms": built.as_millis() as u64,
            "rev_at_start": rev,
            "sent": sent,
            "attacker": replies.to_json(),
        }),
    })
}

/// One op of 100,000 components (over the limit), then ops of 9,000
/// components based 150 revisions back, each sent as soon as the previous
/// is answered; one victim on the attacked document, one on another.
async fn big_op(ctx: &Arc<Ctx>) -> anyhow::Result<Outcome> {
    let doc = ctx.create_doc("big-op", &"y".repeat(60_000)).await?;
    let other = ctx.create_doc("big-op-other", "").await?;
    let (built, _) = rest_edits(ctx, &doc, 200, 8).await?;
    let watch = Watch::start(
        ctx,
        &[("other-doc", &other), ("same-doc", &doc)],
        ctx.secs(),
    )
    .await?;
    let mut attacker = Attacker::join(ctx, &doc, "attacker").await?;

    let huge = op_frame(attacker.rev(), 1, &many_components(100_000));
    let huge_bytes = huge.len();
    let asked = Instant::now();
    attacker.send(huge).await?;
    let huge_answer = attacker.answer(Some(1), ANSWER_TIMEOUT).await;
    let huge_ms = asked.elapsed().as_secs_f64() * 1e3;

    let big = many_components(9_000);
    let mut big_bytes = 0;
    let (mut seq, mut sent) = (1u64, 0u64);
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    let mut answer_ms = histogram();
    let mut unanswered = 0;
    while Instant::now() < watch.end {
        seq += 1;
        let frame = op_frame(attacker.rev().saturating_sub(150), seq, &big);
        big_bytes = frame.len();
        let asked = Instant::now();
        if attacker.send(frame).await.is_err() {
            break;
        }
        sent += 1;
        match attacker.answer(Some(seq), ANSWER_TIMEOUT).await {
            Some(a) => {
                record(&mut answer_ms, asked.elapsed());
                bump(&mut answers, a.name());
            }
            None => {
                unanswered += 1;
                break;
            }
        }
    }
    let replies = attacker.finish(0, Duration::ZERO).await;
    Ok(Outcome {
        measured: watch.finish().await?,
        counters: json!({
            "history": "60,000-character document, then 200 REST one-character edits",
            "history_build_ms": built.as_millis() as u64,
            "op_100k_bytes": huge_bytes,
            "op_100k_answer": huge_answer.as_ref().map(|a| a.name().to_owned()),
            "op_100k_answer_ms": huge_ms,
            "op_9k_bytes": big_bytes,
            "op_9k_sent": sent,
            "op_9k_answers": answers,
            "op_9k_unanswered": unanswered,
            "op_9k_answer_p50_ms": q(&answer_ms, 0.5),
            "op_9k_answer_max_ms": hmax(&answer_ms),
            "attacker": replies.to_json(),
        }),
    })
}

/// 20,000 presence frames pipelined as fast as the socket takes them, and
/// (from a second connection, concurrently) up to 1,000 presence frames of
/// ~1 MB (a 1,000-character name and a junk field), while a second victim
/// stops reading for 2 s.
async fn presence_flood(ctx: &Arc<Ctx>) -> anyhow::Result<Outcome> {
    const SMALL: usize = 20_000;
    const BIG: usize = 1_000;
    let doc = ctx.create_doc("presence-flood", "abc").await?;
    let paused_id = ctx.client_id("victim-paused");
    let (paused_ws, welcome, _) = ws_join(ctx, &doc, &paused_id, ctx.victim_ip).await?;
    let paused_rev = welcome["rev"].as_u64().unwrap_or(0);
    let watch = Watch::start(ctx, &[("same", &doc)], ctx.secs()).await?;
    let paused = tokio::spawn(pause_then_edit(
        paused_ws,
        paused_rev,
        Duration::from_secs(2),
    ));
    let small = Attacker::join(ctx, &doc, "flood").await?;
    let mut big = Attacker::join(ctx, &doc, "junk").await?;
    let end = watch.end;

    let flood = tokio::spawn(async move {
        let mut small = small;
        let started = Instant::now();
        let mut sent = 0u64;
        for i in 0..SMALL {
            if Instant::now() >= end {
                break;
            }
            let frame = format!(r#"{{"type":"presence","selection":[{0},{0}]}}"#, i % 3);
            if small.sink.feed(Message::text(frame)).await.is_err() {
                break;
            }
            sent += 1;
        }
        let flushed = small.sink.flush().await.is_ok();
        let took = started.elapsed();
        // Presence is not answered: give errors (if any) a moment.
        let replies = small.finish(0, Duration::from_millis(500)).await;
        (sent, took, flushed, replies)
    });

    let junk: Utf8Bytes = format!(
        r##"{{"type":"presence","selection":[0,0],"user":{{"name":"{}","color":"#123456","junk":"{}"}}}}"##,
        "N".repeat(1_000),
        "j".repeat(1_000_000)
    )
    .into();
    let junk_bytes = junk.len();
    let started = Instant::now();
    let mut big_sent = 0u64;
    while big_sent < BIG as u64 && Instant::now() < end {
        if big.send(junk.clone()).await.is_err() {
            break;
        }
        big_sent += 1;
    }
    let big_took = started.elapsed();
    let big_replies = big.finish(big_sent, GRACE + Duration::from_secs(2)).await;
    let (small_sent, small_took, small_flushed, small_replies) = flood.await?;
    let paused = paused.await?;
    Ok(Outcome {
        measured: watch.finish().await?,
        counters: json!({
            "small_sent": small_sent,
            "small_written_ms": small_took.as_millis() as u64,
            "small_flushed": small_flushed,
            "small_attacker": small_replies.to_json(),
            "big_frame_bytes": junk_bytes,
            "big_sent": big_sent,
            "big_sent_ms": big_took.as_millis() as u64,
            "big_attacker": big_replies.to_json(),
            "paused_victim": paused,
        }),
    })
}

/// A victim that reads nothing for `pause`, then reads what queued up and
/// makes one edit: is it still connected?
async fn pause_then_edit(mut ws: Ws, mut rev: u64, pause: Duration) -> Value {
    tokio::time::sleep(pause).await;
    let (mut frames, mut presence, mut bytes) = (0u64, 0u64, 0u64);
    let drain_until = Instant::now() + Duration::from_secs(1);
    let gone = |frames: u64, presence: u64, bytes: u64, why: &str| {
        json!({"paused_ms": pause.as_millis() as u64, "frames_after_pause": frames,
               "presence_after_pause": presence, "bytes_after_pause": bytes,
               "connected": false, "ended": why})
    };
    // What queued up during the pause (the flood goes on: at most 1 s).
    loop {
        let next = tokio::time::timeout_at(drain_until.into(), ws.next()).await;
        match next {
            Err(_) => break,
            Ok(Some(Ok(Message::Text(t)))) => {
                frames += 1;
                bytes += t.len() as u64;
                let f: Value = serde_json::from_str(&t).unwrap_or_default();
                if f["type"] == "presence" {
                    presence += 1;
                }
                if let Some(r) = f["rev"].as_u64() {
                    rev = rev.max(r);
                }
            }
            Ok(Some(Ok(Message::Close(c)))) => {
                return gone(frames, presence, bytes, &format!("close {c:?}"))
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return gone(frames, presence, bytes, "eof"),
        }
    }
    let sent = Instant::now();
    if ws
        .send(Message::text(op_frame(rev, 1, r#"["p"]"#)))
        .await
        .is_err()
    {
        return gone(frames, presence, bytes, "send failed");
    }
    let acked = tokio::time::timeout(ANSWER_TIMEOUT, async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m {
                let f: Value = serde_json::from_str(&t).unwrap_or_default();
                if f["type"] == "ack" || f["type"] == "error" {
                    return Some(f);
                }
            }
        }
        None
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    match acked {
        Ok(Some(f)) if f["type"] == "ack" => json!({
            "paused_ms": pause.as_millis() as u64, "frames_after_pause": frames,
            "presence_after_pause": presence, "bytes_after_pause": bytes,
            "connected": true, "ack_ms": sent.elapsed().as_secs_f64() * 1e3,
        }),
        Ok(Some(f)) => gone(frames, presence, bytes, &format!("edit refused: {f}")),
        Ok(None) => gone(frames, presence, bytes, "closed before the ack"),
        Err(_) => gone(frames, presence, bytes, "no ack within 10 s"),
    }
}

/// 50 peers set presence with a 100-character name (and a 10 KB junk
/// field, which the server drops); a newcomer's `welcome` is weighed. Then
/// each peer also tries a ~1 MB name (refused with `too_large`): the
/// server's RSS is sampled before and after, and after the peers leave.
async fn welcome_size(ctx: &Arc<Ctx>) -> anyhow::Result<Outcome> {
    const PEERS: usize = 50;
    const NEWCOMERS: usize = 5;
    let doc = ctx.create_doc("welcome-size", "").await?;
    let watch = Watch::start(ctx, &[("same", &doc)], ctx.secs()).await?;
    let rss = || procstat::sample(&ctx.pid).map(|s| s.rss_bytes);
    let rss_start = rss();
    let fine: Utf8Bytes = format!(
        r##"{{"type":"presence","selection":[0,0],"user":{{"name":"{}","color":"#123456","junk":"{}"}}}}"##,
        "n".repeat(100),
        "j".repeat(10_000)
    )
    .into();
    let long: Utf8Bytes = format!(
        r##"{{"type":"presence","selection":[0,0],"user":{{"name":"{}","color":"#123456"}}}}"##,
        "M".repeat(1_000_000)
    )
    .into();
    let give_up = watch.start + ctx.secs() * 4 + Duration::from_secs(20);
    let mut peers = Vec::new();
    let mut acked = 0u64;
    for i in 0..PEERS {
        if Instant::now() >= give_up {
            break;
        }
        let mut peer = Attacker::join(ctx, &doc, &format!("peer{i}")).await?;
        peer.send(fine.clone()).await?;
        // Once its edit is acknowledged, its presence has been taken.
        peer.send(op_frame(peer.rev(), 1, r#"["p"]"#)).await?;
        if peer
            .answer(Some(1), ANSWER_TIMEOUT)
            .await
            .is_some_and(|a| a.code.is_none())
        {
            acked += 1;
        }
        peers.push(peer);
    }
    let set_up = watch.start.elapsed();
    let rss_peers = rss();

    let mut welcome_bytes = Vec::new();
    let mut welcome_peers = 0;
    let mut user_keys = 0;
    let mut join_ms = histogram();
    for i in 0..NEWCOMERS {
        let asked = Instant::now();
        let who = ctx.client_id(&format!("newcomer{i}"));
        let (mut ws, welcome, bytes) = ws_join(ctx, &doc, &who, ctx.victim_ip).await?;
        record(&mut join_ms, asked.elapsed());
        welcome_bytes.push(bytes);
        let listed = welcome["peers"].as_array().cloned().unwrap_or_default();
        welcome_peers = listed.len();
        for p in &listed {
            user_keys = user_keys.max(p["user"].as_object().map_or(0, |u| u.len()));
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    }

    let mut long_answers: BTreeMap<String, u64> = BTreeMap::new();
    for peer in &mut peers {
        if Instant::now() >= give_up {
            break;
        }
        peer.send(long.clone()).await?;
        let answer = peer.answer(None, ANSWER_TIMEOUT).await;
        bump(
            &mut long_answers,
            answer.as_ref().map_or("none", |a| a.name()),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_long = rss();

    watch.until_end().await;
    let mut peer_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut peers_ended = 0;
    let joined = peers.len();
    for peer in peers {
        let r = peer.finish(0, Duration::ZERO).await;
        for (code, n) in r.errors {
            *peer_errors.entry(code).or_default() += n;
        }
        peers_ended += u64::from(r.ended.is_some());
    }
    let measured = watch.finish().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_left = rss();
    let per_peer_kib = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if joined > 0 => (b as f64 - a as f64) / joined as f64 / 1024.0,
        _ => f64::NAN,
    };
    Ok(Outcome {
        measured,
        counters: json!({
            "peers": joined,
            "peers_acked": acked,
            "peers_set_up_ms": set_up.as_millis() as u64,
            "welcome_bytes": welcome_bytes.iter().max(),
            "welcome_peers": welcome_peers,
            "welcome_user_keys_max": user_keys,
            "newcomer_join_max_ms": hmax(&join_ms),
            "long_name_frame_bytes": long.len(),
            "long_name_answers": long_answers,
            "peer_errors_total": peer_errors,
            "peers_ended_by_server": peers_ended,
            "rss_start_mib": mib(rss_start),
            "rss_with_peers_mib": mib(rss_peers),
            "rss_after_1mb_frames_mib": mib(rss_long),
            "rss_after_peers_left_mib": mib(rss_left),
            "rss_per_peer_kib": per_peer_kib(rss_start, rss_peers),
            "rss_per_1mb_frame_kib": per_peer_kib(rss_peers, rss_long),
        }),
    })
}

/// What became of one half-open connection.
struct HalfOpen {
    connect_error: Option<String>,
    status: Option<u16>,
    /// When the server closed it, after the half request was written.
    closed_after: Option<Duration>,
    reset: bool,
}

/// 2,000 connections that send half a request line and nothing more,
/// opened 100 at a time from the attacker's address; each is watched until
/// the server answers or closes it, or the phase ends.
async fn half_open(ctx: &Arc<Ctx>) -> anyhow::Result<Outcome> {
    const CONNECTIONS: usize = 2_000;
    const BATCH: usize = 100;
    let doc = ctx.create_doc("half-open", "").await?;
    let length = Duration::from_secs_f64(ctx.secs.max(LONG_WATCH_SECS));
    let watch = Watch::start(ctx, &[("same", &doc)], length).await?;
    let end = watch.end;
    // /health from the attacker's own address too: per-IP limits show here.
    let same_ip = tokio::spawn(poll_health(
        health_client(Some(ctx.server.ip()))?,
        format!("{}/health", ctx.base),
        end,
    ));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(CONNECTIONS);
    for batch in 0..CONNECTIONS.div_ceil(BATCH) {
        if Instant::now() >= end {
            break;
        }
        let mut opened = Vec::new();
        for _ in 0..BATCH.min(CONNECTIONS - batch * BATCH) {
            let (tx, rx) = oneshot::channel();
            tasks.push(tokio::spawn(half_open_one(ctx.server, end, tx)));
            opened.push(rx);
        }
        for rx in opened {
            let _ = rx.await;
        }
    }
    let open_ms = started.elapsed().as_millis() as u64;
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await?);
    }
    let same_ip = same_ip.await?;
    let measured = watch.finish().await?;

    let mut connect_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    // Refused ones (answered 429/503) and silently closed ones (the header
    // timeout) apart.
    let (mut refused, mut closed) = (histogram(), histogram());
    let (mut connected, mut resets, mut still_open) = (0u64, 0u64, 0u64);
    for r in &results {
        if let Some(e) = &r.connect_error {
            bump(&mut connect_errors, e);
            continue;
        }
        connected += 1;
        if let Some(s) = r.status {
            bump(&mut statuses, &s.to_string());
        }
        match (r.closed_after, r.status) {
            (Some(after), Some(_)) => record(&mut refused, after),
            (Some(after), None) => record(&mut closed, after),
            (None, _) => still_open += 1,
        }
        resets += u64::from(r.reset);
    }
    Ok(Outcome {
        measured,
        counters: json!({
            "attempted": results.len(),
            "tcp_connected": connected,
            "connect_errors": connect_errors,
            "open_all_ms": open_ms,
            "answered_by_status": statuses,
            "refused_closed_after_max_ms": hmax(&refused),
            "closed_unanswered": closed.len(),
            "closed_by_reset": resets,
            "closed_unanswered_after_min_ms": if closed.is_empty() { f64::NAN } else { closed.min() as f64 / 1e3 },
            "closed_unanswered_after_p50_ms": q(&closed, 0.5),
            "closed_unanswered_after_max_ms": hmax(&closed),
            "still_open_at_end": still_open,
            "health_from_attacker_ip": same_ip.to_json(),
        }),
    })
}

async fn half_open_one(server: SocketAddr, end: Instant, opened: oneshot::Sender<()>) -> HalfOpen {
    let mut out = HalfOpen {
        connect_error: None,
        status: None,
        closed_after: None,
        reset: false,
    };
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server)).await;
    let mut stream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            out.connect_error = Some(format!("{:?}", e.kind()));
            let _ = opened.send(());
            return out;
        }
        Err(_) => {
            out.connect_error = Some("timeout".to_owned());
            let _ = opened.send(());
            return out;
        }
    };
    if let Err(e) = stream.write_all(b"GET /health HTT").await {
        out.connect_error = Some(format!("write: {:?}", e.kind()));
        let _ = opened.send(());
        return out;
    }
    let _ = opened.send(());
    let since = Instant::now();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(end.into(), stream.read(&mut buf)).await {
            Err(_) => return out,
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                if head.len() < 64 {
                    head.extend_from_slice(&buf[..n]);
                    out.status = std::str::from_utf8(&head)
                        .ok()
                        .and_then(|h| h.strip_prefix("HTTP/1.1 "))
                        .and_then(|h| h.get(..3))
                        .and_then(|s| s.parse().ok());
                }
            }
            Ok(Err(_)) => {
                out.reset = true;
                break;
            }
        }
    }
    out.closed_after = Some(since.elapsed());
    out
}

/// A client that joins and never reads, while an attacker inserts and
/// deletes 60,000 characters alternately (each once the previous is
/// acknowledged, within the op rate limit). When does the server let go of
/// the reader, and what does holding on to it cost?
async fn slow_reader(ctx: &Arc<Ctx>) -> anyhow::Result<Outcome> {
    const CHARS: usize = 60_000;
    let doc = ctx.create_doc("slow-reader", "").await?;
    let (slow, slow_port) = raw_join(ctx, &doc, &ctx.client_id("slow")).await?;
    let watch = Watch::start(ctx, &[("same", &doc)], ctx.secs()).await?;
    let length = Duration::from_secs_f64(ctx.secs.max(LONG_WATCH_SECS));
    let monitor = tokio::spawn(watch_connection(
        ctx.server.port(),
        slow_port,
        watch.start,
        watch.start + length,
    ));
    let mut attacker = Attacker::join(ctx, &doc, "writer").await?;
    let insert = format!(r#"["{}"]"#, "z".repeat(CHARS));
    let delete = format!(r#"[{{"d":{CHARS}}}]"#);
    let mut base = attacker.rev();
    let mut inserting = true;
    let (mut seq, mut bytes_sent) = (0u64, 0u64);
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    let mut tick = pacer(100.0);
    loop {
        tick.tick().await;
        if Instant::now() >= watch.end {
            break;
        }
        seq += 1;
        let frame = op_frame(base, seq, if inserting { &insert } else { &delete });
        bytes_sent += frame.len() as u64;
        if attacker.send(frame).await.is_err() {
            break;
        }
        let Some(a) = attacker.answer(Some(seq), ANSWER_TIMEOUT).await else {
            bump(&mut answers, "none");
            break;
        };
        let what = if inserting { "insert" } else { "delete" };
        bump(&mut answers, &format!("{what}:{}", a.name()));
        if a.code.is_none() {
            base = a.rev.unwrap_or(base);
            inserting = !inserting;
        }
    }
    let replies = attacker.finish(0, Duration::ZERO).await;
    let measured = watch.finish().await?;
    let conn = monitor.await?;
    let drained = drain_raw(slow, Duration::from_secs(5)).await;
    Ok(Outcome {
        measured,
        counters: json!({
            "insert_chars": CHARS,
            "ops_sent": seq,
            "bytes_sent": bytes_sent,
            "answers": answers,
            "attacker": replies.to_json(),
            "slow_reader": conn.to_json(),
            "slow_reader_read_afterwards": drained,
        }),
    })
}

/// Joins over a raw socket, reads the handshake's answer and nothing more.
async fn raw_join(ctx: &Ctx, doc: &str, client_id: &str) -> anyhow::Result<(TcpStream, u16)> {
    let mut stream = tcp_connect(ctx.server, Some(ctx.server.ip())).await?;
    let port = stream.local_addr()?.port();
    let request = format!(
        "GET /ws/documents/{doc}?client_id={client_id} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ctx.server
    );
    stream.write_all(request.as_bytes()).await?;
    // Byte by byte, so that no frame after the headers is consumed.
    let mut head = Vec::new();
    let read_head = async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            if stream.read(&mut byte).await? == 0 {
                bail!("closed during the handshake");
            }
            head.push(byte[0]);
        }
        Ok(())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, read_head)
        .await
        .map_err(|_| anyhow!("handshake timed out"))??;
    if !head.starts_with(b"HTTP/1.1 101") {
        bail!(
            "handshake refused: {}",
            clip(&String::from_utf8_lossy(&head))
        );
    }
    Ok((stream, port))
}

struct ConnWatch {
    disconnected_after: Option<Duration>,
    server_state: Option<String>,
    server_queue_max: u64,
    reader_unread_max: u64,
}

impl ConnWatch {
    fn to_json(&self) -> Value {
        json!({
            "disconnected": self.disconnected_after.is_some(),
            "disconnected_after_ms": self.disconnected_after.map(|d| d.as_millis() as u64),
            "server_socket_state_at_end": self.server_state,
            "server_send_queue_max_bytes": self.server_queue_max,
            "reader_unread_max_bytes": self.reader_unread_max,
        })
    }
}

/// Watches both ends of the slow reader's TCP connection in `/proc/net/tcp`
/// (every 100 ms, until `until`): the server's end leaves ESTABLISHED when
/// the server lets go, whatever is still queued for the reader.
async fn watch_connection(
    server_port: u16,
    reader_port: u16,
    start: Instant,
    until: Instant,
) -> ConnWatch {
    let mut out = ConnWatch {
        disconnected_after: None,
        server_state: None,
        server_queue_max: 0,
        reader_unread_max: 0,
    };
    let mut tick = pacer(10.0);
    while Instant::now() < until {
        tick.tick().await;
        let server = tcp_entry(server_port, reader_port);
        if let Some((_, _, rx)) = tcp_entry(reader_port, server_port) {
            out.reader_unread_max = out.reader_unread_max.max(rx);
        }
        match server {
            Some((state, tx, _)) => {
                out.server_queue_max = out.server_queue_max.max(tx);
                out.server_state = Some(tcp_state(state).to_owned());
                if state != 1 {
                    out.disconnected_after = Some(start.elapsed());
                    break;
                }
            }
            None => {
                out.server_state = Some("gone".to_owned());
                out.disconnected_after = Some(start.elapsed());
                break;
            }
        }
    }
    out
}

/// State, send queue and receive queue of the IPv4 TCP socket from
/// `local_port` to `remote_port`.
fn tcp_entry(local_port: u16, remote_port: u16) -> Option<(u8, u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || port(f[1]) != Some(local_port) || port(f[2]) != Some(remote_port) {
            return None;
        }
        let state = u8::from_str_radix(f[3], 16).ok()?;
        let (tx, rx) = f[4].split_once(':')?;
        Some((
            state,
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

fn tcp_state(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        11 => "CLOSING",
        _ => "other",
    }
}

/// Finally reads what the slow reader was sent: frames, op frames, and how
/// the stream ended.
async fn drain_raw(stream: TcpStream, within: Duration) -> Value {
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    let (mut frames, mut ops, mut bytes) = (0u64, 0u64, 0u64);
    let deadline = tokio::time::Instant::now() + within;
    let ended = loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => break "still open".to_owned(),
            Ok(Some(Ok(Message::Text(t)))) => {
                frames += 1;
                bytes += t.len() as u64;
                if t.starts_with(r#"{"type":"op""#) {
                    ops += 1;
                }
            }
            Ok(Some(Ok(Message::Close(c)))) => {
                break format!("close {}", c.map_or(0, |f| u16::from(f.code)));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => break format!("error: {e}"),
            Ok(None) => break "eof".to_owned(),
        }
    };
    json!({"frames": frames, "op_frames": ops, "bytes": bytes, "ended": ended})
}

// ---------------------------------------------------------------------------
// Output.

/// The time of day now, in UTC, as `HH:MM:SS.mmmZ` (as in the server's logs).
fn utc_time_of_day() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ms = now.as_millis() % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

fn counters_text(counters: &Value) -> String {
    let Some(map) = counters.as_object() else {
        return String::new();
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            Value::Number(n) => format!("{k}={n}"),
            Value::Null => format!("{k}=-"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn report_json(name: &str, r: &Report, base: Option<&VictimStats>) -> Value {
    let m = &r.measured;
    let mut out = Map::new();
    out.insert("attack".to_owned(), json!(name));
    out.insert("started_utc".to_owned(), json!(r.started));
    out.insert("seconds".to_owned(), json!(r.seconds));
    if let Some(v) = m.victims.first() {
        let [r50, r99, rmax] = v.ratios(base);
        for (k, val) in [
            ("victim_ack_p50_ms", json!(q(&v.ack, 0.5))),
            ("victim_ack_p99_ms", json!(q(&v.ack, 0.99))),
            ("victim_ack_max_ms", json!(hmax(&v.ack))),
            ("victim_p50_vs_baseline", json!(r50)),
            ("victim_p99_vs_baseline", json!(r99)),
            ("victim_max_vs_baseline", json!(rmax)),
            (
                "victim_connected",
                json!(m.victims.iter().all(VictimStats::stayed_connected)),
            ),
        ] {
            out.insert(k.to_owned(), val);
        }
    }
    out.insert(
        "victims".to_owned(),
        Value::Array(m.victims.iter().map(|v| v.to_json(base)).collect()),
    );
    out.insert("health_p50_ms".to_owned(), json!(q(&m.health.ok, 0.5)));
    out.insert(
        "health_max_ms".to_owned(),
        json!(m.health.max.as_secs_f64() * 1e3),
    );
    out.insert("health_polls".to_owned(), json!(m.health.polls));
    out.insert("health_failures".to_owned(), json!(m.health.failures));
    out.insert("rss_before_mib".to_owned(), json!(mib(m.server.rss_before)));
    out.insert("rss_after_mib".to_owned(), json!(mib(m.server.rss_after)));
    out.insert("rss_peak_mib".to_owned(), json!(mib(m.server.rss_peak)));
    out.insert("fds_before".to_owned(), json!(m.server.fds_before));
    out.insert("fds_peak".to_owned(), json!(m.server.fds_peak));
    out.insert("server_alive".to_owned(), json!(m.server.alive));
    out.insert("counters".to_owned(), r.counters.clone());
    Value::Object(out)
}

fn print_phase(
    name: &str,
    result: &anyhow::Result<Report>,
    base: Option<&VictimStats>,
    as_json: bool,
) {
    match result {
        Ok(r) => {
            let m = &r.measured;
            let victims: Vec<String> = m.victims.iter().map(|v| v.text(base)).collect();
            let failures = if m.health.failures.is_empty() {
                String::new()
            } else {
                format!(", failures {:?}", m.health.failures)
            };
            println!(
                "{name} [{}]: {}; /health max {:.1} ms ({} polls{failures}); server RSS {:.1} -> {:.1} MiB \
                 (peak {:.1}), fds {} -> peak {}{}; {}",
                r.started,
                victims.join("; "),
                m.health.max.as_secs_f64() * 1e3,
                m.health.polls,
                mib(m.server.rss_before),
                mib(m.server.rss_after),
                mib(m.server.rss_peak),
                m.server.fds_before.map_or("?".to_owned(), |n| n.to_string()),
                m.server.fds_peak.map_or("?".to_owned(), |n| n.to_string()),
                if m.server.alive { "" } else { ", SERVER GONE" },
                counters_text(&r.counters),
            );
            if as_json {
                println!("{}", report_json(name, r, base));
            }
        }
        Err(e) => {
            println!("{name}: FAILED: {e:#}");
            if as_json {
                println!("{}", json!({"attack": name, "error": format!("{e:#}")}));
            }
        }
    }
}

fn summarize(
    ctx: &Ctx,
    baseline: &anyhow::Result<Report>,
    results: &[(&str, anyhow::Result<Report>)],
    as_json: bool,
) {
    let base = baseline
        .as_ref()
        .ok()
        .and_then(|r| r.measured.victims.first());
    let failed: Vec<&str> = std::iter::once(("baseline", baseline))
        .chain(results.iter().map(|(n, r)| (*n, r)))
        .filter(|(_, r)| r.is_err())
        .map(|(n, _)| n)
        .collect();
    let mut disconnected = Vec::new();
    let mut worst: Option<(&str, f64)> = None;
    let mut health_worst: Option<(&str, f64)> = None;
    for (name, r) in results {
        let Ok(r) = r else { continue };
        if r.measured.victims.iter().any(|v| !v.stayed_connected()) {
            disconnected.push(*name);
        }
        for v in &r.measured.victims {
            let ratio = v.ratios(base)[1];
            if ratio.is_finite() && worst.is_none_or(|(_, w)| ratio > w) {
                worst = Some((name, ratio));
            }
        }
        let h = r.measured.health.max.as_secs_f64() * 1e3;
        if health_worst.is_none_or(|(_, w)| h > w) {
            health_worst = Some((name, h));
        }
    }
    let alive = procstat::sample(&ctx.pid);
    println!(
        "summary: {} attacks, failed: {}; victim disconnected in: {}; worst victim p99: x{:.1} baseline ({}); \
         worst /health: {:.1} ms ({}); server {}",
        results.len(),
        if failed.is_empty() { "none".to_owned() } else { failed.join(", ") },
        if disconnected.is_empty() { "none".to_owned() } else { disconnected.join(", ") },
        worst.map_or(f64::NAN, |w| w.1),
        worst.map_or("-", |w| w.0),
        health_worst.map_or(f64::NAN, |w| w.1),
        health_worst.map_or("-", |w| w.0),
        alive.map_or("GONE".to_owned(), |s| format!("alive, RSS {:.1} MiB", s.rss_bytes as f64 / 1048576.0)),
    );
    if as_json {
        println!(
            "{}",
            json!({
                "summary": "abuse",
                "attacks": results.len(),
                "seconds": ctx.secs,
                "failed": failed,
                "victim_disconnected_in": disconnected,
                "baseline_ack_p50_ms": base.map_or(f64::NAN, |b| q(&b.ack, 0.5)),
                "baseline_ack_p99_ms": base.map_or(f64::NAN, |b| q(&b.ack, 0.99)),
                "baseline_ack_max_ms": base.map_or(f64::NAN, |b| hmax(&b.ack)),
                "worst_p99_vs_baseline": worst.map_or(f64::NAN, |w| w.1),
                "worst_p99_attack": worst.map(|w| w.0),
                "worst_health_ms": health_worst.map_or(f64::NAN, |w| w.1),
                "worst_health_attack": health_worst.map(|w| w.0),
                "server_alive": alive.is_some(),
                "server_rss_end_mib": mib(alive.map(|s| s.rss_bytes)),
                "victim_ip": ctx.victim_ip.map(|ip| ip.to_string()),
                "attacker_ip": ctx.server.ip().to_string(),
            })
        );
    }
}
