//! The stored form of a [`TransferRequest`]: the session actor keeps it inside task
//! records, so a store written by one release must decode in the next.
//!
//! Layout: the 4-byte prefix `bgtr`, the layout version as a little-endian `u16`
//! ([`REQUEST_ENCODING_VERSION`]), then bincode 1.3 (fixed-width integers, little endian,
//! as `bincode::serialize` writes) of that version's layout. Before versions existed, the
//! actor stored plain `bincode::serialize(&request)` of the layout frozen in [`legacy`];
//! [`TransferRequest::from_bytes`] still reads it. The two cannot be confused: a legacy
//! encoding starts with the method's variant index as a `u32` (0 to 5), and `b'b'` is 98.
//!
//! Paths are stored as their OS bytes (`OsStr::as_encoded_bytes`), so a path that is not
//! UTF-8 round-trips on unix. bincode writes bytes and strings alike (a `u64` length, then
//! the bytes), so a UTF-8 path is encoded exactly as the legacy `PathBuf` (a string) was,
//! and legacy records decode unchanged.

use bincode::Options as _;

use crate::error::{Error, Result};
use crate::request::TransferRequest;

/// The layout version [`TransferRequest::to_bytes`] writes. Version 0 is the unversioned
/// legacy encoding; 1 added [`TransferRequest::sensitive_headers`].
pub const REQUEST_ENCODING_VERSION: u16 = 1;

/// The first bytes of every versioned encoding.
const PREFIX: [u8; 4] = *b"bgtr";
/// Prefix and version.
const HEADER_BYTES: usize = PREFIX.len() + std::mem::size_of::<u16>();

// A legacy encoding starts with a method variant index (< 6) as a little-endian u32, so
// its first byte is below 6: it can never start with the prefix.
const _: () = assert!(
    PREFIX[0] >= 6,
    "the prefix must not start a legacy encoding"
);

/// bincode as `bincode::serialize` writes it (fixed-width little-endian integers), but
/// refusing trailing bytes and reading no further than the input (so a garbage length
/// cannot make it allocate).
fn bincode_options(limit_bytes: usize) -> impl bincode::Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(u64::try_from(limit_bytes).unwrap_or(u64::MAX))
        .reject_trailing_bytes()
}

impl TransferRequest {
    /// The request's stored form: prefix, [`REQUEST_ENCODING_VERSION`], bincode. Read it
    /// back with [`TransferRequest::from_bytes`] (in this release or a later one).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_BYTES + 256);
        bytes.extend_from_slice(&PREFIX);
        bytes.extend_from_slice(&REQUEST_ENCODING_VERSION.to_le_bytes());
        // Writing into a Vec fails only for a size limit (none here) or a value serde
        // cannot express in bincode (every field is a string, bytes, an integer, an enum
        // or a sequence of known length, and paths are bytes): it cannot fail.
        if let Err(error) = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .serialize_into(&mut bytes, self)
        {
            panic!("invariant violation: a TransferRequest always encodes: {error}");
        }
        bytes
    }

    /// Decodes [`TransferRequest::to_bytes`] of any version this release knows, and the
    /// unversioned encoding of the previous release. The request still needs
    /// [`TransferRequest::validate`] before it is run.
    ///
    /// # Errors
    /// [`Error::InvalidEncoding`] for anything else: garbage, a truncated encoding,
    /// trailing bytes, or a version newer than this release reads.
    pub fn from_bytes(bytes: &[u8]) -> Result<TransferRequest> {
        let Some(rest) = bytes.strip_prefix(&PREFIX) else {
            return legacy::decode(bytes);
        };
        let Some((version, payload)) = rest.split_first_chunk::<2>() else {
            return Err(invalid("the version is missing after the prefix"));
        };
        match u16::from_le_bytes(*version) {
            1 => bincode_options(payload.len())
                .deserialize(payload)
                .map_err(|error| invalid(format!("version 1 does not decode: {error}"))),
            other => Err(invalid(format!(
                "version {other} is not one this release reads (0 to {REQUEST_ENCODING_VERSION})"
            ))),
        }
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidEncoding {
        reason: reason.into(),
    }
}

