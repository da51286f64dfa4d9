//! HTTP/1.1 towards an upstream, spoken from the request's own task: the request head (with
//! whatever of the body is already at hand) goes out in one `write`, the response head is
//! parsed with `httparse` from the connection's read buffer, and the response body is read
//! by the body itself as the downstream connection polls it, framed by content-length,
//! chunked encoding or the connection's end (RFC 9112 section 6). There is no task per
//! connection and no channel between the request and its connection: 4,500 fewer
//! instructions per proxied request than with hyper's client connection, 0.95-0.98 x its CPU
//! per request (docs/benchmarks.md).
//!
//! Interim (1xx) responses are skipped; `101 Switching Protocols` is refused, as upgrades are
//! not proxied (`Upgrade` is a hop-by-hop header). A connection is reusable after a response
//! whose body ended by its framing, unless either side said `Connection: close`.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::client::{Body, BoxError};

pub mod server;

/// The largest response head accepted (Envoy's default header limit is 60 KiB).
pub const MAX_HEAD: usize = 64 * 1024;

/// The most response headers accepted (hyper's and Envoy's default: 100).
const MAX_HEADERS: usize = 100;

/// A request body is gathered up to this size before it is written.
const WRITE_GATHER: usize = 64 * 1024;

/// The read buffer grows by this much when it is full.
const READ_RESERVE: usize = 16 * 1024;

/// The longest chunk-size or trailer line accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Why a request got no complete response on an HTTP/1.1 connection.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("writing the request: {0}")]
    Write(io::Error),
    #[error("reading the response: {0}")]
    Read(io::Error),
    #[error("the upstream closed the connection before a complete response head")]
    ClosedBeforeResponse,
    #[error("the upstream closed the connection in the middle of the response body")]
    ClosedInBody,
    #[error("invalid response head: {0}")]
    Head(String),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid chunked response body: {0}")]
    Chunked(&'static str),
    #[error("request: {0}")]
    Request(&'static str),
    #[error("request body: {0}")]
    RequestBody(BoxError),
}

/// An HTTP/1.1 client connection over `T` (plaintext or TLS), one request at a time.
pub struct Connection<T> {
    io: T,
    /// Bytes read and not yet consumed; response bodies are handed out as slices of it.
    read: BytesMut,
    /// The request being written, kept from request to request for its capacity.
    write: Vec<u8>,
}

/// Reads more into `read`: `Ready(Ok(0))` at the end of the stream.
fn poll_fill<T: AsyncRead + Unpin>(
    io: &mut T,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < READ_RESERVE / 4 {
        read.reserve(READ_RESERVE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, read)
}

/// Writes what `write` holds, then flushes (TLS keeps what the socket did not take yet).
async fn flush_write<T: AsyncWrite + Unpin>(io: &mut T, write: &mut Vec<u8>) -> io::Result<()> {
    if !write.is_empty() {
        io.write_all(write).await?;
        write.clear();
    }
    io.flush().await
}

/// Why a message body could not be written whole.
#[derive(Debug)]
enum WriteBodyError {
    Write(io::Error),
    /// The body itself failed (its sender reset, say).
    Body(BoxError),
    /// More than the content-length.
    Longer,
    /// Less than the content-length.
    Shorter,
}

/// Writes `body` after the head already in `write`, framed as `framing` says, and flushes.
/// What the body has ready joins the buffer; the buffer is written before waiting for more,
/// so a slow body still streams, and a small message goes out in one `write`.
async fn write_body<T: AsyncWrite + Unpin>(
    io: &mut T,
    write: &mut Vec<u8>,
    body: &mut Body,
    framing: Framing,
) -> Result<(), WriteBodyError> {
    let chunked = matches!(framing, Framing::Chunked);
    let mut sent: u64 = 0;
    if !body.is_end_stream() {
        loop {
            let frame =
                match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx)))
                    .await
                {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        flush_write(io, write)
                            .await
                            .map_err(WriteBodyError::Write)?;
                        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
                    }
                };
            let data = match frame {
                None => break,
                Some(Err(e)) => return Err(WriteBodyError::Body(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers are not forwarded over HTTP/1.1.
                    Err(_) => continue,
                },
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            if let Framing::Length(n) = framing {
                if sent > n {
                    return Err(WriteBodyError::Longer);
                }
            }
            if chunked {
                write.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            }
            if data.len() >= WRITE_GATHER / 2 {
                flush_write(io, write)
                    .await
                    .map_err(WriteBodyError::Write)?;
                io.write_all(&data).await.map_err(WriteBodyError::Write)?;
            } else {
                write.extend_from_slice(&data);
            }
            if chunked {
                write.extend_from_slice(b"\r\n");
            }
            if write.len() >= WRITE_GATHER {
                flush_write(io, write)
                    .await
                    .map_err(WriteBodyError::Write)?;
            }
        }
    }
    match framing {
        Framing::Chunked => write.extend_from_slice(b"0\r\n\r\n"),
        Framing::Length(n) if sent != n => return Err(WriteBodyError::Shorter),
        _ => {}
    }
    flush_write(io, write).await.map_err(WriteBodyError::Write)
}

