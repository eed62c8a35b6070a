//! The inventory projection alone, without NATS: one sync run of N API
//! definitions of about 2 KB (the spine benchmark's, in chunks as the
//! gateway stores them), decoded from their envelopes and applied in
//! batches of about the inventory's size to a fresh store, three times.
//! Prints APIs/s per round and the CPU time of the applying thread per API:
//! the `rebuild` row of `spine-bench` minus reading the stream. For measuring
//! changes to the projection or the store. The same-run reference is the
//! store's floor: the same messages written as they are under random 16-byte
//! keys, one store batch per projection batch, on a fresh store of the same
//! kind.
//!
//! `cargo run --release -p meridian-loadtest --bin apply-bench [-- N]`

use std::time::Instant;

use meridian_inventory::adapters::store::{PROJECTION_ID, Repository};
use meridian_kit::projection::{StoredEvent, apply_events};
use meridian_kit::store::Db;
use meridian_loadtest::encoded_run;
use meridian_schemas::Envelope;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Messages per batch: about the inventory's 4 MiB of 2 KB APIs.
const BATCH: usize = 32;

fn thread_cpu_seconds() -> f64 {
    // /proc/thread-self/stat fields 14 and 15: user and system ticks.
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// APIs/s of writing the messages as they are, under random keys.
fn store_floor(run: &[(u64, String, Vec<u8>)], apis: usize) -> anyhow::Result<f64> {
    let db = Db::temporary()?;
    let tree = db.open_tree("floor")?;
    let started = Instant::now();
    for chunk in run.chunks(BATCH) {
        let mut batch = tree.batch();
        for (_, _, bytes) in chunk {
            batch.insert(uuid::Uuid::new_v4().as_bytes().to_vec(), bytes.clone());
        }
        tree.apply(batch)?;
    }
    Ok(apis as f64 / started.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let n = meridian_tests::size_arg(100_000)?;
    let run = encoded_run(n);
    println!(
        "projection benchmark: 1 run of {n} APIs in {} messages, {} bytes per chunk, batches of {BATCH} messages, no NATS",
        run.len(),
        run[1].2.len()
    );
    println!();
    println!(
        "| round | projection APIs/s | store floor APIs/s | ratio | apply-thread CPU per API (us) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for round in 1..=3 {
        let floor = store_floor(&run, n)?;
        let db = Db::temporary()?;
        let tree = db.open_tree("inventory")?;
        let repository = Repository::after(None);
        let cpu = thread_cpu_seconds();
        let started = Instant::now();
        for chunk in run.chunks(BATCH) {
            // Decoding the envelope is the runner's share in the service.
            let events: Vec<StoredEvent> = chunk
                .iter()
                .map(|(seq, subject, bytes)| {
                    Ok(StoredEvent {
                        seq: *seq,
                        subject: subject.clone(),
                        envelope: Envelope::from_bytes(bytes)?,
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            apply_events(&tree, &repository, PROJECTION_ID, &events)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu = thread_cpu_seconds() - cpu;
        let rate = n as f64 / seconds;
        println!(
            "| {round} | {rate:.0} | {floor:.0} | {:.2}x | {:.2} |",
            rate / floor,
            cpu * 1e6 / n as f64
        );
    }
    Ok(())
}
