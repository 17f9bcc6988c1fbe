//! Record builders and small helpers shared by the store's test binaries.

#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use session_store::{
    EventBody, EventRecord, Failure, FailureReason, Outcome, ResponseSummary, SessionConfig,
    SessionId, SessionRecord, SessionState, StoredCompletion, TaskId, TaskKind, TaskRecord,
    TaskState,
};

pub fn session_id(value: &str) -> SessionId {
    SessionId::new(value).expect("valid session id")
}

pub fn task_id(value: &str) -> TaskId {
    TaskId::new(value).expect("valid task id")
}

/// A valid session with work under way in generation 1.
pub fn session(id: &str) -> SessionRecord {
    let mut record =
        SessionRecord::new(session_id(id), SessionConfig::default(), 1_700_000_000_000);
    record.generation = 1;
    record.state = SessionState::AwaitingEvents;
    record.next_event_seq = 3;
    record.delivered_seq = 1;
    record.completion_generation = 1;
    record.validate().expect("the test session is valid");
    record
}

pub fn task(session: &str, id: &str, state: TaskState) -> TaskRecord {
    let record = TaskRecord {
        session: session_id(session),
        id: task_id(id),
        generation: 1,
        kind: TaskKind::Download,
        request: format!("GET /{session}/{id}").into_bytes(),
        created_ms: 1_700_000_000_123,
        state,
        wait: None,
        incarnation: 0,
    };
    record.validate().expect("the test task is valid");
    record
}

pub fn response(status: u16) -> ResponseSummary {
    ResponseSummary {
        status,
        headers: vec![("etag".into(), "\"v1\"".into())],
        body: b"body".to_vec(),
        file: Some("t.bin".into()),
        bytes: 4,
    }
}

/// Every task state and outcome, for roundtrips.
pub fn every_task_state() -> Vec<TaskState> {
    let completed = |outcome| TaskState::Completed {
        outcome,
        event_seq: 2,
        finished_ms: 1_700_000_000_456,
    };
    vec![
        TaskState::Pending {
            attempt: 0,
            not_before_ms: 5,
        },
        TaskState::Running { attempt: 1 },
        completed(Outcome::Success(response(200))),
        completed(Outcome::Rejected(response(404))),
        completed(Outcome::Failed(Failure {
            reason: FailureReason::RetryExhausted,
            message: "503 eight times".into(),
            attempts: 8,
        })),
        completed(Outcome::Cancelled),
    ]
}

pub fn event(session: &str, seq: u64, body: EventBody) -> EventRecord {
    let record = EventRecord {
        session: session_id(session),
        seq,
        generation: 1,
        body,
    };
    record.validate().expect("the test event is valid");
    record
}

/// Every event body, for roundtrips.
pub fn every_event_body() -> Vec<EventBody> {
    vec![
        EventBody::TaskCompleted {
            task: task_id("t1"),
            kind: TaskKind::Upload,
            outcome: Outcome::Success(response(201)),
        },
        EventBody::DidFinishEvents,
        EventBody::Completion(StoredCompletion {
            name: "notify".into(),
            payload: vec![1, 2, 3],
        }),
    ]
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Drives a future on the current thread with nothing but std: proves a future needs no
/// particular async runtime.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park();
    }
}

/// The environment variable that makes a skipped test fail instead (CI sets it to 1).
pub const REQUIRE_ALL_TESTS_VAR: &str = "BGSESSION_REQUIRE_ALL_TESTS";

