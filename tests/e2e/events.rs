//! The public events: CloudEvents on `MERIDIAN_EVENTS`, checked against the
//! JSON Schemas in `schemas/json`, the history and polling endpoints, durable
//! consumers, escaped provider names and agent status changes.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull};
use futures_util::StreamExt;
use meridian_kit::bus::Publisher;
use meridian_schemas::lifecycle::{LifecycleBatch, LifecycleEvent, LifecycleKind};
use meridian_schemas::public;
use meridian_schemas::{AgentId, ApiId, EventMeta, RunId};
use meridian_tests::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// Pulls up to `max` events from a durable consumer (waiting at most 2 s),
/// acking each.
async fn fetch_acked(durable: &consumer::PullConsumer, max: usize) -> Vec<Value> {
    let mut batch = durable
        .fetch()
        .max_messages(max)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        let m = m.unwrap();
        out.push(serde_json::from_slice::<Value>(&m.payload).unwrap());
        m.ack().await.unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_change_is_one_valid_cloudevent_in_order_with_history_and_polling() {
    let TestHub {
        nats,
        gw,
        dir,
        inv,
        api,
    } = TestHub::start(|_| {}).await;
    let (agent_id, token) = api.register_agent("events").await;
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
    api.wait_for_total("active", 3, T).await;

    // A durable consumer reads the creations, then goes offline.
    let stream = nats
        .js
        .get_stream(meridian_schemas::streams::EVENTS)
        .await
        .unwrap();
    let durable = stream
        .create_consumer(pull::Config {
            durable_name: Some("catalog".into()),
            filter_subject: "events.api.>".into(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let seen_online = fetch_acked(&durable, 3).await;
    assert_eq!(types(&seen_online), vec!["io.meridian.api.created"; 3]);

    // c goes away, then b changes and c comes back.
    source.set(Ok(vec![a.clone(), b.clone()]));
    api.trigger_sync(&agent_id, None).await;
    api.wait_for_total("deleted", 1, T).await;
    let mut b2 = b.clone();
    b2.name = "Beta Two".into();
    source.set(Ok(vec![a.clone(), b2, c.clone()]));
    api.trigger_sync(&agent_id, None).await;
    let events = wait_for_public(&nats.js, "events.api.>", 6).await;
    // The last sync's two changes come from one chunk: in API id order.
    let c = ApiId::derive(AgentId::parse(&agent_id).unwrap(), "tyk-main", "c");
    let b = ApiId::derive(AgentId::parse(&agent_id).unwrap(), "tyk-main", "b");
    let (c_id, b_id) = (c.to_string(), b.to_string());
    let (updated_at, restored_at) = if b.0.as_bytes() < c.0.as_bytes() {
        (4, 5)
    } else {
        (5, 4)
    };
    let mut expected_types = vec!["io.meridian.api.created"; 3];
    expected_types.push("io.meridian.api.deleted");
    expected_types.extend(["", ""]);
    expected_types[updated_at] = "io.meridian.api.updated";
    expected_types[restored_at] = "io.meridian.api.restored";
    assert_eq!(types(&events), expected_types);
    let ids: HashSet<_> = events.iter().map(|e| e["id"].clone().to_string()).collect();
    assert_eq!(ids.len(), 6, "ids are unique");
    assert_eq!(events[3]["subject"], c_id.as_str());
    assert_eq!(
        events[3]["_subject"],
        format!("events.api.deleted.{agent_id}.tyk-main")
    );
    let updated = &events[updated_at];
    assert_eq!(updated["subject"], b_id.as_str());
    assert_eq!(updated["data"]["name"], "Beta Two");
    assert_eq!(updated["data"]["changed"], json!(["name"]));
    assert_eq!(updated["data"]["provider_type"], "tyk");
    assert_eq!(updated["data"]["agent_id"], agent_id.as_str());
    assert_eq!(events[restored_at]["subject"], c_id.as_str());
    assert_eq!(events[restored_at]["data"]["name"], "Gamma");

    // The offline consumer gets exactly what it missed, in order.
    let caught_up = fetch_acked(&durable, 10).await;
    let expected: Vec<_> = events[3..].iter().map(|e| e["id"].clone()).collect();
    assert_eq!(
        caught_up
            .iter()
            .map(|e| e["id"].clone())
            .collect::<Vec<_>>(),
        expected
    );

    // The history of c is the same events; polling filters and pages.
    let (code, history) = api.get(&format!("/api/apis/{c_id}/history")).await;
    assert_eq!(code, 200, "{history}");
    let of_c: Vec<Value> = events
        .iter()
        .filter(|e| e["subject"] == c_id.as_str())
        .map(|e| {
            let mut e = e.clone();
            e.as_object_mut().unwrap().remove("_subject");
            e
        })
        .collect();
    assert_eq!(history, json!(of_c));
    let (code, deleted) = api.get("/api/events?type=deleted").await;
    assert_eq!(code, 200, "{deleted}");
    assert_eq!(deleted["events"].as_array().unwrap().len(), 1);
    assert_eq!(deleted["events"][0]["subject"], c_id.as_str());
    let page1 = api.get_ok("/api/events?provider=tyk-main&limit=4").await;
    assert_eq!(page1["events"].as_array().unwrap().len(), 4);
    let after = page1["next_after"].as_u64().unwrap();
    let page2 = api
        .get_ok(&format!("/api/events?provider=tyk-main&after={after}"))
        .await;
    // (The last two in API id order, as above: the order depends on the ids.)
    assert_eq!(
        types(page2["events"].as_array().unwrap()),
        expected_types[4..].to_vec()
    );
    let recent = api.get_ok("/api/events?type=created&since=1h").await;
    assert_eq!(recent["events"].as_array().unwrap().len(), 3);
    let future = api.get_ok("/api/events?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["events"], json!([]));
    for (query, field) in [
        ("type=exploded", "type"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("type=status_changed&provider=tyk-main", "provider"),
        ("colour=red", "query"),
    ] {
        let (code, body) = api.get(&format!("/api/events?{query}")).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert!(
            body["message"].as_str().unwrap().starts_with(field),
            "{query}: {body}"
        );
    }

    // `meridian events tail` prints the same events, as JSON or as lines.
    let mut args = meridian::events::TailArgs {
        nats_url: nats.url(),
        provider: Some("tyk-main".into()),
        event_type: None,
        since: Some("1h".into()),
        json: true,
        count: Some(6),
    };
    let mut out = Vec::new();
    tokio::time::timeout(T, meridian::events::tail(&args, &mut out))
        .await
        .expect("tail printed six events")
        .unwrap();
    let printed: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        printed.iter().map(|e| e["id"].clone()).collect::<Vec<_>>(),
        events.iter().map(|e| e["id"].clone()).collect::<Vec<_>>()
    );
    (args.json, args.event_type, args.count) = (false, Some("updated".into()), Some(1));
    let mut out = Vec::new();
    tokio::time::timeout(T, meridian::events::tail(&args, &mut out))
        .await
        .unwrap()
        .unwrap();
    let line = String::from_utf8(out).unwrap();
    assert!(
        line.contains("api.updated")
            && line.contains("tyk/tyk-main")
            && line.contains("Beta Two")
            && line.contains("changed: name"),
        "{line}"
    );
    args.event_type = Some("bogus".into());
    let err = meridian::events::tail(&args, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("--type"), "{err}");

    // A restart and a rebuild publish nothing again.
    inv.stop().await;
    meridian_inventory::rebuild(meridian_inventory::Config::new(
        &nats.url(),
        dir.path().join("inventory"),
        API_KEY,
    ))
    .await
    .unwrap();
    let inv = start_inventory(&nats, dir.path().join("inventory")).await;
    pass_sentinel(&nats.js).await;
    let ours = meridian_schemas::streams::api_event_filter(None, Some("tyk-main"));
    assert_eq!(public_events(&nats.js, &ours).await.len(), 6);
    assert_eq!(public_events(&nats.js, "events.api.>").await.len(), 7);
    agent.stop().await;
    inv.stop().await;
    gw.rest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_names_with_dots_and_spaces_route_by_their_escaped_token() {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let inv = start_inventory(&nats, dir.path().join("inventory")).await;
    // Names like this cannot come from an agent (the gateway refuses them),
    // but the public routing must hold for any name: publish the internal
    // lifecycle event directly and let the relay route it.
    let agent = AgentId::new_random();
    let odd = "team.a payments >*";
    let event = |provider: &str, seq| LifecycleEvent {
        api_id: ApiId::derive(agent, provider, "x"),
        kind: LifecycleKind::Created,
        agent_id: agent,
        provider: provider.into(),
        provider_type: "tyk".into(),
        name: "X".into(),
        version: "v1".into(),
        content_hash: "0".repeat(64),
        run_id: RunId::new_random(),
        changed: Vec::new(),
        source_seq: seq,
        at_ms: 1_700_000_000_000,
    };
    let publisher = Publisher::new(nats.js.clone(), &Metrics::new());
    publisher
        .publish(
            &LifecycleBatch {
                events: vec![event(odd, 1), event("team", 2)],
            },
            EventMeta::default(),
        )
        .await
        .unwrap();

    let filter = public::filter_for(None, Some(odd)).unwrap();
    let routed = wait_for_public(&nats.js, &filter, 1).await;
    assert_eq!(routed.len(), 1, "{routed:?}");
    assert_eq!(routed[0]["data"]["provider"], odd);
    assert_eq!(
        routed[0]["_subject"],
        format!("events.api.created.{agent}.team%2Ea%20payments%20%3E%2A")
    );
    let plain = wait_for_public(
        &nats.js,
        &public::filter_for(None, Some("team")).unwrap(),
        1,
    )
    .await;
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0]["data"]["provider"], "team");
    assert_eq!(
        public_events(&nats.js, "events.api.created.*.team")
            .await
            .len(),
        1
    );
    inv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_status_changes_are_published_once_each() {
    let TestHub {
        nats,
        gw,
        dir,
        inv,
        api,
    } = TestHub::start(fast_heartbeats).await;
    let (agent_id, token) = api.register_agent("status").await;
    let agent = Agent::start(
        &gw.grpc_url,
        &token,
        vec![("p", "tyk", MemorySource::new(vec![]))],
    );
    let filter = format!("events.agent.status_changed.{agent_id}");
    let active = wait_for_public(&nats.js, &filter, 1).await;
    assert_eq!(active[0]["data"]["status"], "ACTIVE");
    assert_eq!(active[0]["data"]["previous_status"], "INACTIVE");
    assert_eq!(active[0]["subject"], agent_id.as_str());

    // A restart of the watcher publishes nothing new while nothing changes
    // (counted behind a sentinel agent's first status event).
    inv.stop().await;
    let inv = start_inventory(&nats, dir.path().join("inventory")).await;
    pass_status_sentinel(&nats.js).await;
    assert_eq!(public_events(&nats.js, &filter).await.len(), 1);

    agent.stop().await;
    let both = wait_for_public(&nats.js, &filter, 2).await;
    assert_eq!(both[1]["data"]["status"], "INACTIVE");
    pass_status_sentinel(&nats.js).await;
    assert_eq!(
        public_events(&nats.js, &filter).await.len(),
        2,
        "published once each"
    );
    let api = Api::new(&gw.rest.url, &inv.url);
    let polled = api.get_ok("/api/events?type=status_changed").await;
    let polled: Vec<&serde_json::Value> = polled["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subject"] == agent_id.as_str())
        .collect();
    assert_eq!(polled.len(), 2);
    inv.stop().await;
    gw.rest.stop().await;
}
