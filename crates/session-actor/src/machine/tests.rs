//! Unit tests of single transitions over hand-built records.

use std::collections::BTreeMap;

use session_store::{
    EventBody, FailureReason, Outcome, ResponseSummary, SessionConfig, SessionId, SessionState,
    StoredCompletion, TaskId, TaskKind, TaskRecord, TaskState,
};

use super::*;

fn id(s: &str) -> TaskId {
    TaskId::new(s).expect("valid task id")
}

fn context(now_ms: u64) -> Context {
    Context {
        now_ms,
        jitter_permille: 500,
    }
}

fn response() -> ResponseSummary {
    ResponseSummary {
        status: 200,
        headers: vec![],
        body: vec![],
        file: Some("x".into()),
        bytes: 1,
    }
}

/// A tiny driver that keeps the records the way the store would.
struct Driver {
    session: Option<SessionRecord>,
    tasks: BTreeMap<TaskId, TaskRecord>,
    events: Vec<EventRecord>,
    now_ms: u64,
}

impl Driver {
    fn new() -> Self {
        let mut driver = Driver {
            session: None,
            tasks: BTreeMap::new(),
            events: vec![],
            now_ms: 1_000,
        };
        driver
            .apply(Input::Open {
                id: SessionId::new("s").expect("valid"),
                config: SessionConfig::default(),
            })
            .expect("open");
        driver
    }

    fn apply(&mut self, input: Input) -> Result<Transition, MachineError> {
        let records = Records {
            session: self.session.clone(),
            tasks: self.tasks.clone(),
        };
        let transition = apply(records, input, &context(self.now_ms))?;
        self.session = Some(transition.session.clone());
        for task in &transition.tasks {
            self.tasks.insert(task.id.clone(), task.clone());
        }
        self.events.extend(transition.events.iter().cloned());
        Ok(transition)
    }

    fn session(&self) -> &SessionRecord {
        self.session.as_ref().expect("opened")
    }

    fn enqueue(&mut self, task: &str) -> Transition {
        self.apply(Input::Enqueue {
            task: id(task),
            kind: TaskKind::Download,
            request: task.as_bytes().to_vec(),
            replace: false,
        })
        .expect("enqueue")
    }

    fn start(&mut self, task: &str) -> Transition {
        self.apply(Input::Start { task: id(task) }).expect("start")
    }

    fn result(&mut self, task: &str, attempt: u32, result: TransferResult) -> Transition {
        self.apply(Input::Result {
            task: id(task),
            attempt,
            result,
        })
        .expect("result")
    }

    fn deliver_next(&mut self) -> Result<Transition, MachineError> {
        let seq = self.session().delivered_seq;
        let event = self.events[seq as usize].clone();
        self.apply(Input::Deliver { event })
    }
}

/// A generation runs queued -> running -> awaiting-events -> finished, ends with "did
/// finish events" then the stored completion, and new work opens the next generation.
#[test]
fn a_generation_runs_to_finished_and_the_next_opens() {
    let mut d = Driver::new();
    assert_eq!(d.session().generation, 0);
    d.enqueue("a");
    assert_eq!(d.session().state, SessionState::Queued);
    assert_eq!(d.session().generation, 1);
    let completion = StoredCompletion {
        name: "done".into(),
        payload: b"1".to_vec(),
    };
    d.apply(Input::SetCompletion {
        generation: 1,
        completion: completion.clone(),
    })
    .expect("set completion");
    let t = d.start("a");
    assert!(t.actions.iter().any(|action| matches!(action,
        Action::Transfer { task, attempt: 1, .. } if task == &id("a"))));
    assert_eq!(d.session().state, SessionState::Running);
    d.result("a", 1, TransferResult::Success(response()));
    assert_eq!(d.session().state, SessionState::AwaitingEvents);
    let bodies: Vec<_> = d.events.iter().map(|e| e.body.clone()).collect();
    assert!(matches!(bodies[0], EventBody::TaskCompleted { .. }));
    assert_eq!(bodies[1], EventBody::DidFinishEvents);
    assert_eq!(bodies[2], EventBody::Completion(completion.clone()));
    let t = d.deliver_next().expect("deliver 0");
    assert!(t.actions.contains(&Action::RemoveFile { file: "x".into() }));
    d.deliver_next().expect("deliver 1");
    assert_eq!(d.session().state, SessionState::AwaitingEvents);
    d.deliver_next().expect("deliver 2");
    assert_eq!(d.session().state, SessionState::Finished);
    // Re-issuing the same completion after it ran changes nothing.
    let t = d
        .apply(Input::SetCompletion {
            generation: 1,
            completion,
        })
        .expect("re-issue");
    assert!(t.events.is_empty());
    d.enqueue("b");
    assert_eq!(d.session().generation, 2);
    assert_eq!(d.tasks[&id("b")].generation, 2);
}

/// Re-issuing a known task reconnects (nothing written), a different description is a
/// conflict, and a completed task is never scheduled again.
#[test]
fn reissue_reconnects_and_conflicts() {
    let mut d = Driver::new();
    d.enqueue("a");
    let before = d.session().clone();
    let t = d.enqueue("a");
    assert!(t.is_noop(&before));
    let conflict = d.apply(Input::Enqueue {
        task: id("a"),
        kind: TaskKind::Download,
        replace: false,
        request: b"other".to_vec(),
    });
    assert_eq!(
        conflict,
        Err(MachineError::TaskConflict {
            task: id("a"),
            fields: vec![]
        })
    );
    d.start("a");
    d.result("a", 1, TransferResult::Success(response()));
    let t = d.enqueue("a");
    assert_eq!(
        t.actions.first(),
        Some(&Action::TaskTerminal { task: id("a") })
    );
    assert!(
        !t.actions
            .iter()
            .any(|a| matches!(a, Action::Schedule { .. }))
    );
}

