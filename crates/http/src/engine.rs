//! [`Engine`]: the client, the connection limits, and the driver of one attempt.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::classify::{Classified, FailReason};
use crate::error::{Error, Result};
use crate::limits::EngineConfig;
use crate::redact::{redact_parsed, redact_urls_in};
use crate::request::{Target, TransferKind, TransferRequest};
use crate::{download, transport, upload};

/// How far a transfer has got. Not durable: reported through a watch channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes of the file (download) or body (upload) done, including a resumed prefix.
    pub bytes_done: u64,
    /// The total, when known.
    pub bytes_expected: Option<u64>,
}

/// How many host semaphores are kept before idle ones are dropped.
const HOST_SEMAPHORES_MAX: usize = 1024;

/// Runs transfer attempts. Cheap to clone (one shared client and limits); build one per
/// tokio runtime, since reqwest's connection pool belongs to the runtime that made it.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: reqwest::Client,
    pub(crate) config: EngineConfig,
    /// One semaphore per `host:port`, each with `connections_per_host_max` permits.
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// `connections_max` permits shared by every attempt.
    global: Arc<Semaphore>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds an engine: validates the configuration and builds the HTTP client.
    pub fn new(config: EngineConfig) -> Result<Engine> {
        config.validate()?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            // The engine follows redirects itself (crate::redirect): its own method, scheme
            // and sensitive-header rules, and bodies sent again on 307 and 308.
            .redirect(reqwest::redirect::Policy::none())
            // A Referer would tell another host where the redirect came from.
            .referer(false)
            .pool_max_idle_per_host(config.connections_per_host_max)
            .user_agent(config.user_agent.clone());
        if !config.proxy_from_environment {
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|error| Error::Client {
            reason: redact_urls_in(&transport::error_chain(&error)),
        })?;
        let global = Arc::new(Semaphore::new(config.connections_max));
        Ok(Engine {
            inner: Arc::new(Inner {
                client,
                config,
                hosts: Mutex::new(HashMap::new()),
                global,
            }),
        })
    }

    /// The configuration the engine was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Runs one attempt of a transfer, bounded by the configured resource deadline.
    /// Never panics on network input; every outcome is classified.
    pub async fn run(
        &self,
        request: &TransferRequest,
        target: &Target,
        progress: Option<&watch::Sender<Progress>>,
    ) -> Classified {
        let deadline = Instant::now() + self.inner.config.resource_deadline;
        self.run_until(request, target, progress, deadline).await
    }

    /// Like [`Engine::run`], with the attempt also ending at `deadline` (the remainder of
    /// the task's resource deadline, which the caller tracks across attempts and
    /// restarts). Past it the attempt is `Failed` with [`FailReason::DeadlineExceeded`];
    /// a partial download stays on disk.
    pub async fn run_until(
        &self,
        request: &TransferRequest,
        target: &Target,
        progress: Option<&watch::Sender<Progress>>,
        deadline: Instant,
    ) -> Classified {
        let config = &self.inner.config;
        let deadline = deadline.min(Instant::now() + config.resource_deadline);
        if let Err(error) = request.validate(&config.limits) {
            let reason = if error.is_url() {
                FailReason::InvalidUrl
            } else {
                FailReason::InvalidRequest
            };
            return Classified::failed(reason, error.to_string());
        }
        let url = match request.parsed_url() {
            Ok(url) => url,
            Err(error) => return Classified::failed(FailReason::InvalidUrl, error.to_string()),
        };
        let shown_url = redact_parsed(&url);
        // Every line of the attempt, reqwest's included, carries the URL without its query.
        let span = tracing::debug_span!(
            "attempt",
            method = ?request.method,
            url = %shown_url,
            name = %target.name
        );
        async move {
            tracing::debug!("attempt starts");
            let attempt = self.attempt(request, url, target, progress);
            let outcome = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => Classified::failed(
                    FailReason::DeadlineExceeded,
                    "the attempt ran past its resource deadline",
                ),
            };
            log_outcome(&shown_url, &outcome);
            outcome
        }
        .instrument(span)
        .await
    }

    async fn attempt(
        &self,
        request: &TransferRequest,
        url: reqwest::Url,
        target: &Target,
        progress: Option<&watch::Sender<Progress>>,
    ) -> Classified {
        // Host first, then global: waiting for a busy host must not hold a global permit
        // that another host's transfer could use.
        let _host = self.inner.host_permit(&url).await;
        let _global = Arc::clone(&self.inner.global).acquire_owned().await;
        let inner = &self.inner;
        match &request.kind {
            TransferKind::Download {
                sha256,
                expected_bytes,
            } => {
                let expected = download::Expected {
                    sha256: sha256.as_deref(),
                    bytes: *expected_bytes,
                };
                download::run(inner, request, url, target, progress, expected).await
            }
            TransferKind::Upload | TransferKind::Data => {
                upload::run(inner, request, url, target, progress).await
            }
        }
    }
}

impl Inner {
    /// A permit of the URL's host semaphore. The semaphores are never closed, so the
    /// acquisition cannot fail; if it ever did, the attempt would run unthrottled rather
    /// than not at all.
    async fn host_permit(&self, url: &reqwest::Url) -> Option<OwnedSemaphorePermit> {
        let key = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        let semaphore = {
            let mut hosts = match self.hosts.lock() {
                Ok(hosts) => hosts,
                // The map holds no invariant a panic could break.
                Err(poisoned) => poisoned.into_inner(),
            };
            if hosts.len() >= HOST_SEMAPHORES_MAX {
                let permits = self.config.connections_per_host_max;
                hosts.retain(|_, semaphore| {
                    Arc::strong_count(semaphore) > 1 || semaphore.available_permits() < permits
                });
            }
            let permits = self.config.connections_per_host_max;
            Arc::clone(
                hosts
                    .entry(key)
                    .or_insert_with(|| Arc::new(Semaphore::new(permits))),
            )
        };
        semaphore.acquire_owned().await.ok()
    }
}

/// One line per attempt; `url` is redacted, and messages were redacted when built.
fn log_outcome(url: &str, outcome: &Classified) {
    match outcome {
        Classified::Success(response) => {
            tracing::debug!(
                url,
                status = response.status,
                bytes = response.bytes,
                "success"
            );
        }
        Classified::Rejected(response) => {
            tracing::info!(url, status = response.status, "rejected");
        }
        Classified::Retry {
            reason, message, ..
        } => tracing::info!(url, ?reason, message, "retry"),
        Classified::Failed { reason, message } => {
            tracing::warn!(url, ?reason, message, "failed");
        }
    }
}
