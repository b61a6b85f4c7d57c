//! The `collab` binary: parse arguments, configure, call the library.

use anyhow::Context;
use clap::Parser;
use collab_server::cli::{Cli, Command};
use collab_server::snapshot::SnapshotWorker;
use collab_server::{seed, store, telemetry, AppState};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before parsing, so `.env` values act as environment variables (which
    // flags override); a missing file is fine, a broken one is not.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            return Err(e).context("could not read .env");
        }
    }
    let cli = Cli::parse();
    let config = cli.config.clone();
    telemetry::init(config.log_format, &config.log_filter)?;
    // `serve` and `seed` validate in `AppState::connect`; the rest here.
    if !matches!(cli.subcommand(), Command::Serve | Command::Seed) {
        config.validate().map_err(anyhow::Error::msg)?;
    }

    match cli.subcommand() {
        Command::Token(args) => {
            // Only the token on stdout, so `$(collab token …)` works.
            println!("{}", args.mint(&config).map_err(anyhow::Error::msg)?);
        }
        Command::Serve => {
            config.check_open_bind().map_err(anyhow::Error::msg)?;
            // Every WebSocket is a file descriptor: the usual soft limit of
            // 1024 would cap connections far below what memory allows.
            if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
                tracing::warn!(error = %e, "could not raise the open-files limit");
            }
            let state = AppState::connect(&config)
                .await
                .context("could not connect to the database (or to Redis)")?;
            let listener = TcpListener::bind(config.bind)
                .await
                .with_context(|| format!("could not listen on {}", config.bind))?;
            collab_server::run(listener, state, shutdown_signal()).await?;
        }
        Command::InitDb => {
            let store = store::open_store(&config.database_url)
                .await
                .context("could not open the database")?;
            store.migrate().await.context("migration failed")?;
            store.close().await;
            tracing::info!("database ready");
        }
        Command::Seed => {
            let state = AppState::connect(&config)
                .await
                .context("could not connect to the database (or to Redis)")?;
            let report = seed::seed(&state).await;
            state.rooms.shutdown().await;
            let report = report?;
            tracing::info!(created = ?report.created, skipped = ?report.skipped, "seeded");
            state.store.close().await;
        }
        Command::Worker => {
            let store = store::open_store(&config.database_url)
                .await
                .context("could not open the database")?;
            store.migrate().await.context("migration failed")?;
            let worker = SnapshotWorker::standalone(store.clone(), config.snapshot_config());
            worker.run(shutdown_signal()).await;
            store.close().await;
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
