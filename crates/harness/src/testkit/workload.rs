//! What a crash test runs: sessions, each a sequence of batches of tasks, against the
//! built-in origin (with its fault programs) or against URLs of your own.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use session_store::{IdentifierKind, validate_identifier};

use super::Error;
use crate::crash::plan::{
    self, Expect, Plan, PlanSource, PlannedCompletion, PlannedConfig, PlannedGeneration,
    PlannedKind, PlannedSession, PlannedTask, UPLOAD_SOURCE_DIR,
};
use crate::origin;

/// The most sessions a workload may have.
pub const WORKLOAD_SESSIONS_MAX: usize = plan::SESSIONS_MAX;
/// The most tasks a session of a workload may have, over all its batches.
pub const WORKLOAD_TASKS_PER_SESSION_MAX: usize = plan::TASKS_PER_SESSION_MAX;

/// The sessions a crash test runs. Each session's batches are enqueued one after the
/// other, as [`Session::enqueue_batch`](session_actor::Session::enqueue_batch) calls:
/// the next once the previous one's generation ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// The sessions, run side by side.
    pub sessions: Vec<SessionWork>,
}

/// One session of a workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionWork {
    /// The session's identifier.
    pub id: String,
    /// Its batches, in order; each opens a generation of the session.
    pub batches: Vec<BatchWork>,
}

/// One batch: tasks enqueued together, and the completion to store with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchWork {
    /// The tasks (at least one).
    pub tasks: Vec<TaskWork>,
    /// The completion handler to run once the batch's generation ended, by the name it
    /// was registered with ([`CrashTest::completion`](super::CrashTest::completion)).
    pub completion: Option<CompletionWork>,
}

/// A stored completion: a registered handler's name and the payload it receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionWork {
    /// The handler's name.
    pub name: String,
    /// The payload its [`CompletionCall`](session_actor::CompletionCall) carries.
    pub payload: Vec<u8>,
}

/// One task: its identifier, its transfer and the outcome it must end with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskWork {
    /// The task's identifier (unique in its session).
    pub id: String,
    /// What it transfers.
    pub transfer: Transfer,
    /// The outcome the verifier expects.
    pub expect: Expect,
}

/// A fault program of the built-in origin (see `session_harness::origin`), applied to
/// the first `times` requests of the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginFault {
    /// The program: `reset:N`, `status:CODE[:RETRY-AFTER]`, `drip:BYTES:MS`, ...
    pub program: String,
    /// How many requests it applies to (1000 or more: all).
    pub times: u32,
}

/// What a task transfers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Transfer {
    /// A download of a built-in origin object of `bytes` bytes (its content is a
    /// function of the case's seed and the object's name, and the verifier checks it).
    Download {
        /// The object's size.
        bytes: u64,
        /// A fault program of the origin.
        fault: Option<OriginFault>,
    },
    /// An upload of `bytes` bytes of origin content to the built-in origin, which checks
    /// them and deduplicates by idempotency key.
    Upload {
        /// The upload's size.
        bytes: u64,
        /// A fault program of the origin.
        fault: Option<OriginFault>,
    },
    /// A small GET kept in memory, from the built-in origin.
    Data {
        /// The body's size.
        bytes: u64,
        /// A fault program of the origin.
        fault: Option<OriginFault>,
    },
    /// A download from a URL of your own.
    DownloadUrl {
        /// The URL.
        url: String,
        /// The SHA-256 (hexadecimal) the delivered file must have, if known.
        sha256: Option<String>,
    },
    /// An upload of a file of yours to a URL of your own.
    UploadUrl {
        /// The URL.
        url: String,
        /// The file sent.
        file: PathBuf,
    },
    /// A GET of a URL of your own, kept in memory.
    DataUrl {
        /// The URL.
        url: String,
    },
}

impl TaskWork {
    /// A download of an origin object of `bytes` bytes that must succeed.
    pub fn download(id: impl Into<String>, bytes: u64) -> TaskWork {
        TaskWork {
            id: id.into(),
            transfer: Transfer::Download { bytes, fault: None },
            expect: Expect::Success,
        }
    }

    /// An upload of `bytes` bytes to the origin that must succeed.
    pub fn upload(id: impl Into<String>, bytes: u64) -> TaskWork {
        TaskWork {
            id: id.into(),
            transfer: Transfer::Upload { bytes, fault: None },
            expect: Expect::Success,
        }
    }

