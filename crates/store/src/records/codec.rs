//! How record values are laid out in a table: `[MARKER, version, bincode...]`.
//!
//! Schema 1 values are plain bincode of a record whose first field is a session
//! identifier, so they begin with that identifier's length as a little-endian u64:
//! their first byte is 1..=128 ([`IDENTIFIER_BYTES_MAX`]). [`MARKER`] is above that, so a
//! value tells by its first byte whether it is versioned, and a store whose records are
//! part schema 1 and part current (a schema-1 store in use by this release) reads right.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::v1;
use super::{
    ActiveSessionValue, DeadLetterRecord, EventRecord, RemovedSession, SessionRecord,
    TaskExpiryValue, TaskRecord,
};
use crate::ids::IDENTIFIER_BYTES_MAX;

/// The first byte of every versioned value.
pub(crate) const MARKER: u8 = 0xB6;

const _: () = assert!(
    MARKER as usize > IDENTIFIER_BYTES_MAX,
    "the marker must be a byte no schema-1 value can start with"
);

/// A record kept in a built-in table, with its current format version.
pub(crate) trait Versioned: Serialize + DeserializeOwned {
    /// The version this build writes.
    const VERSION: u8;

    /// Decodes a value of an older version (`None`: schema 1, without marker).
    fn decode_older(version: Option<u8>, bytes: &[u8]) -> Result<Self, String>;
}

/// Encodes a record with the marker and its version.
pub(crate) fn encode<T: Versioned>(record: &T) -> Result<Vec<u8>, String> {
    let mut bytes = vec![MARKER, T::VERSION];
    bincode::serialize_into(&mut bytes, record)
        .map_err(|error| format!("cannot encode the value: {error}"))?;
    Ok(bytes)
}

/// Decodes a value of any version this build knows.
pub(crate) fn decode<T: Versioned>(bytes: &[u8]) -> Result<T, String> {
    match bytes {
        [MARKER, version, body @ ..] if *version == T::VERSION => strict(body),
        [MARKER, version, body @ ..] if *version < T::VERSION => {
            T::decode_older(Some(*version), body)
        }
        [MARKER, version, ..] => Err(format!(
            "format version {version} is newer than this build's {}",
            T::VERSION
        )),
        [MARKER] => Err("a version marker without a version".into()),
        [] => Err("an empty value".into()),
        legacy => T::decode_older(None, legacy),
    }
}

/// bincode that must use every byte: a value with trailing bytes is not what was written.
fn strict<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    use bincode::Options as _;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
        .deserialize(bytes)
        .map_err(|error| format!("cannot decode the value: {error}"))
}

fn unknown(version: Option<u8>) -> String {
    match version {
        Some(version) => format!("format version {version} was never written"),
        None => "cannot happen".into(),
    }
}

impl Versioned for SessionRecord {
    const VERSION: u8 = 2;

    fn decode_older(version: Option<u8>, bytes: &[u8]) -> Result<Self, String> {
        match version {
            None => strict::<v1::SessionRecordV1>(bytes).map(Into::into),
            Some(_) => Err(unknown(version)),
        }
    }
}

impl Versioned for TaskRecord {
    const VERSION: u8 = 2;

    fn decode_older(version: Option<u8>, bytes: &[u8]) -> Result<Self, String> {
        match version {
            None => strict::<v1::TaskRecordV1>(bytes).map(Into::into),
            Some(_) => Err(unknown(version)),
        }
    }
}

impl Versioned for EventRecord {
    const VERSION: u8 = 2;

    fn decode_older(version: Option<u8>, bytes: &[u8]) -> Result<Self, String> {
        match version {
            None => strict::<v1::EventRecordV1>(bytes).map(Into::into),
            Some(_) => Err(unknown(version)),
        }
    }
}

/// The error of a table that came after schema 1: its values always carry a version.
fn no_schema_1(version: Option<u8>) -> String {
    match version {
        None => "a value without version marker, in a table whose values always have one".into(),
        Some(_) => unknown(version),
    }
}

impl Versioned for DeadLetterRecord {
    const VERSION: u8 = 1;

    fn decode_older(version: Option<u8>, _bytes: &[u8]) -> Result<Self, String> {
        Err(no_schema_1(version))
    }
}

impl Versioned for ActiveSessionValue {
    const VERSION: u8 = 1;

    fn decode_older(version: Option<u8>, _bytes: &[u8]) -> Result<Self, String> {
        Err(no_schema_1(version))
    }
}

impl Versioned for RemovedSession {
    const VERSION: u8 = 1;

    fn decode_older(version: Option<u8>, _bytes: &[u8]) -> Result<Self, String> {
        Err(no_schema_1(version))
    }
}

impl Versioned for TaskExpiryValue {
    const VERSION: u8 = 1;

    fn decode_older(version: Option<u8>, _bytes: &[u8]) -> Result<Self, String> {
        Err(no_schema_1(version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SessionConfig, SessionId};

    /// A record round-trips through its versioned encoding, and the marker, a newer
    /// version, an empty value and trailing bytes are each refused with a reason.
    #[test]
    fn versioned_values() {
        let id = SessionId::new("s").expect("valid");
        let record = SessionRecord::new(id, SessionConfig::default(), 5);
        let bytes = encode(&record).expect("encodes");
        assert_eq!(&bytes[..2], &[MARKER, 2]);
        assert_eq!(decode::<SessionRecord>(&bytes), Ok(record));
        let mut newer = bytes.clone();
        newer[1] = 3;
        assert!(decode::<SessionRecord>(&newer).is_err_and(|e| e.contains("newer")));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode::<SessionRecord>(&trailing).is_err());
        assert!(decode::<SessionRecord>(&[]).is_err());
        assert!(decode::<SessionRecord>(&[MARKER]).is_err());
        assert!(decode::<SessionRecord>(&[MARKER, 1, 0]).is_err());
    }

    /// The tables added after schema 1 only hold versioned values: a dead letter and an
    /// expiry value round-trip, a value without marker (what schema 1 would have been) is
    /// refused, and an expiry value is the marker and version alone.
    #[test]
    fn later_tables_are_always_versioned() {
        use crate::{EventBody, EventRecord};
        let record = DeadLetterRecord {
            event: EventRecord {
                session: SessionId::new("s").expect("valid"),
                seq: 4,
                generation: 1,
                body: EventBody::DidFinishEvents,
            },
            attempts: 2,
            last_error: "no".into(),
            moved_ms: 9,
        };
        let bytes = encode(&record).expect("encodes");
        assert_eq!(&bytes[..2], &[MARKER, 1]);
        assert_eq!(decode::<DeadLetterRecord>(&bytes), Ok(record));
        assert!(
            decode::<DeadLetterRecord>(&bytes[2..]).is_err_and(|e| e.contains("without version"))
        );
        assert_eq!(encode(&TaskExpiryValue), Ok(vec![MARKER, 1]));
        assert_eq!(decode::<TaskExpiryValue>(&[MARKER, 1]), Ok(TaskExpiryValue));
        assert!(decode::<TaskExpiryValue>(&[MARKER, 1, 0]).is_err());
        assert!(decode::<TaskExpiryValue>(&[MARKER, 0]).is_err());
        assert!(decode::<TaskExpiryValue>(&[1]).is_err());
    }
}
