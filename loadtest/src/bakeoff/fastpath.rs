//! Candidate: a hand-written HTTP/1.1 fast path. Each head is parsed once
//! with `httparse` and written again for the other side from the parsed
//! slices (hop-by-hop headers dropped, `X-Forwarded-For` appended) into
//! one buffer reused for the connection's life; bodies framed by
//! `Content-Length` are streamed through a fixed buffer. What it does not
//! handle is refused (chunked or upgraded requests 501, chunked answers
//! 502): the winner would hand those to hyper.

use std::io::Write as _;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes of a head.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers of a head.
const MAX_HEADERS: usize = 64;

/// How a message's body ends.
enum Framing {
    /// After this many bytes (0: no body).
    Length(u64),
    /// When the sender closes (an answer with neither length nor chunks).
    Close,
    /// Not handled here.
    Unsupported,
}

/// What one head says about its message.
struct Head {
    framing: Framing,
    keep_alive: bool,
    /// A request whose answer has no body whatever its head says (`HEAD`).
    bodiless_answer: bool,
    /// HTTP/1.`minor`.
    minor: u8,
}

/// Serves one client connection until it closes.
pub async fn connection(mut client: TcpStream, peer: SocketAddr, upstream: SocketAddr) {
    let _ = serve(&mut client, &peer.ip().to_string(), upstream).await;
}

async fn serve(client: &mut TcpStream, peer: &str, upstream: SocketAddr) -> std::io::Result<()> {
    let mut up: Option<TcpStream> = None;
    let (mut from_client, mut from_up) = (
        BytesMut::with_capacity(8192),
        BytesMut::with_capacity(16384),
    );
    let mut out = Vec::with_capacity(4096);
    loop {
        // The request head, read until complete.
        let request = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&from_client) {
                Ok(httparse::Status::Complete(n)) => {
                    out.clear();
                    let head = write_request(&req, peer, &mut out);
                    from_client.advance(n);
                    break head;
                }
                Ok(httparse::Status::Partial) if from_client.len() < MAX_HEAD => {
                    if client.read_buf(&mut from_client).await? == 0 {
                        return Ok(());
                    }
                }
                _ => return answer(client, b"400 Bad Request").await,
            }
        };
        let Framing::Length(body) = request.framing else {
            return answer(client, b"501 Not Implemented").await;
        };
        let upstream_conn = match &mut up {
            Some(conn) => conn,
            None => {
                let conn = TcpStream::connect(upstream).await?;
                conn.set_nodelay(true)?;
                up.insert(conn)
            }
        };
        send(&mut out, &mut from_client, client, upstream_conn, body).await?;
        // The answer's head.
        let answer_head = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&from_up) {
                Ok(httparse::Status::Complete(n)) => {
                    out.clear();
                    let head = write_response(&res, &request, &mut out);
                    from_up.advance(n);
                    break head;
                }
                Ok(httparse::Status::Partial) if from_up.len() < MAX_HEAD => {
                    if upstream_conn.read_buf(&mut from_up).await? == 0 {
                        return answer(client, b"502 Bad Gateway").await;
                    }
                }
                _ => return answer(client, b"502 Bad Gateway").await,
            }
        };
        match answer_head.framing {
            Framing::Length(n) => send(&mut out, &mut from_up, upstream_conn, client, n).await?,
            Framing::Close => {
                client.write_all(&out).await?;
                client.write_all(&from_up).await?;
                tokio::io::copy(upstream_conn, client).await?;
                return Ok(());
            }
            Framing::Unsupported => return answer(client, b"502 Bad Gateway").await,
        }
        if !answer_head.keep_alive {
            up = None;
        }
        if !request.keep_alive {
            return Ok(());
        }
    }
}

/// Sends `head` and a body of `len` bytes in as few writes as it can: the
/// head with the body bytes already read into `buffered`, in one write,
/// then the rest straight from `from` to `to`.
async fn send(
    head: &mut Vec<u8>,
    buffered: &mut BytesMut,
    from: &mut TcpStream,
    to: &mut TcpStream,
    len: u64,
) -> std::io::Result<()> {
    let ready = buffered
        .len()
        .min(usize::try_from(len).unwrap_or(usize::MAX));
    head.extend_from_slice(&buffered[..ready]);
    to.write_all(head).await?;
    buffered.advance(ready);
    let rest = len - ready as u64;
    if rest > 0 {
        let copied = tokio::io::copy(&mut (&mut *from).take(rest), to).await?;
        if copied < rest {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Answers `status` with no body and closes.
async fn answer(client: &mut TcpStream, status: &[u8]) -> std::io::Result<()> {
    client.write_all(b"HTTP/1.1 ").await?;
    client.write_all(status).await?;
    client
        .write_all(b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await
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