/// serde for a path as its OS bytes: bytes for binary formats (bincode), a string for
/// human-readable ones while it is UTF-8 (bytes otherwise), so JSON stays readable.
pub(crate) mod path_bytes {
    use std::fmt;
    use std::path::{Path, PathBuf};

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable()
            && let Some(text) = path.to_str()
        {
            return serializer.serialize_str(text);
        }
        serializer.serialize_bytes(path.as_os_str().as_encoded_bytes())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<PathBuf, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(PathVisitor)
        } else {
            deserializer.deserialize_byte_buf(PathVisitor)
        }
    }

    struct PathVisitor;

    impl<'de> Visitor<'de> for PathVisitor {
        type Value = PathBuf;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a path as a string or its bytes")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<PathBuf, E> {
            Ok(PathBuf::from(text))
        }

        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<PathBuf, E> {
            from_bytes(bytes.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<PathBuf, E> {
            from_bytes(bytes)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<PathBuf, A::Error> {
            // JSON writes bytes as an array of numbers.
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element::<u8>()? {
                bytes.push(byte);
            }
            from_bytes(bytes)
        }
    }

    #[cfg(unix)]
    fn from_bytes<E: de::Error>(bytes: Vec<u8>) -> Result<PathBuf, E> {
        use std::os::unix::ffi::OsStringExt as _;
        Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
    }

    // Elsewhere the OS bytes are not a public encoding: only UTF-8 paths come back.
    #[cfg(not(unix))]
    fn from_bytes<E: de::Error>(bytes: Vec<u8>) -> Result<PathBuf, E> {
        String::from_utf8(bytes)
            .map(PathBuf::from)
            .map_err(|_| E::custom("the stored path is not UTF-8"))
    }
}

/// The layout of session-http 0.1.0 (commit 0d4f3d7), stored unversioned. Frozen: never
/// change it, it is what old stores hold.
mod legacy {
    use std::path::PathBuf;

    use bincode::Options as _;
    use serde::{Deserialize, Serialize};

    use crate::error::Result;
    use crate::request;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(super) struct TransferRequest {
        pub(super) method: Method,
        pub(super) url: String,
        pub(super) headers: Vec<(String, String)>,
        pub(super) body: Body,
        pub(super) kind: TransferKind,
    }

    #[derive(Debug, Clone, Copy, Serialize, Deserialize)]
    pub(super) enum Method {
        Get,
        Head,
        Put,
        Post,
        Delete,
        Patch,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(super) enum Body {
        Empty,
        Bytes(Vec<u8>),
        // std's serde for PathBuf: a string.
        File(PathBuf),
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(super) enum TransferKind {
        Download {
            sha256: Option<String>,
            expected_bytes: Option<u64>,
        },
        Upload,
        Data,
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<request::TransferRequest> {
        let legacy: TransferRequest = super::bincode_options(bytes.len())
            .deserialize(bytes)
            .map_err(|error| {
                super::invalid(format!(
                    "no versioned prefix, and not the legacy layout either: {error}"
                ))
            })?;
        Ok(legacy.into())
    }

    impl From<TransferRequest> for request::TransferRequest {
        fn from(legacy: TransferRequest) -> Self {
            request::TransferRequest {
                method: match legacy.method {
                    Method::Get => request::Method::Get,
                    Method::Head => request::Method::Head,
                    Method::Put => request::Method::Put,
                    Method::Post => request::Method::Post,
                    Method::Delete => request::Method::Delete,
                    Method::Patch => request::Method::Patch,
                },
                url: legacy.url,
                headers: legacy.headers,
                body: match legacy.body {
                    Body::Empty => request::Body::Empty,
                    Body::Bytes(bytes) => request::Body::Bytes(bytes),
                    Body::File(path) => request::Body::File(path),
                },
                kind: match legacy.kind {
                    TransferKind::Download {
                        sha256,
                        expected_bytes,
                    } => request::TransferKind::Download {
                        sha256,
                        expected_bytes,
                    },
                    TransferKind::Upload => request::TransferKind::Upload,
                    TransferKind::Data => request::TransferKind::Data,
                },
                // The legacy layout had no marked headers; the built-in ones still apply.
                sensitive_headers: Vec::new(),
            }
        }
    }

    /// The legacy layout of a current request (tests build legacy bytes with it).
    #[cfg(test)]
    pub(super) fn from_current(request: &request::TransferRequest) -> TransferRequest {
        TransferRequest {
            method: match request.method {
                request::Method::Get => Method::Get,
                request::Method::Head => Method::Head,
                request::Method::Put => Method::Put,
                request::Method::Post => Method::Post,
                request::Method::Delete => Method::Delete,
                request::Method::Patch => Method::Patch,
            },
            url: request.url.clone(),
            headers: request.headers.clone(),
            body: match &request.body {
                request::Body::Empty => Body::Empty,
                request::Body::Bytes(bytes) => Body::Bytes(bytes.clone()),
                request::Body::File(path) => Body::File(path.clone()),
            },
            kind: match &request.kind {
                request::TransferKind::Download {
                    sha256,
                    expected_bytes,
                } => TransferKind::Download {
                    sha256: sha256.clone(),
                    expected_bytes: *expected_bytes,
                },
                request::TransferKind::Upload => TransferKind::Upload,
                request::TransferKind::Data => TransferKind::Data,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::request::{Body, Method};

    fn samples() -> Vec<TransferRequest> {
        vec![
            TransferRequest::download("http://127.0.0.1:9/a1?token=s3cret")
                .with_header("Authorization", "Bearer tok")
                .with_sensitive_header("X-Api-Key", "k")
                .with_sha256("ab".repeat(32))
                .with_expected_bytes(4096),
            TransferRequest::upload("https://example.invalid/up", "/old/root/upload-sources/a3")
                .with_method(Method::Post),
            TransferRequest::data(Method::Patch, "http://127.0.0.1:9/a2")
                .with_body(Body::Bytes(b"{\"k\":1}".to_vec())),
        ]
    }

    /// Every sample survives `to_bytes` and `from_bytes`, and the encoding starts with the
    /// prefix and the current version.
    #[test]
    fn versioned_round_trip() {
        for request in samples() {
            let bytes = request.to_bytes();
            assert_eq!(&bytes[..4], b"bgtr");
            assert_eq!(
                u16::from_le_bytes([bytes[4], bytes[5]]),
                REQUEST_ENCODING_VERSION
            );
            assert_eq!(TransferRequest::from_bytes(&bytes), Ok(request));
        }
    }

    /// The files written by the previous release's `bincode::serialize` (see
    /// `src/fixtures/README.md`) decode to the requests that were encoded.
    #[test]
    fn previous_release_fixtures_decode() {
        let download = TransferRequest::download("http://127.0.0.1:9/a1?token=s3cret")
            .with_header("Authorization", "Bearer tok")
            .with_header("X-Trace", "t-1")
            .with_sha256("ab".repeat(32))
            .with_expected_bytes(4096);
        let upload =
            TransferRequest::upload("https://example.invalid/up", "/old/root/upload-sources/a3")
                .with_method(Method::Post)
                .with_header("Content-Type", "application/octet-stream");
        let data = TransferRequest::data(Method::Patch, "http://127.0.0.1:9/a2")
            .with_body(Body::Bytes(b"{\"k\":1}".to_vec()));
        let fixtures: [(&[u8], TransferRequest); 3] = [
            (
                include_bytes!("fixtures/request-legacy-download.bin"),
                download,
            ),
            (include_bytes!("fixtures/request-legacy-upload.bin"), upload),
            (include_bytes!("fixtures/request-legacy-data.bin"), data),
        ];
        for (bytes, expected) in fixtures {
            assert_eq!(TransferRequest::from_bytes(bytes), Ok(expected));
        }
    }

    /// Bytes built from the frozen legacy struct decode to the same request, and the
    /// current layout of a UTF-8 path is byte for byte the legacy one (bytes and strings
    /// encode alike): version 1 is the legacy encoding plus the marked names.
    #[test]
    fn legacy_layout_decodes_and_paths_encode_as_before() {
        for request in samples() {
            let legacy = bincode::serialize(&legacy::from_current(&request)).expect("encodes");
            let mut expected = request.clone();
            expected.sensitive_headers.clear();
            assert_eq!(TransferRequest::from_bytes(&legacy), Ok(expected.clone()));
            let current = expected.to_bytes();
            let payload = &current[HEADER_BYTES..];
            assert_eq!(&payload[..legacy.len()], legacy.as_slice());
            // An empty list of marked names: a u64 zero.
            assert_eq!(&payload[legacy.len()..], &[0u8; 8]);
        }
    }

    /// A path that is not UTF-8 round-trips, through `to_bytes` and through plain bincode.
    #[cfg(unix)]
    #[test]
    fn non_utf8_path_round_trips() {
        use std::os::unix::ffi::OsStringExt as _;
        let path = PathBuf::from(std::ffi::OsString::from_vec(
            b"/tmp/\xff\xfe-upload".to_vec(),
        ));
        assert!(path.to_str().is_none(), "the sample must not be UTF-8");
        let request = TransferRequest::upload("http://127.0.0.1:9/u", path.clone());
        let back = TransferRequest::from_bytes(&request.to_bytes()).expect("decodes");
        assert_eq!(back.body, Body::File(path));
        let plain = bincode::serialize(&request).expect("plain bincode encodes it too");
        assert_eq!(
            bincode::deserialize::<TransferRequest>(&plain).ok(),
            Some(request)
        );
    }

    /// Garbage, every truncation of a valid encoding, trailing bytes, a damaged prefix and
    /// an unknown version are all typed errors.
    #[test]
    fn garbage_is_a_typed_error() {
        let is_invalid = |bytes: &[u8]| {
            matches!(
                TransferRequest::from_bytes(bytes),
                Err(Error::InvalidEncoding { .. })
            )
        };
        for garbage in [
            &b""[..],
            b"bgt",
            b"bgtr",
            b"bgtr\x01",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"{\"method\":\"Get\"}",
            // A legacy method index of 6 does not exist.
            b"\x06\x00\x00\x00",
        ] {
            assert!(is_invalid(garbage), "{garbage:?}");
        }
        for request in samples() {
            let bytes = request.to_bytes();
            for end in 0..bytes.len() {
                assert!(is_invalid(&bytes[..end]), "truncated at {end}");
            }
            let mut trailing = bytes.clone();
            trailing.push(0);
            assert!(is_invalid(&trailing), "trailing byte accepted");
            let mut future = bytes.clone();
            future[4..6].copy_from_slice(&2u16.to_le_bytes());
            assert!(is_invalid(&future), "unknown version accepted");
            for index in 0..PREFIX.len() {
                let mut damaged = bytes.clone();
                damaged[index] ^= 0x20;
                assert!(is_invalid(&damaged), "damaged prefix byte {index} accepted");
            }
            let legacy = bincode::serialize(&legacy::from_current(&request)).expect("encodes");
            for end in 0..legacy.len() {
                assert!(is_invalid(&legacy[..end]), "legacy truncated at {end}");
            }
        }
    }

    /// A huge announced length in garbage fails without allocating it.
    #[test]
    fn garbage_lengths_do_not_allocate() {
        let mut bytes = b"bgtr\x01\x00".to_vec();
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            TransferRequest::from_bytes(&bytes),
            Err(Error::InvalidEncoding { .. })
        ));
    }
}
