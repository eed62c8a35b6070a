//! HTTP/1.1 over a raw socket, for requests no client library sends as
//! written (dot segments, repeated `Host` headers, broken chunks) and
//! answers read as their bytes came.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An answer as it came off the wire.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when it was chunked.
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A `GET` of `target` as written, with `Connection: close` and `headers`
/// (`Name: value` lines).
pub fn get(target: &str, headers: &[&str]) -> Vec<u8> {
    let mut req = format!("GET {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        req.push_str("Host: gateway.test\r\n");
    }
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Sends `request` as it is to `addr` (`host:port`) and reads the answer
/// until the server closes (the request should say `Connection: close`).
pub async fn exchange(addr: &str, request: &[u8]) -> std::io::Result<Answer> {
    parse(&exchange_bytes(addr, request).await?)
}

/// Sends `request` to `addr` and gives every byte that came back until the
/// server closed.
pub async fn exchange_bytes(addr: &str, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("no complete answer within 30 s"))??;
    Ok(raw)
}

/// The answer to a `HEAD`: its head alone (its `Content-Length` is the
/// `GET`'s), refused when anything follows it.
pub fn parse_head(raw: &[u8]) -> std::io::Result<Answer> {
    let (answer, end) = head_of(raw)?;
    if end != raw.len() {
        return Err(bad("bytes after the head of an answer to HEAD"));
    }
    Ok(answer)
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Parses one HTTP/1.1 answer.
pub fn parse(raw: &[u8]) -> std::io::Result<Answer> {
    parse_one(raw).map(|(answer, _)| answer)
}

/// Parses the answers one connection carried, in order (all but the last
/// must say how long they are).
pub fn parse_all(mut raw: &[u8]) -> std::io::Result<Vec<Answer>> {
    let mut answers = Vec::new();
    while !raw.is_empty() {
        let (answer, used) = parse_one(raw)?;
        answers.push(answer);
        raw = &raw[used..];
    }
    Ok(answers)
}

/// A head (as an answer with no body yet), and where its body starts.
fn head_of(raw: &[u8]) -> std::io::Result<(Answer, usize)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    Ok((answer, end + 4))
}

/// One answer, and how many bytes it took.
fn parse_one(raw: &[u8]) -> std::io::Result<(Answer, usize)> {
    let (head, body_at) = head_of(raw)?;
    let (status, headers) = (head.status, head.headers);
    let end = body_at - 4;
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let (body, used) = if chunked {
        dechunk(rest)?
    } else if let Some((_, len)) = headers.iter().find(|(n, _)| n == "content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        let body = rest
            .get(..len)
            .ok_or_else(|| bad("body shorter than its length"))?
            .to_vec();
        (body, len)
    } else {
        (rest.to_vec(), rest.len())
    };
    let answer = Answer {
        status,
        headers,
        body,
    };
    Ok((answer, end + 4 + used))
}

/// The body of a chunked message, and how many bytes it took (trailers
/// skipped).
fn dechunk(all: &[u8]) -> std::io::Result<(Vec<u8>, usize)> {
    let mut rest = all;
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("no chunk size line"))?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| bad("chunk size"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            let trailers_end = if rest.starts_with(b"\r\n") {
                2
            } else {
                rest.windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(rest.len(), |i| i + 4)
            };
            return Ok((body, all.len() - rest.len() + trailers_end));
        }
        body.extend_from_slice(rest.get(..size).ok_or_else(|| bad("chunk cut short"))?);
        rest = rest.get(size + 2..).ok_or_else(|| bad("chunk cut short"))?;
    }
}
