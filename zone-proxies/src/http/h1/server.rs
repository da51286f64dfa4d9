//! HTTP/1.1 from downstream clients, served from the connection's own task: the request head
//! is parsed with `httparse` from the connection's read buffer, the handler runs in the same
//! task, and the response head goes out in one `write` with whatever of its body is ready.
//! hyper's server did the same work through a dispatcher, a body channel per request and its
//! own buffers: ~6,900 instructions per proxied request outside the handler (31% of the
//! proxy's user-space instructions, docs/benchmarks.md).
//!
//! A request body is read by the connection's task while the handler consumes it (a bounded
//! channel of frames), framed by content-length or chunked encoding (RFC 9112 section 6);
//! reading goes on while the response is written, so a full-duplex exchange streams both
//! ways. `Expect: 100-continue` is answered here, as Envoy does by default. Keep-alive follows
//! the request's version and `Connection` header; a body the handler left unread is drained
//! (up to [`DRAIN_LIMIT`]) to keep the connection. Bad heads get 400, 431 or 501 naming what
//! is wrong, and the connection is closed. A connection that opens with HTTP/2's preface is
//! handed back, with what was read of it, to be served as HTTP/2.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::channel::{Channel, Sender};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    content_length, flush_write, header_map, keeps_alive, next_body_piece, poll_fill, write_body,
    BodyState, Chunk, Framing, H1Error, HeaderSpans, Present, MAX_HEAD, MAX_HEADERS,
};
use crate::http::client::{Body, BoxError};

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What is left of a request body the handler did not read is read and discarded after the
/// response, to keep the connection, up to this many bytes; a longer remainder closes it.
pub const DRAIN_LIMIT: u64 = 256 * 1024;

/// Request body frames in flight between the connection's reading and the handler.
const BODY_FRAMES: usize = 4;

/// How a served connection ended.
pub enum Served<T> {
    /// Either side closed it, the idle timeout passed, or it drained.
    Closed,
    /// The client opened with HTTP/2's preface: the connection and the bytes read from it.
    Http2(T, Bytes),
}

/// Serves HTTP/1.1 requests on `io` with `service` until the client closes, `idle` passes
/// with no request, or `drain` completes (the request in flight is answered first, with
/// `Connection: close`).
pub async fn serve<T, S, F, D>(
    io: T,
    mut service: S,
    idle: Option<Duration>,
    drain: &mut D,
) -> Served<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(Request<Body>) -> F,
    F: Future<Output = Response<Body>>,
    D: Future<Output = ()> + Unpin,
{
    let mut conn = ServerConn {
        io,
        read: BytesMut::new(),
        write: Vec::new(),
        idle,
        idle_timer: None,
        draining: false,
    };
    let mut first = true;
    loop {
        let head = match conn.next_head(first, drain).await {
            Next::Head(head) => head,
            Next::Http2 => return Served::Http2(conn.io, conn.read.freeze()),
            Next::Closed => return Served::Closed,
            Next::Bad(bad) => {
                conn.refuse(&bad).await;
                return Served::Closed;
            }
        };
        first = false;
        let RequestHead {
            parts,
            framing,
            mut keep_alive,
            expect_continue,
        } = head;
        let version = parts.version;
        let head_request = parts.method == Method::HEAD;
        let (mut progress, (body, mut sender)) = match framing {
            Framing::Length(n) => (BodyState::Length(n), RequestBody::channel(Some(n))),
            Framing::Chunked => (BodyState::Chunked(Chunk::Size), RequestBody::channel(None)),
            _ => (BodyState::Done, (Body::default(), None)),
        };
        if expect_continue && sender.is_some() {
            conn.write
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            if flush_write(&mut conn.io, &mut conn.write).await.is_err() {
                return Served::Closed;
            }
        }
        let response = {
            let mut handling = std::pin::pin!(service(Request::from_parts(parts, body)));
            loop {
                if sender.is_none() {
                    match conn.respond_or_peer_gone(handling.as_mut()).await {
                        Some(response) => break response,
                        None => return Served::Closed,
                    }
                }
                tokio::select! {
                    biased;
                    response = handling.as_mut() => break response,
                    fed = feed_body(&mut conn.io, &mut conn.read, &mut progress, &mut sender) => {
                        if fed.is_err() {
                            // The client closed or sent a broken body: the handler sees the
                            // body fail and answers; the connection is not kept.
                            keep_alive = false;
                        }
                    }
                }
            }
        };
        if let BodyState::Length(n) = progress {
            if n > DRAIN_LIMIT {
                keep_alive = false;
            }
        }
        if !conn.draining && futures::FutureExt::now_or_never(&mut *drain).is_some() {
            conn.draining = true;
        }
        keep_alive &= !conn.draining;
        let written = if sender.is_some() && progress != BodyState::Done {
            conn.respond_while_reading(
                response,
                version,
                head_request,
                keep_alive,
                &mut progress,
                &mut sender,
            )
            .await
        } else {
            let ServerConn { io, write, .. } = &mut conn;
            write_response(io, write, response, version, head_request, keep_alive).await
        };
        let keep_alive = match written {
            Ok(still) => keep_alive && still,
            Err(()) => false,
        };
        // The exchange is over: a body still held (streaming upstream) fails rather than
        // ending early, which would pass a cut-short chunked body off as whole; what was not
        // read is discarded.
        if let Some(tx) = sender.take() {
            tx.abort("the response ended before the request body".into());
        }
        if !keep_alive || !conn.discard_rest(&mut progress).await {
            let _ = conn.io.shutdown().await;
            return Served::Closed;
        }
    }
}

