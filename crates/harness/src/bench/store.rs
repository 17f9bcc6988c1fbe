//! `session-harness bench store`: durable units per second through the store's
//! group-commit writer, against one commit per put made directly with heed in the same
//! run, directory and file system; with `--store postgres` (a throwaway cluster) or
//! `--store postgres://...`, through the PostgreSQL backend's writer, against one INSERT
//! per committed transaction on the same server (one connection, a prepared statement,
//! autocommit: what a writer without group commit does).
//!
//! The writer side runs `--submitters` async tasks (512 by default) on a two-thread tokio
//! runtime; each submits units one after another with `Store::write_async`, and each unit
//! is one put of a small record into an application table. A unit counts once its future
//! resolved, i.e. once its batch's commit is durable. The baseline puts the same record
//! with heed directly, one write transaction (one durable commit) per put, from one
//! thread: what a store without group commit would do.
//!
//! Both sides run in `--rounds` alternating slices (writer, baseline, writer, ...), and
//! each figure is its total work over its total time, so that a burst of disk load from
//! elsewhere on the machine weighs on both sides rather than on one.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context as _, bail};
use heed::types::{Bytes, SerdeBincode};
use heed::{self, CommitOrAbort, EnvOpenOptions};
use serde::Serialize;
use session_store::{AppTable, Store, StoreOptions};

/// The application table the units write.
const TABLE: &str = "bench-units";
/// The map size of both sides: large enough that neither grows during the run.
const MAP_SIZE_BYTES: usize = 1 << 30;

/// The small record every unit (and every baseline commit) puts.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct BenchRecord {
    index: u64,
    created_ms: u64,
    tag: [u8; 16],
}

fn record(index: u64) -> BenchRecord {
    BenchRecord {
        index,
        created_ms: 1_700_000_000_000 + index,
        tag: *b"bench-store-unit",
    }
}

/// Options of `bench store`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Units to commit through the writer.
    #[arg(long, default_value_t = 200_000)]
    pub units: u64,
    /// Concurrent submitters (async tasks), each with one unit in flight at a time.
    #[arg(long, default_value_t = 512)]
    pub submitters: u64,
    /// Commits of the baseline (one put each).
    #[arg(long, default_value_t = 2_000)]
    pub baseline_commits: u64,
    /// Alternating slices the two sides are measured in.
    #[arg(long, default_value_t = 4)]
    pub rounds: u64,
    /// Print one JSON object instead of lines for a person.
    #[arg(long)]
    pub json: bool,
    /// Where: `lmdb`, `postgres` (a throwaway cluster) or a `postgres://` URL (the
    /// benchmark's own schemas, dropped afterwards).
    #[arg(long, default_value = "lmdb")]
    pub store: String,
}

/// What `bench store` measured.
#[derive(Debug, Clone, Serialize)]
pub struct StoreReport {
    /// `lmdb` or `postgres`.
    pub store: String,
    /// Units committed through the writer.
    pub units: u64,
    /// Concurrent submitters.
    pub submitters: u64,
    /// Seconds the writer side took: per round, from the first submission to the last
    /// durable reply, summed over the rounds.
    pub units_s: f64,
    /// Durable units per second through the writer.
    pub units_per_s: f64,
    /// Commits made by the baseline.
    pub baseline_commits: u64,
    /// Seconds the baseline took, summed over the rounds.
    pub baseline_s: f64,
    /// Durable commits (one put each) per second: with heed directly (LMDB), or one
    /// INSERT per committed transaction (PostgreSQL).
    pub baseline_commits_per_s: f64,
    /// `units_per_s / baseline_commits_per_s`.
    pub ratio: f64,
}

