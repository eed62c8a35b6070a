//! Crashes, restarts, rebuilds, duplicates and redeliveries change nothing.

use std::collections::HashSet;
use std::time::Duration;

use meridian_agent::providers::ProviderConfig;
use meridian_agent::session::SessionConfig;
use meridian_inventory::adapters::store::{PROJECTION_ID, Repository};
use meridian_kit::bus::{Publisher, ensure_streams};
use meridian_kit::projection::{StoredEvent, apply_events, digest};
use meridian_schemas::sync::{SyncEvent, SyncEventKind};
use meridian_schemas::{AgentId, Envelope, EventMeta, RunId, streams};
use meridian_tests::*;

const N: usize = 30_000;

async fn live_digest(api: &Api) -> (String, u64) {
    let (code, d) = api.get("/api/repository/digest").await;
    assert_eq!(code, 200, "{d}");
    (
        d["digest"].as_str().unwrap().to_owned(),
        d["position"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_killed_mid_sync_loses_and_duplicates_nothing_and_rebuild_matches() {
    let nats = Nats::start().await;
    let gw = start_gateway(&nats, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("inventory");
    let inv = start_inventory(&nats, data.clone()).await;
    let api = Api::new(&gw.rest.url, &inv.url);
    let (_, token) = api.register_agent("bulk").await;
    let apis: Vec<_> = (0..N)
        .map(|i| api_def(&format!("api-{i}"), &format!("API {i}"), "v1"))
        .collect();
    let agent = Agent::start(
        &gw.grpc_url,
        &token,
        vec![("bulk", "tyk", MemorySource::new(apis))],
    );

    // Crash inventory once it is part-way through the run: the gateway
    // stores the run's APIs in chunks of up to CHUNK_MAX_APIS.
    let chunks = (N / meridian_schemas::sync::CHUNK_MAX_APIS) as u64;
    let at = eventually(Duration::from_secs(60), || async {
        let (_, position) = live_digest(&api).await;
        (position >= chunks / 10).then_some(position)
    })
    .await
    .expect("inventory started applying the run");
    inv.kill().await;
    assert!(
        at < chunks,
        "inventory should be killed mid-run (was at {at} of more than {chunks} messages)"
    );

    let inv = start_inventory(&nats, data.clone()).await;
    let api = Api::new(&gw.rest.url, &inv.url);
    // A barrier, not a speed check: the debug-built inventory replays the
    // run at a few hundred APIs a second on a 2-core machine (this took
    // 125-130 s here on 2026-12-02, at this commit and the one before).
    api.wait_for_total("active", N as u64, Duration::from_secs(400))
        .await;
    let expect_all = || async {
        eventually(Duration::from_secs(60), || async {
            let n = lifecycle_events(&nats.js).await.len();
            (n >= N).then_some(n)
        })
        .await
    };
    assert_eq!(expect_all().await, Some(N));
    let events = lifecycle_events(&nats.js).await;
    let ids: HashSet<_> = events.iter().map(|e| e.api_id).collect();
    assert_eq!(ids.len(), N, "one created event per API, none twice");
    assert!(
        events
            .iter()
            .all(|e| e.kind == meridian_schemas::lifecycle::LifecycleKind::Created)
    );
    let public = wait_for_public(&nats.js, "events.api.>", N).await;
    let public_ids: HashSet<_> = public.iter().map(|e| e["id"].to_string()).collect();
    assert_eq!(public_ids.len(), N, "one public event per API, none twice");
    let (live, position) = live_digest(&api).await;

    // A restart republishes nothing and changes nothing. (Each count below
    // waits for a sentinel run behind everything the action could have
    // published; the sentinels add one event each.)
    inv.stop().await;
    let inv = start_inventory(&nats, data.clone()).await;
    let api = Api::new(&gw.rest.url, &inv.url);
    assert_eq!(live_digest(&api).await, (live.clone(), position));
    pass_sentinel(&nats.js).await;
    let mut sentinels = 1;
    assert_eq!(lifecycle_events(&nats.js).await.len(), N + sentinels);
    let (live, position) = live_digest(&api).await;

    // Rebuilding into a fresh directory reproduces the live repository.
    let fresh = dir.path().join("rebuilt");
    let report =
        meridian_inventory::rebuild(meridian_inventory::Config::new(&nats.url(), fresh, API_KEY))
            .await
            .unwrap();
    assert_eq!(report.position, position);
    assert_eq!(report.digest, live, "rebuilt digest equals the live one");

    // Rebuilding the live directory, then starting again, republishes nothing.
    inv.stop().await;
    let report = meridian_inventory::rebuild(meridian_inventory::Config::new(
        &nats.url(),
        data.clone(),
        API_KEY,
    ))
    .await
    .unwrap();
    assert_eq!(report.digest, live);
    let inv = start_inventory(&nats, data.clone()).await;
    let api = Api::new(&gw.rest.url, &inv.url);
    assert_eq!(live_digest(&api).await.0, live);
    pass_sentinel(&nats.js).await;
    sentinels += 1;
    assert_eq!(
        lifecycle_events(&nats.js).await.len(),
        N + sentinels,
        "rebuild must not re-emit"
    );
    assert_eq!(
        public_events(&nats.js, "events.api.>").await.len(),
        N + sentinels,
        "restarts and rebuilds publish no public event twice"
    );
    let (live, position) = live_digest(&api).await;

    // A repository written in an older layout (an upgrade) is replayed at
    // start: same repository, nothing published twice.
    inv.stop().await;
    {
        let db = meridian_kit::store::Db::open(&data).unwrap();
        let tree = db.open_tree("repository").unwrap();
        tree.insert(meridian_kit::projection::FORMAT_KEY, 1u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let inv = start_inventory(&nats, data.clone()).await;
    let api = Api::new(&gw.rest.url, &inv.url);
    assert_eq!(
        eventually(Duration::from_secs(60), || async {
            let (digest, at) = live_digest(&api).await;
            (at >= position).then_some(digest)
        })
        .await,
        Some(live.clone()),
        "the replayed repository equals the live one"
    );
    pass_sentinel(&nats.js).await;
    sentinels += 1;
    assert_eq!(
        lifecycle_events(&nats.js).await.len(),
        N + sentinels,
        "a replay after an upgrade must not re-emit"
    );
    inv.stop().await;
    let db = meridian_kit::store::Db::open(&data).unwrap();
    let tree = db.open_tree("repository").unwrap();
    assert_eq!(
        tree.get(meridian_kit::projection::FORMAT_KEY)
            .unwrap()
            .as_deref(),
        Some(&meridian_inventory::adapters::store::FORMAT.to_be_bytes()[..]),
        "the old layout was replaced"
    );

    agent.stop().await;
    gw.rest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publish_is_stored_once_and_a_redelivery_changes_nothing() {
    let nats = Nats::start().await;
    ensure_streams(&nats.js, &[streams::SYNC]).await.unwrap();
    let publisher = Publisher::new(nats.js.clone(), &Metrics::new());
    let run_id = RunId::new_random();
    let agent_id = AgentId::new_random();
    let event = |kind| SyncEvent {
        run_id,
        agent_id,
        provider: "p".into(),
        kind,
    };
    let def = meridian_schemas::sync::ApiDefinition::from(api_def("a", "A", "v1"));
    let api_event = event(SyncEventKind::Apis {
        first: 0,
        apis: vec![meridian_schemas::sync::DiscoveredApi::new(def)],
    });
    let first = publisher
        .publish(
            &event(SyncEventKind::Started {
                provider_type: "tyk".into(),
            }),
            EventMeta::default(),
        )
        .await
        .unwrap();
    assert!(!first.duplicate);
    let a1 = publisher
        .publish(&api_event, EventMeta::default())
        .await
        .unwrap();
    let a2 = publisher
        .publish(&api_event, EventMeta::default())
        .await
        .unwrap();
    assert!(!a1.duplicate);
    assert!(a2.duplicate, "the retry is recognised");
    assert_eq!(a1.sequence, a2.sequence);
    publisher
        .publish(
            &event(SyncEventKind::Completed { count: 1 }),
            EventMeta::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        stream_count(&nats.js, streams::SYNC).await,
        3,
        "stored once"
    );

    // Fold the real stream into a repository, then deliver every message again.
    let stream = nats.js.get_stream(streams::SYNC).await.unwrap();
    let mut stored = Vec::new();
    for seq in 1..=3 {
        let m = stream.get_raw_message(seq).await.unwrap();
        stored.push(StoredEvent {
            seq,
            subject: m.subject.to_string(),
            envelope: Envelope::from_bytes(&m.payload).unwrap(),
        });
    }
    let db = meridian_kit::store::Db::temporary().unwrap();
    let tree = db.open_tree("repo").unwrap();
    apply_events(&tree, &Repository::default(), PROJECTION_ID, &stored).unwrap();
    let before = digest(&tree).unwrap();
    let pending = || meridian_inventory::adapters::store::pending_events(&tree).unwrap();
    let outbox_before = pending();
    assert_eq!(outbox_before.len(), 1, "one created event");
    apply_events(&tree, &Repository::default(), PROJECTION_ID, &stored).unwrap();
    apply_events(&tree, &Repository::default(), PROJECTION_ID, &stored[1..2]).unwrap();
    assert_eq!(
        digest(&tree).unwrap(),
        before,
        "redelivered messages change nothing"
    );
    assert_eq!(pending(), outbox_before);
}

/// nats-server killed and started again on the same store: the services
/// recreate their consumers as soon as the connection comes back, so an
/// agent's hello (which the registry must apply) succeeds within 2 s of
/// NATS accepting connections again, and a sync after it reaches the
/// repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_nats_restart_hellos_succeed_within_two_seconds() {
    let TestHub {
        mut nats,
        gw,
        dir: _dir,
        inv,
        api,
    } = TestHub::start(|_| {}).await;
    let (agent_id, token) = api.register_agent("through-restart").await;
    let source = MemorySource::new(vec![api_def("a", "A", "1")]);
    let agent = Agent::start(&gw.grpc_url, &token, vec![("p", "tyk", source.clone())]);
    api.wait_for_total("active", 1, Duration::from_secs(30))
        .await;

    nats.server.kill();
    nats.server
        .restart()
        .expect("nats-server starts again on its store");
    let up_again = std::time::Instant::now();
    let healed = eventually(Duration::from_secs(30), || async {
        hello(&gw.grpc_url, &token, &[("p", "tyk")]).await.ok()
    })
    .await;
    let took = up_again.elapsed();
    assert!(healed.is_some(), "no hello succeeded after the restart");
    assert!(
        took <= Duration::from_secs(2),
        "the first hello succeeded {took:?} after NATS was back"
    );

    // The whole pipeline works again: a new API reaches the repository.
    source.set(Ok(vec![api_def("a", "A", "1"), api_def("b", "B", "1")]));
    let synced = eventually(Duration::from_secs(30), || async {
        let body = serde_json::json!({});
        let (code, _) = api
            .post(&format!("/api/agents/{agent_id}/sync"), &body)
            .await;
        (code == 202).then_some(())
    })
    .await;
    assert!(synced.is_some(), "the agent never reconnected");
    api.wait_for_total("active", 2, Duration::from_secs(30))
        .await;
    agent.stop().await;
    gw.rest.stop().await;
    inv.stop().await;
}

/// A provider that never answers: its run stays started until something
/// ends it.
struct Hanging;

impl meridian_agent::providers::Source for Hanging {
    fn list(
        &self,
    ) -> futures_util::future::BoxFuture<
        '_,
        Result<
            Vec<meridian_schemas::proto::ApiDefinition>,
            meridian_agent::providers::ProviderError,
        >,
    > {
        Box::pin(std::future::pending())
    }
}

/// agent-gateway killed (-9) in the middle of a run: nobody will end the
/// run it held, so another replica's sweeper, finding no sync stream that
/// holds it, appends it as failed (once), and inventory shows it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_gateway_is_killed_ends_failed() {
    use tokio::io::AsyncBufReadExt;
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let inv = start_inventory(&nats, dir.path().join("inventory")).await;
    let prefix = meridian_agent_gateway::app::ENV_PREFIX;
    let mut first = tokio::process::Command::new(workspace_binary("meridian-agent-gateway"))
        .env(format!("{prefix}NATS_URL"), nats.url())
        .env(format!("{prefix}HTTP_ADDR"), "127.0.0.1:0")
        .env(format!("{prefix}GRPC_ADDR"), "127.0.0.1:0")
        .env(format!("{prefix}JWT_SECRET"), JWT_SECRET)
        .env(format!("{prefix}API_KEY"), API_KEY)
        .env("MERIDIAN_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(first.stdout.take().unwrap()).lines();
    let (http, grpc) = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("agent-gateway listening") {
                let addr = |key: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(key))
                        .map(str::to_owned)
                };
                return (addr("http=").unwrap(), addr("grpc=").unwrap());
            }
        }
        panic!("agent-gateway ended before it listened");
    })
    .await
    .expect("agent-gateway says where it listens");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let api = Api::new(&format!("http://{http}"), &inv.url);
    eventually(Duration::from_secs(30), || async {
        (api.get("/api/agents/").await.0 == 200).then_some(())
    })
    .await
    .expect("the first gateway answers");
    let (_, token) = api.register_agent("orphaned").await;
    let session = SessionConfig::new(
        &format!("http://{grpc}"),
        &token,
        vec![ProviderConfig {
            name: "slow".into(),
            provider_type: "tyk".into(),
            source: std::sync::Arc::new(Hanging),
        }],
    );
    let agent = Agent::run(session);
    let run = eventually(Duration::from_secs(30), || async {
        stream_events::<SyncEvent>(&nats.js, streams::SYNC)
            .await
            .into_iter()
            .find(|e| matches!(e.kind, SyncEventKind::Started { .. }))
            .map(|e| e.run_id)
    })
    .await
    .expect("the run started");

    first.kill().await.unwrap();
    let second = start_gateway(&nats, |c| {
        c.run_check_interval = meridian_kit::config::HumanDuration(Duration::from_secs(1))
    })
    .await;
    let reason = eventually(Duration::from_secs(30), || async {
        stream_events::<SyncEvent>(&nats.js, streams::SYNC)
            .await
            .into_iter()
            .filter(|e| e.run_id == run)
            .find_map(|e| match e.kind {
                SyncEventKind::Failed { reason } => Some(reason),
                _ => None,
            })
    })
    .await
    .expect("the orphaned run was failed");
    assert!(reason.contains("no sync stream holds the run"), "{reason}");
    let api = Api::new(&second.rest.url, &inv.url);
    let last = eventually(Duration::from_secs(30), || async {
        let last = api.last_sync("slow").await;
        (last["result"] == "failed").then_some(last)
    })
    .await
    .expect("inventory shows the run failed");
    assert_eq!(last["run_id"], run.to_string());
    let ends = stream_events::<SyncEvent>(&nats.js, streams::SYNC)
        .await
        .into_iter()
        .filter(|e| {
            e.run_id == run
                && matches!(
                    e.kind,
                    SyncEventKind::Failed { .. } | SyncEventKind::Completed { .. }
                )
        })
        .count();
    assert_eq!(ends, 1, "ended once");
    agent.stop().await;
    second.rest.stop().await;
    inv.stop().await;
}
