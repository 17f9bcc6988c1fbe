//! One cluster: `initdb` when the directory is new, `pg_ctl start` on a free loopback
//! port, a real session as the readiness check, `pg_ctl stop`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{Binaries, Error, Result, RunAs};

/// The data directory's name inside a cluster directory.
pub const DATA_DIR_NAME: &str = "data";
/// The server log's name inside a cluster directory (appended across starts).
pub const LOG_FILE_NAME: &str = "postgres.log";
/// The superuser `initdb` creates, the same whatever OS user runs the server.
pub const SUPERUSER: &str = "postgres";
/// The database every cluster has.
pub const DATABASE: &str = "postgres";
/// How long `pg_ctl start` waits for the server to report ready, by default.
pub const START_WAIT_S: u64 = 60;
/// How long a session is tried for after `pg_ctl` reported ready, by default.
pub const READY_WAIT_MS_MAX: u64 = 30_000;
/// How long `pg_ctl stop` waits for the server to exit.
pub const STOP_WAIT_S: u64 = 60;
/// How many free ports a start tries when each is taken before the server binds it.
pub const PORT_ATTEMPTS_MAX: u32 = 5;
/// The pause between two readiness attempts.
const READY_POLL_MS: u64 = 50;
/// The bound of one readiness connection attempt.
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Lines of the server log (or of a program's output) an error carries.
const TAIL_LINES: usize = 30;
/// The most of the server log read for an error: the lines that matter are its last.
const LOG_TAIL_BYTES_MAX: u64 = 64 * 1024;
/// `sizeof(sockaddr_un.sun_path)` less its NUL: the longest socket path PostgreSQL takes.
const SOCKET_PATH_BYTES_MAX: usize = 107;
/// The socket's name under its directory at the widest port, with its slash.
const SOCKET_NAME_BYTES_MAX: usize = "/.s.PGSQL.65535".len();
// The message of `check_path_supported` names the longest directory path.
const _: () = assert!(SOCKET_PATH_BYTES_MAX - SOCKET_NAME_BYTES_MAX == 92);
/// The prefix of [`Cluster::start_temp`]'s directories.
const TEMP_PREFIX: &str = "bgsession-pg-";
/// What the server log says when its TCP port is taken (messages are in English: every
/// program runs with `LC_ALL=C` and initdb sets `lc_messages` to C).
const PORT_TAKEN_LOG_LINE: &str = "could not create any TCP/IP sockets";

/// How [`Cluster::start`] starts a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOptions {
    /// The port to listen on; `None` picks a free one (and picks again, up to
    /// [`PORT_ATTEMPTS_MAX`] times, when another process takes it first).
    pub port: Option<u16>,
    /// How long `pg_ctl start` may wait for the server to report ready.
    pub start_wait_s: u64,
    /// How long a first session may take after that.
    pub ready_wait_ms_max: u64,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            port: None,
            start_wait_s: START_WAIT_S,
            ready_wait_ms_max: READY_WAIT_MS_MAX,
        }
    }
}

/// What [`stop_dir`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// A server was running and has stopped.
    Stopped,
    /// No server was running.
    NotRunning,
}

/// A running PostgreSQL server on its own cluster directory.
///
/// Dropping it stops the server with `pg_ctl stop -m immediate` (a test that panics
/// leaves no server behind) and, for [`Cluster::start_temp`], removes the directory.
/// A process killed with SIGKILL cannot do that: its server keeps running (pg_ctl
/// detaches it into its own session) until stopped by hand.
#[derive(Debug)]
pub struct Cluster {
    server: Server,
    port: u16,
    /// Removed after the server stopped (fields drop after `Drop::drop` ran).
    temp: Option<TempDir>,
    /// False once stopped or detached: nothing left for `Drop` to stop.
    running: bool,
}

impl Cluster {
    /// Starts a cluster in a new temporary directory, for a test.
    ///
    /// # Errors
    /// No binaries, no unprivileged user to run as, or a server that does not start;
    /// see [`Error`].
    pub fn start_temp() -> Result<Cluster> {
        Cluster::start_temp_with(&StartOptions::default())
    }