    /// A data task of `bytes` bytes from the origin that must succeed.
    pub fn data(id: impl Into<String>, bytes: u64) -> TaskWork {
        TaskWork {
            id: id.into(),
            transfer: Transfer::Data { bytes, fault: None },
            expect: Expect::Success,
        }
    }

    /// A task with any transfer and expectation.
    pub fn new(id: impl Into<String>, transfer: Transfer, expect: Expect) -> TaskWork {
        TaskWork {
            id: id.into(),
            transfer,
            expect,
        }
    }

    /// Applies an origin fault program to the first `times` requests (origin transfers
    /// only; a URL of your own is left as it is).
    pub fn with_fault(mut self, program: impl Into<String>, times: u32) -> TaskWork {
        let fault = Some(OriginFault {
            program: program.into(),
            times,
        });
        match &mut self.transfer {
            Transfer::Download { fault: slot, .. }
            | Transfer::Upload { fault: slot, .. }
            | Transfer::Data { fault: slot, .. } => *slot = fault,
            Transfer::DownloadUrl { .. }
            | Transfer::UploadUrl { .. }
            | Transfer::DataUrl { .. } => {}
        }
        self
    }

    /// Sets the outcome the task must end with.
    pub fn expecting(mut self, expect: Expect) -> TaskWork {
        self.expect = expect;
        self
    }
}

impl BatchWork {
    /// A batch without a completion.
    pub fn new(tasks: Vec<TaskWork>) -> BatchWork {
        BatchWork {
            tasks,
            completion: None,
        }
    }

    /// Stores the completion handler `name` with `payload` for the batch.
    pub fn with_completion(mut self, name: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        self.completion = Some(CompletionWork {
            name: name.into(),
            payload: payload.into(),
        });
        self
    }
}

impl SessionWork {
    /// A session with its batches.
    pub fn new(id: impl Into<String>, batches: Vec<BatchWork>) -> SessionWork {
        SessionWork {
            id: id.into(),
            batches,
        }
    }
}

impl Workload {
    /// A workload of these sessions.
    pub fn new(sessions: Vec<SessionWork>) -> Workload {
        Workload { sessions }
    }

    /// Every task, with its session and batch number (from 1).
    pub fn tasks(&self) -> impl Iterator<Item = (&SessionWork, u64, &TaskWork)> {
        self.sessions.iter().flat_map(|session| {
            session
                .batches
                .iter()
                .zip(1u64..)
                .flat_map(move |(batch, number)| {
                    batch.tasks.iter().map(move |task| (session, number, task))
                })
        })
    }

    /// Checks identifiers, sizes and completion names before anything runs.
    ///
    /// # Errors
    /// [`Error::InvalidWorkload`] naming the session, batch or task at fault.
    pub fn validate(&self, completions: &[String]) -> Result<(), Error> {
        let invalid = |reason: String| Err(Error::InvalidWorkload { reason });
        if self.sessions.is_empty() || self.sessions.len() > WORKLOAD_SESSIONS_MAX {
            return invalid(format!(
                "a workload needs 1 to {WORKLOAD_SESSIONS_MAX} sessions, not {}",
                self.sessions.len()
            ));
        }
        let mut sessions = BTreeSet::new();
        for session in &self.sessions {
            validate_identifier(IdentifierKind::Session, &session.id).map_err(|error| {
                Error::InvalidWorkload {
                    reason: format!("session {:?}: {error}", session.id),
                }
            })?;
            if !sessions.insert(session.id.as_str()) {
                return invalid(format!("session {} appears twice", session.id));
            }
            session.validate(completions)?;
        }
        Ok(())
    }

    /// The plan of a run of this workload: URLs on the origin at `origin`, objects
    /// named `<session>-<task>` with content from `content_seed`, upload sources in
    /// `dir`.
    pub(crate) fn plan(&self, seed: u64, origin: &str, content_seed: u64, dir: &Path) -> Plan {
        let mut completions = Vec::new();
        let sessions = self
            .sessions
            .iter()
            .map(|session| {
                let generations = session
                    .batches
                    .iter()
                    .zip(1u64..)
                    .map(|(batch, number)| {
                        if let Some(completion) = &batch.completion {
                            completions.push(PlannedCompletion {
                                session: session.id.clone(),
                                generation: number,
                                name: completion.name.clone(),
                                payload: completion.payload.clone(),
                            });
                        }
                        let tasks = batch
                            .tasks
                            .iter()
                            .map(|task| planned_task(task, &session.id, origin, content_seed, dir))
                            .collect();
                        PlannedGeneration {
                            number,
                            tasks,
                            joins: false,
                        }
                    })
                    .collect();
                PlannedSession {
                    id: session.id.clone(),
                    generations,
                }
            })
            .collect();
        Plan {
            seed,
            source: PlanSource::Workload {
                content_seed,
                completions,
            },
            origin: origin.to_owned(),
            config: PlannedConfig::default(),
            sessions,
            faults: crate::crash::plan::PlanFaults::default(),
        }
    }

