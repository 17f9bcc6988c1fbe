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