/// Where a header's name and value lie in a head: offsets and lengths, so that the values can
/// share the head's bytes once it is split off the read buffer (httparse's slices borrow it).
#[derive(Clone, Copy, Default)]
struct HeaderSpan {
    name: (u32, u32),
    value: (u32, u32),
}

/// How many header spans are kept on the stack; a head with more puts them on the heap. A
/// stack array for all [`MAX_HEADERS`] was zeroed for every head (1.6 KB), most of which have
/// a handful of headers.
const INLINE_SPANS: usize = 16;

/// The spans of a head's headers (see [`HeaderSpan`]).
struct HeaderSpans {
    inline: [HeaderSpan; INLINE_SPANS],
    heap: Vec<HeaderSpan>,
    len: usize,
}

impl HeaderSpans {
    /// The spans of `headers`, parsed by httparse from `buf`.
    fn of(buf: &[u8], headers: &[httparse::Header<'_>]) -> HeaderSpans {
        let base = buf.as_ptr() as usize;
        let span = |h: &httparse::Header<'_>| HeaderSpan {
            name: (
                (h.name.as_ptr() as usize - base) as u32,
                h.name.len() as u32,
            ),
            value: (
                (h.value.as_ptr() as usize - base) as u32,
                h.value.len() as u32,
            ),
        };
        let mut spans = HeaderSpans {
            inline: [HeaderSpan::default(); INLINE_SPANS],
            heap: Vec::new(),
            len: headers.len(),
        };
        if headers.len() <= INLINE_SPANS {
            for (slot, h) in spans.inline.iter_mut().zip(headers) {
                *slot = span(h);
            }
        } else {
            spans.heap = headers.iter().map(span).collect();
        }
        spans
    }

    fn as_slice(&self) -> &[HeaderSpan] {
        if self.len <= INLINE_SPANS {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }
}

/// Which of the headers that decide a message's framing and its connection's reuse a head
/// has, noted while its header map is built, so that a message without them (most) costs no
/// hashed lookups for them.
#[derive(Clone, Copy, Debug, Default)]
struct Present {
    connection: bool,
    content_length: bool,
    transfer_encoding: bool,
    expect: bool,
}

/// The header map of `head`, its values sharing the head's bytes, and which of the framing
/// headers it has.
fn header_map(head: &Bytes, spans: &[HeaderSpan]) -> Result<(HeaderMap, Present), String> {
    let mut map = HeaderMap::with_capacity(spans.len());
    let mut present = Present::default();
    for span in spans {
        let (start, len) = (span.name.0 as usize, span.name.1 as usize);
        let name = &head[start..start + len];
        let name = HeaderName::from_bytes(name)
            .map_err(|_| format!("header name {:?}", String::from_utf8_lossy(name)))?;
        let (start, len) = (span.value.0 as usize, span.value.1 as usize);
        let value = HeaderValue::from_maybe_shared(head.slice(start..start + len))
            .map_err(|_| format!("header {name} value"))?;
        if name == header::CONTENT_LENGTH {
            present.content_length = true;
        } else if name == header::CONNECTION {
            present.connection = true;
        } else if name == header::TRANSFER_ENCODING {
            present.transfer_encoding = true;
        } else if name == header::EXPECT {
            present.expect = true;
        }
        map.append(name, value);
    }
    Ok((map, present))
}

impl<T: AsyncRead + AsyncWrite + Unpin> Connection<T> {
    pub fn new(io: T) -> Connection<T> {
        Connection {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
        }
    }

