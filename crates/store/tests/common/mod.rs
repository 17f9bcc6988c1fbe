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
