//! The delays: exponential backoff with jitter, for transfer retries, waits and
//! failed deliveries.

use session_store::SessionConfig;

/// The delay before attempt `attempt + 1`, after `attempt` attempts (from 1) failed
/// transiently: `base * 2^(attempt - 1)`, capped at the maximum, then jittered into
/// `[delay / 2, delay)` ("equal jitter", so retries of many tasks spread out but never
/// come back immediately).
pub fn retry_delay_ms(config: &SessionConfig, attempt: u32, jitter_permille: u16) -> u64 {
    backoff(
        config.retry_delay_ms_base,
        config.retry_delay_ms_max,
        attempt,
        jitter_permille,
    )
}

/// The delay before the next try of a task that waits (for connectivity or storage),
/// after `tries` tries ended in the wait: like [`retry_delay_ms`] but capped at
/// `wait_retry_ms_max`.
pub fn wait_delay_ms(config: &SessionConfig, tries: u32, jitter_permille: u16) -> u64 {
    backoff(
        config.retry_delay_ms_base,
        config.wait_retry_ms_max,
        tries,
        jitter_permille,
    )
}

/// The delay before a failed delivery is tried again, after `attempts` failed attempts:
/// `delivery_retry_ms_base * 2^(attempts - 1)`, capped at `delivery_retry_ms_max`, jittered.
pub fn delivery_delay_ms(config: &SessionConfig, attempts: u32, jitter_permille: u16) -> u64 {
    backoff(
        config.delivery_retry_ms_base,
        config.delivery_retry_ms_max,
        attempts,
        jitter_permille,
    )
}

fn backoff(base_ms: u64, max_ms: u64, count: u32, jitter_permille: u16) -> u64 {
    let doublings = count.saturating_sub(1).min(40);
    let delay = base_ms.saturating_mul(1u64 << doublings).min(max_ms);
    let jitter = u64::from(jitter_permille.min(999));
    delay / 2 + (delay / 2).saturating_mul(jitter) / 1000
}
