//! The bookkeeping every transition shares: task counters, the outbox, the end of a
//! generation, and the session state derived from the counters.

use session_store::{
    EventBody, EventRecord, Outcome, SessionRecord, SessionState, StoredCompletion, TaskId,
    TaskKind, TaskRecord, TaskState,
};

use super::{Action, Context, DeadLetter, TaskExpiry, Transition};

/// Whether a task ended with its result (a download's file is in place) or without.
enum OutcomeKind {
    Success,
    Other,
}

/// A transition being built.
pub(super) struct Step {
    /// The time of the input, Unix milliseconds (a task's finish time).
    now_ms: u64,
    jitter_permille: u16,
    pub(super) session: SessionRecord,
    pub(super) tasks: Vec<TaskRecord>,
    pub(super) events: Vec<EventRecord>,
    pub(super) actions: Vec<Action>,
    pub(super) dead_letters: Vec<DeadLetter>,
    pub(super) expiries: Vec<TaskExpiry>,
    pub(super) forgotten: Vec<TaskId>,
}

impl Step {
    pub(super) fn new(session: SessionRecord, context: &Context) -> Self {
        Step {
            now_ms: context.now_ms,
            jitter_permille: context.jitter_permille,
            session,
            tasks: Vec::new(),
            events: Vec::new(),
            actions: Vec::new(),
            dead_letters: Vec::new(),
            expiries: Vec::new(),
            forgotten: Vec::new(),
        }
    }

    /// The time of the input, Unix milliseconds.
    pub(super) fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The input's random number in `0..1000`, for jitter.
    pub(super) fn jitter_permille(&self) -> u16 {
        self.jitter_permille
    }

    pub(super) fn append_event(&mut self, body: EventBody) -> u64 {
        let seq = self.session.next_event_seq;
        self.events.push(EventRecord {
            session: self.session.id.clone(),
            seq,
            generation: self.session.generation,
            body,
        });
        self.session.next_event_seq += 1;
        seq
    }

    /// Moves an open task to its outcome: one event, written with the task's terminal
    /// state; if it was the generation's last open task, the generation ends.
    pub(super) fn complete(&mut self, mut task: TaskRecord, outcome: Outcome) {
        debug_assert!(!task.state.is_terminal(), "completing a terminal task");
        if matches!(task.state, TaskState::Running { .. }) {
            self.session.tasks_running -= 1;
        }
        self.session.tasks_open -= 1;
        let outcome_kind = if matches!(outcome, Outcome::Success(_)) {
            OutcomeKind::Success
        } else {
            OutcomeKind::Other
        };
        let event_seq = self.append_event(EventBody::TaskCompleted {
            task: task.id.clone(),
            kind: task.kind,
            outcome: outcome.clone(),
        });
        task.state = TaskState::Completed {
            outcome,
            event_seq,
            finished_ms: self.now_ms,
        };
        task.wait = None;
        // Kept for its retention period, then forgotten (once its event is delivered).
        self.expiries.push(TaskExpiry {
            at_ms: self
                .now_ms
                .saturating_add(self.session.config.retention_s.saturating_mul(1000)),
            task: task.id.clone(),
        });
        if task.kind == TaskKind::Download && !matches!(outcome_kind, OutcomeKind::Success) {
            // A download that ended without its file leaves no partial file behind (a
            // successful one was renamed to its final name already).
            self.actions.push(Action::DiscardPartial {
                task: task.id.clone(),
                incarnation: task.incarnation,
            });
        }
        self.actions.push(Action::TaskTerminal {
            task: task.id.clone(),
        });
        self.tasks.push(task);
        if self.session.tasks_open == 0 {
            self.end_generation();
        }
    }

    /// Every task of the generation is terminal: "did finish events" goes into the
    /// outbox after the generation's last task event, then its stored completions in the
    /// order they were given.
    pub(super) fn end_generation(&mut self) {
        self.append_event(EventBody::DidFinishEvents);
        let completions = std::mem::take(&mut self.session.completions);
        if completions.is_empty() {
            return;
        }
        self.session.completion_generation = self.session.generation;
        self.session.completion_digests =
            completions.iter().map(StoredCompletion::digest).collect();
        for completion in completions {
            self.append_event(EventBody::Completion(completion));
        }
    }

    /// Derives the session state from the counters and the cursor, and closes the step.
    pub(super) fn finish(mut self) -> Transition {
        let session = &mut self.session;
        session.state = if session.tasks_running > 0 {
            SessionState::Running
        } else if session.tasks_open > 0 {
            SessionState::Queued
        } else if session.has_undelivered_events() {
            SessionState::AwaitingEvents
        } else {
            SessionState::Finished
        };
        if !self.events.is_empty() {
            self.actions.push(Action::DeliverEvents);
        }
        debug_assert!(
            self.session.validate().is_ok(),
            "invariant violation: transition produced an invalid session: {:?}",
            self.session.validate()
        );
        Transition {
            session: self.session,
            tasks: self.tasks,
            events: self.events,
            actions: self.actions,
            dead_letters: self.dead_letters,
            expiries: self.expiries,
            forgotten: self.forgotten,
        }
    }
}
