//! Candidate: hyper tuned. The upstream connection is opened with the
//! client's and its I/O is driven in the client connection's own task (no
//! task wake between the two sides), both sides write vectored, and the
//! client side flushes pipelined answers together.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;

use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::common::{connect, forward};

/// Serves one client connection until it closes.
pub async fn connection(stream: TcpStream, peer: SocketAddr, upstream: SocketAddr) {
    let Some((sender, conn)) = connect(upstream).await else {
        return;
    };
    let kept = Rc::new(Cell::new(Some(sender)));
    let peer = HeaderValue::from_str(&peer.ip().to_string()).expect("an IP is a header value");
    let service = service_fn(move |req| {
        let (kept, peer) = (kept.clone(), peer.clone());
        async move { Ok::<_, Infallible>(forward(req, &kept, &peer, upstream).await) }
    });
    let mut serve = pin!(
        http1::Builder::new()
            .writev(true)
            .pipeline_flush(true)
            .serve_connection(TokioIo::new(stream), service)
    );
    let mut conn = pin!(conn);
    tokio::select! {
        _ = &mut serve => {}
        // The upstream closed its connection: the client's goes on, its
        // next request on a new upstream connection (see `forward`).
        _ = &mut conn => { let _ = serve.await; }
    }
}
