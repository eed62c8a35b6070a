//! Sync jobs: aligned due times pushed to the agent, run history joined with
//! the sync log, restarts across due times, two replicas, an offline agent, a
//! deleted agent, and every kind of bad input.

use std::collections::HashSet;
use std::time::Duration;

use meridian_kit::time::{now_ms, rfc3339};
use meridian_schemas::schedule::ScheduleEvent;
use meridian_schemas::streams;
use meridian_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);
const PROVIDER: &str = "tyk-provider";

/// NATS, one gateway, one connected agent with one provider of two APIs.
struct Setup {
    nats: Nats,
    gw: Gateway,
    api: Api,
    agent_id: String,
    agent: Option<Agent>,
}

async fn setup() -> Setup {
    let nats = Nats::start().await;
    let gw = start_gateway(&nats, |_| {}).await;
    let api = Api::new(&gw.rest.url, "");
    let (agent_id, token) = api.register_agent("scheduled").await;
    let source = MemorySource::new(vec![api_def("a", "A", "v1"), api_def("b", "B", "v1")]);
    let agent = Agent::start(&gw.grpc_url, &token, vec![(PROVIDER, "tyk", source)]);
    let connected = eventually(T, || async {
        let shown = api.get_ok(&format!("/api/agents/{agent_id}")).await;
        (!shown["providers"].is_null()).then_some(())
    })
    .await;
    assert!(
        connected.is_some(),
        "the agent never reported its providers"
    );
    Setup {
        nats,
        gw,
        api,
        agent_id,
        agent: Some(agent),
    }
}

/// A `start_from` on a whole second, `ahead_ms` from now.
fn aligned_start(ahead_ms: i64) -> i64 {
    (now_ms() + ahead_ms) / 1000 * 1000
}

async fn create_job(api: &Api, agent: &str, every: &str, start_ms: i64) -> Value {
    let (code, job) = api
        .post(
            &format!("/api/agents/{agent}/sync-jobs"),
            &json!({"repeat_every": every, "provider": PROVIDER, "start_from": rfc3339(start_ms)}),
        )
        .await;
    assert_eq!(code, 201, "{job}");
    job
}

async fn runs(api: &Api, agent: &str, job: &str) -> Vec<Value> {
    let (code, runs) = api
        .get(&format!("/api/agents/{agent}/sync-jobs/{job}/runs"))
        .await;
    assert_eq!(code, 200, "{runs}");
    runs.as_array().unwrap().clone()
}

/// Waits until the job's history holds `n` firings that satisfy `done`.
async fn wait_for_firings(
    api: &Api,
    agent: &str,
    job: &str,
    n: usize,
    done: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let got = eventually(T, || async {
        let runs = runs(api, agent, job).await;
        (runs.iter().filter(|r| done(r)).count() >= n).then_some(runs)
    })
    .await;
    got.unwrap_or_else(|| panic!("job {job} never reached {n} firings"))
}

