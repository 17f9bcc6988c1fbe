//! `SetCompletion`: store a completion handler (by name and payload) for a generation.
//!
//! A generation may store several completions (every batch that joins a running
//! generation may bring its own); they run in the order given, each exactly once, after
//! the generation's "did finish events". Giving the same completion again (same name and
//! payload) changes nothing, so an application may re-issue everything after a relaunch.

use session_store::{
    COMPLETIONS_PER_GENERATION_MAX, EventBody, SessionRecord, SessionState, StoredCompletion,
};

use super::{Context, MachineError, Transition, step::Step};

pub(super) fn set_completion(
    session: SessionRecord,
    generation: u64,
    completion: StoredCompletion,
    context: &Context,
) -> Result<Transition, MachineError> {
    session_store::validate_completion_name(&completion.name)
        .map_err(MachineError::InvalidField)?;
    completion.validate().map_err(MachineError::InvalidRecord)?;
    if generation == 0 || generation > session.generation {
        return Err(MachineError::UnknownGeneration {
            generation,
            current: session.generation,
        });
    }
    let mut step = Step::new(session, context);
    let digest = completion.digest();
    let appended_already = generation == step.session.completion_generation
        // Schema 1 kept no digests: its rule was "that generation's completion is in".
        && (step.session.completion_digests.is_empty()
            || step.session.completion_digests.contains(&digest));
    if appended_already {
        return Ok(step.finish());
    }
    if generation < step.session.generation {
        return Err(MachineError::GenerationEnded { generation });
    }
    match step.session.state {
        SessionState::Queued | SessionState::Running => {
            if !step.session.completions.contains(&completion) {
                if step.session.completions.len() >= COMPLETIONS_PER_GENERATION_MAX {
                    return Err(MachineError::TooManyCompletions { generation });
                }
                step.session.completions.push(completion);
            }
        }
        // The generation's tasks are all terminal and its "did finish events" is in the
        // outbox already: the completion goes right after, and runs once.
        SessionState::AwaitingEvents | SessionState::Finished => {
            if step.session.completion_generation != generation {
                step.session.completion_generation = generation;
                step.session.completion_digests.clear();
            }
            if step.session.completion_digests.len() >= COMPLETIONS_PER_GENERATION_MAX {
                return Err(MachineError::TooManyCompletions { generation });
            }
            step.session.completion_digests.push(digest);
            step.append_event(EventBody::Completion(completion));
        }
    }
    Ok(step.finish())
}

pub(super) fn empty_generation(
    session: SessionRecord,
    completion: StoredCompletion,
    context: &Context,
) -> Result<Transition, MachineError> {
    session_store::validate_completion_name(&completion.name)
        .map_err(MachineError::InvalidField)?;
    completion.validate().map_err(MachineError::InvalidRecord)?;
    if session.tasks_open > 0 {
        // A generation runs: the completion joins it like any other.
        let generation = session.generation;
        return set_completion(session, generation, completion, context);
    }
    let mut step = Step::new(session, context);
    if step.session.completion_generation == step.session.generation
        && step
            .session
            .completion_digests
            .contains(&completion.digest())
    {
        // Given again after a relaunch: the generation it opened ran it already.
        return Ok(step.finish());
    }
    step.session.generation += 1;
    step.session.completions.push(completion);
    step.end_generation();
    Ok(step.finish())
}
