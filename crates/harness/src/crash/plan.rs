//! The plan of a crash run: which sessions, which generations of work, which tasks, and
//! what each task must end as. It is generated from a seed (or read from a manifest),
//! written to `plan.json` in the run directory, and is everything the worker and the
//! verifier share.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use session_actor::SessionConfig;

use crate::origin;

/// The plan's file name in a run directory.
pub const PLAN_FILE_NAME: &str = "plan.json";
/// The directory (in the run directory) that holds the files uploads send.
pub const UPLOAD_SOURCE_DIR: &str = "upload-sources";
/// The name of the completion handler the worker registers.
pub const COMPLETION_NAME: &str = "harness-complete";

/// The largest download a generated plan asks for, in bytes.
pub const DOWNLOAD_BYTES_MAX: u64 = 6 * 1024 * 1024;
/// Downloads at least this large may be paced (dripped on every request).
const PACED_BYTES_MIN: u64 = 64 * 1024;
/// The shortest time a paced download takes uninterrupted, in milliseconds.
const PACED_MS_MIN: u64 = 1000;
/// The longest time a paced download takes uninterrupted, in milliseconds.
const PACED_MS_MAX: u64 = 10_000;
/// The interval between the pieces of a paced download, in milliseconds.
const PACE_INTERVAL_MS: u64 = 10;
/// The most sessions a plan may have (session identifiers are `s000`..).
pub const SESSIONS_MAX: usize = 1000;
/// The most tasks per session a plan may have.
pub const TASKS_PER_SESSION_MAX: usize = 1000;

/// What a task must end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The server accepted it and the transfer verified.
    Success,
    /// The server refused it (a 4xx other than 408 and 429).
    Rejected,
    /// It could not complete (verification, retries exhausted, ...).
    Failed,
    /// Any terminal outcome except `cancelled`.
    Any,
}

impl Expect {
    /// Whether an outcome name (`success`, `rejected`, `failed`, `cancelled`) fits.
    pub fn accepts(self, outcome: &str) -> bool {
        match self {
            Expect::Success => outcome == "success",
            Expect::Rejected => outcome == "rejected",
            Expect::Failed => outcome == "failed",
            Expect::Any => matches!(outcome, "success" | "rejected" | "failed"),
        }
    }

    /// The name used in plans and reports.
    pub fn name(self) -> &'static str {
        match self {
            Expect::Success => "success",
            Expect::Rejected => "rejected",
            Expect::Failed => "failed",
            Expect::Any => "any",
        }
    }
}

/// What a planned task does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum PlannedKind {
    /// A GET into a file.
    Download {
        /// The SHA-256 the delivered file must have (the origin's content), when known.
        sha256: Option<String>,
        /// The length the request demands (`with_expected_bytes`); a wrong one makes the
        /// task fail verification.
        expected_bytes: Option<u64>,
    },
    /// A PUT of a file.
    Upload {
        /// The file sent.
        file: PathBuf,
    },
    /// A small GET kept in memory.
    Data,
}

impl PlannedKind {
    /// `download`, `upload` or `data`.
    pub fn name(&self) -> &'static str {
        match self {
            PlannedKind::Download { .. } => "download",
            PlannedKind::Upload { .. } => "upload",
            PlannedKind::Data => "data",
        }
    }
}

/// One planned task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedTask {
    /// The task identifier (unique in its session).
    pub id: String,
    /// The absolute URL.
    pub url: String,
    /// Download, upload or data.
    #[serde(flatten)]
    pub kind: PlannedKind,
    /// The outcome it must end with.
    pub expect: Expect,
    /// The origin object it reads or writes, when the origin is the built-in one.
    pub object: Option<String>,
    /// The object's size in bytes, when known.
    pub bytes: Option<u64>,
    /// The fault program in the URL, for a person reading the plan.
    pub fault: Option<String>,
}

/// One batch of a session's work: enqueued together, with its own completion. The plan
/// calls it a generation; a batch that `joins` may share the library's generation with
/// the batch before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedGeneration {
    /// The generation's number in the plan, from 1.
    pub number: u64,
    /// The tasks.
    pub tasks: Vec<PlannedTask>,
    /// Enqueued (with its completion) right after the batch before it, while that one
    /// still runs, instead of after its completion ran: it joins the library's running
    /// generation (or opens the next one if that ended meanwhile), and its completion
    /// must still run once, after every task of this batch was delivered.
    #[serde(default)]
    pub joins: bool,
}