/// Runs the benchmark in a temporary directory (removed afterwards) and prints its figures.
///
/// # Errors
/// Setup failures (temp dir, store, runtime), a failed unit or commit, or a count of
/// stored records that does not match.
pub fn run(args: &StoreArgs) -> anyhow::Result<StoreReport> {
    if args.units == 0 || args.submitters == 0 || args.baseline_commits == 0 || args.rounds == 0 {
        bail!("--units, --submitters, --baseline-commits and --rounds must be at least 1");
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let server = crate::postgres::server_for(&args.store)?;
    let (writer, baseline) = match &server {
        None => (
            WriterSide::open(&dir.path().join("store"))?,
            BaselineSide::open(&dir.path().join("baseline"))?,
        ),
        Some((_, url)) => {
            let suffix = std::process::id();
            (
                WriterSide::open_postgres(url, &format!("bench_store_{suffix}"))?,
                BaselineSide::open_postgres(url, &format!("bench_baseline_{suffix}"))?,
            )
        }
    };
    let (mut units_s, mut baseline_s) = (0.0, 0.0);
    let (mut units_done, mut commits_done) = (0, 0);
    for round in 1..=args.rounds {
        let units_end = args.units * round / args.rounds;
        units_s += writer.commit(units_done..units_end, args.submitters)?;
        units_done = units_end;
        let commits_end = args.baseline_commits * round / args.rounds;
        baseline_s += baseline.commit(commits_done..commits_end)?;
        commits_done = commits_end;
    }
    let stored = writer.stored()?;
    if stored != args.units {
        bail!("{stored} records stored for {} units", args.units);
    }
    let stored = baseline.stored()?;
    if stored != args.baseline_commits {
        bail!(
            "the baseline stored {stored} records for {} commits",
            args.baseline_commits
        );
    }
    writer.store.close()?;
    baseline.drop_schemas(writer.store.schema())?;
    let units_per_s = args.units as f64 / units_s;
    let baseline_commits_per_s = args.baseline_commits as f64 / baseline_s;
    let report = StoreReport {
        store: if server.is_some() { "postgres" } else { "lmdb" }.to_owned(),
        units: args.units,
        submitters: args.submitters,
        units_s,
        units_per_s,
        baseline_commits: args.baseline_commits,
        baseline_s,
        baseline_commits_per_s,
        ratio: units_per_s / baseline_commits_per_s,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "bench store: {} units from {} submitters in {:.3} s: {:.0} durable units/s",
            report.units, report.submitters, report.units_s, report.units_per_s
        );
        println!(
            "bench store ({}): baseline {} commits of one {} in {:.3} s: {:.0} commits/s",
            report.store,
            report.baseline_commits,
            if server.is_some() { "INSERT" } else { "put" },
            report.baseline_s,
            report.baseline_commits_per_s
        );
        println!("bench store: ratio {:.1}", report.ratio);
    }
    Ok(report)
}

/// The store under test, its table and the runtime its submitters run on.
struct WriterSide {
    store: Store,
    table: AppTable<BenchRecord>,
    runtime: tokio::runtime::Runtime,
}

impl WriterSide {
    fn open(dir: &std::path::Path) -> anyhow::Result<Self> {
        let options = StoreOptions {
            map_size_bytes_initial: MAP_SIZE_BYTES,
            ..StoreOptions::default().with_app_table(TABLE)
        };
        WriterSide::on(Store::open(dir, options)?)
    }

    fn open_postgres(url: &str, schema: &str) -> anyhow::Result<Self> {
        let options = session_store::PostgresOptions::new(url, schema).app_table(TABLE);
        WriterSide::on(Store::open_postgres(options)?)
    }

    /// The writer side on an opened store: its table and the submitters' runtime.
    fn on(store: Store) -> anyhow::Result<Self> {
        let table = store.app_table::<BenchRecord>(TABLE)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .context("building the tokio runtime")?;
        Ok(WriterSide {
            store,
            table,
            runtime,
        })
    }

