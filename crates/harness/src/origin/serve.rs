//! One connection: read the head, route it, answer (faults included), close.

use std::io;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::content::{self, content};
use super::counters::ServedRange;
use super::fault::Fault;
use super::wire::{self, HeadError, RangeRequest, RequestHead, write_head, write_simple};
use super::{InFlight, Shared};

/// The largest object served, in bytes (1 TiB).
const OBJECT_BYTES_MAX: u64 = 1 << 40;
/// The largest upload accepted, in bytes.
const UPLOAD_BYTES_MAX: u64 = 1 << 40;
/// One body write, in bytes.
const BODY_CHUNK_BYTES: u64 = 256 * 1024;
/// How long a reset waits after the last byte before aborting, so the bytes written
/// before the reset reach the client rather than being discarded with the socket.
const RESET_GRACE: Duration = Duration::from_millis(50);
/// The longest a stalled response holds its connection.
const STALL_MAX: Duration = Duration::from_secs(120);

/// Serves one connection; errors end it quietly (the client went away).
pub(crate) async fn connection(mut stream: TcpStream, shared: &Shared) {
    if let Err(error) = handle(&mut stream, shared).await {
        tracing::debug!(%error, "origin connection ended");
    }
}

async fn handle(stream: &mut TcpStream, shared: &Shared) -> io::Result<()> {
    let (head, early_body) = match wire::read_head(stream).await {
        Ok(read) => read,
        Err(HeadError::Closed) => return Ok(()),
        Err(HeadError::TooLarge) => {
            return write_simple(stream, 431, &[], b"request head too large\n").await;
        }
        Err(HeadError::Malformed(message)) => {
            return write_simple(stream, 400, &[], message.as_bytes()).await;
        }
        Err(HeadError::Io(error)) => return Err(error),
    };
    let path = head.path.clone();
    if let Some(name) = single_segment(&path, "/objects/") {
        return object(stream, shared, &head, &name).await;
    }
    if let Some(name) = single_segment(&path, "/uploads/") {
        return upload(stream, shared, &head, &name, early_body).await;
    }
    shared.count(&head.target, None);
    match path.as_str() {
        "/redirect" => redirect(stream, &head, early_body).await,
        "/loop" => write_simple(stream, 302, &[("Location", "/loop".to_owned())], b"").await,
        "/echo" => echo(stream, &head).await,
        _ => write_simple(stream, 404, &[], b"no such resource\n").await,
    }
}

fn single_segment(path: &str, prefix: &str) -> Option<String> {
    let name = path.strip_prefix(prefix)?;
    (!name.is_empty() && !name.contains('/')).then(|| wire::percent_decode(name))
}

/// The request number, the fault (if this request is within its window) and `size`.
struct Program {
    size: u64,
    fault: Option<Fault>,
    number: u64,
}

fn program(head: &RequestHead, number: u64, size_max: u64) -> Result<Program, String> {
    let size = head
        .param("size")
        .ok_or("the size parameter is missing")?
        .parse::<u64>()
        .map_err(|error| format!("bad size: {error}"))?;
    if size > size_max {
        return Err(format!("size {size} is over {size_max}"));
    }
    let times = match head.param("times") {
        Some(times) => times
            .parse::<u64>()
            .map_err(|error| format!("bad times: {error}"))?,
        None => 1,
    };
    let fault = head.param("fault").map(Fault::parse).transpose()?;
    Ok(Program {
        size,
        fault: fault.filter(|_| number <= times),
        number,
    })
}

