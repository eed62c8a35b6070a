//! Event-spine benchmark. A synthetic agent streams N API definitions of about
//! 2 KB over gRPC through agent-gateway into inventory; then inventory rebuilds
//! from the log. Beside them, in the same run, on a stream with the same
//! configuration and message size: raw async-nats publish with `Nats-Msg-Id`
//! and awaited acks (512 in flight, as the services do), and a raw
//! ordered-consumer drain. Prints a table with the ratios.
//!
//! `cargo run --release -p meridian-loadtest --bin spine-bench [-- N]`

use std::time::{Duration, Instant};

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream;
use meridian_kit::bus::{AckWindow, stream_config};
use meridian_loadtest::{definition, ordered_drain};
use meridian_schemas::Envelope;
use meridian_schemas::sync::{ApiDefinition, SyncEvent, SyncEventKind};
use meridian_schemas::{AgentId, EventMeta, RunId, streams};
use meridian_tests::{Agent, Api, MemorySource, Nats, eventually, start_gateway, start_inventory};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BENCH_STREAM: &str = "BENCH";

/// The size of one SYNC message as the gateway stores it.
fn sync_message_size() -> usize {
    let def = ApiDefinition::from(definition(0));
    let event = SyncEvent {
        run_id: RunId::new_random(),
        agent_id: AgentId::new_random(),
        provider: "bench".into(),
        kind: SyncEventKind::Api {
            content_hash: def.content_hash(),
            definition: def,
        },
    };
    Envelope::wrap(&event, EventMeta::default())
        .to_bytes()
        .len()
}

async fn raw_publish(js: &jetstream::Context, n: usize, size: usize) -> anyhow::Result<f64> {
    let mut config = stream_config(streams::SYNC);
    config.name = BENCH_STREAM.into();
    config.subjects = vec!["bench.>".into()];
    js.create_or_update_stream(config).await?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let mut window = AckWindow::new(meridian_kit::bus::PUBLISH_WINDOW);
    let started = Instant::now();
    for i in 0..n {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, format!("bench-{i}").as_str());
        let ack = js
            .publish_with_headers("bench.x", headers, payload.clone())
            .await?;
        window.push_future("bench.x", ack).await?;
    }
    window.flush().await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = meridian_tests::size_arg(100_000)?;
    let size = sync_message_size();
    println!(
        "spine benchmark: {n} API definitions, {size} bytes per SYNC message, {} cores",
        num_cpus()
    );

    let nats = Nats::start().await;
    let publish_rate = raw_publish(&nats.js, n, size).await?;
    let drain_rate = ordered_drain(&nats.js, BENCH_STREAM, n as u64).await?;
    nats.js.delete_stream(BENCH_STREAM).await?;

    let gw = start_gateway(&nats, |_| {}).await;
    let dir = tempfile::tempdir()?;
    let inventory = start_inventory(&nats, dir.path().join("inventory")).await;
    let api = Api::new(&gw.rest.url, &inventory.url);
    let (_, token) = api.register_agent("bench").await;
    let source = MemorySource::new((0..n).map(definition).collect());

    // The agent's first connection starts the sync; the clock stops when
    // inventory counts every API of the provider.
    let started = Instant::now();
    let stored = tokio::spawn(stored_in_sync_log(nats.js.clone(), n as u64 + 2, started));
    let agent = Agent::start(&gw.grpc_url, &token, vec![("bench", "tyk", source)]);
    let done = eventually(Duration::from_secs(600), || async {
        let (_, providers) = api.get("/api/providers").await;
        (providers[0]["api_count"].as_u64() == Some(n as u64)).then_some(())
    })
    .await;
    let e2e_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(done.is_some(), "the repository never reached {n} APIs");
    let e2e_rate = n as f64 / e2e_seconds;
    let stored_seconds = stored.await??;
    agent.stop().await;
    inventory.stop().await;

    let report = meridian_inventory::rebuild(meridian_inventory::Config::new(
        &nats.url(),
        dir.path().join("rebuilt"),
        meridian_tests::API_KEY,
    ))
    .await?;
    let rebuild_rate = report.position as f64 / report.seconds;
    let replay_rate = report.position as f64 / report.replay_seconds;
    gw.rest.stop().await;

    println!();
    println!(
        "| measure | rate (msg/s) | same-run reference | reference (msg/s) | ratio | target |"
    );
    println!("| --- | ---: | --- | ---: | ---: | --- |");
    println!(
        "| end to end: agent -> gateway -> SYNC -> inventory | {e2e_rate:.0} | raw async publish, acks awaited | {publish_rate:.0} | {:.2}x | >= 20,000/s and >= 0.5x |",
        e2e_rate / publish_rate
    );
    println!(
        "| of which agent -> gateway -> SYNC stored | {:.0} | | | {:.2}x | |",
        n as f64 / stored_seconds,
        n as f64 / stored_seconds / publish_rate
    );
    println!(
        "| inventory rebuild ({} events) | {rebuild_rate:.0} | raw ordered-consumer drain | {drain_rate:.0} | {:.2}x | >= 0.5x |",
        report.position,
        rebuild_rate / drain_rate
    );
    println!(
        "| of which replaying the log (without connecting, clearing and the digest) | {replay_rate:.0} | | | {:.2}x | |",
        replay_rate / drain_rate
    );
    println!();
    println!(
        "end to end took {e2e_seconds:.2} s; rebuild {:.2} s (replay {:.2} s)",
        report.seconds, report.replay_seconds
    );
    let pass =
        e2e_rate >= 20_000.0 && e2e_rate / publish_rate >= 0.5 && rebuild_rate / drain_rate >= 0.5;
    println!("targets {}", if pass { "met" } else { "NOT met" });
    Ok(())
}

/// Seconds from `started` until the `SYNC` stream holds `count` messages
/// (the gateway's share of the end-to-end time).
async fn stored_in_sync_log(
    js: jetstream::Context,
    count: u64,
    started: Instant,
) -> anyhow::Result<f64> {
    let mut stream = js.get_stream(streams::SYNC).await?;
    loop {
        if stream.info().await?.state.messages >= count {
            return Ok(started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
