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
//! Runs N APIs (default 30,000) and then 4N, each on a fresh server with
//! its own references: a rate at 4N within 15% of the rate at N says the
//! ingest path is linear in a run's size (a quadratic one quarters it).
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
    let n = meridian_tests::size_arg(30_000)?;
    let size = api_message_size();
    println!(
        "spine benchmark: {n} and {} API definitions (each size on a fresh nats-server with its own references), {size} bytes per reference message (one API's SYNC message), {} cores",
        4 * n,
        num_cpus()
    );
    let small = measure(n, size).await?;
    let large = measure(4 * n, size).await?;

    println!();
    println!(
        "| measure | APIs | rate (APIs/s) | same-run reference | reference (msg/s) | ratio | target |"
    );
    println!("| --- | ---: | ---: | --- | ---: | ---: | --- |");
    for m in [&small, &large] {
        let n = m.n;
        println!(
            "| end to end: agent -> gateway -> SYNC -> inventory | {n} | {:.0} | raw async publish, acks awaited | {:.0} | {:.2}x | >= 20,000/s and >= 0.5x |",
            m.e2e_rate,
            m.publish_rate,
            m.e2e_rate / m.publish_rate
        );
        println!(
            "| of which agent -> gateway -> SYNC stored | {n} | {:.0} | | | {:.2}x | |",
            m.stored_rate,
            m.stored_rate / m.publish_rate
        );
        println!(
            "| inventory rebuild ({} SYNC messages) | {n} | {:.0} | raw ordered-consumer drain | {:.0} | {:.2}x | >= 0.5x |",
            m.sync_messages,
            m.rebuild_rate,
            m.drain_rate,
            m.rebuild_rate / m.drain_rate
        );
        println!(
            "| of which replaying the log (without connecting, clearing and the digest) | {n} | {:.0} | | | {:.2}x | |",
            m.replay_rate,
            m.replay_rate / m.drain_rate
        );
        let per_message = n as f64 / m.sync_messages as f64;
        println!(
            "| for comparison: raw ordered drain of SYNC itself ({per_message:.1} APIs a message) | {n} | {:.0} | | {:.0} | rebuild {:.2}x | |",
            m.sync_drain * per_message,
            m.sync_drain,
            m.rebuild_rate / (m.sync_drain * per_message)
        );
    }
    let scaling = large.e2e_rate / small.e2e_rate;
    println!(
        "| scaling: end-to-end rate at {} APIs / at {n} | | {scaling:.2}x | | | | >= 0.85x (linear) |",
        large.n
    );
    println!();
    for m in [&small, &large] {
        println!(
            "{} APIs: end to end took {:.2} s; rebuild {:.2} s (replay {:.2} s)",
            m.n, m.e2e_seconds, m.rebuild_seconds, m.replay_seconds
        );
    }
    let pass = [&small, &large].iter().all(|m| {
        m.e2e_rate >= 20_000.0
            && m.e2e_rate / m.publish_rate >= 0.5
            && m.rebuild_rate / m.drain_rate >= 0.5
    }) && scaling >= 0.85;
    println!("targets {}", if pass { "met" } else { "NOT met" });
    Ok(())
}

/// One size's figures, each beside the references measured on the same
/// server just before.
struct Measured {
    n: usize,
    publish_rate: f64,
    drain_rate: f64,
    e2e_seconds: f64,
    e2e_rate: f64,
    stored_rate: f64,
    sync_messages: u64,
    rebuild_seconds: f64,
    replay_seconds: f64,
    rebuild_rate: f64,
    replay_rate: f64,
    sync_drain: f64,
}

/// Streams `n` APIs end to end on a fresh nats-server, then rebuilds.
async fn measure(n: usize, size: usize) -> anyhow::Result<Measured> {
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
    let done = eventually(Duration::from_secs(1_800), || async {
        let (_, providers) = api.get("/api/providers").await;
        (providers[0]["api_count"].as_u64() == Some(n as u64)).then_some(())
    })
    .await;
    let e2e_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(done.is_some(), "the repository never reached {n} APIs");
    let stored_seconds = stored.await??;
    agent.stop().await;
    inventory.stop().await;

    let report = meridian_inventory::rebuild(meridian_inventory::Config::new(
        &nats.url(),
        dir.path().join("rebuilt"),
        meridian_tests::API_KEY,
    ))
    .await?;
    let sync_messages = report.position;
    let sync_drain = ordered_drain(&nats.js, streams::SYNC, sync_messages).await?;
    gw.rest.stop().await;
    Ok(Measured {
        n,
        publish_rate,
        drain_rate,
        e2e_seconds,
        e2e_rate: n as f64 / e2e_seconds,
        stored_rate: n as f64 / stored_seconds,
        sync_messages,
        rebuild_seconds: report.seconds,
        replay_seconds: report.replay_seconds,
        rebuild_rate: n as f64 / report.seconds,
        replay_rate: n as f64 / report.replay_seconds,
        sync_drain,
    })
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