/// The connection and its buffers.
struct ServerConn<T> {
    io: T,
    /// Bytes read and not yet consumed; request bodies are handed out as slices of it.
    read: BytesMut,
    /// The response being written, kept from request to request for its capacity.
    write: Vec<u8>,
    idle: Option<Duration>,
    /// Armed while waiting for a request head; kept registered from one wait to the next
    /// (moving its deadline later is one atomic update).
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    draining: bool,
}

/// What waiting for the next request ended with.
// Returned once per request and taken apart at once: boxing the head would allocate for
// every request.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(RequestHead),
    Http2,
    Closed,
    Bad(BadRequest),
}

/// What woke a wait for the next request head.
enum Woke {
    Read(io::Result<usize>),
    Drain,
    Idle,
}

impl<T: AsyncRead + AsyncWrite + Unpin> ServerConn<T> {
    /// Waits for the handler's response to a request whose body is all read, watching the
    /// connection meanwhile: a client that closes it (or resets it) has given up on the
    /// request, which is dropped, cancelling its upstream exchange (Envoy resets the upstream
    /// stream likewise); `None` then. What the client sends meanwhile (a pipelined request) is
    /// kept for the next head, up to [`MAX_HEAD`]. Watching costs no system call while the
    /// client is quiet: the short read that took the head left the socket not ready until its
    /// next readiness event.
    async fn respond_or_peer_gone<F: Future>(
        &mut self,
        mut handling: Pin<&mut F>,
    ) -> Option<F::Output> {
        loop {
            tokio::select! {
                biased;
                response = handling.as_mut() => return Some(response),
                read = std::future::poll_fn(|cx| poll_fill(&mut self.io, &mut self.read, cx)),
                    if self.read.len() < MAX_HEAD =>
                {
                    if !matches!(read, Ok(n) if n > 0) {
                        return None;
                    }
                }
            }
        }
    }