    /// [`Cluster::start_temp`] with options.
    ///
    /// # Errors
    /// As [`Cluster::start_temp`].
    pub fn start_temp_with(options: &StartOptions) -> Result<Cluster> {
        let binaries = Binaries::find()?;
        let temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir()
            .map_err(|source| {
                Error::io(
                    "creating a temporary directory in",
                    &std::env::temp_dir(),
                    source,
                )
            })?;
        let dir = temp.path().to_path_buf();
        Cluster::launch(binaries, &dir, options, Some(temp))
    }

    /// Starts the cluster of `dir`, running `initdb` first when `dir` is missing or empty.
    /// The directory is kept when the cluster stops; dropping the `Cluster` still stops
    /// the server unless [`Cluster::detach`] was called.
    ///
    /// # Errors
    /// [`Error::DirNotCluster`] for a directory holding anything else,
    /// [`Error::AlreadyRunning`], and the errors of [`Cluster::start_temp`].
    pub fn start(dir: &Path, options: &StartOptions) -> Result<Cluster> {
        let binaries = Binaries::find()?;
        Cluster::launch(binaries, dir, options, None)
    }

    fn launch(
        binaries: Binaries,
        dir: &Path,
        options: &StartOptions,
        temp: Option<TempDir>,
    ) -> Result<Cluster> {
        let absolute =
            std::path::absolute(dir).map_err(|source| Error::io("resolving", dir, source))?;
        if !absolute.exists() {
            // Refuse before creating anything, rather than leave a directory behind.
            RunAs::detect()?.check_traversable(&absolute)?;
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::io("creating", dir, source))?;
        let dir =
            std::fs::canonicalize(dir).map_err(|source| Error::io("resolving", dir, source))?;
        check_path_supported(&dir)?;
        let existing = is_cluster_dir(&dir)?;
        let run_as = if existing {
            RunAs::owner_of(&dir.join(DATA_DIR_NAME))?
        } else {
            RunAs::detect()?
        };
        run_as.take_ownership(&dir)?;
        run_as.check_traversable(&dir)?;
        let server = Server {
            binaries,
            run_as,
            dir,
        };
        if !existing {
            server.initdb()?;
        } else if server.is_running()? {
            return Err(Error::AlreadyRunning {
                port: server.running_port(),
                dir: server.dir,
            });
        }
        let port = server.start_on_some_port(options)?;
        let cluster = Cluster {
            server,
            port,
            temp,
            running: true,
        };
        if let Err(last_error) = wait_accepting(&cluster.url(), options.ready_wait_ms_max) {
            // Dropping `cluster` stops the server, so a failed start leaves none behind.
            return Err(Error::NotReady {
                port,
                waited_ms: options.ready_wait_ms_max,
                last_error,
                log_tail: cluster.server.log_tail(0),
            });
        }
        Ok(cluster)
    }

    /// The connection URL of the superuser: `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster directory (data directory, log and socket inside).
    pub fn dir(&self) -> &Path {
        &self.server.dir
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.server.data_dir()
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.server.log_path()
    }

    /// The binaries the cluster runs.
    pub fn binaries(&self) -> &Binaries {
        &self.server.binaries
    }

    /// Stops the server and waits until it exited, then removes a temporary directory.
    /// A kept directory gets a clean shutdown (`-m fast`: its next start needs no
    /// recovery); a temporary one `-m immediate`, as its files are deleted next.
    ///
    /// # Errors
    /// [`Error::StopFailed`] (the server is then stopped again, immediately, on drop),
    /// or [`Error::Io`] when the temporary directory cannot be removed.
    pub fn stop(mut self) -> Result<()> {
        let mode = if self.temp.is_some() {
            StopMode::Immediate
        } else {
            StopMode::Fast
        };
        self.server.stop(mode)?;
        self.running = false;
        if let Some(temp) = self.temp.take() {
            let path = temp.path().to_path_buf();
            temp.close()
                .map_err(|source| Error::io("removing", &path, source))?;
        }
        Ok(())
    }

