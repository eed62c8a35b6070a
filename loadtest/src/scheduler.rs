//! Scheduler benchmark: 10,000 jobs due within the same minute. Prints
//! firing lateness (p50, p99, max: the firing's time minus its due time) and
//! the process's CPU seconds over that minute, beside a same-run reference: a
//! bare tokio timer per job, sleeping until the same due times in the same
//! process at the same moment.
//!
//! The agent reported its provider and then disconnected, so every firing
//! takes the whole path (claim in `SCHEDULE`, sync request over NATS, outcome
//! in `SCHEDULE`) and is reported as "agent offline" rather than starting
//! 10,000 real syncs. The hub's other services run in this process but are
//! idle during the minute; the CPU figure is the whole process's.
//!
//! `cargo run --release -p meridian-loadtest --bin scheduler-bench [-- N]`

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use meridian_kit::time::{now_ms, rfc3339};
use meridian_schemas::schedule::ScheduleEvent;
use meridian_schemas::streams;
use meridian_tests::{
    Agent, Api, MemorySource, Nats, eventually, start_gateway, start_scheduler, stream_count,
    stream_events,
};

/// Length of the window the due times are spread over.
const WINDOW_MS: i64 = 60_000;

/// CPU seconds (user + system) this process used so far, from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and
    // stime are fields 14 and 15 of the whole line, in clock ticks (100/s).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = meridian_tests::size_arg(10_000)?;
    println!("scheduler benchmark: {n} jobs due within one minute");

    let nats = Nats::start().await;
    let gw = start_gateway(&nats, |_| {}).await;
    let scheduler = start_scheduler(&nats, |c| c.replica = Some("bench".into())).await;
    let api = Api::new(&gw.rest.url, "").with_scheduler(&scheduler.url);
    let (agent_id, token) = api.register_agent("bench").await;
    let agent = Agent::start(
        &gw.grpc_url,
        &token,
        vec![("bench", "tyk", MemorySource::new(Vec::new()))],
    );
    eventually(Duration::from_secs(20), || async {
        let (_, shown) = api.get(&format!("/api/agents/{agent_id}")).await;
        (!shown["providers"].is_null()).then_some(())
    })
    .await
    .ok_or_else(|| anyhow::anyhow!("the agent never connected"))?;
    agent.stop().await;

    // Creating the jobs must end before the first is due.
    let lead_ms = 20_000 + (n as i64) * 4;
    let t0 = now_ms() + lead_ms;
    let due = move |i: usize| t0 + (i as i64 * WINDOW_MS) / n as i64;
    let created = std::time::Instant::now();
    let api = Arc::new(api);
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let agent_id = agent_id.clone();
            async move {
                let body = serde_json::json!({
                    "repeat_every": "1h", "provider": "bench", "start_from": rfc3339(due(i)),
                });
                let (code, answer) = api
                    .post(&format!("/api/agents/{agent_id}/sync-jobs"), &body)
                    .await;
                anyhow::ensure!(code == 201, "job {i}: {code} {answer}");
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<()>>()?;
    let creation_s = created.elapsed().as_secs_f64();
    anyhow::ensure!(
        now_ms() < t0,
        "creating {n} jobs took {creation_s:.1} s, past the first due time; use fewer jobs"
    );
    println!(
        "created {n} jobs in {creation_s:.1} s ({:.0}/s)",
        n as f64 / creation_s
    );

    // The reference: a bare timer per job, sleeping until the same due times.
    let reference = tokio::spawn(async move {
        let mut timers = futures_util::stream::iter(0..n)
            .map(|i| async move {
                let wait = u64::try_from(due(i) - now_ms()).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                now_ms() - due(i)
            })
            .buffer_unordered(n);
        let mut late = Vec::with_capacity(n);
        while let Some(l) = timers.next().await {
            late.push(l);
        }
        late
    });

    tokio::time::sleep(Duration::from_millis(
        u64::try_from(t0 - now_ms()).unwrap_or(0),
    ))
    .await;
    let cpu_before = cpu_seconds();
    // Done when the stream holds every job, firing and outcome (a cheap
    // count, so the wait itself costs next to no CPU).
    let fired_all = eventually(Duration::from_millis(WINDOW_MS as u64 + 30_000), || async {
        tokio::time::sleep(Duration::from_millis(950)).await;
        (stream_count(&nats.js, streams::SCHEDULE).await >= 3 * n as u64).then_some(())
    })
    .await;
    let cpu = cpu_seconds() - cpu_before;
    anyhow::ensure!(fired_all.is_some(), "not every job fired and reported");

    let events = stream_events::<ScheduleEvent>(&nats.js, streams::SCHEDULE).await;
    let mut late: Vec<i64> = events
        .iter()
        .filter_map(|e| match e {
            ScheduleEvent::Fired {
                due_ms,
                fired_at_ms,
                ..
            } => Some(fired_at_ms - due_ms),
            _ => None,
        })
        .collect();
    anyhow::ensure!(late.len() == n, "{} firings for {n} jobs", late.len());
    late.sort_unstable();
    let mut reference = reference.await?;
    reference.sort_unstable();

    println!();
    println!("| measure | p50 (ms) | p99 (ms) | max (ms) | CPU s over the minute | target |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    println!(
        "| scheduler: due time -> claimed and requested ({n} firings) | {} | {} | {} | {cpu:.2} | p99 < 100 ms |",
        percentile(&late, 50.0),
        percentile(&late, 99.0),
        late.last().copied().unwrap_or(0),
    );
    println!(
        "| reference: bare tokio timer per job, same due times | {} | {} | {} | (same process) | |",
        percentile(&reference, 50.0),
        percentile(&reference, 99.0),
        reference.last().copied().unwrap_or(0),
    );
    println!();
    let pass = percentile(&late, 99.0) < 100;
    println!("target {}", if pass { "met" } else { "NOT met" });
    scheduler.stop().await;
    gw.rest.stop().await;
    Ok(())
}
