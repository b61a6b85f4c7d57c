//! The command line of the `collab` binary.

use clap::{Parser, Subcommand};

use crate::config::Config;

/// collab: a real-time collaborative text editing server.
#[derive(Debug, Parser)]
#[command(name = "collab", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Migrate the database, then serve HTTP (the default).
    Serve,
    /// Create the database if needed and run migrations; idempotent.
    InitDb,
    /// Add sample documents with some edit history; idempotent.
    Seed,
    /// Run only the snapshot worker against the database, until SIGINT or
    /// SIGTERM. Several may share a PostgreSQL database; with SQLite, run
    /// one (a file has a single writer anyway).
    Worker,
}

impl Cli {
    pub fn subcommand(&self) -> Command {
        self.command.unwrap_or(Command::Serve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_and_serve_is_the_default() {
        let cli = Cli::try_parse_from([
            "collab",
            "--database-url",
            "sqlite://x.db",
            "--bind",
            "0.0.0.0:9000",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.subcommand(), Command::Serve);
        assert_eq!(cli.config.database_url, "sqlite://x.db");
        assert_eq!(cli.config.bind.port(), 9000);
        let cli = Cli::try_parse_from(["collab", "seed", "--max-document-chars", "5"]).unwrap();
        assert_eq!(cli.subcommand(), Command::Seed);
        assert_eq!(cli.config.max_document_chars, 5);
        let cli = Cli::try_parse_from(["collab", "worker", "--snapshot-every-ops", "7"]).unwrap();
        assert_eq!(cli.subcommand(), Command::Worker);
        assert_eq!(cli.config.snapshot_config().every_ops, 7);
    }
}
