//! Identifiers chosen by the application: sessions and tasks.
//!
//! Identifiers become parts of LMDB keys and of file names under the root directory,
//! so they are restricted to a small, path-safe alphabet. They are validated when built
//! and again when decoded from the store (serde goes through `TryFrom<String>`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest identifier accepted, in bytes.
pub const IDENTIFIER_BYTES_MAX: usize = 128;

/// Which kind of identifier a validation error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentifierKind {
    /// A session identifier.
    Session,
    /// A task identifier.
    Task,
}

impl fmt::Display for IdentifierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentifierKind::Session => f.write_str("session"),
            IdentifierKind::Task => f.write_str("task"),
        }
    }
}

/// Checks an identifier: 1 to [`IDENTIFIER_BYTES_MAX`] bytes of ASCII letters, digits,
/// `.`, `_`, `-`; it must not start with `.` (no `.`/`..` path components, no hidden files).
pub fn validate_identifier(kind: IdentifierKind, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        Some("is empty")
    } else if value.len() > IDENTIFIER_BYTES_MAX {
        Some("is longer than 128 bytes")
    } else if value.starts_with('.') {
        Some("starts with '.'")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("has a character other than ASCII letters, digits, '.', '_' and '-'")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidIdentifier {
            kind,
            value: value.chars().take(IDENTIFIER_BYTES_MAX + 16).collect(),
            reason,
        }),
    }
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                validate_identifier($kind, &value)?;
                Ok(Self(value))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(value: &str) -> Result<Self> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

identifier!(
    /// The stable identifier of a background session, chosen by the application.
    SessionId,
    IdentifierKind::Session
);
identifier!(
    /// The stable identifier of a task within a session, chosen by the application.
    TaskId,
    IdentifierKind::Task
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile identifiers (paths, separators, control bytes, overlong) are refused with
    /// a typed error; ordinary ones pass.
    #[test]
    fn identifiers_are_validated() {
        for bad in [
            "", ".", "..", "../etc", "a/b", "a\\b", "a\0b", "é", "a b", ".hidden",
        ] {
            assert!(
                matches!(SessionId::new(bad), Err(Error::InvalidIdentifier { .. })),
                "{bad:?} must be refused"
            );
        }
        assert!(TaskId::new("x".repeat(IDENTIFIER_BYTES_MAX + 1)).is_err());
        assert!(TaskId::new("x".repeat(IDENTIFIER_BYTES_MAX)).is_ok());
        assert!(SessionId::new("photos-2026.sync_1").is_ok());
    }

    /// Decoding goes through validation, so a corrupt identifier in the store is an error.
    #[test]
    fn decoding_validates() {
        let bytes = bincode::serialize(&"../../x".to_string()).expect("serialize");
        assert!(bincode::deserialize::<TaskId>(&bytes).is_err());
        let bytes = bincode::serialize(&"ok".to_string()).expect("serialize");
        assert_eq!(
            bincode::deserialize::<TaskId>(&bytes).expect("valid"),
            TaskId::new("ok").expect("valid")
        );
    }
}
