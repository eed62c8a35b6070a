//! The gateway's middleware from Tyk's API definitions, on both HTTP/1.1
//! engines (a replica with the fast path and one without answer alike):
//! CORS, with preflights answered before the key check; header injection
//! both ways, with Tyk's variables; batch requests; the response cache.

use meridian_tests::raw_http::{self, exchange};
use meridian_tests::tyk::{Tyk, start_key_issuer, start_proxy};
use meridian_tests::upstream::Upstream;
use meridian_tests::*;
use serde_json::{Value, json};

use super::fastpath::{api, comparable, host_port, reload};

/// What every test here starts: NATS, an upstream, key-issuer, a replica
/// with the fast path and one without, and the first's admin API.
pub(super) struct Engines {
    pub(super) nats: Nats,
    pub(super) up: Upstream,
    pub(super) ki: meridian_tests::Running,
    pub(super) fast: meridian_tests::tyk::Proxy,
    pub(super) hyper_only: meridian_tests::tyk::Proxy,
    pub(super) admin: Tyk,
}

impl Engines {
    pub(super) async fn start() -> Self {
        let nats = Nats::start().await;
        let up = Upstream::start().await;
        let (ki, _) = start_key_issuer(&nats, |_| {}).await;
        let fast = start_proxy(&nats, |_| {}).await;
        let hyper_only = start_proxy(&nats, |c| c.http1_fast_path = false).await;
        let admin = Tyk::new(&fast.admin.url);
        Self {
            nats,
            up,
            ki,
            fast,
            hyper_only,
            admin,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_before_the_key_check_and_answers_carry_cors() {
    let Engines {
        nats: _nats,
        up,
        ki,
        fast,
        hyper_only,
        admin,
    } = Engines::start().await;
    let mut keyed = api("shop", "/shop/", &up.url(), false);
    keyed["CORS"] = json!({"enable": true, "allowed_origins": ["https://app.example", "https://*.example.org"],
        "allowed_methods": ["GET", "PUT"], "allowed_headers": ["Authorization", "X-Trace"],
        "exposed_headers": ["x-total"], "allow_credentials": true, "max_age": 600,
        "options_passthrough": false, "debug": false});
    admin.post_ok("/tyk/apis", &keyed).await;
    let mut passing = api("pass", "/pass/", &up.url(), true);
    passing["CORS"] = json!({"enable": true, "allowed_origins": null, "options_passthrough": true});
    admin.post_ok("/tyk/apis", &passing).await;
    let mut off = api("off", "/off/", &up.url(), true);
    off["CORS"] = json!({"enable": false, "allowed_origins": ["https://app.example"]});
    admin.post_ok("/tyk/apis", &off).await;
    let (status, key) = Tyk::new(&ki.url)
        .post(
            "/tyk/keys",
            &json!({"org_id": "acme", "access_rights": {"shop": {"api_id": "shop"}}}),
        )
        .await;
    assert_eq!(status, 200, "{key}");
    let key = key["key"].as_str().unwrap().to_owned();
    reload(&admin).await;

    let preflight = |path: &str, origin: &str, method: &str, headers: &str| {
        format!(
            "OPTIONS {path} HTTP/1.1\r\nHost: g\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\n{headers}Connection: close\r\n\r\n"
        )
        .into_bytes()
    };
    let auth = format!("Authorization: {key}");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "an allowed preflight, no key",
            preflight(
                "/shop/items",
                "https://app.example",
                "put",
                "Access-Control-Request-Headers: authorization, x-trace\r\n",
            ),
        ),
        (
            "a wildcard origin",
            preflight("/shop/items", "https://eu.example.org", "GET", ""),
        ),
        (
            "an origin not allowed",
            preflight("/shop/items", "https://evil.example", "GET", ""),
        ),
        (
            "a method not allowed",
            preflight("/shop/items", "https://app.example", "DELETE", ""),
        ),
        (
            "a header not allowed",
            preflight(
                "/shop/items",
                "https://app.example",
                "GET",
                "Access-Control-Request-Headers: x-other\r\n",
            ),
        ),
        (
            "a keyed GET from an allowed origin",
            raw_http::get("/shop/items", &[&auth, "Origin: https://app.example"]),
        ),
        (
            "a GET without its key: the 401 carries CORS",
            raw_http::get("/shop/items", &["Origin: https://app.example"]),
        ),
        (
            "a GET from an origin not allowed",
            raw_http::get("/shop/items", &[&auth, "Origin: https://evil.example"]),
        ),
        (
            "a preflight passed through to the upstream",
            preflight("/pass/x", "https://any.example", "POST", ""),
        ),
        (
            "CORS off",
            raw_http::get("/off/x", &["Origin: https://app.example"]),
        ),
    ];
    let mut answers = Vec::new();
    for (what, request) in &cases {
        let a = exchange(&host_port(&fast), request).await.unwrap();
        let b = exchange(&host_port(&hyper_only), request).await.unwrap();
        assert_eq!(comparable(&a), comparable(&b), "{what}");
        answers.push(a);
    }
    let headers = |i: usize| -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = answers[i]
            .headers
            .iter()
            .filter(|(n, _)| n.starts_with("access-control-") || n == "vary")
            .cloned()
            .collect();
        h.sort();
        h
    };
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = list
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    };
    let vary3 = [
        ("vary", "Origin"),
        ("vary", "Access-Control-Request-Method"),
        ("vary", "Access-Control-Request-Headers"),
    ];
    assert_eq!(answers[0].status, 200);
    assert!(answers[0].body.is_empty(), "answered here, not upstream");
    assert_eq!(
        headers(0),
        pairs(
            &[
                &vary3[..],
                &[
                    ("access-control-allow-origin", "https://app.example"),
                    ("access-control-allow-methods", "PUT"),
                    ("access-control-allow-headers", "Authorization, X-Trace"),
                    ("access-control-allow-credentials", "true"),
                    ("access-control-max-age", "600"),
                ]
            ]
            .concat()
        )
    );
    assert_eq!(
        answers[1].header("access-control-allow-origin"),
        Some("https://eu.example.org")
    );
    for i in 2..5 {
        assert_eq!(
            (answers[i].status, headers(i)),
            (200, pairs(&vary3)),
            "{}",
            cases[i].0
        );
    }
    assert_eq!(answers[5].status, 200);
    assert_eq!(answers[5].json()["path"], "/items", "reached the upstream");
    assert_eq!(
        headers(5),
        pairs(&[
            ("vary", "Origin"),
            ("access-control-allow-origin", "https://app.example"),
            ("access-control-expose-headers", "X-Total"),
            ("access-control-allow-credentials", "true"),
        ])
    );
    assert_eq!(answers[6].status, 401);
    assert_eq!(
        answers[6].header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(headers(7), pairs(&[("vary", "Origin")]));
    assert_eq!(
        answers[8].json()["method"],
        "OPTIONS",
        "the upstream answered"
    );
    assert_eq!(
        answers[8].header("access-control-allow-origin"),
        Some("*"),
        "every origin, no credentials"
    );
    assert!(headers(9).is_empty(), "CORS off: {:?}", headers(9));

    // A malformed CORS section is refused naming the field; nothing stored.
    let mut bad = api("bad", "/bad/", &up.url(), true);
    bad["CORS"] = json!({"enable": true, "max_age": -5});
    let (status, body) = admin.post("/tyk/apis", &bad).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("CORS.max_age"),
        "{body}"
    );
    assert_eq!(admin.get("/tyk/apis/bad").await.0, 404);
    let _: Value = admin.get_ok("/tyk/apis/shop").await;
    fast.admin.stop().await;
    hyper_only.admin.stop().await;
}

