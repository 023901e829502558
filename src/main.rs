//! `sluice`: the real-time streaming server for AI chat agents.
//!
//! With no subcommand it serves; `sluice token` mints a JWT for a user;
//! `sluice healthcheck` asks a running server for `/health`;
//! `sluice extract-text` is the indexer's sandbox for parsing a PDF.
//! Everything else lives in the library crates; this binary parses the
//! command line, loads the configuration, starts telemetry and runs.

mod config;
mod extract;
mod healthcheck;
mod serve;
mod telemetry;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command line.
#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Real-time streaming server for AI chat agents"
)]
#[command(after_help = config::help_table())]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Print an HS256 token for a user, signed with SLUICE_JWT_SECRET.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        sub: String,
        /// How long the token is valid (e.g. 30m, 24h, 7d).
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// Exit 0 if the server on SLUICE_ADDR answers /health with 200 (for a
    /// container's HEALTHCHECK; the image needs no curl).
    Healthcheck,
    /// Internal: reads a document on stdin and writes its text on stdout,
    /// within memory and CPU limits (the indexer runs it per PDF).
    #[command(hide = true)]
    ExtractText {
        /// The document's type.
        content_type: String,
    },
}

/// A configuration error exits with this status (as clap does for a bad
/// command line), after one line on stderr.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::ExtractText { content_type }) = &cli.command {
        return extract::run(content_type);
    }
    let config = match config::Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sluice: {e}");
            // A container runtime reserves a HEALTHCHECK's status 2.
            if matches!(cli.command, Some(Command::Healthcheck)) {
                return ExitCode::FAILURE;
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let log_json = config.log_json;
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => telemetry::init(&config).and_then(|()| serve::run(config)),
        Command::Token { sub, ttl } => token::print(&config, &sub, &ttl),
        Command::Healthcheck => healthcheck::run(&config),
        Command::ExtractText { .. } => unreachable!("handled before the configuration"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line; never a backtrace. A log
            // pipeline reading JSON lines gets one too.
            if log_json {
                let line = serde_json::json!({"level": "ERROR", "target": "sluice", "message": format!("{e:#}")});
                eprintln!("{line}");
            } else {
                eprintln!("sluice: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
