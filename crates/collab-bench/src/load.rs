//! `collab-bench load`: N clients typing into M documents of a running
//! server, at a fixed rate each (open loop), through the Rust client library.
//!
//! Latencies are measured from the keystroke: an edit made while another op
//! is in flight is composed into the client's next op, so each op's `Sent`
//! event is matched to the earliest keystroke it carries. The ack latency is
//! keystroke → durable ack to its author; the peer latency is keystroke →
//! another client holding it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use collab_client::{Event, Events, Operation, Options, Session};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::procstat;

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8000 (nothing is
    /// started). Repeat for several instances of one cluster: clients are
    /// spread over them round-robin.
    #[arg(long, required = true)]
    url: Vec<String>,
    /// Clients, spread round-robin over the documents.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Documents, created fresh for this run.
    #[arg(long, default_value_t = 1)]
    docs: usize,
    /// Edits per second per client (open loop: on schedule, acked or not).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// The server's process id, to report its CPU and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also print the results as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// A token for a server in token mode (`collab token --sub bench --doc
    /// '*=admin'`): sent with the REST calls and by every client.
    #[arg(long)]
    token: Option<String>,
}

/// Keystroke times of one client, by the seq of the op that carried them.
#[derive(Default)]
struct Timing {
    /// Keystrokes not yet sent (composed into the next op).
    unsent: VecDeque<Instant>,
    /// Earliest keystroke carried by each sent op.
    sent: HashMap<u64, Instant>,
}

/// What one client's event drain measured.
struct Drained {
    ack: Histogram<u64>,
    peer: Histogram<u64>,
    acked_in_window: u64,
    delivered_in_window: u64,
    errors: u64,
    error_codes: std::collections::BTreeMap<String, u64>,
    reconnects: u64,
    /// Remote ops whose author had not recorded its send yet: settled at the end.
    unmatched: Vec<(usize, u64, Instant)>,
}

struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

pub fn run(args: &LoadArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.docs == 0 || args.rate <= 0.0 || args.duration <= 0.0 {
        bail!("--clients, --docs, --rate and --duration must be positive");
    }
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(load(args))?;
    report.print(args);
    Ok(())
}

async fn load(args: &LoadArgs) -> anyhow::Result<Report> {
    let run_id: String = format!("{:08x}", rand::random::<u32>());
    let http = reqwest::Client::new();
    let bases: Vec<String> = args
        .url
        .iter()
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    let base = bases[0].clone();
    // Every REST call carries the token, when the server wants one.
    let authed = |request: reqwest::RequestBuilder| match &args.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let docs: Vec<String> = (0..args.docs)
        .map(|d| format!("bench-{run_id}-{d}"))
        .collect();
    for doc in &docs {
        let res = authed(http.post(format!("{base}/api/documents")))
            .json(&json!({"id": doc, "title": format!("load {run_id}"), "content": "hello"}))
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        if !res.status().is_success() {
            bail!("creating {doc}: {} {}", res.status(), res.text().await?);
        }
    }

    let timings: Arc<Vec<Mutex<Timing>>> =
        Arc::new((0..args.clients).map(|_| Mutex::default()).collect());
    let mut sessions = Vec::with_capacity(args.clients);
    let mut streams = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let options = Options {
            client_id: Some(format!("{run_id}-{i}")),
            token: args.token.clone(),
            ..Options::default()
        };
        let url = &bases[i % bases.len()];
        let mut session = Session::connect(url, &docs[i % docs.len()], options)
            .await
            .with_context(|| format!("client {i} could not connect"))?;
        streams.push(session.take_events());
        sessions.push(Arc::new(session));
    }

    let begin = Instant::now() + Duration::from_millis(200);
    let window = Arc::new(Window {
        start: begin + Duration::from_secs_f64(args.warmup),
        end: begin + Duration::from_secs_f64(args.warmup + args.duration),
    });
    let drains: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, events)| {
            tokio::spawn(drain(i, events, Arc::clone(&timings), Arc::clone(&window)))
        })
        .collect();
    let sent = Arc::new(AtomicU64::new(0));
    let behind = Arc::new(AtomicU64::new(0));
    let typists: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(i, session)| {
            tokio::spawn(type_on_schedule(
                i,
                Arc::clone(session),
                args.rate,
                begin,
                Arc::clone(&window),
                Arc::clone(&timings),
                Arc::clone(&sent),
                Arc::clone(&behind),
            ))
        })
        .collect();

    let pid = args.server_pid.map(|p| p.to_string());
    tokio::time::sleep_until(window.start.into()).await;
    let server_before = pid.as_deref().and_then(procstat::sample);
    let self_before = procstat::sample("self");
    tokio::time::sleep_until(window.end.into()).await;
    let server_after = pid.as_deref().and_then(procstat::sample);
    let self_after = procstat::sample("self");
    for t in typists {
        t.await?;
    }

    // Settle: everyone's edits acknowledged, everyone at the stored revision.
    let settle = Duration::from_secs(30);
    let mut converged = true;
    for s in &sessions {
        if tokio::time::timeout(settle, s.wait_synced()).await.is_err() {
            converged = false;
        }
    }
    for (d, doc) in docs.iter().enumerate() {
        let res = authed(http.get(format!("{base}/api/documents/{doc}")))
            .send()
            .await?;
        if !res.status().is_success() {
            bail!("reading {doc}: {} {}", res.status(), res.text().await?);
        }
        let stored: serde_json::Value = res.json().await?;
        let rev = stored["rev"].as_u64().unwrap_or_default();
        let content = stored["content"].as_str().unwrap_or_default();
        for s in sessions.iter().skip(d).step_by(docs.len()) {
            let at_rev = tokio::time::timeout(settle, s.wait_for_rev(rev)).await;
            let same = s.content().await.map(|c| c == content).unwrap_or(false);
            converged &= at_rev.is_ok() && same;
        }
    }
    // Sessions end first, so deleting the documents is not counted as errors.
    drop(sessions);
    let mut total = Drained::new();
    for d in drains {
        total.merge(d.await?);
    }
    for doc in &docs {
        let _ = authed(http.delete(format!("{base}/api/documents/{doc}")))
            .send()
            .await;
    }
    total.settle_unmatched(&timings, &window);
    let secs = args.duration;
    Ok(Report {
        sent_per_s: sent.load(Ordering::Relaxed) as f64 / secs,
        acked_per_s: total.acked_in_window as f64 / secs,
        delivered_per_s: total.delivered_in_window as f64 / secs,
        behind: behind.load(Ordering::Relaxed),
        converged,
        server: server_before.zip(server_after),
        generator: self_before.zip(self_after),
        drained: total,
    })
}

