//! One manual sync is one trace: the REST call (with the caller's
//! `traceparent`) through agent-gateway, over NATS and gRPC to the agent,
//! back through the SYNC stream to inventory's reconciliation, and out to the
//! public lifecycle event. Spans go to an in-memory exporter; every service
//! runs in this process, each naming itself in its spans' `service`.

use std::collections::BTreeSet;
use std::time::Duration;

use meridian_tests::*;
use opentelemetry::Value as OtelValue;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_sync_is_one_trace_across_gateway_agent_and_inventory() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    meridian_kit::telemetry::init_with("trace-test", "info", Some(provider.clone()));

    let TestHub {
        nats,
        gw,
        dir: _dir,
        inv,
        api,
    } = TestHub::start(|_| {}).await;
    let (agent_id, token) = api.register_agent("traced").await;
    let source = MemorySource::new(vec![api_def("one", "One", "1")]);
    let agent = Agent::start(&gw.grpc_url, &token, vec![("p", "tyk", source.clone())]);
    api.wait_for_total("active", 1, T).await;

    // A new API at the provider, and a manual sync from a traced caller.
    source.set(Ok(vec![
        api_def("one", "One", "1"),
        api_def("two", "Two", "1"),
    ]));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = reqwest::Client::new()
        .post(format!("{}/api/agents/{agent_id}/sync", gw.rest.url))
        .header("X-API-Key", API_KEY)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    api.wait_for_total("active", 2, T).await;

    // The public event of the new API carries the trace.
    let created = wait_for_public(&nats.js, "events.api.created.>", 2).await;
    let two = created
        .iter()
        .find(|e| e["data"]["name"] == "Two")
        .expect("created event for Two");
    let traceparent = two["traceparent"]
        .as_str()
        .expect("traceparent on the event");
    assert!(traceparent.contains(trace_id), "{traceparent}");

    // Spans of every service on the way share the caller's trace id.
    let services = eventually(T, || async {
        let _ = provider.force_flush();
        let spans = exporter.get_finished_spans().unwrap();
        let services: BTreeSet<String> = spans
            .iter()
            .filter(|s| s.span_context.trace_id().to_string() == trace_id)
            .filter_map(|s| {
                s.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == "service")
                    .map(|kv| match &kv.value {
                        OtelValue::String(v) => v.to_string(),
                        other => other.to_string(),
                    })
            })
            .collect();
        ["agent-gateway", "agent", "inventory"]
            .iter()
            .all(|s| services.contains(*s))
            .then_some(services)
    })
    .await;
    let names: BTreeSet<String> = exporter
        .get_finished_spans()
        .unwrap()
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == trace_id)
        .map(|s| s.name.to_string())
        .collect();
    assert!(services.is_some(), "spans in the trace: {names:?}");
    for name in [
        "http.request",
        "sync.request",
        "sync.run",
        "sync.run_ended",
        "inventory.reconcile",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    agent.stop().await;
    gw.rest.stop().await;
    inv.stop().await;

    // key-issuer: a traced Gateway API call is one trace from the request
    // to the public event of the key it created.
    let (key_issuer, _) = tyk::start_key_issuer(&nats, |_| {}).await;
    let key_trace = "0af7651916cd43dd8448eb211c80319c";
    let response = reqwest::Client::new()
        .post(format!("{}/tyk/keys/traced-key-0001", key_issuer.url))
        .header("x-tyk-authorization", tyk::GATEWAY_SECRET)
        .header("traceparent", format!("00-{key_trace}-b7ad6b7169203331-01"))
        .body(r#"{"access_rights": {"pets": {}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let created = wait_for_public(&nats.js, "events.key.created.>", 1).await;
    let traceparent = created[0]["traceparent"]
        .as_str()
        .expect("traceparent on the key event");
    assert!(traceparent.contains(key_trace), "{traceparent}");
    let traced = eventually(T, || async {
        let _ = provider.force_flush();
        exporter
            .get_finished_spans()
            .unwrap()
            .iter()
            .filter(|s| s.span_context.trace_id().to_string() == key_trace)
            .any(|s| {
                s.attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "service" && kv.value.as_str() == "key-issuer")
            })
            .then_some(())
    })
    .await;
    assert!(traced.is_some(), "no key-issuer span in the caller's trace");
    key_issuer.stop().await;

    // The gateway: a traced request gets a `gateway.request` span in the
    // caller's trace, and the upstream is sent that span's traceparent.
    let up = meridian_tests::upstream::Upstream::start().await;
    let proxy = tyk::start_proxy(&nats, |_| {}).await;
    let admin = tyk::Tyk::new(&proxy.admin.url);
    let (status, _) = admin
        .post(
            "/tyk/apis",
            &serde_json::json!({"api_id": "traced", "use_keyless": true,
                "proxy": {"listen_path": "/traced", "target_url": up.url()}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(admin.get("/tyk/reload?block=true").await.0, 200);
    let gateway_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let seen: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/traced/x", proxy.gateway))
        .header(
            "traceparent",
            format!("00-{gateway_trace}-00f067aa0ba902b7-01"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let forwarded = seen["headers"]["traceparent"].as_str().unwrap_or_default();
    assert!(
        forwarded.contains(gateway_trace) && !forwarded.contains("00f067aa0ba902b7"),
        "the upstream gets the gateway span's traceparent: {forwarded}"
    );
    let traced = eventually(T, || async {
        let _ = provider.force_flush();
        exporter
            .get_finished_spans()
            .unwrap()
            .iter()
            .any(|s| {
                s.span_context.trace_id().to_string() == gateway_trace
                    && s.name == "gateway.request"
            })
            .then_some(())
    })
    .await;
    assert!(
        traced.is_some(),
        "no gateway.request span in the caller's trace"
    );
    proxy.admin.stop().await;

    // portal-sync: a traced manual sync is one trace, from the request to
    // the `portal.sync` span and the public events of what it created.
    let dash = meridian_tests::fake_dashboard::FakeDashboard::start("dash-secret").await;
    dash.put_policy(serde_json::json!({"_id": "traced-policy", "name": "Traced",
        "tags": ["portal"], "access_rights": {"a": {"api_id": "a", "api_name": "A"}}}));
    let portal_sync = meridian_tests::portal::start_portal_sync(&nats, |_| {}).await;
    let portal = meridian_tests::portal::Portal::new(&portal_sync.running.url);
    let (status, created) = portal
        .post(
            "/portal-api/providers",
            &serde_json::json!({"name": "traced", "url": dash.url, "secret": "dash-secret",
                "policy_tags": "portal"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let portal_trace = "5cf92f3577b34da6a3ce929d0e0e4737";
    let response = reqwest::Client::new()
        .put(format!(
            "{}/portal-api/providers/{}/synchronize",
            portal_sync.running.url,
            created["id"].as_str().unwrap()
        ))
        .header("x-api-key", API_KEY)
        .header(
            "traceparent",
            format!("00-{portal_trace}-00f067aa0ba902b7-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let products = wait_for_public(&nats.js, "events.product.created.>", 1).await;
    let traceparent = products[0]["traceparent"].as_str().unwrap_or_default();
    assert!(
        traceparent.contains(portal_trace),
        "the Product's public event is in the sync's trace: {traceparent}"
    );
    let traced = eventually(T, || async {
        let _ = provider.force_flush();
        exporter
            .get_finished_spans()
            .unwrap()
            .iter()
            .any(|s| {
                s.span_context.trace_id().to_string() == portal_trace && s.name == "portal.sync"
            })
            .then_some(())
    })
    .await;
    assert!(
        traced.is_some(),
        "no portal.sync span in the caller's trace"
    );
    portal_sync.running.stop().await;
}
