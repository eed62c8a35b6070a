//! Leader election among replicas of one agent, against a fake Kubernetes
//! API server (a real HTTP server that implements Lease get/create/replace
//! with `resourceVersion` conflicts): three real agent binaries elect exactly
//! one leader, which alone syncs; killed, another takes over, never before
//! the Lease has gone `leaseDuration` without renewal; stopped cleanly, it
//! releases the Lease and another takes it at once. A leader whose Lease
//! calls hang steps down before its Lease could expire.
//! And the fence: a deposed leader's late sync messages are refused, on
//! every agent-gateway replica.

use std::time::Duration;

use meridian::demo_provider::{DemoProvider, sample_apis};
use meridian_agent::session::{self, Client};
use meridian_schemas::proto::{
    HealthMessage, Hello, Provider, SyncMessage, SyncRequest, SyncStarted, health_message,
    sync_message,
};
use meridian_schemas::sync::{SyncEvent, SyncEventKind};
use meridian_schemas::{FENCING_TOKEN_METADATA, streams};
use meridian_tests::fake_kube::FakeKube;
use meridian_tests::*;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const T: Duration = Duration::from_secs(30);
const LEASE: &str = "governance-agent-lock";
const NS: &str = "agents";
const LEASE_DURATION: Duration = Duration::from_secs(6);

struct Replica {
    name: &'static str,
    probe: u16,
    child: Option<tokio::process::Child>,
}

/// Each live replica's `/readyz`, by index.
async fn roles(replicas: &[Replica]) -> Vec<Option<Value>> {
    let mut out = Vec::new();
    for r in replicas {
        out.push(match r.child {
            Some(_) => agent_readiness(r.probe).await,
            None => None,
        });
    }
    out
}

fn leaders(roles: &[Option<Value>]) -> Vec<usize> {
    (0..roles.len())
        .filter(|&i| roles[i].as_ref().is_some_and(|r| r["role"] == "leader"))
        .collect()
}

