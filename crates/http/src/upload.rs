//! Uploads and data tasks: a request body out (empty, bytes, or a file streamed with its
//! `Content-Length`, sent again on each redirect that keeps the body), a bounded response
//! body back, kept as received (an encoded body stays encoded).

use std::io;
use std::path::Path;
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
    let mut response = match redirect::send(engine, request, url, target, &[], progress).await {
        Ok(response) => response,
        Err(classified) => return classified,
    };
    let status = response.status().as_u16();
    match classify_status(status) {
        StatusClass::Success => {}
        StatusClass::Retry | StatusClass::Rejected | StatusClass::Failed => {
            return transport::answer(response, config, request).await;
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
        bytes: body.len() as u64,
        body,
        file: None,
    })
}

/// Where a file body records the first local read error, so that it is reported as a disk
/// failure rather than as whatever the client makes of an aborted body.
pub(crate) type LocalError = Arc<Mutex<Option<String>>>;

/// The local read error recorded, if any.
pub(crate) fn local_failure(error: &LocalError) -> Option<String> {
    error.lock().ok().and_then(|slot| slot.clone())
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
) -> Result<(reqwest::RequestBuilder, Option<LocalError>), Classified> {
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
            let error = Arc::clone(&file.error);
            let builder = builder
                .header(CONTENT_LENGTH, file.length)
                .body(file.into_body(activity.clone(), progress.cloned()));
            Ok((builder, Some(error)))
        }
    }
}

/// A file opened for streaming as a request body.
struct FileBody {
    file: tokio::fs::File,
    length: u64,
    /// The first local read error, if any.
    error: LocalError,
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
            error: Arc::new(Mutex::new(None)),
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
            error: LocalError,
        }
        let state = State {
            file: self.file,
            sent: 0,
            length: self.length,
            activity,
            progress,
            error: self.error,
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
                if let Ok(mut slot) = state.error.lock() {
                    slot.get_or_insert(message);
                }
                return Err(error);
            }
            state.sent += chunk_bytes as u64;
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
