//! The child process: the test binary (or the example) re-executed for one crash test,
//! told by environment variables that it is a worker, which run it is and where.
//!
//! Under libtest the child runs only this test (`<name> --exact`); libtest names a
//! test's thread after the test, which is how the parent learns the name. In a plain
//! `main` the child gets the parent's own arguments.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::Error;
use crate::crash::orchestrator::Launch;
use crate::crash::worker::{DelegateMode, WorkerRun};

/// Set in a worker child: the run directory.
pub const WORKER_ENV: &str = "BGSESSION_TESTKIT_WORKER";
/// Set in a worker child: the run's number.
const RUN_ENV: &str = "BGSESSION_TESTKIT_RUN";
/// Set in a worker child: the delegate panic rate of the run.
const PANIC_RATE_ENV: &str = "BGSESSION_TESTKIT_PANIC_RATE";
/// Set in a worker child: the crash test it was started for.
const TEST_ENV: &str = "BGSESSION_TESTKIT_TEST";
/// The name of the main thread, which is not a libtest test's.
const MAIN_THREAD: &str = "main";

/// Where the crash test runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Harness {
    /// A libtest `#[test]` of this name (its full path in the test binary).
    LibTest {
        /// The test's name.
        test: String,
    },
    /// A plain `main` (an example or a binary of yours).
    Main,
}

impl Harness {
    /// The harness of the calling thread: a libtest test's thread is named after it.
    pub(crate) fn detect(name: Option<&str>) -> Harness {
        match name {
            Some(test) => Harness::LibTest {
                test: test.to_owned(),
            },
            None => match std::thread::current().name() {
                Some(name) if name != MAIN_THREAD => Harness::LibTest {
                    test: name.to_owned(),
                },
                _ => Harness::Main,
            },
        }
    }

    /// The name used to check that a child runs the right crash test.
    pub(crate) fn name(&self) -> &str {
        match self {
            Harness::LibTest { test } => test,
            Harness::Main => MAIN_THREAD,
        }
    }