/// Header injection as Tyk's definitions ask for it, on both engines: the
/// version's global headers, per-path entries (first match, by method),
/// response headers and the `header_injector` processor, with
/// `$tyk_context.` and `$tyk_meta.` variables; what is not served or not
/// allowed is refused naming the field, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_injected_and_removed_both_ways_as_tyk_does() {
    let Engines {
        nats: _nats,
        up,
        ki,
        fast,
        hyper_only,
        admin,
    } = Engines::start().await;
    let rules = json!({"name": "Default",
        "global_headers": {"X-Team": "team=$tyk_meta.team", "X-Req": "$tyk_context.request_id",
            "X-Ip": "$tyk_context.remote_addr", "X-Ua": "$tyk_context.headers_User_Agent",
            "X-Color": "$tyk_context.request_data_color", "X-Unknown": "[$tyk_meta.nothing]"},
        "global_headers_remove": ["X-Secret"],
        "global_response_headers": {"X-Served-By": "meridian"},
        "global_response_headers_remove": ["Content-Type"],
        "extended_paths": {
            "transform_headers": [
                {"path": "/items/{id}", "method": "GET", "add_headers": {"X-Item": "one"}, "delete_headers": ["X-Drop"]},
                {"path": "/items", "method": "GET", "add_headers": {"X-Item": "many"}}],
            "transform_response_headers": [
                {"path": "/items/{id}", "method": "GET", "add_headers": {"X-Path": "$tyk_context.path"}}]}});
    let mut keyed = api("inj", "/inj/", &up.url(), false);
    keyed["enable_context_vars"] = json!(true);
    keyed["version_data"]["versions"]["Default"] = rules.clone();
    keyed["response_processors"] = json!([{"name": "header_injector",
        "options": {"add_headers": {"X-Processor": "$tyk_meta.team"}, "remove_headers": ["X-Upstream-Extra"]}}]);
    admin.post_ok("/tyk/apis", &keyed).await;
    // The same rules without enable_context_vars: context variables are
    // empty, as in Tyk; metadata still resolves.
    let mut plain = api("plainvars", "/plainvars/", &up.url(), false);
    plain["version_data"]["versions"]["Default"] = rules;
    admin.post_ok("/tyk/apis", &plain).await;
    let (status, key) = Tyk::new(&ki.url)
        .post(
            "/tyk/keys",
            &json!({"org_id": "acme", "meta_data": {"team": "blue"},
                "access_rights": {"inj": {"api_id": "inj"}, "plainvars": {"api_id": "plainvars"}}}),
        )
        .await;
    assert_eq!(status, 200, "{key}");
    let key = key["key"].as_str().unwrap().to_owned();
    reload(&admin).await;

    let auth = format!("Authorization: {key}");
    let asked = |path: &str, method: &str| {
        format!(
            "{method} {path}?color=red&respond-header=X-Upstream-Extra:1&respond-header=X-Kept:2 HTTP/1.1\r\n\
             Host: g\r\n{auth}\r\nUser-Agent: probe/1\r\nX-Secret: s\r\nX-Drop: d\r\nX-Item: client\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .into_bytes()
    };
    for proxy in [&fast, &hyper_only] {
        let one = exchange(&host_port(proxy), &asked("/inj/items/7", "GET"))
            .await
            .unwrap();
        assert_eq!(one.status, 200, "{}", one.text());
        let seen = &one.json()["headers"];
        assert_eq!(seen["x-team"], "team=blue");
        assert_eq!(seen["x-ip"], "127.0.0.1");
        assert_eq!(seen["x-ua"], "probe/1");
        assert_eq!(seen["x-color"], "red");
        assert_eq!(seen["x-unknown"], "[]", "an unknown variable is empty");
        let id = seen["x-req"].as_str().unwrap_or_default();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "a request id: {id:?}");
        assert_eq!(
            seen["x-item"], "one",
            "the first matching entry, replacing the client's"
        );
        for gone in ["x-secret", "x-drop"] {
            assert!(seen.get(gone).is_none(), "{gone} removed: {seen}");
        }
        assert_eq!(one.header("x-served-by"), Some("meridian"));
        assert_eq!(one.header("x-path"), Some("/inj/items/7"));
        assert_eq!(one.header("x-processor"), Some("blue"));
        assert_eq!(one.header("x-kept"), Some("2"));
        for gone in ["content-type", "x-upstream-extra"] {
            assert_eq!(one.header(gone), None, "{gone} removed from the answer");
        }

        let many = exchange(&host_port(proxy), &asked("/inj/items", "GET"))
            .await
            .unwrap();
        assert_eq!(many.json()["headers"]["x-item"], "many");
        assert_eq!(many.header("x-path"), None, "no response entry for /items");
        let post = exchange(&host_port(proxy), &asked("/inj/items/7", "POST"))
            .await
            .unwrap();
        let seen = &post.json()["headers"];
        assert_eq!(seen["x-item"], "client", "no entry for POST");
        assert_eq!(seen["x-drop"], "d");

        let off = exchange(&host_port(proxy), &asked("/plainvars/items/7", "GET"))
            .await
            .unwrap();
        let seen = &off.json()["headers"];
        assert_eq!(seen["x-team"], "team=blue");
        for empty in ["x-ip", "x-ua", "x-color", "x-req"] {
            assert_eq!(seen[empty], "", "{empty} without enable_context_vars");
        }
        assert_eq!(off.header("x-processor"), None, "no processor on this API");

        // A refusal is the gateway's own answer: no response rules.
        let refused = exchange(&host_port(proxy), &raw_http::get("/inj/items/7", &[]))
            .await
            .unwrap();
        assert_eq!(refused.status, 401);
        assert_eq!(refused.header("x-served-by"), None);
    }

    // What Meridian does not run, or the gateway owns, is refused naming
    // the field; nothing is stored.
    let cases = [
        (
            json!({"response_processors": [{"name": "response_body_transform", "options": {}}]}),
            "response_processors[0].name",
        ),
        (
            json!({"version_data": {"not_versioned": true, "versions": {"Default": {"name": "Default",
                "global_headers": {"Content-Length": "5"}}}}}),
            "version_data.versions.Default.global_headers",
        ),
        (
            json!({"version_data": {"not_versioned": true, "versions": {"Default": {"name": "Default",
                "extended_paths": {"transform_response": [{"path": "/x", "method": "GET", "template_data": {}}]}}}}}),
            "version_data.versions.Default.extended_paths.transform_response",
        ),
    ];
    for (i, (change, field)) in cases.into_iter().enumerate() {
        let id = format!("bad{i}");
        let mut bad = api(&id, &format!("/{id}/"), &up.url(), true);
        for (k, v) in change.as_object().unwrap() {
            bad[k] = v.clone();
        }
        let (status, body) = admin.post("/tyk/apis", &bad).await;
        assert_eq!(status, 400, "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{field}: {message}");
        let (status, _) = admin.get(&format!("/tyk/apis/{id}")).await;
        assert_eq!(status, 404, "nothing stored for {field}");
    }
}

