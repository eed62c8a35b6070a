//! The data plane's HTTP/1.1 fast path: the engine issue 31's bake-off
//! chose (`docs/benchmarks.md`). A client connection's request heads are
//! parsed once with `httparse`, the pipeline runs on what they say, and the
//! head for the upstream is written straight from the parsed bytes (what it
//! does not change is copied, never re-encoded); bodies framed by
//! `Content-Length` or chunks are passed through as bytes, without being
//! decoded or held.
//!
//! Anything unusual goes to hyper, for the rest of that connection, with the
//! bytes already read: HTTP/1.0, chunked or upgraded requests,
//! `Expect: 100-continue`, heads `httparse` or `http` refuse or that are
//! larger than [`MAX_HEAD`], and APIs whose upstream is `https` or h2c. So
//! every behaviour the hyper path had is still there, and the common
//! request pays for neither hyper's header map nor its body channel.
//!
//! What is checked is what is forwarded: the path is normalised once
//! ([`crate::domain::path`]), the steps read that path and the same header
//! bytes the upstream receives, and headers that must appear once are
//! refused when repeated, as on the hyper path.
//!
//! Memory: an idle client connection holds no buffer and no upstream
//! connection. Upstream connections are kept per worker thread (no lock,
//! no task per connection) and taken for one exchange at a time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::StatusCode;
use hyper::http::uri::PathAndQuery;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meridian_kit::CancellationToken;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::Instrument as _;

use super::dataplane::{
    CLIENT_BODY_FAILED, ClientConn, DataPlane, SINGLETONS, UPSTREAM_FAILED, UPSTREAM_TIMED_OUT,
};
use crate::domain::limits::LimitHeaders;
use crate::domain::path;
use crate::domain::pipeline::{Context, Facts, visible_ascii};
use crate::domain::routes::Route;
use crate::domain::transforms::Rendered;

/// The largest head the fast path reads; a larger one goes to hyper.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most headers the fast path reads; more go to hyper.
const MAX_HEADERS: usize = 64;
/// How long the rest of a head may take once its first byte came (hyper's
/// `header_read_timeout`).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Most idle connections kept per upstream and worker thread.
const MAX_IDLE_PER_UPSTREAM: usize = 256;
/// The largest request body skipped (read and dropped) after a refusal to
/// keep the connection; a larger one closes it.
const SKIP_BODY_UP_TO: u64 = 64 * 1024;

/// A request head the fast path serves: its bytes, and where its parts are.
struct Head {
    bytes: Bytes,
    method: Range<usize>,
    /// The request target as sent (checked as hyper checks it).
    target: PathAndQuery,
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// The body's length (`Content-Length`, 0 without).
    body: u64,
    /// The client asked to close after this request.
    close: bool,
}

impl Head {
    fn method(&self) -> &str {
        std::str::from_utf8(&self.bytes[self.method.clone()]).unwrap_or("GET")
    }

    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(n, v)| {
            (
                std::str::from_utf8(&self.bytes[n.clone()]).unwrap_or(""),
                &self.bytes[v.clone()],
            )
        })
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first of [`SINGLETONS`] (and `also`) sent more than once. Free
    /// of allocation; the common case (no name repeated) is one pass over
    /// the pairs of names.
    fn repeated_singleton<'a>(&self, also: Option<&'a str>) -> Option<&'a str> {
        let name = |i: usize| &self.bytes[self.headers[i].0.clone()];
        let n = self.headers.len();
        let repeats = (0..n).any(|i| (i + 1..n).any(|j| name(i).eq_ignore_ascii_case(name(j))));
        if !repeats {
            return None;
        }
        let singletons = SINGLETONS.iter().map(|s| s.as_str());
        singletons.chain(also).find(|s| {
            (0..n)
                .filter(|&i| name(i).eq_ignore_ascii_case(s.as_bytes()))
                .nth(1)
                .is_some()
        })
    }
}

/// A request as the steps read it: its head and its normalised path.
struct Request<'a> {
    head: &'a Head,
    path: &'a str,
}

impl Facts for Request<'_> {
    fn path(&self) -> &str {
        self.path
    }
    fn query(&self) -> Option<&str> {
        self.head.target.query()
    }
    fn method(&self) -> &str {
        self.head.method()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name).and_then(visible_ascii)
    }
}

/// What the start of a client's buffer holds.
enum Parsed {
    /// A head the fast path serves (taken off the buffer).
    Head(Head),
    /// Not a whole head yet.
    Partial,
    /// Something for hyper (the buffer is left as it was).
    Other,
}