    /// The name shown to a person: the test's, or the executable's in a `main`.
    pub(crate) fn display_name(&self) -> String {
        match self {
            Harness::LibTest { test } => test.clone(),
            Harness::Main => std::env::current_exe()
                .ok()
                .and_then(|exe| {
                    exe.file_stem()
                        .map(|stem| stem.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| MAIN_THREAD.to_owned()),
        }
    }
}

/// A worker child's orders, read from its environment.
#[derive(Debug, Clone)]
pub(crate) struct WorkerOrders {
    /// The crash test it was started for.
    pub test: String,
    /// The run.
    pub run: WorkerRun,
}

/// The worker orders, if this process is a worker child.
///
/// # Errors
/// [`Error::Setup`] for a malformed environment (a child started by hand).
pub(crate) fn worker_orders() -> Result<Option<WorkerOrders>, Error> {
    let Some(dir) = std::env::var_os(WORKER_ENV) else {
        return Ok(None);
    };
    let read = |name: &str| {
        std::env::var(name).map_err(|_| Error::Setup {
            reason: format!("a worker child needs {name} in its environment"),
        })
    };
    let run = read(RUN_ENV)?.parse().map_err(|_| Error::Setup {
        reason: format!("{RUN_ENV} is not a run number"),
    })?;
    let panic_rate = read(PANIC_RATE_ENV)?.parse().map_err(|_| Error::Setup {
        reason: format!("{PANIC_RATE_ENV} is not a probability"),
    })?;
    Ok(Some(WorkerOrders {
        test: read(TEST_ENV)?,
        run: WorkerRun {
            dir: PathBuf::from(dir),
            run,
            panic_rate,
            mode: DelegateMode::Transactional,
        },
    }))
}

/// Starts this executable again as a worker child for one crash test.
#[derive(Debug, Clone)]
pub(crate) struct ChildLauncher {
    exe: PathBuf,
    args: Vec<OsString>,
    test: String,
}

impl ChildLauncher {
    /// The launcher for a crash test run under `harness`.
    ///
    /// # Errors
    /// [`Error::Setup`] when this executable cannot be located.
    pub(crate) fn new(harness: &Harness) -> Result<ChildLauncher, Error> {
        let exe = std::env::current_exe().map_err(|error| Error::Setup {
            reason: format!("locating this executable to start it again as a worker: {error}"),
        })?;
        let args = match harness {
            // Only this test, on one thread; the protocol lines bypass libtest's capture.
            Harness::LibTest { test } => [
                test.as_str(),
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ]
            .into_iter()
            .map(OsString::from)
            .collect(),
            Harness::Main => std::env::args_os().skip(1).collect(),
        };
        Ok(ChildLauncher {
            exe,
            args,
            test: harness.name().to_owned(),
        })
    }
}

impl Launch for ChildLauncher {
    fn command(&self, run: &WorkerRun) -> anyhow::Result<Command> {
        let mut command = Command::new(&self.exe);
        command
            .args(&self.args)
            .env(WORKER_ENV, &run.dir)
            .env(RUN_ENV, run.run.to_string())
            .env(PANIC_RATE_ENV, run.panic_rate.to_string())
            .env(TEST_ENV, &self.test);
        Ok(command)
    }
}

/// A one-line shell command that runs this crash test again with `env` set
/// (`NAME=value`): `cargo test -p <package> --test <target> -- <test> --exact` under
/// cargo, else the executable itself.
pub(crate) fn repeat_command(harness: &Harness, env: &str) -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let package = std::env::var("CARGO_PKG_NAME").ok();
    let (profile, kind, target) = target_of(&exe);
    let run_args = match harness {
        Harness::LibTest { test } => format!("{test} --exact"),
        Harness::Main => std::env::args()
            .skip(1)
            .map(|arg| shell_word(&arg))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let separator = if run_args.is_empty() { "" } else { " -- " };
    let profile = match profile.as_deref() {
        Some("debug") | None => String::new(),
        Some("release") => " --release".to_owned(),
        Some(other) => format!(" --profile {other}"),
    };
    match (package, kind, harness) {
        (Some(package), TargetKind::Example, _) => {
            format!("{env} cargo run{profile} -p {package} --example {target}{separator}{run_args}")
        }
        (Some(package), TargetKind::Test, Harness::LibTest { .. }) => {
            let selector = if target == package.replace('-', "_") {
                "--lib".to_owned()
            } else {
                format!("--test {target}")
            };
            format!("{env} cargo test{profile} -p {package} {selector}{separator}{run_args}")
        }
        _ => format!(
            "{env} {} {run_args}",
            shell_word(&exe.display().to_string())
        ),
    }
}

/// What kind of cargo target an executable is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetKind {
    /// `target/<profile>/examples/<name>`.
    Example,
    /// `target/<profile>/deps/<name>-<hash>`: a test harness (integration or unit).
    Test,
    /// Anything else.
    Other,
}

/// The profile, kind and target name of a cargo-built executable.
fn target_of(exe: &Path) -> (Option<String>, TargetKind, String) {
    let stem = exe
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = exe.parent();
    let parent_name = parent
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned());
    let profile = parent
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned());
    // Test and example binaries carry `-<16 hex digits>` (examples also have a copy
    // without it).
    let unhashed = match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name.to_owned()
        }
        _ => stem.clone(),
    };
    match parent_name.as_deref() {
        Some("examples") => (profile, TargetKind::Example, unhashed),
        Some("deps") => (profile, TargetKind::Test, unhashed),
        _ => (None, TargetKind::Other, stem),
    }
}

/// A shell word: as it is when it is plain, else in single quotes.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cargo's executables are told apart: examples, test harnesses and the rest, with
    /// their profile and target name.
    #[test]
    fn targets_of_cargo_executables() {
        assert_eq!(
            target_of(Path::new("/w/target/debug/deps/crash_kit-0123456789abcdef")),
            (Some("debug".into()), TargetKind::Test, "crash_kit".into())
        );
        assert_eq!(
            target_of(Path::new(
                "/w/target/release/examples/crash_test_your_delegate"
            )),
            (
                Some("release".into()),
                TargetKind::Example,
                "crash_test_your_delegate".into()
            )
        );
        assert_eq!(
            target_of(Path::new("/usr/bin/my-tool")),
            (None, TargetKind::Other, "my-tool".into())
        );
    }

    /// Words with shell syntax are quoted; plain ones are not.
    #[test]
    fn shell_words() {
        assert_eq!(shell_word("--planted-bug"), "--planted-bug");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    /// A libtest thread is a test; the main thread is a `main`; an explicit name wins.
    #[test]
    fn harness_detection() {
        assert_eq!(
            Harness::detect(None),
            Harness::LibTest {
                test: "testkit::child::tests::harness_detection".into()
            }
        );
        assert_eq!(
            Harness::detect(Some("x")),
            Harness::LibTest { test: "x".into() }
        );
        let main = std::thread::Builder::new()
            .name("main".into())
            .spawn(|| Harness::detect(None))
            .expect("a thread")
            .join()
            .expect("no panic");
        assert_eq!(main, Harness::Main);
    }
}