/// One planned session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedSession {
    /// The session identifier.
    pub id: String,
    /// The generations, enqueued one after the other: the next only after the previous
    /// one's completion ran.
    pub generations: Vec<PlannedGeneration>,
}

/// The session configuration a plan runs with (persisted per session by the library).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedConfig {
    /// Attempts per task.
    pub attempts_max: u32,
    /// First retry delay.
    pub retry_delay_ms_base: u64,
    /// Largest retry delay.
    pub retry_delay_ms_max: u64,
    /// Resource deadline.
    pub deadline_s: u64,
    /// How long a finished and delivered task is kept before it is pruned (0: the
    /// library's default).
    #[serde(default)]
    pub retention_s: u64,
    /// The janitor's pause between pruning rounds, in milliseconds (0: the library's
    /// default).
    #[serde(default)]
    pub prune_interval_ms: u64,
}

/// The retention of generated plans: short, so that finished tasks are pruned while
/// the workers are killed, and long enough that a task delivered while a worker reads
/// the ledger is still there when it re-issues the batch.
pub const RETENTION_S_GENERATED: u64 = 3;
/// The janitor's pause in generated plans, in milliseconds.
pub const PRUNE_INTERVAL_MS_GENERATED: u64 = 200;

impl Default for PlannedConfig {
    /// Short delays and enough attempts that "reset for the first K requests" and the
    /// attempts cut short by kills still end in success.
    fn default() -> Self {
        PlannedConfig {
            attempts_max: 40,
            retry_delay_ms_base: 50,
            retry_delay_ms_max: 1000,
            deadline_s: 3600,
            retention_s: 0,
            prune_interval_ms: 0,
        }
    }
}

impl PlannedConfig {
    /// The library's configuration.
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            attempts_max: self.attempts_max,
            retry_delay_ms_base: self.retry_delay_ms_base,
            retry_delay_ms_max: self.retry_delay_ms_max,
            deadline_s: self.deadline_s,
            // Injected delegate panics are failed deliveries now: retry them quickly, as
            // the plan's transfers are.
            wait_retry_ms_max: self.retry_delay_ms_max,
            delivery_retry_ms_base: 5,
            delivery_retry_ms_max: 200,
            retention_s: if self.retention_s == 0 {
                SessionConfig::default().retention_s
            } else {
                self.retention_s
            },
            ..SessionConfig::default()
        }
    }
}

/// Faults of a plan beyond the fault programs in the task URLs: a delegate that refuses
/// some deliveries for a while, and a second origin that refuses connections for a
/// while.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanFaults {
    /// Deliveries the delegate refuses (returns an error) before it accepts them.
    #[serde(default)]
    pub refusals: Option<Refusals>,
    /// The origin that is down (its port closed) for a while, again and again.
    #[serde(default)]
    pub flaky_origin: Option<FlakyOrigin>,
}

/// A delegate that fails transiently: for the events drawn (deterministically from the
/// seed, the session and the event's seq), it returns an error on the first few
/// attempts in each worker process, then accepts the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusals {
    /// Events drawn, per thousand.
    pub per_mille: u64,
    /// The most refusals of one event per worker process (at least 1).
    pub times_max: u64,
}

impl Refusals {
    /// How many times the delegate refuses event `seq` of `session` in one process.
    pub fn times(&self, seed: u64, session: &str, seq: u64) -> u64 {
        let mut hash = seed ^ 0x5EF0_5A15_0000_0011 ^ seq.rotate_left(32);
        for byte in session.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3);
        }
        // A final mix, so that neighbouring seqs draw independently.
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        hash ^= hash >> 33;
        if hash % 1000 < self.per_mille {
            1 + (hash >> 10) % self.times_max.max(1)
        } else {
            0
        }
    }
}

/// The second origin of a generated plan: the orchestrator keeps its port closed for
/// `down_ms`, then serves for `up_ms`, and so on from the start of the run; the tasks
/// whose URL names it wait for connectivity meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlakyOrigin {
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// How long it refuses connections each time, milliseconds.
    pub down_ms: u64,
    /// How long it serves between two of those, milliseconds.
    pub up_ms: u64,
}

