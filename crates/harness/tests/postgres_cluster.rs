//! Throwaway PostgreSQL clusters (`session_harness::postgres`): a real `initdb`/`pg_ctl`
//! server on 127.0.0.1, reached with tokio-postgres; the skip rule for machines without
//! PostgreSQL, shown in a child process of this test binary.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use session_harness::postgres::{
    Binaries, Cluster, Error, PG_BIN_ENV, PlaceOrigin, REQUIRE_ENV, Search, StartOptions,
    StopOutcome, binaries_or_skip, postgres_or_skip, stop_dir,
};
use tokio_postgres::NoTls;

/// The test this binary runs as a child to show the skip rule.
const SKIP_CHILD: &str = "skip_child";
/// The line a skip must print, after the reason.
const SKIP_SUFFIX: &str = "(install PostgreSQL, e.g. apt install postgresql)";

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connecting to the cluster");
    tokio::spawn(async move {
        // The connection ends with an error when the server stops under it: expected.
        let _ = connection.await;
    });
    client
}

/// A temporary cluster accepts a session over 127.0.0.1, stores rows and returns them,
/// and `stop` removes its directory: create a table, insert, read back, stop.
#[tokio::test]
async fn insert_and_read_back() {
    let Some(cluster) = postgres_or_skip("insert_and_read_back") else {
        return;
    };
    assert!(cluster.url().starts_with("postgres://postgres@127.0.0.1:"));
    let client = connect(&cluster.url()).await;
    client
        .batch_execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)")
        .await
        .expect("create table");
    for (id, body) in [(1_i64, "one"), (2, "two")] {
        client
            .execute(
                "INSERT INTO notes (id, body) VALUES ($1, $2)",
                &[&id, &body],
            )
            .await
            .expect("insert");
    }
    let rows = client
        .query("SELECT id, body FROM notes ORDER BY id", &[])
        .await
        .expect("select");
    let read: Vec<(i64, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(read, vec![(1, "one".to_string()), (2, "two".to_string())]);
    let fsync: String = client
        .query_one("SHOW fsync", &[])
        .await
        .expect("show fsync")
        .get(0);
    assert_eq!(
        fsync, "on",
        "figures measured on the cluster must be durable commits"
    );
    let socket = cluster.dir().join(format!(".s.PGSQL.{}", cluster.port()));
    assert!(
        socket.exists(),
        "the unix socket lives in the cluster directory"
    );
    let dir = cluster.dir().to_path_buf();
    drop(client);
    cluster.stop().expect("stop");
    assert!(
        !dir.exists(),
        "stop removes a temporary cluster's directory"
    );
}

/// Dropping a temporary cluster stops its server and frees both its directory and its
/// port: after the drop the directory is gone and a listener can bind the port.
#[tokio::test]
async fn drop_releases_directory_and_port() {
    let Some(cluster) = postgres_or_skip("drop_releases_directory_and_port") else {
        return;
    };
    let (dir, port) = (cluster.dir().to_path_buf(), cluster.port());
    let client = connect(&cluster.url()).await;
    client.simple_query("SELECT 1").await.expect("a session");
    drop(cluster);
    assert!(!dir.exists(), "{} left behind", dir.display());
    std::net::TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|error| panic!("port {port} still taken after the drop: {error}"));
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "the session outlived its server"
    );
}

/// A kept cluster directory survives `stop` with its rows, and a second cluster starts
/// on the same directory and the same port: initdb is not run again and the row written
/// before the stop is read after it.
#[tokio::test]
async fn restart_on_same_directory_and_port() {
    let Some(_binaries) = binaries_or_skip("restart_on_same_directory_and_port") else {
        return;
    };
    let parent = tempfile::tempdir().expect("temp dir");
    open_to_everyone(parent.path());
    let dir = parent.path().join("cluster");
    let first = Cluster::start(&dir, &StartOptions::default()).expect("first start");
    let port = first.port();
    let client = connect(&first.url()).await;
    client
        .batch_execute("CREATE TABLE kept (id int); INSERT INTO kept VALUES (7);")
        .await
        .expect("write before the stop");
    drop(client);
    first.stop().expect("stop");
    assert!(
        dir.join("data").join("PG_VERSION").is_file(),
        "a kept directory stays"
    );

    let options = StartOptions {
        port: Some(port),
        ..StartOptions::default()
    };
    let second = Cluster::start(&dir, &options).expect("second start on the same dir and port");
    assert_eq!(second.port(), port);
    let client = connect(&second.url()).await;
    let kept: i32 = client
        .query_one("SELECT id FROM kept", &[])
        .await
        .expect("the row written before the stop")
        .get(0);
    assert_eq!(kept, 7);
    drop(client);
    assert_eq!(stop_dir(&dir).expect("stop_dir"), StopOutcome::Stopped);
    assert_eq!(
        stop_dir(&dir).expect("stop_dir again"),
        StopOutcome::NotRunning
    );
    // `second` was stopped under it; its drop finds nothing to stop and must not panic.
    drop(second);
}

