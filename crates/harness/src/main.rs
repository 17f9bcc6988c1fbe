//! `session-harness`: bgsession's fault-injection harness, origin server and benchmarks.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// bgsession's crash harness, origin server and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "session-harness", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmarks that print figures (and JSON with --json).
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<ExitCode> = match cli.command {
        Command::Bench { which } => match which {},
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("session-harness: {error:#}");
            ExitCode::from(2)
        }
    }
}
