//! Resumable, verified downloads.
//!
//! Bytes stream into `<dir>/<safe name>.part`. Before the first body byte of a response
//! that starts the file, the response's validator (a strong `ETag`, else `Last-Modified`)
//! is written to `<safe name>.validator`, and it is fsynced before the first byte a later
//! attempt could resume after; a later attempt, possibly in a new process after a
//! SIGKILL, resumes from the `.part` length with `Range` and `If-Range`. A body that
//! arrives whole before its first write (a small file) never waits for that fsync: its
//! only write is followed by the file's fsync and the rename.
//! A `206` must start exactly there; a `200` restarts from zero. When the body ends, the
//! length and the optional SHA-256 (of the whole file, resumed prefix included) are
//! checked, the file is fsynced, renamed to its final path, and the directory fsynced.
//! A file that fails verification is removed, so the next attempt starts afresh.
//!
//! Writes go to a blocking thread in 1 MiB blocks, double-buffered: one block fills from
//! the network while the previous one is written (and hashed). Memory stays at two blocks
//! whatever the size of the file. The disk writes the file back while it downloads
//! ([`crate::writeback`]), so the fsync before the rename does not start from a whole
//! file of dirty pages.
//!
//! # Free space
//!
//! The download directory usually shares its file system with the session store, and a
//! store that cannot commit wedges every session. So a download never writes into the
//! last [`crate::EngineConfig::disk_reserve_bytes`] of free space (measured by
//! [`crate::free_bytes`]), and a full file system frees the download's space at once:
//!
//! 1. **Before the request**, when the request's expected length is known and what is
//!    still to be written (the length less the bytes the `.part` keeps for the resume)
//!    exceeds the free space less the reserve, no request is sent: the attempt ends as
//!    [`RetryReason::InsufficientStorage`] with the figures. A `.part` the attempt would
//!    truncate counts as free.
//! 2. **Before the first byte**, the same check against the length the response announces
//!    (`Content-Length` of a `200`, the total of a `206`'s `Content-Range`): nothing is
//!    written, the `.part` stays as it was.
//! 3. **While streaming**, whatever the announced length (none, a wrong one, or space
//!    taken by someone else meanwhile), the free space is measured again at least every
//!    [`crate::SPACE_CHECK_INTERVAL_BYTES`] written and whenever a block would pass
//!    the last measure; the block is written only up to the budget, and the attempt ends
//!    as [`RetryReason::InsufficientStorage`] (`bytes_needed` is `None` when the length is
//!    unknown). The `.part` keeps those bytes, all within the budget, and its validator,
//!    so a later attempt with room resumes after them.
//! 4. **A write, fsync, or file creation that fails with `ENOSPC` or `EDQUOT`** anyway
//!    (another writer filled the file system between two measures) stops the download,
//!    removes the `.part` and its validator so the space is free for the store at once,
//!    and ends as [`RetryReason::StorageFull`]; the next attempt starts from zero. Every
//!    other local disk error is [`FailReason::LocalDisk`].
//!
//! A reserve of `0` turns 1 to 3 into "fits in the free space", and leaves 4 for the
//! moment the file system is full. Where free space cannot be measured (not Unix), only 4
//! applies.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::header::{
    CONTENT_ENCODING, CONTENT_RANGE, ETAG, HeaderMap, IF_RANGE, LAST_MODIFIED, RANGE,
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::classify::{
    CONTENT_CODING_BYTES_MAX, Classified, FailReason, Mismatch, Response, RetryReason, StatusClass,
    classify_status,
};
use crate::engine::{Inner, Progress};
use crate::limits::EngineConfig;
use crate::paths::{download_paths, download_validator_path};
use crate::redirect;
use crate::request::{Target, TransferRequest};
use crate::space::{self, Admit, Budget};
use crate::transport;
use crate::writeback::Writeback;

/// The fail point hit right after a download's fsync and rename, before the caller
/// records it. With the `failpoints` feature, `return(abort)` aborts the process and any
/// other `return` loses the result as a crash would.
pub const FAIL_POINT_DOWNLOAD_AFTER_FSYNC: &str = "http-download-after-fsync";

/// The fail point hit after a download's last byte is written to its `.part` file and
/// verified, before the flush that makes its bytes durable (its fsync, or the shared
/// flush for a small file): every byte is written, none is durable yet.
/// `return(abort)` aborts the process; any other `return` fails the attempt.
pub const FAIL_POINT_DOWNLOAD_BEFORE_FSYNC: &str = "http-download-before-fsync";

/// The fail point hit after a download's rename to its final name, before the flush that
/// makes the rename durable. `return(abort)` aborts the process; any other `return`
/// fails the attempt (the next one finds the file under its final name).
pub const FAIL_POINT_DOWNLOAD_BEFORE_FLUSH: &str = "http-download-before-flush";

