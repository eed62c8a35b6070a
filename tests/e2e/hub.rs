//! The launcher's hub: one URL for every REST endpoint and one OpenAPI document.

use std::time::Duration;

use meridian::hub::{HubConfig, start};
use meridian_kit::CancellationToken;
use meridian_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_url_serves_every_endpoint_and_the_openapi_document() {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let config = HubConfig {
        nats_url: nats.url(),
        data_dir: dir.path().to_owned(),
        api_key: API_KEY.into(),
        jwt_secret: JWT_SECRET.into(),
        gateway_secret: tyk::GATEWAY_SECRET.into(),
        http_addr: "127.0.0.1:0".into(),
        grpc_addr: "127.0.0.1:0".into(),
        gateway_addr: "127.0.0.1:0".into(),
        heartbeat_interval: Duration::from_secs(10),
    };
    let hub = start(config, stop.clone()).await.unwrap();
    let url = format!("http://{}", hub.http_addr);
    let running = tokio::spawn(hub.run_until_stopped(Duration::from_secs(5)));
    let api = Api::new(&url, &url).with_scheduler(&url);
    let http = reqwest::Client::new();
    assert!(
        eventually(Duration::from_secs(20), || async {
            http.get(format!("{url}/readyz"))
                .send()
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        })
        .await
        .is_some()
    );

    let doc: serde_json::Value = http
        .get(format!("{url}/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with('3'));
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/api/agents/",
        "/api/agents/{id}",
        "/api/agents/{id}/sync",
        "/api/auth/token/",
        "/api/auth/token/{agent_id}",
        "/api/apis",
        "/api/apis/{id}",
        "/api/providers",
        "/api/repository/digest",
        "/api/agents/{id}/sync-jobs",
        "/api/agents/{id}/sync-jobs/{job_id}",
        "/api/agents/{id}/sync-jobs/{job_id}/runs",
        "/api/apis/{id}/history",
        "/api/events",
        "/tyk/keys",
        "/tyk/keys/{keyID}",
        "/tyk/policies/{polID}",
        "/tyk/org/keys/{keyID}",
        "/tyk/oauth/clients/{apiID}/{keyName}",
        "/api/keys/digest",
        "/api/keys/oauth/tokens/{tokenHash}",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    assert!(
        doc["components"]["schemas"]["ErrorBody"].is_object(),
        "shared error shape documented"
    );
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    assert_eq!(doc["info"]["license"]["identifier"], "Apache-2.0");
    assert!(
        doc["info"]["contact"]["name"]
            .as_str()
            .is_some_and(|n| n.contains("Meridian")),
        "{}",
        doc["info"]
    );
    // Every operation but the gateway's /hello is behind the key, says so
    // and declares the 401 (403 for the Gateway API secret, as Tyk answers); every id in a Meridian path is
    // a UUID (Tyk's ids are the user's strings); bodies may be refused as
    // invalid or too large.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = &op["responses"];
            // The gateway's health check needs no secret, as in Tyk.
            if path == "/hello" {
                assert!(op.get("security").is_none(), "{method} {path}: open in Tyk");
                continue;
            }
            assert!(op["security"].is_array(), "{method} {path}: no security");
            let tyk = op["security"][0].get("tyk_secret").is_some();
            assert_eq!(
                tyk,
                path.starts_with("/tyk/") || path.starts_with("/api/keys/"),
                "{path}"
            );
            let (denied, error_schema) = if tyk {
                ("403", "#/components/schemas/StatusMessage")
            } else {
                ("401", "#/components/schemas/ErrorBody")
            };
            assert_eq!(
                responses[denied]["content"]["application/json"]["schema"]["$ref"], error_schema,
                "{method} {path}: no {denied}"
            );
            for param in op["parameters"].as_array().into_iter().flatten() {
                if param["in"] == "path" {
                    if !tyk {
                        assert_eq!(param["schema"]["format"], "uuid", "{method} {path}");
                    }
                    assert!(responses["404"].is_object(), "{method} {path}: no 404");
                }
            }
            if op["requestBody"].is_object() {
                assert!(responses["400"].is_object(), "{method} {path}: no 400");
                assert!(responses["413"].is_object(), "{method} {path}: no 413");
            }
        }
    }
    let raw = &doc["components"]["schemas"]["DefinitionView"]["properties"]["raw"];
    assert_eq!(
        raw["type"],
        serde_json::json!(["object", "string", "null"]),
        "{raw}"
    );
    assert_eq!(
        http.get(format!("{url}/api/docs/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Every service answers on the one URL.
    let (id, _) = api.register_agent("via-hub").await;
    assert_eq!(api.get(&format!("/api/agents/{id}")).await.0, 200);
    assert_eq!(api.get("/api/apis").await.0, 200);
    let (code, jobs) = api.get(&format!("/api/agents/{id}/sync-jobs")).await;
    assert_eq!((code, jobs), (200, serde_json::json!([])));
    let (code, body) = api.get("/api/nothing-here").await;
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    let tyk = tyk::Tyk::new(&url);
    let (code, policies) = tyk.get("/tyk/policies").await;
    assert_eq!((code, policies), (200, serde_json::json!([])));
    let (code, _) = tyk.with_secret(None).get("/tyk/policies").await;
    assert_eq!(code, 403);

    stop.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_puts_separately_run_services_on_one_url() {
    use meridian::route::{Upstream, router};
    let TestHub {
        nats,
        gw,
        dir: _dir,
        inv,
        api: _,
    } = TestHub::start(|_| {}).await;
    let scheduler = start_scheduler(&nats, |_| {}).await;
    let (key_issuer, _) = tyk::start_key_issuer(&nats, |_| {}).await;
    let upstreams = [
        ("agent-gateway", &gw.rest.url),
        ("inventory", &inv.url),
        ("scheduler", &scheduler.url),
        ("key-issuer", &key_issuer.url),
    ]
    .map(|(name, url)| Upstream {
        name: name.into(),
        url: url.clone(),
    })
    .to_vec();
    let routed = router(upstreams, Duration::from_secs(10)).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, routed).await });
    let api = Api::new(&url, &url).with_scheduler(&url);

    // Each service's own endpoints, through the one URL.
    let (agent_id, _token) = api.register_agent("routed").await;
    let (code, agents) = api.get("/api/agents/").await;
    assert_eq!(code, 200);
    assert_eq!(agents[0]["id"], agent_id.as_str());
    let (code, jobs) = api.get(&format!("/api/agents/{agent_id}/sync-jobs")).await;
    assert_eq!(code, 200, "{jobs}");
    assert_eq!(jobs, serde_json::json!([]));
    let (code, bad) = api
        .post(
            &format!("/api/agents/{agent_id}/sync-jobs"),
            &serde_json::json!({"provider": "p", "repeat_every": "soon"}),
        )
        .await;
    assert_eq!(code, 400, "the scheduler's own validation answers: {bad}");
    assert!(bad["message"].as_str().unwrap().contains("repeat_every"));
    let (code, apis) = api.get("/api/apis?status=all").await;
    assert_eq!((code, &apis["total"]), (200, &serde_json::json!(0)));
    let (code, _) = api.with_key(Some("wrong")).get("/api/providers").await;
    assert_eq!(code, 401, "the key is checked by the service behind");
    let (code, missing) = api.get("/api/nothing-here").await;
    assert_eq!(code, 404);
    assert_eq!(missing["error"], "not_found");
    // The Tyk Gateway API paths go to key-issuer, which checks the secret.
    let tyk = tyk::Tyk::new(&url);
    let (code, added) = tyk
        .post(
            "/tyk/policies",
            &serde_json::json!({"id": "routed", "access_rights": {"a": {}}}),
        )
        .await;
    assert_eq!((code, added["key"].as_str()), (200, Some("routed")));
    let (code, shown) = tyk.get("/tyk/policies/routed").await;
    assert_eq!((code, shown["id"].as_str()), (200, Some("routed")));
    let (code, _) = tyk
        .with_secret(Some("not-the-secret-at-all"))
        .get("/tyk/policies")
        .await;
    assert_eq!(code, 403);

    // One document with every service's paths; ready when all are.
    let http = reqwest::Client::new();
    let doc: serde_json::Value = http
        .get(format!("{url}/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for p in [
        "/api/agents/{id}",
        "/api/agents/{id}/sync-jobs",
        "/api/apis",
        "/api/providers",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing");
    }
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    scheduler.stop().await;
    let waiting: serde_json::Value = http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(waiting["waiting_for"], serde_json::json!(["scheduler"]));
    gw.rest.stop().await;
    inv.stop().await;
}
