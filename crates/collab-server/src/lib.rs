//! `collab-server`: the HTTP API, persistence and document rooms behind the
//! `collab` binary.
//!
//! * [`config`], [`telemetry`], [`cli`]: how the process is set up.
//! * [`app`]: shared state, router and [`run`], the server loop.
//! * `listener`: the accept loop under [`run`]: header timeout, connection
//!   caps, protocol error bodies for requests hyper cannot parse.
//! * `origin`: which web origins may use the server (the `Origin` check, CORS).
//! * `routes`: the REST API and the WebSocket endpoint of the protocol (docs/protocol.md),
//!   and the browser editor's pages.
//! * [`rooms`]: one task per open document, owning its `collab_ot::Document`.
//! * [`store`]: SQLite / PostgreSQL behind the [`store::DocumentStore`] trait.
//! * [`cluster`]: Redis fan-out between instances sharing one PostgreSQL.
//! * [`snapshot`]: the snapshot worker, in-process or as `collab worker`.
//! * [`error`], [`extract`]: protocol error bodies for every failure.
//! * [`rate`]: the token buckets behind every per-connection budget.

pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod error;
pub mod extract;
mod listener;
mod origin;
pub mod rate;
pub mod rooms;
mod routes;
pub mod seed;
pub mod snapshot;
pub mod store;
pub mod telemetry;

pub use app::{run, AppState};
pub use config::Config;
