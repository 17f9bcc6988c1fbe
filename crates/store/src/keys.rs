//! Key layouts of the built-in tables.
//!
//! Identifiers only contain `[A-Za-z0-9._-]` (see `ids`), never the byte 0x00, so a 0x00
//! after the session id ends it unambiguously: `session 0x00` is a prefix of exactly that
//! session's keys, and sorting by key sorts by session first. Event sequence numbers and
//! expiry times are big-endian so that byte order is numeric order.
//!
//! - sessions: `session`; tasks: `session 0x00 task`; events and dead letters:
//!   `session 0x00 seq(u64 BE)`; task expiry: `expires_ms(u64 BE) session 0x00 task`
//!   (sorted by time first, so the oldest entries come first).

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

/// The key of a task expiry entry: `expires_ms(u64, big-endian) session 0x00 task`.
pub(crate) fn expiry_key(expires_ms: u64, session: &SessionId, task: &TaskId) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + session.as_str().len() + 1 + task.as_str().len());
    key.extend_from_slice(&expires_ms.to_be_bytes());
    key.extend_from_slice(&task_key(session, task));
    key
}

/// The exclusive end of the expiry entries due at `now_ms`: every key of an entry with
/// `expires_ms <= now_ms` sorts below it; `None` when every entry is due.
pub(crate) fn expiry_end(now_ms: u64) -> Option<[u8; 8]> {
    now_ms.checked_add(1).map(u64::to_be_bytes)
}

/// Splits a task expiry key into its time and the validated identifiers.
pub(crate) fn parse_expiry_key(key: &[u8]) -> Result<(u64, SessionId, TaskId), String> {
    let (time, rest) = key
        .split_first_chunk::<8>()
        .ok_or_else(|| format!("key of {} bytes, shorter than its time", key.len()))?;
    let (session, task) =
        split(rest).ok_or("no 0x00 between the session and the task identifier")?;
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| "an identifier that is not UTF-8".to_string())
    };
    let session = SessionId::new(text(session)?).map_err(|error| error.to_string())?;
    let task = TaskId::new(text(task)?).map_err(|error| error.to_string())?;
    Ok((u64::from_be_bytes(*time), session, task))
}

/// A printable task expiry key for error messages: `expires_ms/session/task`.
pub(crate) fn printable_expiry(key: &[u8]) -> String {
    match key.split_first_chunk::<8>() {
        Some((time, rest)) => format!("{}/{}", u64::from_be_bytes(*time), printable_task(rest)),
        None => key.escape_ascii().to_string(),
    }
}

/// The smallest key above every key that starts with `prefix`: the exclusive end of a
/// prefix scan; `None` when there is none (an empty prefix, or one of only 0xFF bytes).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
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

    /// Expiry keys sort by time first (numerically, across sessions), parse back to
    /// their parts, and every key of an entry due at `now` sorts below `expiry_end(now)`.
    #[test]
    fn expiry_keys_sort_by_time_and_parse_back() {
        let a = session("a");
        let b = session("b");
        let t = TaskId::new("t").expect("valid task id");
        let mut keys = vec![
            expiry_key(256, &a, &t),
            expiry_key(1, &b, &t),
            expiry_key(255, &b, &t),
            expiry_key(1, &a, &t),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                expiry_key(1, &a, &t),
                expiry_key(1, &b, &t),
                expiry_key(255, &b, &t),
                expiry_key(256, &a, &t),
            ]
        );
        assert_eq!(
            parse_expiry_key(&expiry_key(255, &b, &t)),
            Ok((255, b.clone(), t.clone()))
        );
        let end = expiry_end(255).expect("not the last instant");
        assert!(expiry_key(255, &b, &t).as_slice() < end.as_slice());
        assert!(expiry_key(256, &a, &t).as_slice() >= end.as_slice());
        assert_eq!(expiry_end(u64::MAX), None);
        assert_eq!(printable_expiry(&expiry_key(7, &a, &t)), "7/a/t");
        assert!(parse_expiry_key(b"short").is_err());
        assert!(parse_expiry_key(&[0, 0, 0, 0, 0, 0, 0, 1, b'a']).is_err());
        assert!(parse_expiry_key(&[0, 0, 0, 0, 0, 0, 0, 1, b'a', 0, b'!']).is_err());
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
