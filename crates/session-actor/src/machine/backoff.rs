//! The retry delay: exponential backoff with jitter.

use session_store::SessionConfig;

/// The delay before attempt `attempt + 1`, after `attempt` attempts (from 1) failed
/// transiently: `base * 2^(attempt - 1)`, capped at the maximum, then jittered into
/// `[delay / 2, delay)` ("equal jitter", so retries of many tasks spread out but never
/// come back immediately).
pub fn retry_delay_ms(config: &SessionConfig, attempt: u32, jitter_permille: u16) -> u64 {
    let doublings = attempt.saturating_sub(1).min(40);
    let delay = config
        .retry_delay_ms_base
        .saturating_mul(1u64 << doublings)
        .min(config.retry_delay_ms_max);
    let jitter = u64::from(jitter_permille.min(999));
    delay / 2 + (delay / 2).saturating_mul(jitter) / 1000
}
