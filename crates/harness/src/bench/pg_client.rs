//! `session-harness bench pg-client`: durable INSERTs per second into a throwaway
//! PostgreSQL cluster (fsync on, one connection over 127.0.0.1), for each statement shape
//! the PostgreSQL backend's writer could use, with `pgbench` as the baseline.
//!
//! Shapes (one row per unit, 100 units per batch by default):
//! - `pgbench_single`: pgbench, one prepared INSERT per transaction (autocommit).
//! - `single`: the same through tokio-postgres: one INSERT per committed transaction.
//! - `batch_round_trips`: BEGIN, one INSERT per unit each awaited, COMMIT.
//! - `batch_savepoint_round_trips`: as above with SAVEPOINT/RELEASE around each INSERT,
//!   each statement awaited.
//! - `batch_pipelined`: BEGIN and every INSERT sent before any reply is read (one round
//!   trip), then COMMIT.
//! - `batch_unnest`: one multi-row `INSERT ... SELECT FROM unnest($1, $2)` per transaction.
//! - `batch_savepoint_pipelined`: BEGIN and SAVEPOINT/INSERT/RELEASE per unit pipelined,
//!   then COMMIT: a savepoint per unit in two round trips per batch.
//! - `batch_savepoint_simple_query`: the same statements as one simple-query string
//!   (values inlined as literals): one round trip per batch.
//! - `batch_savepoint_pipelined_one_failing`: `batch_savepoint_pipelined` where one unit
//!   per batch violates a unique constraint: the writer rolls back to that unit's
//!   savepoint and sends the rest of the batch again.
//! - `batch_pipelined_one_failing_rerun`: `batch_pipelined` (no savepoints) with the same
//!   failing unit: the writer rolls the batch back and runs it again without the unit.
//!
//! Every shape runs `--runs` times, the shapes interleaved within each run so that a burst
//! of disk load from elsewhere on the machine falls on all of them; the figures are the
//! median, minimum and maximum over the runs. Before each measurement the table is
//! emptied; after it, its row count is checked against what the shape must have
//! committed. Round trips are counted, not assumed: one per awaited exchange.
//!
//! Two behaviours of PostgreSQL the pipelined shapes rely on, which the writer will too:
//! tokio-postgres ends every statement with its own Sync, so after a failing statement
//! the server refuses each later one of the pipeline with SQLSTATE 25P02 (none is skipped
//! silently, and the first error names the failing unit); and a COMMIT of an aborted
//! transaction succeeds as a ROLLBACK, so COMMIT is sent only after every reply of the
//! batch was checked, never pipelined behind the units.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use serde::Serialize;
use tokio_postgres::{Client, Statement};

use crate::postgres::Cluster;

/// The bytes every row carries.
const BODY_BYTES: usize = 64;
/// The unit id of the row that exists before every measurement: a unit inserting it
/// again violates the unique constraint (the failing unit of the `one_failing` shapes).
const TAKEN_UNIT: i64 = -1;
/// The savepoint name every unit uses: it is released (or rolled back to and released)
/// before the next unit's, so one name serves and the statements can be prepared once.
const SAVEPOINT: &str = "unit";
/// The SQLSTATE of a statement sent into a transaction an earlier statement aborted.
const IN_FAILED_TRANSACTION: &str = "25P02";

/// Options of `bench pg-client`.
#[derive(Debug, Clone, clap::Args)]
pub struct PgClientArgs {
    /// Transactions per run of the one-INSERT-per-transaction shapes.
    #[arg(long, default_value_t = 4_000)]
    pub single_transactions: u64,
    /// Transactions per run of the batched shapes.
    #[arg(long, default_value_t = 200)]
    pub batches: u64,
    /// Units (one INSERT each) per batched transaction.
    #[arg(long, default_value_t = 100)]
    pub batch_units: u64,
    /// Runs of each shape; the median, minimum and maximum are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: u64,
    /// Print one JSON object instead of lines for a person.
    #[arg(long)]
    pub json: bool,
}

/// What `bench pg-client` measured.
#[derive(Debug, Clone, Serialize)]
pub struct PgClientReport {
    /// `SELECT version()` of the server measured.
    pub server_version: String,
    /// Runs per shape.
    pub runs: u64,
    /// Units per batched transaction.
    pub batch_units: u64,
    /// One entry per shape measured (`pgbench_single` is missing without pgbench).
    pub shapes: Vec<ShapeReport>,
}

