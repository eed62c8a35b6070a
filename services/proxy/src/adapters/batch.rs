//! Runs a batch ([`crate::domain::batch`]): each request is sent to this
//! replica's own gateway listener over loopback, as Tyk sends its batch
//! requests to itself, so it goes through everything a request from a
//! client goes through (path normalisation, routing, its own key, rate
//! limits and quotas, CORS, header injection) on whichever engine serves
//! it. Answers are collected in the order asked, their bodies bounded by
//! [`MAX_REPLY`] in all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::domain::batch::{MAX_REPLY, ReplyUnit, SubRequest};

/// The client batches send their requests with (to this replica).
pub type SelfClient = Client<HttpConnector, Full<Bytes>>;

/// A client for the replica's own listener.
pub fn self_client() -> SelfClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Why a batch has no answer to give.
#[derive(Debug)]
pub enum Failed {
    /// The answers' bodies would pass [`MAX_REPLY`].
    TooLarge,
}

/// Sends `subs` to the gateway at `addr` (in order with `serial`, else all
/// at once), each within `timeout`, with `X-Forwarded-For` naming
/// `client_ip` unless the request sets one.
pub async fn run(
    client: &SelfClient,
    addr: SocketAddr,
    subs: Vec<SubRequest>,
    serial: bool,
    client_ip: &str,
    timeout: Duration,
) -> Result<Vec<ReplyUnit>, Failed> {
    let one = |sub: SubRequest| send(client, addr, sub, client_ip, timeout);
    let replies = if serial {
        let mut replies = Vec::with_capacity(subs.len());
        for sub in subs {
            replies.push(one(sub).await);
        }
        replies
    } else {
        join_all(subs.into_iter().map(one)).await
    };
    let mut total = 0usize;
    for reply in &replies {
        total = total.saturating_add(reply.body.len());
    }
    if total > MAX_REPLY || replies.iter().any(|r| r.code == 0) {
        return Err(Failed::TooLarge);
    }
    Ok(replies)
}

/// One request of the batch; an answer the gateway could not give is a
/// 502 with the reason in the body (`code` 0: its body passed the cap).
async fn send(
    client: &SelfClient,
    addr: SocketAddr,
    sub: SubRequest,
    client_ip: &str,
    timeout: Duration,
) -> ReplyUnit {
    let failed = |relative_url: String, why: &str| ReplyUnit {
        relative_url,
        code: 502,
        headers: BTreeMap::new(),
        body: serde_json::json!({ "error": why }).to_string(),
    };
    let mut req = Request::builder()
        .method(sub.method.as_str())
        .uri(format!("http://{addr}{}", sub.target));
    let mut forwarded = false;
    for (name, value) in &sub.headers {
        forwarded |= name == "x-forwarded-for";
        req = req.header(name.as_str(), value.as_str());
    }
    if !forwarded {
        req = req.header("x-forwarded-for", client_ip);
    }
    let Ok(req) = req.body(Full::new(Bytes::from(sub.body))) else {
        return failed(sub.relative_url, "the request could not be built");
    };
    let res = match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "a batch request could not be sent to this gateway");
            return failed(
                sub.relative_url,
                "The gateway could not answer this request",
            );
        }
        Err(_) => return failed(sub.relative_url, "The gateway did not answer in time"),
    };
    let (parts, body) = res.into_parts();
    let body = match tokio::time::timeout(timeout, Limited::new(body, MAX_REPLY).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return ReplyUnit {
                relative_url: sub.relative_url,
                code: 0,
                headers: BTreeMap::new(),
                body: String::new(),
            };
        }
        _ => return failed(sub.relative_url, "The answer was cut off"),
    };
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(meridian_kit::headers::canonical(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    ReplyUnit {
        relative_url: sub.relative_url,
        code: parts.status.as_u16(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}
