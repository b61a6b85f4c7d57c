//! Configuration: environment variables (optionally from a `.env` file, which
//! `main` loads first), overridden by command-line flags.
//!
//! Every setting is one clap argument with an `env` fallback, so `--help`
//! documents both spellings and the precedence is clap's: flag, then
//! environment, then default. `.env.example` lists the same variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use collab_ot::DocumentLimits;

use crate::auth::{Secret, Verifier};
use crate::rooms::RoomConfig;
use crate::snapshot::SnapshotConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Database URL: `sqlite://PATH` (file created on first run) or `postgres://…`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://./data/collab.db",
        global = true
    )]
    pub database_url: String,

    /// Address to listen on.
    #[arg(
        long,
        env = "COLLAB_BIND",
        default_value = "127.0.0.1:8000",
        global = true
    )]
    pub bind: SocketAddr,

    /// Log filter, in `RUST_LOG` syntax (e.g. `info,collab_server=debug`).
    #[arg(long = "log", env = "RUST_LOG", default_value = "info", global = true)]
    pub log_filter: String,

    /// Log output format.
    #[arg(
        long,
        env = "COLLAB_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    pub log_format: LogFormat,

    /// Largest WebSocket message, and largest HTTP request body, in bytes.
    #[arg(long, env = "COLLAB_MAX_MESSAGE_BYTES", default_value_t = 1 << 20, global = true)]
    pub max_message_bytes: usize,

    /// Largest document, in characters (Unicode scalar values).
    #[arg(
        long,
        env = "COLLAB_MAX_DOCUMENT_CHARS",
        default_value_t = DocumentLimits::default().max_chars,
        global = true
    )]
    pub max_document_chars: usize,

    /// Operations one WebSocket connection may send per second.
    #[arg(
        long,
        env = "COLLAB_MAX_OPS_PER_SECOND",
        default_value_t = 100,
        global = true
    )]
    pub max_ops_per_second: u32,

    /// Presence updates per second one WebSocket connection passes on; more
    /// are coalesced (only the latest selection is sent, a moment later).
    #[arg(
        long,
        env = "COLLAB_MAX_PRESENCE_PER_SECOND",
        default_value_t = 20,
        global = true
    )]
    pub max_presence_per_second: u32,

    /// Most components one operation may have (after normalizing).
    #[arg(
        long,
        env = "COLLAB_MAX_OP_COMPONENTS",
        default_value_t = 10_000,
        global = true
    )]
    pub max_op_components: usize,

    /// Most transform work one edit may cost to catch up with the document
    /// (components walked); each WebSocket connection may spend this much
    /// per second.
    #[arg(
        long,
        env = "COLLAB_MAX_TRANSFORM_STEPS",
        default_value_t = 2_000_000,
        global = true
    )]
    pub max_transform_steps: u64,

    /// Bytes of frames queued for one WebSocket connection before it counts
    /// as too slow and is disconnected (it resumes).
    #[arg(
        long,
        env = "COLLAB_SESSION_QUEUE_BYTES",
        default_value_t = 4 << 20,
        global = true
    )]
    pub session_queue_bytes: usize,

    /// Most open connections (HTTP and WebSocket); more are refused with 503.
    /// 0: no limit.
    #[arg(
        long,
        env = "COLLAB_MAX_CONNECTIONS",
        default_value_t = 20_000,
        global = true
    )]
    pub max_connections: usize,

    /// Most open connections from one IP address; more are refused with 429.
    /// 0: no limit (behind a proxy, every client has the proxy's address).
    #[arg(
        long,
        env = "COLLAB_MAX_CONNECTIONS_PER_IP",
        default_value_t = 1_000,
        global = true
    )]
    pub max_connections_per_ip: usize,

    /// Seconds a client has to send a request's headers (also the longest
    /// an idle keep-alive connection stays open).
    #[arg(
        long,
        env = "COLLAB_HEADER_TIMEOUT_SECS",
        default_value_t = 10,
        global = true
    )]
    pub header_timeout_secs: u64,

    /// A WebSocket silent for a quarter of this many seconds is pinged; one silent
    /// for this long (no pong either) is closed.
    #[arg(long, env = "COLLAB_WS_IDLE_SECS", default_value_t = 60, global = true)]
    pub ws_idle_secs: u64,

    /// Web origins (`scheme://host[:port]`, comma-separated) besides the
    /// server's own whose pages may call the API and open WebSockets.
    #[arg(
        long,
        env = "COLLAB_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub allowed_origins: Vec<String>,

    /// Token mode: the HS256 key (at least 32 bytes). Unset, with no public
    /// key either: open mode (anyone may do anything).
    #[arg(
        long,
        env = "COLLAB_AUTH_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub auth_secret: Option<Secret>,

    /// Token mode: a PEM file with the public key (Ed25519, P-256 or RSA)
    /// that checks tokens signed with EdDSA, ES256 or RS256.
    #[arg(long, env = "COLLAB_AUTH_PUBLIC_KEY", global = true)]
    pub auth_public_key: Option<PathBuf>,

    /// Let an open server (no key) listen on a non-loopback address.
    #[arg(
        long,
        env = "COLLAB_ALLOW_ANONYMOUS",
        default_value_t = false,
        global = true
    )]
    pub allow_anonymous: bool,

    /// Seconds of clock difference tolerated when checking `exp` and `nbf`;
    /// a connection closes this long after its token's `exp`.
    #[arg(
        long,
        env = "COLLAB_AUTH_LEEWAY_SECS",
        default_value_t = 30,
        global = true
    )]
    pub auth_leeway_secs: u64,

    /// How often each instance reads new revocations from the database, in
    /// milliseconds (Redis usually brings them at once).
    #[arg(
        long,
        env = "COLLAB_REVOCATION_POLL_MS",
        default_value_t = 500,
        global = true
    )]
    pub revocation_poll_ms: u64,

    /// Committed ops each open document keeps in memory, for transforming
    /// late edits and resuming clients.
    #[arg(
        long,
        env = "COLLAB_HISTORY_WINDOW",
        default_value_t = DocumentLimits::default().history,
        global = true
    )]
    pub history_window: usize,

    /// Seconds without activity after which an open document is unloaded.
    #[arg(
        long,
        env = "COLLAB_ROOM_IDLE_SECS",
        default_value_t = 300,
        global = true
    )]
    pub room_idle_secs: u64,

    /// Save a snapshot after this many ops since the last one.
    #[arg(
        long,
        env = "COLLAB_SNAPSHOT_EVERY_OPS",
        default_value_t = 500,
        global = true
    )]
    pub snapshot_every_ops: u64,

    /// Save a snapshot of an active document at least this often, in seconds.
    #[arg(
        long,
        env = "COLLAB_SNAPSHOT_INTERVAL_SECS",
        default_value_t = 60,
        global = true
    )]
    pub snapshot_interval_secs: u64,

    /// Redis for running several instances together (needs PostgreSQL);
    /// unset: a single instance.
    #[arg(long, env = "REDIS_URL", global = true)]
    pub redis_url: Option<String>,

    /// Namespace of this cluster's Redis channels.
    #[arg(
        long,
        env = "COLLAB_REDIS_PREFIX",
        default_value = "collab",
        global = true
    )]
    pub redis_prefix: String,

    /// This instance's name in logs and presence (random when unset).
    #[arg(long, env = "COLLAB_INSTANCE_ID", global = true)]
    pub instance_id: Option<String>,

    /// Peers of an instance that stopped sending heartbeats disappear after
    /// this many seconds.
    #[arg(
        long,
        env = "COLLAB_PRESENCE_TTL_SECS",
        default_value_t = 15,
        global = true
    )]
    pub presence_ttl_secs: u64,
}

