//! Candidate: the same hand-written HTTP/1.1 fast path (see
//! [`super::http1`]) on monoio, a thread-per-core runtime over io_uring
//! (as monolake is): buffers are owned and handed to the kernel, reads and
//! writes completed rather than polled for readiness.

use std::net::SocketAddr;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::http1::{Framing, Parsed, parse_request, parse_response, refusal};

/// Serves on `listen`, forwarding to `upstream`, until killed: one thread,
/// an io_uring driver.
pub fn run(listen: u16, upstream: SocketAddr) -> anyhow::Result<()> {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .build()?
        .block_on(async move {
            let listener = monoio::net::TcpListener::bind(("127.0.0.1", listen))?;
            loop {
                let (stream, peer) = listener.accept().await?;
                stream.set_nodelay(true)?;
                monoio::spawn(connection(stream, peer, upstream));
            }
        })
}

/// Serves one client connection until it closes.
pub async fn connection(mut client: TcpStream, peer: SocketAddr, upstream: SocketAddr) {
    let _ = serve(&mut client, &peer.ip().to_string(), upstream).await;
}

/// Reads more into `buf` (after what it holds); `None` at the end.
async fn read_more(from: &mut TcpStream, mut buf: Vec<u8>) -> std::io::Result<Option<Vec<u8>>> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    let len = buf.len();
    let (read, slice) = from.read(buf.slice_mut(len..)).await;
    let buf = slice.into_inner();
    Ok((read? > 0).then_some(buf))
}

/// Writes all of `buf` and hands it back.
async fn write(to: &mut TcpStream, buf: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let (written, buf) = to.write_all(buf).await;
    written.map(|_| buf)
}

async fn serve(client: &mut TcpStream, peer: &str, upstream: SocketAddr) -> std::io::Result<()> {
    let mut up: Option<TcpStream> = None;
    let (mut from_client, mut from_up) = (Vec::with_capacity(8192), Vec::with_capacity(16384));
    let mut out = Vec::with_capacity(4096);
    loop {
        let request = loop {
            match parse_request(&from_client, peer, &mut out) {
                Parsed::Head(head, n) => {
                    from_client.drain(..n);
                    break head;
                }
                Parsed::Partial => match read_more(client, from_client).await? {
                    Some(buf) => from_client = buf,
                    None => return Ok(()),
                },
                Parsed::Bad => return write(client, refusal(b"400 Bad Request")).await.map(drop),
            }
        };
        let Framing::Length(body) = request.framing else {
            return write(client, refusal(b"501 Not Implemented"))
                .await
                .map(drop);
        };
        let upstream_conn = match &mut up {
            Some(conn) => conn,
            None => {
                let conn = TcpStream::connect(upstream).await?;
                conn.set_nodelay(true)?;
                up.insert(conn)
            }
        };
        (out, from_client) = send(out, from_client, client, upstream_conn, body).await?;
        let answer = loop {
            match parse_response(&from_up, &request, &mut out) {
                Parsed::Head(head, n) => {
                    from_up.drain(..n);
                    break head;
                }
                Parsed::Partial => match read_more(upstream_conn, from_up).await? {
                    Some(buf) => from_up = buf,
                    None => return write(client, refusal(b"502 Bad Gateway")).await.map(drop),
                },
                Parsed::Bad => return write(client, refusal(b"502 Bad Gateway")).await.map(drop),
            }
        };
        match answer.framing {
            Framing::Length(n) => {
                (out, from_up) = send(out, from_up, upstream_conn, client, n).await?
            }
            Framing::Close => {
                out.extend_from_slice(&from_up);
                let mut buf = write(client, out).await?;
                buf.clear();
                while let Some(read) = read_more(upstream_conn, buf).await? {
                    buf = write(client, read).await?;
                    buf.clear();
                }
                return Ok(());
            }
            Framing::Unsupported => {
                return write(client, refusal(b"502 Bad Gateway")).await.map(drop);
            }
        }
        if !answer.keep_alive {
            up = None;
        }
        if !request.keep_alive {
            return Ok(());
        }
    }
}

/// Sends `head` and a body of `len` bytes: the head with the body bytes
/// already read into `buffered` in one write, then the rest read from
/// `from` and written to `to` as it comes. Hands both buffers back.
async fn send(
    mut head: Vec<u8>,
    mut buffered: Vec<u8>,
    from: &mut TcpStream,
    to: &mut TcpStream,
    len: u64,
) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let ready = buffered
        .len()
        .min(usize::try_from(len).unwrap_or(usize::MAX));
    head.extend(buffered.drain(..ready));
    let mut head = write(to, head).await?;
    let mut rest = len - ready as u64;
    while rest > 0 {
        head.clear();
        let Some(mut read) = read_more(from, head).await? else {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        };
        let take = read.len().min(usize::try_from(rest).unwrap_or(usize::MAX));
        // Bytes past this body belong to the next message.
        buffered.extend(read.drain(take..));
        rest -= take as u64;
        head = write(to, read).await?;
    }
    Ok((head, buffered))
}
