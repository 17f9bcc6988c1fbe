//! The pieces most session tests need: a builder on loopback only, a transactional
//! delegate and a completion handler that record each delivery once in an application
//! table (and refuse a second delivery of the same key), and the origin server.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use session_actor::{
    AppTable, CompletionCall, DelegateError, Delivery, EngineConfig, Event, Sessions,
    SessionsBuilder, WriteScope,
};
use session_harness::origin::{Origin, OriginConfig, OriginHandle};

/// The application table the recorder writes.
pub const LEDGER: &str = "ledger";
/// The completion handler the builder registers.
pub const COMPLETION: &str = "done";

fn table() -> AppTable<String> {
    AppTable::named(LEDGER).expect("a valid table name")
}

/// A builder with the ledger table and the recording completion, talking to loopback
/// only whatever proxy variables are set.
pub fn builder(dir: &Path) -> SessionsBuilder {
    Sessions::builder(dir)
        .engine_config(EngineConfig {
            proxy_from_environment: false,
            ..EngineConfig::default()
        })
        .app_table(LEDGER)
        .completion(COMPLETION, complete)
}

/// What a delivery says, as the ledger keeps it: `task <id> <outcome>` or `did finish`.
pub fn describe(delivery: &Delivery) -> String {
    match &delivery.event {
        Event::TaskCompleted { task, outcome, .. } => format!("task {task} {}", outcome.name()),
        Event::DidFinishEvents => "did finish".to_owned(),
    }
}

/// The recording transactional delegate: one ledger row per delivery key, in the
/// delivery's transaction; a second delivery of a key is refused (and would show).
pub fn record(delivery: &Delivery, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
    put(scope, delivery.key.to_string(), describe(delivery))
}

/// The recording completion handler.
pub fn complete(call: &CompletionCall, scope: &mut WriteScope<'_>) -> Result<(), DelegateError> {
    let text = format!("completion {}", String::from_utf8_lossy(&call.payload));
    put(scope, call.key.to_string(), text)
}

fn put(scope: &mut WriteScope<'_>, key: String, text: String) -> Result<(), DelegateError> {
    if let Some(before) = table().get(scope, &key)? {
        return Err(DelegateError::new(format!(
            "{key} delivered twice: {before} then {text}"
        )));
    }
    table().put(scope, key, &text)?;
    Ok(())
}

/// Every ledger row, by delivery key.
pub fn entries(sessions: &Sessions) -> Vec<(String, String)> {
    table()
        .entries(&sessions.snapshot().expect("snapshot"))
        .expect("ledger rows")
        .into_iter()
        .map(|(key, text)| (String::from_utf8_lossy(&key).into_owned(), text))
        .collect()
}

/// The rows' texts of one session, in delivery order.
pub fn texts(sessions: &Sessions, session: &str) -> Vec<String> {
    let prefix = format!("{session}/");
    let mut rows: Vec<(u64, String)> = entries(sessions)
        .into_iter()
        .filter_map(|(key, text)| {
            let seq = key
                .strip_prefix(&prefix)?
                .rsplit('/')
                .next()?
                .parse()
                .ok()?;
            Some((seq, text))
        })
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, text)| text).collect()
}

/// The origin server on 127.0.0.1.
pub fn origin() -> OriginHandle {
    Origin::start_in_thread(OriginConfig { seed: 11, port: 0 }).expect("the origin starts")
}

/// The longest a test waits for a condition: generous, so a slow machine is slow but
/// not failing; a condition that never holds fails the test with `what`.
pub const WAIT_MAX: Duration = Duration::from_secs(120);

/// Polls `condition` until it holds (every 10 ms, at most [`WAIT_MAX`]).
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < WAIT_MAX,
            "waited {WAIT_MAX:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