/// A fail point of the download's last steps (the `FAIL_POINT_DOWNLOAD_*` constants).
/// `return(abort)` aborts the process; any other `return` fails the attempt as a crash
/// would lose it (the next attempt finds what this one left on disk). The name is a
/// literal: without the feature the macro expands to nothing, and it must stay equal to
/// its constant.
macro_rules! download_fail_point {
    ($name:literal) => {{
        fn hit() -> Result<(), Classified> {
            fail::fail_point!($name, |arg: Option<String>| {
                if arg.as_deref() == Some("abort") {
                    std::process::abort();
                }
                Err(Classified::retry(
                    RetryReason::Transport,
                    None,
                    concat!("fail point ", $name).to_owned(),
                ))
            });
            Ok(())
        }
        hit()
    }};
}

/// The largest download whose bytes are made durable by the shared flush (see
/// `complete`) rather than an fsync of its own: a larger file's write-back has been
/// running beside its transfer, and a file-system-wide flush would wait for every other
/// writer's dirty data too.
const SHARED_DATA_FLUSH_BYTES_MAX: u64 = 1024 * 1024;

/// The size of one write to the `.part` file, in bytes.
const WRITE_BLOCK_BYTES: usize = 1024 * 1024;
/// The longest received bytes wait in memory before they are written: a fast download
/// fills its block first, a slow one is written at least this often, so a crash loses
/// at most this much of it and the next attempt resumes from there.
const BLOCK_AGE_MAX: Duration = Duration::from_millis(250);
/// The largest validator file read back, in bytes.
const VALIDATOR_FILE_BYTES_MAX: u64 = 16 * 1024;

/// What the finished file must be.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected<'a> {
    pub(crate) sha256: Option<&'a str>,
    pub(crate) bytes: Option<u64>,
}

/// The files of one download.
#[derive(Debug)]
struct Files {
    dir: PathBuf,
    part: PathBuf,
    complete: PathBuf,
    validator: PathBuf,
}

impl Files {
    fn new(target: &Target) -> Files {
        let (part, complete) = download_paths(&target.download_dir, &target.name);
        Files {
            dir: target.download_dir.clone(),
            validator: download_validator_path(&target.download_dir, &target.name),
            part,
            complete,
        }
    }

    /// Removes the partial file and its validator, so the next attempt starts from zero.
    async fn discard_part(&self) -> Result<(), Classified> {
        remove_if_present(&self.part).await?;
        remove_if_present(&self.validator).await
    }
}

/// What a partial file's bytes were served with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Validator {
    ETag(String),
    LastModified(String),
}

impl Validator {
    /// The response's validator usable in `If-Range`: a strong ETag (RFC 9110 section
    /// 13.1.5 forbids weak ones there), else Last-Modified.
    fn from_headers(headers: &HeaderMap) -> Option<Validator> {
        let text = |name| {
            headers
                .get(name)
                .and_then(|value: &reqwest::header::HeaderValue| value.to_str().ok())
                .map(str::trim)
                .filter(|value| !value.is_empty() && value.len() < 1024)
                .map(str::to_owned)
        };
        if let Some(etag) = text(ETAG).filter(|etag| !etag.starts_with("W/")) {
            return Some(Validator::ETag(etag));
        }
        text(LAST_MODIFIED).map(Validator::LastModified)
    }

    fn value(&self) -> &str {
        match self {
            Validator::ETag(value) | Validator::LastModified(value) => value,
        }
    }

    fn encode(&self) -> String {
        match self {
            Validator::ETag(value) => format!("etag\n{value}\n"),
            Validator::LastModified(value) => format!("last-modified\n{value}\n"),
        }
    }

    fn decode(text: &str) -> Option<Validator> {
        let mut lines = text.split('\n');
        let kind = lines.next()?;
        let value = lines.next()?.to_owned();
        if value.is_empty() || lines.next() != Some("") || lines.next().is_some() {
            return None;
        }
        match kind {
            "etag" => Some(Validator::ETag(value)),
            "last-modified" => Some(Validator::LastModified(value)),
            _ => None,
        }
    }
}

/// Runs one attempt of a download.
pub(crate) async fn run(
    engine: &Inner,
    request: &TransferRequest,
    url: reqwest::Url,
    target: &Target,
    progress: Option<&watch::Sender<Progress>>,
    expected: Expected<'_>,
) -> Classified {
    let files = Files::new(target);
    let outcome = match attempt(engine, request, url, target, progress, expected, &files).await {
        Ok(outcome) | Err(outcome) => outcome,
    };
    match outcome {
        Classified::Retry {
            reason: RetryReason::StorageFull,
            retry_after,
            message,
        } => {
            // The file system is full whoever filled it: give the partial file's space
            // back, so the store sharing it can commit.
            let removed = async {
                remove_file_if_present(&files.part).await?;
                remove_file_if_present(&files.validator).await
            };
            let message = match removed.await {
                Ok(()) => format!("{message}; the partial file was removed"),
                Err(error) => format!("{message}; removing the partial file failed: {error}"),
            };
            Classified::retry(RetryReason::StorageFull, retry_after, message)
        }
        outcome => outcome,
    }
}