/// Event refusals of generated plans: about one event in twelve, up to three times.
const REFUSALS_GENERATED: Refusals = Refusals {
    per_mille: 80,
    times_max: 3,
};
/// The flaky origin's cycle in generated plans, milliseconds.
const FLAKY_DOWN_MS: u64 = 1500;
const FLAKY_UP_MS: u64 = 1500;
/// The share of small tasks of a generated plan sent to the flaky origin.
const FLAKY_SHARE: f64 = 0.15;
/// The share of sessions with two batches whose second joins the first.
const JOINS_SHARE: f64 = 0.75;

/// Where the plan's expectations come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "source")]
pub enum PlanSource {
    /// Generated from the seed against the built-in origin.
    Generated {
        /// The origin's content seed.
        content_seed: u64,
    },
    /// Read from a manifest against someone else's server.
    Manifest {
        /// The manifest file.
        path: PathBuf,
    },
    /// A test kit workload ([`crate::testkit::Workload`]), against the built-in origin
    /// (and any URL its tasks name), with the completions its batches store.
    Workload {
        /// The origin's content seed.
        content_seed: u64,
        /// The completion each generation stores; a generation not listed stores none.
        completions: Vec<PlannedCompletion>,
    },
}

/// The completion one generation of a test kit workload stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedCompletion {
    /// The session.
    pub session: String,
    /// The plan generation.
    pub generation: u64,
    /// The registered handler's name.
    pub name: String,
    /// The payload the handler receives.
    pub payload: Vec<u8>,
}

/// The separator between the harness's tag (`session/generation`) and the application's
/// payload in a stored completion payload. Identifiers cannot contain it.
const PAYLOAD_SEPARATOR: u8 = 0;
/// Start-up and delivery time a task costs beyond its transfer, in seconds.
const TASK_BASE_S: f64 = 0.01;
/// What a generation's "did finish events" and completion cost, in seconds.
const GENERATION_BASE_S: f64 = 0.05;
/// What one retry without Retry-After costs (the plans' first backoff), in seconds.
const RETRY_BASE_S: f64 = 0.05;
/// Half a second of rounding of Retry-After dates to whole seconds.
const DATE_ROUNDING_S: f64 = 0.5;
/// Transfers at once that the expected-run estimate assumes (the worker's per-host
/// connection limit).
const CONNECTIONS_ASSUMED: f64 = 32.0;
/// A fault program with at least this many `times` applies to every request.
const TIMES_FOREVER: u32 = 1000;

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The run's seed.
    pub seed: u64,
    /// Generated, from a manifest, or from a test kit workload.
    pub source: PlanSource,
    /// The base URL of the server (`http://127.0.0.1:PORT`).
    pub origin: String,
    /// The session configuration.
    pub config: PlannedConfig,
    /// The sessions.
    pub sessions: Vec<PlannedSession>,
    /// Delegate refusals and the flaky origin.
    #[serde(default)]
    pub faults: PlanFaults,
}

/// Uploads the plan needs on disk: `(file, object, size)`.
pub type UploadSource = (PathBuf, String, u64);

impl Plan {
    /// Every task, with its session and generation number.
    pub fn tasks(&self) -> impl Iterator<Item = (&PlannedSession, u64, &PlannedTask)> {
        self.sessions.iter().flat_map(|session| {
            session.generations.iter().flat_map(move |generation| {
                generation
                    .tasks
                    .iter()
                    .map(move |task| (session, generation.number, task))
            })
        })
    }

    /// How many tasks the plan has.
    pub fn task_count(&self) -> usize {
        self.tasks().count()
    }

    /// How many generations the plan has.
    pub fn generation_count(&self) -> usize {
        self.sessions.iter().map(|s| s.generations.len()).sum()
    }

    /// How many completions the plan stores: one per generation, except the
    /// generations of a test kit workload whose batch stores none.
    pub fn completion_count(&self) -> usize {
        self.sessions
            .iter()
            .flat_map(|session| {
                session.generations.iter().filter(|generation| {
                    self.completion_for(&session.id, generation.number)
                        .is_some()
                })
            })
            .count()
    }

    /// The events (and so ledger entries) a finished plan has delivered: one per task,
    /// one "did finish events" per generation, one per completion.
    pub fn expected_events(&self) -> u64 {
        (self.task_count() + self.generation_count() + self.completion_count()) as u64
    }

