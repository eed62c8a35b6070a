//! Candidate: Cloudflare's pingora as a library (`pingora-proxy`, no TLS
//! feature): the proxy is a `ProxyHttp` naming the upstream and adding
//! `X-Forwarded-For`; pingora parses, pools upstream connections and
//! streams bodies. One service thread, as the others.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora_core::server::Server;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_proxy::{ProxyHttp, Session};

struct Forward {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> pingora_core::Result<()> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let forwarded = match upstream_request
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prior) => format!("{prior}, {peer}"),
            None => peer,
        };
        upstream_request.insert_header("x-forwarded-for", forwarded)?;
        Ok(())
    }
}

/// Serves on `listen`, forwarding to `upstream`, until killed.
pub fn run(listen: u16, upstream: SocketAddr) -> ! {
    let conf = ServerConf {
        threads: 1,
        // A single-threaded runtime per thread, as the other candidates.
        work_stealing: false,
        // Stopped at once when the bake-off ends.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Forward { upstream });
    proxy.add_tcp(&format!("127.0.0.1:{listen}"));
    server.add_service(proxy);
    server.run_forever()
}
