//! The gateway: API definitions through the Tyk Gateway API (every answer
//! checked against Meridian's OpenAPI document and Tyk's), routing, bodies
//! streamed both ways, upstream failures, every key refusal, revocation on
//! an open connection, two replicas and a blocking reload, and reload under
//! load with every error counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use meridian_tests::tyk::{GATEWAY_SECRET, Proxy, Tyk, start_key_issuer, start_proxy};
use meridian_tests::upstream::Upstream;
use meridian_tests::*;
use serde_json::{Value, json};

/// A keyless or keyed API definition on `listen` to `target`.
fn api(id: &str, listen: &str, target: &str, keyless: bool) -> Value {
    json!({"api_id": id, "name": format!("API {id}"), "org_id": "acme", "active": true,
        "use_keyless": keyless, "auth": {"auth_header_name": "Authorization"},
        "proxy": {"listen_path": listen, "target_url": target, "strip_listen_path": true},
        "version_data": {"not_versioned": true, "versions": {"Default": {"name": "Default"}}}})
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = http.request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("gateway answers");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    send(&reqwest::Client::new(), reqwest::Method::GET, url, headers).await
}

/// Every field of `sent` is in `shown` with the same value.
fn assert_contains(shown: &Value, sent: &Value, at: &str) {
    match sent {
        Value::Object(fields) => {
            for (k, v) in fields {
                assert_contains(&shown[k], v, &format!("{at}.{k}"));
            }
        }
        other => assert_eq!(shown, other, "{at}"),
    }
}

