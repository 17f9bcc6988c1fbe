//! What the origin saw, readable by tests and the harness.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The most distinct URLs counted; later ones are served as if seen before the fault
/// window (request number `u64::MAX`), so memory stays bounded.
const URLS_MAX: usize = 65_536;
/// The most served ranges remembered per object.
const RANGES_PER_OBJECT_MAX: usize = 256;
/// The most request heads remembered per object (the first ones).
const SEEN_PER_OBJECT_MAX: usize = 16;
/// The most objects whose request heads are remembered.
const SEEN_OBJECTS_MAX: usize = 4096;

/// One object response: which bytes it announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedRange {
    /// The status sent (200, 206, 416, or a fault's).
    pub status: u16,
    /// The first byte announced.
    pub start: u64,
    /// One past the last byte announced.
    pub end: u64,
}

/// A copy of the origin's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersSnapshot {
    /// Requests whose head was parsed.
    pub requests_total: u64,
    /// Requests per URL (path and query, as received).
    pub requests_by_url: BTreeMap<String, u64>,
    /// Requests per object or upload name.
    pub requests_by_object: BTreeMap<String, u64>,
    /// Body bytes written to the socket per object.
    pub body_bytes_by_object: BTreeMap<String, u64>,
    /// The ranges announced per object, in order (the first 256).
    pub ranges_by_object: BTreeMap<String, Vec<ServedRange>>,
    /// The most object responses in flight at once (from the parsed head to the last
    /// body write), a lower bound of the client's concurrency that never overstates it.
    pub responses_in_flight_peak: u64,
    /// Connections reset on purpose (fault `reset`).
    pub resets: u64,
    /// Complete upload bodies received that were not duplicates.
    pub uploads_received: u64,
    /// Uploads received whose bytes matched, per name.
    pub uploads_by_object: BTreeMap<String, u64>,
    /// Uploads whose `Idempotency-Key` was seen before: answered like the first, not
    /// stored again.
    pub duplicate_uploads_suppressed: u64,
    /// Uploads whose bytes or length differed from the object's.
    pub upload_mismatches: u64,
}

impl CountersSnapshot {
    /// Requests for one object or upload name.
    pub fn requests_for(&self, name: &str) -> u64 {
        self.requests_by_object.get(name).copied().unwrap_or(0)
    }

    /// Body bytes served for one object.
    pub fn body_bytes_for(&self, name: &str) -> u64 {
        self.body_bytes_by_object.get(name).copied().unwrap_or(0)
    }

    /// The ranges served for one object.
    pub fn ranges_for(&self, name: &str) -> &[ServedRange] {
        self.ranges_by_object
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// A request head as the origin received it, so a test can check what a client sent
/// (which headers survived a redirect, which method arrived).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenRequest {
    /// The method.
    pub method: String,
    /// Path and query as received.
    pub target: String,
    /// The headers, lower-case names, in order.
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The first request heads per object, bounded in both directions. Kept apart from
/// [`CountersSnapshot`], which goes into run reports: heads carry credentials.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    by_object: BTreeMap<String, Vec<SeenRequest>>,
}

impl Seen {
    pub(crate) fn record(&mut self, object: &str, request: SeenRequest) {
        let objects = self.by_object.len();
        let heads = match self.by_object.get_mut(object) {
            Some(heads) => heads,
            None if objects < SEEN_OBJECTS_MAX => {
                self.by_object.entry(object.to_owned()).or_default()
            }
            None => return,
        };
        if heads.len() < SEEN_PER_OBJECT_MAX {
            heads.push(request);
        }
    }

    pub(crate) fn for_object(&self, object: &str) -> Vec<SeenRequest> {
        self.by_object.get(object).cloned().unwrap_or_default()
    }
}

/// The live counters (behind the origin's mutex).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) snapshot: CountersSnapshot,
}

impl Counters {
    /// Counts a request and returns its number for this URL, from 1.
    pub(crate) fn request(&mut self, url: &str, object: Option<&str>) -> u64 {
        let counters = &mut self.snapshot;
        counters.requests_total += 1;
        if let Some(object) = object {
            *counters
                .requests_by_object
                .entry(object.to_owned())
                .or_default() += 1;
        }
        let urls = counters.requests_by_url.len();
        match counters.requests_by_url.get_mut(url) {
            Some(count) => {
                *count += 1;
                *count
            }
            None if urls < URLS_MAX => {
                counters.requests_by_url.insert(url.to_owned(), 1);
                1
            }
            None => u64::MAX,
        }
    }

    pub(crate) fn served(&mut self, object: &str, range: ServedRange) {
        let ranges = self
            .snapshot
            .ranges_by_object
            .entry(object.to_owned())
            .or_default();
        if ranges.len() < RANGES_PER_OBJECT_MAX {
            ranges.push(range);
        }
    }

    pub(crate) fn body_bytes(&mut self, object: &str, bytes: u64) {
        let by_object = &mut self.snapshot.body_bytes_by_object;
        match by_object.get_mut(object) {
            Some(total) => *total += bytes,
            None => {
                by_object.insert(object.to_owned(), bytes);
            }
        }
    }
}