fn due_ms(firing: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(firing["due_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

fn completed(firing: &Value) -> bool {
    firing["status"] == "delivered" && firing["runs"][0]["status"] == "completed"
}

async fn fired_events(nats: &Nats) -> Vec<ScheduleEvent> {
    stream_events::<ScheduleEvent>(&nats.js, streams::SCHEDULE)
        .await
        .into_iter()
        .filter(|e| matches!(e, ScheduleEvent::Fired { .. }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_fires_on_aligned_due_times_and_its_history_joins_the_sync_log() {
    let s = setup().await;
    let scheduler = start_scheduler(&s.nats, |_| {}).await;
    let api = s.api.with_scheduler(&scheduler.url);
    let start = aligned_start(1_000);
    let job = create_job(&api, &s.agent_id, "2s", start).await;
    assert_eq!(job["repeat_every"], "2s");
    assert_eq!(job["provider"], PROVIDER);
    assert_eq!(job["agent_id"], s.agent_id.as_str());
    assert_eq!(job["paused"], false);
    assert_eq!(job["next_run_at"], rfc3339(start));
    let id = job["id"].as_str().unwrap();

    let history = wait_for_firings(&api, &s.agent_id, id, 2, completed).await;
    let mut dues: Vec<i64> = history.iter().map(due_ms).collect();
    dues.sort_unstable();
    dues.dedup();
    assert_eq!(
        dues.len(),
        history.len(),
        "a due time fired twice: {history:?}"
    );
    for firing in &history {
        let due = due_ms(firing);
        assert_eq!((due - start) % 2_000, 0, "due time not aligned: {firing}");
        assert!(due >= start);
        assert!(firing["late_ms"].as_i64().unwrap() >= 0, "{firing}");
        assert_eq!(firing["missed_due_times"], 0);
    }
    let done = history.iter().find(|f| completed(f)).unwrap();
    assert_eq!(done["runs"][0]["provider"], PROVIDER);
    assert_eq!(done["runs"][0]["count"], 2);

    // Listed, shown, and the next run is still aligned.
    let (code, list) = api
        .get(&format!("/api/agents/{}/sync-jobs", s.agent_id))
        .await;
    assert_eq!(code, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (code, shown) = api
        .get(&format!("/api/agents/{}/sync-jobs/{id}", s.agent_id))
        .await;
    assert_eq!(code, 200, "{shown}");
    let next = chrono::DateTime::parse_from_rfc3339(shown["next_run_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert_eq!((next - start) % 2_000, 0);

    // Paused: no new firing; resumed: fires again. Deleted: gone.
    let path = format!("/api/agents/{}/sync-jobs/{id}", s.agent_id);
    let (code, paused) = api
        .call(Method::PUT, &path, Some(r#"{"paused": true}"#))
        .await;
    assert_eq!(code, 200, "{paused}");
    assert_eq!(paused["paused"], true);
    assert!(paused["next_run_at"].is_null());
    let before = runs(&api, &s.agent_id, id).await.len();
    // A job firing every second meanwhile shows the scheduler went past
    // the paused job's due times (two of them at least) without firing it.
    let control = create_job(&api, &s.agent_id, "1s", aligned_start(0)).await;
    let control = control["id"].as_str().unwrap().to_owned();
    let passed = wait_for_firings(&api, &s.agent_id, &control, 5, |_| true).await;
    let span = passed.iter().map(due_ms).max().unwrap() - passed.iter().map(due_ms).min().unwrap();
    assert!(span >= 4_000, "five firings a second apart span {span} ms");
    assert_eq!(
        runs(&api, &s.agent_id, id).await.len(),
        before,
        "a paused job fired"
    );
    let (code, _) = api
        .call(
            Method::DELETE,
            &format!("/api/agents/{}/sync-jobs/{control}", s.agent_id),
            None,
        )
        .await;
    assert_eq!(code, 204);
    let (code, _) = api
        .call(
            Method::PATCH,
            &path,
            Some(r#"{"paused": false, "repeat_every": "1s"}"#),
        )
        .await;
    assert_eq!(code, 200);
    wait_for_firings(&api, &s.agent_id, id, before + 1, |_| true).await;
    let (code, _) = api.call(Method::DELETE, &path, None).await;
    assert_eq!(code, 204);
    let (code, _) = api.get(&path).await;
    assert_eq!(code, 404);
    scheduler.stop().await;
    s.gw.rest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_across_due_times_fires_once_for_the_latest() {
    let s = setup().await;
    let first = start_scheduler(&s.nats, |c| c.replica = Some("first".into())).await;
    let api = s.api.with_scheduler(&first.url);
    let start = aligned_start(0);
    let job = create_job(&api, &s.agent_id, "1s", start).await;
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for_firings(&api, &s.agent_id, &id, 1, |f| f["status"] == "delivered").await;
    first.stop().await;

    // Down for several due times, then a new replica rebuilt from the log.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let second = start_scheduler(&s.nats, |c| c.replica = Some("second".into())).await;
    let api = s.api.with_scheduler(&second.url);
    let after = wait_for_firings(&api, &s.agent_id, &id, 1, |f| f["replica"] == "second").await;
    // History is newest first: the first firing of `second` follows the last
    // of `first` directly, and accounts for every due time in between.
    let resumed = after
        .iter()
        .rev()
        .find(|f| f["replica"] == "second")
        .unwrap();
    let last_before = after
        .iter()
        .filter(|f| f["replica"] == "first")
        .map(due_ms)
        .max()
        .unwrap();
    let gap = due_ms(resumed) - last_before;
    assert!(
        gap >= 3_000,
        "fired before the restart's gap was over: {after:?}"
    );
    assert_eq!(
        resumed["missed_due_times"].as_i64().unwrap(),
        gap / 1_000 - 1,
        "{resumed}"
    );
    let fired_between = after
        .iter()
        .filter(|f| due_ms(f) > last_before && due_ms(f) <= due_ms(resumed))
        .count();
    assert_eq!(
        fired_between, 1,
        "missed due times fired one by one: {after:?}"
    );
    second.stop().await;
    s.gw.rest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fire_each_due_time_exactly_once() {
    let s = setup().await;
    let a = start_scheduler(&s.nats, |c| c.replica = Some("a".into())).await;
    let b = start_scheduler(&s.nats, |c| c.replica = Some("b".into())).await;
    let api = s.api.with_scheduler(&a.url);
    let start = aligned_start(1_000);
    let mut jobs = Vec::new();
    for _ in 0..5 {
        let job = create_job(&api, &s.agent_id, "1s", start).await;
        jobs.push(job["id"].as_str().unwrap().to_owned());
    }
    for job in &jobs {
        wait_for_firings(&api, &s.agent_id, job, 3, |f| f["status"] == "delivered").await;
    }
    a.stop().await;
    b.stop().await;

    let fired = fired_events(&s.nats).await;
    let mut seen = HashSet::new();
    let mut replicas = HashSet::new();
    for event in &fired {
        if let ScheduleEvent::Fired {
            job_id,
            due_ms,
            replica,
            ..
        } = event
        {
            assert!(seen.insert((*job_id, *due_ms)), "fired twice: {event:?}");
            replicas.insert(replica.clone());
        }
    }
    assert!(fired.len() >= 15, "{} firings", fired.len());
    // Each firing asked for exactly one run, and no run was asked twice.
    let api = s
        .api
        .with_scheduler(&start_scheduler(&s.nats, |_| {}).await.url);
    let mut run_ids = HashSet::new();
    let mut delivered = 0;
    for job in &jobs {
        for firing in runs(&api, &s.agent_id, job).await {
            if firing["status"] == "delivered" {
                delivered += 1;
                assert_eq!(firing["runs"].as_array().unwrap().len(), 1, "{firing}");
                assert!(run_ids.insert(firing["runs"][0]["run_id"].to_string()));
            }
        }
    }
    assert!(delivered >= 15);
    s.gw.rest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_agent_is_reported_and_a_deleted_agents_jobs_stop() {
    let mut s = setup().await;
    let scheduler = start_scheduler(&s.nats, |_| {}).await;
    let api = s.api.with_scheduler(&scheduler.url);
    let job = create_job(&api, &s.agent_id, "1s", aligned_start(0)).await;
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for_firings(&api, &s.agent_id, &id, 1, |f| f["status"] == "delivered").await;

    s.agent.take().unwrap().stop().await;
    let history = wait_for_firings(&api, &s.agent_id, &id, 1, |f| {
        f["status"] == "agent_offline"
    })
    .await;
    let offline = history
        .iter()
        .find(|f| f["status"] == "agent_offline")
        .unwrap();
    assert!(
        offline["reason"]
            .as_str()
            .unwrap()
            .contains("not connected"),
        "{offline}"
    );
    assert_eq!(offline["runs"], json!([]));

    let (code, _) = api
        .call(Method::DELETE, &format!("/api/agents/{}", s.agent_id), None)
        .await;
    assert_eq!(code, 204);
    let deleted_ms = chrono::Utc::now().timestamp_millis();
    // A job of another agent, firing every second, shows the scheduler went
    // three due times past the deletion; a firing of the deleted agent's job
    // already under way when it was deleted (due within a second of it) may
    // land, none later.
    let (other, token) = api.register_agent("control").await;
    let source = MemorySource::new(vec![api_def("c", "C", "v1")]);
    let control_agent = Agent::start(&s.gw.grpc_url, &token, vec![(PROVIDER, "tyk", source)]);
    let connected = eventually(T, || async {
        let shown = api.get_ok(&format!("/api/agents/{other}")).await;
        (!shown["providers"].is_null()).then_some(())
    })
    .await;
    assert!(connected.is_some(), "the control agent never connected");
    let control = create_job(&api, &other, "1s", aligned_start(0)).await;
    let control = control["id"].as_str().unwrap().to_owned();
    wait_for_firings(&api, &other, &control, 1, |f| {
        due_ms(f) >= deleted_ms + 3_000
    })
    .await;
    let late: Vec<i64> = fired_events(&s.nats)
        .await
        .into_iter()
        .filter_map(|e| match e {
            ScheduleEvent::Fired { job_id, due_ms, .. }
                if job_id.to_string() == id && due_ms > deleted_ms + 1_000 =>
            {
                Some(due_ms)
            }
            _ => None,
        })
        .collect();
    assert!(
        late.is_empty(),
        "a deleted agent's job fired for due times {late:?} (deleted at {deleted_ms})"
    );
    control_agent.stop().await;
    let (code, body) = api
        .get(&format!("/api/agents/{}/sync-jobs/{id}", s.agent_id))
        .await;
    assert_eq!(code, 404, "{body}");
    scheduler.stop().await;
    s.gw.rest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_requests_are_refused_naming_the_field_and_store_nothing() {
    let s = setup().await;
    let scheduler = start_scheduler(&s.nats, |_| {}).await;
    let api = s.api.with_scheduler(&scheduler.url);
    let (silent, _) = api.register_agent("never-connected").await;
    let jobs = format!("/api/agents/{}/sync-jobs", s.agent_id);

    let cases: Vec<(String, &str, u16, &str)> = vec![
        (
            jobs.clone(),
            r#"{"provider":"tyk-provider"}"#,
            400,
            "repeat_every",
        ),
        (
            jobs.clone(),
            r#"{"repeat_every":"soon","provider":"tyk-provider"}"#,
            400,
            "repeat_every",
        ),
        (
            jobs.clone(),
            r#"{"repeat_every":"-1h","provider":"tyk-provider"}"#,
            400,
            "repeat_every",
        ),
        (
            jobs.clone(),
            r#"{"repeat_every":"500ms","provider":"tyk-provider"}"#,
            400,
            "at least 1s",
        ),
        (jobs.clone(), r#"{"repeat_every":"1h"}"#, 400, "provider"),
        (
            jobs.clone(),
            r#"{"repeat_every":"1h","provider":"nope"}"#,
            400,
            "has not reported a provider named \"nope\"",
        ),
        (
            jobs.clone(),
            r#"{"repeat_every":"1h","provider":"tyk-provider","start_from":"June 1st"}"#,
            400,
            "start_from",
        ),
        (
            jobs.clone(),
            r#"{"repeat_every":"1h","provider":"tyk-provider","colour":"red"}"#,
            400,
            "colour",
        ),
        (jobs.clone(), r#"{"repeat_every":"1h","#, 400, "body"),
        (
            format!("/api/agents/{silent}/sync-jobs"),
            r#"{"repeat_every":"1h","provider":"tyk-provider"}"#,
            400,
            "never connected",
        ),
        (
            format!("/api/agents/{}/sync-jobs", uuid::Uuid::new_v4()),
            r#"{"repeat_every":"1h","provider":"tyk-provider"}"#,
            404,
            "no agent",
        ),
        (
            "/api/agents/not-a-uuid/sync-jobs".into(),
            r#"{"repeat_every":"1h","provider":"tyk-provider"}"#,
            400,
            "id",
        ),
    ];
    for (path, body, status, mentions) in cases {
        let (code, answer) = api.call(Method::POST, &path, Some(body)).await;
        assert_eq!(code, status, "{body} -> {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(mentions),
            "{body}: {answer} does not mention {mentions:?}"
        );
    }
    let (code, _) = api
        .with_key(None)
        .post(&jobs, &json!({"repeat_every": "1h", "provider": PROVIDER}))
        .await;
    assert_eq!(code, 401);
    let list = api.get_ok(&jobs).await;
    assert_eq!(list, json!([]), "a refused request stored a job");

    // A bad update changes nothing; an unknown job is 404.
    let job = create_job(&api, &s.agent_id, "1h", aligned_start(3_600_000)).await;
    let path = format!("{jobs}/{}", job["id"].as_str().unwrap());
    let (code, answer) = api
        .call(Method::PUT, &path, Some(r#"{"repeat_every":"1 hour"}"#))
        .await;
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("repeat_every")
    );
    let unchanged = api.get_ok(&path).await;
    assert_eq!(unchanged, job);
    let (code, _) = api.get(&format!("{jobs}/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(code, 404);
    scheduler.stop().await;
    s.gw.rest.stop().await;
}
