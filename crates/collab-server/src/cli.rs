//! The command line of the `collab` binary.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use collab_ot::protocol::Role;

use crate::auth::{mint_with, now_secs, Claims, Pattern};
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

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
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
    /// Print a token signed with COLLAB_AUTH_SECRET, for operators and
    /// scripts (an application's backend mints its own the same way).
    Token(TokenArgs),
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct TokenArgs {
    /// The user the token is for (its `sub`).
    #[arg(long)]
    pub sub: String,
    /// A document pattern and a role: `notes=write`, `team-*=read`,
    /// `*=admin`. Repeat for more.
    #[arg(long = "doc", value_name = "PATTERN=ROLE", value_parser = parse_grant)]
    pub docs: Vec<(String, Role)>,
    /// How long the token lasts: `90s`, `15m`, `12h`, `7d`.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The display name shown with the user's cursor.
    #[arg(long)]
    pub name: Option<String>,
    /// The token's id, to revoke it alone later (random when unset).
    #[arg(long)]
    pub jti: Option<String>,
}

fn parse_grant(s: &str) -> Result<(String, Role), String> {
    let (pattern, role) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("\"{s}\" is not PATTERN=ROLE"))?;
    Pattern::parse(pattern)?;
    let role =
        Role::parse(role).ok_or_else(|| format!("\"{role}\" is not read, write or admin"))?;
    Ok((pattern.to_owned(), role))
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(s).map_err(|e| format!("\"{s}\": {e}"))?;
    if ttl.as_secs() == 0 {
        return Err("the ttl must be at least one second".to_owned());
    }
    Ok(ttl)
}

impl TokenArgs {
    /// The signed token.
    pub fn mint(&self, config: &Config) -> Result<String, String> {
        let secret = config.secret().ok_or(
            "COLLAB_AUTH_SECRET is not set: tokens are signed with it (set it in the environment or .env)",
        )?;
        let now = now_secs();
        let claims = Claims {
            sub: self.sub.clone(),
            exp: now.saturating_add(self.ttl.as_secs()),
            iat: Some(now),
            nbf: None,
            jti: Some(
                self.jti
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
            ),
            name: self.name.clone(),
            docs: Some(
                self.docs
                    .iter()
                    .map(|(p, r)| (p.clone(), r.as_str().to_owned()))
                    .collect(),
            ),
        };
        mint_with(secret, &claims)
    }
}

impl Cli {
    pub fn subcommand(&self) -> Command {
        self.command.clone().unwrap_or(Command::Serve)
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

    #[test]
    fn token_minting() {
        let cli = Cli::try_parse_from([
            "collab",
            "token",
            "--sub",
            "ann",
            "--doc",
            "notes=write",
            "--doc",
            "team-*=read",
            "--ttl",
            "2h",
            "--name",
            "Ann",
        ])
        .unwrap();
        let Command::Token(args) = cli.subcommand() else {
            panic!("not the token command")
        };
        assert_eq!(args.ttl, Duration::from_secs(7200));
        assert_eq!(args.docs[1], ("team-*".to_owned(), Role::Read));
        let mut config = cli.config.clone();
        assert!(args
            .mint(&config)
            .unwrap_err()
            .contains("COLLAB_AUTH_SECRET"));
        config.auth_secret = Some(crate::auth::Secret::new("k".repeat(32)));
        let token = args.mint(&config).unwrap();
        let verifier = config.verifier().unwrap().unwrap();
        let t = verifier.verify(&token).unwrap();
        assert_eq!((t.sub.as_str(), t.name.as_deref()), ("ann", Some("Ann")));
        assert_eq!(t.grants.role_on("team-x"), Some(Role::Read));
        assert!(t.exp >= now_secs() + 7199);
        for bad in [
            &["--doc", "notes"][..],
            &["--doc", "a b=read"],
            &["--doc", "x=owner"],
            &["--ttl", "0s"],
            &["--ttl", "soon"],
        ] {
            let mut argv = vec!["collab", "token", "--sub", "s"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}
