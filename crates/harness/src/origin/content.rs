//! Deterministic object content: the bytes of object `name` under `seed` at any offset,
//! computed rather than stored, so gigabyte objects cost nothing and any file can be
//! verified anywhere.
//!
//! Byte `i` is byte `i % 8` (little-endian) of the 64-bit word `mix(key + (i / 8) * φ)`,
//! where `key` mixes the seed with an FNV-1a hash of the name and `mix` is the splitmix64
//! finalizer: counter mode, so every word is independent and computed in a few cycles.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// The splitmix64 increment (2^64 / φ).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

/// The per-object key all words derive from.
pub(crate) fn object_key(seed: u64, name: &str) -> u64 {
    mix(seed.wrapping_add(GOLDEN_GAMMA)) ^ fnv1a(name.as_bytes())
}

fn word(key: u64, index: u64) -> [u8; 8] {
    mix(key.wrapping_add(index.wrapping_mul(GOLDEN_GAMMA))).to_le_bytes()
}

/// Fills `buf` with the bytes of object `name` from `offset`.
pub fn content(seed: u64, name: &str, offset: u64, buf: &mut [u8]) {
    let key = object_key(seed, name);
    let mut index = offset / 8;
    let skip = (offset % 8) as usize;
    let mut rest = buf;
    if skip != 0 {
        let head = word(key, index);
        let take = (8 - skip).min(rest.len());
        rest[..take].copy_from_slice(&head[skip..skip + take]);
        rest = &mut rest[take..];
        index += 1;
    }
    let mut chunks = rest.chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&word(key, index));
        index += 1;
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let last = word(key, index);
        let length = tail.len();
        tail.copy_from_slice(&last[..length]);
    }
}

/// The SHA-256 (lower-case hexadecimal) of the first `size` bytes of object `name`.
pub fn sha256(seed: u64, name: &str, size: u64) -> String {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1024 * 1024];
    let mut offset = 0;
    while offset < size {
        let length = usize::try_from((size - offset).min(buffer.len() as u64)).unwrap_or(0);
        content(seed, name, offset, &mut buffer[..length]);
        hasher.update(&buffer[..length]);
        offset += length as u64;
    }
    let mut text = String::with_capacity(64);
    for byte in hasher.finalize() {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// Whether `bytes` are the object's bytes at `offset`.
pub fn matches(seed: u64, name: &str, offset: u64, bytes: &[u8], scratch: &mut Vec<u8>) -> bool {
    scratch.resize(bytes.len(), 0);
    content(seed, name, offset, scratch);
    scratch.as_slice() == bytes
}

/// The object's strong ETag; `version` distinguishes the versions of an object whose
/// ETag changes per request.
pub(crate) fn etag(seed: u64, name: &str, size: u64, version: Option<u64>) -> String {
    let tag = mix(object_key(seed, name) ^ size);
    match version {
        None => format!("\"{tag:016x}\""),
        Some(version) => format!("\"{tag:016x}-r{version}\""),
    }
}

/// The object's Last-Modified date (a fixed instant per object, plus `version` seconds).
pub(crate) fn last_modified(seed: u64, name: &str, version: Option<u64>) -> String {
    let seconds = 1_600_000_000 + object_key(seed, name) % 100_000_000 + version.unwrap_or(0);
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any slice at any offset equals the same bytes cut from one long fill, and names and
    /// seeds give different bytes.
    #[test]
    fn content_is_offset_consistent() {
        let mut whole = vec![0; 4096];
        content(7, "obj", 0, &mut whole);
        for offset in [0usize, 1, 7, 8, 9, 15, 100, 4000] {
            for length in [0usize, 1, 3, 8, 13, 64] {
                if offset + length > whole.len() {
                    continue;
                }
                let mut part = vec![0; length];
                content(7, "obj", offset as u64, &mut part);
                assert_eq!(part, whole[offset..offset + length], "{offset}+{length}");
            }
        }
        let mut other = vec![0; 64];
        content(7, "obj2", 0, &mut other);
        assert_ne!(other, whole[..64]);
        content(8, "obj", 0, &mut other);
        assert_ne!(other, whole[..64]);
    }

    /// The streamed SHA-256 equals the hash of the materialised object.
    #[test]
    fn sha256_matches_content() {
        let size = 3 * 1024 * 1024 + 5;
        let mut bytes = vec![0; size];
        content(1, "x", 0, &mut bytes);
        let mut hasher = Sha256::new();
        hasher.update(&bytes);
        let expected: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sha256(1, "x", size as u64), expected);
    }
}