    /// The completion a generation stores, as `(name, application payload)`: the
    /// harness's own for generated and manifest plans, the batch's for a test kit
    /// workload.
    pub fn completion_for(&self, session: &str, generation: u64) -> Option<(&str, &[u8])> {
        match &self.source {
            PlanSource::Generated { .. } | PlanSource::Manifest { .. } => {
                Some((COMPLETION_NAME, &[]))
            }
            PlanSource::Workload { completions, .. } => completions
                .iter()
                .find(|c| c.session == session && c.generation == generation)
                .map(|c| (c.name.as_str(), c.payload.as_slice())),
        }
    }

    /// The built-in origin's content seed, when the plan runs against it.
    pub fn content_seed(&self) -> Option<u64> {
        match self.source {
            PlanSource::Generated { content_seed } | PlanSource::Workload { content_seed, .. } => {
                Some(content_seed)
            }
            PlanSource::Manifest { .. } => None,
        }
    }

    /// The expected run: about how long one worker takes to finish the plan without
    /// faults, in seconds, from what the plan knows (see [`Plan::remaining_run_s`]).
    pub fn expected_run_s(&self) -> f64 {
        self.remaining_run_s(|_, _| TaskProgress::Open { bytes_done: 0 })
    }

    /// The expected run left, in seconds, given how far each task has come. Each
    /// session runs its generations one after the other, each as long as its slowest
    /// open task: a paced (dripped) download for the bytes it still lacks, Retry-After
    /// waits, retries after resets. Transfers to someone else's server count only their
    /// base cost. A lower bound: start-up, connection set-up and the writer's commits
    /// come on top.
    pub fn remaining_run_s(&self, progress: impl Fn(&str, &PlannedTask) -> TaskProgress) -> f64 {
        let mut longest_session_s: f64 = 0.0;
        let mut all_tasks_s = 0.0;
        for session in &self.sessions {
            let mut session_s = 0.0;
            for generation in &session.generations {
                let mut slowest_s: Option<f64> = None;
                for task in &generation.tasks {
                    let TaskProgress::Open { bytes_done } = progress(&session.id, task) else {
                        continue;
                    };
                    let task_s =
                        TASK_BASE_S + fault_cost_s(task, bytes_done) + self.flaky_cost_s(task);
                    all_tasks_s += task_s;
                    slowest_s = Some(slowest_s.map_or(task_s, |slowest| slowest.max(task_s)));
                }
                if let Some(slowest_s) = slowest_s {
                    session_s += slowest_s + GENERATION_BASE_S;
                }
            }
            longest_session_s = longest_session_s.max(session_s);
        }
        longest_session_s.max(all_tasks_s / CONNECTIONS_ASSUMED)
    }

    /// What waiting for the flaky origin costs a task sent to it, in seconds, on
    /// average: it finds the origin down with the down time's share of the cycle, and
    /// then waits half a down time.
    fn flaky_cost_s(&self, task: &PlannedTask) -> f64 {
        match &self.faults.flaky_origin {
            Some(flaky) if task.url.starts_with(&flaky.url) => {
                let cycle_ms = (flaky.down_ms + flaky.up_ms).max(1) as f64;
                let down_share = flaky.down_ms as f64 / cycle_ms;
                down_share * flaky.down_ms as f64 / 2000.0
            }
            _ => 0.0,
        }
    }

