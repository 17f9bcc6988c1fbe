//! The origin: a small HTTP/1.1 server on 127.0.0.1 with deterministic content and
//! per-URL fault programs, written on plain tokio TCP for byte-level control (resets
//! mid-body, lying lengths) that a framework would fight.
//!
//! # URLs
//!
//! | request | answer |
//! |---|---|
//! | `GET`/`HEAD /objects/<name>?size=N` | the first N bytes of object `<name>` (see [`content`](crate::origin::content())), with `Range` (one range), `If-Range`, `ETag` and `Last-Modified`; no `size`: 404 |
//! | `PUT`/`POST /uploads/<name>?size=N` | 201 when the body (with `Content-Length`) is exactly `content(seed, name, 0..N)`, else 422; a repeated `Idempotency-Key` gets the first answer again and counts as a suppressed duplicate |
//! | `* /redirect?to=URL[&hops=H][&status=3xx]` | a redirect (302 by default) to `URL` (sent as given: any scheme, or garbage) after H hops through itself; a request body is read first |
//! | `* /redirect?location=omit[&status=3xx]` | the redirect status without a `Location` |
//! | `GET /loop` | a redirect to itself |
//! | `* /echo` | the request's headers, one `name: value` line each |
//!
//! `<name>` is percent-decoded. Query values are percent-decoded; `+` is not a space.
//!
//! Object options: `etag=per-request` (the ETag and Last-Modified change with every
//! request to the URL), `validators=both|etag|last-modified|none|weak` (which validators
//! are sent; `weak` sends `W/` ETags), `ranges=ignore` (always 200).
//!
//! # Fault programs
//!
//! `fault=<program>` applies to the first `times=K` requests (default 1) to the exact URL
//! (path and query, so tests vary a parameter to get a fresh count):
#![doc = include_str!("fault_table.md")]
//!
//! # Counters
//!
//! [`CountersSnapshot`](crate::origin::CountersSnapshot): requests in total, per URL and per object, body bytes served and
//! ranges announced per object, resets, uploads received, duplicates suppressed,
//! mismatches. Apart from them (they carry credentials, and snapshots go into reports),
//! [`Origin::requests_seen`](crate::origin::Origin::requests_seen) returns the first request heads of an object or upload name:
//! method, target and headers as received.

mod content;
mod counters;
mod fault;
mod serve;
mod wire;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;

pub use content::{content, matches, sha256};
pub use counters::{CountersSnapshot, SeenRequest, ServedRange};

/// The most connections served at once; more are closed on accept.
const CONNECTIONS_MAX: usize = 1024;
/// The most idempotency keys remembered.
const IDEMPOTENCY_KEYS_MAX: usize = 65_536;
/// The most gates held open (`gate:N` fault); opening more is ignored.
const GATES_MAX: usize = 65_536;

/// How to start an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginConfig {
    /// The content seed: object bytes are a function of (seed, name, offset).
    pub seed: u64,
    /// The port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
}

/// State shared by the connections of one origin.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) seed: u64,
    state: Mutex<State>,
    /// Object responses in flight now.
    in_flight: AtomicU64,
    /// Woken whenever a gate opens (`gate:N` fault).
    gate_opened: Notify,
}

/// Counts an object response as in flight from its parsed head until just before its
/// last body write (or its end). Ending before the last write means a client that starts
/// its next request after receiving the last byte is never counted twice, so the peak
/// never overstates the client's concurrency.
pub(crate) struct InFlight<'a>(Option<&'a Shared>);

impl<'a> InFlight<'a> {
    pub(crate) fn start(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let mut state = shared.lock();
        let peak = &mut state.counters.snapshot.responses_in_flight_peak;
        *peak = (*peak).max(now);
        InFlight(Some(shared))
    }

