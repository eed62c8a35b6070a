//! The gateway's HTTP/1.1 fast path against hyper's: the same requests,
//! sent as raw bytes to a replica with the fast path and one without, get
//! the same answers and reach the upstream as the same requests; one
//! connection carries pipelined requests, refusals with bodies and a hand
//! over to hyper; upstreams that answer without a length, with 1xx
//! answers first, close kept connections silently or answer garbage are
//! passed on or refused as hyper's path does.

use std::time::Duration;

use meridian_tests::raw_http::{self, Answer, exchange};
use meridian_tests::tyk::{Proxy, Tyk, start_key_issuer, start_proxy};
use meridian_tests::upstream::Upstream;
use meridian_tests::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub(crate) fn api(id: &str, listen: &str, target: &str, keyless: bool) -> Value {
    json!({"api_id": id, "name": format!("API {id}"), "org_id": "acme", "active": true,
        "use_keyless": keyless, "auth": {"auth_header_name": "Authorization"},
        "proxy": {"listen_path": listen, "target_url": target, "strip_listen_path": true},
        "version_data": {"not_versioned": true, "versions": {"Default": {"name": "Default"}}}})
}

pub(crate) async fn reload(tyk: &Tyk) {
    let (status, body) = tyk.get("/tyk/reload?block=true").await;
    assert_eq!(status, 200, "{body}");
}

pub(crate) fn host_port(proxy: &Proxy) -> String {
    proxy.gateway.trim_start_matches("http://").to_owned()
}