    /// Leaves the server running and its directory in place (also a temporary one):
    /// for the CLI, whose process exits while the server goes on.
    pub fn detach(mut self) {
        self.running = false;
        if let Some(temp) = self.temp.take() {
            let _kept: PathBuf = temp.keep();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A server stopped under the cluster (`stop_dir`, by hand) is nothing to warn about.
        if self.running
            && self.server.is_running().unwrap_or(true)
            && let Err(error) = self.server.stop(StopMode::Immediate)
        {
            tracing::warn!(%error, dir = %self.server.dir.display(), "stopping a PostgreSQL cluster on drop");
        }
    }
}

/// Stops the server of the cluster directory `dir` (`pg_ctl stop -m fast`), for the CLI.
///
/// # Errors
/// No binaries, [`Error::DirNotCluster`] when `dir` holds no cluster, or
/// [`Error::StopFailed`].
pub fn stop_dir(dir: &Path) -> Result<StopOutcome> {
    let binaries = Binaries::find()?;
    let dir = std::fs::canonicalize(dir).map_err(|source| Error::io("resolving", dir, source))?;
    if !is_cluster_dir(&dir)? {
        return Err(Error::DirNotCluster { dir });
    }
    let server = Server {
        binaries,
        run_as: RunAs::owner_of(&dir.join(DATA_DIR_NAME))?,
        dir,
    };
    if !server.is_running()? {
        return Ok(StopOutcome::NotRunning);
    }
    server.stop(StopMode::Fast)?;
    Ok(StopOutcome::Stopped)
}

/// `pg_ctl stop`'s modes that this module uses.
#[derive(Debug, Clone, Copy)]
enum StopMode {
    /// Disconnect sessions, checkpoint, exit.
    Fast,
    /// Exit now; the next start runs crash recovery.
    Immediate,
}

/// Why one start attempt failed.
enum StartFailure {
    /// Another process holds the TCP port.
    PortTaken { log_tail: String },
    /// Anything else.
    Other(Error),
}

/// The programs of one cluster directory and who runs them.
#[derive(Debug)]
struct Server {
    binaries: Binaries,
    run_as: RunAs,
    dir: PathBuf,
}

impl Server {
    fn data_dir(&self) -> PathBuf {
        self.dir.join(DATA_DIR_NAME)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE_NAME)
    }