/// Whether a `Connection` value lists `token`.
fn lists(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A `Content-Length` value: digits only, as hyper reads it.
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Parses the request head at the start of `buf`.
fn parse_request(buf: &mut BytesMut) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        _ => return Parsed::Other,
    };
    let (Some(1), Some(method), Some(target)) = (req.version, req.method, req.path) else {
        return Parsed::Other;
    };
    if !target.starts_with('/') {
        return Parsed::Other;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let (mut body, mut lengths, mut close) = (0, 0, false);
    let mut ranges = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            match content_length(h.value) {
                Some(n) => body = n,
                None => return Parsed::Other,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Parsed::Other;
        } else if name.eq_ignore_ascii_case("connection") {
            if lists(h.value, "upgrade") {
                return Parsed::Other;
            }
            close |= lists(h.value, "close");
        }
        ranges.push((at(name.as_bytes()), at(h.value)));
    }
    if lengths > 1 {
        return Parsed::Other;
    }
    let (method, target) = (at(method.as_bytes()), at(target.as_bytes()));
    let bytes = buf.split_to(n).freeze();
    match PathAndQuery::from_maybe_shared(bytes.slice(target)) {
        Ok(target) => Parsed::Head(Head {
            bytes,
            method,
            target,
            headers: ranges,
            body,
            close,
        }),
        Err(_) => {
            // Rare: hyper answers it (400), from the bytes as they came.
            let mut whole = BytesMut::with_capacity(bytes.len() + buf.len());
            whole.extend_from_slice(&bytes);
            whole.extend_from_slice(buf);
            *buf = whole;
            Parsed::Other
        }
    }
}

/// `Date`, as hyper sends it, made once a second per thread.
fn write_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = RefCell::default();
    }
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second || text.is_empty() {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn write_limits(out: &mut Vec<u8>, h: LimitHeaders) {
    let _ = write!(
        out,
        "x-ratelimit-limit: {}\r\nx-ratelimit-remaining: {}\r\nx-ratelimit-reset: {}\r\n",
        h.limit,
        h.remaining.max(0),
        h.reset
    );
}

/// The names a message's `Connection` headers list (hop-by-hop too).
fn connection_named<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<&'a [u8]> {
    headers
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether a header is not passed on: hop-by-hop, or named by `Connection`.
fn dropped(name: &str, named: &[&[u8]]) -> bool {
    meridian_kit::headers::is_hop_by_hop(name)
        || named
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// What the gateway adds to an answer, whoever made it: the
/// `X-RateLimit-*` values (replacing the upstream's) and CORS's headers;
/// and to an upstream's answer, header injection's.
#[derive(Clone, Copy, Debug, Default)]
struct Adds<'a> {
    limits: Option<LimitHeaders>,
    cors: &'a [(&'static str, String)],
    edits: Option<&'a Rendered>,
}

impl Adds<'_> {
    /// Whether an upstream's header of this name is replaced.
    fn replaces(&self, name: &str) -> bool {
        (name.len() > 12 && name[..12].eq_ignore_ascii_case("x-ratelimit-"))
            || self
                .cors
                .iter()
                .any(|(n, _)| *n != "vary" && name.eq_ignore_ascii_case(n))
            || self.edits.is_some_and(|e| e.drops(name))
    }

    fn write(&self, out: &mut Vec<u8>) {
        if let Some(edits) = self.edits {
            for (name, value) in &edits.set {
                write_header(out, name.as_bytes(), value.as_bytes());
            }
        }
        if let Some(h) = self.limits {
            write_limits(out, h);
        }
        for (name, value) in self.cors {
            write_header(out, name.as_bytes(), value.as_bytes());
        }
    }
}

/// A whole answer made here: a JSON error in Tyk's data-plane shape, or
/// with no message an empty one (a CORS preflight's).
fn write_error(
    out: &mut Vec<u8>,
    status: StatusCode,
    message: Option<&str>,
    adds: Adds<'_>,
    close: bool,
) {
    let body = message.map_or_else(String::new, |m| {
        serde_json::json!({ "error": m }).to_string()
    });
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
    );
    if message.is_some() {
        out.extend_from_slice(b"content-type: application/json\r\n");
    }
    let _ = write!(out, "content-length: {}\r\n", body.len());
    adds.write(out);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    write_date(out);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// How an upstream's answer body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body (`HEAD`, 204, 304).
    Empty,
    /// After this many bytes.
    Length(u64),
    /// Chunks, passed through as they are.
    Chunked,
    /// When the upstream closes.
    Close,
}

/// The upstream's answer head, written for the client.
struct Answer {
    status: StatusCode,
    framing: Framing,
    /// The upstream connection can carry another request.
    reusable: bool,
}

/// Why the upstream's answer cannot be passed on (502).
struct BadAnswer;