/// A tmpfs of a fixed size mounted on a fresh temporary directory; unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = path_c_string(self.dir.path());
        // SAFETY: a NUL-terminated path that outlives the call. A lazy unmount is the
        // fallback should something still hold a file open there.
        unsafe {
            if libc::umount(target.as_ptr()) != 0 {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

fn path_c_string(path: &std::path::Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).expect("a path without NUL")
}

/// Mounts a tmpfs of `size_bytes` for `test`. Where mounting is not allowed (no
/// privileges, a restricted container) it prints `SKIP <test>: cannot mount a tmpfs:
/// <reason>` and returns `None`, unless `BGSESSION_REQUIRE_ALL_TESTS=1`, which makes it
/// fail with that reason.
pub fn mount_tmpfs(test: &str, size_bytes: u64) -> Option<Tmpfs> {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = path_c_string(dir.path());
    let options = std::ffi::CString::new(format!("size={size_bytes},mode=0700")).expect("options");
    // SAFETY: every pointer is to a NUL-terminated string that outlives the call.
    let status = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if status == 0 {
        return Some(Tmpfs { dir });
    }
    let reason = std::io::Error::last_os_error();
    if std::env::var(REQUIRE_ALL_TESTS_VAR).as_deref() == Ok("1") {
        panic!(
            "{test}: cannot mount a tmpfs: {reason} ({REQUIRE_ALL_TESTS_VAR}=1 forbids skipping)"
        );
    }
    println!("SKIP {test}: cannot mount a tmpfs: {reason}");
    None
}

/// A backend the store tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Lmdb,
    Postgres,
}

/// Where a test keeps its store: a temporary directory (LMDB), or a schema of its own
/// in the test binary's throwaway PostgreSQL cluster. `open` may be called again after
/// the store is closed or dropped: it opens the same store.
pub struct Place {
    pub backend: Backend,
    dir: tempfile::TempDir,
    url: String,
    schema: String,
}

static CLUSTER: std::sync::Mutex<Option<session_harness::postgres::Cluster>> =
    std::sync::Mutex::new(None);
static CLUSTER_URL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
static SCHEMAS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Stops the binary's cluster when the test binary exits (the harness of `cargo test`
/// leaves through `exit`, which runs this).
extern "C" fn stop_cluster() {
    let cluster = CLUSTER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    drop(cluster);
}

/// The URL of the test binary's cluster, started on first use; `None` (after one skip
/// line) where PostgreSQL is not installed and `BGSESSION_REQUIRE_POSTGRES` is not `1`.
pub fn cluster_url(test: &str) -> Option<String> {
    CLUSTER_URL
        .get_or_init(|| {
            let cluster = session_harness::postgres::postgres_or_skip(test)?;
            let url = cluster.url();
            *CLUSTER
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cluster);
            // SAFETY: `stop_cluster` is an `extern "C" fn()` that neither unwinds (it
            // only takes the cluster out of its mutex and drops it) nor calls `exit`.
            unsafe { libc::atexit(stop_cluster) };
            Some(url)
        })
        .clone()
}

impl Place {
    /// A new LMDB store directory.
    pub fn lmdb() -> Place {
        Place {
            backend: Backend::Lmdb,
            dir: tempfile::tempdir().expect("tempdir"),
            url: String::new(),
            schema: String::new(),
        }
    }

    /// A new schema in the binary's cluster, or `None` when the test is skipped.
    pub fn postgres(test: &str) -> Option<Place> {
        let url = cluster_url(test)?;
        let n = SCHEMAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(Place {
            backend: Backend::Postgres,
            dir: tempfile::tempdir().expect("tempdir"),
            url,
            schema: format!("t{}_{n}", std::process::id()),
        })
    }

    /// The local directory of the test (LMDB's store directory).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Opens the store with these application tables.
    pub fn open_with(&self, app_tables: &[&str]) -> session_store::Result<session_store::Store> {
        match self.backend {
            Backend::Lmdb => {
                let mut options = session_store::StoreOptions::default();
                for table in app_tables {
                    options = options.with_app_table(*table);
                }
                session_store::Store::open(self.dir.path(), options)
            }
            Backend::Postgres => {
                let mut options = session_store::PostgresOptions::new(&self.url, &self.schema);
                for table in app_tables {
                    options = options.app_table(*table);
                }
                session_store::Store::open_postgres(options)
            }
        }
    }

    /// Opens the store with the application table `ledger`.
    pub fn open(&self) -> session_store::Store {
        self.open_with(&["ledger"]).expect("open the store")
    }
}

/// Runs each named test, a function taking a `&Place`, on every backend: as
/// `lmdb::<name>` and `postgres::<name>` (the latter skipped, with one line, where
/// PostgreSQL is not installed).
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod lmdb {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::common::Place::lmdb());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(place) = super::common::Place::postgres(stringify!($name)) {
                        super::$name(&place);
                    }
                }
            )*
        }
    };
}