async fn reload(tyk: &Tyk) {
    let (status, body) = tyk.get("/tyk/reload?block=true").await;
    assert_eq!(
        (status, &body),
        (200, &json!({"status": "ok", "message": ""}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_definitions_round_trip_as_tyk_answers_them() {
    let nats = Nats::start().await;
    let proxy = start_proxy(&nats, |_| {}).await;
    let tyk = Tyk::new(&proxy.admin.url);

    // Created as Tyk answers; fields Meridian does not read come back.
    let mut pets = api("pets", "/pets/", "http://127.0.0.1:9", true);
    pets["CORS"] = json!({"enable": true, "allowed_origins": ["https://a.example"]});
    pets["custom_middleware"] = json!({"pre": [{"name": "kept", "path": "x.js"}]});
    let (status, body) = tyk.post("/tyk/apis", &pets).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"key": "pets", "status": "ok", "action": "added"})
        )
    );
    let (status, shown) = tyk.get("/tyk/apis/pets").await;
    assert_eq!(status, 200);
    // Every field sent comes back as sent (with defaults of the fields the
    // gateway reads added, as Tyk returns them).
    assert_contains(&shown, &pets, "");

    // Without an id, one is generated and answered.
    let (status, body) = tyk
        .post("/tyk/apis", &json!({"name": "gen", "proxy": {"listen_path": "/gen", "target_url": "http://127.0.0.1:9"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let generated = body["key"].as_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32);
    let listed = tyk.get_ok("/tyk/apis").await;
    let mut ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["api_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want = vec!["pets", generated.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);

    // Replaced, then deleted.
    pets["name"] = json!("Pets v2");
    let (status, body) = tyk.put("/tyk/apis/pets", &pets).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"key": "pets", "status": "ok", "action": "modified"})
        )
    );
    assert_eq!(tyk.get_ok("/tyk/apis/pets").await["name"], "Pets v2");
    let (status, body) = tyk.delete(&format!("/tyk/apis/{generated}")).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"key": generated, "status": "ok", "action": "deleted"})
        )
    );

    // Errors, each in Tyk's shape and naming what is wrong.
    let message = |b: &Value| b["message"].as_str().unwrap_or_default().to_owned();
    let (status, body) = tyk.get(&format!("/tyk/apis/{generated}")).await;
    assert_eq!((status, message(&body).as_str()), (404, "API not found"));
    assert_eq!(tyk.delete("/tyk/apis/nope").await.0, 404);
    assert_eq!(
        tyk.put("/tyk/apis/nope", &api("nope", "/nope", "http://x", true))
            .await
            .0,
        404
    );
    let (status, body) = tyk.post("/tyk/apis", &pets).await;
    assert_eq!(status, 400);
    assert!(message(&body).contains("already exists"), "{body}");
    let (status, body) = tyk
        .put("/tyk/apis/pets", &api("other", "/pets", "http://x", true))
        .await;
    assert_eq!(status, 400);
    assert!(message(&body).contains("does not match"), "{body}");
    for (bad, field) in [
        (
            json!({"api_id": "b1", "proxy": {"target_url": "http://x"}}),
            "proxy.listen_path",
        ),
        (
            json!({"api_id": "b2", "proxy": {"listen_path": "/b2"}}),
            "proxy.target_url",
        ),
        (
            json!({"api_id": "b3", "proxy": {"listen_path": "/b3", "target_url": "ftp://x"}}),
            "proxy.target_url",
        ),
        (
            json!({"api_id": "b4", "proxy": {"listen_path": "/b4", "target_url": "http://x"},
            "definition": {"location": "cookie"}, "version_data": {"versions": {"v1": {}}}}),
            "definition.location",
        ),
        (json!({"api_id": "b5", "proxy": "not an object"}), "proxy"),
    ] {
        let (status, body) = tyk.post("/tyk/apis", &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(message(&body).contains(field), "{field}: {body}");
    }
    let (status, body) = tyk
        .call(
            reqwest::Method::POST,
            "/tyk/apis",
            meridian_tests::tyk::Body::Raw("{not json"),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // Two active APIs on one listen path: 400 naming both; an inactive one
    // may share it.
    let (status, body) = tyk
        .post("/tyk/apis", &api("pets2", "/pets", "http://x", true))
        .await;
    assert_eq!(status, 400);
    let m = message(&body);
    assert!(
        m.contains("\"pets\"") && m.contains("\"pets2\"") && m.contains("proxy.listen_path"),
        "{m}"
    );
    let mut parked = api("pets2", "/pets/", "http://x", true);
    parked["active"] = json!(false);
    assert_eq!(tyk.post("/tyk/apis", &parked).await.0, 200);
    parked["active"] = json!(true);
    assert_eq!(tyk.put("/tyk/apis/pets2", &parked).await.0, 400);

    // The secret guards every /tyk/ route, not /hello.
    let (status, body) = tyk
        .with_secret(Some("wrong-secret-0123456789"))
        .get("/tyk/apis")
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(tyk.with_secret(None).get("/tyk/reload").await.0, 403);

    // Reloads answer as Tyk does; /hello names NATS and the views' lag.
    for path in [
        "/tyk/reload",
        "/tyk/reload?block=true",
        "/tyk/reload/group",
        "/tyk/reload/group?block=1",
    ] {
        let (status, body) = tyk.get(path).await;
        assert_eq!(
            (status, body),
            (200, json!({"status": "ok", "message": ""})),
            "{path}"
        );
    }
    let (status, hello) = tyk.with_secret(None).get("/hello").await;
    assert_eq!(status, 200);
    assert_eq!(hello["status"], "pass", "{hello}");
    assert_eq!(hello["details"]["nats"]["componentType"], "datastore");
    for view in ["apis", "keys"] {
        assert_eq!(hello["details"][view]["status"], "pass", "{hello}");
        assert!(
            hello["details"][view]["output"]
                .as_str()
                .unwrap()
                .starts_with("lag 0 events")
        );
    }

    // The agent's `meridian` provider lists the gateway's APIs for the API
    // Repository, as it lists a Tyk Dashboard's; a wrong secret fails the run.
    use meridian_agent::providers::Source;
    use meridian_agent::providers::tyk::MeridianGateway;
    let listed = MeridianGateway {
        url: proxy.admin.url.clone(),
        secret: GATEWAY_SECRET.into(),
        http: reqwest::Client::new(),
    }
    .list()
    .await
    .unwrap();
    let shown = listed
        .iter()
        .find(|a| a.provider_api_id == "pets")
        .expect("pets listed");
    assert_eq!(
        (shown.name.as_str(), shown.base_path.as_str()),
        ("Pets v2", "/pets/")
    );
    assert_eq!(shown.auth_methods, vec!["keyless"]);
    let refused = MeridianGateway {
        url: proxy.admin.url.clone(),
        secret: "wrong-secret-0123456789".into(),
        http: reqwest::Client::new(),
    }
    .list()
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused}");
    proxy.admin.stop().await;
}

