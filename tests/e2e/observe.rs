//! Observability: `/metrics` on every service with the metrics operators
//! scrape: requests and latencies, events published and consumed per stream,
//! consumer lag, sync runs by result, agents by status, repository size,
//! NATS reconnects; and the agent's own on its probe port.
//!
//! Every service instance has its own registry, so the values here are
//! exactly this test's traffic, whatever other tests run in the process.

use std::time::Duration;

use meridian::demo_provider::{DemoProvider, sample_apis};
use meridian_schemas::streams;
use meridian_tests::*;

const T: Duration = Duration::from_secs(30);

async fn scrape(base: &str) -> String {
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    response.text().await.unwrap()
}

/// The value of the series `name` whose labels include every one of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_its_metrics() {
    let TestHub {
        nats,
        gw,
        dir,
        inv,
        api,
    } = TestHub::start(fast_heartbeats).await;
    let scheduler = start_scheduler(&nats, |_| {}).await;
    let (agent_id, token) = api.register_agent("observed").await;
    let provider = DemoProvider::new(sample_apis(), "demo-key");
    let provider_url = serve_demo_provider(&provider).await;
    let config = tyk_agent_yaml(&gw.grpc_url, &token, &provider_url, "");
    let agent = start_agent_binary(dir.path(), &config).await;
    let probe = agent.probe;
    let n = sample_apis().len() as f64;
    api.wait_for_total("active", n as u64, T).await;
    let api = api.with_scheduler(&scheduler.url);
    let (code, _) = api.get(&format!("/api/agents/{agent_id}/sync-jobs")).await;
    assert_eq!(code, 200);
    let (code, _) = api.get("/api/repository/digest").await;
    assert_eq!(code, 200);
    // The run has ended and inventory has applied it: nothing moves now.
    let completed = eventually(T, || async {
        let last = api.last_sync("tyk").await;
        (last["result"] == "completed").then_some(())
    })
    .await;
    assert!(completed.is_some(), "the run did not complete");
    let sync = stream_count(&nats.js, streams::SYNC).await as f64;
    let agents = stream_count(&nats.js, streams::AGENTS).await as f64;
    assert!(sync >= 3.0, "started, at least one chunk, completed");

    // agent-gateway: requests, publishing, runs, agents by status, NATS.
    let text = eventually(T, || async {
        let text = scrape(&gw.rest.url).await;
        (value(&text, "meridian_agents", &[("status", "ACTIVE")]) == Some(1.0)).then_some(text)
    })
    .await
    .expect("one ACTIVE agent");
    let exact = |name: &str, labels: &[(&str, &str)]| value(&text, name, labels);
    assert_eq!(
        exact("meridian_agents", &[("status", "INACTIVE")]),
        Some(0.0)
    );
    let requests = "meridian_http_requests_total";
    let gateway = ("service", "agent-gateway");
    assert_eq!(
        exact(
            requests,
            &[gateway, ("route", "/api/agents/"), ("status", "201")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        exact(
            requests,
            &[gateway, ("route", "/api/auth/token/"), ("status", "200")]
        ),
        Some(1.0)
    );
    assert_eq!(
        exact(
            "meridian_http_request_duration_seconds_count",
            &[gateway, ("method", "POST"), ("route", "/api/agents/")]
        ),
        Some(1.0)
    );
    let published = "meridian_events_published_total";
    assert_eq!(
        exact(published, &[("stream", "SYNC")]),
        Some(sync),
        "{text}"
    );
    assert_eq!(exact(published, &[("stream", "AGENTS")]), Some(agents));
    assert_eq!(
        exact("meridian_sync_runs_total", &[("result", "completed")]),
        Some(1.0)
    );
    assert_eq!(
        exact("meridian_sync_runs_total", &[("result", "failed")]),
        None
    );
    assert_eq!(exact("meridian_nats_reconnects_total", &[]), Some(0.0));

    // inventory: consumed, lag, repository size.
    let text = scrape(&inv.url).await;
    let exact = |name: &str, labels: &[(&str, &str)]| value(&text, name, labels);
    let repository = ("consumer", "inventory-repository");
    assert_eq!(
        exact(
            "meridian_events_consumed_total",
            &[("stream", "SYNC"), repository]
        ),
        Some(sync),
        "{text}"
    );
    assert_eq!(exact("meridian_consumer_lag", &[repository]), Some(0.0));
    assert_eq!(
        exact("meridian_repository_apis", &[("status", "active")]),
        Some(n)
    );
    assert_eq!(
        exact("meridian_repository_apis", &[("status", "deleted")]),
        Some(0.0)
    );
    assert_eq!(
        exact(
            requests,
            &[
                ("service", "inventory"),
                ("route", "/api/repository/digest")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        exact("meridian_sync_runs_total", &[]),
        None,
        "the gateway's own"
    );

    // scheduler: its own requests and its folds.
    let text = scrape(&scheduler.url).await;
    let exact = |name: &str, labels: &[(&str, &str)]| value(&text, name, labels);
    assert_eq!(
        exact(
            requests,
            &[
                ("service", "scheduler"),
                ("route", "/api/agents/{id}/sync-jobs"),
                ("status", "200")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        exact(
            "meridian_events_consumed_total",
            &[("stream", "AGENTS"), ("consumer", "scheduler-agents")]
        ),
        Some(agents)
    );

    // key-issuer: its requests, what it published to KEYS and folded back.
    let (key_issuer, _) = tyk::start_key_issuer(&nats, |_| {}).await;
    let tyk = tyk::Tyk::new(&key_issuer.url);
    tyk.post_ok(
        "/tyk/policies",
        &serde_json::json!({"id": "p", "access_rights": {"a": {}}}),
    )
    .await;
    for _ in 0..3 {
        tyk.post_ok("/tyk/keys", &serde_json::json!({"apply_policies": ["p"]}))
            .await;
    }
    tyk.get_ok("/api/keys/digest").await;
    let keys = stream_count(&nats.js, streams::KEYS).await as f64;
    assert_eq!(keys, 4.0, "a policy and three keys");
    let text = scrape(&key_issuer.url).await;
    let exact = |name: &str, labels: &[(&str, &str)]| value(&text, name, labels);
    assert_eq!(
        exact(
            requests,
            &[
                ("service", "key-issuer"),
                ("route", "/tyk/keys"),
                ("status", "200")
            ]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(exact(published, &[("stream", "KEYS")]), Some(keys));
    let fold = ("consumer", "key-issuer-keys");
    assert_eq!(
        exact(
            "meridian_events_consumed_total",
            &[("stream", "KEYS"), fold]
        ),
        Some(keys),
        "every write read back: the digest caught up first"
    );
    assert_eq!(exact("meridian_consumer_lag", &[fold]), Some(0.0));
    key_issuer.stop().await;

    // portal-sync: its requests, its syncs by provider type and result,
    // what it published to PORTAL.
    let dash = meridian_tests::fake_dashboard::FakeDashboard::start("dash-secret").await;
    dash.put_policy(
        serde_json::json!({"_id": "p1", "name": "P1", "tags": ["portal"],
        "access_rights": {"a": {"api_id": "a"}}}),
    );
    let portal_sync = meridian_tests::portal::start_portal_sync(&nats, |_| {}).await;
    let portal = meridian_tests::portal::Portal::new(&portal_sync.running.url);
    let (code, created) = portal
        .post(
            "/portal-api/providers",
            &serde_json::json!({"name": "d", "url": dash.url, "secret": "dash-secret",
                "policy_tags": "portal"}),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    assert_eq!(portal.sync(id).await["status"], "ok");
    dash.fail_page(Some(1));
    assert_eq!(portal.sync(id).await["status"], "failed");
    let portal_events = stream_count(&nats.js, streams::PORTAL).await as f64;
    let text = scrape(&portal_sync.running.url).await;
    let exact = |name: &str, labels: &[(&str, &str)]| value(&text, name, labels);
    for result in ["ok", "failed"] {
        assert_eq!(
            exact(
                "meridian_portal_syncs_total",
                &[("type", "tyk"), ("result", result)]
            ),
            Some(1.0),
            "{text}"
        );
    }
    assert_eq!(
        exact(
            requests,
            &[
                ("service", "portal-sync"),
                ("route", "/portal-api/providers/{id}/synchronize"),
                ("status", "200")
            ]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        exact(published, &[("stream", "PORTAL")]),
        Some(portal_events),
        "a provider, two claims, two reports and a Product: {text}"
    );
    portal_sync.running.stop().await;

    // The agent, a process of its own: its hub link and its runs.
    let text = scrape(&format!("http://127.0.0.1:{probe}")).await;
    let exact = |name: &str, labels: &[(&str, &str)]| value(&text, name, labels);
    assert_eq!(
        exact("meridian_agent_hub_connected", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(exact("meridian_agent_leader", &[]), Some(1.0));
    assert_eq!(
        exact(
            "meridian_agent_sync_runs_total",
            &[("provider", "tyk"), ("result", "completed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        exact(
            "meridian_agent_apis_discovered_total",
            &[("provider", "tyk")]
        ),
        Some(n)
    );
    assert!(
        exact("meridian_events_published_total", &[]).is_none(),
        "the agent publishes nothing to NATS"
    );
    assert!(exact("meridian_nats_reconnects_total", &[]).is_none());

    scheduler.stop().await;
    gw.rest.stop().await;
    inv.stop().await;
}
