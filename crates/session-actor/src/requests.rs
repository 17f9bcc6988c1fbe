//! How a task's transfer description is kept in its record: encoded and versioned by
//! session-http, which also reads the unversioned encoding of the previous release, so a
//! store written by it stays readable.

use session_http::TransferRequest;

/// The bytes a task record keeps for `request`.
pub(crate) fn encode(request: &TransferRequest) -> Result<Vec<u8>, String> {
    Ok(request.to_bytes())
}

/// The description a task record keeps.
pub(crate) fn decode(bytes: &[u8]) -> Result<TransferRequest, String> {
    TransferRequest::from_bytes(bytes)
        .map_err(|error| format!("the stored transfer description does not decode: {error}"))
}

/// Whether two stored descriptions describe the same transfer, whatever their encodings.
pub(crate) fn same(stored: &[u8], given: &[u8]) -> bool {
    match (decode(stored), decode(given)) {
        (Ok(stored), Ok(given)) => stored == given,
        _ => false,
    }
}

/// The fields of two stored descriptions that differ, for a conflict error (empty if
/// either does not decode).
pub(crate) fn differing_fields(stored: &[u8], given: &[u8]) -> Vec<&'static str> {
    let (Ok(stored), Ok(given)) = (decode(stored), decode(given)) else {
        return Vec::new();
    };
    let mut fields = Vec::new();
    if stored.method != given.method {
        fields.push("method");
    }
    if stored.url != given.url {
        fields.push("url");
    }
    if stored.headers != given.headers || stored.sensitive_headers != given.sensitive_headers {
        fields.push("headers");
    }
    if stored.body != given.body {
        fields.push("body");
    }
    if stored.kind != given.kind {
        fields.push("kind");
    }
    fields
}