async fn object(
    stream: &mut TcpStream,
    shared: &Shared,
    head: &RequestHead,
    name: &str,
) -> io::Result<()> {
    let number = shared.count(&head.target, Some(name));
    shared.seen(name, head);
    let mut in_flight = InFlight::start(shared);
    let is_head = match head.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let allow = [("Allow", "GET, HEAD".to_owned())];
            return write_simple(stream, 405, &allow, b"").await;
        }
    };
    let program = match program(head, number, OBJECT_BYTES_MAX) {
        Ok(program) => program,
        // No size: no such object.
        Err(message) if head.param("size").is_none() => {
            return write_simple(stream, 404, &[], message.as_bytes()).await;
        }
        Err(message) => return write_simple(stream, 400, &[], message.as_bytes()).await,
    };
    let size = program.size;
    if let Some(Fault::Status { code, retry_after }) = &program.fault {
        shared.served(
            name,
            ServedRange {
                status: *code,
                start: 0,
                end: 0,
            },
        );
        let mut headers = Vec::new();
        if let Some(form) = retry_after {
            headers.push(("Retry-After", form.header_value(SystemTime::now())));
        }
        in_flight.end();
        return write_simple(stream, *code, &headers, b"").await;
    }

    let version = (head.param("etag") == Some("per-request")).then_some(program.number);
    let etag = content::etag(shared.seed, name, size, version);
    let last_modified = content::last_modified(shared.seed, name, version);
    let (send_etag, send_last_modified, weak) = match head.param("validators").unwrap_or("both") {
        "both" => (true, true, false),
        "etag" => (true, false, false),
        "last-modified" => (false, true, false),
        "none" => (false, false, false),
        "weak" => (true, true, true),
        other => {
            let message = format!("bad validators {other:?}");
            return write_simple(stream, 400, &[], message.as_bytes()).await;
        }
    };
    let ranges_ignored = head.param("ranges") == Some("ignore");
    // If-Range needs a strong match (RFC 9110 section 13.1.5).
    let if_range_holds = match head.header("if-range") {
        None => true,
        Some(value) => {
            (send_etag && !weak && value == etag) || (send_last_modified && value == last_modified)
        }
    };
    let range = match head.header("range") {
        Some(value) if !ranges_ignored && if_range_holds => wire::parse_range(value, size),
        Some(_) | None => RangeRequest::Full,
    };

    let mut headers = vec![("Content-Type", "application/octet-stream".to_owned())];
    if let Some(Fault::Encoding { coding }) = &program.fault {
        headers.push(("Content-Encoding", coding.clone()));
    }
    if !ranges_ignored {
        headers.push(("Accept-Ranges", "bytes".to_owned()));
    }
    if send_etag {
        let shown = if weak { format!("W/{etag}") } else { etag };
        headers.push(("ETag", shown));
    }
    if send_last_modified {
        headers.push(("Last-Modified", last_modified));
    }
    let (status, start, end) = match range {
        RangeRequest::Unsatisfiable => {
            shared.served(
                name,
                ServedRange {
                    status: 416,
                    start: size,
                    end: size,
                },
            );
            headers.push(("Content-Range", format!("bytes */{size}")));
            in_flight.end();
            return write_simple(stream, 416, &headers, b"").await;
        }
        RangeRequest::Full => (200, 0, size),
        RangeRequest::Partial { start, end } => {
            headers.push(("Content-Range", format!("bytes {start}-{}/{size}", end - 1)));
            (206, start, end)
        }
    };
    let chunked = matches!(program.fault, Some(Fault::Chunked));
    if chunked {
        headers.push(("Transfer-Encoding", "chunked".to_owned()));
    } else {
        headers.push(("Content-Length", (end - start).to_string()));
    }
    shared.served(name, ServedRange { status, start, end });
    if is_head || start == end {
        in_flight.end();
    }
    write_head(stream, status, &headers).await?;
    if is_head {
        return stream.flush().await;
    }
    send_body(stream, shared, name, start, end, program.fault, in_flight).await
}

async fn send_body(
    stream: &mut TcpStream,
    shared: &Shared,
    name: &str,
    start: u64,
    end: u64,
    fault: Option<Fault>,
    mut in_flight: InFlight<'_>,
) -> io::Result<()> {
    let length = end - start;
    let (limit, piece, interval) = match &fault {
        Some(Fault::Reset { after_bytes })
        | Some(Fault::Lie {
            sent_bytes: after_bytes,
        })
        | Some(Fault::Stall { after_bytes })
        | Some(Fault::Gate { after_bytes }) => ((*after_bytes).min(length), BODY_CHUNK_BYTES, None),
        Some(Fault::Drip { bytes, interval }) => {
            (length, (*bytes).min(BODY_CHUNK_BYTES), Some(*interval))
        }
        Some(Fault::Status { .. }) | Some(Fault::Encoding { .. }) | Some(Fault::Chunked) | None => {
            (length, BODY_CHUNK_BYTES, None)
        }
    };
    let body = Body {
        shared,
        name,
        start,
        piece,
        interval,
        chunked: matches!(fault, Some(Fault::Chunked)),
    };
    // The gate's first part must not end the in-flight count: the rest follows.
    let last = !matches!(fault, Some(Fault::Gate { .. }));
    body.send(stream, 0, limit, last.then_some(&mut in_flight))
        .await?;
    stream.flush().await?;
    match fault {
        Some(Fault::Reset { .. }) => {
            tokio::time::sleep(RESET_GRACE).await;
            shared.reset();
            // Closing with a zero linger sends RST instead of FIN.
            stream.set_zero_linger()
        }
        Some(Fault::Stall { .. }) => hold(stream).await,
        Some(Fault::Gate { .. }) => {
            if !wait_for_gate(stream, shared, name).await {
                return Ok(());
            }
            body.send(stream, limit, length, Some(&mut in_flight))
                .await?;
            stream.flush().await?;
            stream.shutdown().await
        }
        Some(Fault::Chunked) => {
            in_flight.end();
            stream.write_all(b"0\r\n\r\n").await?;
            stream.flush().await?;
            stream.shutdown().await
        }
        // A lying Content-Length ends like an honest one: a clean close, too early.
        Some(Fault::Lie { .. })
        | Some(Fault::Drip { .. })
        | Some(Fault::Status { .. })
        | Some(Fault::Encoding { .. })
        | None => stream.shutdown().await,
    }
}

