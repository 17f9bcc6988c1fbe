//! The rule every PostgreSQL test starts with: run against a throwaway cluster when
//! PostgreSQL is installed, skip with one line when it is not, and fail instead of
//! skipping where skipping would hide a missing install (CI).

use std::io::Write as _;

use super::{Binaries, Cluster, Error};

/// The environment variable that turns a skip into a failure when set to `1`. CI sets
/// it so that the PostgreSQL tests always run there.
pub const REQUIRE_ENV: &str = "BGSESSION_REQUIRE_POSTGRES";

/// A throwaway cluster for the test `test_name`, or `None` when the PostgreSQL binaries
/// are missing, after one line on stderr:
///
/// `SKIP <test_name>: PostgreSQL not available: <reason> (install PostgreSQL, e.g. apt install postgresql)`
///
/// The line goes to the process's real stderr, past the test harness's capture, so that
/// a skip shows in `cargo test`'s output.
///
/// # Panics
/// When the binaries are missing and [`REQUIRE_ENV`] is `1`, and whenever the binaries
/// exist but the cluster does not start: those are failures of the test, not skips.
pub fn postgres_or_skip(test_name: &str) -> Option<Cluster> {
    if let Err(error) = Binaries::find() {
        skip_or_fail(test_name, &error);
        return None;
    }
    match Cluster::start_temp() {
        Ok(cluster) => Some(cluster),
        Err(error) => panic!("{test_name}: starting a PostgreSQL cluster: {error}"),
    }
}

/// The PostgreSQL binaries for the test `test_name`, or `None` after the same one line as
/// [`postgres_or_skip`]: for tests that start their own clusters.
///
/// # Panics
/// When the binaries are missing and [`REQUIRE_ENV`] is `1`.
pub fn binaries_or_skip(test_name: &str) -> Option<Binaries> {
    match Binaries::find() {
        Ok(binaries) => Some(binaries),
        Err(error) => {
            skip_or_fail(test_name, &error);
            None
        }
    }
}

fn skip_or_fail(test_name: &str, reason: &Error) {
    if std::env::var_os(REQUIRE_ENV).is_some_and(|value| value == "1") {
        panic!("{test_name}: PostgreSQL is required ({REQUIRE_ENV}=1) but not available: {reason}");
    }
    let line = format!(
        "SKIP {test_name}: PostgreSQL not available: {reason} (install PostgreSQL, e.g. apt install postgresql)\n"
    );
    // Nothing to do when stderr is closed: the skip itself still holds.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
