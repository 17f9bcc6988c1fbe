//! The writer's fail points (feature `failpoints`): `store-before-commit` and
//! `store-after-commit`, failing the batch in process (`return`) or aborting the process
//! (`return(abort)`, in a re-executed child). Each scenario sets up and tears down its
//! configuration; the in-process scenarios run in one test because fail points are global.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use session_harness::stores::Place;
use session_store::{Error, Store, StoreOptions};

fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).expect("open the store")
}

fn has_session(store: &Store, id: &str) -> bool {
    store
        .snapshot()
        .expect("snapshot")
        .session(&session_id(id))
        .expect("read")
        .is_some()
}

fn put(store: &Store, id: &str) -> Result<(), Error> {
    let record = session(id);
    store.write(move |scope| scope.put_session(&record))
}

/// `return` at `store-before-commit` fails the unit with `FailPoint` and commits
/// nothing; at `store-after-commit` the unit also gets `FailPoint` but its write is
/// durable (the "committed, reply lost" case the layers above must tolerate); with the
/// points removed, writes go through again.
///
/// On LMDB, then on PostgreSQL (one after the other: fail points are global), where a
/// commit whose reply is lost (`store-pg-commit-reply-lost`: committed, but the writer is
/// told the connection failed) is looked up on a new connection and reported committed.
#[test]
fn fail_points_fail_the_batch_in_process() {
    fail_points_fail_the_batch(&Place::lmdb());
    if let Some(place) = Place::postgres("fail_points_fail_the_batch_in_process") {
        fail_points_fail_the_batch(&place);
        a_lost_commit_reply_is_looked_up(&place);
    }
}

fn a_lost_commit_reply_is_looked_up(place: &Place) {
    let store = place.open();
    fail::cfg("store-pg-commit-reply-lost", "1*return").expect("configure");
    let result = put(&store, "reply-lost");
    fail::remove("store-pg-commit-reply-lost");
    assert!(result.is_ok(), "the batch committed: {result:?}");
    assert!(has_session(&store, "reply-lost"));
    put(&store, "next").expect("the writer goes on, on its new connection");
    assert!(has_session(&store, "next"));
}

fn fail_points_fail_the_batch(place: &Place) {
    let store = place.open();

    fail::cfg("store-before-commit", "return").expect("configure");
    let result = put(&store, "before");
    fail::remove("store-before-commit");
    assert!(
        matches!(
            result,
            Err(Error::FailPoint {
                name: "store-before-commit"
            })
        ),
        "{result:?}"
    );
    assert!(!has_session(&store, "before"));

    fail::cfg("store-after-commit", "return").expect("configure");
    let result = put(&store, "after");
    fail::remove("store-after-commit");
    assert!(
        matches!(
            result,
            Err(Error::FailPoint {
                name: "store-after-commit"
            })
        ),
        "{result:?}"
    );
    assert!(has_session(&store, "after"));

    put(&store, "plain").expect("no fail point configured");
    assert!(has_session(&store, "plain"));
}

const CHILD_DIR_VAR: &str = "SESSION_STORE_FAILPOINT_CHILD_DIR";
const CHILD_POINT_VAR: &str = "SESSION_STORE_FAILPOINT_CHILD_POINT";

/// Runs the child with `point` armed as `return(abort)`; returns whether it aborted.
fn run_aborting_child(dir: &Path, point: &str) -> bool {
    let status = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "aborting_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_VAR, dir)
        .env(CHILD_POINT_VAR, point)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run the child");
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(6)
}

/// `return(abort)` aborts the process at the point: before the commit, the unit in
/// flight is absent after reopening; after the commit, it is present (though its
/// submitter never heard back). Units committed earlier are present in both cases.
#[test]
fn abort_at_fail_points_kills_the_process() {
    for (point, target_present) in [("store-before-commit", false), ("store-after-commit", true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            run_aborting_child(dir.path(), point),
            "{point}: the child did not abort"
        );
        let store = open(dir.path());
        assert!(
            has_session(&store, "earlier"),
            "{point}: an earlier unit is missing"
        );
        assert_eq!(has_session(&store, "target"), target_present, "{point}");
    }
}

/// Not a test on its own: the child of `abort_at_fail_points_kills_the_process` (does
/// nothing unless the parent set the directory variable). Commits one unit, arms the fail
/// point and submits another, which must abort the process.
#[test]
fn aborting_child() {
    let (Some(dir), Ok(point)) = (
        std::env::var_os(CHILD_DIR_VAR),
        std::env::var(CHILD_POINT_VAR),
    ) else {
        return;
    };
    let store = open(Path::new(&dir));
    put(&store, "earlier").expect("the earlier unit commits");
    fail::cfg(point, "return(abort)").expect("configure");
    let result = put(&store, "target");
    println!("the process survived the fail point: {result:?}");
}
