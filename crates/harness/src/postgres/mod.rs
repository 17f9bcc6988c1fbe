//! Throwaway PostgreSQL clusters for the PostgreSQL backend's tests, the crash harness and
//! the client benchmark.
//!
//! A [`Cluster`](crate::postgres::Cluster) is one `initdb`'d data directory with one server on a free 127.0.0.1
//! port, its unix socket inside the cluster directory, `fsync` on (figures measured on it
//! are durable commits, not page-cache writes), trust authentication for the superuser
//! `postgres` (it listens on loopback only and lives for one test or one harness run).
//!
//! - `binaries`: finding `initdb` and `pg_ctl` ([`Binaries`](crate::postgres::Binaries), [`Search`](crate::postgres::Search)).
//! - `user`: running them as an unprivileged user when this process is root ([`RunAs`](crate::postgres::RunAs)).
//! - `cluster`: initdb, start, readiness, stop ([`Cluster`](crate::postgres::Cluster), [`stop_dir`](crate::postgres::stop_dir)).
//! - `skip`: [`postgres_or_skip`](crate::postgres::postgres_or_skip) and [`binaries_or_skip`](crate::postgres::binaries_or_skip), the rule PostgreSQL tests
//!   start with.
//!
//! Layout of a cluster directory `D`: `D/data` (the data directory), `D/postgres.log`
//! (the server's log, appended across starts) and the socket `D/.s.PGSQL.<port>`.
//!
//! ```no_run
//! use session_harness::postgres::Cluster;
//!
//! let cluster = Cluster::start_temp()?;
//! println!("connect to {}", cluster.url());
//! // Dropping it stops the server (`pg_ctl stop -m immediate`) and removes the directory.
//! drop(cluster);
//! # Ok::<(), session_harness::postgres::Error>(())
//! ```

use std::path::PathBuf;

mod binaries;
mod cluster;
mod skip;
mod user;

pub use binaries::{Binaries, PG_BIN_ENV, PlaceOrigin, Search, SearchedPlace, VERSIONED_ROOT};
pub use cluster::{
    Cluster, DATA_DIR_NAME, DATABASE, LOG_FILE_NAME, PORT_ATTEMPTS_MAX, READY_WAIT_MS_MAX,
    START_WAIT_S, STOP_WAIT_S, SUPERUSER, StartOptions, StopOutcome, stop_dir,
};
pub use skip::{REQUIRE_ENV, binaries_or_skip, postgres_or_skip};
pub use user::{RunAs, UNPRIVILEGED_USERS};

/// The server a `--store` option names: `None` for `lmdb`; for `postgres`, a throwaway
/// cluster started here (returned, so that it lives as long as the caller keeps it) and
/// its URL; for a `postgres://` or `postgresql://` URL, that URL.
///
/// # Errors
/// Another value, or a cluster that does not start.
pub fn server_for(store: &str) -> anyhow::Result<Option<(Option<Cluster>, String)>> {
    match store {
        "lmdb" => Ok(None),
        "postgres" => {
            let cluster = Cluster::start_temp().map_err(|error| {
                anyhow::anyhow!(
                    "starting a throwaway PostgreSQL cluster (is PostgreSQL installed?): {error}"
                )
            })?;
            let url = cluster.url();
            Ok(Some((Some(cluster), url)))
        }
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Some((None, url.to_owned())))
        }
        other => anyhow::bail!("--store is lmdb, postgres or a postgres:// URL, not {other:?}"),
    }
}

