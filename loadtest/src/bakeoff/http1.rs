//! What both hand-written candidates share: an HTTP/1.1 head parsed once
//! with `httparse` and written again for the other side from the parsed
//! slices (hop-by-hop headers dropped, `X-Forwarded-For` appended), with
//! what it says about the message's body and connection. No I/O.

use std::io::Write as _;

/// Most bytes of a head.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most headers of a head.
pub const MAX_HEADERS: usize = 64;

/// How a message's body ends.
pub enum Framing {
    /// After this many bytes (0: no body).
    Length(u64),
    /// When the sender closes (an answer with neither length nor chunks).
    Close,
    /// Not handled here.
    Unsupported,
}

/// What one head says about its message.
pub struct Head {
    /// How its body ends.
    pub framing: Framing,
    /// Whether the connection stays open after it.
    pub keep_alive: bool,
    /// A request whose answer has no body whatever its head says (`HEAD`).
    pub bodiless_answer: bool,
    /// HTTP/1.`minor`.
    pub minor: u8,
}

/// What a buffer holds so far.
pub enum Parsed {
    /// A whole head of this many bytes, written for the other side.
    Head(Head, usize),
    /// Not a whole head yet: read more.
    Partial,
    /// Not HTTP/1, or a head too large.
    Bad,
}

/// Parses a request head from `buf` and, when whole, writes the request for
/// the upstream into `out` (cleared first); `peer` is appended to
/// `X-Forwarded-For`.
pub fn parse_request(buf: &[u8], peer: &str, out: &mut Vec<u8>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            out.clear();
            Parsed::Head(write_request(&req, peer, out), n)
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Parsed::Partial,
        _ => Parsed::Bad,
    }
}

/// Parses the upstream's answer head from `buf` and, when whole, writes the
/// answer to `request` for the client into `out` (cleared first).
pub fn parse_response(buf: &[u8], request: &Head, out: &mut Vec<u8>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            out.clear();
            Parsed::Head(write_response(&res, request, out), n)
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Parsed::Partial,
        _ => Parsed::Bad,
    }
}

/// A whole answer of `status` (such as `b"502 Bad Gateway"`) with no body,
/// closing the connection.
pub fn refusal(status: &[u8]) -> Vec<u8> {
    [
        &b"HTTP/1.1 "[..],
        status,
        b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    ]
    .concat()
}

/// Whether a header is hop-by-hop (never forwarded).
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether the `Connection` header lists `token`.
fn lists(headers: &[httparse::Header<'_>], token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The framing and connection persistence `headers` give a message of
/// HTTP/1.`minor`.
fn head(headers: &[httparse::Header<'_>], minor: u8, no_length: Framing) -> Head {
    let mut framing = no_length;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            framing = Framing::Unsupported;
            break;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            framing = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .map_or(Framing::Unsupported, Framing::Length);
        }
    }
    let keep_alive = if minor == 0 {
        lists(headers, "keep-alive")
    } else {
        !lists(headers, "close")
    };
    Head {
        framing,
        keep_alive,
        bodiless_answer: false,
        minor,
    }
}

/// Copies the headers that are not hop-by-hop (nor named by `Connection`).
fn copy_headers(headers: &[httparse::Header<'_>], out: &mut Vec<u8>) {
    let connection = headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection"));
    for h in headers {
        if hop_by_hop(h.name)
            || (connection && lists(headers, h.name))
            || h.name.eq_ignore_ascii_case("x-forwarded-for")
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes the request for the upstream into `out`.
fn write_request(req: &httparse::Request<'_, '_>, peer: &str, out: &mut Vec<u8>) -> Head {
    let mut head = head(req.headers, req.version.unwrap_or(1), Framing::Length(0));
    if lists(req.headers, "upgrade") {
        head.framing = Framing::Unsupported;
    }
    head.bodiless_answer = req.method == Some("HEAD");
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    copy_headers(req.headers, out);
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
    {
        out.extend_from_slice(prior.value);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    head
}

/// Writes the answer to `request` for the client into `out`.
fn write_response(res: &httparse::Response<'_, '_>, request: &Head, out: &mut Vec<u8>) -> Head {
    let code = res.code.unwrap_or(502);
    let no_body = request.bodiless_answer || matches!(code, 100..=199 | 204 | 304);
    let mut head = head(res.headers, res.version.unwrap_or(1), Framing::Close);
    if no_body {
        head.framing = Framing::Length(0);
    }
    let _ = write!(out, "HTTP/1.1 {code} ");
    out.extend_from_slice(res.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    copy_headers(res.headers, out);
    if !request.keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if request.minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    head
}
