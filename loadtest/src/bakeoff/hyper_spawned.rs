//! Candidate: hyper's HTTP/1 server per client connection, upstream
//! requests on a kept hyper client connection whose I/O runs in a task of
//! its own: today's data plane's shape (a channel and a task wake between
//! the two sides of every request).

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::common::forward;

/// Serves one client connection until it closes.
pub async fn connection(stream: TcpStream, peer: SocketAddr, upstream: SocketAddr) {
    let kept: Rc<Cell<Option<SendRequest<Incoming>>>> = Rc::default();
    let peer = HeaderValue::from_str(&peer.ip().to_string()).expect("an IP is a header value");
    let service = service_fn(move |req| {
        let (kept, peer) = (kept.clone(), peer.clone());
        async move { Ok::<_, Infallible>(forward(req, &kept, &peer, upstream).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