    /// The next request head, reading as needed.
    async fn next_head<D: Future<Output = ()> + Unpin>(
        &mut self,
        first: bool,
        drain: &mut D,
    ) -> Next {
        let mut armed = false;
        loop {
            if !self.read.is_empty() {
                let seen = self.read.len().min(H2_PREFACE.len());
                if first && self.read[..seen] == H2_PREFACE[..seen] {
                    if seen == H2_PREFACE.len() {
                        return Next::Http2;
                    }
                } else {
                    match parse_request(&mut self.read) {
                        Ok(Some(head)) => return Next::Head(head),
                        Ok(None) if self.read.len() >= MAX_HEAD => {
                            return Next::Bad(BadRequest::HeadTooLarge)
                        }
                        Ok(None) => {}
                        Err(bad) => return Next::Bad(bad),
                    }
                }
            } else if self.draining {
                return Next::Closed;
            }
            let idle = self.idle;
            let woke = std::future::poll_fn(|cx| {
                if let Poll::Ready(read) = poll_fill(&mut self.io, &mut self.read, cx) {
                    return Poll::Ready(Woke::Read(read));
                }
                if !self.draining && Pin::new(&mut *drain).poll(cx).is_ready() {
                    return Poll::Ready(Woke::Drain);
                }
                if let Some(idle) = idle {
                    // The idle time counts from when the connection began to wait.
                    if !armed {
                        let deadline = tokio::time::Instant::now() + idle;
                        match &mut self.idle_timer {
                            Some(timer) => timer.as_mut().reset(deadline),
                            None => {
                                self.idle_timer = Some(Box::pin(tokio::time::sleep_until(deadline)))
                            }
                        }
                        armed = true;
                    }
                    if let Some(timer) = &mut self.idle_timer {
                        if timer.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Woke::Idle);
                        }
                    }
                }
                Poll::Pending
            })
            .await;
            match woke {
                Woke::Read(Ok(0)) | Woke::Read(Err(_)) | Woke::Idle => return Next::Closed,
                Woke::Read(Ok(_)) => {}
                Woke::Drain => self.draining = true,
            }
        }
    }

    /// Answers a request whose head could not be accepted, naming what is wrong.
    async fn refuse(&mut self, bad: &BadRequest) {
        let status = bad.status();
        let reason = bad.to_string();
        self.write.clear();
        self.write.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reason}",
                status.as_str(),
                status.canonical_reason().unwrap_or(""),
                reason.len(),
            )
            .as_bytes(),
        );
        if flush_write(&mut self.io, &mut self.write).await.is_ok() {
            let _ = self.io.shutdown().await;
        }
    }

    /// Writes the response while the request body is still read for the handler (a
    /// full-duplex exchange): the connection is split for the while.
    async fn respond_while_reading(
        &mut self,
        response: Response<Body>,
        version: Version,
        head_request: bool,
        keep_alive: bool,
        progress: &mut BodyState,
        sender: &mut Option<Sender<Bytes, BoxError>>,
    ) -> Result<bool, ()> {
        let (mut reading, mut writing) = tokio::io::split(&mut self.io);
        let mut responding = std::pin::pin!(write_response(
            &mut writing,
            &mut self.write,
            response,
            version,
            head_request,
            keep_alive,
        ));
        loop {
            if sender.is_none() {
                return responding.await;
            }
            tokio::select! {
                biased;
                written = responding.as_mut() => return written,
                fed = feed_body(&mut reading, &mut self.read, progress, sender) => {
                    if fed.is_err() {
                        return responding.await.map(|_| false);
                    }
                }
            }
        }
    }

    /// Reads and discards what is left of the request body, up to [`DRAIN_LIMIT`] bytes:
    /// whether the connection can take another request.
    async fn discard_rest(&mut self, progress: &mut BodyState) -> bool {
        let mut discarded: u64 = 0;
        loop {
            match next_body_piece(progress, &mut self.read) {
                Ok(Some(data)) => {
                    discarded += data.len() as u64;
                    if discarded > DRAIN_LIMIT {
                        return false;
                    }
                    continue;
                }
                Ok(None) if *progress == BodyState::Done => return true,
                Ok(None) => {}
                Err(_) => return false,
            }
            match std::future::poll_fn(|cx| poll_fill(&mut self.io, &mut self.read, cx)).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    }
}