/// What must be the same whichever path answered: the status, the headers
/// a client reads (`date`, hyper's header order, and what is left of a
/// quota, which each replica leases in its own blocks, aside), and the
/// body, or for an upstream's echo what the upstream received.
pub(crate) fn comparable(answer: &Answer) -> Value {
    let mut headers: Vec<(String, String)> = answer
        .headers
        .iter()
        .filter(|(n, _)| n != "date" && n != "x-ratelimit-remaining")
        .cloned()
        .collect();
    headers.sort();
    let body = match answer.json() {
        Value::Null => Value::String(answer.text()),
        json => json,
    };
    json!({"status": answer.status, "headers": headers, "body": body})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_answers_every_request_as_hyper_does() {
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let fast = start_proxy(&nats, |_| {}).await;
    let hyper_only = start_proxy(&nats, |c| c.http1_fast_path = false).await;
    let admin = Tyk::new(&fast.admin.url);
    admin
        .post_ok("/tyk/apis", &api("open", "/open/", &up.url(), true))
        .await;
    admin
        .post_ok("/tyk/apis", &api("keyed", "/keyed/", &up.url(), false))
        .await;
    let (status, key) = Tyk::new(&ki.url)
        .post(
            "/tyk/keys",
            &json!({"org_id": "acme", "quota_max": 100, "quota_renewal_rate": 3600,
                "access_rights": {"keyed": {"api_id": "keyed"}}}),
        )
        .await;
    assert_eq!(status, 200, "{key}");
    let key = key["key"].as_str().unwrap().to_owned();
    reload(&admin).await;

    let auth = format!("Authorization: {key}");
    let requests: Vec<(&str, Vec<u8>)> = vec![
        (
            "a GET with a query, forwarding and hop-by-hop headers",
            raw_http::get(
                "/open/a/b?x=1&y=%20",
                &[
                    "X-Forwarded-For: 10.0.0.1",
                    "Connection: close, x-hop",
                    "X-Hop: 1",
                    "TE: trailers",
                    "X-Kept: yes",
                    "Keep-Alive: timeout=5",
                ],
            ),
        ),
        (
            "a POST with a body",
            b"POST /open/post HTTP/1.1\r\nHost: g\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world".to_vec(),
        ),
        ("a HEAD", b"HEAD /open/h HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n".to_vec()),
        ("no key", raw_http::get("/keyed/x", &[])),
        ("a key", raw_http::get("/keyed/x", &[&auth])),
        ("a bad key", raw_http::get("/keyed/x", &["Authorization: nope"])),
        ("no API", raw_http::get("/nowhere", &[])),
        ("a hidden dot segment", raw_http::get("/open/..%2fkeyed/x", &[])),
        ("dot segments", raw_http::get("/open/a/../%7eb", &[])),
        ("two Host headers", raw_http::get("/open/x", &["Host: a", "Host: b"])),
        ("two keys", raw_http::get("/keyed/x", &[&auth, &auth])),
        (
            "HTTP/1.0 (hyper's)",
            b"GET /open/old HTTP/1.0\r\nHost: g\r\n\r\n".to_vec(),
        ),
        (
            "a chunked body (hyper's)",
            b"POST /open/chunks HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "Expect: 100-continue (hyper's)",
            b"POST /open/expect HTTP/1.1\r\nHost: g\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec(),
        ),
        ("a chunked answer", raw_http::get("/open/download/200000", &[])),
    ];
    for (what, request) in &requests {
        let answer = |gw: String| async move {
            let mut raw = raw_http::exchange_bytes(&gw, request).await.unwrap();
            // The interim answer to `Expect: 100-continue` comes first.
            let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
            if request.windows(7).any(|w| w == b"Expect:") {
                assert!(raw.starts_with(interim), "{what}");
                raw.drain(..interim.len());
            }
            if request.starts_with(b"HEAD ") {
                raw_http::parse_head(&raw)
            } else {
                raw_http::parse(&raw)
            }
            .unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&raw)))
        };
        let a = answer(host_port(&fast)).await;
        let b = answer(host_port(&hyper_only)).await;
        assert_eq!(comparable(&a), comparable(&b), "{what}");
        assert!(a.header("date").is_some(), "{what}: no Date");
    }
    // And what the upstream received is right, not only alike.
    let first = exchange(&host_port(&fast), &requests[0].1).await.unwrap();
    let seen = &first.json()["headers"];
    assert_eq!(seen["x-forwarded-for"], "10.0.0.1, 127.0.0.1", "{seen}");
    assert_eq!(seen["host"], up.addr.to_string());
    assert_eq!(seen["x-kept"], "yes");
    assert!(
        seen.get("x-hop").is_none() && seen.get("te").is_none() && seen.get("keep-alive").is_none(),
        "{seen}"
    );
    assert_eq!(first.json()["query"], "x=1&y=%20");
    let download = exchange(&host_port(&fast), &requests.last().unwrap().1)
        .await
        .unwrap();
    assert_eq!(download.body.len(), 200_000);
    let keyed = exchange(&host_port(&fast), &requests[4].1).await.unwrap();
    assert_eq!(keyed.status, 200);
    assert!(
        keyed.header("x-ratelimit-limit") == Some("100"),
        "the quota's headers: {:?}",
        keyed.headers
    );
    // Both paths were taken: hyper served only what the fast path hands
    // over, on the replica that has one.
    let handed = |url: String| async move {
        let metrics = reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("meridian_gateway_hyper_connections_total"))
            .and_then(|v| v.trim_start_matches("{}").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("meridian_gateway_hyper_connections_total: {metrics}"))
    };
    assert_eq!(
        handed(fast.admin.url.clone()).await,
        3,
        "HTTP/1.0, chunked, Expect"
    );
    assert_eq!(
        handed(hyper_only.admin.url.clone()).await,
        requests.len() as u64
    );
    fast.admin.stop().await;
    hyper_only.admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_pipelined_requests_refusals_and_a_hand_over_to_hyper() {
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let proxy = start_proxy(&nats, |_| {}).await;
    let admin = Tyk::new(&proxy.admin.url);
    admin
        .post_ok("/tyk/apis", &api("open", "/open/", &up.url(), true))
        .await;
    admin
        .post_ok("/tyk/apis", &api("keyed", "/keyed/", &up.url(), false))
        .await;
    admin
        .post_ok(
            "/tyk/apis",
            &api("h2", "/h2/", &format!("h2c://{}", up.addr), true),
        )
        .await;
    reload(&admin).await;

    // All in one write: two plain requests, a refused one whose body must
    // be skipped, one for an h2c upstream (hyper takes the connection over
    // from there), and one more after it.
    let pipelined = [
        &b"GET /open/1 HTTP/1.1\r\nHost: g\r\n\r\n"[..],
        b"POST /open/2 HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /keyed/3 HTTP/1.1\r\nHost: g\r\nContent-Length: 4\r\n\r\nGET ",
        b"GET /h2/4 HTTP/1.1\r\nHost: g\r\n\r\n",
        b"GET /open/5 HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
    ]
    .concat();
    let mut stream = tokio::net::TcpStream::connect(host_port(&proxy))
        .await
        .unwrap();
    stream.write_all(&pipelined).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("the connection closes after the last request")
        .unwrap();
    let answers = raw_http::parse_all(&raw).unwrap();
    let got: Vec<(u16, Value, Value)> = answers
        .iter()
        .map(|a| {
            (
                a.status,
                a.json()["path"].clone(),
                a.json()["version"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (200, json!("/1"), json!("HTTP/1.1")),
            (200, json!("/2"), json!("HTTP/1.1")),
            (401, Value::Null, Value::Null),
            (200, json!("/4"), json!("HTTP/2.0")),
            (200, json!("/5"), json!("HTTP/1.1")),
        ],
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(answers[1].json()["body_bytes"], 3);
    assert_eq!(
        answers[2].json(),
        json!({"error": "Authorization field missing"})
    );

    // A body far larger than what is skipped after a refusal: answered,
    // and the connection closed rather than read on.
    let mut stream = tokio::net::TcpStream::connect(host_port(&proxy))
        .await
        .unwrap();
    stream
        .write_all(b"POST /keyed/big HTTP/1.1\r\nHost: g\r\nContent-Length: 10000000\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("closed after the refusal")
        .unwrap();
    let answer = raw_http::parse(&raw).unwrap();
    assert_eq!(
        (answer.status, answer.header("connection")),
        (401, Some("close"))
    );
    proxy.admin.stop().await;
}

/// An upstream on a free port that answers every request head it reads
/// with `answer`, then closes the connection when `close` (without saying
/// so in the answer).
async fn scripted_upstream(answer: &'static [u8], close: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(answer).await.is_err() || close {
                            return;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_upstream_answers_are_passed_on_or_refused() {
    let nats = Nats::start().await;
    let proxy = start_proxy(&nats, |_| {}).await;
    let admin = Tyk::new(&proxy.admin.url);
    let ups = [
        (
            "unframed",
            scripted_upstream(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the end", true).await,
        ),
        (
            "hints",
            scripted_upstream(
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                false,
            )
            .await,
        ),
        (
            "hangup",
            scripted_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true).await,
        ),
        (
            "garbage",
            scripted_upstream(b"SSH-2.0-OpenSSH\r\n\r\n", true).await,
        ),
        (
            "trailers",
            scripted_upstream(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n",
                false,
            )
            .await,
        ),
    ];
    for (id, target) in &ups {
        admin
            .post_ok("/tyk/apis", &api(id, &format!("/{id}/"), target, true))
            .await;
    }
    reload(&admin).await;
    let gw = host_port(&proxy);

    let unframed = exchange(&gw, &raw_http::get("/unframed/x", &[]))
        .await
        .unwrap();
    assert_eq!(
        (
            unframed.status,
            unframed.text().as_str(),
            unframed.header("x-a")
        ),
        (200, "until the end", Some("1"))
    );
    let hints = exchange(&gw, &raw_http::get("/hints/x", &[]))
        .await
        .unwrap();
    assert_eq!((hints.status, hints.text().as_str()), (200, "ok"));
    let trailers = exchange(&gw, &raw_http::get("/trailers/x", &[]))
        .await
        .unwrap();
    assert_eq!((trailers.status, trailers.text().as_str()), (200, "abcde"));
    let garbage = exchange(&gw, &raw_http::get("/garbage/x", &[]))
        .await
        .unwrap();
    assert_eq!(
        (garbage.status, garbage.json()),
        (
            502,
            json!({"error": "There was a problem proxying the request"})
        )
    );
    // An upstream that closes every kept connection right after answering,
    // without saying so: one client connection, request after request,
    // never a 502 (a connection found closed is replaced, and a request
    // that met a closed one is sent again on a new one).
    let mut stream = tokio::net::TcpStream::connect(&gw).await.unwrap();
    for i in 0..30 {
        let last = i == 29;
        let request = format!(
            "GET /hangup/{i} HTTP/1.1\r\nHost: g\r\n{}\r\n",
            if last { "Connection: close\r\n" } else { "" }
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        if i % 3 == 0 {
            // Now and then give the upstream's close time to arrive first.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        let answer = loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "request {i}: the gateway closed the connection");
            raw.extend_from_slice(&chunk[..n]);
            if let Ok(answer) = raw_http::parse(&raw)
                && answer.body.len() == 2
            {
                break answer;
            }
        };
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (200, "ok"),
            "request {i}"
        );
    }
    proxy.admin.stop().await;
}
