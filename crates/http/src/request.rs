//! What to transfer ([`TransferRequest`], persisted by the caller) and where to put it
//! ([`Target`]), with validation that runs before anything is sent.
//!
//! The serde layout of these types is the stored encoding (see [`crate::encoding`]):
//! changing a field or a variant changes what a store holds, so it bumps
//! [`crate::REQUEST_ENCODING_VERSION`] and freezes the old layout for decoding.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::redact::redact_url;

/// Header names whose values never leave the engine: not logged, not in `Debug`, not in a
/// [`crate::Response`], not forwarded when a redirect changes scheme, host or port. A
/// request adds its own with [`TransferRequest::with_sensitive_header`].
pub const SENSITIVE_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "cookie2",
    "set-cookie",
    "set-cookie2",
];

/// Whether a header's value must never be logged or returned, whatever the request (the
/// built-in [`SENSITIVE_HEADERS`]; [`TransferRequest::is_sensitive`] adds a request's
/// own).
pub fn is_sensitive_header(name: &str) -> bool {
    SENSITIVE_HEADERS
        .iter()
        .any(|sensitive| sensitive.eq_ignore_ascii_case(name))
}

/// Headers the engine sets itself: a caller's value would break ranges, framing or
/// offsets.
const RESERVED_HEADERS: [&str; 8] = [
    "accept-encoding",
    "connection",
    "content-length",
    "host",
    "if-range",
    "range",
    "te",
    "transfer-encoding",
];

/// The HTTP method of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD.
    Head,
    /// PUT.
    Put,
    /// POST.
    Post,
    /// DELETE.
    Delete,
    /// PATCH.
    Patch,
}

impl Method {
    /// The method as reqwest spells it.
    pub(crate) fn to_reqwest(self) -> reqwest::Method {
        match self {
            Method::Get => reqwest::Method::GET,
            Method::Head => reqwest::Method::HEAD,
            Method::Put => reqwest::Method::PUT,
            Method::Post => reqwest::Method::POST,
            Method::Delete => reqwest::Method::DELETE,
            Method::Patch => reqwest::Method::PATCH,
        }
    }
}

/// A request body.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Body {
    /// No body.
    #[default]
    Empty,
    /// Bytes kept with the task (bounded by [`Limits::body_bytes_max`]).
    Bytes(Vec<u8>),
    /// A file streamed from disk, with its length as `Content-Length`. Any path the OS
    /// accepts, including one that is not UTF-8 (it is stored as its bytes).
    File(#[serde(with = "crate::encoding::path_bytes")] PathBuf),
}

impl fmt::Debug for Body {
    // A body may hold secrets (tokens in a form): show its size, never its bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Empty => f.write_str("Empty"),
            Body::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            Body::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// What kind of transfer this is, and what a download must be to count as complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferKind {
    /// The response body goes to a file, resumably.
    Download {
        /// The expected SHA-256 of the whole file, 64 hexadecimal digits.
        sha256: Option<String>,
        /// The expected length of the whole file, in bytes.
        expected_bytes: Option<u64>,
    },
    /// A file is sent as the body; it carries the target's `Idempotency-Key`.
    Upload,
    /// A small request and response kept in memory.
    Data,
}

/// One transfer, as the caller persists it: [`TransferRequest::to_bytes`] and
/// [`TransferRequest::from_bytes`] are its versioned encoding, which also reads what the
/// previous release stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// The method.
    pub method: Method,
    /// The absolute `http` or `https` URL. Its query is never logged (signed URLs carry
    /// their signature there).
    pub url: String,
    /// Request headers, in order. Sensitive values (see [`TransferRequest::is_sensitive`])
    /// are redacted from `Debug` and logs and are not forwarded when a redirect leaves the
    /// request's origin.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Body,
    /// The kind of transfer.
    pub kind: TransferKind,
    /// Names of further headers whose values are secrets (an `X-Api-Key`, say), treated
    /// like `Authorization`: compared case-insensitively, at most
    /// [`Limits::headers_max`]. Filled by [`TransferRequest::with_sensitive_header`].
    pub sensitive_headers: Vec<String>,
}