/// Parses the upstream's answer head at the start of `buf`; when whole,
/// writes it for the client into `out` and takes it off `buf`. 1xx answers
/// (hyper's client drops them too) are skipped.
fn parse_answer(
    buf: &mut BytesMut,
    bodiless: bool,
    adds: Adds<'_>,
    client_close: bool,
    out: &mut Vec<u8>,
) -> Result<Option<Answer>, BadAnswer> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        let n = match res.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
            _ => return Err(BadAnswer),
        };
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| BadAnswer)?;
        if status.is_informational() {
            if code == 101 {
                return Err(BadAnswer);
            }
            buf.advance(n);
            continue;
        }
        let headers = || res.headers.iter().map(|h| (h.name, h.value));
        let mut framing = Framing::Close;
        let mut length = None;
        for (name, value) in headers() {
            if name.eq_ignore_ascii_case("transfer-encoding") {
                let last = value.rsplit(|b| *b == b',').next().unwrap_or_default();
                framing = if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    Framing::Chunked
                } else {
                    Framing::Close
                };
                length = None;
                break;
            }
            if name.eq_ignore_ascii_case("content-length") {
                let n = content_length(value).ok_or(BadAnswer)?;
                if length.is_some_and(|l| l != n) {
                    return Err(BadAnswer);
                }
                length = Some(n);
            }
        }
        if let Some(n) = length {
            framing = Framing::Length(n);
        }
        if bodiless || code == 204 || code == 304 {
            framing = Framing::Empty;
        }
        let upstream_close = match res.version {
            Some(0) => !headers()
                .any(|(n, v)| n.eq_ignore_ascii_case("connection") && lists(v, "keep-alive")),
            _ => headers().any(|(n, v)| n.eq_ignore_ascii_case("connection") && lists(v, "close")),
        };
        let named = connection_named(headers());
        out.clear();
        let _ = write!(out, "HTTP/1.1 {code} ");
        match res.reason {
            Some(r) if !r.is_empty() => out.extend_from_slice(r.as_bytes()),
            _ => out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
        let mut dated = false;
        for (name, value) in headers() {
            let framed_by_chunks =
                framing == Framing::Chunked && name.eq_ignore_ascii_case("content-length");
            if dropped(name, &named) || adds.replaces(name) || framed_by_chunks {
                continue;
            }
            dated |= name.eq_ignore_ascii_case("date");
            write_header(out, name.as_bytes(), value);
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        adds.write(out);
        if !dated {
            write_date(out);
        }
        if client_close || framing == Framing::Close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        buf.advance(n);
        return Ok(Some(Answer {
            status,
            framing,
            reusable: !upstream_close && framing != Framing::Close,
        }));
    }
}

thread_local! {
    /// This worker thread's idle upstream connections, by authority.
    static IDLE: RefCell<HashMap<Bytes, Vec<TcpStream>>> = RefCell::default();
}

/// Whether a kept connection is still open and has sent nothing unasked.
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn take_idle(authority: &Bytes) -> Option<TcpStream> {
    IDLE.with_borrow_mut(|idle| {
        let list = idle.get_mut(authority)?;
        while let Some(stream) = list.pop() {
            if still_open(&stream) {
                return Some(stream);
            }
        }
        None
    })
}

fn put_idle(authority: &Bytes, stream: TcpStream) {
    IDLE.with_borrow_mut(|idle| {
        let list = match idle.get_mut(authority) {
            Some(list) => list,
            None => idle.entry(authority.clone()).or_default(),
        };
        if list.len() >= MAX_IDLE_PER_UPSTREAM {
            list.remove(0);
        }
        list.push(stream);
    });
}

/// Why an exchange with the upstream failed.
enum Failed {
    /// No connection could be opened, or the upstream broke the exchange
    /// off before its answer's head (502).
    Upstream(std::io::Error),
    /// The upstream sent something that is not an HTTP/1 answer (502).
    BadAnswer,
    /// No answer's head within the read timeout (504).
    TimedOut,
    /// The client's body was cut off (400, then the connection closes).
    ClientBody(std::io::Error),
}

/// What one exchange left of the client connection.
enum Next {
    /// Serve its next request.
    KeepAlive,
    /// Close it.
    Close,
}

/// Writes `data` to `to`, or reports the client gone.
async fn write_all(to: &mut TcpStream, data: &[u8]) -> Option<()> {
    to.write_all(data).await.ok()
}