/// The figures of one shape.
#[derive(Debug, Clone, Serialize)]
pub struct ShapeReport {
    /// The shape's name (see the module doc).
    pub name: &'static str,
    /// Committed transactions per run.
    pub transactions: u64,
    /// Rows committed per transaction.
    pub rows_per_transaction: f64,
    /// Round trips per transaction, counted (`null` for pgbench).
    pub round_trips_per_transaction: Option<f64>,
    /// Committed rows per second, one per run, in run order.
    pub rows_per_s_runs: Vec<f64>,
    /// Their median.
    pub rows_per_s_median: f64,
    /// Their minimum.
    pub rows_per_s_min: f64,
    /// Their maximum.
    pub rows_per_s_max: f64,
    /// Committed transactions per second at the median.
    pub transactions_per_s_median: f64,
}

/// The shapes, in the order they run within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    PgbenchSingle,
    Single,
    BatchRoundTrips,
    BatchSavepointRoundTrips,
    BatchPipelined,
    BatchUnnest,
    BatchSavepointPipelined,
    BatchSavepointSimpleQuery,
    BatchSavepointPipelinedOneFailing,
    BatchPipelinedOneFailingRerun,
}

impl Shape {
    const ALL: [Shape; 10] = [
        Shape::PgbenchSingle,
        Shape::Single,
        Shape::BatchRoundTrips,
        Shape::BatchSavepointRoundTrips,
        Shape::BatchPipelined,
        Shape::BatchUnnest,
        Shape::BatchSavepointPipelined,
        Shape::BatchSavepointSimpleQuery,
        Shape::BatchSavepointPipelinedOneFailing,
        Shape::BatchPipelinedOneFailingRerun,
    ];

    fn name(self) -> &'static str {
        match self {
            Shape::PgbenchSingle => "pgbench_single",
            Shape::Single => "single",
            Shape::BatchRoundTrips => "batch_round_trips",
            Shape::BatchSavepointRoundTrips => "batch_savepoint_round_trips",
            Shape::BatchPipelined => "batch_pipelined",
            Shape::BatchUnnest => "batch_unnest",
            Shape::BatchSavepointPipelined => "batch_savepoint_pipelined",
            Shape::BatchSavepointSimpleQuery => "batch_savepoint_simple_query",
            Shape::BatchSavepointPipelinedOneFailing => "batch_savepoint_pipelined_one_failing",
            Shape::BatchPipelinedOneFailingRerun => "batch_pipelined_one_failing_rerun",
        }
    }

    fn is_single(self) -> bool {
        matches!(self, Shape::PgbenchSingle | Shape::Single)
    }

    /// Whether one unit of each batch fails.
    fn has_failing_unit(self) -> bool {
        matches!(
            self,
            Shape::BatchSavepointPipelinedOneFailing | Shape::BatchPipelinedOneFailingRerun
        )
    }
}

/// One measurement of one shape.
struct Measured {
    elapsed_s: f64,
    rows: u64,
    round_trips: Option<u64>,
}

/// Runs the benchmark against a throwaway cluster and prints its figures.
///
/// # Errors
/// No PostgreSQL, a cluster or connection that fails, a statement that fails where it
/// must not, or a row count that does not match what a shape committed.
pub fn run(args: &PgClientArgs) -> anyhow::Result<PgClientReport> {
    ensure!(
        args.single_transactions > 0 && args.batches > 0 && args.runs > 0,
        "--single-transactions, --batches and --runs must be at least 1"
    );
    ensure!(
        args.batch_units >= 2,
        "--batch-units must be at least 2 (the failing shapes fail one unit of each batch)"
    );
    let cluster = Cluster::start_temp().context("starting a throwaway PostgreSQL cluster")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let writer = runtime.block_on(Writer::connect(&cluster.url()))?;
    let server_version = runtime.block_on(writer.server_version())?;
    let pgbench = PgbenchSide::new(&cluster)?;
    let mut measured: Vec<(Shape, Vec<Measured>)> = Vec::new();
    for _ in 0..args.runs {
        for shape in Shape::ALL {
            if shape == Shape::PgbenchSingle && pgbench.is_none() {
                continue;
            }
            runtime.block_on(writer.reset())?;
            let run = match (&pgbench, shape) {
                (Some(pgbench), Shape::PgbenchSingle) => pgbench.run(args.single_transactions)?,
                _ => runtime.block_on(writer.measure(shape, args))?,
            };
            let stored = runtime.block_on(writer.stored_rows())?;
            ensure!(
                stored == run.rows + 1,
                "{}: {stored} rows stored, {} committed plus the taken unit expected",
                shape.name(),
                run.rows
            );
            match measured
                .iter_mut()
                .find(|(measured_shape, _)| *measured_shape == shape)
            {
                Some((_, runs)) => runs.push(run),
                None => measured.push((shape, vec![run])),
            }
        }
    }
    let report = PgClientReport {
        server_version,
        runs: args.runs,
        batch_units: args.batch_units,
        shapes: measured
            .into_iter()
            .map(|(shape, runs)| summarise(shape, args, &runs))
            .collect(),
    };
    if pgbench.is_none() {
        eprintln!("bench pg-client: no pgbench beside pg_ctl; its baseline is left out");
    }
    print_report(&report, args.json)?;
    drop(cluster);
    Ok(report)
}