/// How an object's body bytes are written.
struct Body<'a> {
    shared: &'a Shared,
    name: &'a str,
    /// The object offset of the body's first byte.
    start: u64,
    /// The largest write, in bytes.
    piece: u64,
    /// The pause between two writes (a drip).
    interval: Option<Duration>,
    /// Whether each write is framed as an HTTP/1.1 chunk.
    chunked: bool,
}

impl Body<'_> {
    /// Writes the body's bytes `from..to`; `in_flight` ends just before the last write.
    async fn send(
        &self,
        stream: &mut TcpStream,
        from: u64,
        to: u64,
        mut in_flight: Option<&mut InFlight<'_>>,
    ) -> io::Result<()> {
        let mut buffer = vec![0u8; usize::try_from(self.piece.min(to - from)).unwrap_or(0)];
        let mut sent = from;
        while sent < to {
            let take = usize::try_from((to - sent).min(buffer.len() as u64)).unwrap_or(0);
            content(
                self.shared.seed,
                self.name,
                self.start + sent,
                &mut buffer[..take],
            );
            if sent + take as u64 == to
                && let Some(in_flight) = in_flight.as_mut()
            {
                in_flight.end();
            }
            if self.chunked {
                stream.write_all(format!("{take:x}\r\n").as_bytes()).await?;
            }
            stream.write_all(&buffer[..take]).await?;
            if self.chunked {
                stream.write_all(b"\r\n").await?;
            }
            sent += take as u64;
            self.shared.body_bytes(self.name, take as u64);
            if let (Some(interval), true) = (self.interval, sent < to) {
                stream.flush().await?;
                tokio::time::sleep(interval).await;
            }
        }
        Ok(())
    }
}

/// Waits until the test opens the gate of `name` (true), or the client leaves or
/// [`STALL_MAX`] passes (false).
async fn wait_for_gate(stream: &mut TcpStream, shared: &Shared, name: &str) -> bool {
    let mut sink = [0u8; 1024];
    let left = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        () = shared.gate_opened(name) => true,
        () = left => false,
        () = tokio::time::sleep(STALL_MAX) => false,
    }
}

