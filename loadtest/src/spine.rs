//! Event-spine benchmark. A synthetic agent streams N API definitions of about
//! 2 KB over gRPC through agent-gateway into inventory; then inventory rebuilds
//! from the log. Beside them, in the same run, on a stream with the same
//! configuration, one message per API of the size one API's `SYNC` message
//! has on its own: raw async-nats publish with `Nats-Msg-Id` and awaited acks
//! (512 in flight), and a raw ordered-consumer drain. Prints a table with the
//! ratios. The gateway stores a run's APIs in chunks (up to 64 a message), so
//! the table also says how many messages `SYNC` held and how fast a raw
//! drain of that very stream goes.
//!
//! `cargo run --release -p meridian-loadtest --bin spine-bench [-- N]`

use std::time::{Duration, Instant};

use async_nats::jetstream;
use meridian_loadtest::{BENCH_STREAM, api_message_size, definition, ordered_drain, raw_publish};
use meridian_schemas::streams;
use meridian_tests::{Agent, Api, MemorySource, Nats, eventually, start_gateway, start_inventory};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = meridian_tests::size_arg(100_000)?;
    let size = api_message_size();
    println!(
        "spine benchmark: {n} API definitions, {size} bytes per reference message (one API's SYNC message), {} cores",
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
    let stored = tokio::spawn(stored_in_sync_log(nats.js.clone(), started));
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
    let rebuild_rate = n as f64 / report.seconds;
    let replay_rate = n as f64 / report.replay_seconds;
    let sync_messages = report.position;
    let sync_drain = ordered_drain(&nats.js, streams::SYNC, sync_messages).await?;
    gw.rest.stop().await;

    println!();
    println!(
        "| measure | rate (APIs/s) | same-run reference | reference (msg/s) | ratio | target |"
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
        "| inventory rebuild ({n} APIs in {sync_messages} SYNC messages) | {rebuild_rate:.0} | raw ordered-consumer drain | {drain_rate:.0} | {:.2}x | >= 0.5x |",
        rebuild_rate / drain_rate
    );
    println!(
        "| of which replaying the log (without connecting, clearing and the digest) | {replay_rate:.0} | | | {:.2}x | |",
        replay_rate / drain_rate
    );
    let per_message = n as f64 / sync_messages as f64;
    println!(
        "| for comparison: raw ordered drain of SYNC itself ({sync_messages} messages, {per_message:.1} APIs each) | {:.0} | | {sync_drain:.0} | rebuild {:.2}x | |",
        sync_drain * per_message,
        rebuild_rate / (sync_drain * per_message)
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

/// Seconds from `started` until the `SYNC` stream holds the run's end (the
/// gateway's share of the end-to-end time: it stores a run's APIs before
/// its end).
async fn stored_in_sync_log(js: jetstream::Context, started: Instant) -> anyhow::Result<f64> {
    let stream = js.get_stream_no_info(streams::SYNC).await?;
    loop {
        if let Ok(message) = stream
            .get_last_raw_message_by_subject(streams::SYNC_RUN_EVENTS)
            .await
            && message
                .headers
                .get(meridian_schemas::envelope::HEADER_EVENT_TYPE)
                .map(|v| v.as_str())
                == Some("sync.completed")
        {
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
