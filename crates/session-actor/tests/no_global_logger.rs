//! Opening `Sessions` installs no global logger: afterwards the application can still
//! install its own `log` logger (here `tracing_log::LogTracer`, what `bridge_log` does),
//! which fails if one is installed already. Its own test binary, since the logger is
//! process-wide.

#[test]
fn open_installs_no_global_logger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = session_actor::Sessions::builder(dir.path())
        .open()
        .expect("open");
    assert!(
        tracing_log::LogTracer::init().is_ok(),
        "a global `log` logger was installed by open()"
    );
    // Installed now: a second install fails, which shows the check above can fail.
    assert!(tracing_log::LogTracer::init().is_err());
    session_actor::block_on(sessions.shutdown()).expect("shutdown");
}