    /// Writes `plan.json` into `dir`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(PLAN_FILE_NAME);
        let text = serde_json::to_string_pretty(self)?;
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Reads `plan.json` from `dir`.
    ///
    /// # Errors
    /// A missing or malformed file.
    pub fn load(dir: &Path) -> anyhow::Result<Plan> {
        let path = dir.join(PLAN_FILE_NAME);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The upload files a generated plan sends (their bytes are the origin's content).
    pub fn upload_sources(&self) -> Vec<UploadSource> {
        self.tasks()
            .filter_map(
                |(_, _, task)| match (&task.kind, &task.object, task.bytes) {
                    (PlannedKind::Upload { file }, Some(object), Some(bytes)) => {
                        Some((file.clone(), object.clone(), bytes))
                    }
                    _ => None,
                },
            )
            .collect()
    }

    /// The completion payload of one generation: it names the session and the plan's
    /// generation, so the ledger shows which completion ran.
    pub fn completion_payload(session: &str, generation: u64) -> Vec<u8> {
        format!("{session}/{generation}").into_bytes()
    }

    /// The payload the worker stores for a generation's completion: the tag of
    /// [`Plan::completion_payload`] and, when the application has one, a separator and
    /// the application's payload (which its handler receives alone).
    pub fn stored_completion_payload(session: &str, generation: u64, payload: &[u8]) -> Vec<u8> {
        let mut stored = Plan::completion_payload(session, generation);
        if !payload.is_empty() {
            stored.push(PAYLOAD_SEPARATOR);
            stored.extend_from_slice(payload);
        }
        stored
    }

    /// The application's part of a stored completion payload (empty if it has none).
    pub fn application_payload(stored: &[u8]) -> &[u8] {
        match stored.iter().position(|byte| *byte == PAYLOAD_SEPARATOR) {
            Some(at) => &stored[at + 1..],
            None => &[],
        }
    }

    /// The session and plan generation a stored completion payload names (the inverse
    /// of [`Plan::completion_payload`], ignoring an application payload).
    pub fn parse_completion_payload(payload: &[u8]) -> Option<(String, u64)> {
        let tag = match payload.iter().position(|byte| *byte == PAYLOAD_SEPARATOR) {
            Some(at) => &payload[..at],
            None => payload,
        };
        let text = std::str::from_utf8(tag).ok()?;
        let (session, generation) = text.rsplit_once('/')?;
        Some((session.to_owned(), generation.parse().ok()?))
    }
}

/// How far a task has come, for [`Plan::remaining_run_s`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskProgress {
    /// Not terminal yet; a download has this many bytes in its `.part` file.
    Open {
        /// Bytes downloaded and kept so far.
        bytes_done: u64,
    },
    /// Terminal.
    Done,
}

/// What a task's fault program costs an uninterrupted run from `bytes_done` on, in
/// seconds (see `origin/fault_table.md`; the program's `times` is read from the URL).
fn fault_cost_s(task: &PlannedTask, bytes_done: u64) -> f64 {
    let Some(program) = &task.fault else {
        return 0.0;
    };
    let times = url_query(&task.url, "times")
        .and_then(|value| value.parse::<u32>().ok())
        .unwrap_or(1);
    let mut parts = program.split(':');
    let kind = parts.next().unwrap_or_default();
    let first = parts.next().and_then(|value| value.parse::<u64>().ok());
    let second = parts.next();
    match kind {
        "drip" => {
            let piece = first.unwrap_or(1).max(1);
            let interval_s = second
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0) as f64
                / 1000.0;
            let bytes_left = task.bytes.unwrap_or(0).saturating_sub(bytes_done);
            let pieces = bytes_left.div_ceil(piece) as f64;
            // A drip of every request paces the whole body; one of the first requests
            // only, about that many bodies (a resumed request is shorter).
            let bodies = if times >= TIMES_FOREVER {
                1.0
            } else {
                f64::from(times.min(3))
            };
            pieces * interval_s * bodies
        }
        "status" => {
            let retryable = matches!(first, Some(408 | 429 | 500 | 502 | 503 | 504));
            if !retryable || times >= TIMES_FOREVER {
                return 0.0;
            }
            let wait_s = match second {
                Some(value) => match value.strip_prefix("date+") {
                    Some(seconds) => seconds.parse::<f64>().unwrap_or(0.0) + DATE_ROUNDING_S,
                    None => value.parse::<f64>().unwrap_or(RETRY_BASE_S),
                },
                None => RETRY_BASE_S,
            };
            f64::from(times) * wait_s
        }
        "reset" => f64::from(times.min(TIMES_FOREVER)) * RETRY_BASE_S,
        _ => 0.0,
    }
}

/// The value of a query parameter of a URL, undecoded.
fn url_query<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

/// What [`generate`] is asked for.
#[derive(Debug, Clone)]
pub struct PlanShape {
    /// The run's seed.
    pub seed: u64,
    /// Sessions.
    pub sessions: usize,
    /// Tasks per session, over all its generations (about).
    pub tasks: usize,
    /// The origin's base URL.
    pub origin: String,
    /// The origin's content seed.
    pub content_seed: u64,
    /// The run directory (upload sources live in it).
    pub dir: PathBuf,
    /// The base URL of a second origin that the orchestrator takes down and up again
    /// ([`FlakyOrigin`]); some small tasks go to it. `None`: no such origin.
    pub flaky_origin: Option<String>,
}