async fn attempt(
    engine: &Inner,
    request: &TransferRequest,
    url: reqwest::Url,
    target: &Target,
    progress: Option<&watch::Sender<Progress>>,
    expected: Expected<'_>,
    files: &Files,
) -> Result<Classified, Classified> {
    let config = &engine.config;
    tokio::fs::create_dir_all(&files.dir)
        .await
        .map_err(|error| disk("creating", &files.dir, error))?;

    // A crash after the rename and before the caller recorded it leaves the final file:
    // finishing again is then a success without a request.
    if let Some(outcome) = already_complete(files, expected).await? {
        return Ok(outcome);
    }

    let part_bytes = match tokio::fs::metadata(&files.part).await {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
        Err(error) => return Err(disk("reading the length of", &files.part, error)),
    };
    let validator = read_validator(&files.validator).await?;
    let resume_from = match &validator {
        Some(_) if part_bytes > 0 && expected.bytes.is_none_or(|bytes| part_bytes <= bytes) => {
            part_bytes
        }
        Some(_) | None => 0,
    };
    // Known not to fit: no request at all.
    if let Some(total) = expected.bytes {
        fits(
            files,
            config.disk_reserve_bytes,
            total,
            resume_from,
            part_bytes,
        )
        .await?;
    }

    // The range goes with every redirect: the file is the same whoever serves it, and
    // If-Range makes a server with other bytes send them all.
    let mut range = Vec::new();
    if let (Some(validator), true) = (&validator, resume_from > 0) {
        range.push((RANGE, format!("bytes={resume_from}-")));
        range.push((IF_RANGE, validator.value().to_owned()));
    }
    tracing::debug!(name = %target.name, resume_from, "download request");
    let mut response = redirect::send(engine, request, url, target, &range, None)
        .await?
        .response;
    let status = response.status().as_u16();
    match classify_status(status) {
        StatusClass::Success => {}
        StatusClass::Rejected if status == 416 && resume_from > 0 => {
            let total = content_range(response.headers()).and_then(|range| range.total);
            return range_not_satisfiable(files, expected, resume_from, total, progress).await;
        }
        // Not a body for the file: keep the partial file for the next attempt.
        StatusClass::Retry | StatusClass::Rejected | StatusClass::Failed => {
            return Ok(transport::answer(response, config, request, None).await);
        }
    }
    let (offset, total) = placement(&response, files, config, expected, resume_from).await?;
    // The announced length does not fit: stop before the first byte is written.
    if let Some(total) = total {
        fits(files, config.disk_reserve_bytes, total, offset, part_bytes).await?;
    }
    let bytes_expected = total.or(expected.bytes);
    let report = |bytes_done| {
        if let Some(progress) = progress {
            progress.send_replace(Progress {
                bytes_done,
                bytes_expected,
            });
        }
    };
    report(offset);

    let new_validator = if offset == 0 {
        Validator::from_headers(response.headers())
    } else {
        None
    };
    let (file, hasher, sidecar) =
        open_part(files, offset, new_validator, expected.sha256.is_some()).await?;
    let budget = Budget::start(&files.dir, config.disk_reserve_bytes, offset, total)
        .await
        .map_err(|error| disk("measuring the free space of", &files.dir, error))?;
    let writer = PartWriter::new(file, offset, hasher, &files.part, budget, sidecar);
    let (file, hasher, length) =
        stream(&mut response, writer, files, config, offset, &report).await?;
    report(length);
    if let Some(total) = total
        && length < total
    {
        // A range shorter than the rest of the file (or a short close-delimited body):
        // the bytes are good, ask for the rest next time.
        return Err(Classified::retry(
            RetryReason::TruncatedBody,
            None,
            format!("the body ended at {length} of {total} bytes"),
        ));
    }
    let headers = transport::response_headers(
        response.headers(),
        config.limits.response_headers_max,
        request,
    );
    complete(
        files, file, hasher, length, total, expected, status, headers,
    )
    .await
}

