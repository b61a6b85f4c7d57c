//! The application: shared state, the router and the server loop.
//!
//! `run` takes an already bound listener and a shutdown future so tests can
//! start the real server on port 0 and stop it when they choose.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::auth::Auth;
use crate::cluster::{self, ClusterLink};
use crate::config::Config;
use crate::error::AppError;
use crate::extract::BodyDeadline;
use crate::origin::{self, AllowedOrigins};
use crate::rooms::Rooms;
use crate::snapshot::{SnapshotStats, SnapshotWorker};
use crate::store::{self, DocumentStore, StoreError};
use crate::{listener, routes};

/// What every request handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn DocumentStore>,
    pub rooms: Rooms,
    pub limits: Limits,
    /// What the HTTP edge allows: connections, header timing, origins.
    pub edge: Edge,
    /// Turns true when the server starts shutting down, so long-lived
    /// WebSocket sessions close and let the graceful shutdown finish.
    pub closing: watch::Receiver<bool>,
    /// Keys, leeway and revocations: who may do what.
    pub auth: Auth,
    /// What the in-process snapshot worker has done so far.
    pub snapshots: SnapshotStats,
    /// How often the revocations table is read.
    revocation_poll: Duration,
    /// The in-process snapshot worker, until [`run`] starts it.
    snapshot_worker: Arc<std::sync::Mutex<Option<SnapshotWorker>>>,
}

/// Per-message and per-connection limits, as configured.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_document_chars: usize,
    /// Enforced per WebSocket connection.
    pub max_ops_per_second: u32,
    /// Presence updates per second a WebSocket connection passes on; the
    /// rest are coalesced.
    pub max_presence_per_second: u32,
    /// A WebSocket silent this long is closed; one silent a quarter as long is pinged.
    pub ws_idle: Duration,
}

/// What the HTTP edge allows, as configured.
#[derive(Debug, Clone)]
pub struct Edge {
    /// Open connections at once; 0 for no limit.
    pub max_connections: usize,
    /// Open connections from one IP address; 0 for no limit.
    pub max_connections_per_ip: usize,
    /// Time to send a request's headers.
    pub header_timeout: Duration,
    /// Web origins besides the server's own that may use it.
    pub allowed_origins: Arc<[String]>,
}

impl Edge {
    /// Time to send a whole request body, from when its handler starts
    /// reading it: three header timeouts (30 s by default: a 1 MiB body at
    /// 35 KB/s).
    pub fn body_timeout(&self) -> Duration {
        self.header_timeout * 3
    }
}

impl AppState {
    /// A single instance (no cluster). Fails on a bad key setting.
    pub fn new(store: Arc<dyn DocumentStore>, config: &Config) -> Result<Self, String> {
        Ok(Self::with_cluster(
            store,
            config,
            None,
            Auth::new(config.verifier()?),
        ))
    }

    fn with_cluster(
        store: Arc<dyn DocumentStore>,
        config: &Config,
        cluster: Option<ClusterLink>,
        auth: Auth,
    ) -> Self {
        let auth = auth.with_cluster(cluster.clone());
        let (notifier, worker) =
            SnapshotWorker::in_process(Arc::clone(&store), config.snapshot_config(), None);
        let rooms = Rooms::new(Arc::clone(&store), config.room_config(), notifier, cluster);
        // The worker checks each snapshot against the live room.
        let worker = worker.with_live(Arc::new(rooms.clone()));
        Self {
            auth,
            revocation_poll: Duration::from_millis(config.revocation_poll_ms.max(10)),
            snapshots: worker.stats(),
            snapshot_worker: Arc::new(std::sync::Mutex::new(Some(worker))),
            rooms,
            closing: watch::channel(false).1,
            store,
            limits: Limits {
                max_message_bytes: config.max_message_bytes,
                max_document_chars: config.max_document_chars,
                max_ops_per_second: config.max_ops_per_second,
                max_presence_per_second: config.max_presence_per_second,
                ws_idle: Duration::from_secs(config.ws_idle_secs.max(2)),
            },
            edge: Edge {
                max_connections: config.max_connections,
                max_connections_per_ip: config.max_connections_per_ip,
                header_timeout: Duration::from_secs(config.header_timeout_secs.max(1)),
                allowed_origins: config
                    .allowed_origins
                    .iter()
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect(),
            },
        }
    }