    pub(crate) fn end(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

#[derive(Debug, Default)]
struct State {
    counters: counters::Counters,
    seen: counters::Seen,
    /// The first answer to each idempotency key: (status, body).
    upload_answers: HashMap<String, (u16, String)>,
    /// The objects whose gate is open (at most [`GATES_MAX`]).
    gates_open: HashSet<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Counters stay meaningful after a panicking connection task.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn count(&self, url: &str, object: Option<&str>) -> u64 {
        self.lock().counters.request(url, object)
    }

    /// Remembers what a request for `object` looked like.
    pub(crate) fn seen(&self, object: &str, head: &wire::RequestHead) {
        let request = SeenRequest {
            method: head.method.clone(),
            target: head.target.clone(),
            headers: head.headers.clone(),
        };
        self.lock().seen.record(object, request);
    }

    fn requests_seen(&self, object: &str) -> Vec<SeenRequest> {
        self.lock().seen.for_object(object)
    }

    pub(crate) fn served(&self, object: &str, range: ServedRange) {
        self.lock().counters.served(object, range);
    }

    pub(crate) fn body_bytes(&self, object: &str, bytes: u64) {
        self.lock().counters.body_bytes(object, bytes);
    }

    pub(crate) fn reset(&self) {
        self.lock().counters.snapshot.resets += 1;
    }

    /// Records a complete upload and returns its answer (the first one again for a
    /// repeated idempotency key).
    pub(crate) fn upload_answer(
        &self,
        name: &str,
        key: Option<&str>,
        matched: bool,
        length: u64,
    ) -> (u16, String) {
        let mut state = self.lock();
        if let Some(answer) = key.and_then(|key| state.upload_answers.get(key)).cloned() {
            state.counters.snapshot.duplicate_uploads_suppressed += 1;
            return answer;
        }
        let counters = &mut state.counters.snapshot;
        counters.uploads_received += 1;
        let answer = if matched {
            *counters
                .uploads_by_object
                .entry(name.to_owned())
                .or_default() += 1;
            (201, format!("stored {name} ({length} bytes)\n"))
        } else {
            counters.upload_mismatches += 1;
            (
                422,
                format!("the upload of {name} does not match the object\n"),
            )
        };
        if let Some(key) = key
            && state.upload_answers.len() < IDEMPOTENCY_KEYS_MAX
        {
            state.upload_answers.insert(key.to_owned(), answer.clone());
        }
        answer
    }

    fn snapshot(&self) -> CountersSnapshot {
        self.lock().counters.snapshot.clone()
    }

    fn open_gate(&self, object: &str) {
        {
            let mut state = self.lock();
            if state.gates_open.len() < GATES_MAX {
                state.gates_open.insert(object.to_owned());
            }
        }
        self.gate_opened.notify_waiters();
    }

    /// Returns once the gate of `object` is open.
    pub(crate) async fn gate_opened(&self, object: &str) {
        loop {
            // Registered before the check, so an opening in between is not missed.
            let notified = self.gate_opened.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().gates_open.contains(object) {
                return;
            }
            notified.await;
        }
    }
}

/// An origin running on the current tokio runtime; stops (connections included) on drop.
#[derive(Debug)]
pub struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Origin {
    /// Binds 127.0.0.1 and starts serving on the current runtime.
    pub async fn bind(config: OriginConfig) -> io::Result<Origin> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, config.port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            seed: config.seed,
            state: Mutex::new(State::default()),
            in_flight: AtomicU64::new(0),
            gate_opened: Notify::new(),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        tracing::debug!(%addr, seed = config.seed, "origin listening");
        Ok(Origin {
            addr,
            shared,
            accept,
        })
    }

    /// Starts an origin on its own thread and runtime (for synchronous code, other
    /// runtimes, and the crash orchestrator). It stops when the handle is dropped.
    pub fn start_in_thread(config: OriginConfig) -> io::Result<OriginHandle> {
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("origin".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_sender.send(Err(error));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match Origin::bind(config).await {
                        Ok(origin) => {
                            let _ =
                                ready_sender.send(Ok((origin.addr, Arc::clone(&origin.shared))));
                            // Either a stop or the handle dropped: both end the origin.
                            let _ = stopped.await;
                            drop(origin);
                        }
                        Err(error) => {
                            let _ = ready_sender.send(Err(error));
                        }
                    }
                });
            })?;
        let (addr, shared) = ready
            .recv()
            .map_err(|_| io::Error::other("the origin thread ended before binding"))??;
        Ok(OriginHandle {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Serves in the foreground until the process is stopped, after printing the base
    /// URL (`http://127.0.0.1:<port>`) on its own line of standard output.
    pub fn run_foreground(config: OriginConfig) -> io::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let origin = Origin::bind(config).await?;
            println!("{}", origin.url(""));
            io::Write::flush(&mut io::stdout())?;
            std::future::pending::<()>().await;
            drop(origin);
            Ok(())
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The content seed.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// `http://127.0.0.1:<port>` followed by `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// A copy of the counters.
    pub fn counters(&self) -> CountersSnapshot {
        self.shared.snapshot()
    }

    /// The first request heads (up to 16) received for an object or upload name, in order.
    pub fn requests_seen(&self, name: &str) -> Vec<SeenRequest> {
        self.shared.requests_seen(name)
    }

    /// Opens the gate of object `name`: responses held by a `gate:N` fault send the rest
    /// of their body, and later ones pass without waiting.
    pub fn open_gate(&self, name: &str) {
        self.shared.open_gate(name);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection.
        self.accept.abort();
    }
}

/// An origin on its own thread; stops and joins the thread on drop.
#[derive(Debug)]
pub struct OriginHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OriginHandle {
    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The content seed.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// `http://127.0.0.1:<port>` followed by `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// A copy of the counters.
    pub fn counters(&self) -> CountersSnapshot {
        self.shared.snapshot()
    }

    /// The first request heads (up to 16) received for an object or upload name, in order.
    pub fn requests_seen(&self, name: &str) -> Vec<SeenRequest> {
        self.shared.requests_seen(name)
    }

    /// Opens the gate of object `name`: responses held by a `gate:N` fault send the rest
    /// of their body, and later ones pass without waiting.
    pub fn open_gate(&self, name: &str) {
        self.shared.open_gate(name);
    }
}

impl Drop for OriginHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, _peer)) => {
                if connections.len() >= CONNECTIONS_MAX {
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                connections.spawn(async move { serve::connection(stream, &shared).await });
            }
            Err(error) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "origin accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
