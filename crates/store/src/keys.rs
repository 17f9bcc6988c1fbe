//! Key layouts of the built-in tables.
//!
//! Identifiers only contain `[A-Za-z0-9._-]` (see `ids`), never the byte 0x00, so a 0x00
//! after the session id ends it unambiguously: `session 0x00` is a prefix of exactly that
//! session's keys, and sorting by key sorts by session first. Event sequence numbers are
//! big-endian so that byte order is numeric order.

use crate::ids::{SessionId, TaskId};

/// Ends the session id inside composite keys.
const SEPARATOR: u8 = 0x00;

/// The prefix of every task and event key of `session`.
pub(crate) fn session_prefix(session: &SessionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(session.as_str().len() + 1);
    key.extend_from_slice(session.as_str().as_bytes());
    key.push(SEPARATOR);
    key
}

/// The key of a task: `session 0x00 task`.
pub(crate) fn task_key(session: &SessionId, task: &TaskId) -> Vec<u8> {
    let mut key = session_prefix(session);
    key.extend_from_slice(task.as_str().as_bytes());
    key
}

/// The key of an event: `session 0x00 seq(u64, big-endian)`.
pub(crate) fn event_key(session: &SessionId, seq: u64) -> Vec<u8> {
    let mut key = session_prefix(session);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The key just past every key of `session` (the exclusive end of its range).
pub(crate) fn session_end(session: &SessionId) -> Vec<u8> {
    let mut key = session_prefix(session);
    if let Some(last) = key.last_mut() {
        *last = SEPARATOR + 1;
    }
    key
}

/// A printable task key for error messages: `session/task`.
pub(crate) fn printable_task(key: &[u8]) -> String {
    match split(key) {
        Some((session, task)) => format!("{}/{}", session.escape_ascii(), task.escape_ascii()),
        None => key.escape_ascii().to_string(),
    }
}

/// A printable event key for error messages: `session/seq`.
pub(crate) fn printable_event(key: &[u8]) -> String {
    match split(key).map(|(session, seq)| (session, <[u8; 8]>::try_from(seq))) {
        Some((session, Ok(seq))) => {
            format!("{}/{}", session.escape_ascii(), u64::from_be_bytes(seq))
        }
        _ => key.escape_ascii().to_string(),
    }
}

/// A printable plain key (session ids, meta names, application keys).
pub(crate) fn printable(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

/// Splits a composite key at the separator.
fn split(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = key.iter().position(|b| *b == SEPARATOR)?;
    Some((&key[..at], &key[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(value: &str) -> SessionId {
        SessionId::new(value).expect("valid session id")
    }

    /// Event keys of one session sort by sequence number and never interleave with a
    /// session whose id extends the first one's.
    #[test]
    fn event_keys_sort_numerically_per_session() {
        let a = session("a");
        let ab = session("a-b");
        let mut keys = vec![
            event_key(&ab, 0),
            event_key(&a, 256),
            event_key(&a, 1),
            event_key(&a, 0),
            event_key(&a, u64::MAX),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                event_key(&a, 0),
                event_key(&a, 1),
                event_key(&a, 256),
                event_key(&a, u64::MAX),
                event_key(&ab, 0),
            ]
        );
        assert!(event_key(&a, u64::MAX) < session_end(&a));
        assert!(session_end(&a) <= event_key(&ab, 0));
        assert!(!event_key(&ab, 0).starts_with(&session_prefix(&a)));
    }

    /// Printable keys name the session and the task or sequence number.
    #[test]
    fn printable_keys() {
        let a = session("a");
        let task = TaskId::new("t1").expect("valid task id");
        assert_eq!(printable_task(&task_key(&a, &task)), "a/t1");
        assert_eq!(printable_event(&event_key(&a, 7)), "a/7");
        assert_eq!(
            printable_event(&event_key(&a, 0x4141_4141_4141_4141)),
            "a/4702111234474983745"
        );
        assert_eq!(printable(b"plain\x00"), "plain\\x00");
    }
}