fn summarise(shape: Shape, args: &PgClientArgs, runs: &[Measured]) -> ShapeReport {
    let transactions = if shape.is_single() {
        args.single_transactions
    } else {
        args.batches
    };
    let rows_per_s_runs: Vec<f64> = runs
        .iter()
        .map(|run| run.rows as f64 / run.elapsed_s)
        .collect();
    let mut sorted = rows_per_s_runs.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let rows_per_transaction = runs[0].rows as f64 / transactions as f64;
    let round_trips_per_transaction = runs[0]
        .round_trips
        .map(|round_trips| round_trips as f64 / transactions as f64);
    ShapeReport {
        name: shape.name(),
        transactions,
        rows_per_transaction,
        round_trips_per_transaction,
        rows_per_s_median: median,
        rows_per_s_min: sorted[0],
        rows_per_s_max: sorted[sorted.len() - 1],
        transactions_per_s_median: median / rows_per_transaction,
        rows_per_s_runs,
    }
}

fn print_report(report: &PgClientReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    println!(
        "bench pg-client: {} runs per shape, {} units per batch; {}",
        report.runs, report.batch_units, report.server_version
    );
    println!(
        "{:<40} {:>9} {:>11} {:>10} {:>22}",
        "shape", "rows/txn", "trips/txn", "txn/s", "rows/s median (min..max)"
    );
    for shape in &report.shapes {
        let round_trips = shape
            .round_trips_per_transaction
            .map_or("-".to_string(), |trips| format!("{trips:.1}"));
        println!(
            "{:<40} {:>9.1} {:>11} {:>10.0} {:>10.0} ({:.0}..{:.0})",
            shape.name,
            shape.rows_per_transaction,
            round_trips,
            shape.transactions_per_s_median,
            shape.rows_per_s_median,
            shape.rows_per_s_min,
            shape.rows_per_s_max
        );
    }
    Ok(())
}

/// The baseline: pgbench with a one-INSERT script, one client, prepared statements.
struct PgbenchSide {
    program: std::path::PathBuf,
    script: tempfile::NamedTempFile,
    port: u16,
}

impl PgbenchSide {
    fn new(cluster: &Cluster) -> anyhow::Result<Option<Self>> {
        let Some(program) = cluster.binaries().tool("pgbench") else {
            return Ok(None);
        };
        let mut script = tempfile::NamedTempFile::new().context("creating the pgbench script")?;
        // A sequence for the unit id: pgbench has no per-transaction counter, and a
        // random id could collide with the unique constraint and abort the run.
        let body = "ab".repeat(BODY_BYTES);
        std::io::Write::write_all(
            &mut script,
            format!(
                "INSERT INTO bench_units (unit, body) VALUES (nextval('bench_unit_ids'), '\\x{body}');\n"
            )
            .as_bytes(),
        )
        .context("writing the pgbench script")?;
        Ok(Some(PgbenchSide {
            program,
            script,
            port: cluster.port(),
        }))
    }

    fn run(&self, transactions: u64) -> anyhow::Result<Measured> {
        let output = std::process::Command::new(&self.program)
            .args(["-n", "-M", "prepared", "-c", "1", "-j", "1", "-t"])
            .arg(transactions.to_string())
            .arg("-f")
            .arg(self.script.path())
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "postgres",
            ])
            .env("LC_ALL", "C")
            .output()
            .with_context(|| format!("running {}", self.program.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "pgbench failed ({}): {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // "tps = 2345.678901 (without initial connection time)"
        let tps: f64 = stdout
            .lines()
            .find_map(|line| {
                line.strip_prefix("tps = ")
                    .filter(|rest| rest.contains("without initial connection time"))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|number| number.parse().ok())
            })
            .with_context(|| format!("no tps line in pgbench's output: {stdout}"))?;
        Ok(Measured {
            elapsed_s: transactions as f64 / tps,
            rows: transactions,
            round_trips: None,
        })
    }
}

