//! `Retry-After` in both of its forms (RFC 9110 section 10.2.3): delta seconds and an HTTP
//! date. Servers send both; honouring only the seconds form is a known failure of other
//! systems.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// When a server asked to be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryAfter {
    /// Retry this long after the response arrived.
    Delay(Duration),
    /// Retry at (or after) this instant.
    At(SystemTime),
}

impl RetryAfter {
    /// The longest wait honoured (30 days); a longer request is clamped to it, so a
    /// hostile or buggy server cannot park a task forever.
    pub const WAIT_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

    /// Parses a `Retry-After` value received at `now`. Delta seconds and all three HTTP
    /// date formats are accepted; anything else (negative, fractional, words) is `None`.
    pub fn parse(header: &str, now: SystemTime) -> Option<RetryAfter> {
        let value = header.trim();
        if value.is_empty() {
            return None;
        }
        if value.bytes().all(|byte| byte.is_ascii_digit()) {
            // All digits but too large for u64 is still a (very long) delay, clamped.
            let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
            let delay = Duration::from_secs(seconds).min(Self::WAIT_MAX);
            return Some(RetryAfter::Delay(delay));
        }
        let at = httpdate::parse_http_date(value).ok()?;
        let latest = now.checked_add(Self::WAIT_MAX).unwrap_or(at);
        Some(RetryAfter::At(at.min(latest)))
    }

    /// The earliest instant a retry may start, for a response received at `now`. A date
    /// in the past means "now".
    pub fn not_before(&self, now: SystemTime) -> SystemTime {
        match self {
            RetryAfter::Delay(delay) => now.checked_add(*delay).unwrap_or(now),
            RetryAfter::At(at) => (*at).max(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        // 2024-01-02T03:04:05Z, a fixed clock.
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_164_645)
    }

    /// The delta-seconds form parses to a delay and `not_before` adds it to now.
    #[test]
    fn seconds_form() {
        let parsed = RetryAfter::parse("120", now());
        assert_eq!(parsed, Some(RetryAfter::Delay(Duration::from_secs(120))));
        let not_before = parsed.map(|r| r.not_before(now()));
        assert_eq!(not_before, Some(now() + Duration::from_secs(120)));
        assert_eq!(
            RetryAfter::parse(" 0 ", now()),
            Some(RetryAfter::Delay(Duration::ZERO))
        );
        assert_eq!(
            RetryAfter::parse("99999999999999999999999", now()),
            Some(RetryAfter::Delay(RetryAfter::WAIT_MAX)),
            "an overflowing delay is clamped, not refused"
        );
    }

    /// All three HTTP date formats parse to the same instant; a past date means now.
    #[test]
    fn date_form() {
        let at = now() + Duration::from_secs(60);
        let imf = httpdate::fmt_http_date(at);
        assert_eq!(RetryAfter::parse(&imf, now()), Some(RetryAfter::At(at)));
        assert_eq!(
            RetryAfter::parse("Tuesday, 02-Jan-24 03:05:05 GMT", now()),
            Some(RetryAfter::At(at))
        );
        assert_eq!(
            RetryAfter::parse("Tue Jan  2 03:05:05 2024", now()),
            Some(RetryAfter::At(at))
        );
        let past = RetryAfter::parse("Mon, 01 Jan 2024 00:00:00 GMT", now());
        assert_eq!(past.map(|r| r.not_before(now())), Some(now()));
        let far = RetryAfter::parse("Fri, 01 Jan 2100 00:00:00 GMT", now());
        assert_eq!(far, Some(RetryAfter::At(now() + RetryAfter::WAIT_MAX)));
    }

    /// Garbage is refused rather than guessed at.
    #[test]
    fn garbage_is_none() {
        for garbage in [
            "",
            " ",
            "soon",
            "-5",
            "1.5",
            "5s",
            "0x10",
            "Mon, 99 Foo 2024",
            "12 34",
        ] {
            assert_eq!(RetryAfter::parse(garbage, now()), None, "{garbage:?}");
        }
    }
}
