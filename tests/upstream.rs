//! Upstreams for the gateway tests: a real HTTP server (HTTP/1.1 and h2c
//! with prior knowledge on one port) that answers with what it received,
//! counting request bodies as they stream in and streaming large answers
//! out, without holding either in memory.
//!
//! - any path: `{"method", "path", "query", "version", "headers", "body_bytes"}`,
//!   with a header `Name: value` added to the answer for each
//!   `respond-header=Name:value` in the query
//! - `/slow/...`: the same after 3 s
//! - `/download/<n>`: `n` bytes of `x`, streamed in 64 KiB chunks

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if let Some(n) = path.strip_prefix("/download/") {
        let total: usize = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = futures_util::stream::iter((0..total.div_ceil(chunk.len())).map(move |i| {
            let len = chunk.len().min(total - i * chunk.len());
            Ok::<_, Infallible>(Frame::data(chunk.slice(..len)))
        }));
        return Response::new(BodyExt::boxed(StreamBody::new(chunks)));
    }
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let mut headers = Map::new();
    for (name, value) in req.headers() {
        headers.insert(
            name.as_str().to_owned(),
            Value::String(value.to_str().unwrap_or("").to_owned()),
        );
    }
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let query = req.uri().query().unwrap_or("").to_owned();
    let mut body = req.into_body().into_data_stream();
    let mut body_bytes = 0u64;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => body_bytes += c.len() as u64,
            Err(_) => break,
        }
    }
    let out = json!({"method": method, "path": path, "query": query, "version": version,
        "headers": headers, "body_bytes": body_bytes});
    let mut res = Response::new(BodyExt::boxed(Full::new(Bytes::from(out.to_string()))));
    res.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    // A hop-by-hop header the gateway must not pass on.
    res.headers_mut()
        .insert("keep-alive", "timeout=30".parse().unwrap());
    for pair in query.split('&') {
        if let Some((name, value)) = pair
            .strip_prefix("respond-header=")
            .and_then(|h| h.split_once(':'))
            && let (Ok(name), Ok(value)) = (
                hyper::header::HeaderName::try_from(name),
                hyper::header::HeaderValue::try_from(value),
            )
        {
            res.headers_mut().append(name, value);
        }
    }
    res
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

/// Accepts connections on `listener`, each made a stream by `wrap` (TLS
/// or not), and answers them (HTTP/1.1, or HTTP/2 by its preface).
fn serve<S, F, Fut>(listener: tokio::net::TcpListener, wrap: F) -> tokio::task::JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<S>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let wrapped = wrap(stream);
            tokio::spawn(async move {
                let Some(stream) = wrapped.await else {
                    return;
                };
                let service = hyper::service::service_fn(|req| async move {
                    Ok::<_, Infallible>(answer(req).await)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

impl Upstream {
    /// Starts one on a free port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = serve(listener, |stream| async move { Some(stream) });
        Self { addr, task }
    }

    /// One on a free port speaking HTTPS with `cert` and `key` (PEM files).
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = serve(listener, move |stream| {
            let accepting = acceptor.accept(stream);
            async move { accepting.await.ok() }
        });
        Self { addr, task }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
