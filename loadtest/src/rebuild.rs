//! `rebuild` alone, several rounds against one log: one sync run of N API
//! definitions of about 2 KB (the spine benchmark's messages) is published
//! to `SYNC` as the gateway stores it, the inventory service projects it once
//! (so its lifecycle events are in their stream, as after a live sync), and
//! then each round drains a stream of N messages the size of one API's
//! `SYNC` message with a raw ordered consumer (the same-run reference, as in
//! the spine benchmark), drains `SYNC` itself (the APIs in chunks), and
//! rebuilds a fresh repository from it. The spine benchmark's `rebuild` row
//! without the end-to-end part, repeated, for measuring changes to the
//! runner, the projection or the store. Rates are APIs/s.
//!
//! `cargo run --release -p meridian-loadtest --bin rebuild-bench [-- N]`

use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream;
use meridian_kit::bus::{AckWindow, PUBLISH_WINDOW, ensure_streams};
use meridian_loadtest::{BENCH_STREAM, api_message_size, encoded_run, ordered_drain, raw_publish};
use meridian_schemas::streams;
use meridian_tests::{API_KEY, Api, Nats, eventually, start_inventory};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 3;

async fn publish(js: &jetstream::Context, run: Vec<(u64, String, Vec<u8>)>) -> anyhow::Result<()> {
    ensure_streams(js, &[streams::SYNC]).await?;
    let mut window = AckWindow::new(PUBLISH_WINDOW);
    for (seq, subject, bytes) in run {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, format!("rebuild-bench-{seq}").as_str());
        let ack = js
            .publish_with_headers(subject.clone(), headers, bytes.into())
            .await?;
        window.push_future(&subject, ack).await?;
    }
    window.flush().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = meridian_tests::size_arg(100_000)?;
    let run = encoded_run(n);
    let count = run.len() as u64;
    let size = api_message_size();
    println!(
        "rebuild benchmark: 1 run of {n} APIs in {count} SYNC messages ({} bytes per chunk), references of {size}-byte messages, {ROUNDS} rounds",
        run[1].2.len()
    );
    let nats = Nats::start().await;
    raw_publish(&nats.js, n, size).await?;
    publish(&nats.js, run).await?;

    let dir = tempfile::tempdir()?;
    let inventory = start_inventory(&nats, dir.path().join("live")).await;
    let api = Api::new("", &inventory.url);
    let projected = eventually(Duration::from_secs(300), || async {
        let (_, providers) = api.get("/api/providers").await;
        (providers[0]["api_count"].as_u64() == Some(n as u64)).then_some(())
    })
    .await;
    anyhow::ensure!(projected.is_some(), "inventory never projected {n} APIs");
    inventory.stop().await;

    println!();
    println!(
        "| round | rebuild APIs/s | of which replay APIs/s | raw ordered drain msg/s ({size} B) | ratio (rebuild) | ratio (replay) | raw drain of SYNC, APIs/s |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for round in 1..=ROUNDS {
        let drain_rate = ordered_drain(&nats.js, BENCH_STREAM, n as u64).await?;
        let sync_drain =
            ordered_drain(&nats.js, streams::SYNC, count).await? * n as f64 / count as f64;
        let report = meridian_inventory::rebuild(meridian_inventory::Config::new(
            &nats.url(),
            dir.path().join(format!("rebuilt-{round}")),
            API_KEY,
        ))
        .await?;
        anyhow::ensure!(report.position == count, "rebuild stopped at {report}");
        let rebuild_rate = n as f64 / report.seconds;
        let replay_rate = n as f64 / report.replay_seconds;
        println!(
            "| {round} | {rebuild_rate:.0} | {replay_rate:.0} | {drain_rate:.0} | {:.2}x | {:.2}x | {sync_drain:.0} |",
            rebuild_rate / drain_rate,
            replay_rate / drain_rate
        );
    }
    Ok(())
}
