//! `collab-bench connections`: what an idle WebSocket connection costs the
//! server. Opens one connection per document first (so the documents are
//! loaded and their cost is in the baseline), then K more idle ones, and
//! reports the server's RSS growth per connection.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::procstat;

#[derive(Args, Debug, Clone)]
pub struct ConnectionsArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    url: String,
    /// Idle connections to open.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Documents they are spread over.
    #[arg(long, default_value_t = 100)]
    docs: usize,
    /// The server's process id (its RSS is what is measured).
    #[arg(long)]
    server_pid: u32,
    /// Also print the results as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub fn run(args: &ConnectionsArgs) -> anyhow::Result<()> {
    if args.count == 0 || args.docs == 0 {
        bail!("--count and --docs must be positive");
    }
    crate::load::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure(args))
}

async fn measure(args: &ConnectionsArgs) -> anyhow::Result<()> {
    let pid = args.server_pid.to_string();
    let base = args.url.trim_end_matches('/').to_owned();
    let ws_base = base.replacen("http", "ws", 1);
    let run_id = format!("{:08x}", rand::random::<u32>());
    let http = reqwest::Client::new();
    let docs: Vec<String> = (0..args.docs)
        .map(|d| format!("conn-{run_id}-{d}"))
        .collect();
    for doc in &docs {
        let res = http
            .post(format!("{base}/api/documents"))
            .json(&json!({"id": doc, "title": "connections", "content": "idle"}))
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        if !res.status().is_success() {
            bail!("creating {doc}: {}", res.status());
        }
    }
    let url = |i: usize| format!("{ws_base}/ws/documents/{}", docs[i % docs.len()]);

    // Every document open (one connection each) before the baseline.
    let mut sockets = open_many((0..args.docs).map(url).collect()).await?;
    let before = settled_rss(&pid).await?;
    let started = Instant::now();
    sockets.extend(open_many((args.docs..args.docs + args.count).map(url).collect()).await?);
    let opened_in = started.elapsed();
    let after = settled_rss(&pid).await?;

    let per = (after as f64 - before as f64) / args.count as f64;
    println!(
        "connections: {} idle connections over {} documents (opened in {:.1}s)",
        args.count,
        args.docs,
        opened_in.as_secs_f64()
    );
    println!(
        "  server RSS: {:.1} MiB before, {:.1} MiB after: {:.2} KiB per connection",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per / 1024.0
    );
    if args.json {
        let value = json!({
            "count": args.count,
            "docs": args.docs,
            "rss_before_bytes": before,
            "rss_after_bytes": after,
            "bytes_per_connection": per,
        });
        println!("{value}");
    }
    drop(sockets);
    for doc in &docs {
        let _ = http
            .delete(format!("{base}/api/documents/{doc}"))
            .send()
            .await;
    }
    Ok(())
}

/// Opens connections 100 at a time and reads each one's welcome.
async fn open_many(urls: Vec<String>) -> anyhow::Result<Vec<Socket>> {
    let mut sockets = Vec::with_capacity(urls.len());
    for chunk in urls.chunks(100) {
        let opening: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|u| tokio::spawn(open(u)))
            .collect();
        for o in opening {
            sockets.push(o.await??);
        }
    }
    Ok(sockets)
}

async fn open(url: String) -> anyhow::Result<Socket> {
    // Small buffers on the generator's side too: it holds thousands.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(&url, Some(config), false)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    match socket.next().await {
        Some(Ok(msg)) if msg.to_text().is_ok_and(|t| t.contains("\"welcome\"")) => Ok(socket),
        other => bail!("no welcome from {url}: {other:?}"),
    }
}

/// The server's RSS once it stops changing (allocators return memory lazily).
async fn settled_rss(pid: &str) -> anyhow::Result<u64> {
    let read = || {
        procstat::sample(pid)
            .map(|s| s.rss_bytes)
            .context("no such server process")
    };
    let mut last = read()?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = read()?;
        if now.abs_diff(last) < 64 * 1024 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}