/// Generates the plan of a run against the built-in origin, deterministically from the
/// seed: sizes from 0 bytes to several MiB, uploads and data tasks, about one task in
/// five with a fault program, half of the other downloads of 64 KiB or more paced (so
/// transfers span kills), some sessions with a second batch, half of those enqueued
/// while the first still runs (it joins the running generation with its own
/// completion). With a flaky origin, some small downloads and data tasks go to it, and
/// the delegate refuses some deliveries a few times; finished tasks are kept only
/// [`RETENTION_S_GENERATED`] seconds, so pruning runs during the kills.
pub fn generate(shape: &PlanShape) -> Plan {
    let mut rng = StdRng::seed_from_u64(shape.seed);
    let sessions = shape.sessions.clamp(1, SESSIONS_MAX);
    let tasks_per_session = shape.tasks.clamp(1, TASKS_PER_SESSION_MAX);
    let mut planned = Vec::with_capacity(sessions);
    for s in 0..sessions {
        let session_id = format!("s{s:03}");
        // About a third of the sessions split their work over two batches.
        let split = tasks_per_session >= 2 && rng.gen_bool(0.35);
        let first = if split {
            rng.gen_range(1..tasks_per_session)
        } else {
            tasks_per_session
        };
        let joins = split && rng.gen_bool(JOINS_SHARE);
        let mut generations = Vec::new();
        let mut index = 0;
        for (number, count) in [(1u64, first), (2, tasks_per_session - first)] {
            if count == 0 {
                continue;
            }
            let tasks = (0..count)
                .map(|_| {
                    index += 1;
                    let task = plan_task(&mut rng, shape, &session_id, number, index);
                    match &shape.flaky_origin {
                        Some(flaky) if rng.gen_bool(FLAKY_SHARE) => {
                            to_flaky_origin(task, &shape.origin, flaky)
                        }
                        _ => task,
                    }
                })
                .collect();
            generations.push(PlannedGeneration {
                number,
                tasks,
                joins: number > 1 && joins,
            });
        }
        planned.push(PlannedSession {
            id: session_id,
            generations,
        });
    }
    let faults = PlanFaults {
        refusals: Some(REFUSALS_GENERATED),
        flaky_origin: shape.flaky_origin.as_ref().map(|url| FlakyOrigin {
            url: url.clone(),
            down_ms: FLAKY_DOWN_MS,
            up_ms: FLAKY_UP_MS,
        }),
    };
    let config = PlannedConfig {
        retention_s: RETENTION_S_GENERATED,
        prune_interval_ms: PRUNE_INTERVAL_MS_GENERATED,
        ..PlannedConfig::default()
    };
    Plan {
        seed: shape.seed,
        source: PlanSource::Generated {
            content_seed: shape.content_seed,
        },
        origin: shape.origin.clone(),
        config,
        sessions: planned,
        faults,
    }
}

/// Sends a small download or data task without a fault program to the flaky origin
/// instead (same object, same content seed). Uploads, paced and large downloads stay
/// where they are, since every outage cuts the transfers in flight; so do tasks with a
/// fault program, since the flaky origin starts afresh after each outage and would
/// apply a "first N requests" program again every time.
fn to_flaky_origin(mut task: PlannedTask, origin: &str, flaky: &str) -> PlannedTask {
    let small = task.fault.is_none() && task.bytes.is_some_and(|bytes| bytes < PACED_BYTES_MIN);
    let movable = match task.kind {
        PlannedKind::Download { .. } | PlannedKind::Data => small,
        PlannedKind::Upload { .. } => false,
    };
    if movable && let Some(rest) = task.url.strip_prefix(origin) {
        task.url = format!("{flaky}{rest}");
    }
    task
}

/// A download size: mostly small, some medium, a few of several MiB, some empty.
fn download_bytes(rng: &mut StdRng) -> u64 {
    match rng.gen_range(0..100) {
        0..=7 => 0,
        8..=49 => rng.gen_range(1..64 * 1024),
        50..=89 => rng.gen_range(64 * 1024..1024 * 1024),
        _ => rng.gen_range(1024 * 1024..=DOWNLOAD_BYTES_MAX),
    }
}