#[allow(clippy::too_many_arguments)]
async fn type_on_schedule(
    i: usize,
    session: Arc<Session>,
    rate: f64,
    begin: Instant,
    window: Arc<Window>,
    timings: Arc<Vec<Mutex<Timing>>>,
    sent: Arc<AtomicU64>,
    behind: Arc<AtomicU64>,
) {
    let mut rng = StdRng::seed_from_u64(i as u64);
    let period = Duration::from_secs_f64(1.0 / rate);
    // Spread the clients' phases so their keystrokes do not all coincide.
    let mut next = begin + period.mul_f64(rng.gen::<f64>());
    while next < window.end {
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        if now > next + Duration::from_millis(50) {
            behind.fetch_add(1, Ordering::Relaxed);
        }
        let (at, delete) = (rng.gen::<f64>(), rng.gen_bool(0.3));
        timings[i].lock().unwrap().unsent.push_back(now);
        let edited = session
            .edit_with(move |doc| {
                let n = doc.len_chars();
                let pos = ((n as f64) * at) as usize;
                // Keep documents small: delete more once they grow.
                if (delete || n > 2_000) && pos < n {
                    Some(Operation::delete(pos, 1))
                } else {
                    Some(Operation::insert(pos.min(n), "x"))
                }
            })
            .await;
        if edited.is_ok() && window.contains(now) {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        next += period;
    }
}

async fn drain(
    me: usize,
    mut events: Events,
    timings: Arc<Vec<Mutex<Timing>>>,
    window: Arc<Window>,
) -> Drained {
    let mut out = Drained::new();
    while let Some(event) = events.next().await {
        let now = Instant::now();
        match event {
            Event::Sent { seq, .. } => {
                let mut t = timings[me].lock().unwrap();
                if let Some(first) = t.unsent.front().copied() {
                    t.unsent.clear();
                    t.sent.insert(seq, first);
                }
            }
            Event::Acked { seq, .. } => {
                let typed = timings[me].lock().unwrap().sent.get(&seq).copied();
                if let Some(typed) = typed.filter(|t| window.contains(*t)) {
                    out.acked_in_window += 1;
                    record(&mut out.ack, now - typed);
                }
            }
            Event::Remote {
                client_id: Some(author),
                seq: Some(seq),
                ..
            } => {
                if window.contains(now) {
                    out.delivered_in_window += 1;
                }
                let Some(j) = author
                    .rsplit('-')
                    .next()
                    .and_then(|s| s.parse::<usize>().ok())
                else {
                    continue;
                };
                let typed = timings
                    .get(j)
                    .and_then(|t| t.lock().unwrap().sent.get(&seq).copied());
                match typed {
                    Some(typed) if window.contains(typed) => record(&mut out.peer, now - typed),
                    Some(_) => {}
                    None => out.unmatched.push((j, seq, now)),
                }
            }
            Event::Error { code, .. } => {
                out.errors += 1;
                *out.error_codes.entry(format!("{code:?}")).or_default() += 1;
            }
            Event::Disconnected => out.reconnects += 1,
            _ => {}
        }
    }
    out
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record(d.as_micros().max(1) as u64);
}

impl Drained {
    fn new() -> Self {
        let histogram = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        Drained {
            ack: histogram(),
            peer: histogram(),
            acked_in_window: 0,
            delivered_in_window: 0,
            errors: 0,
            error_codes: Default::default(),
            reconnects: 0,
            unmatched: Vec::new(),
        }
    }

    fn merge(&mut self, other: Drained) {
        let _ = self.ack.add(&other.ack);
        let _ = self.peer.add(&other.peer);
        self.acked_in_window += other.acked_in_window;
        self.delivered_in_window += other.delivered_in_window;
        self.errors += other.errors;
        for (code, n) in other.error_codes {
            *self.error_codes.entry(code).or_default() += n;
        }
        self.reconnects += other.reconnects;
        self.unmatched.extend(other.unmatched);
    }

    /// Remote ops that arrived before their author's `Sent` was recorded.
    fn settle_unmatched(&mut self, timings: &[Mutex<Timing>], window: &Window) {
        for (j, seq, seen) in std::mem::take(&mut self.unmatched) {
            let typed = timings[j].lock().unwrap().sent.get(&seq).copied();
            if let Some(typed) = typed.filter(|t| window.contains(*t)) {
                record(&mut self.peer, seen.saturating_duration_since(typed));
            }
        }
    }
}

struct Report {
    sent_per_s: f64,
    acked_per_s: f64,
    delivered_per_s: f64,
    behind: u64,
    converged: bool,
    server: Option<(procstat::Sample, procstat::Sample)>,
    generator: Option<(procstat::Sample, procstat::Sample)>,
    drained: Drained,
}

fn q(h: &Histogram<u64>, quantile: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.value_at_quantile(quantile) as f64 / 1000.0
}

impl Report {
    fn print(&self, args: &LoadArgs) {
        let d = &self.drained;
        let (ack, peer) = (&d.ack, &d.peer);
        println!(
            "load: {} clients over {} document(s), {} edits/s each, {}s measured after {}s warm-up",
            args.clients, args.docs, args.rate, args.duration, args.warmup
        );
        println!(
            "  sent {:.0} edits/s, acknowledged {:.0} ops/s (durable), delivered {:.0} ops/s to peers",
            self.sent_per_s, self.acked_per_s, self.delivered_per_s
        );
        println!("  latency (ms)      p50      p99      max   samples");
        for (name, h) in [("keystroke->ack", ack), ("keystroke->peer", peer)] {
            println!(
                "  {name:<15} {:>8.2} {:>8.2} {:>8.2} {:>9}",
                q(h, 0.5),
                q(h, 0.99),
                if h.is_empty() {
                    f64::NAN
                } else {
                    h.max() as f64 / 1000.0
                },
                h.len()
            );
        }
        println!(
            "  errors {} {:?}, reconnects {}, converged: {}",
            d.errors, d.error_codes, d.reconnects, self.converged
        );
        let server_cpu = self.server.map(|(a, b)| procstat::cpu_share(&a, &b));
        let server_rss = self.server.map(|(_, b)| b.rss_bytes);
        if let (Some(cpu), Some(rss)) = (server_cpu, server_rss) {
            println!(
                "  server: {:.0}% CPU (of one core), {:.1} MiB RSS",
                cpu * 100.0,
                rss as f64 / 1048576.0
            );
        }
        let gen_cpu = self.generator.map(|(a, b)| procstat::cpu_share(&a, &b));
        if let Some(cpu) = gen_cpu {
            println!("  generator: {:.0}% CPU (of one core)", cpu * 100.0);
        }
        if self.behind > 0 {
            println!(
                "  WARNING: the generator fell behind its schedule {} times (> 50 ms late): \
                 it, not the server, may be the limit",
                self.behind
            );
        }
        if args.json {
            let value = json!({
                "clients": args.clients,
                "docs": args.docs,
                "rate": args.rate,
                "sent_per_s": self.sent_per_s,
                "acked_per_s": self.acked_per_s,
                "delivered_per_s": self.delivered_per_s,
                "ack_p50_ms": q(ack, 0.5),
                "ack_p99_ms": q(ack, 0.99),
                "ack_max_ms": if ack.is_empty() { f64::NAN } else { ack.max() as f64 / 1000.0 },
                "peer_p50_ms": q(peer, 0.5),
                "peer_p99_ms": q(peer, 0.99),
                "peer_max_ms": if peer.is_empty() { f64::NAN } else { peer.max() as f64 / 1000.0 },
                "errors": d.errors,
                "reconnects": d.reconnects,
                "converged": self.converged,
                "behind_schedule": self.behind,
                "server_cpu": server_cpu,
                "server_rss_bytes": server_rss,
                "generator_cpu": gen_cpu,
            });
            println!("{value}");
        }
    }
}

/// Many connections need many file descriptors: raise the soft limit to
/// the hard one (best effort).
pub fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: could not raise the open-files limit: {e}");
    }
}