    /// Its size for a person: `2 sessions, 3 batches, 5 tasks`.
    pub fn counts(&self) -> String {
        let batches: usize = self.sessions.iter().map(|s| s.batches.len()).sum();
        format!(
            "{} sessions, {batches} batches, {} tasks",
            self.sessions.len(),
            self.tasks().count()
        )
    }

    /// One line for a person: `2 sessions, .. tasks: s0 [t0 download 1200 B drip:75:10x1000, ..]`.
    pub fn describe(&self) -> String {
        let mut text = format!("{}:", self.counts());
        for session in &self.sessions {
            let _ = write!(text, " {}", session.id);
            for batch in &session.batches {
                let described: Vec<String> = batch.tasks.iter().map(TaskWork::describe).collect();
                let completion = batch
                    .completion
                    .as_ref()
                    .map(|completion| format!(" -> {}", completion.name))
                    .unwrap_or_default();
                let _ = write!(text, " [{}{completion}]", described.join(", "));
            }
        }
        text
    }
}

impl SessionWork {
    fn validate(&self, completions: &[String]) -> Result<(), Error> {
        let invalid = |reason: String| Err(Error::InvalidWorkload { reason });
        let mut tasks = BTreeSet::new();
        for (batch, number) in self.batches.iter().zip(1..) {
            if batch.tasks.is_empty() {
                return invalid(format!("session {} batch {number} has no tasks", self.id));
            }
            if let Some(completion) = &batch.completion
                && !completions.contains(&completion.name)
            {
                return invalid(format!(
                    "session {} batch {number} stores completion {:?}, which the crash test does not register (it registers {completions:?})",
                    self.id, completion.name
                ));
            }
            for task in &batch.tasks {
                validate_identifier(IdentifierKind::Task, &task.id).map_err(|error| {
                    Error::InvalidWorkload {
                        reason: format!("task {}/{:?}: {error}", self.id, task.id),
                    }
                })?;
                if !tasks.insert(task.id.as_str()) {
                    return invalid(format!("task {}/{} appears twice", self.id, task.id));
                }
            }
        }
        if self.batches.is_empty() || tasks.len() > WORKLOAD_TASKS_PER_SESSION_MAX {
            return invalid(format!(
                "session {} needs 1 to {WORKLOAD_TASKS_PER_SESSION_MAX} tasks in at least one batch",
                self.id
            ));
        }
        Ok(())
    }
}

impl TaskWork {
    fn describe(&self) -> String {
        let (kind, size, fault) = match &self.transfer {
            Transfer::Download { bytes, fault } => ("download", format!(" {bytes} B"), fault),
            Transfer::Upload { bytes, fault } => ("upload", format!(" {bytes} B"), fault),
            Transfer::Data { bytes, fault } => ("data", format!(" {bytes} B"), fault),
            Transfer::DownloadUrl { url, .. } => ("download", format!(" {url}"), &None),
            Transfer::UploadUrl { url, .. } => ("upload", format!(" {url}"), &None),
            Transfer::DataUrl { url } => ("data", format!(" {url}"), &None),
        };
        let fault = fault
            .as_ref()
            .map(|fault| format!(" {}x{}", fault.program, fault.times))
            .unwrap_or_default();
        let expect = match self.expect {
            Expect::Success => String::new(),
            other => format!(" (expect {})", other.name()),
        };
        format!("{} {kind}{size}{fault}{expect}", self.id)
    }
}