/// The prepared statements of the writer's shapes.
struct Statements {
    begin: Statement,
    commit: Statement,
    rollback: Statement,
    insert: Statement,
    insert_unnest: Statement,
    savepoint: Statement,
    release: Statement,
    rollback_to: Statement,
}

/// One connection, as the backend's writer thread would hold it.
struct Writer {
    client: Client,
    statements: Statements,
    body: Vec<u8>,
    /// Exchanges awaited since the last reset: one per statement awaited alone, one per
    /// pipeline.
    round_trips: Cell<u64>,
    /// The next unit id: unique across the run.
    next_unit: Cell<i64>,
}

/// One statement of a pipeline in flight, with its affected row count.
type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + 'a>>;

/// A statement of a pipeline and the unit it belongs to.
#[derive(Debug, Clone, Copy)]
enum Step {
    Begin,
    Savepoint(usize),
    Insert(usize),
    Release(usize),
    RollbackTo,
    ReleaseRolledBack,
}

impl Writer {
    async fn connect(url: &str) -> anyhow::Result<Writer> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "bench pg-client: the connection ended");
            }
        });
        client
            .batch_execute(
                "CREATE SEQUENCE bench_unit_ids;
                 CREATE TABLE bench_units (
                     seq bigserial PRIMARY KEY,
                     unit bigint NOT NULL UNIQUE,
                     body bytea NOT NULL
                 );",
            )
            .await
            .context("creating the table")?;
        let insert = "INSERT INTO bench_units (unit, body) VALUES ($1, $2)";
        let statements = Statements {
            begin: client.prepare("BEGIN").await?,
            commit: client.prepare("COMMIT").await?,
            rollback: client.prepare("ROLLBACK").await?,
            insert: client.prepare(insert).await?,
            insert_unnest: client
                .prepare(
                    "INSERT INTO bench_units (unit, body) \
                     SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                )
                .await?,
            savepoint: client.prepare(&format!("SAVEPOINT {SAVEPOINT}")).await?,
            release: client.prepare(&format!("RELEASE {SAVEPOINT}")).await?,
            rollback_to: client
                .prepare(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"))
                .await?,
        };
        Ok(Writer {
            client,
            statements,
            body: vec![0xab; BODY_BYTES],
            round_trips: Cell::new(0),
            next_unit: Cell::new(1),
        })
    }

    async fn server_version(&self) -> anyhow::Result<String> {
        let row = self.client.query_one("SELECT version()", &[]).await?;
        Ok(row.try_get(0)?)
    }

    /// Empties the table and puts back the taken unit.
    async fn reset(&self) -> anyhow::Result<()> {
        self.client
            .batch_execute(&format!(
                "TRUNCATE bench_units; INSERT INTO bench_units (unit, body) VALUES ({TAKEN_UNIT}, '');"
            ))
            .await
            .context("emptying the table")?;
        self.round_trips.set(0);
        Ok(())
    }

    async fn stored_rows(&self) -> anyhow::Result<u64> {
        let row = self
            .client
            .query_one("SELECT count(*) FROM bench_units", &[])
            .await?;
        let count: i64 = row.try_get(0)?;
        Ok(u64::try_from(count)?)
    }

    /// Runs `shape` once; the rows it committed, how long it took, and its round trips.
    async fn measure(&self, shape: Shape, args: &PgClientArgs) -> anyhow::Result<Measured> {
        let started = Instant::now();
        let mut rows = 0;
        if shape.is_single() {
            for _ in 0..args.single_transactions {
                let unit = self.unit_ids(1);
                self.await_one(&self.statements.insert, &unit[0]).await?;
                rows += 1;
            }
        } else {
            for _ in 0..args.batches {
                let mut units = self.unit_ids(args.batch_units);
                if shape.has_failing_unit() {
                    let middle = units.len() / 2;
                    units[middle] = TAKEN_UNIT;
                }
                rows += self.batch(shape, &units).await?;
            }
        }
        Ok(Measured {
            elapsed_s: started.elapsed().as_secs_f64(),
            rows,
            round_trips: Some(self.round_trips.get()),
        })
    }

    /// Commits one batch of `units` in the shape's way; the rows it committed.
    async fn batch(&self, shape: Shape, units: &[i64]) -> anyhow::Result<u64> {
        let s = &self.statements;
        match shape {
            Shape::PgbenchSingle | Shape::Single => bail!("{} is not batched", shape.name()),
            Shape::BatchRoundTrips | Shape::BatchSavepointRoundTrips => {
                let savepoints = shape == Shape::BatchSavepointRoundTrips;
                self.await_no_params(&s.begin).await?;
                for unit in units {
                    if savepoints {
                        self.await_no_params(&s.savepoint).await?;
                    }
                    self.await_one(&s.insert, unit).await?;
                    if savepoints {
                        self.await_no_params(&s.release).await?;
                    }
                }
                self.await_no_params(&s.commit).await?;
                Ok(units.len() as u64)
            }
            Shape::BatchPipelined | Shape::BatchSavepointPipelined => {
                let savepoints = shape == Shape::BatchSavepointPipelined;
                let steps = unit_steps(units.len(), savepoints, true);
                let results = self.pipeline(&steps, units).await;
                for result in results {
                    result?;
                }
                self.await_no_params(&s.commit).await?;
                Ok(units.len() as u64)
            }
            Shape::BatchUnnest => {
                let bodies: Vec<&[u8]> = units.iter().map(|_| self.body.as_slice()).collect();
                self.client
                    .execute(&s.insert_unnest, &[&units, &bodies])
                    .await?;
                self.round_trips.set(self.round_trips.get() + 1);
                Ok(units.len() as u64)
            }
            Shape::BatchSavepointSimpleQuery => {
                let body_hex: String = self.body.iter().map(|byte| format!("{byte:02x}")).collect();
                let mut sql = String::from("BEGIN;");
                for unit in units {
                    sql.push_str(&format!(
                        "SAVEPOINT {SAVEPOINT};INSERT INTO bench_units (unit, body) VALUES ({unit}, '\\x{body_hex}');RELEASE {SAVEPOINT};"
                    ));
                }
                sql.push_str("COMMIT;");
                self.client.batch_execute(&sql).await?;
                self.round_trips.set(self.round_trips.get() + 1);
                Ok(units.len() as u64)
            }
            Shape::BatchSavepointPipelinedOneFailing => {
                self.batch_isolating_by_savepoint(units).await
            }
            Shape::BatchPipelinedOneFailingRerun => self.batch_isolating_by_rerun(units).await,
        }
    }

    /// A savepoint per unit, pipelined; a failing unit is rolled back to its savepoint
    /// and the units after it are sent again, pipelined behind the rollback.
    async fn batch_isolating_by_savepoint(&self, units: &[i64]) -> anyhow::Result<u64> {
        let mut steps = unit_steps(units.len(), true, true);
        let mut failed = 0;
        loop {
            let results = self.pipeline(&steps, units).await;
            let Some(failure) = first_failure(&steps, &results)? else {
                break;
            };
            let Step::Insert(unit_index) = failure else {
                bail!("a pipeline failed at {failure:?}, not at a unit's INSERT");
            };
            failed += 1;
            // The statements after the failure were refused (25P02), so the failing
            // unit's savepoint is the innermost: roll back to it, drop it, resend the rest.
            steps = vec![Step::RollbackTo, Step::ReleaseRolledBack];
            steps.extend(
                unit_steps(units.len(), true, false)
                    .into_iter()
                    .filter(|step| step_unit(*step).is_some_and(|unit| unit > unit_index)),
            );
        }
        self.await_no_params(&self.statements.commit).await?;
        Ok(units.len() as u64 - failed)
    }

    /// No savepoints: a failing unit aborts the batch, which is rolled back and run again
    /// without it.
    async fn batch_isolating_by_rerun(&self, units: &[i64]) -> anyhow::Result<u64> {
        let mut excluded: Vec<usize> = Vec::new();
        loop {
            let steps: Vec<Step> = unit_steps(units.len(), false, true)
                .into_iter()
                .filter(|step| step_unit(*step).is_none_or(|unit| !excluded.contains(&unit)))
                .collect();
            let results = self.pipeline(&steps, units).await;
            let Some(failure) = first_failure(&steps, &results)? else {
                break;
            };
            let Step::Insert(unit_index) = failure else {
                bail!("a pipeline failed at {failure:?}, not at a unit's INSERT");
            };
            excluded.push(unit_index);
            self.await_no_params(&self.statements.rollback).await?;
        }
        self.await_no_params(&self.statements.commit).await?;
        Ok((units.len() - excluded.len()) as u64)
    }

    /// Sends every step before reading any reply (one round trip) and returns each
    /// step's result, in order.
    async fn pipeline(
        &self,
        steps: &[Step],
        units: &[i64],
    ) -> Vec<Result<u64, tokio_postgres::Error>> {
        let s = &self.statements;
        let no_params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = &[];
        let futures: Vec<StepFuture<'_>> = steps
            .iter()
            .map(|step| {
                let future: Pin<Box<dyn Future<Output = _>>> = match *step {
                    Step::Begin => Box::pin(self.client.execute(&s.begin, no_params)),
                    Step::Savepoint(_) => Box::pin(self.client.execute(&s.savepoint, no_params)),
                    Step::Insert(index) => {
                        let (unit, body) = (&units[index], &self.body);
                        // The parameter slice lives in the future, not in this closure.
                        Box::pin(async move { self.client.execute(&s.insert, &[unit, body]).await })
                    }
                    Step::Release(_) | Step::ReleaseRolledBack => {
                        Box::pin(self.client.execute(&s.release, no_params))
                    }
                    Step::RollbackTo => Box::pin(self.client.execute(&s.rollback_to, no_params)),
                };
                future
            })
            .collect();
        let results = join_in_order(futures).await;
        self.round_trips.set(self.round_trips.get() + 1);
        results
    }

    async fn await_no_params(&self, statement: &Statement) -> anyhow::Result<()> {
        self.client.execute(statement, &[]).await?;
        self.round_trips.set(self.round_trips.get() + 1);
        Ok(())
    }

    async fn await_one(&self, insert: &Statement, unit: &i64) -> anyhow::Result<()> {
        self.client.execute(insert, &[unit, &self.body]).await?;
        self.round_trips.set(self.round_trips.get() + 1);
        Ok(())
    }

    fn unit_ids(&self, count: u64) -> Vec<i64> {
        let first = self.next_unit.get();
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        self.next_unit.set(first + count);
        (first..first + count).collect()
    }
}