/// A second start on a directory whose server runs is refused naming its port, and a
/// directory holding something else is left alone: both are typed errors.
#[test]
fn start_refuses_running_and_foreign_directories() {
    let Some(_binaries) = binaries_or_skip("start_refuses_running_and_foreign_directories") else {
        return;
    };
    let parent = tempfile::tempdir().expect("temp dir");
    open_to_everyone(parent.path());
    let dir = parent.path().join("cluster");
    let running = Cluster::start(&dir, &StartOptions::default()).expect("start");
    let error = Cluster::start(&dir, &StartOptions::default()).expect_err("second start");
    assert!(
        matches!(error, Error::AlreadyRunning { port: Some(port), .. } if port == running.port()),
        "{error}"
    );
    drop(running);

    let foreign = parent.path().join("foreign");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::fs::write(foreign.join("notes.txt"), "mine").expect("write");
    let error = Cluster::start(&foreign, &StartOptions::default()).expect_err("foreign dir");
    assert!(matches!(error, Error::DirNotCluster { .. }), "{error}");
    assert_eq!(
        std::fs::read_dir(&foreign).expect("list").count(),
        1,
        "nothing was written into the foreign directory"
    );
}

/// A port asked for that another process holds is a typed error carrying the server
/// log's complaint, not a retry on some other port.
#[test]
fn taken_port_is_reported() {
    let Some(_binaries) = binaries_or_skip("taken_port_is_reported") else {
        return;
    };
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let port = holder.local_addr().expect("address").port();
    let parent = tempfile::tempdir().expect("temp dir");
    open_to_everyone(parent.path());
    let options = StartOptions {
        port: Some(port),
        ..StartOptions::default()
    };
    let error = Cluster::start(&parent.path().join("cluster"), &options).expect_err("taken");
    match &error {
        Error::PortInUse {
            port: reported,
            log_tail,
        } => {
            assert_eq!(*reported, port);
            assert!(log_tail.contains("could not bind"), "{log_tail}");
        }
        other => panic!("expected PortInUse, got {other}"),
    }
}

/// The finder over an empty search reports not found and lists every place it looked:
/// the PATH directory and the versioned root's pattern.
#[test]
fn finder_lists_where_it_looked() {
    let empty = tempfile::tempdir().expect("temp dir");
    let search = Search {
        pg_bin: None,
        path: vec![empty.path().to_path_buf()],
        versioned_root: empty.path().join("postgresql"),
    };
    let error = Binaries::find_in(&search).expect_err("nothing installed there");
    let Error::BinariesNotFound { looked } = &error else {
        panic!("expected BinariesNotFound, got {error}");
    };
    let places: Vec<(PlaceOrigin, &Path)> = looked
        .iter()
        .map(|place| (place.origin, place.dir.as_path()))
        .collect();
    let pattern = empty.path().join("postgresql").join("*").join("bin");
    assert_eq!(
        places,
        vec![
            (PlaceOrigin::Path, empty.path()),
            (PlaceOrigin::Versioned, pattern.as_path())
        ]
    );
    let message = error.to_string();
    assert!(
        message.contains(&empty.path().display().to_string()),
        "{message}"
    );
}

