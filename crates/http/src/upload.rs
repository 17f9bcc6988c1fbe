//! Uploads and data tasks: a request body out (empty, bytes, or a file streamed with its
//! `Content-Length`), a bounded response body back.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use reqwest::header::CONTENT_LENGTH;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::classify::{Classified, FailReason, Response, StatusClass, classify_status};
use crate::engine::{Inner, Progress};
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
    let activity = Activity::new();
    let mut builder = transport::request_builder(&engine.client, request, url, target);
    let mut local_error = None;
    match &request.body {
        Body::Empty => {}
        Body::Bytes(bytes) => builder = builder.body(bytes.clone()),
        Body::File(path) => {
            let file = match FileBody::open(path, config.limits.upload_file_bytes_max).await {
                Ok(file) => file,
                Err(classified) => return classified,
            };
            if let Some(progress) = progress {
                progress.send_replace(Progress {
                    bytes_done: 0,
                    bytes_expected: Some(file.length),
                });
            }
            builder = builder.header(CONTENT_LENGTH, file.length);
            local_error = Some(Arc::clone(&file.error));
            builder = builder.body(file.into_body(activity.clone(), progress.cloned()));
        }
    }
    let sent = transport::send(builder, config.read_idle_timeout, &activity).await;
    // A failure to read our own file surfaces as a request error: say what it really was.
    let local_failure = local_error.and_then(|error| error.lock().ok().and_then(|e| e.clone()));
    if let Some(message) = local_failure {
        return Classified::failed(FailReason::LocalDisk, message);
    }
    let mut response = match sent {
        Ok(response) => response,
        Err(classified) => return classified,
    };
    let status = response.status().as_u16();
    match classify_status(status) {
        StatusClass::Success => {}
        StatusClass::Retry | StatusClass::Rejected | StatusClass::Failed => {
            return transport::answer(response, config).await;
        }
    }
    let headers =
        transport::response_headers(response.headers(), config.limits.response_headers_max);
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

/// A file opened for streaming as a request body.
struct FileBody {
    file: tokio::fs::File,
    length: u64,
    /// The first local read error, if any, so it is reported as a disk failure rather than
    /// as whatever the client makes of an aborted body.
    error: Arc<Mutex<Option<String>>>,
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
            error: Arc<Mutex<Option<String>>>,
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