fn plan_task(
    rng: &mut StdRng,
    shape: &PlanShape,
    session: &str,
    generation: u64,
    index: usize,
) -> PlannedTask {
    let id = format!("t{index:03}");
    let object = format!("{session}-{id}");
    let faulty = rng.gen_bool(0.2);
    match rng.gen_range(0..100) {
        0..=64 => {
            let bytes = download_bytes(rng);
            let sha256 = Some(origin::sha256(shape.content_seed, &object, bytes));
            let (fault, expect, expected_bytes) = if faulty {
                match rng.gen_range(0..6) {
                    // Resets part-way through the body of the first few requests: the
                    // download resumes with Range and succeeds.
                    0 => {
                        let after = rng.gen_range(0..=bytes / 2);
                        let times = rng.gen_range(1..=3);
                        (
                            Some((format!("reset:{after}"), times)),
                            Expect::Success,
                            None,
                        )
                    }
                    1 => (Some(("status:503:1".to_owned(), 2)), Expect::Success, None),
                    2 => (
                        Some(("status:429:date+1".to_owned(), 1)),
                        Expect::Success,
                        None,
                    ),
                    3 => (
                        Some(("status:404".to_owned(), 1000)),
                        Expect::Rejected,
                        None,
                    ),
                    // The request demands a length the server does not send.
                    4 => (None, Expect::Failed, Some(bytes + 1)),
                    _ => {
                        let piece = (bytes / 8).clamp(1, 256 * 1024);
                        (Some((format!("drip:{piece}:5"), 1)), Expect::Success, None)
                    }
                }
            } else if bytes >= PACED_BYTES_MIN && rng.gen_bool(0.5) {
                // Paced: every request drips, so the download spans several kills and
                // resumes across processes rather than finishing between two of them.
                let duration_ms = rng.gen_range(PACED_MS_MIN..=PACED_MS_MAX);
                let pieces = (duration_ms / PACE_INTERVAL_MS).max(1);
                let piece = (bytes / pieces).max(1024);
                let program = format!("drip:{piece}:{PACE_INTERVAL_MS}");
                (Some((program, 1000)), Expect::Success, None)
            } else {
                (None, Expect::Success, None)
            };
            let fault_text = fault.as_ref().map(|(program, _)| program.clone());
            PlannedTask {
                id,
                url: object_url(&shape.origin, &object, bytes, fault.as_ref()),
                kind: PlannedKind::Download {
                    sha256,
                    expected_bytes,
                },
                expect,
                object: Some(object),
                bytes: Some(bytes),
                fault: fault_text,
            }
        }
        65..=84 => {
            let bytes = rng.gen_range(0..512 * 1024);
            let (fault, expect) = if faulty {
                match rng.gen_range(0..3) {
                    0 => (Some(("status:404".to_owned(), 1000)), Expect::Rejected),
                    1 => (Some(("status:503:1".to_owned(), 1)), Expect::Success),
                    _ => {
                        let after = rng.gen_range(0..=bytes / 2);
                        (Some((format!("reset:{after}"), 2)), Expect::Success)
                    }
                }
            } else {
                (None, Expect::Success)
            };
            let fault_text = fault.as_ref().map(|(program, _)| program.clone());
            PlannedTask {
                id,
                url: upload_url(&shape.origin, &object, bytes, fault.as_ref()),
                kind: PlannedKind::Upload {
                    file: shape.dir.join(UPLOAD_SOURCE_DIR).join(&object),
                },
                expect,
                object: Some(object),
                bytes: Some(bytes),
                fault: fault_text,
            }
        }
        _ => {
            let bytes = rng.gen_range(0..4096);
            let (fault, expect) = if faulty {
                match rng.gen_range(0..2) {
                    0 => (Some(("status:410".to_owned(), 1000)), Expect::Rejected),
                    _ => (Some(("status:503:date+1".to_owned(), 1)), Expect::Success),
                }
            } else {
                (None, Expect::Success)
            };
            let fault_text = fault.as_ref().map(|(program, _)| program.clone());
            let _ = generation;
            PlannedTask {
                id,
                url: object_url(&shape.origin, &object, bytes, fault.as_ref()),
                kind: PlannedKind::Data,
                expect,
                object: Some(object),
                bytes: Some(bytes),
                fault: fault_text,
            }
        }
    }
}

