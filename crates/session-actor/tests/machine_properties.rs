//! Property test of the pure state machine: random input sequences are applied to a
//! model of the store (records written only when a transition is accepted, like a
//! committed unit), and after every step the guarantees (crate documentation) that the
//! machine alone is responsible for are checked against the whole history.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use session_actor::machine::{Context, Input, MachineError, Records, TransferResult, apply};
use session_store::{
    EventBody, EventRecord, Failure, FailureReason, ResponseSummary, SessionConfig, SessionId,
    SessionRecord, SessionState, StoredCompletion, TaskId, TaskKind, TaskRecord, TaskState,
};

const TASKS: usize = 6;

#[derive(Debug, Clone)]
enum Op {
    Open,
    Enqueue {
        task: usize,
        variant: u8,
        replace: bool,
    },
    Start {
        task: usize,
    },
    Result {
        task: usize,
        attempt_skew: i8,
        result: u8,
    },
    Expire {
        task: usize,
    },
    Cancel {
        task: usize,
    },
    Invalidate,
    DeliverNext,
    DeliverAny {
        seq: u8,
    },
    SetCompletion {
        generation_skew: i8,
        name: u8,
    },
    EmptyGeneration {
        name: u8,
    },
    Restart,
    /// The next delivery fails (the delegate refused).
    DeliveryFails,
    Forget {
        task: usize,
    },
    Advance {
        ms: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Open),
        4 => (0..TASKS, 0u8..3, proptest::bool::weighted(0.25))
            .prop_map(|(task, variant, replace)| Op::Enqueue { task, variant, replace }),
        4 => (0..TASKS).prop_map(|task| Op::Start { task }),
        5 => (0..TASKS, -1i8..=1, 0u8..7)
            .prop_map(|(task, attempt_skew, result)| Op::Result { task, attempt_skew, result }),
        1 => (0..TASKS).prop_map(|task| Op::Expire { task }),
        1 => (0..TASKS).prop_map(|task| Op::Cancel { task }),
        1 => Just(Op::Invalidate),
        5 => Just(Op::DeliverNext),
        1 => any::<u8>().prop_map(|seq| Op::DeliverAny { seq }),
        3 => (-1i8..=1, 0u8..3)
            .prop_map(|(generation_skew, name)| Op::SetCompletion { generation_skew, name }),
        1 => (0u8..3).prop_map(|name| Op::EmptyGeneration { name }),
        2 => Just(Op::Restart),
        2 => Just(Op::DeliveryFails),
        1 => (0..TASKS).prop_map(|task| Op::Forget { task }),
        2 => (0u32..200_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn completion(name: u8) -> StoredCompletion {
    StoredCompletion {
        name: format!("c{name}"),
        payload: vec![name],
    }
}

fn task_id(index: usize) -> TaskId {
    TaskId::new(format!("t{index}")).expect("valid")
}

/// The store as the machine's caller keeps it.
#[derive(Default)]
struct Model {
    session: Option<SessionRecord>,
    tasks: BTreeMap<TaskId, TaskRecord>,
    /// Every event ever appended, by sequence number (the outbox is never rewritten).
    events: Vec<EventRecord>,
    /// The sequence numbers delivered, in delivery order.
    delivered: Vec<u64>,
    /// The sequence numbers moved to the dead-letter list, in order.
    dead_lettered: Vec<u64>,
    /// Events of tasks the application forgot, by identifier: a task enqueued again under
    /// that identifier starts its own count after them.
    forgotten: BTreeMap<TaskId, usize>,
    /// Whether the session dead-letters after two failed deliveries.
    dead_letter_policy: bool,
    /// Every completion the machine accepted, by the generation it was accepted for.
    accepted_completions: BTreeMap<u64, BTreeSet<(String, Vec<u8>)>>,
    now_ms: u64,
    jitter: u16,
    generation_high: u64,
}

impl Model {
    fn input(&self, op: &Op) -> Option<Input> {
        let session = self.session.as_ref();
        // Odd models dead-letter an event after two failed attempts; even ones wait.
        let delivery_policy = if self.dead_letter_policy {
            session_store::DeliveryPolicy::DeadLetter { attempts_max: 2 }
        } else {
            session_store::DeliveryPolicy::Wait
        };
        let config = SessionConfig {
            delivery_policy,
            attempts_max: 3,
            retry_delay_ms_base: 100,
            retry_delay_ms_max: 1_000,
            deadline_s: 600,
            ..SessionConfig::default()
        };
        Some(match op {
            Op::Open => Input::Open {
                id: SessionId::new("s").expect("valid"),
                config,
            },
            Op::Enqueue {
                task,
                variant,
                replace,
            } => Input::Enqueue {
                replace: *replace,
                task: task_id(*task),
                kind: if *task % 3 == 0 {
                    TaskKind::Upload
                } else {
                    TaskKind::Download
                },
                request: vec![*variant % 2],
            },
            Op::Start { task } => Input::Start {
                task: task_id(*task),
            },
            Op::Result {
                task,
                attempt_skew,
                result,
            } => {
                let attempt = match self.tasks.get(&task_id(*task)).map(|t| &t.state) {
                    Some(TaskState::Running { attempt }) => *attempt,
                    _ => 1,
                };
                let attempt = (i64::from(attempt) + i64::from(*attempt_skew)).max(0) as u32;
                let response = ResponseSummary {
                    status: 200,
                    headers: vec![],
                    body: vec![],
                    file: Some(format!("t{task}")),
                    bytes: 3,
                };
                let result = match result {
                    0 => TransferResult::Success(response),
                    1 => TransferResult::Rejected(ResponseSummary {
                        status: 404,
                        file: None,
                        ..response
                    }),
                    2 => TransferResult::Failed(Failure {
                        reason: FailureReason::Transfer,
                        message: "tls".into(),
                        attempts: 0,
                    }),
                    3 => TransferResult::Retry {
                        retry_after_ms: Some(self.now_ms + 50_000),
                        message: "503".into(),
                    },
                    4 => TransferResult::Retry {
                        retry_after_ms: None,
                        message: "reset".into(),
                    },
                    5 => TransferResult::Wait {
                        reason: session_store::WaitReason::Connectivity,
                        message: "refused".into(),
                        retry_after_ms: None,
                    },
                    _ => TransferResult::Wait {
                        reason: session_store::WaitReason::Storage,
                        message: "no room".into(),
                        retry_after_ms: Some(self.now_ms + 5_000),
                    },
                };
                Input::Result {
                    task: task_id(*task),
                    attempt,
                    result,
                }
            }
            Op::Expire { task } => Input::Expire {
                task: task_id(*task),
            },
            Op::Cancel { task } => Input::Cancel {
                task: task_id(*task),
            },
            Op::Invalidate => Input::Invalidate,
            Op::DeliverNext => {
                let seq = session?.delivered_seq;
                Input::Deliver {
                    event: self.events.get(seq as usize)?.clone(),
                }
            }
            Op::DeliverAny { seq } => Input::Deliver {
                event: self
                    .events
                    .get(usize::from(*seq) % self.events.len().max(1))?
                    .clone(),
            },
            Op::SetCompletion {
                generation_skew,
                name,
            } => {
                let current = session.map_or(0, |s| s.generation);
                Input::SetCompletion {
                    generation: (current as i64 + i64::from(*generation_skew)).max(0) as u64,
                    completion: completion(*name),
                }
            }
            Op::EmptyGeneration { name } => Input::EmptyGeneration {
                completion: completion(*name),
            },
            Op::Restart => Input::Restart,
            Op::DeliveryFails => {
                let seq = session?.delivered_seq;
                Input::DeliveryFailed {
                    event: self.events.get(seq as usize)?.clone(),
                    error: "refused".into(),
                }
            }
            Op::Forget { task } => Input::Forget {
                task: task_id(*task),
            },
            Op::Advance { .. } => return None,
        })
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        if let Op::Advance { ms } = op {
            self.now_ms += u64::from(*ms);
            return Ok(());
        }
        let Some(input) = self.input(op) else {
            return Ok(());
        };
        let delivering = match &input {
            Input::Deliver { event } => Some(event.seq),
            _ => None,
        };
        let forgetting = match &input {
            Input::Forget { task } => Some(task.clone()),
            _ => None,
        };
        let completing = match &input {
            Input::SetCompletion {
                generation,
                completion,
            } => Some((Some(*generation), completion.clone())),
            Input::EmptyGeneration { completion } => Some((None, completion.clone())),
            _ => None,
        };
        self.jitter = (self.jitter + 337) % 1000;
        let records = Records {
            session: self.session.clone(),
            tasks: self.tasks.clone(),
        };
        let context = Context {
            now_ms: self.now_ms,
            jitter_permille: self.jitter,
        };
        match apply(records, input, &context) {
            Ok(transition) => {
                prop_assert!(
                    transition.session.validate().is_ok(),
                    "invalid session {:?}",
                    transition.session
                );
                for event in &transition.events {
                    prop_assert_eq!(event.seq, self.events.len() as u64, "sequence gap");
                    self.events.push(event.clone());
                }
                prop_assert_eq!(transition.session.next_event_seq, self.events.len() as u64);
                for task in transition.tasks {
                    prop_assert!(task.validate().is_ok());
                    self.tasks.insert(task.id.clone(), task);
                }
                if let Some(seq) = delivering {
                    self.delivered.push(seq);
                }
                for dead in &transition.dead_letters {
                    self.dead_lettered.push(dead.event.seq);
                }
                for task in &transition.forgotten {
                    prop_assert_eq!(Some(task), forgetting.as_ref(), "forgot another task");
                    let record = self.tasks.remove(task);
                    let delivered = record.as_ref().is_some_and(|record| match record.state {
                        TaskState::Completed { event_seq, .. } => {
                            event_seq < transition.session.delivered_seq
                        }
                        _ => false,
                    });
                    prop_assert!(delivered, "forgot a task whose event is undelivered");
                    let events = self
                        .events
                        .iter()
                        .filter(|event| {
                            matches!(&event.body,
                            EventBody::TaskCompleted { task: t, .. } if t == task)
                        })
                        .count();
                    self.forgotten.insert(task.clone(), events);
                }
                if let Some((generation, completion)) = completing {
                    // An empty generation's completion belongs to the generation it
                    // opened (or joined).
                    let generation = generation.unwrap_or(transition.session.generation);
                    self.accepted_completions
                        .entry(generation)
                        .or_default()
                        .insert((completion.name, completion.payload));
                }
                self.session = Some(transition.session);
            }
            // Refused inputs change nothing; they must be typed errors, never panics.
            Err(MachineError::InvalidRecord(reason)) => {
                prop_assert!(
                    false,
                    "the machine reported an invariant violation: {reason}"
                );
            }
            Err(_) => {}
        }
        self.check()
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        let Some(session) = &self.session else {
            return Ok(());
        };
        // Generations only grow.
        prop_assert!(session.generation >= self.generation_high);
        self.generation_high = session.generation;
        // Counters agree with the task records.
        let open = self
            .tasks
            .values()
            .filter(|t| !t.state.is_terminal())
            .count() as u64;
        let running = self
            .tasks
            .values()
            .filter(|t| matches!(t.state, TaskState::Running { .. }))
            .count() as u64;
        prop_assert_eq!(session.tasks_open, open);
        prop_assert_eq!(session.tasks_running, running);
        // Each terminal task result has exactly one event, at the recorded seq, with the
        // same outcome; an open task has none. A replaced task's earlier incarnations
        // each ended with exactly one event before it.
        let mut reported: BTreeMap<&TaskId, Vec<&EventRecord>> = BTreeMap::new();
        for event in &self.events {
            if let EventBody::TaskCompleted { task, .. } = &event.body {
                reported.entry(task).or_default().push(event);
            }
        }
        for task in self.tasks.values() {
            let all = reported.get(&task.id).map_or(&[][..], |v| &v[..]);
            let earlier =
                task.incarnation as usize + self.forgotten.get(&task.id).copied().unwrap_or(0);
            prop_assert!(
                all.len() >= earlier,
                "task {} of incarnation {} has only {} events",
                task.id,
                task.incarnation,
                all.len()
            );
            let events = &all[earlier..];
            match &task.state {
                TaskState::Completed {
                    outcome, event_seq, ..
                } => {
                    prop_assert_eq!(
                        events.len(),
                        1,
                        "task {} has {} events",
                        task.id,
                        events.len()
                    );
                    prop_assert_eq!(events[0].seq, *event_seq);
                    let same = matches!(&events[0].body,
                        EventBody::TaskCompleted { outcome: o, .. } if o == outcome);
                    prop_assert!(same, "event outcome differs from the task's");
                    prop_assert_eq!(events[0].generation, task.generation);
                }
                _ => prop_assert!(events.is_empty(), "open task {} has an event", task.id),
            }
        }
        // Event generations never go back; per generation: one "did finish events",
        // after every task event of the generation; then its completions, each distinct
        // one at most once.
        let mut finish_seq: BTreeMap<u64, u64> = BTreeMap::new();
        let mut completions: BTreeSet<(u64, String, Vec<u8>)> = BTreeSet::new();
        let mut last_generation = 0;
        for event in &self.events {
            prop_assert!(event.generation >= last_generation, "generation went back");
            last_generation = event.generation;
            match &event.body {
                EventBody::TaskCompleted { .. } => {
                    prop_assert!(
                        !finish_seq.contains_key(&event.generation),
                        "task event after its generation finished"
                    );
                }
                EventBody::DidFinishEvents => {
                    prop_assert!(
                        finish_seq.insert(event.generation, event.seq).is_none(),
                        "two did-finish events in generation {}",
                        event.generation
                    );
                }
                EventBody::Completion(completion) => {
                    prop_assert!(
                        finish_seq.contains_key(&event.generation),
                        "completion before did-finish"
                    );
                    let accepted = self
                        .accepted_completions
                        .get(&event.generation)
                        .is_some_and(|set| {
                            set.contains(&(completion.name.clone(), completion.payload.clone()))
                        });
                    prop_assert!(accepted, "a completion nobody gave in its generation");
                    prop_assert!(
                        completions.insert((
                            event.generation,
                            completion.name.clone(),
                            completion.payload.clone()
                        )),
                        "completion twice"
                    );
                }
            }
        }
        // Deliveries: every event at most once, in order, a prefix of the outbox.
        // Dead letters included: every seq below the cursor was handed over exactly once,
        // to the delegate or to the dead-letter list, in sequence order.
        let mut handed: Vec<u64> = self
            .delivered
            .iter()
            .chain(&self.dead_lettered)
            .copied()
            .collect();
        handed.sort_unstable();
        let expected: Vec<u64> = (0..session.delivered_seq).collect();
        prop_assert_eq!(&handed, &expected);
        prop_assert_eq!(session.dead_letters, self.dead_lettered.len() as u64);
        prop_assert!(
            self.delivered.windows(2).all(|pair| pair[0] < pair[1]),
            "delivered out of order"
        );
        // Finished only when every task is terminal, every event delivered and the
        // stored completion ran.
        if session.state == SessionState::Finished {
            prop_assert_eq!(open, 0);
            prop_assert_eq!(session.delivered_seq, session.next_event_seq);
            prop_assert!(session.completions.is_empty());
        }
        if session.generation > 0 && open == 0 {
            prop_assert!(
                finish_seq.contains_key(&session.generation),
                "generation ended without did-finish"
            );
        }
        // No accepted completion is lost: once its generation has ended, it is in the
        // outbox (each exactly once, by the distinctness check above).
        for (generation, accepted) in &self.accepted_completions {
            let ended = *generation < session.generation || open == 0;
            if !ended {
                continue;
            }
            for (name, payload) in accepted {
                prop_assert!(
                    completions.contains(&(*generation, name.clone(), payload.clone())),
                    "completion {name} of generation {generation} was accepted and is lost"
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random sequences of every input keep the machine's invariants.
    #[test]
    fn machine_keeps_its_invariants(
        ops in prop::collection::vec(op(), 1..120),
        dead_letter_policy in any::<bool>(),
    ) {
        let mut model = Model { now_ms: 1_000_000, dead_letter_policy, ..Model::default() };
        model.step(&Op::Open)?;
        for op in &ops {
            model.step(op)?;
        }
        // Drain: deliver everything left; the session then has no undelivered events.
        while model.session.as_ref().is_some_and(SessionRecord::has_undelivered_events) {
            model.step(&Op::DeliverNext)?;
        }
    }
}
