//! Uploads and data tasks: a request body out (empty, bytes, or a file streamed with its
//! `Content-Length`, sent again on each redirect that keeps the body), a bounded response
//! body back, kept as received (an encoded body stays encoded).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use reqwest::header::CONTENT_LENGTH;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::classify::{Classified, FailReason, Response, StatusClass, classify_status};
use crate::engine::{Inner, Progress};
use crate::limits::EngineConfig;
use crate::redirect;
use crate::request::{Body, Target, TransferKind, TransferRequest};
use crate::transport::{self, Activity};

/// The size of one chunk read from an uploaded file, in bytes.
const UPLOAD_CHUNK_BYTES: u64 = 256 * 1024;

/// Runs one attempt of an upload or a data task.
pub(crate) async fn run(
    engine: &Inner,
    request: &TransferRequest,
    url: reqwest::Url,
    target: &Target,
    progress: Option<&watch::Sender<Progress>>,
) -> Classified {
    let config = &engine.config;
    let answered = match redirect::send(engine, request, url, target, &[], progress).await {
        Ok(answered) => answered,
        Err(classified) => return classified,
    };
    let mut response = answered.response;
    // An upload's bytes are its body sent, read once the exchange is over; a data task's
    // are its answer's (Response::bytes).
    let body_sent = |body: &[u8]| match (&request.kind, &answered.file_body) {
        (TransferKind::Upload, Some(report)) => report.sent_bytes(),
        (TransferKind::Upload, None) => 0,
        (TransferKind::Data | TransferKind::Download { .. }, _) => body.len() as u64,
    };
    let status = response.status().as_u16();
    match classify_status(status) {
        StatusClass::Success => {}
        StatusClass::Retry | StatusClass::Rejected | StatusClass::Failed => {
            let sent = match request.kind {
                TransferKind::Upload => Some(body_sent(&[])),
                TransferKind::Data | TransferKind::Download { .. } => None,
            };
            return transport::answer(response, config, request, sent).await;
        }
    }
    // The body is kept as received, `Content-Encoding` included (see the crate docs).
    let headers = transport::response_headers(
        response.headers(),
        config.limits.response_headers_max,
        request,
    );
    let (cap, over_cap_fails) = match request.kind {
        TransferKind::Data => (config.limits.data_response_bytes_max, true),
        // The upload succeeded whatever the answer's size: keep its beginning.
        TransferKind::Upload | TransferKind::Download { .. } => {
            (config.limits.error_body_bytes_max, false)
        }
    };
    let body = match transport::read_body_capped(&mut response, cap, config.read_idle_timeout).await
    {
        Ok((_body, true)) if over_cap_fails => {
            return Classified::failed(
                FailReason::ResponseTooLarge,
                format!("the response body is over {cap} bytes"),
            );
        }
        Ok((body, _)) => body,
        Err(classified) => return classified,
    };
    Classified::Success(Response {
        status,
        headers,
        bytes: body_sent(&body),
        body,
        file: None,
    })
}

/// What a file body reports while the client sends it: the bytes taken, and the first
/// local read error, so that it is reported as a disk failure rather than as whatever
/// the client makes of an aborted body.
#[derive(Debug, Default)]
pub(crate) struct FileBodyReport {
    sent_bytes: AtomicU64,
    error: Mutex<Option<String>>,
}

impl FileBodyReport {
    /// The bytes the client has taken from the file so far.
    pub(crate) fn sent_bytes(&self) -> u64 {
        self.sent_bytes.load(Ordering::Relaxed)
    }

    /// The local read error recorded, if any.
    pub(crate) fn local_failure(&self) -> Option<String> {
        self.error.lock().ok().and_then(|slot| slot.clone())
    }
}

/// Attaches the request body to one hop's request: bytes are sent again as they are, a
/// file is opened afresh and streamed from its start with its length as `Content-Length`
/// (progress starts again from zero).
pub(crate) async fn attach_body(
    builder: reqwest::RequestBuilder,
    body: &Body,
    config: &EngineConfig,
    activity: &Activity,
    progress: Option<&watch::Sender<Progress>>,
) -> Result<(reqwest::RequestBuilder, Option<Arc<FileBodyReport>>), Classified> {
    match body {
        Body::Empty => Ok((builder, None)),
        Body::Bytes(bytes) => Ok((builder.body(bytes.clone()), None)),
        Body::File(path) => {
            let file = FileBody::open(path, config.limits.upload_file_bytes_max).await?;
            if let Some(progress) = progress {
                progress.send_replace(Progress {
                    bytes_done: 0,
                    bytes_expected: Some(file.length),
                });
            }
            let report = Arc::clone(&file.report);
            let builder = builder
                .header(CONTENT_LENGTH, file.length)
                .body(file.into_body(activity.clone(), progress.cloned()));
            Ok((builder, Some(report)))
        }
    }
}

/// A file opened for streaming as a request body.
struct FileBody {
    file: tokio::fs::File,
    length: u64,
    report: Arc<FileBodyReport>,
}

impl FileBody {
    async fn open(path: &Path, length_max: u64) -> Result<FileBody, Classified> {
        let local = |error: io::Error| {
            Classified::failed(
                FailReason::LocalDisk,
                format!("opening {} for upload: {error}", path.display()),
            )
        };
        let file = tokio::fs::File::open(path).await.map_err(local)?;
        let metadata = file.metadata().await.map_err(local)?;
        if !metadata.is_file() {
            return Err(Classified::failed(
                FailReason::LocalDisk,
                format!("{} is not a regular file", path.display()),
            ));
        }
        let length = metadata.len();
        if length > length_max {
            return Err(Classified::failed(
                FailReason::InvalidRequest,
                format!("the upload is {length} bytes, over the limit of {length_max}"),
            ));
        }
        Ok(FileBody {
            file,
            length,
            report: Arc::default(),
        })
    }

    /// The body: exactly `length` bytes, in chunks; each chunk taken by the client
    /// counts as connection activity and as progress.
    fn into_body(
        self,
        activity: Activity,
        progress: Option<watch::Sender<Progress>>,
    ) -> reqwest::Body {
        struct State {
            file: tokio::fs::File,
            sent: u64,
            length: u64,
            activity: Activity,
            progress: Option<watch::Sender<Progress>>,
            report: Arc<FileBodyReport>,
        }
        let state = State {
            file: self.file,
            sent: 0,
            length: self.length,
            activity,
            progress,
            report: self.report,
        };
        let stream = futures_util::stream::try_unfold(state, |mut state| async move {
            let remaining = state.length - state.sent;
            if remaining == 0 {
                return Ok(None);
            }
            let chunk_bytes =
                usize::try_from(remaining.min(UPLOAD_CHUNK_BYTES)).map_err(io::Error::other)?;
            let mut chunk = vec![0; chunk_bytes];
            if let Err(error) = state.file.read_exact(&mut chunk).await {
                let message = format!("reading the upload file: {error} (did it shrink?)");
                if let Ok(mut slot) = state.report.error.lock() {
                    slot.get_or_insert(message);
                }
                return Err(error);
            }
            state.sent += chunk_bytes as u64;
            state.report.sent_bytes.store(state.sent, Ordering::Relaxed);
            state.activity.touch();
            if let Some(progress) = &state.progress {
                progress.send_replace(Progress {
                    bytes_done: state.sent,
                    bytes_expected: Some(state.length),
                });
            }
            Ok(Some((Bytes::from(chunk), state)))
        });
        reqwest::Body::wrap_stream(stream)
    }
}