    /// Whether an idle connection can take a request: not once the upstream closed it, sent
    /// something unasked or failed. Reads without waiting (a no-op waker).
    pub fn is_usable(&mut self) -> bool {
        !self.poll_unusable(&mut Context::from_waker(std::task::Waker::noop()))
    }

    /// Whether an idle connection has become unusable (see [`Self::is_usable`]); while it
    /// has not, `cx` is woken when it may have.
    pub fn poll_unusable(&mut self, cx: &mut Context<'_>) -> bool {
        !self.read.is_empty() || self.poll_fill(cx).is_ready()
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.io, &mut self.read, cx)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Sends `request` (origin-form target; `Host` among its headers) and reads the response
    /// head. The response body is read through the returned [`ResponseBody`], which owns the
    /// connection until the body ends.
    ///
    /// The head is encoded before the returned future is made, so that future holds only the
    /// connection and the body, not the request's parts: it is nested in each of the request's
    /// futures, which are copied whole when made (docs/data-path.md).
    pub fn send(
        mut self,
        request: Request<Body>,
    ) -> impl Future<Output = Result<(http::response::Parts, ResponseBody<T>), H1Error>> {
        let (parts, body) = request.into_parts();
        let framing = encode_head(&mut self.write, &parts, &body);
        self.exchange(body, framing, parts.method == Method::HEAD)
    }

    /// [`Connection::send`] once the head is in the write buffer: writes it with the body and
    /// reads the response head.
    async fn exchange(
        mut self,
        mut body: Body,
        framing: Result<Framing, H1Error>,
        head_request: bool,
    ) -> Result<(http::response::Parts, ResponseBody<T>), H1Error> {
        let framing = framing?;
        write_body(&mut self.io, &mut self.write, &mut body, framing)
            .await
            .map_err(|e| match e {
                WriteBodyError::Write(e) => H1Error::Write(e),
                WriteBodyError::Body(e) => H1Error::RequestBody(e),
                WriteBodyError::Longer => H1Error::Request("body longer than its content-length"),
                WriteBodyError::Shorter => H1Error::Request("body shorter than its content-length"),
            })?;
        loop {
            if let Some(head) = self.parse_head(head_request)? {
                let (parts, state, keep_alive) = head;
                return Ok((
                    parts,
                    ResponseBody {
                        conn: self,
                        state,
                        keep_alive,
                    },
                ));
            }
            if self.read.len() >= MAX_HEAD {
                return Err(H1Error::HeadTooLarge);
            }
            if self.fill().await.map_err(H1Error::Read)? == 0 {
                return Err(H1Error::ClosedBeforeResponse);
            }
        }
    }