/// A definition saved again unchanged is answered as any update and appends
/// nothing to `APIS`; a changed one is stored (the bounded-log issue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_definition_saved_again_appends_nothing() {
    let nats = Nats::start().await;
    let proxy = start_proxy(&nats, |_| {}).await;
    let tyk = Tyk::new(&proxy.admin.url);
    let last = || async {
        let stream = nats
            .js
            .get_stream(meridian_schemas::streams::APIS)
            .await
            .unwrap();
        stream.get_info().await.unwrap().state.last_sequence
    };
    let pets = api("pets", "/pets/", "http://127.0.0.1:9", true);
    tyk.post_ok("/tyk/apis", &pets).await;
    let stored = last().await;
    for _ in 0..3 {
        assert_eq!(
            tyk.put("/tyk/apis/pets", &pets).await,
            (
                200,
                json!({"key": "pets", "status": "ok", "action": "modified"})
            )
        );
    }
    assert_eq!(
        last().await,
        stored,
        "three unchanged saves appended nothing"
    );
    let mut renamed = pets.clone();
    renamed["name"] = json!("pets, renamed");
    tyk.put_ok("/tyk/apis/pets", &renamed).await;
    assert_eq!(last().await, stored + 1, "a changed definition is stored");
    assert_eq!(tyk.get_ok("/tyk/apis/pets").await["name"], "pets, renamed");
    // Saved back as it was: a change again, stored.
    tyk.put_ok("/tyk/apis/pets", &pets).await;
    assert_eq!(last().await, stored + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_routed_rewritten_and_streamed() {
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let other = Upstream::start().await;
    let proxy = start_proxy(&nats, |_| {}).await;
    let tyk = Tyk::new(&proxy.admin.url);
    let gw = &proxy.gateway;
    let target = format!("{}/base", up.url());

    tyk.post_ok("/tyk/apis", &api("root", "/", &other.url(), true))
        .await;
    tyk.post_ok("/tyk/apis", &api("pets", "/pets/", &target, true))
        .await;
    let mut cats = api("cats", "/pets/cats", &up.url(), true);
    cats["proxy"]["strip_listen_path"] = json!(false);
    tyk.post_ok("/tyk/apis", &cats).await;
    reload(&tyk).await;

    // Longest listen path wins; strip or keep it; the query passes.
    let (status, seen) = get(&format!("{gw}/pets/cats/1?a=b"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        (seen["path"].as_str(), seen["query"].as_str()),
        (Some("/pets/cats/1"), Some("a=b"))
    );
    let (status, seen) = get(&format!("{gw}/pets/1"), &[]).await;
    assert_eq!(status, 200, "/pets/1");
    assert_eq!(seen["path"], "/base/1");
    let (status, seen) = get(&format!("{gw}/pets"), &[]).await;
    assert_eq!(status, 200, "/pets");
    assert_eq!(seen["path"], "/base");
    let (status, seen) = get(&format!("{gw}/petshop"), &[]).await;
    assert_eq!(status, 200, "/petshop");
    assert_eq!(seen["path"], "/petshop", "the root API, not /pets");

    // Forwarding headers set, hop-by-hop ones dropped both ways, Host the
    // upstream's.
    let res = reqwest::Client::new()
        .get(format!("{gw}/pets/h"))
        .header("x-forwarded-for", "10.0.0.1")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("te", "trailers")
        .header("x-kept", "yes")
        .send()
        .await
        .unwrap();
    assert!(
        res.headers().get("keep-alive").is_none(),
        "hop-by-hop header from the upstream passed"
    );
    let seen: Value = res.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-kept"], "yes");
    assert_eq!(h["host"], up.addr.to_string());
    assert!(h.get("x-hop").is_none() && h.get("te").is_none(), "{h}");

    // Versions by header, URL segment and query parameter.
    let versioned = |id: &str, listen: &str, location: &str| {
        let mut v = api(id, listen, &up.url(), true);
        v["definition"] =
            json!({"location": location, "key": "x-api-version", "strip_versioning_data": true});
        v["version_data"] = json!({"not_versioned": false, "default_version": "",
            "versions": {"v1": {"name": "v1"}, "v2": {"name": "v2"}, "old": {"name": "old", "expires": "2001-01-01 00:00"}}});
        v
    };
    tyk.post_ok("/tyk/apis", &versioned("vh", "/vh", "header"))
        .await;
    tyk.post_ok("/tyk/apis", &versioned("vu", "/vu", "url"))
        .await;
    let mut vq = versioned("vq", "/vq", "url-param");
    vq["definition"]["key"] = json!("version");
    vq["version_data"]["default_version"] = json!("v1");
    tyk.post_ok("/tyk/apis", &vq).await;
    reload(&tyk).await;
    assert_eq!(
        get(&format!("{gw}/vh/x"), &[("x-api-version", "v1")])
            .await
            .0,
        200
    );
    let refused = |m: &str| json!({"error": m});
    assert_eq!(
        get(&format!("{gw}/vh/x"), &[]).await,
        (403, refused("Version information not found"))
    );
    assert_eq!(
        get(&format!("{gw}/vh/x"), &[("x-api-version", "v9")]).await,
        (403, refused("This API version does not seem to exist"))
    );
    assert_eq!(
        get(&format!("{gw}/vh/x"), &[("x-api-version", "old")]).await,
        (
            403,
            refused("Api Version has expired, please check documentation or contact administrator")
        )
    );
    let (status, seen) = get(&format!("{gw}/vu/v2/items"), &[]).await;
    assert_eq!(
        (status, seen["path"].as_str()),
        (200, Some("/items")),
        "the version segment stripped"
    );
    assert_eq!(get(&format!("{gw}/vq/a?version=v2"), &[]).await.0, 200);
    assert_eq!(
        get(&format!("{gw}/vq/a"), &[]).await.0,
        200,
        "the default version"
    );

    // HTTP/2 without TLS to the upstream.
    tyk.post_ok(
        "/tyk/apis",
        &api("h2", "/h2", &format!("h2c://{}", up.addr), true),
    )
    .await;
    reload(&tyk).await;
    let (status, seen) = get(&format!("{gw}/h2/x"), &[]).await;
    assert_eq!(
        (status, seen["version"].as_str()),
        (200, Some("HTTP/2.0")),
        "{seen}"
    );

    // HTTPS to an upstream whose certificate a configured CA signed; a
    // proxy without that CA refuses it (502).
    let pki = meridian_tests::pki::TestPki::generate();
    let secure = Upstream::start_tls(&pki.server_cert, &pki.server_key).await;
    let trusting = start_proxy(&nats, |c| {
        c.upstream_ca_file = Some(pki.ca.display().to_string());
    })
    .await;
    let tls_target = format!("https://localhost:{}", secure.addr.port());
    tyk.post_ok("/tyk/apis", &api("tls", "/tls", &tls_target, true))
        .await;
    reload(&tyk).await;
    let (status, seen) = get(&format!("{}/tls/x", trusting.gateway), &[]).await;
    assert_eq!((status, seen["path"].as_str()), (200, Some("/x")), "{seen}");
    assert_eq!(
        get(&format!("{gw}/tls/x"), &[]).await,
        (
            502,
            json!({"error": "There was a problem proxying the request"})
        ),
        "without the CA the upstream's certificate is refused"
    );
    trusting.admin.stop().await;

    // An unknown path: 404 in the data plane's shape.
    let nothing = start_proxy(&nats, |_| {}).await;
    let empty_tyk = Tyk::new(&nothing.admin.url);
    empty_tyk.delete_ok("/tyk/apis/root").await;
    reload(&empty_tyk).await;
    let (status, body) = get(&format!("{}/nowhere", nothing.gateway), &[]).await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string(), "{body}");
    nothing.admin.stop().await;

    // The data plane's answers are counted by API and status class.
    let metrics = reqwest::get(format!("{}/metrics", proxy.admin.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"meridian_gateway_requests_total{api="pets",status="2xx"}"#,
        r#"meridian_gateway_requests_total{api="vh",status="4xx"}"#,
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
    proxy.admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_a_separate_proxy_process() {
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let gateway = closed_port();
    let admin = closed_port();
    let mut child = tokio::process::Command::new(workspace_binary("meridian-proxy"))
        .env("MERIDIAN_PROXY__NATS_URL", nats.url())
        .env("MERIDIAN_PROXY__SECRET", GATEWAY_SECRET)
        .env("MERIDIAN_PROXY__LISTEN", format!("127.0.0.1:{gateway}"))
        .env("MERIDIAN_PROXY__HTTP_ADDR", format!("127.0.0.1:{admin}"))
        .kill_on_drop(true)
        .spawn()
        .expect("start meridian-proxy");
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
    tyk.post_ok("/tyk/apis", &api("files", "/files", &up.url(), true))
        .await;
    reload(&tyk).await;

    // 256 MB up and 256 MB down: far more than the process ever holds.
    // Up twice, each on a new connection: chunked (hyper's path) and with a
    // Content-Length (the fast path's); down chunked, on the fast path.
    const SIZE: usize = 256 * 1024 * 1024;
    for framing in ["chunked", "content-length"] {
        let chunk = bytes::Bytes::from(vec![7u8; 1024 * 1024]);
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(
            (0..SIZE / chunk.len())
                .map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
        ));
        let mut req = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{gateway}/files/upload"))
            .body(reqwest::Body::wrap(body));
        if framing == "content-length" {
            req = req.header("content-length", SIZE);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200, "{framing}");
        let seen: Value = res.json().await.unwrap();
        assert_eq!(seen["body_bytes"], SIZE as u64, "{framing}");
        let sent_as = &seen["headers"];
        assert_eq!(
            (
                sent_as.get("content-length").is_some(),
                sent_as.get("transfer-encoding").is_some()
            ),
            (framing == "content-length", framing == "chunked"),
            "{seen}"
        );
    }
    let mut res = reqwest::get(format!("http://127.0.0.1:{gateway}/files/download/{SIZE}"))
        .await
        .unwrap();
    let mut received = 0usize;
    while let Some(c) = res.chunk().await.unwrap() {
        received += c.len();
    }
    assert_eq!(received, SIZE);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(
        peak_kb < 96 * 1024,
        "the proxy peaked at {peak_kb} kB while 2 x {SIZE} bytes passed: bodies are being held"
    );
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_slow_upstream_is_a_502_or_504() {
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let proxy = start_proxy(&nats, |c| {
        c.upstream_read_timeout = meridian_kit::config::HumanDuration(Duration::from_millis(500));
    })
    .await;
    let tyk = Tyk::new(&proxy.admin.url);
    tyk.post_ok(
        "/tyk/apis",
        &api(
            "dead",
            "/dead",
            &format!("http://127.0.0.1:{}", closed_port()),
            true,
        ),
    )
    .await;
    tyk.post_ok("/tyk/apis", &api("slow", "/slow", &up.url(), false))
        .await;
    tyk.post_ok("/tyk/apis", &api("fine", "/fine", &up.url(), true))
        .await;
    reload(&tyk).await;
    assert_eq!(
        get(&format!("{}/dead/x", proxy.gateway), &[]).await,
        (
            502,
            json!({"error": "There was a problem proxying the request"})
        )
    );
    let mut slow = api("slow", "/slow", &up.url(), true);
    slow["proxy"]["strip_listen_path"] = json!(false);
    tyk.put_ok("/tyk/apis/slow", &slow).await;
    reload(&tyk).await;
    assert_eq!(
        get(&format!("{}/slow/x", proxy.gateway), &[]).await,
        (
            504,
            json!({"error": "Upstream service reached hard timeout."})
        )
    );
    assert_eq!(get(&format!("{}/fine/x", proxy.gateway), &[]).await.0, 200);
    proxy.admin.stop().await;
}

/// A key-issuer and a proxy on one NATS, with an upstream and `pets`
/// (keyed) and `open` (keyless) APIs.
struct KeyedSetup {
    _nats: Nats,
    _up: Upstream,
    keys: Tyk,
    proxy: Proxy,
    admin: Tyk,
    _ki: Running,
}

async fn keyed_setup() -> KeyedSetup {
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let proxy = start_proxy(&nats, |_| {}).await;
    let admin = Tyk::new(&proxy.admin.url);
    admin
        .post_ok("/tyk/apis", &api("pets", "/pets", &up.url(), false))
        .await;
    admin
        .post_ok("/tyk/apis", &api("open", "/open", &up.url(), true))
        .await;
    let mut custom = api("custom", "/custom", &up.url(), false);
    custom["auth"]["auth_header_name"] = json!("x-api-key");
    admin.post_ok("/tyk/apis", &custom).await;
    KeyedSetup {
        keys: Tyk::new(&ki.url),
        _nats: nats,
        _up: up,
        proxy,
        admin,
        _ki: ki,
    }
}

impl KeyedSetup {
    async fn key(&self, session: Value) -> String {
        let (status, body) = self.keys.post("/tyk/keys", &session).await;
        assert_eq!(status, 200, "{body}");
        body["key"].as_str().unwrap().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_as_tyk_checks_them() {
    let s = keyed_setup().await;
    let pets = json!({"pets": {"api_id": "pets", "versions": ["Default"]}});
    let good = s
        .key(json!({"org_id": "acme", "access_rights": pets}))
        .await;
    let other_api = s
        .key(json!({"org_id": "acme", "access_rights": {"open": {"api_id": "open"}}}))
        .await;
    let expired = s
        .key(json!({"org_id": "acme", "expires": 1_000_000, "access_rights": pets}))
        .await;
    let inactive = s
        .key(json!({"org_id": "acme", "is_inactive": true, "access_rights": pets}))
        .await;
    let urls = s
        .key(
            json!({"org_id": "acme", "access_rights": {"pets": {"api_id": "pets",
        "allowed_urls": [{"url": "^/pets/cats", "methods": ["GET"]}]}}}),
        )
        .await;
    let (status, _) = s
        .keys
        .post(
            "/tyk/policies",
            &json!({"id": "off", "is_inactive": true,
        "access_rights": pets, "active": true}),
        )
        .await;
    assert_eq!(status, 200);
    let via_off_policy = s
        .key(json!({"org_id": "acme", "apply_policies": ["off"]}))
        .await;
    let (status, _) = s
        .keys
        .post("/tyk/org/keys/shut", &json!({"is_inactive": true}))
        .await;
    assert_eq!(status, 200);
    let shut_org = s
        .key(json!({"org_id": "shut", "access_rights": pets}))
        .await;
    reload(&s.admin).await;

    let gw = &s.proxy.gateway;
    let refused = |m: &str| json!({"error": m});
    let at = |path: &str| format!("{gw}{path}");
    let bearer = format!("Bearer {good}");
    assert_eq!(
        get(&at("/pets/x"), &[("authorization", &good)]).await.0,
        200
    );
    assert_eq!(
        get(&at("/pets/x"), &[("authorization", &bearer)]).await.0,
        200
    );
    assert_eq!(get(&at("/open/x"), &[]).await.0, 200, "keyless");
    assert_eq!(
        get(&at("/custom/x"), &[("x-api-key", &good)]).await.0,
        403,
        "no access to custom"
    );
    assert_eq!(
        get(&at("/custom/x"), &[("authorization", &good)]).await,
        (401, refused("Authorization field missing")),
        "the key is read from the API's header only"
    );
    assert_eq!(
        get(&at("/pets/x"), &[]).await,
        (401, refused("Authorization field missing"))
    );
    assert_eq!(
        get(&at("/pets/x"), &[("authorization", "Bearer ")]).await.0,
        401
    );
    let disallowed = (403, refused("Access to this API has been disallowed"));
    assert_eq!(
        get(&at("/pets/x"), &[("authorization", "no-such-key")]).await,
        disallowed
    );
    assert_eq!(
        get(&at("/pets/x"), &[("authorization", &other_api)]).await,
        disallowed
    );
    assert_eq!(
        get(&at("/pets/x"), &[("authorization", &expired)]).await,
        (403, refused("Key has expired, please renew"))
    );
    assert_eq!(
        get(&at("/pets/x"), &[("authorization", &inactive)]).await,
        (403, refused("Key is inactive, please renew"))
    );
    assert_eq!(
        get(&at("/pets/x"), &[("authorization", &via_off_policy)]).await,
        (403, refused("Key is inactive, please renew")),
        "an inactive policy makes its keys inactive"
    );
    assert_eq!(
        get(&at("/pets/x"), &[("authorization", &shut_org)]).await,
        (
            403,
            refused(
                "this organisation access has been disabled, please contact your API administrator"
            )
        )
    );
    assert_eq!(
        get(&at("/pets/cats/1"), &[("authorization", &urls)])
            .await
            .0,
        200
    );
    let resource = (403, refused("Access to this resource has been disallowed"));
    assert_eq!(
        get(&at("/pets/dogs"), &[("authorization", &urls)]).await,
        resource
    );
    let (status, _) = send(
        &reqwest::Client::new(),
        reqwest::Method::DELETE,
        &at("/pets/cats/1"),
        &[("authorization", &urls)],
    )
    .await;
    assert_eq!(status, 403, "DELETE is not among the allowed methods");
    s.proxy.admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_stops_working_on_an_open_connection_within_a_second() {
    let s = keyed_setup().await;
    let pets = json!({"pets": {"api_id": "pets", "versions": ["Default"]}});
    let deleted = s
        .key(json!({"org_id": "acme", "access_rights": pets}))
        .await;
    let parked = s
        .key(json!({"org_id": "acme", "alias": "parked", "access_rights": pets}))
        .await;
    reload(&s.admin).await;

    // One TCP connection, kept open: every request below travels on it.
    let addr = s.proxy.gateway.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut conn, driver) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(driver);
    let mut status_with = async |key: &str| {
        let req = hyper::Request::get(format!("http://{addr}/pets/x"))
            .header("authorization", key)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        // The same connection, once it has finished the last exchange.
        conn.ready().await.expect("the connection stays open");
        let res = conn
            .send_request(req)
            .await
            .expect("the connection stays open");
        let status = res.status().as_u16();
        res.into_body().collect().await.unwrap();
        status
    };
    assert_eq!(status_with(&deleted).await, 200);
    assert_eq!(status_with(&parked).await, 200);

    let (status, _) = s.keys.delete(&format!("/tyk/keys/{deleted}")).await;
    assert_eq!(status, 200);
    let started = tokio::time::Instant::now();
    while status_with(&deleted).await == 200 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a deleted key still works after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut session = s.keys.get_ok(&format!("/tyk/keys/{parked}")).await;
    session["is_inactive"] = json!(true);
    assert_eq!(
        s.keys.put(&format!("/tyk/keys/{parked}"), &session).await.0,
        200
    );
    let started = tokio::time::Instant::now();
    while status_with(&parked).await == 200 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "an inactive key still works after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status_with(&parked).await, 403);
    s.proxy.admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_a_change_once_a_blocking_reload_returned() {
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let a = start_proxy(&nats, |_| {}).await;
    let b = start_proxy(&nats, |_| {}).await;
    let tyk_a = Tyk::new(&a.admin.url);
    let tyk_b = Tyk::new(&b.admin.url);
    // Both replicas are heard before the first blocking reload counts them.
    let both = eventually(Duration::from_secs(5), || async {
        let hello = tyk_a.with_secret(None).get_ok("/hello").await;
        (hello["status"] == "pass").then_some(())
    })
    .await;
    assert!(both.is_some());
    for round in 0..10 {
        let id = format!("new{round}");
        tyk_a
            .post_ok("/tyk/apis", &api(&id, &format!("/{id}"), &up.url(), true))
            .await;
        reload(&tyk_a).await;
        // No retry: once the reload returned, both replicas serve it.
        for gw in [&a.gateway, &b.gateway] {
            assert_eq!(
                get(&format!("{gw}/{id}/x"), &[]).await.0,
                200,
                "{gw} round {round}"
            );
        }
        tyk_b.delete_ok(&format!("/tyk/apis/{id}")).await;
        reload(&tyk_b).await;
        for gw in [&a.gateway, &b.gateway] {
            assert_eq!(
                get(&format!("{gw}/{id}/x"), &[]).await.0,
                404,
                "{gw} round {round}"
            );
        }
    }
    // A live replica that does not catch up: the blocking reload gives up
    // after RELOAD_TIMEOUT with a 504 naming it, and goes through once it
    // has left.
    let laggard = uuid::Uuid::new_v4();
    let announcing = meridian_kit::CancellationToken::new();
    let announcer = {
        let (client, stop) = (nats.client.clone(), announcing.clone());
        tokio::spawn(async move {
            let behind = meridian_schemas::apis::ReplicaApplied {
                replica: laggard,
                apis: 0,
                keys: 0,
                leaving: false,
            };
            while !stop.is_cancelled() {
                let payload = serde_json::to_vec(&behind).unwrap();
                client
                    .publish(
                        meridian_schemas::streams::PROXY_APPLIED_SUBJECT,
                        payload.into(),
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let gone = meridian_schemas::apis::ReplicaApplied {
                leaving: true,
                ..behind
            };
            let payload = serde_json::to_vec(&gone).unwrap();
            client
                .publish(
                    meridian_schemas::streams::PROXY_APPLIED_SUBJECT,
                    payload.into(),
                )
                .await
                .unwrap();
            client.flush().await.unwrap();
        })
    };
    let slow = start_proxy(&nats, |c| {
        c.reload_timeout = meridian_kit::config::HumanDuration(Duration::from_secs(1));
    })
    .await;
    let tyk_slow = Tyk::new(&slow.admin.url);
    let heard = eventually(Duration::from_secs(5), || async {
        let hello = tyk_slow.with_secret(None).get_ok("/hello").await;
        let live = hello["details"]["replicas"]["output"].as_str()?.to_owned();
        live.contains(&laggard.to_string()).then_some(())
    })
    .await;
    assert!(heard.is_some(), "the lagging replica is live on /hello");
    tyk_slow
        .post_ok("/tyk/apis", &api("lagging", "/lagging", &up.url(), true))
        .await;
    let (status, body) = tyk_slow.get("/tyk/reload?block=true").await;
    assert_eq!(status, 504, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&laggard.to_string()),
        "{body}"
    );
    announcing.cancel();
    announcer.await.unwrap();
    reload(&tyk_slow).await;
    slow.admin.stop().await;

    // A stopped replica leaves the live set at once: a blocking reload does
    // not wait for it.
    b.admin.stop().await;
    tyk_a
        .post_ok("/tyk/apis", &api("after", "/after", &up.url(), true))
        .await;
    let started = tokio::time::Instant::now();
    reload(&tyk_a).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    a.admin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_no_request() {
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let a = start_proxy(&nats, |_| {}).await;
    let b = start_proxy(&nats, |_| {}).await;
    let tyk = Tyk::new(&a.admin.url);
    tyk.post_ok("/tyk/apis", &api("steady", "/steady", &up.url(), true))
        .await;
    reload(&tyk).await;

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = meridian_kit::CancellationToken::new();
    let mut load = Vec::new();
    for gw in [a.gateway.clone(), b.gateway.clone()] {
        for _ in 0..4 {
            let (gw, ok, failed, stop) = (gw.clone(), ok.clone(), failed.clone(), stop.clone());
            load.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                while !stop.is_cancelled() {
                    match http.get(format!("{gw}/steady/x")).send().await {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("steady API: {:?}", other.map(|r| r.status()));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
    }
    for round in 0..20 {
        let id = format!("churn{round}");
        tyk.post_ok(
            "/tyk/apis",
            &api(&id, &format!("/churn{round}"), &up.url(), true),
        )
        .await;
        let mut changed = api(&id, &format!("/churn{round}/v2"), &up.url(), true);
        changed["name"] = json!("changed");
        tyk.put_ok(&format!("/tyk/apis/{id}"), &changed).await;
        reload(&tyk).await;
        for gw in [&a.gateway, &b.gateway] {
            assert_eq!(get(&format!("{gw}/churn{round}/v2/x"), &[]).await.0, 200);
        }
        tyk.delete_ok(&format!("/tyk/apis/{id}")).await;
    }
    stop.cancel();
    for task in load {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("steady API under reloads: {ok} answered, {failed} failed");
    assert!(ok > 500, "too little load to mean anything: {ok}");
    assert_eq!(
        failed, 0,
        "requests to the unchanged API failed during reloads"
    );
    a.admin.stop().await;
    b.admin.stop().await;
}
