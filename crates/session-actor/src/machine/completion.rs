//! `SetCompletion`: store the completion handler (by name and payload) for a generation.

use session_store::{EventBody, SessionRecord, SessionState, StoredCompletion};

use super::{MachineError, Transition, step::Step};

pub(super) fn set_completion(
    session: SessionRecord,
    generation: u64,
    completion: StoredCompletion,
) -> Result<Transition, MachineError> {
    completion.validate().map_err(MachineError::InvalidRecord)?;
    if generation == 0 || generation > session.generation {
        return Err(MachineError::UnknownGeneration {
            generation,
            current: session.generation,
        });
    }
    let mut step = Step::new(session);
    if generation <= step.session.completion_generation {
        // Already in the outbox (or run): re-issuing after a relaunch changes nothing.
        return Ok(step.finish());
    }
    if generation < step.session.generation {
        return Err(MachineError::GenerationEnded { generation });
    }
    match step.session.state {
        SessionState::Queued | SessionState::Running => match &step.session.completion {
            Some(stored) if *stored == completion => {}
            Some(_) => return Err(MachineError::CompletionConflict { generation }),
            None => step.session.completion = Some(completion),
        },
        // The generation's tasks are all terminal and its "did finish events" is in the
        // outbox already: the completion goes right after it, and runs once.
        SessionState::AwaitingEvents | SessionState::Finished => {
            step.append_event(EventBody::Completion(completion));
            step.session.completion_generation = generation;
        }
    }
    Ok(step.finish())
}