/// Where a successful response's bytes go in the file and how long the file will be,
/// decided from its headers before a byte is written: an encoded body, a range that
/// starts elsewhere, a length over the limit or other than expected end the attempt.
async fn placement(
    response: &reqwest::Response,
    files: &Files,
    config: &EngineConfig,
    expected: Expected<'_>,
    resume_from: u64,
) -> Result<(u64, Option<u64>), Classified> {
    let status = response.status().as_u16();
    // An encoded body is not the file (crate docs).
    if let Some(coding) = content_coding(response.headers()) {
        return Err(Classified::failed(
            FailReason::UnsupportedContentEncoding(coding.clone()),
            format!(
                "the {status} came with Content-Encoding {coding:?} although identity was \
                 asked for; nothing of it was written"
            ),
        ));
    }
    let (offset, total) = if status == 206 {
        match content_range(response.headers()) {
            Some(range) if range.start == resume_from => (resume_from, range.total),
            found => {
                files.discard_part().await?;
                return Err(Classified::retry(
                    RetryReason::RangeMismatch,
                    None,
                    format!("asked for bytes from {resume_from}, got Content-Range {found:?}"),
                ));
            }
        }
    } else {
        (0, response.content_length())
    };
    let total_max = config.limits.download_bytes_max;
    if let Some(total) = total.filter(|total| *total > total_max) {
        return Err(Classified::failed(
            FailReason::ResponseTooLarge,
            format!("the download is {total} bytes, over the limit of {total_max}"),
        ));
    }
    // A length that cannot match is known before the first byte: do not fetch it.
    if let (Some(total), Some(wanted)) = (total, expected.bytes)
        && total != wanted
    {
        files.discard_part().await?;
        let mismatch = Mismatch::Length {
            expected_bytes: wanted,
            actual_bytes: total,
        };
        return Err(Classified::failed(
            FailReason::Verification(mismatch.clone()),
            format!("the server announces another length: {mismatch:?}"),
        ));
    }
    Ok((offset, total))
}

/// Whether a file of `total` bytes, written from `offset`, fits in the free space less
/// the reserve. A `.part` of `part_bytes` counts as free beyond `offset`: the attempt
/// truncates it there.
async fn fits(
    files: &Files,
    reserve_bytes: u64,
    total: u64,
    offset: u64,
    part_bytes: u64,
) -> Result<(), Classified> {
    let reclaimable = part_bytes.saturating_sub(offset);
    let room = space::measure(&files.dir, reserve_bytes, reclaimable)
        .await
        .map_err(|error| disk("measuring the free space of", &files.dir, error))?;
    let needed = total.saturating_sub(offset);
    match room {
        Some(room) if needed > room.usable() => Err(room.insufficient(&files.dir, Some(needed))),
        Some(_) | None => Ok(()),
    }
}

/// Streams the body into the `.part` from `offset`, in blocks, within the space budget;
/// returns the file, its hash and its length once the body ended. Bytes that arrived
/// stay in the `.part` whatever stops the stream (a transport error, the budget), so the
/// next attempt resumes after them.
async fn stream(
    response: &mut reqwest::Response,
    mut writer: PartWriter<'_>,
    files: &Files,
    config: &EngineConfig,
    offset: u64,
    report: &impl Fn(u64),
) -> Result<(File, Option<Sha256>, u64), Classified> {
    let total_max = config.limits.download_bytes_max;
    let mut block = Vec::with_capacity(WRITE_BLOCK_BYTES);
    let mut block_since = Instant::now();
    let mut received: u64 = 0;
    loop {
        let chunk = match transport::next_chunk(response, config.read_idle_timeout).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(outcome) => {
                // Keep what arrived: the next attempt resumes after it.
                writer.write(block, Last::No).await?;
                writer.finish().await?;
                return Err(outcome);
            }
        };
        received += chunk.len() as u64;
        if offset + received > total_max {
            drop(writer);
            files.discard_part().await?;
            return Err(Classified::failed(
                FailReason::ResponseTooLarge,
                format!("the download passed the limit of {total_max} bytes"),
            ));
        }
        let full = block.len() + chunk.len() > WRITE_BLOCK_BYTES;
        let stale = !block.is_empty() && block_since.elapsed() >= BLOCK_AGE_MAX;
        if full || stale {
            block = writer.write(block, Last::No).await?;
            report(offset + received - chunk.len() as u64);
        }
        if block.is_empty() {
            block_since = Instant::now();
        }
        block.extend_from_slice(&chunk);
    }
    writer.write(block, Last::Yes).await?;
    let (file, hasher) = writer.finish().await?;
    Ok((file, hasher, offset + received))
}

