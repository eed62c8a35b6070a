//! The gateway's middleware from Tyk's API definitions, on both HTTP/1.1
//! engines (a replica with the fast path and one without answer alike):
//! CORS, with preflights answered before the key check.

use meridian_tests::raw_http::{self, exchange};
use meridian_tests::tyk::{Tyk, start_key_issuer, start_proxy};
use meridian_tests::upstream::Upstream;
use meridian_tests::*;
use serde_json::{Value, json};

use super::fastpath::{api, comparable, host_port, reload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_before_the_key_check_and_answers_carry_cors() {
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let fast = start_proxy(&nats, |_| {}).await;
    let hyper_only = start_proxy(&nats, |c| c.http1_fast_path = false).await;
    let admin = Tyk::new(&fast.admin.url);
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