/// Waits until exactly one live replica leads and the others stand by,
/// every one connected to the hub; returns the leader and its token.
async fn one_leader(replicas: &[Replica], within: Duration) -> Option<(usize, u64)> {
    eventually(within, || async {
        let roles = roles(replicas).await;
        let live: Vec<&Value> = roles.iter().flatten().collect();
        let expected = replicas.iter().filter(|r| r.child.is_some()).count();
        let settled = live.len() == expected
            && live.iter().all(|r| r["hub"] == "connected")
            && live.iter().filter(|r| r["role"] == "standby").count() == expected - 1;
        match leaders(&roles)[..] {
            [i] if settled => Some((i, roles[i].as_ref()?["fencing_token"].as_u64()?)),
            _ => None,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_elect_one_leader_and_another_takes_over_when_it_dies() {
    let TestHub {
        nats: _nats,
        gw,
        dir,
        inv,
        api,
    } = TestHub::start(fast_heartbeats).await;
    let kube = FakeKube::start().await;
    let kubeconfig = kube.kubeconfig(dir.path(), NS);
    let (agent_id, token) = api.register_agent("replicated").await;
    let provider = DemoProvider::new(sample_apis(), "demo-key");
    let provider_url = serve_demo_provider(&provider).await;

    let mut replicas = Vec::new();
    for name in ["agent-a", "agent-b", "agent-c"] {
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        let election = "leaderElection:\n  enabled: true\n  leaseDuration: 6s\n  renewDeadline: 4s\n  retryPeriod: 500ms";
        let yaml = tyk_agent_yaml(&gw.grpc_url, &token, &provider_url, election);
        let env = [
            ("POD_NAME", name),
            ("POD_NAMESPACE", NS),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ];
        let agent = start_agent_binary_env(&home, &yaml, &env).await;
        replicas.push(Replica {
            name,
            probe: agent.probe,
            child: Some(agent.child),
        });
    }

    // Exactly one leader; the Lease names it; it syncs, the others stand by.
    let (first, first_token) = one_leader(&replicas, T)
        .await
        .expect("one leader and two standbys");
    assert_eq!(
        kube.holder(NS, LEASE),
        Some((replicas[first].name.to_owned(), first_token as i64))
    );
    api.wait_for_total("active", sample_apis().len() as u64, T)
        .await;
    let shown = api.get_ok(&format!("/api/agents/{agent_id}")).await;
    assert_eq!(shown["status"], "ACTIVE");
    // Renewals go on; there is never a second leader: every write of the
    // Lease (the fake records them all) is the leader's, through several
    // renewals.
    let renewals = eventually(T, || async {
        let writes = kube.writes();
        (writes.len() >= 4).then_some(writes)
    })
    .await
    .expect("the leader renews its Lease");
    assert!(
        renewals
            .iter()
            .all(|(holder, _)| holder == replicas[first].name),
        "a second holder wrote the Lease: {renewals:?}"
    );
    assert_eq!(leaders(&roles(&replicas).await), vec![first]);

    // The leader dies without a word: another leads, and not before the
    // Lease has gone its duration without a renewal (the fake's clock).
    replicas[first].child.take().unwrap().kill().await.unwrap();
    let (second, second_token) = one_leader(&replicas, T)
        .await
        .expect("a standby takes over");
    let writes = kube.writes();
    let last_renewal = writes
        .iter()
        .rev()
        .find(|(holder, _)| holder == replicas[first].name)
        .map(|(_, at)| *at)
        .unwrap();
    let taken = writes
        .iter()
        .find(|(holder, at)| holder == replicas[second].name && *at > last_renewal)
        .map(|(_, at)| *at)
        .unwrap();
    let took = taken - last_renewal;
    assert!(
        took >= LEASE_DURATION,
        "taken over {took:?} after the last renewal, before the lease expired"
    );
    assert_ne!(second, first);
    assert!(
        second_token > first_token,
        "{second_token} after {first_token}"
    );
    assert_eq!(
        kube.holder(NS, LEASE),
        Some((replicas[second].name.to_owned(), second_token as i64))
    );

    // The new leader syncs: an API removed at the provider is deleted.
    let gone = sample_apis()[0]["api_id"].clone();
    provider
        .apis
        .write()
        .unwrap()
        .retain(|e| e["api_id"] != gone);
    // (The probe says `leader` as soon as the Lease is won; the sync stream
    // opens a moment later.)
    let asked = eventually(T, || async {
        let body = serde_json::json!({"provider": "tyk"});
        let (code, _) = api
            .post(&format!("/api/agents/{agent_id}/sync"), &body)
            .await;
        (code == 202).then_some(())
    })
    .await;
    assert!(
        asked.is_some(),
        "the new leader never opened its sync stream"
    );
    api.wait_for_total("deleted", 1, T).await;

    // A clean stop releases the Lease: the last replica leads long before
    // the lease would have run out.
    let pid = replicas[second].child.as_ref().unwrap().id().unwrap();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = replicas[second].child.take().unwrap().wait().await.unwrap();
    assert!(status.success(), "clean stop: {status}");
    let (third, third_token) = one_leader(&replicas, T).await.expect("the last one leads");
    // The stopped leader's last write released the Lease (no holder), and
    // the next one is the takeover, well within the lease's duration.
    let writes = kube.writes();
    let released = writes.iter().rposition(|(holder, _)| holder.is_empty());
    let released = released.expect("the stopped leader released the lease");
    assert_eq!(writes[released + 1].0, replicas[third].name);
    assert!(
        writes[released + 1].1 - writes[released].1 < LEASE_DURATION,
        "after a release the takeover waited {:?}",
        writes[released + 1].1 - writes[released].1
    );
    assert!(third != first && third != second);
    assert!(third_token > second_token);
    eprintln!(
        "election: takeover {took:?} after the last renewal; lease write conflicts seen {}",
        kube.conflicts()
    );
    gw.rest.stop().await;
    inv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_electors_racing_for_one_lease_never_both_lead() {
    use meridian_agent::election::{Elector, Role, Timings};
    let kube = FakeKube::start().await;
    let client = || {
        let config = kube::Config::new(kube.url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    };
    // A renew deadline long enough that the five first reads, held until
    // all have arrived, are not given up on a loaded machine.
    let timings = Timings {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_millis(2500),
        retry_period: Duration::from_millis(100),
    };
    // Each elector runs until its own token is cancelled; aborting a task
    // instead is a crash (no release). Their first reads are held until all
    // five have read, so all five find no Lease and race to create it.
    kube.gather_reads(5);
    let mut electors = Vec::new();
    for i in 0..5 {
        let (tx, rx) = tokio::sync::watch::channel(Role::NotElecting);
        let identity = format!("pod-{i}");
        let elector = Elector::new(client(), NS, LEASE, &identity, timings);
        let task = tokio::spawn(elector.run(tx, meridian_kit::CancellationToken::new()));
        electors.push((identity, rx, Some(task)));
    }
    let mut last_token = None;
    for round in 0..3 {
        // Sample often: at no moment do two lead; one leads once settled.
        let mut leader = None;
        for _ in 0..40 {
            let leading: Vec<(usize, u64)> = electors
                .iter()
                .enumerate()
                .filter(|(_, (_, _, task))| task.is_some())
                .filter_map(|(i, (_, rx, _))| match *rx.borrow() {
                    Role::Leader { fencing_token } => Some((i, fencing_token)),
                    _ => None,
                })
                .collect();
            assert!(leading.len() <= 1, "round {round}: two leaders {leading:?}");
            leader = leading.first().copied();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (i, token) = leader.unwrap_or_else(|| panic!("round {round}: nobody leads"));
        assert_eq!(
            kube.holder(NS, LEASE),
            Some((electors[i].0.clone(), token as i64))
        );
        assert!(last_token.is_none_or(|t| token > t), "tokens only grow");
        if round == 0 {
            assert!(
                kube.conflicts() >= 4,
                "five electors raced to create the Lease, yet {} writes were refused",
                kube.conflicts()
            );
        }
        last_token = Some(token);
        electors[i].2.take().unwrap().abort();
    }
    eprintln!(
        "five electors: {} writes refused for a stale resourceVersion",
        kube.conflicts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_calls_hang_steps_down_before_its_lease_expires() {
    use meridian_agent::election::{Elector, Role, Timings};
    let kube = FakeKube::start().await;
    let client = kube::Client::try_from(kube::Config::new(kube.url.parse().unwrap())).unwrap();
    let timings = Timings {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(100),
    };
    let (tx, mut role) = tokio::sync::watch::channel(Role::NotElecting);
    let stop = meridian_kit::CancellationToken::new();
    let elector = Elector::new(client, NS, LEASE, "pod-0", timings);
    let task = tokio::spawn(elector.run(tx, stop.clone()));
    let leads = |r: &Role| matches!(r, Role::Leader { .. });
    tokio::time::timeout(T, role.wait_for(leads))
        .await
        .expect("it leads")
        .unwrap();

    // The Kubernetes API stops answering: the leader's last renewal is the
    // last write, and it must stand by before the Lease runs out after it.
    kube.stall(true);
    let hung_at = std::time::Instant::now();
    tokio::time::timeout(T, role.wait_for(|r| !leads(r)))
        .await
        .expect("it steps down")
        .unwrap();
    let down_at = std::time::Instant::now();
    let last_renewal = kube.writes().last().unwrap().1;
    assert!(
        down_at - last_renewal < timings.lease_duration,
        "still leading {:?} after its last renewal (the lease lasts {:?})",
        down_at - last_renewal,
        timings.lease_duration
    );
    assert!(
        down_at - hung_at >= timings.renew_deadline - timings.retry_period,
        "stepped down {:?} after the API hung, before the renew deadline",
        down_at - hung_at
    );

    // The API answers again: it leads again.
    kube.stall(false);
    tokio::time::timeout(T, role.wait_for(leads))
        .await
        .expect("it leads again")
        .unwrap();
    stop.cancel();
    task.await.unwrap();
}

/// A replica's connection: health stream up (hello with provider `p`), and
/// the sync stream opened with `fencing_token`.
struct Connected {
    _client: Client,
    _health: mpsc::Sender<HealthMessage>,
    sync_tx: mpsc::Sender<SyncMessage>,
    requests: tonic::Streaming<SyncRequest>,
}

async fn open_sync(
    client: &mut Client,
    fencing_token: u64,
) -> Result<(mpsc::Sender<SyncMessage>, tonic::Streaming<SyncRequest>), tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert(FENCING_TOKEN_METADATA, fencing_token.into());
    let requests = client.sync(request).await?.into_inner();
    Ok((tx, requests))
}

async fn connect_replica(grpc: &str, token: &str, fencing_token: u64) -> Connected {
    let mut client = session::connect(grpc, token).await.unwrap();
    let (health, rx) = mpsc::channel(4);
    let hello = Hello {
        providers: vec![Provider {
            name: "p".into(),
            r#type: "tyk".into(),
        }],
        agent_version: "test".into(),
    };
    health
        .send(HealthMessage {
            kind: Some(health_message::Kind::Hello(hello)),
        })
        .await
        .unwrap();
    let mut replies = client
        .health(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    replies.message().await.unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = replies.message().await {} });
    let (sync_tx, requests) = open_sync(&mut client, fencing_token).await.unwrap();
    Connected {
        _client: client,
        _health: health,
        sync_tx,
        requests,
    }
}

fn message(req: &SyncRequest, kind: sync_message::Kind, fencing_token: u64) -> SyncMessage {
    SyncMessage {
        run_id: req.run_id.clone(),
        provider: req.provider.clone(),
        kind: Some(kind),
        fencing_token: Some(fencing_token),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_late_messages_are_refused_on_every_gateway_replica() {
    let TestHub {
        nats,
        gw,
        dir: _dir,
        inv,
        api,
    } = TestHub::start(|_| {}).await;
    let gw2 = start_gateway(&nats, |_| {}).await;
    let (agent_id, token) = api.register_agent("fenced").await;

    // The old leader (token 1) on one replica starts a run.
    let mut old = connect_replica(&gw.grpc_url, &token, 1).await;
    let old_run = old.requests.message().await.unwrap().expect("initial sync");
    old.sync_tx
        .send(message(
            &old_run,
            sync_message::Kind::Started(SyncStarted {}),
            1,
        ))
        .await
        .unwrap();

    // A new leader (token 2) connects to the other replica and syncs.
    let mut new = connect_replica(&gw2.grpc_url, &token, 2).await;
    let new_run = new.requests.message().await.unwrap().expect("initial sync");
    for kind in [
        sync_message::Kind::Started(SyncStarted {}),
        sync_message::Kind::Api(api_def("fresh", "Fresh", "1")),
        sync_message::Kind::Completed(meridian_schemas::proto::SyncCompleted { count: 1 }),
    ] {
        new.sync_tx.send(message(&new_run, kind, 2)).await.unwrap();
    }
    api.wait_for_total("active", 1, T).await;

    // The first replica knows the fence once it has followed AGENTS: a new
    // stream with the old token is refused at once, naming both tokens.
    let refused = eventually(T, || async {
        let mut probe = session::connect(&gw.grpc_url, &token).await.unwrap();
        open_sync(&mut probe, 1).await.err()
    })
    .await
    .expect("the old token is refused on the first replica");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("fencing token 1 is older than 2"),
        "{}",
        refused.message()
    );

    // The old leader's late message ends its stream; its run fails.
    old.sync_tx
        .send(message(
            &old_run,
            sync_message::Kind::Api(api_def("stale", "Stale", "1")),
            1,
        ))
        .await
        .unwrap();
    let status = old.requests.message().await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("older than 2"),
        "{}",
        status.message()
    );
    let failed = eventually(T, || async {
        let events = stream_events::<SyncEvent>(&nats.js, streams::SYNC).await;
        events.into_iter().find_map(|e| match e.kind {
            SyncEventKind::Failed { reason } if e.run_id.to_string() == old_run.run_id => {
                Some(reason)
            }
            _ => None,
        })
    })
    .await
    .expect("the deposed leader's run is recorded as failed");
    assert!(failed.contains("fencing token 1"), "{failed}");
    let names: Vec<Value> = api
        .apis("all")
        .await
        .iter()
        .map(|a| a["name"].clone())
        .collect();
    assert_eq!(
        names,
        vec![Value::from("Fresh")],
        "nothing of the stale run is stored"
    );

    // The second replica refuses the old token too.
    let mut probe2 = session::connect(&gw2.grpc_url, &token).await.unwrap();
    let status = open_sync(&mut probe2, 1).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // Issuing a new agent token (which cuts off every holder of the old
    // one) resets the fence: the documented way back after a Lease is
    // deleted and recreated with its count at 0.
    let issued = api
        .post_ok(
            "/api/auth/token/",
            &serde_json::json!({"agent_id": agent_id}),
        )
        .await;
    let fresh = issued["token"].as_str().unwrap();
    let reopened = eventually(T, || async {
        let mut restarted = session::connect(&gw.grpc_url, fresh).await.unwrap();
        open_sync(&mut restarted, 0).await.ok()
    })
    .await;
    assert!(
        reopened.is_some(),
        "token 0 accepted after a new agent token"
    );
    gw2.rest.stop().await;
    gw.rest.stop().await;
    inv.stop().await;
}