/// `BGSESSION_PG_BIN` is the only place searched when set, even when `PATH` holds the
/// programs; and a directory holding executable `initdb` and `pg_ctl` is found.
#[test]
fn finder_obeys_pg_bin_alone() {
    let fake = tempfile::tempdir().expect("temp dir");
    for program in ["initdb", "pg_ctl"] {
        let path = fake.path().join(program);
        std::fs::write(&path, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let fake_dir = std::fs::canonicalize(fake.path()).expect("canonical");
    let empty = tempfile::tempdir().expect("temp dir");
    let found = Binaries::find_in(&Search {
        pg_bin: None,
        path: vec![empty.path().to_path_buf(), fake_dir.clone()],
        versioned_root: empty.path().to_path_buf(),
    })
    .expect("found on PATH");
    assert_eq!(found.bin_dir(), fake_dir);
    let error = Binaries::find_in(&Search {
        pg_bin: Some(empty.path().to_path_buf()),
        path: vec![fake_dir.clone()],
        versioned_root: empty.path().to_path_buf(),
    })
    .expect_err("BGSESSION_PG_BIN empty: PATH is not consulted");
    let Error::BinariesNotFound { looked } = error else {
        panic!("expected BinariesNotFound");
    };
    assert_eq!(looked.len(), 1);
    assert_eq!(looked[0].origin, PlaceOrigin::PgBinEnv);
}

/// Run by the skip tests as a child process of this binary, with `BGSESSION_PG_BIN`
/// pointing at an empty directory; it only calls the helper, the parent checks the output.
#[test]
#[ignore = "a child of the skip tests, with BGSESSION_PG_BIN pointing at an empty directory"]
fn skip_child() {
    let _cluster = postgres_or_skip(SKIP_CHILD);
}

/// Runs [`skip_child`] in a child process with no binaries to find, with the test
/// harness's output capture on (as in a plain `cargo test`).
fn run_skip_child(require: bool) -> (bool, String, String) {
    let empty = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([SKIP_CHILD, "--exact", "--ignored", "--test-threads=1"])
        .env(PG_BIN_ENV, empty.path());
    if require {
        command.env(REQUIRE_ENV, "1");
    } else {
        command.env_remove(REQUIRE_ENV);
    }
    let output = command.output().expect("running the child");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let empty_dir = empty.path().display().to_string();
    assert!(
        stderr.contains(&empty_dir) || stdout.contains(&empty_dir),
        "the reason names the directory looked in: {stdout}{stderr}"
    );
    (output.status.success(), stdout, stderr)
}

/// Without `BGSESSION_REQUIRE_POSTGRES`, missing binaries make a test pass after exactly
/// one SKIP line on stderr, past the output capture, naming the test, the reason and the
/// install hint (shown in a child with `BGSESSION_PG_BIN` at an empty directory).
#[test]
fn missing_binaries_skip_with_one_line() {
    let (success, stdout, stderr) = run_skip_child(false);
    assert!(success, "the child failed: {stdout}{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the child test did not run: {stdout}"
    );
    let skip_lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("SKIP"))
        .collect();
    assert_eq!(skip_lines.len(), 1, "{stdout}{stderr}");
    assert!(!stdout.contains("SKIP"), "{stdout}");
    let line = skip_lines[0];
    let prefix =
        format!("SKIP {SKIP_CHILD}: PostgreSQL not available: initdb and pg_ctl not found in ");
    assert!(line.starts_with(&prefix), "{line}");
    assert!(line.ends_with(SKIP_SUFFIX), "{line}");
    assert!(line.contains(PG_BIN_ENV), "{line}");
}

/// With `BGSESSION_REQUIRE_POSTGRES=1`, missing binaries fail the test with the reason
/// and print no SKIP line (shown in a child with `BGSESSION_PG_BIN` at an empty directory).
#[test]
fn missing_binaries_fail_when_required() {
    let (success, stdout, stderr) = run_skip_child(true);
    assert!(!success, "the child passed: {stdout}{stderr}");
    let output = format!("{stdout}{stderr}");
    assert!(
        output.contains(&format!(
            "PostgreSQL is required ({REQUIRE_ENV}=1) but not available"
        )),
        "{output}"
    );
    assert!(!output.contains("SKIP "), "{output}");
}

/// Lets the user PostgreSQL runs as (postgres or nobody, when the tests run as root) into
/// a temporary directory, which tempfile creates with mode 0700.
fn open_to_everyone(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// `bench pg-client` commits exactly the rows each shape must (its own row-count check
/// passes, one unit per batch short for the failing shapes) with the round trips its
/// shape promises, on tiny counts.
#[test]
fn bench_pg_client_commits_what_each_shape_promises() {
    let Some(binaries) = binaries_or_skip("bench_pg_client_commits_what_each_shape_promises")
    else {
        return;
    };
    let args = session_harness::bench::pg_client::PgClientArgs {
        single_transactions: 20,
        batches: 3,
        batch_units: 10,
        runs: 1,
        json: true,
    };
    let report = session_harness::bench::pg_client::run(&args).expect("bench pg-client");
    let shape = |name: &str| {
        report
            .shapes
            .iter()
            .find(|shape| shape.name == name)
            .unwrap_or_else(|| panic!("no shape {name}"))
    };
    let expected = [
        ("single", 1.0, Some(1.0)),
        ("batch_round_trips", 10.0, Some(12.0)),
        ("batch_savepoint_round_trips", 10.0, Some(32.0)),
        ("batch_pipelined", 10.0, Some(2.0)),
        ("batch_unnest", 10.0, Some(1.0)),
        ("batch_savepoint_pipelined", 10.0, Some(2.0)),
        ("batch_savepoint_simple_query", 10.0, Some(1.0)),
        ("batch_savepoint_pipelined_one_failing", 9.0, Some(3.0)),
        ("batch_pipelined_one_failing_rerun", 9.0, Some(4.0)),
    ];
    for (name, rows, round_trips) in expected {
        let measured = shape(name);
        assert_eq!(measured.rows_per_transaction, rows, "{name}");
        assert_eq!(measured.round_trips_per_transaction, round_trips, "{name}");
        assert!(measured.rows_per_s_median > 0.0, "{name}");
    }
    if binaries.tool("pgbench").is_some() {
        assert_eq!(shape("pgbench_single").rows_per_transaction, 1.0);
    }
}
