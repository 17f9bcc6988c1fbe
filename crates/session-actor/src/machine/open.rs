//! `Open`: create the session, or update its configuration.

use session_store::{SessionConfig, SessionId, SessionRecord};

use super::{Context, MachineError, Transition, step::Step};

pub(super) fn open(
    session: Option<SessionRecord>,
    id: SessionId,
    config: SessionConfig,
    context: &Context,
) -> Result<Transition, MachineError> {
    config.validate().map_err(MachineError::InvalidField)?;
    let session = match session {
        Some(session) if session.id != id => {
            return Err(MachineError::InvalidRecord(format!(
                "opening session {id} over the record of session {}",
                session.id
            )));
        }
        Some(mut session) => {
            session.config = config;
            session
        }
        None => SessionRecord::new(id, config, context.now_ms),
    };
    Ok(Step::new(session, context).finish())
}
