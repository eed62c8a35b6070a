//! Candidate: a hand-written HTTP/1.1 fast path on tokio (see [`super::http1`]
//! for the heads). Bodies framed by `Content-Length` are streamed, the head
//! and the body bytes already read going out in one write. What it does not
//! handle is refused (chunked or upgraded requests 501, chunked answers
//! 502): the winner would hand those to hyper.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http1::{Framing, Parsed, parse_request, parse_response, refusal};

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
        let request = loop {
            match parse_request(&from_client, peer, &mut out) {
                Parsed::Head(head, n) => {
                    from_client.advance(n);
                    break head;
                }
                Parsed::Partial => {
                    if client.read_buf(&mut from_client).await? == 0 {
                        return Ok(());
                    }
                }
                Parsed::Bad => return client.write_all(&refusal(b"400 Bad Request")).await,
            }
        };
        let Framing::Length(body) = request.framing else {
            return client.write_all(&refusal(b"501 Not Implemented")).await;
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
        let answer = loop {
            match parse_response(&from_up, &request, &mut out) {
                Parsed::Head(head, n) => {
                    from_up.advance(n);
                    break head;
                }
                Parsed::Partial => {
                    if upstream_conn.read_buf(&mut from_up).await? == 0 {
                        return client.write_all(&refusal(b"502 Bad Gateway")).await;
                    }
                }
                Parsed::Bad => return client.write_all(&refusal(b"502 Bad Gateway")).await,
            }
        };
        match answer.framing {
            Framing::Length(n) => send(&mut out, &mut from_up, upstream_conn, client, n).await?,
            Framing::Close => {
                client.write_all(&out).await?;
                client.write_all(&from_up).await?;
                tokio::io::copy(upstream_conn, client).await?;
                return Ok(());
            }
            Framing::Unsupported => return client.write_all(&refusal(b"502 Bad Gateway")).await,
        }
        if !answer.keep_alive {
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