impl TransferRequest {
    /// A GET whose body goes to a file.
    pub fn download(url: impl Into<String>) -> Self {
        TransferRequest {
            method: Method::Get,
            url: url.into(),
            headers: Vec::new(),
            body: Body::Empty,
            kind: TransferKind::Download {
                sha256: None,
                expected_bytes: None,
            },
            sensitive_headers: Vec::new(),
        }
    }

    /// A PUT streaming `file` as the body.
    pub fn upload(url: impl Into<String>, file: impl Into<PathBuf>) -> Self {
        TransferRequest {
            method: Method::Put,
            url: url.into(),
            headers: Vec::new(),
            body: Body::File(file.into()),
            kind: TransferKind::Upload,
            sensitive_headers: Vec::new(),
        }
    }

    /// A small request whose response is kept in memory.
    pub fn data(method: Method, url: impl Into<String>) -> Self {
        TransferRequest {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Body::Empty,
            kind: TransferKind::Data,
            sensitive_headers: Vec::new(),
        }
    }

    /// Adds a request header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a request header whose value is a secret, and marks its name sensitive: the
    /// value is never logged, never shown by `Debug`, never returned in a
    /// [`crate::Response`] (should the server echo it), and not sent on once a redirect
    /// leaves the request's origin (scheme, host and port).
    pub fn with_sensitive_header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        let name = name.into();
        if !self.is_sensitive(&name) {
            self.sensitive_headers.push(name.to_ascii_lowercase());
        }
        self.headers.push((name, value.into()));
        self
    }

    /// Whether the value of header `name` is a secret for this request: one of
    /// [`SENSITIVE_HEADERS`] or a name the request marked (case-insensitive).
    pub fn is_sensitive(&self, name: &str) -> bool {
        is_sensitive_header(name)
            || self
                .sensitive_headers
                .iter()
                .any(|marked| marked.eq_ignore_ascii_case(name))
    }

    /// Replaces the method (an upload may be a POST).
    pub fn with_method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    /// Sets the SHA-256 a download must have (hexadecimal); other kinds are unchanged.
    pub fn with_sha256(mut self, hex: impl Into<String>) -> Self {
        if let TransferKind::Download { sha256, .. } = &mut self.kind {
            *sha256 = Some(hex.into());
        }
        self
    }

    /// Sets the length a download must have; other kinds are unchanged.
    pub fn with_expected_bytes(mut self, bytes: u64) -> Self {
        if let TransferKind::Download { expected_bytes, .. } = &mut self.kind {
            *expected_bytes = Some(bytes);
        }
        self
    }

    /// Checks everything that can be checked without I/O, so a bad request fails with a
    /// typed error before anything is sent.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        self.validate_url(limits)?;
        self.validate_headers(limits)?;
        if let Body::Bytes(bytes) = &self.body {
            let length = bytes.len() as u64;
            if length > limits.body_bytes_max {
                return Err(Error::BodyTooLarge {
                    bytes: length,
                    max: limits.body_bytes_max,
                });
            }
        }
        match &self.kind {
            TransferKind::Download { sha256, .. } => {
                if self.method != Method::Get {
                    return Err(Error::DownloadMethod {
                        method: self.method,
                    });
                }
                if self.body != Body::Empty {
                    return Err(Error::DownloadWithBody);
                }
                if let Some(value) = sha256
                    && !(value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    return Err(Error::InvalidSha256 {
                        value: value.clone(),
                    });
                }
            }
            TransferKind::Upload => {
                if !matches!(self.body, Body::File(_)) {
                    return Err(Error::UploadWithoutFile);
                }
            }
            TransferKind::Data => {}
        }
        Ok(())
    }

    /// The URL, parsed, once [`TransferRequest::validate`] accepted it.
    pub(crate) fn parsed_url(&self) -> Result<reqwest::Url> {
        reqwest::Url::parse(&self.url).map_err(|error| Error::InvalidUrl {
            reason: error.to_string(),
        })
    }

    fn validate_url(&self, limits: &Limits) -> Result<()> {
        if self.url.len() > limits.url_bytes_max {
            return Err(Error::UrlTooLong {
                bytes: self.url.len(),
                max: limits.url_bytes_max,
            });
        }
        let url = self.parsed_url()?;
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(Error::UnsupportedScheme {
                    scheme: other.to_owned(),
                });
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(Error::InvalidUrl {
                reason: "no host".to_owned(),
            });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::CredentialsInUrl);
        }
        Ok(())
    }

    fn validate_headers(&self, limits: &Limits) -> Result<()> {
        if self.headers.len() > limits.headers_max {
            return Err(Error::TooManyHeaders {
                count: self.headers.len(),
                max: limits.headers_max,
            });
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(Error::InvalidHeaderName { name: name.clone() });
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return Err(Error::InvalidHeaderValue { name: name.clone() });
            }
            let bytes = name.len() + value.len();
            if bytes > limits.header_bytes_max {
                return Err(Error::HeaderTooLarge {
                    name: name.clone(),
                    bytes,
                    max: limits.header_bytes_max,
                });
            }
            if RESERVED_HEADERS
                .iter()
                .any(|reserved| reserved.eq_ignore_ascii_case(name))
            {
                return Err(Error::ReservedHeader { name: name.clone() });
            }
        }
        if self.sensitive_headers.len() > limits.headers_max {
            return Err(Error::TooManyHeaders {
                count: self.sensitive_headers.len(),
                max: limits.headers_max,
            });
        }
        for name in &self.sensitive_headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(Error::InvalidHeaderName { name: name.clone() });
            }
        }
        Ok(())
    }
}

