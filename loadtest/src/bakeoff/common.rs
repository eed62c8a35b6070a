//! What the two hyper candidates share: the request written for the
//! upstream and the answer written for the client, as today's data plane
//! writes them (hop-by-hop headers dropped, `X-Forwarded-For` appended).

use std::cell::Cell;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use meridian_kit::headers::remove_hop_by_hop;
use tokio::net::TcpStream;

/// What the client is answered: the upstream's body, or none.
pub type Body = Either<Incoming, Empty<Bytes>>;

/// A kept upstream connection: the sending half and its I/O.
pub type Upstream = (
    SendRequest<Incoming>,
    Connection<TokioIo<TcpStream>, Incoming>,
);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Opens a connection to the upstream (no Nagle delay).
pub async fn connect(upstream: SocketAddr) -> Option<Upstream> {
    let stream = TcpStream::connect(upstream).await.ok()?;
    stream.set_nodelay(true).ok()?;
    http1::handshake(TokioIo::new(stream)).await.ok()
}

/// The client's request as the upstream gets it.
pub fn to_upstream(req: &mut Request<Incoming>, peer: &HeaderValue) {
    let headers = req.headers_mut();
    remove_hop_by_hop(headers);
    let forwarded = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::to_str) {
        Some(Ok(prior)) => {
            HeaderValue::try_from(format!("{prior}, {}", peer.to_str().unwrap_or_default())).ok()
        }
        _ => Some(peer.clone()),
    };
    if let Some(v) = forwarded {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

/// The upstream's answer as the client gets it.
pub fn to_client(res: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}

/// No answer from the upstream.
pub fn bad_gateway() -> Response<Body> {
    let mut res = Response::new(Either::Right(Empty::new()));
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res
}

/// Sends `req` on the kept upstream connection (or a new one, whose I/O
/// runs in a task of its own) and answers what the upstream answered.
pub async fn forward(
    mut req: Request<Incoming>,
    kept: &Cell<Option<SendRequest<Incoming>>>,
    peer: &HeaderValue,
    upstream: SocketAddr,
) -> Response<Body> {
    let mut sender = match kept.take().filter(|s| !s.is_closed()) {
        Some(s) => s,
        None => match connect(upstream).await {
            Some((s, conn)) => {
                tokio::task::spawn_local(conn);
                s
            }
            None => return bad_gateway(),
        },
    };
    to_upstream(&mut req, peer);
    if sender.ready().await.is_err() {
        return bad_gateway();
    }
    let res = sender.send_request(req).await;
    kept.set(Some(sender));
    res.map_or_else(|_| bad_gateway(), to_client)
}