    /// Commits the units numbered `indexes` from `submitters` tasks; returns the seconds
    /// from the first submission to the last durable reply.
    fn commit(&self, indexes: Range<u64>, submitters: u64) -> anyhow::Result<f64> {
        let next = Arc::new(AtomicU64::new(indexes.start));
        let started = Instant::now();
        self.runtime.block_on(async {
            let tasks: Vec<_> = (0..submitters)
                .map(|_| {
                    let (store, table, next, end) = (
                        self.store.clone(),
                        self.table.clone(),
                        Arc::clone(&next),
                        indexes.end,
                    );
                    tokio::spawn(async move {
                        loop {
                            let index = next.fetch_add(1, Ordering::Relaxed);
                            if index >= end {
                                return Ok::<_, session_store::Error>(());
                            }
                            let table = table.clone();
                            store
                                .write_async(move |scope| {
                                    table.put(scope, index.to_be_bytes(), &record(index))
                                })
                                .await?;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.context("a submitter task")??;
            }
            anyhow::Ok(())
        })?;
        Ok(started.elapsed().as_secs_f64())
    }

    /// How many records the units left.
    fn stored(&self) -> anyhow::Result<u64> {
        let mut stored = 0_u64;
        self.table.for_each(&self.store.snapshot()?, |_, _| {
            stored += 1;
            Ok(())
        })?;
        Ok(stored)
    }
}

/// One put per durable commit: a plain heed environment, or one INSERT per committed
/// transaction on a PostgreSQL connection.
enum BaselineSide {
    Lmdb {
        env: heed::Env,
        database: heed::Database<'static, Bytes, SerdeBincode<BenchRecord>>,
    },
    Postgres(Box<PgBaseline>),
}

/// The PostgreSQL baseline's connection.
struct PgBaseline {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    insert: tokio_postgres::Statement,
    schema: String,
}

impl BaselineSide {
    fn open(dir: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut options = EnvOpenOptions::new();
        options.map_size(MAP_SIZE_BYTES).max_dbs(1);
        // SAFETY: the directory was just created inside this run's private temporary
        // directory; nothing else opens or modifies its files while the environment lives.
        let env = unsafe { options.open(dir) }.context("opening the baseline environment")?;
        let wtxn = env.write_txn()?;
        let created = env.create_databases_and_commit(wtxn, |opener, wtxn| {
            opener
                .create_database::<Bytes, SerdeBincode<BenchRecord>>(wtxn, Some(TABLE))
                .map(CommitOrAbort::<_, ()>::Commit)
        })?;
        let CommitOrAbort::Commit(database) = created else {
            bail!("creating the baseline table was aborted");
        };
        Ok(BaselineSide::Lmdb { env, database })
    }

    /// A connection to `url` and a table `schema.records (k bytea, v bytea)`, the shape
    /// the backend's tables have.
    fn open_postgres(url: &str, schema: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the tokio runtime")?;
        let (client, insert) = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            tokio::spawn(connection);
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; \
                     CREATE TABLE {schema}.records (k bytea PRIMARY KEY, v bytea NOT NULL)"
                ))
                .await
                .context("creating the baseline table")?;
            let insert = client
                .prepare(&format!(
                    "INSERT INTO {schema}.records (k, v) VALUES ($1, $2)"
                ))
                .await?;
            anyhow::Ok((client, insert))
        })?;
        Ok(BaselineSide::Postgres(Box::new(PgBaseline {
            runtime,
            client,
            insert,
            schema: schema.to_owned(),
        })))
    }

    /// Drops the baseline's schema and the writer's (PostgreSQL).
    fn drop_schemas(&self, writer: Option<&str>) -> anyhow::Result<()> {
        if let BaselineSide::Postgres(pg) = self {
            let PgBaseline {
                runtime,
                client,
                schema,
                ..
            } = &**pg;
            let mut sql = format!("DROP SCHEMA {schema} CASCADE;");
            if let Some(writer) = writer {
                sql.push_str(&format!(" DROP SCHEMA {writer} CASCADE;"));
            }
            runtime.block_on(client.batch_execute(&sql))?;
        }
        Ok(())
    }

    /// Commits the records numbered `indexes`, one per write transaction; returns the
    /// seconds taken.
    fn commit(&self, indexes: Range<u64>) -> anyhow::Result<f64> {
        let started = Instant::now();
        match self {
            BaselineSide::Lmdb { env, database } => {
                for index in indexes {
                    let mut wtxn = env.write_txn()?;
                    database.put(&mut wtxn, &index.to_be_bytes(), &record(index))?;
                    wtxn.commit()?;
                }
            }
            BaselineSide::Postgres(pg) => pg.runtime.block_on(async {
                let PgBaseline { client, insert, .. } = &**pg;
                for index in indexes {
                    // The bytes the backend's unit writes: the key and the record as
                    // `AppTable` encodes it.
                    let value = bincode::serialize(&record(index))?;
                    let key = index.to_be_bytes();
                    client.execute(insert, &[&&key[..], &value]).await?;
                }
                anyhow::Ok(())
            })?,
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// How many records the commits left.
    fn stored(&self) -> anyhow::Result<u64> {
        match self {
            BaselineSide::Lmdb { env, database } => {
                let rtxn = env.read_txn()?;
                Ok(database.len(&rtxn)?)
            }
            BaselineSide::Postgres(pg) => {
                let PgBaseline {
                    runtime,
                    client,
                    schema,
                    ..
                } = &**pg;
                let row = runtime.block_on(
                    client.query_one(&format!("SELECT count(*) FROM {schema}.records"), &[]),
                )?;
                let count: i64 = row.try_get(0)?;
                Ok(u64::try_from(count)?)
            }
        }
    }
}