impl fmt::Debug for TransferRequest {
    // Debug output ends up in logs and panic messages: no query, no secret header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if self.is_sensitive(name) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("TransferRequest")
            .field("method", &self.method)
            .field("url", &redact_url(&self.url))
            .field("headers", &headers)
            .field("body", &self.body)
            .field("kind", &self.kind)
            .field("sensitive_headers", &self.sensitive_headers)
            .finish()
    }
}

/// Where one transfer's results go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The directory downloads are written into.
    pub download_dir: PathBuf,
    /// The application's identifier of the transfer. It may be anything: it is mapped to a
    /// file name that cannot leave `download_dir` (see [`crate::download_paths`]).
    pub name: String,
    /// Sent as `Idempotency-Key` (replacing a header of that name), so a server can
    /// recognise an upload sent again after a crash.
    pub idempotency_key: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    type ErrorCheck = fn(&Error) -> bool;

    fn limits() -> Limits {
        Limits::default()
    }

    /// Each kind of invalid request is refused with its own typed error.
    #[test]
    fn validation_errors_are_typed() {
        let ok = TransferRequest::download("http://127.0.0.1:1/x");
        assert_eq!(ok.validate(&limits()), Ok(()));

        let cases: Vec<(TransferRequest, ErrorCheck)> = vec![
            (TransferRequest::download("not a url"), |e| {
                matches!(e, Error::InvalidUrl { .. })
            }),
            (
                TransferRequest::download("ftp://127.0.0.1/x"),
                |e| matches!(e, Error::UnsupportedScheme { scheme } if scheme == "ftp"),
            ),
            (TransferRequest::download("file:///etc/passwd"), |e| {
                matches!(e, Error::UnsupportedScheme { .. })
            }),
            (
                TransferRequest::download("http://user:pw@127.0.0.1/x"),
                |e| matches!(e, Error::CredentialsInUrl),
            ),
            (
                TransferRequest::download(format!("http://127.0.0.1/{}", "a".repeat(9000))),
                |e| matches!(e, Error::UrlTooLong { .. }),
            ),
            (
                TransferRequest::download("http://127.0.0.1/x").with_header("bad name", "v"),
                |e| matches!(e, Error::InvalidHeaderName { .. }),
            ),
            (
                TransferRequest::download("http://127.0.0.1/x").with_header("x-a", "a\r\nb: c"),
                |e| matches!(e, Error::InvalidHeaderValue { name } if name == "x-a"),
            ),
            (
                TransferRequest::download("http://127.0.0.1/x").with_header("Range", "bytes=0-"),
                |e| matches!(e, Error::ReservedHeader { .. }),
            ),
            (
                TransferRequest::download("http://127.0.0.1/x")
                    .with_header("x-big", "v".repeat(9000)),
                |e| matches!(e, Error::HeaderTooLarge { .. }),
            ),
            (
                (0..65).fold(TransferRequest::download("http://127.0.0.1/x"), |r, i| {
                    r.with_header(format!("x-{i}"), "v")
                }),
                |e| matches!(e, Error::TooManyHeaders { count: 65, .. }),
            ),
            (
                TransferRequest::data(Method::Post, "http://127.0.0.1/x")
                    .with_body(Body::Bytes(vec![0; 512 * 1024 + 1])),
                |e| matches!(e, Error::BodyTooLarge { .. }),
            ),
            (
                TransferRequest::upload("http://127.0.0.1/x", "/tmp/f").with_body(Body::Empty),
                |e| matches!(e, Error::UploadWithoutFile),
            ),
            (
                TransferRequest::download("http://127.0.0.1/x").with_method(Method::Post),
                |e| matches!(e, Error::DownloadMethod { .. }),
            ),
            (
                TransferRequest::download("http://127.0.0.1/x").with_body(Body::Bytes(vec![1])),
                |e| matches!(e, Error::DownloadWithBody),
            ),
            (
                TransferRequest::download("http://127.0.0.1/x").with_sha256("xyz"),
                |e| matches!(e, Error::InvalidSha256 { .. }),
            ),
        ];
        for (request, expected) in cases {
            let error = request
                .validate(&limits())
                .expect_err("an invalid request must be refused");
            assert!(
                expected(&error),
                "unexpected error {error:?} for {request:?}"
            );
        }
    }

    /// Authorization, Cookie and marked header values, and the URL's query, never appear
    /// in a request's `Debug` output; other headers do.
    #[test]
    fn debug_redacts_credentials() {
        let request = TransferRequest::download("http://127.0.0.1/x?X-Amz-Signature=secret-sig")
            .with_header("Authorization", "Bearer secret-token")
            .with_header("cookie", "session=secret-cookie")
            .with_sensitive_header("X-Api-Key", "secret-key")
            .with_header("x-visible", "shown");
        let shown = format!("{request:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("shown"), "{shown}");
        assert!(shown.contains("http://127.0.0.1/x?<redacted>"), "{shown}");
    }

    /// Marked names are sensitive in any case, alongside the built-in ones; a name is
    /// marked once however often it is added; invalid marked names are refused.
    #[test]
    fn marked_headers_are_sensitive() {
        let request = TransferRequest::data(Method::Get, "http://127.0.0.1/x")
            .with_sensitive_header("X-Api-Key", "a")
            .with_sensitive_header("x-api-key", "b")
            .with_header("X-Other", "c");
        assert_eq!(request.sensitive_headers, vec!["x-api-key".to_owned()]);
        assert_eq!(request.headers.len(), 3);
        for name in [
            "X-API-KEY",
            "x-api-key",
            "Authorization",
            "COOKIE",
            "proxy-authorization",
        ] {
            assert!(request.is_sensitive(name), "{name}");
        }
        assert!(!request.is_sensitive("x-other"));
        assert_eq!(request.validate(&limits()), Ok(()));

        let mut bad = request.clone();
        bad.sensitive_headers.push("bad name".to_owned());
        assert!(matches!(
            bad.validate(&limits()),
            Err(Error::InvalidHeaderName { .. })
        ));
        let mut many = request;
        many.sensitive_headers = (0..65).map(|i| format!("x-{i}")).collect();
        assert!(matches!(
            many.validate(&limits()),
            Err(Error::TooManyHeaders { count: 65, .. })
        ));
    }

    /// A request survives a plain bincode round trip unchanged (what the actor stored
    /// before versioned encoding) and a `to_bytes` one.
    #[test]
    fn bincode_round_trip() {
        let upload = TransferRequest::upload("http://127.0.0.1/u", "/tmp/file")
            .with_method(Method::Post)
            .with_sensitive_header("x-a", "b");
        let download = TransferRequest::download("http://127.0.0.1/d")
            .with_sha256("ab".repeat(32))
            .with_expected_bytes(7);
        for request in [upload, download] {
            let bytes = bincode::serialize(&request).expect("serializable");
            let back: TransferRequest = bincode::deserialize(&bytes).expect("deserializable");
            assert_eq!(back, request);
            assert_eq!(
                TransferRequest::from_bytes(&request.to_bytes()),
                Ok(request)
            );
        }
    }
}
