//! `collab-bench`: measures the `collab` OT engine.
//!
//! * `trace`: replays real editing traces through the engine's
//!   `Operation::apply` and through a plain rope (the floor), and compares.
//!   With the `crdt-compare` feature (off by default; needs rustc 1.90, above
//!   the workspace's 1.85) it also replays them through three CRDT libraries,
//!   diamond-types, yrs and automerge:
//!   `cargo run --release -p collab-bench --features crdt-compare -- trace`.
//! * `transform`: one-character ops transformed against a window of
//!   concurrent ops, as the server does for a late op.
//! * `load`: clients typing into a running server; throughput and latency.
//! * `connections`: the server's memory per idle WebSocket connection.
//! * `abuse`: hostile clients against a running server, and what a
//!   well-behaved client experiences meanwhile.
//!
//! Each subcommand lives in its own module; this file only parses arguments.

mod abuse;
mod connections;
mod load;
mod procstat;
mod stats;
mod trace;
mod transform;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "collab-bench",
    version,
    about = "Benchmarks for collab: the OT engine, and a running server under load"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay editing traces: engine `apply` vs a plain rope (and three CRDT
    /// libraries with --features crdt-compare).
    Trace(trace::TraceArgs),
    /// Transform throughput of one-character ops against a window of concurrent ops.
    Transform(transform::TransformArgs),
    /// Drive a running server with N clients over M documents at R edits/s each.
    Load(load::LoadArgs),
    /// Open K idle WebSocket connections and report the server's RSS per connection.
    Connections(connections::ConnectionsArgs),
    /// Attack a running server (loopback only) and measure what a victim
    /// typing at 10 edits/s, /health and the server's memory go through.
    Abuse(abuse::AbuseArgs),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Trace(args) => trace::run(&args),
        Command::Transform(args) => transform::run(&args),
        Command::Load(args) => load::run(&args),
        Command::Connections(args) => connections::run(&args),
        Command::Abuse(args) => abuse::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