    /// The response head at the start of the read buffer, once complete (interim 1xx
    /// responses are consumed and skipped): its parts, how its body is framed, and whether
    /// the connection may be reused after it.
    fn parse_head(
        &mut self,
        head_request: bool,
    ) -> Result<Option<(http::response::Parts, BodyState, bool)>, H1Error> {
        loop {
            // Uninitialised, as the server's request heads (h1/server.rs).
            let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut response,
                &self.read,
                &mut headers,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(H1Error::Head(e.to_string())),
            };
            let code = response.code.unwrap_or(0);
            if code == 101 {
                return Err(H1Error::Head(
                    "101 Switching Protocols: upgrades are not proxied".into(),
                ));
            }
            if (100..200).contains(&code) {
                self.read.advance(len);
                continue;
            }
            let status = StatusCode::from_u16(code)
                .map_err(|_| H1Error::Head(format!("status code {code}")))?;
            let version = match response.version {
                Some(0) => Version::HTTP_10,
                _ => Version::HTTP_11,
            };
            let spans = HeaderSpans::of(&self.read, response.headers);
            let head = self.read.split_to(len).freeze();
            let (map, present) = header_map(&head, spans.as_slice()).map_err(H1Error::Head)?;
            let (state, keep_alive) =
                response_framing(status, version, &map, present, head_request)?;
            let mut parts = http::Response::new(()).into_parts().0;
            parts.status = status;
            parts.version = version;
            parts.headers = map;
            return Ok(Some((parts, state, keep_alive)));
        }
    }
}

/// How a message body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    /// No body and no framing header.
    Empty,
    Length(u64),
    Chunked,
    /// Ended by closing the connection (a response to an HTTP/1.0 client, length unknown).
    UntilClose,
}

/// A content-length value: decimal digits (surrounding blanks allowed), at most 19 of them,
/// so that any accepted value fits in a `u64`.
fn content_length(value: &HeaderValue) -> Option<u64> {
    let digits = value.as_bytes().trim_ascii();
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Writes the request line and headers, and returns how the body is framed: by the request's
/// own `content-length` when it has one (found in the pass that writes the headers, not by a
/// lookup); else nothing for an empty body, a length for a body that knows its size, chunked
/// encoding for one that does not, with the header that says so added.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    body: &Body,
) -> Result<Framing, H1Error> {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut length = None;
    for (name, value) in &parts.headers {
        if length.is_none() && name == header::CONTENT_LENGTH {
            length = Some(content_length(value).ok_or(H1Error::Request("invalid content-length"))?);
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = match length {
        Some(n) => Framing::Length(n),
        None if body.is_end_stream() => {
            // A method whose request is expected to carry content states that it carries none.
            if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Framing::Empty
        }
        None => match body.size_hint().exact() {
            Some(n) => {
                out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
                Framing::Length(n)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        },
    };
    out.extend_from_slice(b"\r\n");
    Ok(framing)
}

/// Whether the connection may carry another message after this one: HTTP/1.0 only when asked
/// with `Connection: keep-alive`, HTTP/1.1 unless either side said `Connection: close`.
fn keeps_alive(version: Version, headers: &HeaderMap, present: Present) -> bool {
    match version {
        Version::HTTP_10 => present.connection && connection_has(headers, "keep-alive"),
        _ => !(present.connection && connection_has(headers, "close")),
    }
}

/// Whether a `Connection` header lists `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// How a response's body is delimited (RFC 9112 section 6.3) and whether the connection may
/// carry another request after it.
fn response_framing(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    present: Present,
    head_request: bool,
) -> Result<(BodyState, bool), H1Error> {
    let mut keep_alive = keeps_alive(version, headers, present);
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((BodyState::Done, keep_alive));
    }
    let transfer_encoding = present
        .transfer_encoding
        .then(|| headers.get(header::TRANSFER_ENCODING))
        .flatten();
    if let Some(te) = transfer_encoding {
        let last = te
            .to_str()
            .map_err(|_| H1Error::Head("transfer-encoding".into()))?
            .rsplit(',')
            .next()
            .unwrap_or("")
            .trim();
        if present.content_length {
            // Both: transfer-encoding wins, and the connection is not trusted again.
            keep_alive = false;
        }
        return Ok(if last.eq_ignore_ascii_case("chunked") {
            (BodyState::Chunked(Chunk::Size), keep_alive)
        } else {
            (BodyState::UntilClose, false)
        });
    }
    if !present.content_length {
        return Ok((BodyState::UntilClose, false));
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        let n = content_length(first).ok_or_else(|| H1Error::Head("content-length".into()))?;
        if lengths.any(|other| content_length(other) != Some(n)) {
            return Err(H1Error::Head("conflicting content-length values".into()));
        }
        return Ok((BodyState::Length(n), keep_alive));
    }
    Ok((BodyState::UntilClose, false))
}

/// Where the reading of a response body is.
#[derive(Debug, PartialEq)]
enum BodyState {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// The body ends with the connection.
    UntilClose,
    Done,
}

/// Where the decoding of a chunked body is.
#[derive(Debug, PartialEq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines, up to an empty one.
    Trailers,
}

/// The next piece of a chunked body decoded from `buf`.
#[derive(Debug, PartialEq)]
enum Decoded {
    Data(Bytes),
    End,
    NeedMore,
}

/// The line ending with LF at the start of `buf`, without its line ending, and its length
/// with it; `None` when the line is not complete yet.
fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, H1Error> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let line = &buf[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Ok(Some((line, end + 1)))
        }
        None if buf.len() > MAX_CHUNK_LINE => Err(H1Error::Chunked("line too long")),
        None => Ok(None),
    }
}

fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
    loop {
        match state {
            Chunk::Size => {
                let Some((line, used)) = line(buf)? else {
                    return Ok(Decoded::NeedMore);
                };
                // chunk-size [ ; chunk-ext ]
                let size = line.split(|&b| b == b';').next().unwrap_or(&[]);
                let size = std::str::from_utf8(size)
                    .ok()
                    .map(|s| s.trim_matches([' ', '\t']))
                    .filter(|s| !s.is_empty() && s.len() <= 16)
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or(H1Error::Chunked("invalid chunk size"))?;
                buf.advance(used);
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(remaining) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = (*remaining).min(buf.len() as u64);
                *remaining -= take;
                if *remaining == 0 {
                    *state = Chunk::DataEnd;
                }
                return Ok(Decoded::Data(buf.split_to(take as usize).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    if buf.first().is_some_and(|&b| b != b'\r') {
                        return Err(H1Error::Chunked("no CRLF after chunk data"));
                    }
                    return Ok(Decoded::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(H1Error::Chunked("no CRLF after chunk data"));
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                let Some((line, used)) = line(buf)? else {
                    return Ok(Decoded::NeedMore);
                };
                let last = line.is_empty();
                buf.advance(used);
                if last {
                    return Ok(Decoded::End);
                }
            }
        }
    }
}

/// The next piece of a body (a response's or a request's) from `buf`, framed as `state` says;
/// `None` when more must be read first, or when the body is done (`state` is then `Done`).
fn next_body_piece(state: &mut BodyState, buf: &mut BytesMut) -> Result<Option<Bytes>, H1Error> {
    match state {
        BodyState::Done => Ok(None),
        BodyState::Length(0) => {
            *state = BodyState::Done;
            Ok(None)
        }
        BodyState::Length(_) | BodyState::UntilClose if buf.is_empty() => Ok(None),
        BodyState::Length(remaining) => {
            let take = (*remaining).min(buf.len() as u64);
            *remaining -= take;
            let data = buf.split_to(take as usize).freeze();
            if *remaining == 0 {
                *state = BodyState::Done;
            }
            Ok(Some(data))
        }
        BodyState::UntilClose => Ok(Some(buf.split().freeze())),
        BodyState::Chunked(chunk) => match decode_chunked(chunk, buf)? {
            Decoded::Data(data) => Ok(Some(data)),
            Decoded::End => {
                *state = BodyState::Done;
                Ok(None)
            }
            Decoded::NeedMore => Ok(None),
        },
    }
}

/// A response body being read from its connection, which it owns until the body ends.
pub struct ResponseBody<T> {
    conn: Connection<T>,
    state: BodyState,
    keep_alive: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> ResponseBody<T> {
    /// The next piece of the body; `None` at its end.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, H1Error>>> {
        loop {
            match next_body_piece(&mut self.state, &mut self.conn.read) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(None) if self.state == BodyState::Done => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    self.keep_alive = false;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match std::task::ready!(self.conn.poll_fill(cx)) {
                Ok(0) if self.state == BodyState::UntilClose => {
                    self.state = BodyState::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.keep_alive = false;
                    return Poll::Ready(Some(Err(H1Error::ClosedInBody)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.keep_alive = false;
                    return Poll::Ready(Some(Err(H1Error::Read(e))));
                }
            }
        }
    }

    /// Whether the body has been read to its end (or has none).
    pub fn is_end(&self) -> bool {
        matches!(self.state, BodyState::Done | BodyState::Length(0))
    }

    /// The body's length when known: what is left of a content-length.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            BodyState::Length(n) => Some(n),
            BodyState::Done => Some(0),
            _ => None,
        }
    }

    /// The connection, for the next request, when the body was read to its end and the
    /// connection may be reused.
    pub fn into_reusable(self) -> Option<Connection<T>> {
        (self.is_end() && self.keep_alive).then_some(self.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::io::{AsyncReadExt, DuplexStream};

    fn full(body: &'static str) -> Body {
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e| match e {})
            .boxed_unsync()
    }

    fn get(path: &str, body: Body) -> Request<Body> {
        Request::builder()
            .uri(path)
            .header("host", "backend")
            .body(body)
            .unwrap()
    }

    /// Sends `request` to a peer that answers `response` once it has read the request, and
    /// returns what the peer read, the response head, the body and the connection if reusable.
    async fn exchange(
        request: Request<Body>,
        response: &'static [u8],
    ) -> (
        String,
        Result<(http::response::Parts, Vec<u8>, bool), H1Error>,
    ) {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let conn = Connection::new(client);
        let peer = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            // The request is complete when its head and (known-length or chunked) body are in.
            loop {
                let n = server.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let rest = &text[head_end + 4..];
                    let done = if text.contains("transfer-encoding: chunked") {
                        rest.ends_with("0\r\n\r\n")
                    } else if let Some(cl) = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                    {
                        rest.len() >= cl.trim().parse::<usize>().unwrap()
                    } else {
                        true
                    };
                    if done {
                        break;
                    }
                }
            }
            server.write_all(response).await.unwrap();
            // The end of the stream ends a body framed by the connection's end.
            server.shutdown().await.unwrap();
            String::from_utf8(seen).unwrap()
        });
        let result = async {
            let (parts, mut body) = conn.send(request).await?;
            let mut data = Vec::new();
            while let Some(piece) = std::future::poll_fn(|cx| body.poll_data(cx)).await {
                data.extend_from_slice(&piece?);
            }
            let reusable = body.into_reusable().is_some();
            Ok((parts, data, reusable))
        };
        let result = result.await;
        let seen = peer.await.unwrap();
        (seen, result)
    }

    #[tokio::test]
    async fn content_length_response_and_reuse() {
        let (seen, result) = exchange(
            get("/a?b=1", Body::default()),
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\nx-a: 2\r\n\r\nhello",
        )
        .await;
        assert_eq!(seen, "GET /a?b=1 HTTP/1.1\r\nhost: backend\r\n\r\n");
        let (parts, body, reusable) = result.unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(body, b"hello");
        assert!(reusable);
    }

    #[tokio::test]
    async fn chunked_response_with_interim_and_trailers() {
        let (_, result) = exchange(
            get("/", Body::default()),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nB\r\n, big world\r\n0\r\nx-t: 1\r\n\r\n",
        )
        .await;
        let (parts, body, reusable) = result.unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(body, b"hello, big world");
        assert!(reusable);
    }

    #[tokio::test]
    async fn until_close_and_connection_close_are_not_reused() {
        let (_, result) = exchange(
            get("/", Body::default()),
            b"HTTP/1.1 200 OK\r\n\r\nall of it",
        )
        .await;
        let (_, body, reusable) = result.unwrap();
        assert_eq!(body, b"all of it");
        assert!(!reusable);
        let (_, result) = exchange(
            get("/", Body::default()),
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
        assert!(!result.unwrap().2);
        let (_, result) = exchange(
            get("/", Body::default()),
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
        assert!(!result.unwrap().2, "HTTP/1.0 without keep-alive");
    }

    #[tokio::test]
    async fn head_and_no_content_responses_have_no_body() {
        let mut head = get("/", Body::default());
        *head.method_mut() = Method::HEAD;
        let (_, result) = exchange(head, b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n").await;
        let (_, body, reusable) = result.unwrap();
        assert!(body.is_empty());
        assert!(reusable);
        let (_, result) = exchange(
            get("/", Body::default()),
            b"HTTP/1.1 204 No Content\r\n\r\n",
        )
        .await;
        assert!(result.unwrap().2);
    }

    #[tokio::test]
    async fn request_bodies_are_framed() {
        let mut post = get("/upload", full("abc"));
        *post.method_mut() = Method::POST;
        let (seen, result) =
            exchange(post, b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(
            seen,
            "POST /upload HTTP/1.1\r\nhost: backend\r\ncontent-length: 3\r\n\r\nabc"
        );
        assert_eq!(result.unwrap().0.status, 201);

        let frames = futures::stream::iter(
            ["ab", "cde"].map(|s| Ok::<_, BoxError>(hyper::body::Frame::data(Bytes::from(s)))),
        );
        let mut streamed = get("/s", StreamBody::new(frames).boxed_unsync());
        *streamed.method_mut() = Method::PUT;
        let (seen, result) =
            exchange(streamed, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(
            seen,
            "PUT /s HTTP/1.1\r\nhost: backend\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
        );
        assert!(result.is_ok());

        let mut empty_post = get("/e", Body::default());
        *empty_post.method_mut() = Method::POST;
        let (seen, _) = exchange(empty_post, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        assert!(seen.ends_with("content-length: 0\r\n\r\n"), "{seen}");

        // The request's own content-length frames it, and is not written twice.
        let mut own = get("/own", full("abcd"));
        *own.method_mut() = Method::POST;
        own.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        let (seen, _) = exchange(own, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(
            seen,
            "POST /own HTTP/1.1\r\nhost: backend\r\ncontent-length: 4\r\n\r\nabcd"
        );
        let (client, _server) = tokio::io::duplex(64);
        let mut bad = get("/bad", full("ab"));
        bad.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("2x"));
        let error = Connection::new(client).send(bad).await.err();
        let error = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("invalid content-length"), "{error:?}");
    }

    #[tokio::test]
    async fn bad_responses_are_errors_that_name_the_problem() {
        for (response, expected) in [
            (&b"HTTP/1.1 2x0 OK\r\n\r\n"[..], "invalid response head"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
                "conflicting content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                "content-length",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                "upgrades are not proxied",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "invalid chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nab\r\n",
                "no CRLF after chunk data",
            ),
        ] {
            let (_, result) = exchange(get("/", Body::default()), response).await;
            let error = result.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                error.contains(expected),
                "{error:?} for {:?}",
                String::from_utf8_lossy(response)
            );
        }
    }

    #[tokio::test]
    async fn a_closed_or_chatty_idle_connection_is_not_usable() {
        let (client, server) = tokio::io::duplex(64);
        let mut conn = Connection::new(client);
        assert!(conn.is_usable());
        drop(server);
        assert!(!conn.is_usable());

        let (client, mut server) = tokio::io::duplex(64);
        let mut conn: Connection<DuplexStream> = Connection::new(client);
        server
            .write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .await
            .unwrap();
        assert!(!conn.is_usable());
    }

    #[test]
    fn chunked_decoding_across_reads() {
        let wire = b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        let mut state = Chunk::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut ended = false;
        // One byte at a time: every split point is a place where more is needed.
        for &b in wire {
            buf.extend_from_slice(&[b]);
            loop {
                match decode_chunked(&mut state, &mut buf).unwrap() {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::End => {
                        ended = true;
                        break;
                    }
                    Decoded::NeedMore => break,
                }
            }
        }
        assert!(ended);
        assert_eq!(out, b"Wikipedia");
        assert!(buf.is_empty());
    }
}
