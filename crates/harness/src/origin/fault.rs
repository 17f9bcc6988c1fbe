//! Fault programs, chosen per URL with the `fault` query parameter and applied to the
//! first `times` requests of that exact URL (default 1).
//!
#![doc = include_str!("fault_table.md")]

use std::time::{Duration, SystemTime};

/// The longest drip interval, so a typo cannot hang a test for hours.
const DRIP_INTERVAL_MS_MAX: u64 = 10_000;

/// One fault program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    Reset {
        after_bytes: u64,
    },
    Status {
        code: u16,
        retry_after: Option<RetryAfterForm>,
    },
    Drip {
        bytes: u64,
        interval: Duration,
    },
    Lie {
        sent_bytes: u64,
    },
    Stall {
        after_bytes: u64,
    },
    Encoding {
        coding: String,
    },
    Chunked,
    Gate {
        after_bytes: u64,
    },
}

/// How a fault's Retry-After is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RetryAfterForm {
    /// Sent verbatim (the seconds form, or garbage).
    Verbatim(String),
    /// An HTTP date this many seconds after the response.
    DateIn(u64),
}

impl RetryAfterForm {
    pub(crate) fn header_value(&self, now: SystemTime) -> String {
        match self {
            RetryAfterForm::Verbatim(text) => text.clone(),
            RetryAfterForm::DateIn(seconds) => {
                httpdate::fmt_http_date(now + Duration::from_secs(*seconds))
            }
        }
    }
}

impl Fault {
    /// Parses a `fault` parameter value.
    pub(crate) fn parse(text: &str) -> Result<Fault, String> {
        let mut parts = text.splitn(3, ':');
        let kind = parts.next().unwrap_or_default();
        let first = parts.next();
        let second = parts.next();
        let number = |value: Option<&str>, what: &str| -> Result<u64, String> {
            value
                .ok_or_else(|| format!("fault {kind:?} needs {what}"))?
                .parse::<u64>()
                .map_err(|error| format!("fault {kind:?}: bad {what}: {error}"))
        };
        let fault = match kind {
            "reset" => Fault::Reset {
                after_bytes: number(first, "a byte count")?,
            },
            "status" => {
                let code = number(first, "a status code")?;
                let code = u16::try_from(code)
                    .ok()
                    .filter(|code| (100..=999).contains(code))
                    .ok_or_else(|| format!("status {code} is not three digits"))?;
                let retry_after = second.map(|value| match value.strip_prefix("date+") {
                    Some(seconds) => match seconds.parse::<u64>() {
                        Ok(seconds) => RetryAfterForm::DateIn(seconds),
                        Err(_) => RetryAfterForm::Verbatim(value.to_owned()),
                    },
                    None => RetryAfterForm::Verbatim(value.to_owned()),
                });
                Fault::Status { code, retry_after }
            }
            "drip" => Fault::Drip {
                bytes: number(first, "a piece size")?.max(1),
                interval: Duration::from_millis(
                    number(second, "an interval")?.min(DRIP_INTERVAL_MS_MAX),
                ),
            },
            "lie" => Fault::Lie {
                sent_bytes: number(first, "a byte count")?,
            },
            "stall" => Fault::Stall {
                after_bytes: match first {
                    Some(_) => number(first, "a byte count")?,
                    None => 0,
                },
            },
            "encoding" => {
                let coding = first.ok_or("fault \"encoding\" needs a content coding")?;
                let token = !coding.is_empty()
                    && coding.bytes().all(|byte| {
                        byte.is_ascii_alphanumeric() || b"-._~!#$&'*+^`|".contains(&byte)
                    });
                if !token {
                    return Err(format!("content coding {coding:?} is not a token"));
                }
                Fault::Encoding {
                    coding: coding.to_owned(),
                }
            }
            "chunked" if first.is_none() => Fault::Chunked,
            "chunked" => return Err(format!("fault {text:?} takes no argument")),
            "gate" => Fault::Gate {
                after_bytes: number(first, "a byte count")?,
            },
            other => return Err(format!("unknown fault {other:?}")),
        };
        if second.is_some() && !matches!(fault, Fault::Status { .. } | Fault::Drip { .. }) {
            return Err(format!("fault {text:?} has too many arguments"));
        }
        Ok(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every documented form parses and malformed ones are refused.
    #[test]
    fn fault_syntax() {
        assert_eq!(
            Fault::parse("reset:100"),
            Ok(Fault::Reset { after_bytes: 100 })
        );
        assert_eq!(
            Fault::parse("status:503:5"),
            Ok(Fault::Status {
                code: 503,
                retry_after: Some(RetryAfterForm::Verbatim("5".into()))
            })
        );
        assert_eq!(
            Fault::parse("status:429:date+3"),
            Ok(Fault::Status {
                code: 429,
                retry_after: Some(RetryAfterForm::DateIn(3))
            })
        );
        assert_eq!(
            Fault::parse("status:404"),
            Ok(Fault::Status {
                code: 404,
                retry_after: None
            })
        );
        assert_eq!(
            Fault::parse("drip:10:5"),
            Ok(Fault::Drip {
                bytes: 10,
                interval: Duration::from_millis(5)
            })
        );
        assert_eq!(Fault::parse("lie:7"), Ok(Fault::Lie { sent_bytes: 7 }));
        assert_eq!(Fault::parse("stall"), Ok(Fault::Stall { after_bytes: 0 }));
        assert_eq!(Fault::parse("chunked"), Ok(Fault::Chunked));
        assert_eq!(Fault::parse("gate:5"), Ok(Fault::Gate { after_bytes: 5 }));
        assert_eq!(
            Fault::parse("encoding:gzip"),
            Ok(Fault::Encoding {
                coding: "gzip".into()
            })
        );
        for bad in [
            "",
            "boom",
            "reset",
            "reset:x",
            "status:5",
            "drip:1",
            "lie:1:2",
            "encoding",
            "encoding:",
            "encoding:a b",
            "encoding:gzip:1",
            "chunked:1",
            "gate",
            "gate:x",
            "gate:1:2",
        ] {
            assert!(Fault::parse(bad).is_err(), "{bad}");
        }
    }
}
