//! The crate's error type: what is wrong with a request or a configuration, found before
//! anything is sent. Outcomes of a transfer are not errors; they are [`crate::Classified`].

use crate::request::Method;

/// What is wrong with a transfer request or the engine's configuration.
///
/// Messages never contain header values, bodies or a URL's query (they may be secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The URL does not parse.
    #[error("invalid URL: {reason}")]
    InvalidUrl {
        /// Why the parser refused it.
        reason: String,
    },
    /// The URL's scheme is neither `http` nor `https`.
    #[error("unsupported URL scheme {scheme:?}: only http and https are transferred")]
    UnsupportedScheme {
        /// The scheme found.
        scheme: String,
    },
    /// The URL carries a user name or password, which would end up in logs.
    #[error("the URL carries credentials; send them in an Authorization header instead")]
    CredentialsInUrl,
    /// The URL is longer than the limit.
    #[error("the URL is {bytes} bytes, over the limit of {max}")]
    UrlTooLong {
        /// Its length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A header name is not a valid HTTP token.
    #[error("invalid header name {name:?}")]
    InvalidHeaderName {
        /// The name given.
        name: String,
    },
    /// A header value contains bytes HTTP does not allow (the value is not repeated here).
    #[error("invalid value for header {name:?}")]
    InvalidHeaderValue {
        /// The header's name.
        name: String,
    },
    /// The header is set by the engine itself (ranges, encodings, framing).
    #[error("header {name:?} is set by the engine and cannot be given")]
    ReservedHeader {
        /// The header's name.
        name: String,
    },
    /// More headers than the limit.
    #[error("{count} headers, over the limit of {max}")]
    TooManyHeaders {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// One header (name and value) is larger than the limit.
    #[error("header {name:?} is {bytes} bytes, over the limit of {max}")]
    HeaderTooLarge {
        /// The header's name.
        name: String,
        /// Name and value length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// An in-memory body is larger than the limit.
    #[error("the body is {bytes} bytes, over the limit of {max}")]
    BodyTooLarge {
        /// Its length.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// An upload whose body is not a file.
    #[error("an upload needs a file body")]
    UploadWithoutFile,
    /// A download with another method than GET (a resume repeats the request with a range).
    #[error("a download uses GET, not {method:?}")]
    DownloadMethod {
        /// The method given.
        method: Method,
    },
    /// A download with a request body.
    #[error("a download has no request body")]
    DownloadWithBody,
    /// The expected SHA-256 is not 64 hexadecimal digits.
    #[error("invalid expected sha256 {value:?}: 64 hexadecimal digits expected")]
    InvalidSha256 {
        /// The value given.
        value: String,
    },
    /// The engine configuration is unusable.
    #[error("invalid engine configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built (for example, no TLS roots).
    #[error("building the HTTP client failed: {reason}")]
    Client {
        /// The client's error.
        reason: String,
    },
    /// Bytes given to [`crate::TransferRequest::from_bytes`] are no encoding of a request
    /// this release reads (garbage, truncated, or a newer version).
    #[error("the stored transfer request does not decode: {reason}")]
    InvalidEncoding {
        /// What is wrong with them.
        reason: String,
    },
}

impl Error {
    /// Whether the error is about the URL (so the transfer fails as `InvalidUrl`).
    pub fn is_url(&self) -> bool {
        match self {
            Error::InvalidUrl { .. }
            | Error::UnsupportedScheme { .. }
            | Error::CredentialsInUrl
            | Error::UrlTooLong { .. } => true,
            Error::InvalidHeaderName { .. }
            | Error::InvalidHeaderValue { .. }
            | Error::ReservedHeader { .. }
            | Error::TooManyHeaders { .. }
            | Error::HeaderTooLarge { .. }
            | Error::BodyTooLarge { .. }
            | Error::UploadWithoutFile
            | Error::DownloadMethod { .. }
            | Error::DownloadWithBody
            | Error::InvalidSha256 { .. }
            | Error::InvalidConfig { .. }
            | Error::Client { .. }
            | Error::InvalidEncoding { .. } => false,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