/// Reads the request body from `io` and hands it to the handler through `sender`, until the
/// body ends (the sender is dropped: the handler's body ends) or the handler stops reading it
/// (`Ok` either way). `Err` when the client closed mid-body or broke its framing; the handler's
/// body fails with that error.
async fn feed_body<R: AsyncRead + Unpin>(
    io: &mut R,
    read: &mut BytesMut,
    progress: &mut BodyState,
    sender: &mut Option<Sender<Bytes, BoxError>>,
) -> Result<(), ()> {
    loop {
        let Some(tx) = sender.as_mut() else {
            return Ok(());
        };
        match next_body_piece(progress, read) {
            Ok(Some(data)) => {
                if tx.send_data(data).await.is_err() {
                    // The handler dropped the body; the rest is discarded after the response.
                    *sender = None;
                    return Ok(());
                }
                continue;
            }
            Ok(None) if *progress == BodyState::Done => {
                *sender = None;
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => {
                // Only a chunked body's framing can be broken.
                let why = match e {
                    H1Error::Chunked(why) => why,
                    _ => "invalid framing",
                };
                if let Some(tx) = sender.take() {
                    tx.abort(format!("invalid chunked request body: {why}").into());
                }
                return Err(());
            }
        }
        let closed = match std::future::poll_fn(|cx| poll_fill(io, read, cx)).await {
            Ok(0) => "the client closed the connection in the middle of the request body".into(),
            Err(e) => format!("reading the request body: {e}"),
            Ok(_) => continue,
        };
        if let Some(tx) = sender.take() {
            tx.abort(closed.into());
        }
        return Err(());
    }
}

/// A request body read by the connection's task, frame by frame.
struct RequestBody {
    frames: Channel<Bytes, BoxError>,
    /// What is left of a content-length.
    remaining: Option<u64>,
}

impl RequestBody {
    /// A body of `length` bytes (chunked when `None`) and the sender that feeds it.
    fn channel(length: Option<u64>) -> (Body, Option<Sender<Bytes, BoxError>>) {
        let (tx, frames) = Channel::new(BODY_FRAMES);
        let body = RequestBody {
            frames,
            remaining: length,
        };
        (body.boxed_unsync(), Some(tx))
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.frames).poll_frame(cx));
        if let (Some(Ok(frame)), Some(remaining)) = (&frame, self.remaining.as_mut()) {
            if let Some(data) = frame.data_ref() {
                *remaining = remaining.saturating_sub(data.len() as u64);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining.map(SizeHint::with_exact).unwrap_or_default()
    }
}

/// A request head accepted from the client.
struct RequestHead {
    parts: http::request::Parts,
    /// `Empty`, `Length` or `Chunked`.
    framing: Framing,
    keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    expect_continue: bool,
}

/// Why a request head was refused.
#[derive(Debug, thiserror::Error)]
enum BadRequest {
    #[error("invalid request head: {0}")]
    Invalid(String),
    #[error("request head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("more than {MAX_HEADERS} request headers")]
    TooManyHeaders,
    #[error("transfer-encoding {0:?} is not supported (only chunked)")]
    UnsupportedCoding(String),
}

impl BadRequest {
    fn status(&self) -> StatusCode {
        match self {
            BadRequest::Invalid(_) => StatusCode::BAD_REQUEST,
            BadRequest::HeadTooLarge | BadRequest::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            BadRequest::UnsupportedCoding(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

/// The request head at the start of `read`, split off it once complete.
fn parse_request(read: &mut BytesMut) -> Result<Option<RequestHead>, BadRequest> {
    // Left uninitialised: zeroing 100 headers (3.2 KB) cost more than parsing a small head.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(read, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadRequest::TooManyHeaders),
        Err(e) => return Err(BadRequest::Invalid(e.to_string())),
    };
    let invalid = |what: &str| BadRequest::Invalid(what.to_string());
    let method = Method::from_bytes(request.method.unwrap_or("").as_bytes())
        .map_err(|_| invalid("method"))?;
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let target = request.path.unwrap_or("");
    let target_at = target.as_ptr() as usize - read.as_ptr() as usize;
    let target_span = target_at..target_at + target.len();
    let spans = HeaderSpans::of(read, request.headers);
    let head = read.split_to(len).freeze();
    let (mut headers, present) =
        header_map(&head, spans.as_slice()).map_err(BadRequest::Invalid)?;
    let uri = http::Uri::from_maybe_shared(head.slice(target_span))
        .map_err(|e| BadRequest::Invalid(format!("request target: {e}")))?;
    let framing = request_body_framing(&headers, present, version)?;
    let keep_alive = keeps_alive(version, &headers, present);
    let expect_continue = present.expect
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expect_continue {
        // Answered here; the upstream gets the body without being asked.
        headers.remove(header::EXPECT);
    }
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// How a request's body is delimited (RFC 9112 section 6.3). Both a transfer-encoding and a
/// content-length, or content-lengths that disagree, are refused: a proxy that picked one
/// would let a request be smuggled past it.
fn request_body_framing(
    headers: &HeaderMap,
    present: Present,
    version: Version,
) -> Result<Framing, BadRequest> {
    if present.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(BadRequest::Invalid(
                "transfer-encoding in an HTTP/1.0 request".into(),
            ));
        }
        if present.content_length {
            return Err(BadRequest::Invalid(
                "both transfer-encoding and content-length".into(),
            ));
        }
        let mut codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty());
        return match (codings.next(), codings.next()) {
            (Some(c), None) if c.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
            _ => Err(BadRequest::UnsupportedCoding(
                headers
                    .get_all(header::TRANSFER_ENCODING)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        };
    }
    if !present.content_length {
        return Ok(Framing::Empty);
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else {
        return Ok(Framing::Empty);
    };
    let n = content_length(first).ok_or_else(|| BadRequest::Invalid("content-length".into()))?;
    if lengths.any(|other| content_length(other) != Some(n)) {
        return Err(BadRequest::Invalid(
            "conflicting content-length values".into(),
        ));
    }
    Ok(if n == 0 {
        Framing::Empty
    } else {
        Framing::Length(n)
    })
}

/// Writes `response` (head and body) to a request of `version`: `Ok(false)` when the
/// connection cannot carry another request after it (a body ended by closing), `Err` when it
/// broke off.
async fn write_response<W: AsyncWrite + Unpin>(
    io: &mut W,
    write: &mut Vec<u8>,
    response: Response<Body>,
    version: Version,
    head_request: bool,
    mut keep_alive: bool,
) -> Result<bool, ()> {
    let (parts, mut body) = response.into_parts();
    let framing =
        encode_response_head(write, &parts, &body, version, head_request, &mut keep_alive);
    if framing == Framing::Empty {
        flush_write(io, write).await.map_err(|_| ())?;
        return Ok(keep_alive);
    }
    match write_body(io, write, &mut body, framing).await {
        Ok(()) => Ok(keep_alive),
        Err(e) => {
            tracing::debug!(error = ?e, "the response body broke off");
            Err(())
        }
    }
}

/// Writes the status line and headers with the framing and connection headers the response
/// needs, and says how its body is to be framed (`Empty`: none is written). One pass over the
/// headers finds its content-length and date. A body of unknown length is chunked for
/// HTTP/1.1 and ended by closing for HTTP/1.0 (`keep_alive` turned off).
fn encode_response_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &Body,
    version: Version,
    head_request: bool,
    keep_alive: &mut bool,
) -> Framing {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut stated = None;
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            match content_length(value) {
                Some(n) => stated = Some(n),
                // Not a length: left out, and the body framed by what it is.
                None => continue,
            }
        } else if name == header::DATE {
            has_date = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        http_date::append(out);
        out.extend_from_slice(b"\r\n");
    }
    let status = parts.status;
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let added = |out: &mut Vec<u8>, n: u64| {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    let framing = if bodiless {
        Framing::Empty
    } else if let Some(n) = stated {
        Framing::Length(n)
    } else if body.is_end_stream() {
        added(out, 0);
        Framing::Length(0)
    } else if let Some(n) = body.size_hint().exact() {
        added(out, n);
        Framing::Length(n)
    } else if version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        *keep_alive = false;
        Framing::UntilClose
    };
    if !*keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// The `Date` header's value (RFC 9110 section 6.6.1), formatted once a second per thread.
mod http_date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    pub fn append(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with_borrow_mut(|(at, text)| {
            if *at != second || text.is_empty() {
                *at = second;
                *text = httpdate::fmt_http_date(now);
            }
            out.extend_from_slice(text.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, DuplexStream};

    /// A handler that answers with what it received: method, target, headers it was asked
    /// about, and the body.
    async fn echo(request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                let mut response = Response::new(
                    Full::new(Bytes::from(format!("body error: {e}")))
                        .map_err(|e| match e {})
                        .boxed_unsync(),
                );
                *response.status_mut() = StatusCode::BAD_GATEWAY;
                return response;
            }
        };
        let text = format!(
            "{} {} {:?} expect={:?} body={}",
            parts.method,
            parts.uri,
            parts.version,
            parts.headers.get(header::EXPECT),
            String::from_utf8_lossy(&body)
        );
        Response::new(
            Full::new(Bytes::from(text))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
    }

    /// Serves the other side of the returned duplex stream with `handler` until the connection
    /// ends; the task says whether it was handed back for HTTP/2.
    fn server_with<S, F>(
        handler: S,
        idle: Option<Duration>,
    ) -> (DuplexStream, tokio::task::JoinHandle<bool>)
    where
        S: FnMut(Request<Body>) -> F + Send + 'static,
        F: Future<Output = Response<Body>> + Send,
    {
        let (client, server) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(async move {
            let mut drain = std::future::pending::<()>();
            matches!(
                serve(server, handler, idle, &mut drain).await,
                Served::Http2(..)
            )
        });
        (client, task)
    }

    /// [`server_with`] `echo`.
    fn server(idle: Option<Duration>) -> (DuplexStream, tokio::task::JoinHandle<bool>) {
        server_with(echo, idle)
    }

    async fn read_to_end(mut client: DuplexStream) -> String {
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn without_date(text: &str) -> String {
        text.lines()
            .filter(|l| !l.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn keep_alive_pipelining_and_close() {
        let (mut client, task) = server(None);
        client
            .write_all(
                b"GET /a?x=1 HTTP/1.1\r\nhost: h\r\n\r\nPOST /b HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let text = without_date(&read_to_end(client).await);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\ncontent-length: 37\n\nGET /a?x=1 HTTP/1.1 expect=None body=\
             HTTP/1.1 200 OK\ncontent-length: 37\n\nPOST /b HTTP/1.1 expect=None body=abc\
             HTTP/1.1 200 OK\ncontent-length: 33\nconnection: close\n\nGET /c HTTP/1.1 expect=None body="
        );
        assert!(!task.await.unwrap());
    }

    #[tokio::test]
    async fn a_request_waiting_upstream_reads_pipelined_ones_and_is_dropped_when_the_client_leaves()
    {
        // The first request's handler waits to be released; the second request, sent while it
        // waits, is read meanwhile and answered after it, in order.
        let release = Arc::new(tokio::sync::Notify::new());
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let dropped_tx = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
        let handler = {
            let release = release.clone();
            move |request: Request<Body>| {
                let release = release.clone();
                let dropped_tx = dropped_tx.clone();
                async move {
                    match request.uri().path() {
                        "/slow" => release.notified().await,
                        "/hang" => {
                            // Tells the test when this future is dropped.
                            struct OnDrop(Option<tokio::sync::oneshot::Sender<()>>);
                            impl Drop for OnDrop {
                                fn drop(&mut self) {
                                    if let Some(tx) = self.0.take() {
                                        let _ = tx.send(());
                                    }
                                }
                            }
                            let _guard = OnDrop(dropped_tx.lock().unwrap().take());
                            std::future::pending::<()>().await;
                        }
                        _ => {}
                    }
                    echo(request).await
                }
            }
        };
        let (mut client, task) = server_with(handler, None);
        client
            .write_all(b"GET /slow HTTP/1.1\r\nhost: h\r\n\r\n")
            .await
            .unwrap();
        client
            .write_all(b"GET /fast HTTP/1.1\r\nhost: h\r\n\r\n")
            .await
            .unwrap();
        release.notify_one();
        let mut seen = String::new();
        let mut buf = [0u8; 1024];
        while !seen.contains("GET /fast") {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let slow = seen.find("GET /slow").expect("the first answer");
        assert!(slow < seen.find("GET /fast").unwrap(), "{seen}");

        // A client that leaves while its request waits: the request's future is dropped (its
        // upstream exchange with it) and the connection ends.
        client
            .write_all(b"GET /hang HTTP/1.1\r\nhost: h\r\n\r\n")
            .await
            .unwrap();
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), dropped_rx)
            .await
            .expect("the handler's future is dropped")
            .unwrap();
        assert!(!task.await.unwrap());
    }

    #[tokio::test]
    async fn chunked_request_body_and_100_continue() {
        let (mut client, task) = server(None);
        client
            .write_all(
                b"PUT /u HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let mut interim = [0u8; 25];
        client.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        client
            .write_all(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\ntrailer: 1\r\n\r\n")
            .await
            .unwrap();
        let text = read_to_end(client).await;
        assert!(
            text.ends_with("PUT /u HTTP/1.1 expect=None body=Wikipedia"),
            "{text}"
        );
        task.await.unwrap();
    }

    #[tokio::test]
    async fn http_1_0_keeps_alive_only_when_asked_and_ends_unknown_bodies_by_closing() {
        let (mut client, _task) = server(None);
        client
            .write_all(b"GET /k HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET /e HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let text = without_date(&read_to_end(client).await);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\ncontent-length: 33\nconnection: keep-alive\n\nGET /k HTTP/1.0 expect=None body=\
             HTTP/1.1 200 OK\ncontent-length: 33\nconnection: close\n\nGET /e HTTP/1.0 expect=None body="
        );

        // A body of unknown length: chunked to HTTP/1.1, ended by closing to HTTP/1.0.
        for (version, expected) in [
            ("1.1", "transfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"),
            ("1.0", "connection: close\r\n\r\nabc"),
        ] {
            let (mut client, served) = server_with(
                |_req| async {
                    let frames = futures::stream::iter(
                        ["ab", "c"].map(|s| Ok::<_, BoxError>(Frame::data(Bytes::from(s)))),
                    );
                    Response::new(StreamBody::new(frames).boxed_unsync())
                },
                None,
            );
            client
                .write_all(format!("GET / HTTP/{version}\r\nconnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let text = read_to_end(client).await;
            assert!(text.ends_with(expected), "{version}: {text:?}");
            served.await.unwrap();
        }
    }

    #[tokio::test]
    async fn head_and_no_content_responses_carry_no_body() {
        let (mut client, _task) = server(None);
        client
            .write_all(b"HEAD /h HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let text = without_date(&read_to_end(client).await);
        assert_eq!(text, "HTTP/1.1 200 OK\nconnection: close\n");

        // A 204 gets no framing header and no body, whatever its body says.
        let (mut client, _task) = server_with(
            |_req| async {
                let mut response = Response::new(
                    Full::new(Bytes::from_static(b"ignored"))
                        .map_err(|e| match e {})
                        .boxed_unsync(),
                );
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            },
            None,
        );
        client
            .write_all(b"DELETE /x HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let text = without_date(&read_to_end(client).await);
        assert_eq!(text, "HTTP/1.1 204 No Content\nconnection: close\n");
    }

    #[tokio::test]
    async fn bad_heads_are_refused_with_what_is_wrong() {
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            (0..=MAX_HEADERS)
                .map(|i| format!("x-{i}: v\r\n"))
                .collect::<String>()
        );
        let huge = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        for (request, expected) in [
            (
                "GET / HTTP/1.1\r\nbad header\r\n\r\n".to_string(),
                "400 Bad Request",
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n".into(),
                "both transfer-encoding and content-length",
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n".into(),
                "conflicting content-length values",
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: -3\r\n\r\n".into(),
                "invalid request head: content-length",
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n".into(),
                "501 Not Implemented",
            ),
            (many, "431 Request Header Fields Too Large"),
            (huge, "request head larger than"),
        ] {
            let (mut client, task) = server(None);
            // The server may close before it read all of a large head.
            let _ = client.write_all(request.as_bytes()).await;
            let text = read_to_end(client).await;
            assert!(text.contains(expected), "{expected}: {text:?}");
            assert!(text.contains("connection: close"), "{text:?}");
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_body_cut_short_fails_the_handlers_body() {
        let (mut client, task) = server(None);
        client
            .write_all(b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc")
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        let text = read_to_end(client).await;
        assert!(text.contains("502 Bad Gateway"), "{text}");
        assert!(text.contains("in the middle of the request body"), "{text}");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn an_unread_body_is_discarded_and_the_connection_kept() {
        let (mut client, task) = server_with(
            |_req| async {
                Response::new(
                    Full::new(Bytes::from_static(b"no"))
                        .map_err(|e| match e {})
                        .boxed_unsync(),
                )
            },
            None,
        );
        client
            .write_all(b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let text = read_to_end(client).await;
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_http2_preface_hands_the_connection_back() {
        let (mut client, task) = server(None);
        client.write_all(H2_PREFACE).await.unwrap();
        assert!(task.await.unwrap());
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed() {
        let (mut client, task) = server(Some(Duration::from_millis(100)));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let text = read_to_end(client).await;
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 1, "{text}");
        assert!(!task.await.unwrap());
    }

    #[tokio::test]
    async fn draining_answers_the_request_in_flight_with_connection_close() {
        let (client, server_side) = tokio::io::duplex(1 << 20);
        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut drain = Box::pin(async move {
                let _ = drain_rx.await;
            });
            serve(server_side, echo, None, &mut drain).await;
        });
        let mut client = client;
        client.write_all(b"GET /1 HTTP/1.1\r\n\r\n").await.unwrap();
        let mut first = vec![0u8; 256];
        let n = client.read(&mut first).await.unwrap();
        assert!(!String::from_utf8_lossy(&first[..n]).contains("connection: close"));
        drain_tx.send(()).unwrap();
        // The connection was idle when the drain began: it closes without a request.
        let text = read_to_end(client).await;
        assert_eq!(text, "");
        task.await.unwrap();
    }
}