fn fault_query(fault: Option<&(String, u32)>) -> String {
    match fault {
        None => String::new(),
        Some((program, times)) => format!("&fault={}&times={times}", program.replace(':', "%3A")),
    }
}

/// The URL of an origin object of `bytes` bytes, with an optional fault program applied
/// to its first `times` requests.
pub fn object_url(origin: &str, object: &str, bytes: u64, fault: Option<&(String, u32)>) -> String {
    format!(
        "{origin}/objects/{object}?size={bytes}{}",
        fault_query(fault)
    )
}

/// The URL an upload of object `object` (`bytes` bytes) is sent to.
pub fn upload_url(origin: &str, object: &str, bytes: u64, fault: Option<&(String, u32)>) -> String {
    format!(
        "{origin}/uploads/{object}?size={bytes}{}",
        fault_query(fault)
    )
}

/// Writes the upload source files of a generated plan (the origin's content, which the
/// origin checks when it receives them).
///
/// # Errors
/// I/O errors.
pub fn write_upload_sources(plan: &Plan) -> anyhow::Result<()> {
    let Some(content_seed) = plan.content_seed() else {
        return Ok(());
    };
    for (file, object, bytes) in plan.upload_sources() {
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let length = usize::try_from(bytes).context("upload size")?;
        let mut buffer = vec![0; length];
        origin::content(content_seed, &object, 0, &mut buffer);
        fs::write(&file, &buffer).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(seed: u64) -> PlanShape {
        PlanShape {
            seed,
            sessions: 16,
            tasks: 12,
            origin: "http://127.0.0.1:1".into(),
            content_seed: 9,
            dir: PathBuf::from("/tmp/run"),
            flaky_origin: Some("http://127.0.0.1:2".into()),
        }
    }

    /// The same seed gives the same plan, another seed another one, and the JSON form
    /// reads back unchanged.
    #[test]
    fn plans_are_deterministic_and_round_trip() {
        let a = generate(&shape(1));
        assert_eq!(a, generate(&shape(1)));
        assert_ne!(a, generate(&shape(2)));
        assert_eq!(a.task_count(), 16 * 12);
        let text = serde_json::to_string(&a).expect("serializable");
        let back: Plan = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, a);
    }

    /// Completion payloads name their session and generation and parse back.
    #[test]
    fn completion_payload_round_trip() {
        let payload = Plan::completion_payload("s001", 2);
        assert_eq!(
            Plan::parse_completion_payload(&payload),
            Some(("s001".to_owned(), 2))
        );
        assert_eq!(Plan::parse_completion_payload(b"garbage"), None);
        let stored = Plan::stored_completion_payload("s001", 2, b"batch 7");
        assert_eq!(
            Plan::parse_completion_payload(&stored),
            Some(("s001".to_owned(), 2))
        );
        assert_eq!(Plan::application_payload(&stored), b"batch 7");
        assert_eq!(Plan::application_payload(&payload), b"");
    }

    /// The expected run follows the paced downloads: a plan's estimate is at least its
    /// slowest drip, and grows with the drips.
    #[test]
    fn expected_run_follows_the_drips() {
        let plan = generate(&shape(3));
        let slowest_drip_s = plan
            .tasks()
            .map(|(_, _, task)| fault_cost_s(task, 0))
            .fold(0.0, f64::max);
        assert!(slowest_drip_s >= PACED_MS_MIN as f64 / 1000.0 * 0.5);
        assert!(plan.expected_run_s() >= slowest_drip_s);
        let task = PlannedTask {
            id: "t".into(),
            url: "http://h/objects/x?size=1000&fault=drip%3A100%3A10&times=1000".into(),
            kind: PlannedKind::Data,
            expect: Expect::Success,
            object: None,
            bytes: Some(1000),
            fault: Some("drip:100:10".into()),
        };
        assert!((fault_cost_s(&task, 0) - 0.1).abs() < 1e-9);
        assert!((fault_cost_s(&task, 600) - 0.04).abs() < 1e-9);
        let done = plan.remaining_run_s(|_, _| TaskProgress::Done);
        assert!(done.abs() < 1e-9);
    }
}