/// Finishes a download whose `.part` holds the whole body: verify, fsync, rename, fsync
/// the directory, hit the fail point.
#[allow(clippy::too_many_arguments)]
async fn complete(
    files: &Files,
    file: File,
    hasher: Option<Sha256>,
    length: u64,
    total: Option<u64>,
    expected: Expected<'_>,
    status: u16,
    headers: Vec<(String, String)>,
) -> Result<Classified, Classified> {
    if let Some(mismatch) = verify(length, total.or(expected.bytes), hasher, expected) {
        drop(file);
        files.discard_part().await?;
        return Err(Classified::failed(
            FailReason::Verification(mismatch.clone()),
            format!("the download does not verify: {mismatch:?}"),
        ));
    }
    download_fail_point!("http-download-before-fsync")?;
    if cfg!(target_os = "linux") && length <= SHARED_DATA_FLUSH_BYTES_MAX {
        // A small file's bytes are made durable by the same shared flush as renames
        // (`syncfs` writes back every file's data on the file system and commits the
        // journal), begun after this file's last write: one flush for a group of
        // finishing downloads instead of an fsync each.
        // The shared flush also reports any other file's writeback error on the file
        // system; then this file's own fsync, on the descriptor it was written through
        // (which sees every error since its open), says whether its bytes are durable.
        if let Err(shared) = crate::dirsync::flush_shared(&files.dir).await {
            tracing::debug!(error = %shared, "the shared flush failed; fsyncing the file itself");
            fsync_part(files, file).await?;
        }
    } else {
        fsync_part(files, file).await?;
    }
    tokio::fs::rename(&files.part, &files.complete)
        .await
        .map_err(|error| disk("renaming into place", &files.complete, error))?;
    download_fail_point!("http-download-before-flush")?;
    sync_dir(&files.dir).await?;
    remove_if_present(&files.validator).await?;
    download_fail_point!("http-download-after-fsync")?;
    tracing::debug!(file = %files.complete.display(), length, "download complete");
    Ok(Classified::Success(Response {
        status,
        headers,
        body: Vec::new(),
        file: Some(files.complete.clone()),
        bytes: length,
    }))
}

/// The `.part`'s own fsync, through the descriptor it was written with.
async fn fsync_part(files: &Files, file: File) -> Result<(), Classified> {
    blocking(move || file.sync_all())
        .await
        .map_err(|error| disk("fsyncing", &files.part, error))
}

/// A `416` to a resume: the `.part` is either already the whole file (finish it) or
/// stale (remove it, start over next time).
async fn range_not_satisfiable(
    files: &Files,
    expected: Expected<'_>,
    resume_from: u64,
    total: Option<u64>,
    progress: Option<&watch::Sender<Progress>>,
) -> Result<Classified, Classified> {
    if total == Some(resume_from) {
        let (file, hasher, _) =
            open_part(files, resume_from, None, expected.sha256.is_some()).await?;
        if let Some(progress) = progress {
            progress.send_replace(Progress {
                bytes_done: resume_from,
                bytes_expected: total,
            });
        }
        // The status describes the file, which is complete: a synthesized 200.
        return complete(
            files,
            file,
            hasher,
            resume_from,
            total,
            expected,
            200,
            Vec::new(),
        )
        .await;
    }
    files.discard_part().await?;
    Err(Classified::retry(
        RetryReason::RangeNotSatisfiable,
        None,
        format!("416 for bytes from {resume_from} (total {total:?}); starting over"),
    ))
}

/// The final file, when it is already there and verifies.
async fn already_complete(
    files: &Files,
    expected: Expected<'_>,
) -> Result<Option<Classified>, Classified> {
    let metadata = match tokio::fs::metadata(&files.complete).await {
        Ok(metadata) if metadata.is_file() => metadata,
        Ok(_) => {
            return Err(Classified::failed(
                FailReason::LocalDisk,
                format!("{} exists and is not a file", files.complete.display()),
            ));
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(disk("reading", &files.complete, error)),
    };
    let length = metadata.len();
    let hasher = match expected.sha256 {
        Some(_) => {
            let path = files.complete.clone();
            let digest = blocking(move || {
                let mut file = File::open(&path)?;
                hash_prefix(&mut file, length)
            })
            .await
            .map_err(|error| disk("hashing", &files.complete, error))?;
            Some(digest)
        }
        None => None,
    };
    if verify(length, expected.bytes, hasher, expected).is_some() {
        // Not the file asked for (a leftover of another request under the same name).
        remove_if_present(&files.complete).await?;
        return Ok(None);
    }
    files.discard_part().await?;
    tracing::debug!(file = %files.complete.display(), "download already complete");
    Ok(Some(Classified::Success(Response {
        status: 200,
        headers: Vec::new(),
        body: Vec::new(),
        file: Some(files.complete.clone()),
        bytes: length,
    })))
}

/// The first difference between the file and what it must be.
fn verify(
    length: u64,
    expected_bytes: Option<u64>,
    hasher: Option<Sha256>,
    expected: Expected<'_>,
) -> Option<Mismatch> {
    for wanted in [expected_bytes, expected.bytes].into_iter().flatten() {
        if wanted != length {
            return Some(Mismatch::Length {
                expected_bytes: wanted,
                actual_bytes: length,
            });
        }
    }
    if let (Some(wanted), Some(hasher)) = (expected.sha256, hasher) {
        let actual = hex(&hasher.finalize());
        if !actual.eq_ignore_ascii_case(wanted) {
            return Some(Mismatch::Sha256 {
                expected: wanted.to_ascii_lowercase(),
                actual,
            });
        }
    }
    None
}

/// Opens the `.part` for writing at `offset`. At zero, the file is truncated durably and
/// the new validator written durably before any body byte, so a crash can never pair old
/// bytes with a new validator. Past zero, the prefix is hashed when a hash is wanted.
async fn open_part(
    files: &Files,
    offset: u64,
    validator: Option<Validator>,
    hash: bool,
) -> Result<(File, Option<Sha256>, Option<File>), Classified> {
    let part = files.part.clone();
    let validator_path = files.validator.clone();
    let opened = blocking(move || {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)?;
        let mut hasher = None;
        let mut sidecar = None;
        if offset == 0 {
            if file.metadata()?.len() > 0 {
                file.set_len(0)?;
                file.sync_all()?;
            }
            // Written here, before the budget is measured, so that its page counts; the
            // writer fsyncs it before the first byte a later attempt may keep.
            sidecar = match &validator {
                Some(validator) => {
                    let mut sidecar = File::create(&validator_path)?;
                    sidecar.write_all(validator.encode().as_bytes())?;
                    Some(sidecar)
                }
                None => match std::fs::remove_file(&validator_path) {
                    Ok(()) => None,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => None,
                    Err(error) => return Err(error),
                },
            };
            if hash {
                hasher = Some(Sha256::new());
            }
        } else if hash {
            hasher = Some(hash_prefix(&mut file, offset)?);
        }
        file.seek(SeekFrom::Start(offset))?;
        Ok((file, hasher, sidecar))
    })
    .await;
    opened.map_err(|error| disk("opening", &files.part, error))
}