/// A retry waits for the later of Retry-After and the backoff; attempts run out into
/// `RetryExhausted`; a stale result is refused.
#[test]
fn retries_honour_retry_after_and_run_out() {
    let mut d = Driver::new();
    d.enqueue("a");
    d.start("a");
    let far = d.now_ms + 3_600_000;
    d.result(
        "a",
        1,
        TransferResult::Retry {
            retry_after_ms: Some(far),
            message: "503".into(),
        },
    );
    assert_eq!(
        d.tasks[&id("a")].state,
        TaskState::Pending {
            attempt: 1,
            not_before_ms: far
        }
    );
    // Starting early re-schedules instead of running.
    let t = d.start("a");
    assert_eq!(
        t.actions,
        vec![Action::Schedule {
            task: id("a"),
            not_before_ms: far
        }]
    );
    let stale = d.apply(Input::Result {
        task: id("a"),
        attempt: 1,
        result: TransferResult::Success(response()),
    });
    assert!(matches!(stale, Err(MachineError::StaleResult { .. })));
    for attempt in 2..=SessionConfig::default().attempts_max {
        d.now_ms += 10_000_000;
        d.start("a");
        d.result(
            "a",
            attempt,
            TransferResult::Retry {
                retry_after_ms: None,
                message: "reset".into(),
            },
        );
    }
    match &d.tasks[&id("a")].state {
        TaskState::Completed {
            outcome: Outcome::Failed(failure),
            ..
        } => assert_eq!(failure.reason, FailureReason::RetryExhausted),
        other => panic!("expected retry exhausted, got {other:?}"),
    }
}

/// A restart puts a running task back to pending without counting the lost attempt.
#[test]
fn restart_does_not_count_the_lost_attempt() {
    let mut d = Driver::new();
    d.enqueue("a");
    d.start("a");
    let t = d.apply(Input::Restart).expect("restart");
    assert_eq!(
        d.tasks[&id("a")].state,
        TaskState::Pending {
            attempt: 0,
            not_before_ms: d.now_ms
        }
    );
    assert_eq!(d.session().state, SessionState::Queued);
    assert!(
        t.actions
            .iter()
            .any(|a| matches!(a, Action::Schedule { .. }))
    );
}

/// Deliveries must come in sequence order.
#[test]
fn deliveries_are_in_order() {
    let mut d = Driver::new();
    d.enqueue("a");
    d.apply(Input::Cancel { task: id("a") }).expect("cancel");
    let second = d.events[1].clone();
    assert_eq!(
        d.apply(Input::Deliver { event: second }),
        Err(MachineError::OutOfOrderDelivery {
            expected: 0,
            got: 1
        })
    );
    d.deliver_next().expect("first");
    d.deliver_next().expect("second");
    assert_eq!(d.session().state, SessionState::Finished);
    let again = d.events[1].clone();
    assert!(matches!(
        d.apply(Input::Deliver { event: again }),
        Err(MachineError::OutOfOrderDelivery { .. })
    ));
}

/// The resource deadline fails a task that has not finished in time.
#[test]
fn deadline_fails_the_task() {
    let mut d = Driver::new();
    d.enqueue("a");
    d.start("a");
    d.now_ms += SessionConfig::default().deadline_s * 1000;
    let t = d.apply(Input::Expire { task: id("a") }).expect("expire");
    assert!(t.actions.contains(&Action::AbortTransfer { task: id("a") }));
    assert!(matches!(
        d.tasks[&id("a")].state,
        TaskState::Completed {
            outcome: Outcome::Failed(_),
            ..
        }
    ));
    assert_eq!(d.session().state, SessionState::AwaitingEvents);
}

/// A completion set after the generation's tasks ended still runs once, after
/// "did finish events"; one for an unopened generation is refused.
#[test]
fn late_completion_is_appended_once() {
    let mut d = Driver::new();
    d.enqueue("a");
    d.apply(Input::Cancel { task: id("a") }).expect("cancel");
    let completion = StoredCompletion {
        name: "done".into(),
        payload: vec![],
    };
    assert!(matches!(
        d.apply(Input::SetCompletion {
            generation: 2,
            completion: completion.clone()
        }),
        Err(MachineError::UnknownGeneration { .. })
    ));
    d.apply(Input::SetCompletion {
        generation: 1,
        completion: completion.clone(),
    })
    .expect("set");
    d.apply(Input::SetCompletion {
        generation: 1,
        completion,
    })
    .expect("again");
    let completions = d
        .events
        .iter()
        .filter(|e| matches!(e.body, EventBody::Completion(_)))
        .count();
    assert_eq!(completions, 1);
    assert_eq!(d.events[1].body, EventBody::DidFinishEvents);
}

/// Backoff doubles, is capped, and jitter keeps it within [delay/2, delay).
#[test]
fn backoff_grows_and_is_capped() {
    let config = SessionConfig::default();
    assert_eq!(retry_delay_ms(&config, 1, 0), 250);
    assert_eq!(retry_delay_ms(&config, 2, 0), 500);
    assert!(retry_delay_ms(&config, 60, 999) < config.retry_delay_ms_max);
    assert!(retry_delay_ms(&config, 60, 0) >= config.retry_delay_ms_max / 2);
}
