//! Logging setup: `tracing` events to stdout, pretty for people or JSON for
//! log collectors, filtered by `RUST_LOG` syntax.
//!
//! Whatever the filter asks for, the WebSocket library never logs frame
//! contents (its TRACE level does): frames carry documents and `auth`
//! tokens, and a token must never reach a log.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error(transparent)]
    Init(#[from] TryInitError),
}

/// Install the global subscriber; call once, early in `main`.
pub fn init(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(filter).map_err(|source| TelemetryError::Filter {
        filter: filter.to_owned(),
        source,
    })?;
    let never = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("tungstenite", LevelFilter::DEBUG)
        .with_target("tokio_tungstenite", LevelFilter::DEBUG);
    let registry = tracing_subscriber::registry().with(filter).with(never);
    match format {
        LogFormat::Pretty => registry.with(fmt::layer()).try_init()?,
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init()?,
    }
    Ok(())
}