/// The result of this module's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong finding, starting or stopping a cluster. Every variant that comes
/// from the server carries the tail of its log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither `BGSESSION_PG_BIN`, `PATH` nor an installed version holds `initdb` and
    /// `pg_ctl`.
    #[error("initdb and pg_ctl not found in {}", list_places(looked))]
    BinariesNotFound {
        /// Every place looked in, in order.
        looked: Vec<SearchedPlace>,
    },
    /// This process is root (PostgreSQL refuses to run as root) and no unprivileged
    /// account exists to run it as.
    #[error("running as root, and none of the users {tried:?} exists to run PostgreSQL as")]
    NoUnprivilegedUser {
        /// The accounts tried.
        tried: Vec<String>,
    },
    /// The user database could not be read.
    #[error("looking up the user {user}: {source}")]
    UserLookup {
        /// The account looked up.
        user: String,
        /// The lookup's error.
        #[source]
        source: std::io::Error,
    },
    /// The user PostgreSQL runs as cannot reach the cluster directory.
    #[error(
        "{user} cannot reach the cluster directory {dir}: {blocked_at} is not searchable \
         by it (use a directory under /tmp, or chmod o+x {blocked_at})"
    )]
    DirNotReachable {
        /// The cluster directory.
        dir: PathBuf,
        /// The first directory above it that is not searchable.
        blocked_at: PathBuf,
        /// Who PostgreSQL runs as.
        user: String,
    },
    /// The directory holds something other than a cluster; it is left untouched.
    #[error("{dir} is neither empty nor a cluster directory (no data/PG_VERSION); not using it")]
    DirNotCluster {
        /// The directory given.
        dir: PathBuf,
    },
    /// The directory's path cannot be passed to PostgreSQL.
    #[error("the cluster directory {dir} cannot be used: {reason}")]
    PathUnsupported {
        /// The directory given.
        dir: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A file system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A PostgreSQL program could not be run at all.
    #[error("running {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `initdb` failed.
    #[error("initdb of {data_dir} failed ({status}):\n{output}")]
    Initdb {
        /// The data directory.
        data_dir: PathBuf,
        /// Its exit status.
        status: String,
        /// Its output's tail.
        output: String,
    },
    /// A server already runs on this cluster directory.
    #[error("a server already runs on {dir} (port {})", port.map_or("unknown".to_string(), |port| port.to_string()))]
    AlreadyRunning {
        /// The cluster directory.
        dir: PathBuf,
        /// Its port, read from `postmaster.pid` when readable.
        port: Option<u16>,
    },
    /// The port asked for is taken by another process.
    #[error("port {port} on 127.0.0.1 is taken; server log:\n{log_tail}")]
    PortInUse {
        /// The port asked for.
        port: u16,
        /// The server log's tail.
        log_tail: String,
    },
    /// Every free port picked was taken by someone else before the server bound it.
    #[error("lost the race for a free port {attempts} times in a row; server log:\n{log_tail}")]
    PortRaceLost {
        /// How many ports were tried.
        attempts: u32,
        /// The last server log's tail.
        log_tail: String,
    },
    /// The server did not come up.
    #[error(
        "the server on {dir} (port {port}) did not start: {pg_ctl_output}; server log:\n{log_tail}"
    )]
    StartFailed {
        /// The cluster directory.
        dir: PathBuf,
        /// The port it was to listen on.
        port: u16,
        /// What `pg_ctl` said.
        pg_ctl_output: String,
        /// The server log's tail.
        log_tail: String,
    },
    /// The server said it was ready but accepted no session in time (it has been
    /// stopped).
    #[error(
        "the server on port {port} accepted no session within {waited_ms} ms (last error: \
         {last_error}); server log:\n{log_tail}"
    )]
    NotReady {
        /// The server's port.
        port: u16,
        /// How long it was waited for.
        waited_ms: u64,
        /// The last connection error.
        last_error: String,
        /// The server log's tail.
        log_tail: String,
    },
    /// `pg_ctl stop` failed.
    #[error("stopping the server on {dir} failed ({status}): {output}")]
    StopFailed {
        /// The cluster directory.
        dir: PathBuf,
        /// `pg_ctl`'s exit status.
        status: String,
        /// What `pg_ctl` said.
        output: String,
    },
}

impl Error {
    fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

fn list_places(looked: &[SearchedPlace]) -> String {
    if looked.is_empty() {
        return "no place (empty search)".to_string();
    }
    looked
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
