//! The gateway against what an attacker or a bad day sends: dot segments
//! in every spelling (a real nginx behind it normalises, as most upstreams
//! do), repeated single-valued headers, broken request framing, an
//! upstream with two framings, a thousand idle connections under a soft
//! limit of 1,024 open files, a restart while the log is long, and NATS
//! away for ten seconds.

use std::time::{Duration, Instant};

use meridian_tests::processes::{Nginx, free_port, nginx_conf};
use meridian_tests::raw_http::{self, exchange};
use meridian_tests::tyk::{GATEWAY_SECRET, Tyk, start_key_issuer, start_proxy};
use meridian_tests::upstream::Upstream;
use meridian_tests::*;
use serde_json::{Value, json};

fn api(id: &str, listen: &str, target: &str, keyless: bool) -> Value {
    json!({"api_id": id, "name": format!("API {id}"), "org_id": "acme", "active": true,
        "use_keyless": keyless, "auth": {"auth_header_name": "Authorization"},
        "proxy": {"listen_path": listen, "target_url": target, "strip_listen_path": true},
        "version_data": {"not_versioned": true, "versions": {"Default": {"name": "Default"}}}})
}

async fn reload(tyk: &Tyk) {
    let (status, body) = tyk.get("/tyk/reload?block=true").await;
    assert_eq!(status, 200, "{body}");
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// An nginx that answers which location matched and the request target it
/// received (`$request_uri`, as sent, before nginx normalised it).
fn normalising_upstream() -> (Nginx, u16) {
    let port = free_port();
    let conf = nginx_conf(&format!(
        "server {{ listen 127.0.0.1:{port};\n\
           location /open-up/ {{ return 200 \"open $request_uri\"; }}\n\
           location /keyed-up/ {{ return 200 \"SECRET $request_uri\"; }}\n\
           location /acl/admin {{ return 200 \"ADMIN $request_uri\"; }}\n\
           location /acl/ {{ return 200 \"acl $request_uri\"; }}\n\
           location / {{ return 404 \"none $request_uri\"; }}\n\
         }}"
    ));
    (
        Nginx::start(&conf, port, None).expect("nginx (scripts/setup installs nginx-light)"),
        port,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_never_pass_a_key_check_or_reach_the_upstream() {
    let (_nginx, port) = normalising_upstream();
    let nats = Nats::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let proxy = start_proxy(&nats, |_| {}).await;
    let admin = Tyk::new(&proxy.admin.url);
    let up = format!("http://127.0.0.1:{port}");
    admin
        .post_ok(
            "/tyk/apis",
            &api("open", "/open/", &format!("{up}/open-up/"), true),
        )
        .await;
    admin
        .post_ok(
            "/tyk/apis",
            &api("keyed", "/keyed/", &format!("{up}/keyed-up/"), false),
        )
        .await;
    let mut acl = api("acl", "/acl/", &up, false);
    acl["proxy"]["strip_listen_path"] = json!(false);
    admin.post_ok("/tyk/apis", &acl).await;
    let (status, key) = Tyk::new(&ki.url)
        .post(
            "/tyk/keys",
            &json!({"org_id": "acme", "access_rights": {"acl": {"api_id": "acl",
                "allowed_urls": [{"url": "^/acl/public", "methods": ["GET"]}]}}}),
        )
        .await;
    assert_eq!(status, 200, "{key}");
    let key = key["key"].as_str().unwrap().to_owned();
    reload(&admin).await;
    let gw = host_port(&proxy.gateway);

    // Every spelling of "up one level" out of the keyless API: routed by
    // the normalised path, so the keyed API asks for its key.
    for path in [
        "/open/../keyed/x",
        "/open/%2e%2e/keyed/x",
        "/open/%2E%2E/keyed/x",
        "/open/.%2e/keyed/x",
        "/open/%2e./keyed/x",
        "/open/./../keyed/x",
        "/open//../keyed/x",
        "/open/a/b/../../../keyed/x",
    ] {
        let answer = exchange(&gw, &raw_http::get(path, &[])).await.unwrap();
        assert_eq!(
            (answer.status, answer.json()),
            (401, json!({"error": "Authorization field missing"})),
            "{path}: {}",
            answer.text()
        );
    }
    // Straight at the keyed upstream's own path: no API listens there.
    for path in ["/open/../keyed-up/x", "/open/%2e%2e/keyed-up/x"] {
        let answer = exchange(&gw, &raw_http::get(path, &[])).await.unwrap();
        assert_eq!(answer.status, 404, "{path}: {}", answer.text());
    }
    // Forms upstreams disagree on are refused outright.
    for path in [
        "/open/..%2fkeyed-up/x",
        "/open/..%2Fkeyed-up/x",
        "/open/..%5ckeyed-up/x",
        "/open/..;/keyed-up/x",
        "/open/..\\keyed-up/x",
        "/open/%zz",
    ] {
        let answer = exchange(&gw, &raw_http::get(path, &[])).await.unwrap();
        assert_eq!(answer.status, 400, "{path}: {}", answer.text());
        assert!(
            answer.json()["error"].is_string(),
            "{path}: {}",
            answer.text()
        );
    }
    // Dot segments inside an API are resolved before forwarding: the
    // upstream receives the path that was checked, with none left.
    for (path, forwarded) in [
        ("/open/a/../b", "open /open-up/b"),
        ("/open/a/./b/%7e", "open /open-up/a/b/~"),
        ("/open/a%2Fb", "open /open-up/a%2Fb"),
    ] {
        let answer = exchange(&gw, &raw_http::get(path, &[])).await.unwrap();
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (200, forwarded),
            "{path}"
        );
    }
    // allowed_urls are matched on the normalised path, which is also what
    // the upstream gets.
    let auth = format!("Authorization: {key}");
    let answer = exchange(&gw, &raw_http::get("/acl/public/x", &[&auth]))
        .await
        .unwrap();
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, "acl /acl/public/x")
    );
    for path in [
        "/acl/public/../admin",
        "/acl/public/%2e%2e/admin",
        "/acl/public/./../admin",
    ] {
        let answer = exchange(&gw, &raw_http::get(path, &[&auth])).await.unwrap();
        assert_eq!(
            (answer.status, answer.json()),
            (
                403,
                json!({"error": "Access to this resource has been disallowed"})
            ),
            "{path}: {}",
            answer.text()
        );
    }
    proxy.admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_single_valued_headers_are_refused_not_forwarded() {
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let proxy = start_proxy(&nats, |_| {}).await;
    let admin = Tyk::new(&proxy.admin.url);
    let mut host = api("host", "/host", &up.url(), true);
    host["proxy"]["preserve_host_header"] = json!(true);
    admin.post_ok("/tyk/apis", &host).await;
    admin
        .post_ok("/tyk/apis", &api("keyed", "/keyed", &up.url(), false))
        .await;
    let mut custom = api("custom", "/custom", &up.url(), false);
    custom["auth"]["auth_header_name"] = json!("x-api-key");
    admin.post_ok("/tyk/apis", &custom).await;
    let (status, key) = Tyk::new(&ki.url)
        .post(
            "/tyk/keys",
            &json!({"org_id": "acme", "access_rights": {"keyed": {"api_id": "keyed"},
                "custom": {"api_id": "custom"}}}),
        )
        .await;
    assert_eq!(status, 200, "{key}");
    let key = key["key"].as_str().unwrap().to_owned();
    reload(&admin).await;
    let gw = host_port(&proxy.gateway);

    let ok = exchange(&gw, &raw_http::get("/host/x", &["Host: a.example"]))
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["headers"]["host"], "a.example");
    let cases: [(&str, Vec<String>, &str); 5] = [
        (
            "/host/x",
            vec!["Host: a.example".into(), "Host: b.example".into()],
            "host",
        ),
        (
            "/keyed/x",
            vec![
                format!("Authorization: {key}"),
                "Authorization: other".into(),
            ],
            "authorization",
        ),
        (
            "/custom/x",
            vec![format!("x-api-key: {key}"), format!("x-api-key: {key}")],
            "x-api-key",
        ),
        (
            "/host/x",
            vec!["Content-Type: a/b".into(), "Content-Type: c/d".into()],
            "content-type",
        ),
        (
            "/host/x",
            vec!["Range: bytes=0-1".into(), "Range: bytes=2-3".into()],
            "range",
        ),
    ];
    for (path, headers, name) in cases {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let answer = exchange(&gw, &raw_http::get(path, &headers)).await.unwrap();
        assert_eq!(
            (answer.status, answer.json()),
            (
                400,
                json!({"error": format!("The {name} header must appear only once")})
            ),
            "{path} {headers:?}"
        );
    }
    // A list-valued header may repeat, and the key check still holds.
    let answer = exchange(
        &gw,
        &raw_http::get(
            "/keyed/x",
            &[
                "Accept: a/b",
                "Accept: c/d",
                &format!("Authorization: {key}"),
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    proxy.admin.stop().await;
}

/// A raw upstream that answers every request with a body framed twice:
/// a stale `Content-Length: 5` and chunked `0123456789`.
async fn two_framings_upstream() -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\
                          Connection: close\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_faults_are_blamed_on_whoever_made_them() {
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let (twice, _task) = two_framings_upstream().await;
    let proxy = start_proxy(&nats, |_| {}).await;
    let admin = Tyk::new(&proxy.admin.url);
    admin
        .post_ok("/tyk/apis", &api("echo", "/echo", &up.url(), true))
        .await;
    admin
        .post_ok("/tyk/apis", &api("twice", "/twice", &twice, true))
        .await;
    reload(&admin).await;
    let gw = host_port(&proxy.gateway);

    // A malformed chunk from the client: its fault, a 400, counted as 4xx.
    let broken = b"POST /echo/x HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\
        Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nnot a size\r\n0\r\n\r\n";
    let answer = exchange(&gw, broken).await.unwrap();
    assert_eq!(
        (answer.status, answer.json()),
        (
            400,
            json!({"error": "The request body is malformed or incomplete"})
        )
    );
    // A body cut short by the client: the same.
    let cut = b"POST /echo/x HTTP/1.1\r\nHost: g\r\nContent-Length: 100\r\n\r\nonly this";
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(&gw).await.unwrap();
        stream.write_all(cut).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
            .await
            .expect("an answer")
            .unwrap();
        let answer = raw_http::parse(&raw).expect("an HTTP answer");
        assert_eq!(answer.status, 400, "{}", answer.text());
    }
    let metrics = reqwest::get(format!("{}/metrics", proxy.admin.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"meridian_gateway_requests_total{api="echo",status="4xx"} 2"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"api="echo",status="5xx""#),
        "a client's framing error counted as an upstream failure: {metrics}"
    );

    // Both framings from the upstream: the chunked body wins, whole.
    let answer = exchange(&gw, &raw_http::get("/twice/x", &[]))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "0123456789");
    proxy.admin.stop().await;
}

/// `Max open files` of a process: (soft, hard).
fn open_files_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_under_a_soft_limit_of_1024_stop_nothing() {
    // This test opens 1,100 connections itself.
    meridian_kit::listen::raise_open_files();
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let (gateway, admin) = (free_port(), free_port());
    // The common default soft limit; the hard limit stays what it is.
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 1024 && exec {}",
            workspace_binary("meridian-proxy").display()
        ))
        .env("MERIDIAN_LOG", "warn")
        .env("MERIDIAN_PROXY__NATS_URL", nats.url())
        .env("MERIDIAN_PROXY__SECRET", GATEWAY_SECRET)
        .env("MERIDIAN_PROXY__LISTEN", format!("127.0.0.1:{gateway}"))
        .env("MERIDIAN_PROXY__HTTP_ADDR", format!("127.0.0.1:{admin}"))
        .kill_on_drop(true);
    let child = command.spawn().expect("start meridian-proxy");
    let pid = child.id().unwrap();
    let tyk = Tyk::new(&format!("http://127.0.0.1:{admin}"));
    let ready = eventually(Duration::from_secs(30), || async {
        reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    assert!(ready.is_some(), "meridian-proxy did not become ready");
    let (soft, hard) = open_files_limit(pid);
    assert_eq!(
        soft, hard,
        "the proxy raises its soft limit to the hard one"
    );
    if hard <= 1_200 {
        eprintln!("SKIPPED the idle-connection part: the hard open-files limit here is {hard}");
        return;
    }
    tyk.post_ok("/tyk/apis", &api("open", "/open", &up.url(), true))
        .await;
    reload(&tyk).await;

    let mut idle = Vec::new();
    for _ in 0..1_100 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", gateway))
                .await
                .expect("connect"),
        );
    }
    let gauge = eventually(Duration::from_secs(10), || async {
        let text = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let open: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("meridian_gateway_open_connections "))?
            .trim()
            .parse()
            .ok()?;
        (open >= 1_100).then_some(open)
    })
    .await;
    assert!(
        gauge.is_some(),
        "/metrics never showed the 1,100 open connections"
    );
    let started = Instant::now();
    let answer = exchange(
        &format!("127.0.0.1:{gateway}"),
        &raw_http::get("/open/x", &[]),
    )
    .await
    .expect("answered beside 1,100 idle connections");
    assert_eq!(answer.status, 200);
    eprintln!(
        "answered in {:?} beside {} idle connections",
        started.elapsed(),
        idle.len()
    );
    drop(idle);
    drop(child);
}