/// The steps of `units` units, each optionally inside its own savepoint, after a BEGIN
/// when `begin`.
fn unit_steps(units: usize, savepoints: bool, begin: bool) -> Vec<Step> {
    let mut steps = Vec::with_capacity(units * 3 + 1);
    if begin {
        steps.push(Step::Begin);
    }
    for unit in 0..units {
        if savepoints {
            steps.push(Step::Savepoint(unit));
        }
        steps.push(Step::Insert(unit));
        if savepoints {
            steps.push(Step::Release(unit));
        }
    }
    steps
}

fn step_unit(step: Step) -> Option<usize> {
    match step {
        Step::Savepoint(unit) | Step::Insert(unit) | Step::Release(unit) => Some(unit),
        Step::Begin | Step::RollbackTo | Step::ReleaseRolledBack => None,
    }
}

/// The step whose error aborted the transaction: the first that failed. Every later
/// failure must be the server refusing statements in an aborted transaction; anything
/// else means the pipeline did not behave as the writer assumes.
fn first_failure(
    steps: &[Step],
    results: &[Result<u64, tokio_postgres::Error>],
) -> anyhow::Result<Option<Step>> {
    let Some(first) = results.iter().position(Result::is_err) else {
        return Ok(None);
    };
    for (step, result) in steps.iter().zip(results).skip(first + 1) {
        match result {
            Err(error) if error.code().map(|code| code.code()) == Some(IN_FAILED_TRANSACTION) => {}
            Err(error) => bail!("{step:?} after the failing statement failed otherwise: {error}"),
            Ok(_) => bail!("{step:?} after the failing statement succeeded"),
        }
    }
    Ok(Some(steps[first]))
}

/// Awaits every future, polling each one for the first time in the order given:
/// tokio-postgres sends a request when its future is first polled, and a pipeline is
/// only meaningful in order (a unit's INSERT after its SAVEPOINT). `join_all` makes no
/// promise about first-poll order past its small-size path.
async fn join_in_order<'a, T>(mut futures: Vec<Pin<Box<dyn Future<Output = T> + 'a>>>) -> Vec<T> {
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(context) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