impl Config {
    /// Refuses settings that cannot work together.
    pub fn validate(&self) -> Result<(), String> {
        if self.redis_url.is_some() && !self.database_url.starts_with("postgres") {
            return Err(
                "REDIS_URL (multi-instance) needs a PostgreSQL DATABASE_URL; \
                 SQLite is single-instance: unset REDIS_URL or use postgres://"
                    .to_owned(),
            );
        }
        self.verifier()?;
        Ok(())
    }

    /// The defaults, as if no variable or flag were set; for tests and tools.
    /// Read from the command line's own definitions (with the environment
    /// ignored), so each default is written once, next to its flag.
    pub fn with_database(database_url: impl Into<String>) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let command = crate::cli::Cli::command().mut_args(|arg| arg.env(None::<&'static str>));
        let matches = command
            .try_get_matches_from(["collab"])
            .expect("the defaults parse");
        let mut config = Config::from_arg_matches(&matches).expect("the defaults are valid");
        config.database_url = database_url.into();
        config
    }

    /// The token checker; `None` in open mode.
    pub fn verifier(&self) -> Result<Option<Verifier>, String> {
        let pem = match &self.auth_public_key {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                format!("cannot read COLLAB_AUTH_PUBLIC_KEY {}: {e}", path.display())
            })?),
        };
        Verifier::new(self.secret(), pem.as_deref(), self.auth_leeway_secs)
    }

    /// The HS256 secret; an empty value counts as unset.
    pub fn secret(&self) -> Option<&Secret> {
        self.auth_secret.as_ref().filter(|s| !s.expose().is_empty())
    }

    /// Whether no key is configured: anyone may do anything.
    pub fn is_open(&self) -> bool {
        self.secret().is_none() && self.auth_public_key.is_none()
    }

    /// An open server only on a loopback address, unless explicitly allowed:
    /// an unprotected server must not end up on a network by accident.
    pub fn check_open_bind(&self) -> Result<(), String> {
        if self.is_open() && !self.bind.ip().is_loopback() && !self.allow_anonymous {
            return Err(format!(
                "refusing to serve on {} without access control: set COLLAB_AUTH_SECRET \
                 (or COLLAB_AUTH_PUBLIC_KEY) for token mode, bind to 127.0.0.1, or set \
                 COLLAB_ALLOW_ANONYMOUS=true to let anyone who can reach it read, change \
                 and delete every document",
                self.bind
            ));
        }
        Ok(())
    }

    pub fn room_config(&self) -> RoomConfig {
        RoomConfig {
            limits: DocumentLimits {
                max_chars: self.max_document_chars,
                history: self.history_window,
                max_op_components: self.max_op_components.max(1),
                max_transform_steps: self.max_transform_steps.max(1),
            },
            idle: Duration::from_secs(self.room_idle_secs.max(1)),
            session_queue_bytes: self.session_queue_bytes.max(1),
            ..RoomConfig::default()
        }
    }

    /// When the snapshot worker (in-process or `collab worker`) snapshots.
    pub fn snapshot_config(&self) -> SnapshotConfig {
        SnapshotConfig {
            every_ops: self.snapshot_every_ops.max(1),
            interval: Duration::from_secs(self.snapshot_interval_secs.max(1)),
            keep_history: self.history_window as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_flags() {
        let config = Config::with_database("sqlite://x.db");
        assert_eq!(config.database_url, "sqlite://x.db");
        assert_eq!(
            config.max_document_chars,
            DocumentLimits::default().max_chars
        );
        assert_eq!(config.history_window, DocumentLimits::default().history);
        assert_eq!(config.bind, SocketAddr::from(([127, 0, 0, 1], 8000)));
        assert!(config.is_open() && !config.allow_anonymous);
        assert_eq!(config.auth_leeway_secs, 30);
    }
}