/// `meridian_start_catch_up_seconds` of a service's `/metrics`.
async fn catch_up_seconds(admin: &str) -> Option<f64> {
    metric(admin, "meridian_start_catch_up_seconds").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_answers_nothing_from_a_view_that_is_behind() {
    use futures_util::StreamExt as _;
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let keys = Tyk::new(&ki.url);
    let first_proxy = start_proxy(&nats, |_| {}).await;
    Tyk::new(&first_proxy.admin.url)
        .post_ok("/tyk/apis", &api("pets", "/pets", &up.url(), false))
        .await;
    // A long log: thousands of keys, then the policy and the key asked for.
    let made: Vec<u16> = futures_util::stream::iter(0..3_000)
        .map(|i| {
            let keys = &keys;
            async move {
                keys.post(
                    "/tyk/keys",
                    &json!({"org_id": "acme", "alias": format!("filler-{i}"),
                        "access_rights": {"pets": {"api_id": "pets"}}}),
                )
                .await
                .0
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(made.iter().all(|s| *s == 200));
    let (status, _) = keys
        .post(
            "/tyk/policies",
            &json!({"id": "late", "active": true, "access_rights": {"pets": {"api_id": "pets"}}}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, last) = keys
        .post(
            "/tyk/keys",
            &json!({"org_id": "acme", "apply_policies": ["late"]}),
        )
        .await;
    assert_eq!(status, 200, "{last}");
    let last = last["key"].as_str().unwrap().to_owned();
    first_proxy.admin.stop().await;

    // A new proxy process: requests sent the moment its port exists get
    // the answer of a view that has caught up (they wait), never a 404
    // for the API or a 403 for the key.
    let (gateway, admin) = (free_port(), free_port());
    let mut proxy = tokio::process::Command::new(workspace_binary("meridian-proxy"))
        .env("MERIDIAN_LOG", "warn")
        .env("MERIDIAN_PROXY__NATS_URL", nats.url())
        .env("MERIDIAN_PROXY__SECRET", GATEWAY_SECRET)
        .env("MERIDIAN_PROXY__LISTEN", format!("127.0.0.1:{gateway}"))
        .env("MERIDIAN_PROXY__HTTP_ADDR", format!("127.0.0.1:{admin}"))
        .kill_on_drop(true)
        .spawn()
        .expect("start meridian-proxy");
    let gw = format!("127.0.0.1:{gateway}");
    let auth = format!("Authorization: {last}");
    let first = loop {
        match exchange(&gw, &raw_http::get("/pets/x", &[&auth])).await {
            Ok(answer) => break answer,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(first.status, 200, "the first answer: {}", first.text());
    for _ in 0..20 {
        let answer = exchange(&gw, &raw_http::get("/pets/x", &[&auth]))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let took = catch_up_seconds(&format!("http://127.0.0.1:{admin}")).await;
    assert!(
        took.is_some_and(|s| s > 0.0),
        "time to ready not in /metrics: {took:?}"
    );
    eprintln!(
        "meridian-proxy caught up with the log in {:.3} s",
        took.unwrap()
    );
    proxy.kill().await.unwrap();

    // A new key-issuer process: a key applying the newest policy is
    // decided on a fold that has it (never "policy not found").
    let ki_port = free_port();
    let mut second = tokio::process::Command::new(workspace_binary("meridian-key-issuer"))
        .env("MERIDIAN_LOG", "warn")
        .env("MERIDIAN_KEY_ISSUER__NATS_URL", nats.url())
        .env("MERIDIAN_KEY_ISSUER__SECRET", GATEWAY_SECRET)
        .env(
            "MERIDIAN_KEY_ISSUER__HTTP_ADDR",
            format!("127.0.0.1:{ki_port}"),
        )
        .kill_on_drop(true)
        .spawn()
        .expect("start meridian-key-issuer");
    let second_url = format!("http://127.0.0.1:{ki_port}");
    let http = reqwest::Client::new();
    let answered = loop {
        match http
            .post(format!("{second_url}/tyk/keys"))
            .header("x-tyk-authorization", GATEWAY_SECRET)
            .json(&json!({"org_id": "acme", "apply_policies": ["late"]}))
            .send()
            .await
        {
            Ok(res) => break (res.status().as_u16(), res.text().await.unwrap()),
            Err(e) if e.is_connect() => tokio::task::yield_now().await,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(answered.0, 200, "the first write: {}", answered.1);
    let took = catch_up_seconds(&second_url).await;
    assert!(
        took.is_some_and(|s| s > 0.0),
        "time to ready not in /metrics: {took:?}"
    );
    eprintln!(
        "meridian-key-issuer caught up with the log in {:.3} s",
        took.unwrap()
    );
    second.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_nats_was_away_ten_seconds_a_deleted_key_is_refused_everywhere_within_two() {
    let mut nats = Nats::start().await;
    let up = Upstream::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let keys = Tyk::new(&ki.url);
    let stale_after = |c: &mut meridian_proxy::Config| {
        c.key_view_stale_after = meridian_kit::config::HumanDuration(Duration::from_secs(2));
    };
    let a = start_proxy(&nats, stale_after).await;
    let b = start_proxy(&nats, stale_after).await;
    let admin = Tyk::new(&a.admin.url);
    admin
        .post_ok("/tyk/apis", &api("pets", "/pets", &up.url(), false))
        .await;
    let key = keys
        .post_ok(
            "/tyk/keys",
            &json!({"org_id": "acme", "access_rights": {"pets": {"api_id": "pets"}}}),
        )
        .await;
    let key = key["key"].as_str().unwrap().to_owned();
    reload(&admin).await;
    let status = |gateway: String, key: String| async move {
        reqwest::Client::new()
            .get(format!("{gateway}/pets/x"))
            .header("authorization", key)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    for p in [&a, &b] {
        assert_eq!(status(p.gateway.clone(), key.clone()).await, 200);
    }

    // NATS away for ten seconds (the scenario, not a wait for something).
    nats.server.stop();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for p in [&a, &b] {
        assert_eq!(
            status(p.gateway.clone(), key.clone()).await,
            200,
            "the keys known are still served without NATS"
        );
        let hello: Value = reqwest::get(format!("{}/hello", p.admin.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(hello["details"]["keys"]["status"], "warn", "{hello}");
        assert!(
            hello["details"]["keys"]["output"]
                .as_str()
                .is_some_and(|o| o.starts_with("unconfirmed")),
            "{hello}"
        );
        let metrics = reqwest::get(format!("{}/metrics", p.admin.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("meridian_gateway_key_view_unconfirmed 1"),
            "{metrics}"
        );
    }
    nats.server.restart().expect("nats-server restarts");
    let back = Instant::now();

    // Deleted right after NATS returns (as soon as key-issuer can write).
    let deleted = eventually(Duration::from_secs(5), || async {
        let (status, _) = keys.delete(&format!("/tyk/keys/{key}")).await;
        (status == 200).then_some(())
    })
    .await;
    assert!(
        deleted.is_some(),
        "key-issuer could not delete the key after NATS returned"
    );
    let deleted_at = Instant::now();
    for p in [&a, &b] {
        let refused = eventually(Duration::from_secs(2), || async {
            (status(p.gateway.clone(), key.clone()).await == 403).then_some(())
        })
        .await;
        assert!(
            refused.is_some(),
            "replica {} still let the deleted key through 2 s after the deletion",
            p.replica
        );
    }
    eprintln!(
        "NATS back -> key deleted in {:?}; refused on both replicas {:?} after the deletion",
        deleted_at - back,
        deleted_at.elapsed()
    );
    let hello: Value = reqwest::get(format!("{}/hello", a.admin.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(hello["details"]["keys"]["status"], "fail", "{hello}");
    a.admin.stop().await;
    b.admin.stop().await;
}

/// What a fuzzer sends the Gateway API: query strings are read as Tyk (Go)
/// reads them (the first of a repeated parameter wins, a bad escape or a
/// non-number page is tolerated), a body that is not JSON is a 400 saying
/// where; every answer is JSON and fits both documents (the client checks
/// each against Meridian's served document and Tyk's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_gateway_api_requests_get_documented_answers() {
    let nats = Nats::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let proxy = start_proxy(&nats, |_| {}).await;
    let keys = Tyk::new(&ki.url);
    let admin = Tyk::new(&proxy.admin.url);
    for path in [
        "/tyk/reload?block=true&block=nonsense",
        "/tyk/reload?block=%FF",
        "/tyk/reload?block=%zz&x",
        "/tyk/reload/group?block=true&block=%FF",
    ] {
        let (status, body) = admin.get(path).await;
        assert_eq!(
            (status, body),
            (200, json!({"status": "ok", "message": ""})),
            "{path}"
        );
    }
    let (status, key) = keys
        .post(
            "/tyk/keys/fuzzed-key",
            &json!({"org_id": "acme", "access_rights": {"x": {"api_id": "x"}}}),
        )
        .await;
    assert_eq!(status, 200, "{key}");
    // The first `hashed` wins: not hashed, so the key is found by its name.
    let (status, body) = keys
        .get("/tyk/keys/fuzzed-key?hashed=&hashed=true&x=%zz")
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = keys
        .call(
            reqwest::Method::PUT,
            "/tyk/keys/fuzzed-key",
            meridian_tests::tyk::Body::Raw("{\n  \"org_id\": \"acme\",\n}"),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["message"],
        "Request malformed: body: is not valid JSON: trailing comma (line 3, column 1)"
    );
    let (status, _) = admin
        .post(
            "/tyk/apis",
            &json!({"api_id": "x", "name": "x", "use_oauth2": true,
                "proxy": {"listen_path": "/x/", "target_url": "http://127.0.0.1:9"}}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = keys
        .post(
            "/tyk/oauth/clients/create",
            &json!({"client_id": "fuzz-client", "api_id": "x", "redirect_uri": "https://a.example/cb"}),
        )
        .await;
    assert_eq!(status, 200);
    for page in ["x", "-1", "0", "1&page=7"] {
        let (status, body) = keys
            .get(&format!(
                "/tyk/oauth/clients/x/fuzz-client/tokens?page={page}"
            ))
            .await;
        assert_eq!(status, 200, "page={page}: {body}");
        assert_eq!(body["Pagination"]["page_num"], 1, "page={page}: {body}");
    }
    proxy.admin.stop().await;
}