fn planned_task(
    task: &TaskWork,
    session: &str,
    origin: &str,
    content_seed: u64,
    dir: &Path,
) -> PlannedTask {
    let object = format!("{session}-{}", task.id);
    let program = |fault: &Option<OriginFault>| {
        fault
            .as_ref()
            .map(|fault| (fault.program.clone(), fault.times))
    };
    let (url, kind, object, bytes, fault) = match &task.transfer {
        Transfer::Download { bytes, fault } => (
            plan::object_url(origin, &object, *bytes, program(fault).as_ref()),
            PlannedKind::Download {
                sha256: Some(origin::sha256(content_seed, &object, *bytes)),
                expected_bytes: None,
            },
            Some(object),
            Some(*bytes),
            program(fault),
        ),
        Transfer::Upload { bytes, fault } => (
            plan::upload_url(origin, &object, *bytes, program(fault).as_ref()),
            PlannedKind::Upload {
                file: dir.join(UPLOAD_SOURCE_DIR).join(&object),
            },
            Some(object),
            Some(*bytes),
            program(fault),
        ),
        Transfer::Data { bytes, fault } => (
            plan::object_url(origin, &object, *bytes, program(fault).as_ref()),
            PlannedKind::Data,
            Some(object),
            Some(*bytes),
            program(fault),
        ),
        Transfer::DownloadUrl { url, sha256 } => (
            url.clone(),
            PlannedKind::Download {
                sha256: sha256.as_ref().map(|hex| hex.to_ascii_lowercase()),
                expected_bytes: None,
            },
            None,
            None,
            None,
        ),
        Transfer::UploadUrl { url, file } => (
            url.clone(),
            PlannedKind::Upload { file: file.clone() },
            None,
            None,
            None,
        ),
        Transfer::DataUrl { url } => (url.clone(), PlannedKind::Data, None, None, None),
    };
    PlannedTask {
        id: task.id.clone(),
        url,
        kind,
        expect: task.expect,
        object,
        bytes,
        fault: fault.map(|(program, _)| program),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload::new(vec![SessionWork::new(
            "orders",
            vec![
                BatchWork::new(vec![
                    TaskWork::download("a", 1000).with_fault("drip:100:10", 1000),
                    TaskWork::data("b", 10)
                        .with_fault("status:404", 1000)
                        .expecting(Expect::Rejected),
                ])
                .with_completion("done", b"first".to_vec()),
                BatchWork::new(vec![TaskWork::upload("c", 50)]),
            ],
        )])
    }

    /// A workload becomes a plan with origin URLs, checksums, generations and the
    /// completions its batches store (none for a batch without one).
    #[test]
    fn workloads_become_plans() {
        let plan = workload().plan(9, "http://127.0.0.1:1", 5, Path::new("/run"));
        assert_eq!(plan.task_count(), 3);
        assert_eq!(plan.generation_count(), 2);
        assert_eq!(plan.completion_count(), 1);
        assert_eq!(plan.expected_events(), 3 + 2 + 1);
        assert_eq!(
            plan.completion_for("orders", 1),
            Some(("done", &b"first"[..]))
        );
        assert_eq!(plan.completion_for("orders", 2), None);
        let first = &plan.sessions[0].generations[0].tasks[0];
        assert_eq!(
            first.url,
            "http://127.0.0.1:1/objects/orders-a?size=1000&fault=drip%3A100%3A10&times=1000"
        );
        assert!(plan.expected_run_s() >= 0.1);
        match &plan.sessions[0].generations[1].tasks[0].kind {
            PlannedKind::Upload { file } => {
                assert_eq!(file, Path::new("/run/upload-sources/orders-c"))
            }
            other => panic!("expected an upload, got {other:?}"),
        }
    }

    /// Duplicate identifiers, empty batches and unregistered completions are refused
    /// with the place named.
    #[test]
    fn bad_workloads_are_refused() {
        let names = vec!["done".to_owned()];
        assert!(workload().validate(&names).is_ok());
        let unregistered = workload()
            .validate(&[])
            .expect_err("unregistered completion");
        assert!(
            unregistered.to_string().contains("\"done\""),
            "{unregistered}"
        );
        let mut twice = workload();
        twice.sessions[0].batches[1].tasks[0].id = "a".into();
        let error = twice.validate(&names).expect_err("duplicate task");
        assert!(
            error.to_string().contains("orders/a appears twice"),
            "{error}"
        );
        let mut empty = workload();
        empty.sessions[0].batches[1].tasks.clear();
        assert!(empty.validate(&names).is_err());
        let mut bad_id = workload();
        bad_id.sessions[0].id = "../x".into();
        assert!(bad_id.validate(&names).is_err());
    }
}
