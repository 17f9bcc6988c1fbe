//! Memory figures of this process, from `/proc/self/status` (Linux).

use anyhow::Context as _;

fn status_kib(field: &str) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse::<u64>().ok())
        .with_context(|| format!("unreadable {line:?}"))?;
    Ok(kib)
}

/// The peak resident set size of this process (VmHWM), in bytes.
///
/// # Errors
/// Not on Linux, or an unreadable status file.
pub fn max_rss_bytes() -> anyhow::Result<u64> {
    Ok(status_kib("VmHWM:")? * 1024)
}

/// The current resident set size of this process (VmRSS), in bytes.
///
/// # Errors
/// Not on Linux, or an unreadable status file.
pub fn rss_bytes() -> anyhow::Result<u64> {
    Ok(status_kib("VmRSS:")? * 1024)
}

/// The anonymous part of this process's resident memory (RssAnon: heap, stacks, what it
/// allocated), in bytes; the rest of VmRSS is file pages mapped in (a memory-mapped
/// store's pages, which belong to the page cache and are reclaimable).
///
/// # Errors
/// Not on Linux, or an unreadable status file.
pub fn anon_rss_bytes() -> anyhow::Result<u64> {
    Ok(status_kib("RssAnon:")? * 1024)
}
