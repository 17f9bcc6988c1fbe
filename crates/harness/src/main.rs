//! `session-harness`: bgsession's fault-injection harness, origin server and benchmarks.

use std::path::PathBuf;
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
    /// The main job: a fault-injection run (kills, fail points, delegate panics) against
    /// the built-in origin, then the verdict of the verifier. Exit 0 pass, 1 violation.
    Crash(session_harness::crash::CrashArgs),
    /// Re-checks a run directory kept with `crash --dir`.
    Verify(session_harness::crash::DirArgs),
    /// Lists what a store holds: every session with its state, tasks by state, pending
    /// and dead-lettered events, failing deliveries, waits and the store's size. Works on
    /// a library root or a run directory, read-only, while its owner runs. Exit 0 listed,
    /// 1 `--check` found damage, 2 usage or setup (no store, or `--check` while the owner
    /// runs).
    Inspect(session_harness::crash::InspectArgs),
    /// The crash run's child process (started by `crash`).
    #[command(hide = true)]
    Worker(session_harness::crash::WorkerArgs),
    /// Benchmarks that print figures (and JSON with --json).
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Throwaway PostgreSQL clusters for the PostgreSQL backend and the crash harness.
    Postgres {
        #[command(subcommand)]
        which: PostgresCommand,
    },
    /// Runs the origin server on 127.0.0.1 in the foreground and prints its address.
    Origin {
        /// The port to listen on (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// The content seed: object bytes are a function of (seed, name, offset).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Debug, Subcommand)]
enum PostgresCommand {
    /// Starts the cluster of --dir (initdb first when the directory is missing or empty),
    /// prints its URL on stdout and exits, leaving the server running.
    Start {
        /// The cluster directory: data/, postgres.log and the unix socket go inside.
        #[arg(long)]
        dir: PathBuf,
        /// The port on 127.0.0.1 (by default a free one).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Stops the server of --dir (a clean shutdown); a server not running is no error.
    Stop {
        /// The cluster directory given to `start`.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Download throughput and memory of the engine against curl, from the origin.
    Download(session_harness::bench::download::DownloadArgs),
    /// Delivery throughput of waiting events to a transactional delegate.
    Events(session_harness::bench::events::EventsArgs),
    /// Many small downloads through `Sessions`, each delivered exactly once to a
    /// transactional delegate, against `curl --parallel` (and curl plus an fsync of
    /// every file).
    Many(session_harness::bench::many::ManyArgs),
    /// Durable INSERTs per second into a throwaway PostgreSQL cluster, per statement
    /// shape of the future PostgreSQL writer, against pgbench.
    PgClient(session_harness::bench::pg_client::PgClientArgs),
    /// Recovery time and memory for a large store.
    Recovery(session_harness::bench::recovery::RecoveryArgs),
    /// A million small tasks through 1,000 sessions on the store path alone, with a
    /// short retention: the store must not grow (exit 1 when it does).
    Soak(session_harness::bench::soak::SoakArgs),
    /// Durable units per second through the store's group-commit writer, against one
    /// commit per put with heed directly.
    Store(session_harness::bench::store::StoreArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<ExitCode> = match cli.command {
        Command::Crash(args) => session_harness::crash::crash(&args),
        Command::Verify(args) => session_harness::crash::verify_dir(&args),
        Command::Inspect(args) => session_harness::crash::inspect_dir(&args),
        Command::Worker(args) => session_harness::crash::worker::run(&args),
        Command::Origin { port, seed } => {
            let config = session_harness::origin::OriginConfig { seed, port };
            session_harness::origin::Origin::run_foreground(config)
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
        Command::Postgres { which } => postgres(which),
        Command::Bench { which } => match which {
            BenchCommand::Download(args) => {
                session_harness::bench::download::run(&args).map(|_| ExitCode::SUCCESS)
            }
            BenchCommand::Events(args) => {
                session_harness::bench::events::run(&args).map(|_| ExitCode::SUCCESS)
            }
            BenchCommand::Many(args) => {
                session_harness::bench::many::run(&args).map(|_| ExitCode::SUCCESS)
            }
            BenchCommand::PgClient(args) => {
                session_harness::bench::pg_client::run(&args).map(|_| ExitCode::SUCCESS)
            }
            BenchCommand::Recovery(args) => {
                session_harness::bench::recovery::run(&args).map(|_| ExitCode::SUCCESS)
            }
            BenchCommand::Soak(args) => session_harness::bench::soak::run(&args).map(|report| {
                if report.passed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }),
            BenchCommand::Store(args) => {
                session_harness::bench::store::run(&args).map(|_| ExitCode::SUCCESS)
            }
        },
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("session-harness: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn postgres(which: PostgresCommand) -> anyhow::Result<ExitCode> {
    use session_harness::postgres::{Cluster, StartOptions, StopOutcome, stop_dir};
    match which {
        PostgresCommand::Start { dir, port } => {
            let options = StartOptions {
                port,
                ..StartOptions::default()
            };
            let cluster = Cluster::start(&dir, &options)?;
            println!("{}", cluster.url());
            cluster.detach();
        }
        PostgresCommand::Stop { dir } => match stop_dir(&dir)? {
            StopOutcome::Stopped => {}
            StopOutcome::NotRunning => {
                eprintln!(
                    "session-harness: no server was running on {}",
                    dir.display()
                );
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}
