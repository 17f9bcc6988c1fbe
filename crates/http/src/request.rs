//! What to transfer ([`TransferRequest`], persisted by the caller) and where to put it
//! ([`Target`]), with validation that runs before anything is sent.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::Limits;

/// Header names whose values never leave the engine: not logged, not in `Debug`, not in a
/// [`crate::Response`], not forwarded to another host on a redirect (reqwest's rule).
pub const SENSITIVE_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "set-cookie2",
];

/// Whether a header's value must never be logged or returned.
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
    /// A file streamed from disk, with its length as `Content-Length`.
    File(PathBuf),
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

/// One transfer, as the caller persists it (serde; the session actor stores it as
/// bincode).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// The method.
    pub method: Method,
    /// The absolute `http` or `https` URL.
    pub url: String,
    /// Request headers, in order. Sensitive values are redacted from `Debug` and logs and
    /// are not forwarded to another host on a redirect.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Body,
    /// The kind of transfer.
    pub kind: TransferKind,
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
        }
    }

    /// Adds a request header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
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
        Ok(())
    }
}

impl fmt::Debug for TransferRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if is_sensitive_header(name) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("TransferRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body", &self.body)
            .field("kind", &self.kind)
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

    /// Authorization and Cookie values never appear in a request's `Debug` output.
    #[test]
    fn debug_redacts_credentials() {
        let request = TransferRequest::download("http://127.0.0.1/x")
            .with_header("Authorization", "Bearer secret-token")
            .with_header("cookie", "session=secret-cookie")
            .with_header("x-visible", "shown");
        let shown = format!("{request:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("shown"), "{shown}");
    }

    /// A request survives a bincode round trip unchanged (the actor persists it so).
    #[test]
    fn bincode_round_trip() {
        let request = TransferRequest::upload("http://127.0.0.1/u", "/tmp/file")
            .with_method(Method::Post)
            .with_header("x-a", "b");
        let bytes = bincode::serialize(&request).expect("serializable");
        let back: TransferRequest = bincode::deserialize(&bytes).expect("deserializable");
        assert_eq!(back, request);
        let download = TransferRequest::download("http://127.0.0.1/d")
            .with_sha256("ab".repeat(32))
            .with_expected_bytes(7);
        let bytes = bincode::serialize(&download).expect("serializable");
        let back: TransferRequest = bincode::deserialize(&bytes).expect("deserializable");
        assert_eq!(back, download);
    }
}
