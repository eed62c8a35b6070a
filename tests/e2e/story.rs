//! The repository's story over gRPC: created, deleted, failed, restored,
//! updated; agent status; a sync asked on another gateway replica.

use std::time::Duration;

use meridian_schemas::lifecycle::LifecycleKind;
use meridian_tests::*;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

async fn trigger(api: &Api, agent: &str) -> String {
    api.trigger_sync(agent, None).await.remove(0)
}

async fn wait_for_run(api: &Api, provider: &str, run: &str) -> serde_json::Value {
    eventually(T, || async {
        let last = api.last_sync(provider).await;
        (last["run_id"] == run).then_some(last)
    })
    .await
    .unwrap_or_else(|| panic!("run {run} of {provider} did not end"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_create_delete_fail_restore_update() {
    let TestHub {
        nats,
        gw,
        dir: _dir,
        inv,
        api,
    } = TestHub::start(|_| {}).await;
    let (agent_id, token) = api.register_agent("story-agent").await;

    let (a, b, c) = (
        api_def("a", "Alpha", "v1"),
        api_def("b", "Beta", "v1"),
        api_def("c", "Gamma", "v1"),
    );
    let source = MemorySource::new(vec![a.clone(), b.clone(), c.clone()]);
    let agent = Agent::start(
        &gw.grpc_url,
        &token,
        vec![("tyk-main", "tyk", source.clone())],
    );

    // A new connection syncs at once.
    api.wait_for_total("active", 3, T).await;
    let shown = api.get_ok(&format!("/api/agents/{agent_id}")).await;
    assert_eq!(shown["status"], "ACTIVE");
    assert_eq!(
        shown["providers"],
        json!([{"name": "tyk-main", "type": "tyk"}])
    );
    assert_ne!(shown["last_heartbeat"], "0001-01-01T00:00:00Z");

    // Sync again with two: the third is deleted, kept with deleted_at.
    source.set(Ok(vec![a.clone(), b.clone()]));
    let run = trigger(&api, &agent_id).await;
    let last = wait_for_run(&api, "tyk-main", &run).await;
    assert_eq!(last["result"], "completed");
    assert_eq!(last["deleted"], 1);
    let deleted = api.apis("deleted").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["provider_api_id"], "c");
    assert!(deleted[0]["deleted_at"].is_string());
    assert_eq!(api.apis("active").await.len(), 2);

    // A failed sync deletes nothing.
    source.set(Err("dashboard unreachable".into()));
    let run = trigger(&api, &agent_id).await;
    let last = wait_for_run(&api, "tyk-main", &run).await;
    assert_eq!(last["result"], "failed");
    assert_eq!(last["reason"], "dashboard unreachable");
    assert_eq!(api.apis("active").await.len(), 2);

    // The third comes back (restored) and the second changes (updated).
    let mut b2 = api_def("b", "Beta", "v2");
    b2.upstream_url = "http://b2.internal".into();
    source.set(Ok(vec![a.clone(), b2, c.clone()]));
    let run = trigger(&api, &agent_id).await;
    wait_for_run(&api, "tyk-main", &run).await;
    api.wait_for_total("active", 3, T).await;
    api.wait_for_total("deleted", 0, T).await;

    let c_id = deleted[0]["id"].as_str().unwrap();
    let (code, detail) = api.get(&format!("/api/apis/{c_id}")).await;
    assert_eq!(code, 200);
    let kinds: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["created", "deleted", "restored"]);
    assert_eq!(detail["definition"]["base_path"], "/c/");
    assert_eq!(detail["deleted_at"], serde_json::Value::Null);
    // The updated API shows the definition of its newest sync.
    let b_id = meridian_schemas::ApiId::derive(
        meridian_schemas::AgentId::parse(&agent_id).unwrap(),
        "tyk-main",
        "b",
    );
    let (code, detail) = api.get(&format!("/api/apis/{b_id}")).await;
    assert_eq!(code, 200);
    assert_eq!(detail["version"], "v2");
    assert_eq!(detail["definition"]["upstream_url"], "http://b2.internal");
    assert_eq!(detail["definition"]["base_path"], "/b/");

    // Exactly one lifecycle event per change, in order.
    let expected = [
        ("a", LifecycleKind::Created),
        ("b", LifecycleKind::Created),
        ("c", LifecycleKind::Created),
        ("c", LifecycleKind::Deleted),
        ("b", LifecycleKind::Updated),
        ("c", LifecycleKind::Restored),
    ];
    let events = eventually(T, || async {
        let e = lifecycle_events(&nats.js).await;
        (e.len() >= expected.len()).then_some(e)
    })
    .await
    .expect("lifecycle events");
    // Behind a sentinel run, everything the syncs caused has been published.
    pass_sentinel(&nats.js).await;
    let events_again = lifecycle_events(&nats.js).await;
    assert_eq!(events_again.len(), expected.len() + 1, "no extra events");
    assert_eq!(events_again.last().unwrap().provider, SENTINEL);
    // The same changes reach the public stream, each valid against its schema.
    let ours = meridian_schemas::streams::api_event_filter(None, Some("tyk-main"));
    let public = public_events(&nats.js, &ours).await;
    assert_eq!(public.len(), expected.len());
    let mut creations: Vec<(String, LifecycleKind)> = events[..3]
        .iter()
        .map(|e| (e.name.clone(), e.kind))
        .collect();
    creations.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        creations,
        vec![
            ("Alpha".into(), LifecycleKind::Created),
            ("Beta".into(), LifecycleKind::Created),
            ("Gamma".into(), LifecycleKind::Created)
        ]
    );
    let rest: Vec<(String, LifecycleKind)> = events[3..]
        .iter()
        .map(|e| (e.name.clone(), e.kind))
        .collect();
    assert_eq!(rest[0], ("Gamma".into(), LifecycleKind::Deleted));
    // The last sync's changes come from one chunk: in API id order.
    let c_api = meridian_schemas::ApiId::derive(
        meridian_schemas::AgentId::parse(&agent_id).unwrap(),
        "tyk-main",
        "c",
    );
    let mut last_sync = vec![
        (b_id, ("Beta".to_owned(), LifecycleKind::Updated)),
        (c_api, ("Gamma".to_owned(), LifecycleKind::Restored)),
    ];
    last_sync.sort_by_key(|(id, _)| *id.0.as_bytes());
    assert_eq!(
        rest[1..],
        last_sync
            .into_iter()
            .map(|(_, change)| change)
            .collect::<Vec<_>>()
    );
    assert!(
        events[4..]
            .iter()
            .all(|e| e.source_seq == events[4].source_seq)
    );
    let updated = events
        .iter()
        .find(|e| e.kind == LifecycleKind::Updated)
        .unwrap();
    assert_eq!(updated.changed, ["version", "upstream"]);

    agent.stop().await;
    gw.rest.stop().await;
    inv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_goes_inactive_after_missed_heartbeats_and_its_apis_stay() {
    let TestHub {
        nats: _nats,
        gw,
        dir: _dir,
        inv,
        api,
    } = TestHub::start(|c| {
        c.heartbeat_interval = meridian_kit::config::HumanDuration(Duration::from_secs(1));
        // A 4-second window: wide enough that a loaded CI machine delaying
        // a tick does not flip the status, short enough to test quickly.
        c.missed_heartbeats = 4;
    })
    .await;
    let (agent_id, token) = api.register_agent("beat").await;
    let agent = Agent::start(
        &gw.grpc_url,
        &token,
        vec![("p1", "tyk", MemorySource::new(vec![api_def("x", "X", "")]))],
    );
    api.wait_for_total("active", 1, T).await;
    let status = |s: &'static str| {
        let api = api.clone();
        let path = format!("/api/agents/{agent_id}");
        async move {
            eventually(Duration::from_secs(15), || async {
                (api.get_ok(&path).await["status"] == s).then_some(())
            })
            .await
        }
    };
    assert!(status("ACTIVE").await.is_some());
    // Still active three heartbeats later: heartbeats keep it so.
    let path = format!("/api/agents/{agent_id}");
    let seen = std::sync::Mutex::new(vec![api.get_ok(&path).await["last_heartbeat"].clone()]);
    let later = eventually(Duration::from_secs(15), || async {
        let agent = api.get_ok(&path).await;
        assert_eq!(agent["status"], "ACTIVE", "between heartbeats: {agent}");
        let beat = agent["last_heartbeat"].clone();
        let mut seen = seen.lock().unwrap();
        if seen.last() != Some(&beat) {
            seen.push(beat);
        }
        (seen.len() > 3).then_some(())
    })
    .await;
    assert!(later.is_some(), "heartbeats stopped: {seen:?}");
    agent.stop().await;
    assert!(
        status("INACTIVE").await.is_some(),
        "agent should turn INACTIVE after 4 missed heartbeats"
    );
    let providers = api.get_ok("/api/providers").await;
    assert_eq!(providers[0]["agent_status"], "INACTIVE");
    assert_eq!(
        api.apis("active").await.len(),
        1,
        "APIs stay when the agent goes away"
    );
    gw.rest.stop().await;
    inv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_asked_on_another_replica_reaches_the_agent() {
    let nats = Nats::start().await;
    let gw1 = start_gateway(&nats, |_| {}).await;
    let gw2 = start_gateway(&nats, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let inv = start_inventory(&nats, dir.path().join("inventory")).await;
    let api1 = Api::new(&gw1.rest.url, &inv.url);
    let api2 = Api::new(&gw2.rest.url, &inv.url);
    // Registered through replica 1, visible on replica 2.
    let (agent_id, token) = api1.register_agent("replicated").await;
    let (code, _) = api2.get(&format!("/api/agents/{agent_id}")).await;
    assert_eq!(code, 200);
    let source = MemorySource::new(vec![api_def("x", "X", "")]);
    let agent = Agent::start(&gw1.grpc_url, &token, vec![("p1", "tyk", source.clone())]);
    api1.wait_for_total("active", 1, T).await;

    source.set(Ok(vec![api_def("x", "X", ""), api_def("y", "Y", "")]));
    let run = trigger(&api2, &agent_id).await;
    let last = wait_for_run(&api2, "p1", &run).await;
    assert_eq!(last["result"], "completed");
    assert_eq!(last["count"], 2);
    api2.wait_for_total("active", 2, T).await;

    agent.stop().await;
    // Once the agent is gone, no replica holds its stream.
    let none = eventually(T, || async {
        (api2
            .post(&format!("/api/agents/{agent_id}/sync"), &json!({}))
            .await
            .0
            == 409)
            .then_some(())
    })
    .await;
    assert!(
        none.is_some(),
        "sync for a disconnected agent must answer 409"
    );
    gw1.rest.stop().await;
    gw2.rest.stop().await;
    inv.stop().await;
}