/// Keeps a connection open and silent until the client leaves (or [`STALL_MAX`]).
async fn hold(stream: &mut TcpStream) -> io::Result<()> {
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(STALL_MAX, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    Ok(())
}

async fn upload(
    stream: &mut TcpStream,
    shared: &Shared,
    head: &RequestHead,
    name: &str,
    early_body: Vec<u8>,
) -> io::Result<()> {
    let number = shared.count(&head.target, Some(name));
    shared.seen(name, head);
    if head.method != "PUT" && head.method != "POST" {
        let allow = [("Allow", "PUT, POST".to_owned())];
        return write_simple(stream, 405, &allow, b"").await;
    }
    let program = match program(head, number, UPLOAD_BYTES_MAX) {
        Ok(program) => program,
        Err(message) => return write_simple(stream, 400, &[], message.as_bytes()).await,
    };
    let Some(length) = head
        .header("content-length")
        .and_then(|value| value.parse::<u64>().ok())
    else {
        return write_simple(stream, 411, &[], b"uploads need a Content-Length\n").await;
    };
    if length > UPLOAD_BYTES_MAX {
        return write_simple(stream, 413, &[], b"upload too large\n").await;
    }
    let reset_after = match &program.fault {
        Some(Fault::Reset { after_bytes }) => Some(*after_bytes),
        Some(_) | None => None,
    };

    let mut received: u64 = 0;
    let mut matches = true;
    let mut scratch = Vec::new();
    let mut check = |bytes: &[u8], received: &mut u64| {
        let fits = *received + bytes.len() as u64 <= program.size;
        if matches && !(fits && content::matches(shared.seed, name, *received, bytes, &mut scratch))
        {
            matches = false;
        }
        *received += bytes.len() as u64;
    };
    let early = &early_body[..early_body
        .len()
        .min(usize::try_from(length).unwrap_or(usize::MAX))];
    check(early, &mut received);
    let mut buffer = vec![0u8; BODY_CHUNK_BYTES as usize];
    loop {
        if reset_after.is_some_and(|after| received >= after) {
            shared.reset();
            return stream.set_zero_linger();
        }
        if received >= length {
            break;
        }
        let mut want = (length - received).min(buffer.len() as u64);
        if let Some(after) = reset_after {
            want = want.min(after - received);
        }
        let read = stream
            .read(&mut buffer[..usize::try_from(want).unwrap_or(0)])
            .await?;
        if read == 0 {
            // The client left mid-body: nothing was uploaded.
            return Ok(());
        }
        check(&buffer[..read], &mut received);
    }
    let matched = matches && length == program.size;

    match program.fault {
        Some(Fault::Status { code, retry_after }) => {
            let mut headers = Vec::new();
            if let Some(form) = retry_after {
                headers.push(("Retry-After", form.header_value(SystemTime::now())));
            }
            return write_simple(stream, code, &headers, b"").await;
        }
        Some(Fault::Stall { .. }) => return hold(stream).await,
        // Resets were handled while reading; the other faults shape downloads only.
        Some(Fault::Reset { .. })
        | Some(Fault::Drip { .. })
        | Some(Fault::Lie { .. })
        | Some(Fault::Encoding { .. })
        | Some(Fault::Chunked)
        | Some(Fault::Gate { .. })
        | None => {}
    }
    let (status, body) =
        shared.upload_answer(name, head.header("idempotency-key"), matched, length);
    write_simple(stream, status, &[], body.as_bytes()).await?;
    stream.shutdown().await
}

async fn redirect(
    stream: &mut TcpStream,
    head: &RequestHead,
    early_body: Vec<u8>,
) -> io::Result<()> {
    // Read the request body first: closing a socket with unread bytes sends a reset, which
    // could reach the client before the redirect does.
    if !drain_body(stream, head, early_body).await? {
        return Ok(());
    }
    let status = head
        .param("status")
        .and_then(|status| status.parse::<u16>().ok())
        .filter(|status| (300..400).contains(status))
        .unwrap_or(302);
    if head.param("location") == Some("omit") {
        return write_simple(stream, status, &[], b"").await;
    }
    let Some(to) = head.param("to") else {
        return write_simple(stream, 400, &[], b"the to parameter is missing\n").await;
    };
    let hops = head
        .param("hops")
        .and_then(|hops| hops.parse::<u64>().ok())
        .unwrap_or(1);
    let location = if hops > 1 {
        format!(
            "/redirect?to={}&hops={}&status={status}",
            wire::percent_encode(to),
            hops - 1
        )
    } else {
        to.to_owned()
    };
    write_simple(stream, status, &[("Location", location)], b"").await
}

/// Reads and drops a request body announced by `Content-Length` (at most
/// [`UPLOAD_BYTES_MAX`]); false when the client left before its end.
async fn drain_body(
    stream: &mut TcpStream,
    head: &RequestHead,
    early_body: Vec<u8>,
) -> io::Result<bool> {
    let length = head
        .header("content-length")
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(0)
        .min(UPLOAD_BYTES_MAX);
    let mut received = early_body.len() as u64;
    let mut buffer = vec![0u8; BODY_CHUNK_BYTES as usize];
    while received < length {
        let want = usize::try_from((length - received).min(BODY_CHUNK_BYTES)).unwrap_or(0);
        let read = stream.read(&mut buffer[..want]).await?;
        if read == 0 {
            return Ok(false);
        }
        received += read as u64;
    }
    Ok(true)
}

async fn echo(stream: &mut TcpStream, head: &RequestHead) -> io::Result<()> {
    let mut body = String::new();
    for (name, value) in &head.headers {
        body.push_str(name);
        body.push_str(": ");
        body.push_str(value);
        body.push('\n');
    }
    write_simple(stream, 200, &[], body.as_bytes()).await
}
