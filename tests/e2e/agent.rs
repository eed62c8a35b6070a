//! The real `meridian-agent` binary against a hub: two fake Tyk Dashboards
//! (classic and OAS APIs over several pages), its health probe, a provider
//! that fails alone, a deletion, and INACTIVE with APIs kept after it stops.
//! Also: a bad configuration stops it with exit code 64 naming the key.

use std::time::Duration;

use meridian::demo_provider::{DemoProvider, tyk_api};
use meridian_tests::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn oas_entry(id: &str, title: &str) -> Value {
    json!({
        "api_definition": {
            "api_id": id, "name": title, "is_oas": true,
            "proxy": {"listen_path": format!("/{id}/"), "target_url": "http://oas.internal"}
        },
        "oas": {
            "openapi": "3.0.3",
            "info": {"title": title, "version": "2.1.0"},
            "paths": {"/things": {"get": {"responses": {"200": {"description": "ok"}}}}},
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_syncs_two_dashboards_and_goes_inactive_when_stopped() {
    let TestHub {
        nats: _nats,
        gw,
        dir,
        inv,
        api,
    } = TestHub::start(fast_heartbeats).await;
    let (agent_id, token) = api.register_agent("real-agent").await;

    // 23 classic and 2 OAS APIs: three pages of ten. A second, smaller one.
    let mut entries: Vec<Value> = (0..23)
        .map(|i| {
            tyk_api(
                &format!("c{i}"),
                &format!("Classic {i}"),
                &format!("/c{i}/"),
                "http://up",
                &["t"],
            )
        })
        .collect();
    entries.push(oas_entry("o1", "OAS One"));
    entries.push(oas_entry("o2", "OAS Two"));
    let main = DemoProvider::new(entries, "main-key");
    let small = DemoProvider::new(
        (0..5)
            .map(|i| {
                tyk_api(
                    &format!("s{i}"),
                    &format!("Small {i}"),
                    "/s/",
                    "http://up",
                    &[],
                )
            })
            .collect(),
        "small-key",
    );
    let (main_url, small_url) = (
        serve_demo_provider(&main).await,
        serve_demo_provider(&small).await,
    );
    let grpc = gw.grpc_url.trim_start_matches("http://");
    let config = format!(
        r#"
governanceDashboard:
  server:
    url: "{grpc}"
  auth:
    token: "{token}"
logLevel: info
healthProbe:
  server:
    port: 0
instances:
  - name: "tyk-main"
    type: "tyk"
    config:
      host: "{main_url}"
      auth: "main-key"
  - name: "tyk-small"
    type: "tyk"
    config:
      host: "{small_url}"
      auth: "small-key"
"#
    );
    let mut agent = start_agent_binary(dir.path(), &config).await;
    let probe_port = agent.probe;

    api.wait_for_total("active", 30, T).await;
    let shown = api.get_ok(&format!("/api/agents/{agent_id}")).await;
    assert_eq!(shown["status"], "ACTIVE");
    assert_eq!(
        shown["providers"],
        json!([{"name": "tyk-main", "type": "tyk"}, {"name": "tyk-small", "type": "tyk"}])
    );
    let oas_id = meridian_schemas::ApiId::derive(
        meridian_schemas::AgentId::parse(&agent_id).unwrap(),
        "tyk-main",
        "o1",
    );
    let oas = api.get_ok(&format!("/api/apis/{oas_id}")).await;
    assert_eq!(oas["version"], "2.1.0", "{oas}");
    assert_eq!(oas["definition"]["openapi"]["info"]["title"], "OAS One");
    assert_eq!(oas["definition"]["auth_methods"], json!(["bearerAuth"]));

    // The probe: alive, and ready because the hub streams are up.
    let http = reqwest::Client::new();
    let probe = format!("http://127.0.0.1:{probe_port}");
    let alive = http.get(format!("{probe}/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), 200);
    let ready = http.get(format!("{probe}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"hub": "connected", "role": "not electing"})
    );

    // One API gone from the main dashboard: the next sync deletes it.
    main.apis.write().unwrap().retain(|e| e["api_id"] != "c7");
    api.trigger_sync(&agent_id, Some("tyk-main")).await;
    api.wait_for_total("deleted", 1, T).await;
    let deleted = api.apis("deleted").await;
    assert_eq!(deleted[0]["provider_api_id"], "c7");

    // Stopped: INACTIVE after the window, and its APIs stay.
    agent.child.kill().await.unwrap();
    let inactive = eventually(T, || async {
        let shown = api.get_ok(&format!("/api/agents/{agent_id}")).await;
        (shown["status"] == "INACTIVE").then_some(())
    })
    .await;
    assert!(
        inactive.is_some(),
        "the agent stayed ACTIVE after it stopped"
    );
    api.wait_for_total("active", 29, T).await;
    inv.stop().await;
    gw.rest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_fails_fails_only_its_own_run() {
    let TestHub {
        nats: _nats,
        gw,
        dir,
        inv,
        api,
    } = TestHub::start(|_| {}).await;
    let (_, token) = api.register_agent("mixed").await;
    let good = DemoProvider::new(vec![tyk_api("g", "Good", "/g/", "http://up", &[])], "right");
    let good_url = serve_demo_provider(&good).await;
    let config = format!(
        "governanceDashboard: {{server: {{url: \"{}\"}}, auth: {{token: \"{token}\"}}}}\n\
         healthProbe: {{server: {{port: 0}}}}\n\
         instances:\n\
         - {{name: good, type: tyk, config: {{host: \"{good_url}\", auth: right}}}}\n\
         - {{name: wrong-key, type: tyk, config: {{host: \"{good_url}\", auth: wrong}}}}\n\
         - {{name: unreachable, type: tyk, config: {{host: \"http://127.0.0.1:{}\", auth: x}}}}\n",
        gw.grpc_url,
        closed_port()
    );
    let _agent = start_agent_binary(dir.path(), &config).await;
    api.wait_for_total("active", 1, T).await;
    for (provider, mentions) in [
        ("wrong-key", "401"),
        ("unreachable", "GET http://127.0.0.1"),
    ] {
        let last = eventually(T, || async {
            let last = api.last_sync(provider).await;
            (!last.is_null()).then_some(last)
        })
        .await
        .unwrap_or_else(|| panic!("{provider} never reported a run"));
        assert_eq!(last["result"], "failed", "{provider}: {last}");
        assert!(
            last["reason"].as_str().unwrap_or("").contains(mentions),
            "{provider}: {last}"
        );
    }
    assert_eq!(api.last_sync("good").await["result"], "completed");
    inv.stop().await;
    gw.rest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_stops_the_agent_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "governanceDashboard: {server: {url: \"h:1\"}, auth: {token: t}}\nrpc: {keepalive: {time: soon}}\n",
            "rpc.keepalive.time",
        ),
        (
            "governanceDashboard: {server: {url: \"h:1\"}, auth: {token: t}}\ninstances: [{name: p, type: gcp}]\n",
            "instances[0].type",
        ),
        (
            "governanceDashboard: {server: {url: \"h:1\"}}\n",
            "governanceDashboard",
        ),
        ("{{{", "agent-config.yaml"),
        (
            "governanceDashboard: {server: {url: \"h:1\", tls: {enabled: true, caCertPath: /nonexistent/ca.pem}}, auth: {token: t}}\n",
            "governanceDashboard.server.tls.caCertPath",
        ),
        (
            "governanceDashboard: {server: {url: \"h:1\"}, auth: {token: t}}\nleaderElection: {enabled: true}\n",
            "leader election needs POD_NAME",
        ),
    ];
    let no_cluster = dir.path().join("no-kubeconfig");
    for (text, key) in cases {
        let path = dir.path().join("agent-config.yaml");
        std::fs::write(&path, text).unwrap();
        let out = tokio::process::Command::new(agent_binary())
            .arg("--config")
            .arg(&path)
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{text}: {stderr}");
    }

    // Election on, but no Kubernetes API to be found (neither in-cluster nor
    // a kubeconfig): refused at start rather than never leading.
    let path = dir.path().join("agent-config.yaml");
    std::fs::write(
        &path,
        "governanceDashboard: {server: {url: \"h:1\"}, auth: {token: t}}\nleaderElection: {enabled: true}\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(agent_binary())
        .arg("--config")
        .arg(&path)
        .env("POD_NAME", "agent-0")
        .env("POD_NAMESPACE", "agents")
        .env("KUBECONFIG", &no_cluster)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("leaderElection.enabled: cannot reach the Kubernetes API"),
        "{stderr}"
    );
}