    /// Open the configured store, create and migrate it, and build the state.
    /// With `REDIS_URL` set, joins the other instances through Redis.
    pub async fn connect(config: &Config) -> Result<Self, StoreError> {
        config.validate().map_err(StoreError::Config)?;
        let auth = Auth::new(config.verifier().map_err(StoreError::Config)?);
        let store = store::open_store(&config.database_url).await?;
        store.migrate().await?;
        if auth.is_open() {
            tracing::warn!(
                "no COLLAB_AUTH_SECRET or COLLAB_AUTH_PUBLIC_KEY: the server is OPEN, anyone \
                 who can reach it may read, change and delete every document"
            );
        } else {
            // Before serving: a restart must not forget a revocation.
            auth.revocations().poll(store.as_ref()).await?;
        }
        let Some(url) = &config.redis_url else {
            return Ok(Self::with_cluster(store, config, None, auth));
        };
        let instance = config
            .instance_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
        let ttl = std::time::Duration::from_secs(config.presence_ttl_secs.max(1));
        let (link, client) = cluster::connect(url, &config.redis_prefix, &instance, ttl)
            .await
            .map_err(|e| StoreError::Config(format!("cannot use Redis at {url}: {e}")))?;
        let state = Self::with_cluster(store, config, Some(link), auth);
        cluster::subscribe(
            client,
            config.redis_prefix.clone(),
            instance.clone(),
            Instance {
                rooms: state.rooms.clone(),
                revocations: state.auth.revocations().clone(),
            },
        );
        tracing::info!(%instance, "running as one instance of a cluster");
        Ok(state)
    }
}

/// This instance, as the other instances' news reaches it.
struct Instance {
    rooms: Rooms,
    revocations: crate::auth::Revocations,
}

impl cluster::Inbound for Instance {
    fn deliver(&self, doc: &crate::domain::DocumentId, message: cluster::ClusterMessage) {
        self.rooms.deliver(doc, message);
    }

    fn resubscribed(&self) {
        self.rooms.catch_up_all();
    }

    fn revoked(&self, revocation: crate::store::Revocation) {
        self.revocations.add([revocation]);
    }
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_message_bytes;
    let allowed = AllowedOrigins::new(&state.edge.allowed_origins);
    routes::router()
        // Unknown paths and methods get the protocol's error body too.
        .fallback(|| async { AppError::NoRoute })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        // A half-sent body would otherwise hold its connection forever (the
        // header timeout covers only request heads).
        .layer(axum::Extension(BodyDeadline(state.edge.body_timeout())))
        .layer(origin::cors(allowed.clone()))
        // Outside CORS, so a foreign origin's preflight is refused too
        // instead of being answered without CORS headers.
        .layer(axum::middleware::from_fn_with_state(allowed, origin::check))
        // One INFO line per request, so the default log level shows traffic;
        // without the token a WebSocket URL may carry.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        uri = %redacted(request.uri()),
                        version = ?request.version(),
                    )
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .with_state(state)
}

/// `uri` with the value of any `token` query parameter replaced, so a
/// credential never reaches a log line.
pub fn redacted(uri: &axum::http::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.path().to_owned();
    };
    let query: Vec<&str> = query
        .split('&')
        .map(|pair| {
            let key = pair.split_once('=').map_or(pair, |(key, _)| key);
            // Decoded as the query extractor decodes it: `to%6Ben` is `token`.
            if percent_decoded(key).eq_ignore_ascii_case("token") {
                "token=[redacted]"
            } else {
                pair
            }
        })
        .collect();
    format!("{}?{}", uri.path(), query.join("&"))
}

fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serve until `shutdown` resolves, let in-flight requests finish, then
/// stop every room after it has stored what it holds.
pub async fn run(
    listener: TcpListener,
    mut state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let rooms = state.rooms.clone();
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = state
        .snapshot_worker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .map(|w| {
            tokio::spawn(w.run(async {
                let _ = worker_stopped.await;
            }))
        });
    let (closing_tx, closing) = watch::channel(false);
    let poller = (!state.auth.is_open()).then(|| {
        tokio::spawn(state.auth.revocations().clone().run_poller(
            Arc::clone(&state.store),
            state.revocation_poll,
            closing.clone(),
        ))
    });
    state.closing = closing;
    let shutdown = async move {
        shutdown.await;
        // WebSocket sessions never finish by themselves: tell them to close.
        let _ = closing_tx.send(true);
    };
    let edge = state.edge.clone();
    let app = router(state);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    let served = listener::serve(listener, app, &edge, shutdown).await;
    // Rooms first: each writes its unload snapshot, so the worker's final
    // pass finds little left to do.
    rooms.shutdown().await;
    if let Some(poller) = poller {
        let _ = poller.await;
    }
    let _ = stop_worker.send(());
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    tracing::info!("stopped");
    served
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn tokens_are_redacted_from_logged_uris() {
        let r = |s: &str| redacted(&s.parse().unwrap());
        assert_eq!(
            r("/ws/documents/a?token=abc.def&since=3"),
            "/ws/documents/a?token=[redacted]&since=3"
        );
        assert_eq!(
            r("/x?client_id=c&TOKEN=abc"),
            "/x?client_id=c&token=[redacted]"
        );
        assert_eq!(r("/x?to%6Ben=abc"), "/x?token=[redacted]");
        assert_eq!(r("/x?token"), "/x?token=[redacted]");
        assert_eq!(r("/x?tokens=1&a=%"), "/x?tokens=1&a=%");
        assert_eq!(r("/api/documents"), "/api/documents");
    }
}
