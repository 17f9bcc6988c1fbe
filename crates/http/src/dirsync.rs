//! The step that makes a finished download's rename durable, shared by every download
//! renaming on the same file system: group commit for renames.
//!
//! A finished download fsyncs its file, renames it into place, and must then make the
//! rename durable before its result is reported (a delivered file is durable). Fifty
//! downloads finishing together, into fifty sessions' directories, need one flush of the
//! file system's metadata that starts after the last of their renames, not fifty
//! directory fsyncs. On Linux that flush is `syncfs` on the directory's file system (it
//! writes back every inode and commits the journal, so every rename before it is
//! durable); elsewhere it is the directory's own fsync, shared by the renames into that
//! directory. Each caller takes a ticket after its rename; a flush covers every ticket
//! taken before it started. A caller returns once a flush that started after its ticket
//! has completed: its own, if none is running, or the next one, which a caller waiting
//! for it runs. So every caller still waits for a flush that began after its rename, and
//! a disk that serves flushes one at a time serves one per group instead of one per file.
//! On Linux a small file's bytes are made durable the same way, before its rename: one
//! shared `syncfs` begun after its last write (it writes back every file's data), then
//! the rename, then a second shared flush for the rename; a larger file, whose
//! write-back ran beside its transfer, keeps its own fsync. Either way a file reaches
//! its final name only once its bytes are durable: a file under its final name is
//! always whole.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use tokio::sync::Notify;

/// One group's flush state.
#[derive(Debug, Default)]
struct Dir {
    state: Mutex<State>,
    done: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Tickets taken (renames that want to be durable).
    taken: u64,
    /// Every ticket up to this one is covered by a completed fsync.
    covered: u64,
    /// An fsync is running.
    running: bool,
    /// Callers holding this entry.
    holders: u64,
}

/// What one group shares: a file system (Linux), or a directory.
type Group = (u64, u64);

/// The groups with callers.
static DIRS: LazyLock<Mutex<HashMap<Group, Arc<Dir>>>> = LazyLock::new(Default::default);

/// Makes what was written or renamed on `dir`'s file system before this call durable
/// (on Linux a small file's bytes too; everywhere a rename into `dir`): [`flush`] (run on a blocking thread),
/// shared with concurrent callers on the same file system.
///
/// # Errors
/// Reading the directory's metadata; the error of the flush that was to cover this
/// caller (a later caller runs its own).
pub(crate) async fn flush_shared(dir: &Path) -> io::Result<()> {
    let group = group_of(dir)?;
    sync_shared(group, dir, flush).await
}

#[cfg(target_os = "linux")]
fn group_of(dir: &Path) -> io::Result<Group> {
    use std::os::unix::fs::MetadataExt as _;
    // The file system: one `syncfs` covers every directory on it.
    Ok((std::fs::metadata(dir)?.dev(), 0))
}

#[cfg(not(target_os = "linux"))]
fn group_of(dir: &Path) -> io::Result<Group> {
    use std::os::unix::fs::MetadataExt as _;
    // The directory: its fsync covers the renames into it.
    let metadata = std::fs::metadata(dir)?;
    Ok((metadata.dev(), metadata.ino()))
}

