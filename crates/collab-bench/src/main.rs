//! `collab-bench`: measures the `collab` OT engine.
//!
//! * `trace`: replays real editing traces through the engine's
//!   `Operation::apply` and through a plain rope (the floor), and compares.
//! * `transform`: one-character ops transformed against a window of
//!   concurrent ops, as the server does for a late op.
//!
//! Each subcommand lives in its own module; this file only parses arguments.

mod stats;
mod trace;
mod transform;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "collab-bench",
    version,
    about = "Benchmarks for the collab OT engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay editing traces: engine `apply` vs a plain rope.
    Trace(trace::TraceArgs),
    /// Transform throughput of one-character ops against a window of concurrent ops.
    Transform(transform::TransformArgs),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Trace(args) => trace::run(&args),
        Command::Transform(args) => transform::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
