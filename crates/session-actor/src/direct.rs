//! The writer units a session actor commits, callable without an actor, and the janitor
//! that prunes finished tasks: for benchmarks and tools that drive the store path alone
//! (`session-harness bench soak`), where a million transfers over the network would
//! measure the network rather than the store.
//!
//! Each function is the body of one unit: the caller runs it inside
//! [`Store::write`](session_store::Store::write) or
//! [`Store::write_async`](session_store::Store::write_async), exactly as the actor does, so
//! the records written are the ones a running [`crate::Sessions`] writes. Nothing here
//! starts a transfer or calls a delegate outside its unit.
//!
//! Not beside a running [`crate::Sessions`] on the same store: its actors keep what they
//! committed in memory, and units written behind their back would go unseen by them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use session_store::{SessionId, Store, WriteScope};

use crate::clock::Clock;
use crate::delegate::{DeliveryOptions, TransactionalDelegate};
use crate::error::Result;
use crate::janitor;
use crate::machine::{Context, Input, Transition};
use crate::units::{self, Completions};

/// The most expiry entries one pruning unit handles.
pub const PRUNE_ENTRIES_PER_UNIT: usize = janitor::PRUNE_ENTRIES_PER_UNIT;
/// The most events one delivery unit hands to the delegate.
pub const DELIVERY_EVENTS_PER_UNIT_MAX: usize = units::DELIVERY_EVENTS_PER_UNIT_MAX;

/// Runs one machine input for one session against the records in the unit and writes
/// what it changed: the unit the actor commits for an open, an enqueue, a start, a
/// transfer's result, a cancel, and the rest of [`Input`].
///
/// # Errors
/// The store's errors, and [`crate::Error::Refused`] when the input is not valid in the
/// records' state.
pub fn apply_input(
    scope: &mut WriteScope<'_>,
    session: &SessionId,
    input: Input,
    context: &Context,
) -> Result<Transition> {
    units::run_input(scope, session, input, context).map_err(|error| error.into_error(session))
}

/// Delivers up to `events_max` of the session's next events to `delegate`, each
/// delivery's writes, its cursor advance and the removal of the event from the outbox in
/// this unit (the actor's delivery unit, with no completion handlers registered).
/// Returns how many events were delivered.
///
/// # Errors
/// The store's errors, the delegate's ([`crate::Error::Delegate`]: then nothing of the
/// unit may be committed), or a stored completion (none is registered here).
pub fn deliver_events(
    scope: &mut WriteScope<'_>,
    session: &SessionId,
    downloads: &Path,
    delegate: &dyn TransactionalDelegate,
    context: &Context,
    events_max: usize,
) -> Result<usize> {
    let delivered = units::deliver_transactional(
        scope,
        session,
        downloads,
        Some(delegate),
        &Completions::new(),
        context,
        events_max,
        &DeliveryOptions::default(),
    )
    .map_err(|error| error.into_error(session))?;
    Ok(delivered.count)
}

/// What one pruning unit did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Expiry entries handled.
    pub entries: usize,
    /// Task records deleted.
    pub tasks: usize,
}

/// One pruning unit of the janitor: forgets up to [`PRUNE_ENTRIES_PER_UNIT`] finished
/// tasks whose retention ended by `now_ms` and whose event was delivered.
///
/// # Errors
/// The store's errors.
pub fn prune(scope: &mut WriteScope<'_>, now_ms: u64) -> session_store::Result<Pruned> {
    let pruned = janitor::prune_unit(scope, now_ms)?;
    Ok(Pruned {
        entries: pruned.entries,
        tasks: pruned.tasks,
    })
}

/// The janitor's loop as [`crate::Sessions`] runs it: a round of pruning units every
/// `interval`, with the time read from `clock`. It ends when the store closes; spawn it
/// on a tokio runtime.
pub async fn janitor(store: Store, clock: Arc<dyn Clock>, interval: Duration) {
    janitor::run(store, clock, janitor::JanitorOptions { interval }).await;
}