/// Flushes what the renames into `dir` changed: the whole file system's metadata
/// (`syncfs`) on Linux, the directory elsewhere.
#[cfg(target_os = "linux")]
fn flush(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // `return` fails the flush as a writeback error elsewhere on the file system would.
    fail::fail_point!("http-shared-flush-error", |_| Err(io::Error::other(
        "fail point http-shared-flush-error"
    )));
    let file = std::fs::File::open(dir)?;
    // SAFETY: `syncfs` only reads its integer argument; the descriptor stays open for the
    // call (`file` lives to the end of this function) and is not retained.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn flush(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The group commit itself, with the flush given (so it can be tested).
async fn sync_shared<F>(group: Group, dir: &Path, fsync: F) -> io::Result<()>
where
    F: Fn(&Path) -> io::Result<()> + Clone + Send + 'static,
{
    let holding = {
        let mut dirs = DIRS.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = Arc::clone(dirs.entry(group).or_default());
        entry.lock().holders += 1;
        Holding { entry, group }
    };
    wait_covered(&holding.entry, dir, fsync).await
}

/// A caller's hold on its group's entry; the last one to leave removes it (also when the
/// caller's future is dropped).
struct Holding {
    entry: Arc<Dir>,
    group: Group,
}

impl Drop for Holding {
    fn drop(&mut self) {
        let mut dirs = DIRS.lock().unwrap_or_else(PoisonError::into_inner);
        let mut state = self.entry.lock();
        state.holders -= 1;
        if state.holders == 0 {
            // Nobody waits here: the next caller starts afresh.
            dirs.remove(&self.group);
        }
    }
}

impl Dir {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A flush in progress, on its blocking thread: when it ends (or unwinds), the group is
/// free for the next flush and its waiters wake, whether or not the caller that started
/// it still waits (its future may have been dropped).
struct Flushing {
    entry: Arc<Dir>,
    target: u64,
    ok: bool,
}

impl Drop for Flushing {
    fn drop(&mut self) {
        {
            let mut state = self.entry.lock();
            state.running = false;
            if self.ok {
                state.covered = state.covered.max(self.target);
            }
        }
        self.entry.done.notify_waiters();
    }
}

async fn wait_covered<F>(entry: &Arc<Dir>, dir: &Path, fsync: F) -> io::Result<()>
where
    F: Fn(&Path) -> io::Result<()> + Clone + Send + 'static,
{
    let ticket = {
        let mut state = entry.lock();
        state.taken += 1;
        state.taken
    };
    loop {
        let notified = entry.done.notified();
        tokio::pin!(notified);
        // Registered before the state is read, so a completion in between still wakes us.
        notified.as_mut().enable();
        let target = {
            let mut state = entry.lock();
            if state.covered >= ticket {
                return Ok(());
            }
            if state.running {
                None
            } else {
                state.running = true;
                Some(state.taken)
            }
        };
        let Some(target) = target else {
            notified.await;
            continue;
        };
        // Every ticket up to `target` was taken after its rename, and this flush starts
        // now: it covers them all. The blocking thread records its end itself.
        let mut flushing = Flushing {
            entry: Arc::clone(entry),
            target,
            ok: false,
        };
        let path = dir.to_path_buf();
        let fsync = fsync.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            let result = fsync(&path);
            flushing.ok = result.is_ok();
            drop(flushing);
            result
        })
        .await;
        return flushed.map_err(io::Error::other).and_then(|result| result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// Concurrent callers share fsyncs, and each returns only after an fsync that began
    /// after its own ticket: a caller's "rename" (the ticket's instant, a counter here)
    /// is always below the count of fsyncs started when it returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn callers_share_fsyncs_and_each_waits_for_one_started_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let started = Arc::new(AtomicU64::new(0));
        let completed = Arc::new(AtomicU64::new(0));
        let renamed = Arc::new(AtomicU64::new(0));
        let mut callers = Vec::new();
        for i in 0..64u64 {
            let (started, completed, renamed) =
                (started.clone(), completed.clone(), renamed.clone());
            let path = dir.path().to_path_buf();
            callers.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i % 7)).await;
                // The rename: fsyncs started from now on may cover it.
                let starts_before = started.load(Ordering::SeqCst);
                renamed.fetch_add(1, Ordering::SeqCst);
                let fsync = {
                    let (started, completed) = (started.clone(), completed.clone());
                    move |_: &Path| {
                        started.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(3));
                        completed.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                };
                sync_shared((u64::MAX, 1), &path, fsync).await.expect("fsync");
                // Some fsync started after the rename and has completed.
                let completed_now = completed.load(Ordering::SeqCst);
                assert!(
                    completed_now > starts_before,
                    "returned with no fsync begun after its rename ({completed_now} <= {starts_before})"
                );
            }));
        }
        for caller in callers {
            caller.await.expect("caller");
        }
        let fsyncs = started.load(Ordering::SeqCst);
        assert!((1..64).contains(&fsyncs), "{fsyncs} fsyncs for 64 callers");
        assert!(
            DIRS.lock().expect("dirs").get(&(u64::MAX, 1)).is_none(),
            "entry left"
        );
    }

    /// A caller whose future is dropped while its flush runs (a cancelled download)
    /// leaves the group usable: the flush ends on its own and the next caller goes on.
    #[tokio::test]
    async fn a_dropped_caller_leaves_the_group_usable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let slow = |_: &Path| {
            std::thread::sleep(Duration::from_millis(50));
            Ok(())
        };
        let dropped = tokio::time::timeout(
            Duration::from_millis(5),
            sync_shared((u64::MAX, 3), dir.path(), slow),
        )
        .await;
        assert!(
            dropped.is_err(),
            "the first caller was to be dropped mid-flush"
        );
        let ok = |_: &Path| Ok(());
        tokio::time::timeout(
            Duration::from_secs(120),
            sync_shared((u64::MAX, 3), dir.path(), ok),
        )
        .await
        .expect("the next caller is not stuck behind the dropped one")
        .expect("flush");
    }

    /// A failed fsync fails its callers; the next caller runs a fresh one.
    #[tokio::test]
    async fn a_failed_fsync_fails_and_the_next_caller_tries_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let failing = |_: &Path| Err(io::Error::other("planted"));
        assert!(
            sync_shared((u64::MAX, 2), dir.path(), failing)
                .await
                .is_err()
        );
        let ok = |_: &Path| Ok(());
        assert!(sync_shared((u64::MAX, 2), dir.path(), ok).await.is_ok());
        // The real flush on a real directory.
        flush_shared(dir.path()).await.expect("syncfs");
    }
}