    /// A command for one of the PostgreSQL programs, as the cluster's user, in the
    /// cluster directory (the user may not be able to enter this process's directory).
    fn command(&self, program: &Path) -> Command {
        let mut command = self.run_as.command(program);
        command
            .current_dir(&self.dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, mut command: Command, program: &Path) -> Result<Output> {
        command.output().map_err(|source| Error::Spawn {
            program: program.to_path_buf(),
            source,
        })
    }

    fn initdb(&self) -> Result<()> {
        let initdb = self.binaries.initdb();
        let mut command = self.command(&initdb);
        // --no-sync: the cluster is recreated rather than recovered after a machine
        // crash; the server itself runs with fsync on.
        command.arg("-D").arg(self.data_dir()).args([
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        let output = self.run(command, &initdb)?;
        if !output.status.success() {
            return Err(Error::Initdb {
                data_dir: self.data_dir(),
                status: output.status.to_string(),
                output: output_tail(&output),
            });
        }
        Ok(())
    }

    /// `pg_ctl status`: 0 running, 3 not running.
    fn is_running(&self) -> Result<bool> {
        let pg_ctl = self.binaries.pg_ctl();
        let mut command = self.command(&pg_ctl);
        command.arg("status").arg("-D").arg(self.data_dir());
        Ok(self.run(command, &pg_ctl)?.status.success())
    }

    /// The port in `postmaster.pid` (its fourth line), for messages.
    fn running_port(&self) -> Option<u16> {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    /// Starts the server on `options.port`, or on free ports until one is not taken.
    fn start_on_some_port(&self, options: &StartOptions) -> Result<u16> {
        if let Some(port) = options.port {
            return match self.start_once(port, options.start_wait_s) {
                Ok(()) => Ok(port),
                Err(StartFailure::PortTaken { log_tail }) => {
                    Err(Error::PortInUse { port, log_tail })
                }
                Err(StartFailure::Other(error)) => Err(error),
            };
        }
        let mut last_log_tail = String::new();
        for _ in 0..PORT_ATTEMPTS_MAX {
            let port = free_port()?;
            match self.start_once(port, options.start_wait_s) {
                Ok(()) => return Ok(port),
                Err(StartFailure::PortTaken { log_tail }) => last_log_tail = log_tail,
                Err(StartFailure::Other(error)) => return Err(error),
            }
        }
        Err(Error::PortRaceLost {
            attempts: PORT_ATTEMPTS_MAX,
            log_tail: last_log_tail,
        })
    }

    fn start_once(&self, port: u16, wait_s: u64) -> Result<(), StartFailure> {
        let log_path = self.log_path();
        let log_offset = std::fs::metadata(&log_path).map_or(0, |meta| meta.len());
        // pg_ctl hands -o to /bin/sh; check_path_supported keeps quotes out of `dir`.
        let server_options = format!(
            "-p {port} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on",
            self.dir.display()
        );
        let pg_ctl = self.binaries.pg_ctl();
        let mut command = self.command(&pg_ctl);
        command
            .arg("start")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log_path)
            .args(["-w", "-t", &wait_s.to_string(), "-s", "-o", &server_options]);
        let output = self.run(command, &pg_ctl).map_err(StartFailure::Other)?;
        if output.status.success() {
            return Ok(());
        }
        let log = read_log_from(&log_path, log_offset);
        // On its timeout pg_ctl leaves a slow server starting: stop it before another
        // port is tried or the error returned, so no server is left behind.
        if self.is_running().unwrap_or(false)
            && let Err(error) = self.stop(StopMode::Immediate)
        {
            tracing::warn!(%error, "stopping a server that did not start in time");
        }
        if log.contains(PORT_TAKEN_LOG_LINE) {
            return Err(StartFailure::PortTaken {
                log_tail: tail_lines(&log, TAIL_LINES),
            });
        }
        Err(StartFailure::Other(Error::StartFailed {
            dir: self.dir.clone(),
            port,
            pg_ctl_output: output_tail(&output),
            log_tail: tail_lines(&log, TAIL_LINES),
        }))
    }

    fn stop(&self, mode: StopMode) -> Result<()> {
        let pg_ctl = self.binaries.pg_ctl();
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let mut command = self.command(&pg_ctl);
        command.arg("stop").arg("-D").arg(self.data_dir()).args([
            "-m",
            mode,
            "-w",
            "-t",
            &STOP_WAIT_S.to_string(),
            "-s",
        ]);
        let output = self.run(command, &pg_ctl)?;
        if !output.status.success() {
            return Err(Error::StopFailed {
                dir: self.dir.clone(),
                status: output.status.to_string(),
                output: output_tail(&output),
            });
        }
        Ok(())
    }

    /// The last lines of the server log written since byte `offset`.
    fn log_tail(&self, offset: u64) -> String {
        tail_lines(&read_log_from(&self.log_path(), offset), TAIL_LINES)
    }
}

/// Whether `dir` holds a cluster (`data/PG_VERSION`); `false` for an empty directory.
///
/// # Errors
/// [`Error::DirNotCluster`] for a directory holding anything else.
fn is_cluster_dir(dir: &Path) -> Result<bool> {
    if dir.join(DATA_DIR_NAME).join("PG_VERSION").is_file() {
        return Ok(true);
    }
    let mut entries = std::fs::read_dir(dir).map_err(|source| Error::io("listing", dir, source))?;
    if entries.next().is_some() {
        return Err(Error::DirNotCluster {
            dir: dir.to_path_buf(),
        });
    }
    Ok(false)
}

/// Rejects a directory whose path PostgreSQL cannot be handed: pg_ctl pastes the data
/// directory into a double-quoted and `-o` into an unquoted `/bin/sh` command line, the
/// socket directory setting is a comma-separated list, and a unix socket path is at most
/// [`SOCKET_PATH_BYTES_MAX`] bytes.
fn check_path_supported(dir: &Path) -> Result<()> {
    let unsupported = |reason| Error::PathUnsupported {
        dir: dir.to_path_buf(),
        reason,
    };
    let Some(text) = dir.to_str() else {
        return Err(unsupported("its path is not UTF-8"));
    };
    if text
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "'\"$`\\,".contains(c))
    {
        return Err(unsupported(
            "its path holds a space, quote, $, backquote, backslash or comma, which pg_ctl's \
             shell command or the socket directory list cannot carry",
        ));
    }
    if text.len() + SOCKET_NAME_BYTES_MAX > SOCKET_PATH_BYTES_MAX {
        return Err(unsupported(
            "its path is too long for the unix socket inside it (at most 92 bytes)",
        ));
    }
    Ok(())
}

/// A port on 127.0.0.1 that was free a moment ago. The listener is closed before the
/// server binds the port, so another process may take it in between: the caller retries.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|source| Error::io("binding a free port on", Path::new("127.0.0.1"), source))?;
    let port = listener
        .local_addr()
        .map_err(|source| Error::io("reading the address of", Path::new("127.0.0.1"), source))?
        .port();
    Ok(port)
}

/// Opens one session and runs `SELECT 1`, retrying for up to `wait_ms_max`; the last
/// error when none succeeded. It runs on a thread of its own so that it works from
/// inside a caller's tokio runtime as well as outside one.
fn wait_accepting(url: &str, wait_ms_max: u64) -> std::result::Result<(), String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|error| format!("building a tokio runtime: {error}"))?;
                runtime.block_on(retry_session(url, wait_ms_max))
            })
            .join()
            .unwrap_or_else(|_| Err("the readiness check panicked".to_string()))
    })
}