/// The SHA-256 state after the first `length` bytes of `file`.
fn hash_prefix(file: &mut File, length: u64) -> io::Result<Sha256> {
    let mut hasher = Sha256::new();
    file.seek(SeekFrom::Start(0))?;
    let mut buffer = vec![0; WRITE_BLOCK_BYTES];
    let mut remaining = length;
    while remaining > 0 {
        let want = usize::try_from(remaining.min(WRITE_BLOCK_BYTES as u64)).unwrap_or(0);
        file.read_exact(&mut buffer[..want])?;
        hasher.update(&buffer[..want]);
        remaining -= want as u64;
    }
    Ok(hasher)
}

async fn read_validator(path: &Path) -> Result<Option<Validator>, Classified> {
    let owned = path.to_owned();
    let text = blocking(move || {
        let file = match File::open(&owned) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut text = String::new();
        // Garbage (not UTF-8, too long) just means "cannot resume".
        match file
            .take(VALIDATOR_FILE_BYTES_MAX)
            .read_to_string(&mut text)
        {
            Ok(_) => Ok(Some(text)),
            Err(error) if error.kind() == io::ErrorKind::InvalidData => Ok(None),
            Err(error) => Err(error),
        }
    })
    .await
    .map_err(|error| disk("reading", path, error))?;
    Ok(text.as_deref().and_then(Validator::decode))
}

/// The response's content coding when it is not `identity` (every `Content-Encoding`
/// value, as sent, cut to [`CONTENT_CODING_BYTES_MAX`]); `None` for an unencoded body.
fn content_coding(headers: &HeaderMap) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .collect();
    let encoded = values
        .iter()
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let coding = coding.trim();
            !coding.is_empty() && !coding.eq_ignore_ascii_case("identity")
        });
    if !encoded {
        return None;
    }
    let mut shown = values.join(", ");
    if shown.len() > CONTENT_CODING_BYTES_MAX {
        let mut end = CONTENT_CODING_BYTES_MAX;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
    }
    Some(shown)
}

/// A parsed `Content-Range: bytes start-end/total` (or `bytes */total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    total: Option<u64>,
}

fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
    let value = headers.get(CONTENT_RANGE)?.to_str().ok()?.trim();
    let rest = value.strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        digits => Some(digits.parse::<u64>().ok()?),
    };
    let range = range.trim();
    if range == "*" {
        return Some(ContentRange {
            start: total?,
            total,
        });
    }
    let (start, end) = range.split_once('-')?;
    let start = start.trim().parse::<u64>().ok()?;
    let end = end.trim().parse::<u64>().ok()?;
    if end < start || total.is_some_and(|total| end >= total) {
        return None;
    }
    Some(ContentRange { start, total })
}

/// Whether a write is the body's last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    /// More may follow, or the download stops after it and a later attempt resumes.
    No,
    /// The body ended: the fsync and the rename follow, no attempt resumes after it.
    Yes,
}

/// Writes blocks to the `.part` on a blocking thread, one in flight while the next fills,
/// hashing them there too, and starting their write-back to the disk as they go
/// ([`Writeback`]), so the fsync before the rename has only the tail left. Every block
/// passes the space [`Budget`] first. The response's validator, written when the `.part`
/// was opened, is fsynced right before the first block a later attempt could resume
/// after; a body written in one last block never waits for it.
struct PartWriter<'a> {
    file: Option<File>,
    hasher: Option<Sha256>,
    writeback: Writeback,
    in_flight: Option<JoinHandle<Written>>,
    /// The bytes of the write in flight (zero when none is).
    in_flight_bytes: u64,
    /// The file offset after every byte handed to the writer so far.
    submitted_end: u64,
    budget: Budget,
    path: &'a Path,
    /// The validator's sidecar, written and still to be fsynced.
    sidecar: Option<File>,
}

