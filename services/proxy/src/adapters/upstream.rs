//! Plain HTTP/1.1 connections to upstreams, kept alive and reused with
//! affinity: a client connection keeps the upstream connection its last
//! request used and sends its next request there, with no lock and no task
//! per request; when the client connection ends, its upstream connections go
//! back to a shared idle pool for the next client connection.
//!
//! Measured reason for not using hyper-util's pooled client on this path:
//! its checkout, and the task it spawns per request to return a
//! connection, cost about a tenth of the proxy's throughput against nginx
//! (`../shared/DEPENDENCIES.md`; the `proxy-bench` table shows both). h2c and
//! `https` upstreams still go through hyper-util's client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::MapErr;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::domain::routes::Upstream;

/// A client's request body on its way upstream, its failures marked as the
/// client's ([`ClientBodyError`]): a malformed chunk or a cut body is the
/// client's fault (400), never the upstream's (502).
pub enum ClientBody {
    /// Passed through as it comes.
    Streamed(MapErr<Incoming, fn(hyper::Error) -> ClientBodyError>),
    /// Read whole first (a validated request's), sent in one frame.
    Buffered(Option<Bytes>),
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            Self::Streamed(body) => std::pin::Pin::new(body).poll_frame(cx),
            Self::Buffered(data) => {
                std::task::Poll::Ready(data.take().map(|d| Ok(hyper::body::Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streamed(body) => body.is_end_stream(),
            Self::Buffered(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::Streamed(body) => body.size_hint(),
            Self::Buffered(data) => {
                hyper::body::SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// Reading the client's request body failed (bad framing, connection cut).
#[derive(Debug, thiserror::Error)]
#[error("the client's request body: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// The client's body, marked (see [`ClientBody`]).
pub fn client_body(body: Incoming) -> ClientBody {
    use http_body_util::BodyExt as _;
    ClientBody::Streamed(body.map_err(ClientBodyError as fn(hyper::Error) -> ClientBodyError))
}

/// Whether `error`, or anything that caused it, is the client's body
/// failing.
pub fn caused_by_client_body(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<ClientBodyError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Most idle connections kept per upstream.
const MAX_IDLE_PER_UPSTREAM: usize = 512;

/// Why an upstream request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened (refused, unreachable, timed out).
    #[error("cannot connect to {authority}: {reason}")]
    Connect {
        /// The upstream's host and port.
        authority: String,
        /// Why.
        reason: String,
    },
    /// The request failed on an open connection.
    #[error(transparent)]
    Request(#[from] hyper::Error),
}

/// Idle upstream connections shared by every client connection.
pub struct Http1Pool {
    idle: Mutex<HashMap<Bytes, Vec<SendRequest<ClientBody>>>>,
    connect_timeout: Duration,
}

impl Http1Pool {
    /// An empty pool; new connections get `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::default(),
            connect_timeout,
        })
    }

    fn take_idle(&self, upstream: &Upstream) -> Option<SendRequest<ClientBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&upstream.authority)?;
        while let Some(sender) = list.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, authority: Bytes, sender: SendRequest<ClientBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(authority).or_default();
        list.retain(|s| !s.is_closed());
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(sender);
        }
    }

    async fn connect(&self, upstream: &Upstream) -> Result<SendRequest<ClientBody>, UpstreamError> {
        let failed = |reason: String| UpstreamError::Connect {
            authority: upstream.authority_str().to_owned(),
            reason,
        };
        let addr = (upstream.host.as_str(), upstream.port);
        let stream =
            tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| failed(format!("no connection within {:?}", self.connect_timeout)))?
                .map_err(|e| failed(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// The upstream connections of one client connection; they go back to the
/// pool when it is dropped.
pub struct Affinity {
    pool: Arc<Http1Pool>,
    held: Mutex<Vec<(Bytes, SendRequest<ClientBody>)>>,
}

impl Affinity {
    /// Nothing held yet.
    pub fn new(pool: Arc<Http1Pool>) -> Self {
        Self {
            pool,
            held: Mutex::default(),
        }
    }

    fn take(&self, upstream: &Upstream) -> Option<SendRequest<ClientBody>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let i = held.iter().position(|(a, _)| *a == upstream.authority)?;
        Some(held.swap_remove(i).1)
    }

    /// Sends `req` (origin-form URI, `Host` set) to `upstream` on the
    /// connection this client connection used last, an idle one of the
    /// pool, or a new one.
    pub async fn send(
        &self,
        upstream: &Upstream,
        req: Request<ClientBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = match self
            .take(upstream)
            .or_else(|| self.pool.take_idle(upstream))
        {
            Some(s) => s,
            None => self.pool.connect(upstream).await?,
        };
        // A kept connection the upstream closed meanwhile: open another
        // (nothing has been sent yet, so nothing is sent twice).
        if sender.ready().await.is_err() {
            sender = self.pool.connect(upstream).await?;
            sender.ready().await?;
        }
        let res = sender.send_request(req).await?;
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((upstream.authority.clone(), sender));
        Ok(res)
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        let held = std::mem::take(self.held.get_mut().unwrap_or_else(|p| p.into_inner()));
        for (authority, sender) in held {
            self.pool.put_idle(authority, sender);
        }
    }
}