/// Copies `len` bytes from `from` to `to` through `scratch`; a failure to
/// read is `Err(true)`, to write `Err(false)`.
async fn copy_exact(
    from: &mut TcpStream,
    to: &mut TcpStream,
    mut len: u64,
    scratch: &mut Vec<u8>,
) -> Result<(), (bool, std::io::Error)> {
    if len == 0 {
        return Ok(());
    }
    scratch.resize(64 * 1024, 0);
    while len > 0 {
        let want = scratch
            .len()
            .min(usize::try_from(len).unwrap_or(usize::MAX));
        let n = match from.read(&mut scratch[..want]).await {
            Ok(0) => return Err((true, std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => n,
            Err(e) => return Err((true, e)),
        };
        to.write_all(&scratch[..n]).await.map_err(|e| (false, e))?;
        len -= n as u64;
    }
    Ok(())
}

/// One client connection on the fast path.
struct Conn {
    plane: Arc<DataPlane>,
    client: TcpStream,
    peer: SocketAddr,
    peer_ip: String,
    /// What the client sent that is not handled yet.
    inbuf: BytesMut,
}

/// Serves one client connection until it closes or `stop` (a request in
/// flight finishes first); hands it to hyper when the fast path does not
/// serve what it sends.
pub async fn serve(
    plane: Arc<DataPlane>,
    client: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
    http: hyper::server::conn::http1::Builder,
) {
    let mut conn = Conn {
        plane,
        client,
        peer,
        peer_ip: peer.ip().to_string(),
        inbuf: BytesMut::new(),
    };
    loop {
        let head = match conn.next_head(&stop).await {
            Some(Parsed::Head(head)) => head,
            Some(Parsed::Other) => return conn.hand_to_hyper(stop, http).await,
            Some(Parsed::Partial) | None => return,
        };
        match conn.answer(head).await {
            Ok(Next::KeepAlive) if !stop.is_cancelled() => {}
            Ok(_) => return,
            Err(head) => {
                let mut whole = BytesMut::with_capacity(head.bytes.len() + conn.inbuf.len());
                whole.extend_from_slice(&head.bytes);
                whole.extend_from_slice(&conn.inbuf);
                conn.inbuf = whole;
                return conn.hand_to_hyper(stop, http).await;
            }
        }
    }
}

/// Serves one client connection with hyper only (the fast path turned
/// off).
pub async fn hyper_only(
    plane: Arc<DataPlane>,
    client: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
    http: hyper::server::conn::http1::Builder,
) {
    let conn = Conn {
        plane,
        client,
        peer,
        peer_ip: String::new(),
        inbuf: BytesMut::new(),
    };
    conn.hand_to_hyper(stop, http).await;
}

impl Conn {
    /// The next request head; `None` when the client closed, went quiet
    /// half-way through a head, or the replica is stopping.
    async fn next_head(&mut self, stop: &CancellationToken) -> Option<Parsed> {
        let mut deadline = None;
        loop {
            if !self.inbuf.is_empty() {
                match parse_request(&mut self.inbuf) {
                    Parsed::Partial => {}
                    parsed => return Some(parsed),
                }
            }
            if self.inbuf.is_empty() {
                // Idle: hold no buffer while waiting.
                self.inbuf = BytesMut::new();
                tokio::select! {
                    ready = self.client.readable() => ready.ok()?,
                    () = stop.cancelled() => return None,
                }
            } else {
                let deadline =
                    *deadline.get_or_insert_with(|| tokio::time::Instant::now() + HEAD_TIMEOUT);
                tokio::select! {
                    ready = tokio::time::timeout_at(deadline, self.client.readable()) => ready.ok()?.ok()?,
                    () = stop.cancelled() => return None,
                }
            }
            // Through `AsyncRead` rather than `try_read`: a read that does
            // not fill the buffer tells tokio the socket is drained, so the
            // next wait goes straight to epoll instead of trying a read
            // that can only say "would block" (one system call a request).
            self.inbuf.reserve(4096);
            match self.client.read_buf(&mut self.inbuf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Answers one request; `Err` gives it back for hyper (an API the fast
    /// path does not forward to).
    async fn answer(&mut self, head: Head) -> Result<Next, Head> {
        let plane = self.plane.clone();
        let path = match path::normalize(head.target.path()) {
            Ok(p) => p,
            Err(refusal) => {
                let message = refusal.to_string();
                return Ok(self
                    .refused_early(&head, "", StatusCode::BAD_REQUEST, &message)
                    .await);
            }
        };
        let repeated = |name: &str| format!("The {name} header must appear only once");
        if let Some(name) = head.repeated_singleton(None) {
            let message = repeated(name);
            return Ok(self
                .refused_early(&head, "", StatusCode::BAD_REQUEST, &message)
                .await);
        }
        let Some(route) = plane.route(&path) else {
            let message = "No API listens on this path";
            return Ok(self
                .refused_early(&head, "", StatusCode::NOT_FOUND, message)
                .await);
        };
        // hyper serves https and h2c upstreams, batches (they read the
        // whole body and answer from several exchanges), APIs with the
        // response cache (answers kept whole), OAuth's endpoints and APIs
        // with mocked operations (answered by the gateway) or validated
        // ones (their bodies read whole).
        let batch = route.batch
            && head.method() == "POST"
            && crate::domain::batch::is_batch_path(&route.listen_path, &path);
        let oauth =
            route.oauth.is_some() && crate::domain::oauth::endpoint(route.rest_of(&path)).is_some();
        let mocks = route
            .endpoints
            .as_ref()
            .is_some_and(|e| e.reads_whole_requests());
        if route.upstream.tls
            || route.upstream.h2c
            || batch
            || oauth
            || mocks
            || route.cache.is_some()
        {
            return Err(head);
        }
        if !route.keyless
            && let Some(name) = head.repeated_singleton(Some(route.auth_header.as_str()))
        {
            let message = repeated(name);
            let api = route.api_id.as_str();
            return Ok(self
                .refused_early(&head, api, StatusCode::BAD_REQUEST, &message)
                .await);
        }
        let facts = Request {
            head: &head,
            path: &path,
        };
        // One span per request when spans are exported, continuing the
        // client's trace; the upstream is sent this span's `traceparent`.
        let span = super::dataplane::request_span(&route.api_id, head.method());
        let traceparent = if span.is_disabled() {
            None
        } else {
            meridian_kit::telemetry::follow(&span, facts.header("traceparent"));
            meridian_kit::telemetry::traceparent_of(&span)
        };
        let mut cx = Context::new(route, meridian_kit::time::now_ms());
        if let Some(preflight) = DataPlane::cors_phase(&mut cx, &facts) {
            plane.count(&cx.route.api_id, StatusCode::OK);
            let adds = Adds {
                limits: None,
                cors: &preflight,
                edits: None,
            };
            return Ok(self.answer_here(&head, StatusCode::OK, None, adds).await);
        }
        if let Err(refusal) = plane.request_phase(&mut cx, &facts).await {
            let (status, message, limits) = plane.refusal_answer(&cx, refusal);
            plane.count(&cx.route.api_id, status);
            let adds = Adds {
                limits,
                cors: &cx.cors_headers,
                edits: None,
            };
            return Ok(self.answer_here(&head, status, Some(message), adds).await);
        }
        DataPlane::transform_phase(&mut cx, &facts, &self.peer_ip);
        let target =
            DataPlane::upstream_target(&cx.route, &path, head.target.query(), cx.strip_segment);
        let forwarded = self.forward(&head, &cx, &target, traceparent.as_deref());
        let (status, next) = if span.is_disabled() {
            forwarded.await
        } else {
            forwarded.instrument(span).await
        };
        plane.count(&cx.route.api_id, status);
        Ok(next)
    }

    /// A refusal before the pipeline (bad path, repeated header, no API),
    /// counted against `api` (empty: none).
    async fn refused_early(
        &mut self,
        head: &Head,
        api: &str,
        status: StatusCode,
        message: &str,
    ) -> Next {
        self.plane.count(api, status);
        self.answer_here(head, status, Some(message), Adds::default())
            .await
    }

    /// Answers before the upstream: a JSON error, or with no message an
    /// empty answer (a CORS preflight). The request's body is skipped when
    /// small enough, or the connection closed after.
    async fn answer_here(
        &mut self,
        head: &Head,
        status: StatusCode,
        message: Option<&str>,
        adds: Adds<'_>,
    ) -> Next {
        let buffered = self.inbuf.len() as u64;
        let mut close = head.close;
        if head.body <= buffered {
            self.inbuf.advance(head.body as usize);
        } else if head.body <= SKIP_BODY_UP_TO {
            let rest = head.body - buffered;
            self.inbuf.clear();
            let mut sink = tokio::io::sink();
            let skipped = tokio::time::timeout(
                HEAD_TIMEOUT,
                tokio::io::copy(&mut (&mut self.client).take(rest), &mut sink),
            )
            .await;
            close |= !matches!(skipped, Ok(Ok(n)) if n == rest);
        } else {
            close = true;
        }
        let mut out = Vec::with_capacity(256);
        write_error(&mut out, status, message, adds, close);
        if write_all(&mut self.client, &out).await.is_none() || close {
            return Next::Close;
        }
        Next::KeepAlive
    }

    /// The upstream-request, response and body phases: the request sent to
    /// the route's upstream on a kept connection, its answer passed back.
    /// Gives the status answered and what is left of the connection.
    async fn forward(
        &mut self,
        head: &Head,
        cx: &Context,
        target: &str,
        traceparent: Option<&str>,
    ) -> (StatusCode, Next) {
        let route = &*cx.route;
        if !target.bytes().all(|b| b.is_ascii_graphic()) {
            let message = "The request path cannot be forwarded";
            return (
                StatusCode::BAD_REQUEST,
                self.answer_here(
                    head,
                    StatusCode::BAD_REQUEST,
                    Some(message),
                    Adds::default(),
                )
                .await,
            );
        }
        let mut out = Vec::with_capacity(head.bytes.len() + 128);
        let edits = cx.edits.as_deref();
        write_upstream_head(
            &mut out,
            head,
            route,
            target,
            &self.peer_ip,
            traceparent,
            edits.map(|e| &e.request),
        );
        let buffered = self
            .inbuf
            .len()
            .min(usize::try_from(head.body).unwrap_or(usize::MAX));
        out.extend_from_slice(&self.inbuf[..buffered]);
        self.inbuf.advance(buffered);
        let rest = head.body - buffered as u64;
        let timeouts = self.plane.timeouts();
        let adds = Adds {
            limits: self.plane.limit_headers(cx),
            cors: &cx.cors_headers,
            edits: edits.map(|e| &e.response),
        };
        let bodiless = head.method() == "HEAD";
        let idempotent = matches!(
            head.method(),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        );
        let mut upbuf = BytesMut::with_capacity(8 * 1024);
        let mut client_head = Vec::with_capacity(512);
        let exchange = async {
            let mut reused = true;
            let mut up = match take_idle(&route.upstream.authority) {
                Some(up) => up,
                None => {
                    reused = false;
                    connect(route, timeouts.connect)
                        .await
                        .map_err(Failed::Upstream)?
                }
            };
            loop {
                let sent = self
                    .send(
                        &mut up,
                        &out,
                        rest,
                        &mut upbuf,
                        bodiless,
                        adds,
                        head.close,
                        &mut client_head,
                    )
                    .await;
                match sent {
                    // A kept connection the upstream closed meanwhile, with
                    // no answer: once more on a new one, when the whole
                    // request is still at hand and sending it twice is
                    // harmless (RFC 9110 9.2.2; nginx retries the same).
                    Err(Failed::Upstream(_))
                        if reused && rest == 0 && upbuf.is_empty() && idempotent =>
                    {
                        reused = false;
                        up = connect(route, timeouts.connect)
                            .await
                            .map_err(Failed::Upstream)?;
                    }
                    Err(e) => return Err(e),
                    Ok(answer) => return Ok((up, answer)),
                }
            }
        };
        let exchanged = match tokio::time::timeout(timeouts.read, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failed::TimedOut),
        };
        let (up, answer) = match exchanged {
            Ok(done) => done,
            Err(failed) => return self.failed(head, route, failed, timeouts.read, adds).await,
        };
        let status = answer.status;
        (
            status,
            self.pass_body(up, answer, upbuf, client_head, route, head.close)
                .await,
        )
    }

    /// Sends the request (`out`, then `rest` body bytes from the client) and
    /// reads the answer's head, written for the client into `client_head`.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &mut self,
        up: &mut TcpStream,
        out: &[u8],
        rest: u64,
        upbuf: &mut BytesMut,
        bodiless: bool,
        adds: Adds<'_>,
        client_close: bool,
        client_head: &mut Vec<u8>,
    ) -> Result<Answer, Failed> {
        up.write_all(out).await.map_err(Failed::Upstream)?;
        if rest > 0 {
            let mut scratch = Vec::new();
            copy_exact(&mut self.client, up, rest, &mut scratch)
                .await
                .map_err(|(reading, e)| {
                    if reading {
                        Failed::ClientBody(e)
                    } else {
                        Failed::Upstream(e)
                    }
                })?;
        }
        loop {
            match parse_answer(upbuf, bodiless, adds, client_close, client_head) {
                Ok(Some(answer)) => return Ok(answer),
                Ok(None) => {}
                Err(BadAnswer) => return Err(Failed::BadAnswer),
            }
            upbuf.reserve(8 * 1024);
            match up.read_buf(upbuf).await {
                Ok(0) => {
                    return Err(Failed::Upstream(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => {}
                Err(e) => return Err(Failed::Upstream(e)),
            }
        }
    }

    /// The answer when the exchange failed: 502, 504, or 400 for the
    /// client's own body; the connection closes unless the request was
    /// read whole.
    async fn failed(
        &mut self,
        head: &Head,
        route: &Route,
        failed: Failed,
        read: Duration,
        adds: Adds<'_>,
    ) -> (StatusCode, Next) {
        let (status, message) = match &failed {
            Failed::ClientBody(e) => {
                tracing::info!(api = %route.api_id, peer = %self.peer, error = %e, "the client's request body is malformed or was cut off");
                (StatusCode::BAD_REQUEST, CLIENT_BODY_FAILED)
            }
            Failed::Upstream(e) => {
                tracing::warn!(api = %route.api_id, upstream = %route.upstream.authority_str(), error = %e, "upstream request failed");
                (StatusCode::BAD_GATEWAY, UPSTREAM_FAILED)
            }
            Failed::BadAnswer => {
                tracing::warn!(api = %route.api_id, upstream = %route.upstream.authority_str(), "the upstream's answer is not HTTP/1");
                (StatusCode::BAD_GATEWAY, UPSTREAM_FAILED)
            }
            Failed::TimedOut => {
                tracing::warn!(api = %route.api_id, upstream = %route.upstream.authority_str(), timeout = ?read, "upstream did not answer in time");
                (StatusCode::GATEWAY_TIMEOUT, UPSTREAM_TIMED_OUT)
            }
        };
        // The body may be only part-read: the connection cannot go on.
        let close = head.close || head.body > 0 || matches!(failed, Failed::ClientBody(_));
        let mut out = Vec::with_capacity(256);
        write_error(&mut out, status, Some(message), adds, close);
        if write_all(&mut self.client, &out).await.is_none() || close {
            return (status, Next::Close);
        }
        (status, Next::KeepAlive)
    }

    /// Passes the answer's body to the client; the upstream connection is
    /// kept when the exchange ended cleanly.
    async fn pass_body(
        &mut self,
        mut up: TcpStream,
        answer: Answer,
        mut upbuf: BytesMut,
        mut out: Vec<u8>,
        route: &Route,
        client_close: bool,
    ) -> Next {
        let passed = match answer.framing {
            Framing::Empty => write_all(&mut self.client, &out).await,
            Framing::Length(len) => {
                let ready = upbuf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
                out.extend_from_slice(&upbuf[..ready]);
                upbuf.advance(ready);
                match write_all(&mut self.client, &out).await {
                    None => None,
                    Some(()) => {
                        let mut scratch = Vec::new();
                        copy_exact(&mut up, &mut self.client, len - ready as u64, &mut scratch)
                            .await
                            .ok()
                    }
                }
            }
            Framing::Chunked => pass_chunks(&mut up, &mut upbuf, &mut self.client, out).await,
            Framing::Close => {
                out.extend_from_slice(&upbuf);
                upbuf.clear();
                match write_all(&mut self.client, &out).await {
                    None => None,
                    Some(()) => tokio::io::copy(&mut up, &mut self.client)
                        .await
                        .ok()
                        .map(drop),
                }
            }
        };
        if passed.is_none() {
            // Either side broke off mid-body: the client cannot tell where
            // this answer ends, so its connection closes too.
            return Next::Close;
        }
        if answer.reusable && upbuf.is_empty() {
            put_idle(&route.upstream.authority, up);
        }
        if client_close || answer.framing == Framing::Close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// Serves the rest of the connection with hyper, starting from what the
    /// fast path has read and not handled.
    async fn hand_to_hyper(
        self,
        stop: CancellationToken,
        http: hyper::server::conn::http1::Builder,
    ) {
        let Conn {
            plane,
            client,
            peer,
            inbuf,
            ..
        } = self;
        let io = Prefixed {
            prefix: inbuf.freeze(),
            io: client,
        };
        let client = Arc::new(ClientConn::new(peer, plane.hyper_connection()));
        let service = service_fn(move |req| {
            let plane = plane.clone();
            let client = client.clone();
            async move { Ok::<_, Infallible>(plane.handle(req, &client).await) }
        });
        let conn = http.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let served = tokio::select! {
            served = conn.as_mut() => served,
            () = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = served {
            if e.is_parse() || e.is_incomplete_message() {
                tracing::debug!(%peer, error = %e, "the client sent a malformed request");
            } else {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
        }
    }
}

/// Opens a connection to the route's upstream within `timeout`.
async fn connect(route: &Route, timeout: Duration) -> std::io::Result<TcpStream> {
    let addr = (route.upstream.host.as_str(), route.upstream.port);
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Writes the request for the upstream: its target, the client's headers
/// but hop-by-hop ones, `Host` the upstream's (unless `preserve_host`),
/// `X-Forwarded-For` with the client appended, `X-Forwarded-Proto`, the
/// span's `traceparent` when traced, and header injection's `edits`.
fn write_upstream_head(
    out: &mut Vec<u8>,
    head: &Head,
    route: &Route,
    target: &str,
    peer_ip: &str,
    traceparent: Option<&str>,
    edits: Option<&Rendered>,
) {
    out.extend_from_slice(head.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let named = connection_named(head.headers());
    let (mut host, mut proto, mut prior_for) = (false, false, None);
    for (name, value) in head.headers() {
        if dropped(name, &named) {
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            if !route.preserve_host {
                continue;
            }
            host = true;
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            if prior_for.is_none() {
                prior_for = Some(visible_ascii(value));
            }
            continue;
        } else if name.eq_ignore_ascii_case("traceparent") && traceparent.is_some() {
            continue;
        }
        if edits.is_some_and(|e| e.drops(name)) {
            continue;
        }
        proto |= name.eq_ignore_ascii_case("x-forwarded-proto");
        write_header(out, name.as_bytes(), value);
    }
    if let Some(edits) = edits {
        for (name, value) in &edits.set {
            write_header(out, name.as_bytes(), value.as_bytes());
        }
    }
    if !host {
        write_header(out, b"host", &route.upstream.authority);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(Some(prior)) = prior_for {
        out.extend_from_slice(prior.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !proto {
        out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    }
    if let Some(tp) = traceparent {
        write_header(out, b"traceparent", tp.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Passes a chunked body through as it came (sizes, extensions, trailers),
/// checking its framing so that it is known where it ends. `out` holds what
/// goes to the client first.
async fn pass_chunks(
    up: &mut TcpStream,
    buf: &mut BytesMut,
    client: &mut TcpStream,
    mut out: Vec<u8>,
) -> Option<()> {
    /// Reads more of the body, sending what is pending first.
    async fn more(
        up: &mut TcpStream,
        buf: &mut BytesMut,
        client: &mut TcpStream,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        if !out.is_empty() {
            client.write_all(out).await.ok()?;
            out.clear();
        }
        if buf.len() >= MAX_HEAD {
            return None;
        }
        buf.reserve(16 * 1024);
        match up.read_buf(buf).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(()),
        }
    }
    let mut scratch = Vec::new();
    loop {
        let (line, size) = loop {
            match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete(found)) => break found,
                Ok(httparse::Status::Partial) => more(up, buf, client, &mut out).await?,
                Err(_) => return None,
            }
        };
        if size == 0 {
            // The last chunk: trailers, if any, then an empty line.
            let end = loop {
                let after = &buf[line..];
                if after.starts_with(b"\r\n") {
                    break line + 2;
                }
                if let Some(i) = after.windows(4).position(|w| w == b"\r\n\r\n") {
                    break line + i + 4;
                }
                more(up, buf, client, &mut out).await?;
            };
            out.extend_from_slice(&buf[..end]);
            buf.advance(end);
            return client.write_all(&out).await.ok();
        }
        out.extend_from_slice(&buf[..line]);
        buf.advance(line);
        let ready = buf.len().min(usize::try_from(size).unwrap_or(usize::MAX));
        out.extend_from_slice(&buf[..ready]);
        buf.advance(ready);
        let rest = size - ready as u64;
        if rest > 0 {
            client.write_all(&out).await.ok()?;
            out.clear();
            copy_exact(up, client, rest, &mut scratch).await.ok()?;
        }
        while buf.len() < 2 {
            more(up, buf, client, &mut out).await?;
        }
        if &buf[..2] != b"\r\n" {
            return None;
        }
        out.extend_from_slice(b"\r\n");
        buf.advance(2);
        if out.len() >= 16 * 1024 {
            client.write_all(&out).await.ok()?;
            out.clear();
        }
    }
}

/// A stream that first yields bytes already read from it.
struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Parsed {
        parse_request(&mut BytesMut::from(raw))
    }

    #[test]
    fn plain_heads_are_served_and_unusual_ones_go_to_hyper() {
        let Parsed::Head(h) = head(
            "GET /a%2e/b?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: keep-alive, close\r\n\r\nabc",
        ) else {
            panic!("a plain head")
        };
        assert_eq!(
            (h.method(), h.target.path(), h.target.query()),
            ("GET", "/a%2e/b", Some("q=1"))
        );
        assert_eq!((h.body, h.close), (3, true));
        assert_eq!(h.header("HOST"), Some(&b"x"[..]));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
        for other in [
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "GET /<x> HTTP/1.1\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(other);
            assert!(
                matches!(parse_request(&mut buf), Parsed::Other),
                "{other:?}"
            );
            assert_eq!(&buf[..], other.as_bytes(), "left as it came: {other:?}");
        }
    }

    #[test]
    fn repeated_singletons_are_found_and_lists_are_not() {
        let Parsed::Head(h) =
            head("GET / HTTP/1.1\r\nAccept: a\r\naccept: b\r\nX-Key: 1\r\nx-key: 2\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!(h.repeated_singleton(None), None);
        assert_eq!(h.repeated_singleton(Some("x-key")), Some("x-key"));
        let Parsed::Head(h) = head("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n") else {
            panic!()
        };
        assert_eq!(h.repeated_singleton(None), Some("host"));
    }

    #[test]
    fn answers_are_rewritten_for_the_client() {
        let mut out = Vec::new();
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\nConnection: x-hop\r\nX-Hop: 1\r\nX-RateLimit-Limit: 9\r\nDate: then\r\n\r\nrest",
        );
        let limits = LimitHeaders {
            limit: 10,
            remaining: -1,
            reset: 3,
        };
        let adds = Adds {
            limits: Some(limits),
            cors: &[],
            edits: None,
        };
        let answer = parse_answer(&mut buf, false, adds, false, &mut out)
            .ok()
            .flatten()
            .expect("an answer");
        assert_eq!(
            (answer.status, answer.framing, answer.reusable),
            (StatusCode::OK, Framing::Chunked, true)
        );
        assert_eq!(&buf[..], b"rest");
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "HTTP/1.1 200 OK\r\ndate: then\r\n".replace("date", "Date")
                + "transfer-encoding: chunked\r\nx-ratelimit-limit: 10\r\nx-ratelimit-remaining: 0\r\nx-ratelimit-reset: 3\r\n\r\n"
        );
        let mut buf = BytesMut::from("HTTP/1.0 200 OK\r\n\r\n");
        let answer = parse_answer(&mut buf, false, Adds::default(), true, &mut out)
            .ok()
            .flatten()
            .unwrap();
        assert_eq!((answer.framing, answer.reusable), (Framing::Close, false));
        assert!(out.ends_with(b"connection: close\r\n\r\n"));
        let mut buf =
            BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert!(parse_answer(&mut buf, false, Adds::default(), false, &mut out).is_err());
        let mut buf = BytesMut::from("HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n");
        let answer = parse_answer(&mut buf, false, Adds::default(), false, &mut out)
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(answer.framing, Framing::Empty);
    }
}
