//! HTTP/1.1 on the wire, just enough for the origin: request heads in, response heads
//! out, byte ranges, percent-decoding. One request per connection (`Connection: close`).

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest request head accepted, in bytes (431 above it).
pub(crate) const HEAD_BYTES_MAX: usize = 16 * 1024;
/// The most request headers accepted.
const HEADERS_MAX: usize = 100;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestHead {
    pub(crate) method: String,
    /// Path and query as received (the key for per-URL counting).
    pub(crate) target: String,
    /// The path, not decoded.
    pub(crate) path: String,
    /// Query parameters, decoded.
    pub(crate) query: Vec<(String, String)>,
    /// Headers with lower-case names, in order.
    pub(crate) headers: Vec<(String, String)>,
}

impl RequestHead {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Why a head could not be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The client closed before sending a head.
    Closed,
    /// Over [`HEAD_BYTES_MAX`] or too many headers.
    TooLarge,
    /// Not HTTP/1.x.
    Malformed(String),
    Io(io::Error),
}

/// Reads a request head; returns it with the body bytes that arrived with it.
pub(crate) async fn read_head(stream: &mut TcpStream) -> Result<(RequestHead, Vec<u8>), HeadError> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find_head_end(&buffer) {
            let head = parse_head(&buffer[..end])?;
            let rest = buffer[end + 4..].to_vec();
            return Ok((head, rest));
        }
        // Not a request line (a TLS ClientHello, say): answer now instead of waiting for
        // a blank line that will never come.
        if buffer
            .first()
            .is_some_and(|byte| !byte.is_ascii_uppercase())
        {
            return Err(HeadError::Malformed("not an HTTP/1 request".into()));
        }
        if buffer.len() > HEAD_BYTES_MAX {
            return Err(HeadError::TooLarge);
        }
        let read = stream.read(&mut chunk).await.map_err(HeadError::Io)?;
        if read == 0 {
            return Err(HeadError::Closed);
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(4).position(|window| window == b"\r\n\r\n")
}

fn parse_head(bytes: &[u8]) -> Result<RequestHead, HeadError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| HeadError::Malformed("the head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed(format!(
            "request line {request_line:?}"
        )));
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(HeadError::Malformed(format!(
            "request line {request_line:?}"
        )));
    }
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() >= HEADERS_MAX {
            return Err(HeadError::TooLarge);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HeadError::Malformed(format!("header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect();
    Ok(RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        path: path.to_owned(),
        query,
        headers,
    })
}

/// Decodes `%XX` escapes (a `+` stays a `+`); invalid escapes are kept as they are.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Encodes everything but unreserved characters, for building query values.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeRequest {
    /// No usable range: the whole representation.
    Full,
    /// Bytes `start..end`.
    Partial { start: u64, end: u64 },
    /// Nothing of it can be served (416).
    Unsatisfiable,
}

/// Parses a single-range `Range` header; several ranges or a malformed one are ignored
/// (served in full), as RFC 9110 allows.
pub(crate) fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return match last.parse::<u64>() {
            Ok(0) => RangeRequest::Unsatisfiable,
            Ok(_) if size == 0 => RangeRequest::Unsatisfiable,
            Ok(suffix) => RangeRequest::Partial {
                start: size.saturating_sub(suffix),
                end: size,
            },
            Err(_) => RangeRequest::Full,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        size
    } else {
        match last.parse::<u64>() {
            Ok(last) if last >= start => last.saturating_add(1).min(size),
            _ => return RangeRequest::Full,
        }
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial { start, end }
}

/// The reason phrase of a status (any phrase is valid; these help humans reading traces).
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes a response head; `Connection: close` and `Date` are added.
pub(crate) async fn write_head(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("Date: ");
    head.push_str(&httpdate::fmt_http_date(std::time::SystemTime::now()));
    head.push_str("\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await
}

/// Writes a complete small response.
pub(crate) async fn write_simple(
    stream: &mut TcpStream,
    status: u16,
    extra: &[(&str, String)],
    body: &[u8],
) -> io::Result<()> {
    let mut headers: Vec<(&str, String)> = extra.to_vec();
    headers.push(("Content-Length", body.len().to_string()));
    if !body.is_empty() {
        headers.push(("Content-Type", "text/plain; charset=utf-8".to_owned()));
    }
    write_head(stream, status, &headers).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Single ranges of every form map to the right bytes; odd ones are ignored or 416.
    #[test]
    fn ranges() {
        let size = 100;
        assert_eq!(
            parse_range("bytes=10-19", size),
            RangeRequest::Partial { start: 10, end: 20 }
        );
        assert_eq!(
            parse_range("bytes=10-", size),
            RangeRequest::Partial {
                start: 10,
                end: 100
            }
        );
        assert_eq!(
            parse_range("bytes=90-200", size),
            RangeRequest::Partial {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            parse_range("bytes=-5", size),
            RangeRequest::Partial {
                start: 95,
                end: 100
            }
        );
        assert_eq!(parse_range("bytes=100-", size), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", size), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", size), RangeRequest::Full);
        assert_eq!(parse_range("bytes=5-1", size), RangeRequest::Full);
        assert_eq!(parse_range("lines=1-2", size), RangeRequest::Full);
    }

    /// Percent-decoding inverts encoding and leaves broken escapes alone.
    #[test]
    fn percent_coding() {
        let text = "http://127.0.0.1:1/x?a=b&c=d e/%";
        assert_eq!(percent_decode(&percent_encode(text)), text);
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a+b"), "a+b");
    }

    /// Heads parse into method, target, decoded query and lower-case headers.
    #[test]
    fn heads() {
        let head = parse_head(
            b"GET /objects/a?size=10&fault=status%3A503 HTTP/1.1\r\nHost: x\r\nRange: bytes=1-",
        )
        .expect("valid head");
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/objects/a");
        assert_eq!(head.param("fault"), Some("status:503"));
        assert_eq!(head.header("range"), Some("bytes=1-"));
        assert!(parse_head(b"GET x HTTP/1.1").is_err());
    }
}