type Written = (File, Option<Sha256>, Writeback, Vec<u8>, io::Result<()>);

fn no_file() -> io::Error {
    io::Error::other("invariant violation: no file after the last write settled")
}

impl<'a> PartWriter<'a> {
    /// A writer of `file`, positioned at `offset`.
    fn new(
        file: File,
        offset: u64,
        hasher: Option<Sha256>,
        path: &'a Path,
        budget: Budget,
        sidecar: Option<File>,
    ) -> PartWriter<'a> {
        PartWriter {
            file: Some(file),
            hasher,
            writeback: Writeback::new(offset),
            in_flight: None,
            in_flight_bytes: 0,
            submitted_end: offset,
            budget,
            path,
            sidecar,
        }
    }

    /// Starts writing `block` and returns an empty buffer to fill next. A block that
    /// would pass the budget is written only up to it; the writer then waits for that
    /// write and the download ends as [`RetryReason::InsufficientStorage`].
    async fn write(&mut self, mut block: Vec<u8>, last: Last) -> Result<Vec<u8>, Classified> {
        let measure_error = |error| disk("measuring the free space for", self.path, error);
        let mut admitted = self
            .budget
            .admit(self.submitted_end, self.in_flight_bytes, block.len(), false)
            .await
            .map_err(measure_error)?;
        let mut spare = None;
        if matches!(admitted, Admit::Prefix { .. }) && self.in_flight.is_some() {
            // Near the limit: measure again with every byte on disk, so that the limit
            // is exact rather than a block early.
            spare = Some(self.settle().await?);
            admitted = self
                .budget
                .admit(self.submitted_end, 0, block.len(), true)
                .await
                .map_err(measure_error)?;
        }
        let stopped = match admitted {
            Admit::All => None,
            Admit::Prefix { bytes, room } => {
                block.truncate(bytes);
                Some(room)
            }
        };
        let spare = match spare {
            Some(spare) => spare,
            None => self.settle().await?,
        };
        // A later attempt resumes after these bytes unless they end the body and the
        // download finishes now.
        let resumable = last == Last::No || stopped.is_some();
        self.start(block, resumable)?;
        let Some(room) = stopped else {
            return Ok(spare);
        };
        self.settle().await?;
        Err(self.budget.insufficient(room, self.submitted_end))
    }

    /// Hands `block` to a blocking thread (after the validator, for a `resumable` block
    /// when it is not written yet); the previous write has settled.
    fn start(&mut self, block: Vec<u8>, resumable: bool) -> Result<(), Classified> {
        debug_assert!(
            self.in_flight.is_none(),
            "invariant violation: a write started while another is in flight"
        );
        if block.is_empty() {
            return Ok(());
        }
        let Some(mut file) = self.file.take() else {
            return Err(disk("writing", self.path, no_file()));
        };
        let mut hasher = self.hasher.take();
        let mut writeback = self.writeback;
        let sidecar = if resumable { self.sidecar.take() } else { None };
        self.in_flight_bytes = block.len() as u64;
        self.submitted_end += block.len() as u64;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            // The validator is durable before any byte it lets a later attempt keep.
            let result = sidecar
                .map_or(Ok(()), |sidecar| sidecar.sync_all())
                .and_then(|()| file.write_all(&block))
                .and_then(|()| writeback.written(&file, block.len() as u64));
            if let (Ok(()), Some(hasher)) = (&result, &mut hasher) {
                hasher.update(&block);
            }
            (file, hasher, writeback, block, result)
        }));
        Ok(())
    }

    /// Waits for the write in flight; returns its buffer, emptied (or a new one).
    async fn settle(&mut self) -> Result<Vec<u8>, Classified> {
        let Some(handle) = self.in_flight.take() else {
            return Ok(Vec::with_capacity(WRITE_BLOCK_BYTES));
        };
        self.in_flight_bytes = 0;
        let (file, hasher, writeback, mut block, result) = handle
            .await
            .map_err(|error| disk("writing", self.path, io::Error::other(error)))?;
        self.file = Some(file);
        self.hasher = hasher;
        self.writeback = writeback;
        result.map_err(|error| disk("writing", self.path, error))?;
        block.clear();
        Ok(block)
    }

    /// Waits for the last write.
    async fn finish(mut self) -> Result<(File, Option<Sha256>), Classified> {
        self.settle().await?;
        let Some(file) = self.file.take() else {
            return Err(disk("writing", self.path, no_file()));
        };
        Ok((file, self.hasher.take()))
    }
}