async fn retry_session(url: &str, wait_ms_max: u64) -> std::result::Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms_max);
    loop {
        let error = match open_session(url).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(error);
        }
        tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
    }
}

async fn open_session(url: &str) -> std::result::Result<(), String> {
    let connect = tokio::time::timeout(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    );
    let (client, connection) = connect
        .await
        .map_err(|_| format!("no session within {CONNECT_TIMEOUT_MS} ms"))?
        .map_err(|error| error_chain(&error))?;
    let driver = tokio::spawn(connection);
    let result = client
        .simple_query("SELECT 1")
        .await
        .map(drop)
        .map_err(|error| error_chain(&error));
    drop(client);
    // The connection future ends once the client is gone; its own error adds nothing.
    let _ = driver.await;
    result
}

/// An error and its sources on one line (tokio-postgres puts the cause in the source).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The server log from byte `offset` on, at most its last [`LOG_TAIL_BYTES_MAX`] bytes;
/// a note instead when it cannot be read.
fn read_log_from(path: &Path, offset: u64) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let length = file.metadata()?.len();
        let start = offset.max(length.saturating_sub(LOG_TAIL_BYTES_MAX));
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.take(LOG_TAIL_BYTES_MAX).read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|error| {
        format!("(the server log {} is unreadable: {error})", path.display())
    })
}

fn tail_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn output_tail(output: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    tail_lines(text.trim(), TAIL_LINES)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths pg_ctl's shell line or the socket list would mangle, and paths too long for
    /// the socket, are refused with a reason; a plain temp-like path is accepted.
    #[test]
    fn unsupported_paths_are_refused() {
        check_path_supported(Path::new("/tmp/bgsession-pg-abc123")).expect("plain path");
        for bad in [
            "/tmp/a b",
            "/tmp/it's",
            "/tmp/$HOME",
            "/tmp/a,b",
            "/tmp/a\"b",
        ] {
            let error = check_path_supported(Path::new(bad)).expect_err(bad);
            assert!(
                matches!(error, Error::PathUnsupported { .. }),
                "{bad}: {error}"
            );
        }
        let long = format!("/tmp/{}", "x".repeat(SOCKET_PATH_BYTES_MAX));
        let error = check_path_supported(Path::new(&long)).expect_err("too long");
        assert!(error.to_string().contains("too long"), "{error}");
        let longest = format!("/tmp/{}", "x".repeat(92 - "/tmp/".len()));
        check_path_supported(Path::new(&longest)).expect("92 bytes fit");
    }

    /// The tail keeps the last lines only, and all of a short text.
    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_lines("a\nb", 5), "a\nb");
    }
}
