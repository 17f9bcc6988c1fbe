//! Every bound the engine applies, with its unit, and the engine's configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Size and count limits on requests and responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The longest URL, in bytes.
    pub url_bytes_max: usize,
    /// The most request headers.
    pub headers_max: usize,
    /// The largest request header, name plus value, in bytes.
    pub header_bytes_max: usize,
    /// The largest in-memory request body ([`crate::Body::Bytes`]), in bytes. It is
    /// persisted with the task, so it stays well below the store's record limit.
    pub body_bytes_max: u64,
    /// The largest file sent as a request body, in bytes.
    pub upload_file_bytes_max: u64,
    /// The largest response body of a data task (the task fails above it), in bytes.
    pub data_response_bytes_max: u64,
    /// How much of the body of a rejected response, or of an upload's response, is kept
    /// (the rest is dropped), in bytes.
    pub error_body_bytes_max: u64,
    /// The most response headers kept in a [`crate::Response`] (the rest are dropped).
    pub response_headers_max: usize,
    /// The largest download, in bytes.
    pub download_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            url_bytes_max: 8 * 1024,
            headers_max: 64,
            header_bytes_max: 8 * 1024,
            body_bytes_max: 512 * 1024,
            upload_file_bytes_max: 1 << 40,
            data_response_bytes_max: 1024 * 1024,
            error_body_bytes_max: 64 * 1024,
            response_headers_max: 128,
            download_bytes_max: 1 << 40,
        }
    }
}

/// How the engine connects, waits and bounds its work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// How long a TCP (and TLS) connect may take.
    pub connect_timeout: Duration,
    /// How long the connection may stay silent: no response bytes while a response is
    /// awaited or streamed, no request bytes taken while a body is sent. It is reset by
    /// every read, so it never limits a long transfer that keeps moving. Connecting is
    /// not silence: the wait for a response lasts at least `connect_timeout` (and a
    /// second), so a connect that hangs ends as [`crate::RetryReason::Unreachable`].
    pub read_idle_timeout: Duration,
    /// The most one attempt may take in total (the session's resource deadline bounds it
    /// further across attempts through [`crate::Engine::run_until`]).
    pub resource_deadline: Duration,
    /// The most attempts running at once against one host (host and port).
    pub connections_per_host_max: usize,
    /// The most attempts running at once in this engine.
    pub connections_max: usize,
    /// The most redirects followed in one attempt.
    pub redirects_max: usize,
    /// Whether `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` from the environment are used.
    pub proxy_from_environment: bool,
    /// The `User-Agent` sent.
    pub user_agent: String,
    /// Bytes of the download directory's file system that downloads never use, so that
    /// whatever shares it (the session store, which must always be able to commit) keeps
    /// room. A download that would eat into it ends as
    /// [`crate::RetryReason::InsufficientStorage`] (see the crate docs); `0` lets downloads
    /// fill the file system. At most [`EngineConfig::DISK_RESERVE_BYTES_MAX`]. Absent
    /// from a configuration serialized before it existed, it reads as the default.
    #[serde(default = "default_disk_reserve_bytes")]
    pub disk_reserve_bytes: u64,
    /// Size and count limits.
    pub limits: Limits,
}

/// The default [`EngineConfig::disk_reserve_bytes`]: 128 MiB.
const DISK_RESERVE_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;

fn default_disk_reserve_bytes() -> u64 {
    DISK_RESERVE_BYTES_DEFAULT
}

impl EngineConfig {
    /// The longest timeout or deadline accepted (a year), so deadline arithmetic cannot
    /// overflow.
    pub const DURATION_MAX: Duration = Duration::from_secs(366 * 24 * 3600);

    /// The largest [`EngineConfig::disk_reserve_bytes`] accepted (1 TiB): a larger one is
    /// a mistake that would park every download.
    pub const DISK_RESERVE_BYTES_MAX: u64 = 1 << 40;

    /// Checks that the configuration is usable.
    pub fn validate(&self) -> Result<()> {
        let durations = [
            ("connect_timeout", self.connect_timeout),
            ("read_idle_timeout", self.read_idle_timeout),
            ("resource_deadline", self.resource_deadline),
        ];
        for (name, duration) in durations {
            if duration.is_zero() || duration > Self::DURATION_MAX {
                return Err(Error::InvalidConfig {
                    reason: format!(
                        "{name} {duration:?} is outside (0, {:?}]",
                        Self::DURATION_MAX
                    ),
                });
            }
        }
        let counts = [
            ("connections_per_host_max", self.connections_per_host_max),
            ("connections_max", self.connections_max),
        ];
        for (name, count) in counts {
            // tokio semaphores hold at most usize::MAX >> 3 permits.
            if count == 0 || count > 1 << 20 {
                return Err(Error::InvalidConfig {
                    reason: format!("{name} {count} is outside 1..={}", 1 << 20),
                });
            }
        }
        if self.disk_reserve_bytes > Self::DISK_RESERVE_BYTES_MAX {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "disk_reserve_bytes {} is over {}",
                    self.disk_reserve_bytes,
                    Self::DISK_RESERVE_BYTES_MAX
                ),
            });
        }
        if self.redirects_max > 100 {
            return Err(Error::InvalidConfig {
                reason: format!("redirects_max {} is over 100", self.redirects_max),
            });
        }
        Ok(())
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            connect_timeout: Duration::from_secs(30),
            read_idle_timeout: Duration::from_secs(60),
            resource_deadline: Duration::from_secs(7 * 24 * 3600),
            connections_per_host_max: 6,
            connections_max: 64,
            redirects_max: 10,
            proxy_from_environment: true,
            user_agent: concat!("bgsession/", env!("CARGO_PKG_VERSION")).to_owned(),
            disk_reserve_bytes: DISK_RESERVE_BYTES_DEFAULT,
            limits: Limits::default(),
        }
    }
}