/// Batch requests on both engines: each request goes through the whole
/// pipeline with its own key (counted against its rate limit), rebuilt
/// under the API's listen path; the answer is Tyk's `[{relative_url, code,
/// headers, body}]`, in the order asked; a body that is not a batch, or a
/// request that would leave the API, is a 400 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_requests_run_each_request_through_the_pipeline() {
    let Engines {
        nats: _nats,
        up,
        ki,
        fast,
        hyper_only,
        admin,
    } = Engines::start().await;
    let mut batched = api("bat", "/bat/", &up.url(), false);
    batched["enable_batch_request_support"] = json!(true);
    admin.post_ok("/tyk/apis", &batched).await;
    admin
        .post_ok("/tyk/apis", &api("nobatch", "/nobatch/", &up.url(), true))
        .await;
    let mut open = api("batopen", "/batopen/", &up.url(), true);
    open["enable_batch_request_support"] = json!(true);
    admin.post_ok("/tyk/apis", &open).await;
    let keys = Tyk::new(&ki.url);
    reload(&admin).await;

    let post_to = |api: &str, body: &str| {
        format!(
            "POST /{api}/tyk/batch/ HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let post = |body: &str| post_to("bat", body);
    for proxy in [&fast, &hyper_only] {
        // A key allowed three requests a minute, fresh for each engine.
        let (status, key) = keys
            .post(
                "/tyk/keys",
                &json!({"org_id": "acme", "rate": 3, "per": 60, "quota_max": -1,
                    "access_rights": {"bat": {"api_id": "bat"}}}),
            )
            .await;
        assert_eq!(status, 200, "{key}");
        let key = key["key"].as_str().unwrap().to_owned();
        let with_key = json!({"authorization": key, "x-part": "batch"});
        let batch = json!({"suppress_parallel_execution": true, "requests": [
            {"method": "GET", "headers": with_key, "body": "", "relative_url": "items/1?full=true"},
            {"method": "POST", "headers": with_key, "body": "{\"a\":1}", "relative_url": "items"},
            {"method": "GET", "headers": {}, "body": "", "relative_url": "items/2"},
            {"method": "GET", "headers": with_key, "body": "", "relative_url": "items/3"},
            {"method": "GET", "headers": with_key, "body": "", "relative_url": "items/4"}]});
        let answer = exchange(&host_port(proxy), &post(&batch.to_string()))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        let units = answer.json();
        let units = units.as_array().expect("a list");
        let codes: Vec<u64> = units.iter().map(|u| u["code"].as_u64().unwrap()).collect();
        assert_eq!(
            codes,
            vec![200, 200, 401, 200, 429],
            "in order; the key's three, then its rate limit; no key, a 401"
        );
        let urls: Vec<&str> = units
            .iter()
            .map(|u| u["relative_url"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls,
            [
                "items/1?full=true",
                "items",
                "items/2",
                "items/3",
                "items/4"
            ]
        );
        let first: Value = serde_json::from_str(units[0]["body"].as_str().unwrap()).unwrap();
        assert_eq!(first["path"], "/items/1", "under the listen path, stripped");
        assert_eq!(first["query"], "full=true");
        assert_eq!(first["headers"]["x-part"], "batch");
        assert_eq!(
            units[0]["headers"]["Content-Type"],
            json!(["application/json"])
        );
        let second: Value = serde_json::from_str(units[1]["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            (second["method"].as_str(), second["body_bytes"].as_u64()),
            (Some("POST"), Some(7))
        );
        assert!(
            units[2]["body"]
                .as_str()
                .unwrap()
                .contains("Authorization field missing"),
            "{}",
            units[2]
        );

        // Not a batch, or a request leaving the API: 400, nothing sent.
        let bad = exchange(&host_port(proxy), &post("{not json"))
            .await
            .unwrap();
        assert_eq!(bad.status, 400);
        assert_eq!(
            bad.json(),
            json!({"status": "error", "message": "Batch request malformed"})
        );
        let escape = json!({"requests": [
            {"method": "GET", "relative_url": "items"},
            {"method": "GET", "relative_url": "../nobatch/x"}]});
        let bad = exchange(&host_port(proxy), &post(&escape.to_string()))
            .await
            .unwrap();
        assert_eq!(bad.status, 400);
        let message = bad.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains("requests[1].relative_url"), "{message}");

        // Without enable_batch_request_support the path is the upstream's.
        let plain = exchange(&host_port(proxy), &post_to("nobatch", &batch.to_string()))
            .await
            .unwrap();
        assert_eq!(plain.json()["path"], "/tyk/batch/");
    }

    // Answers over the cap (10 MiB in all) are not collected: a 400.
    let big = json!({"requests": [
        {"method": "GET", "relative_url": "download/6000000"},
        {"method": "GET", "relative_url": "download/6000000"}]});
    let answer = exchange(&host_port(&fast), &post_to("batopen", &big.to_string()))
        .await
        .unwrap();
    assert_eq!(answer.status, 400);
    let message = answer.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("10485760 bytes"), "{message}");
}

/// The response cache on two replicas: per key (one key never gets
/// another's answer), only safe requests on cached paths, marked
/// `X-Tyk-Cached-Response: 1`, 304 for a matching `If-None-Match`;
/// concurrent misses go upstream once; `DELETE /tyk/cache/{apiID}` clears
/// every live replica before it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_cached_per_key_and_purged_on_every_replica() {
    let Engines {
        nats: _nats,
        up,
        ki,
        fast,
        hyper_only,
        admin,
    } = Engines::start().await;
    let mut cached = api("cached", "/cached/", &up.url(), false);
    cached["cache_options"] = json!({"enable_cache": true, "cache_timeout": 60,
        "cache_all_safe_requests": false, "cache_response_codes": [200]});
    cached["version_data"]["versions"]["Default"]["extended_paths"] = json!({
        "cache": ["/items", "/download"],
        "advance_cache_config": [{"method": "GET", "path": "/slow", "timeout": 60}]});
    admin.post_ok("/tyk/apis", &cached).await;
    let keys = Tyk::new(&ki.url);
    let mut made = Vec::new();
    for _ in 0..2 {
        let (status, key) = keys
            .post(
                "/tyk/keys",
                &json!({"org_id": "acme", "access_rights": {"cached": {"api_id": "cached"}}}),
            )
            .await;
        assert_eq!(status, 200, "{key}");
        made.push(format!("Authorization: {}", key["key"].as_str().unwrap()));
    }
    let (a, b) = (made[0].as_str(), made[1].as_str());
    reload(&admin).await;

    let send = |proxy: &meridian_tests::tyk::Proxy, method: &str, path: &str, headers: &[&str]| {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: g\r\nConnection: close\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        let addr = host_port(proxy);
        async move { exchange(&addr, req.as_bytes()).await.unwrap() }
    };
    let cached_mark =
        |answer: &raw_http::Answer| answer.header("x-tyk-cached-response") == Some("1");
    for proxy in [&fast, &hyper_only] {
        let first = send(proxy, "GET", "/cached/items/1?v=1", &[a]).await;
        assert_eq!(first.status, 200);
        assert!(!cached_mark(&first), "the first goes upstream");
        let again = send(proxy, "GET", "/cached/items/1?v=1", &[a]).await;
        assert!(cached_mark(&again), "then it is kept");
        assert_eq!(again.json(), first.json(), "the same answer");
        let other_key = send(proxy, "GET", "/cached/items/1?v=1", &[b]).await;
        assert!(!cached_mark(&other_key), "never another key's answer");
        assert!(cached_mark(
            &send(proxy, "GET", "/cached/items/1?v=1", &[b]).await
        ));
        let other_query = send(proxy, "GET", "/cached/items/1?v=2", &[a]).await;
        assert!(!cached_mark(&other_query));
        for (method, path) in [("GET", "/cached/other"), ("POST", "/cached/items/1?v=1")] {
            send(proxy, method, path, &[a]).await;
            let twice = send(proxy, method, path, &[a]).await;
            assert!(!cached_mark(&twice), "{method} {path} is not cached");
        }
        let no_key = send(proxy, "GET", "/cached/items/1?v=1", &[]).await;
        assert_eq!(no_key.status, 401, "the key check comes before the cache");
        // An ETag the client has: 304 from the cache.
        let tagged = "/cached/items/e?respond-header=ETag:t1";
        send(proxy, "GET", tagged, &[a]).await;
        let not_modified = send(proxy, "GET", tagged, &[a, "If-None-Match: t1"]).await;
        assert_eq!(not_modified.status, 304);
        assert!(cached_mark(&not_modified));
    }

    // Ten at once for a cold entry whose upstream takes 3 s: one goes
    // upstream, nine get what it kept.
    let together =
        futures_util::future::join_all((0..10).map(|_| send(&fast, "GET", "/cached/slow/x", &[a])))
            .await;
    assert!(together.iter().all(|r| r.status == 200));
    let upstream = together.iter().filter(|r| !cached_mark(r)).count();
    assert_eq!(upstream, 1, "concurrent misses go upstream once");
    // An answer that may not be kept (streamed, no length): all go
    // upstream, side by side after the first (a pass mark), none marked.
    let streamed = futures_util::future::join_all(
        (0..5).map(|_| send(&fast, "GET", "/cached/download/10", &[a])),
    )
    .await;
    for r in &streamed {
        assert_eq!((r.status, r.body.len()), (200, 10));
        assert!(!cached_mark(r), "not kept");
    }

    // A purge clears every live replica before it answers.
    let (status, body) = admin.delete("/tyk/cache/cached").await;
    assert_eq!(
        (status, body),
        (200, json!({"status": "ok", "message": "cache invalidated"}))
    );
    for proxy in [&fast, &hyper_only] {
        let after = send(proxy, "GET", "/cached/items/1?v=1", &[a]).await;
        assert!(!cached_mark(&after), "purged on {}", proxy.gateway);
    }

    // Caching keyed by request bodies is not served: refused, naming it.
    let mut bad = api("badcache", "/badcache/", &up.url(), true);
    bad["cache_options"] = json!({"enable_cache": true});
    bad["version_data"]["versions"]["Default"]["extended_paths"] =
        json!({"advance_cache_config": [{"method": "POST", "path": "/x"}]});
    let (status, body) = admin.post("/tyk/apis", &bad).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("advance_cache_config[0].method"),
        "{body}"
    );
}