/// Makes the rename into `dir` durable: one flush, shared with the downloads that
/// renamed on the same file system meanwhile ([`crate::dirsync`]).
async fn sync_dir(dir: &Path) -> Result<(), Classified> {
    let Err(shared) = crate::dirsync::flush_shared(dir).await else {
        return Ok(());
    };
    // The shared flush also reports any other file's writeback error on the file system;
    // the directory's own fsync says whether this rename is durable.
    tracing::debug!(error = %shared, "the shared flush failed; fsyncing the directory itself");
    let owned = dir.to_path_buf();
    blocking(move || std::fs::File::open(&owned)?.sync_all())
        .await
        .map_err(|error| disk("making the rename durable in", dir, error))
}

async fn remove_if_present(path: &Path) -> Result<(), Classified> {
    remove_file_if_present(path)
        .await
        .map_err(|error| disk("removing", path, error))
}

async fn remove_file_if_present(path: &Path) -> io::Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        removed => removed,
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}

/// A local disk error as the attempt's outcome: a full file system or quota (`ENOSPC`,
/// `EDQUOT`) is [`RetryReason::StorageFull`], whose partial file [`run`] removes; any
/// other error is terminal, [`FailReason::LocalDisk`] (a permission, a missing
/// directory, an I/O error).
fn disk(action: &str, path: &Path, error: io::Error) -> Classified {
    let message = format!("{action} {}: {error} ({:?})", path.display(), error.kind());
    if is_storage_full(&error) {
        return Classified::retry(RetryReason::StorageFull, None, message);
    }
    Classified::failed(FailReason::LocalDisk, message)
}

/// Whether the file system refused the write for lack of space or quota.
fn is_storage_full(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("valid header value"));
        }
        map
    }

    /// Only an absent, empty or `identity` Content-Encoding is an unencoded body; any other
    /// coding, alone or in a list, in any case, is named.
    #[test]
    fn content_codings() {
        assert_eq!(content_coding(&headers(&[])), None);
        for plain in ["identity", "IDENTITY", " identity , identity", ""] {
            let found = content_coding(&headers(&[("content-encoding", plain)]));
            assert_eq!(found, None, "{plain:?}");
        }
        for (encoded, shown) in [
            ("gzip", "gzip"),
            ("identity, br", "identity, br"),
            ("GZIP", "GZIP"),
        ] {
            let found = content_coding(&headers(&[("content-encoding", encoded)]));
            assert_eq!(found.as_deref(), Some(shown), "{encoded:?}");
        }
        let mut two = HeaderMap::new();
        two.append(CONTENT_ENCODING, "identity".parse().expect("value"));
        two.append(CONTENT_ENCODING, "zstd".parse().expect("value"));
        assert_eq!(content_coding(&two).as_deref(), Some("identity, zstd"));
        let long = "x".repeat(1000);
        let found = content_coding(&headers(&[("content-encoding", long.as_str())]));
        assert_eq!(
            found.map(|coding| coding.len()),
            Some(CONTENT_CODING_BYTES_MAX)
        );
    }

    /// Content-Range parsing accepts the RFC forms and refuses inconsistent ones.
    #[test]
    fn content_range_forms() {
        let parse = |value| content_range(&headers(&[("content-range", value)]));
        assert_eq!(
            parse("bytes 10-19/20"),
            Some(ContentRange {
                start: 10,
                total: Some(20)
            })
        );
        assert_eq!(
            parse("bytes 0-9/*"),
            Some(ContentRange {
                start: 0,
                total: None
            })
        );
        assert_eq!(
            parse("bytes */20"),
            Some(ContentRange {
                start: 20,
                total: Some(20)
            })
        );
        for bad in [
            "bytes 10-9/20",
            "bytes 0-20/20",
            "items 0-1/2",
            "bytes x-1/2",
            "bytes */*",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    /// Only strong ETags are used for If-Range; a weak one falls back to Last-Modified,
    /// and the sidecar encoding round-trips while garbage decodes to nothing.
    #[test]
    fn validators() {
        let strong = headers(&[
            ("etag", "\"abc\""),
            ("last-modified", "Tue, 02 Jan 2024 03:04:05 GMT"),
        ]);
        assert_eq!(
            Validator::from_headers(&strong),
            Some(Validator::ETag("\"abc\"".into()))
        );
        let weak = headers(&[
            ("etag", "W/\"abc\""),
            ("last-modified", "Tue, 02 Jan 2024 03:04:05 GMT"),
        ]);
        let fallback = Validator::from_headers(&weak);
        assert_eq!(
            fallback,
            Some(Validator::LastModified(
                "Tue, 02 Jan 2024 03:04:05 GMT".into()
            ))
        );
        assert_eq!(Validator::from_headers(&headers(&[])), None);
        for validator in [strong, weak].iter().filter_map(Validator::from_headers) {
            assert_eq!(Validator::decode(&validator.encode()), Some(validator));
        }
        for garbage in [
            "",
            "etag",
            "etag\n",
            "etag\n\"a\"",
            "size\n1\n",
            "etag\n\"a\"\nmore\n",
        ] {
            assert_eq!(Validator::decode(garbage), None, "{garbage:?}");
        }
    }
}
