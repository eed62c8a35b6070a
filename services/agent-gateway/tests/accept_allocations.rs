//! Accepting a message of a sync run costs the same at the 10,000th API as
//! at the 10th: counted in allocations, so it fails on quadratic behaviour
//! without timing anything. Named for the regression: each accepted API
//! used to answer with a copy of the whole run, including the set of every
//! API id it had seen (sync ingest went from 26k APIs/s to 1.8k at 60,000).
//!
//! This binary runs on allocation-counter's global allocator, which counts
//! per thread.

use meridian_agent_gateway::domain::runs::{Message, Runs, Step};
use meridian_schemas::RunId;

const LIMIT: usize = 1 << 20;

fn api(n: usize) -> Message {
    Message::Api {
        provider_api_id: format!("api-{n:08}"),
        size: 100,
    }
}

#[test]
fn accepting_the_10000th_api_allocates_no_more_than_the_10th() {
    let run = RunId::new_random();
    let mut runs = Runs::default();
    runs.request(
        run,
        "provider",
        "tyk",
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    );
    runs.accept(run, "provider", Message::Started, LIMIT)
        .expect("started");
    let mut bytes_at = Vec::new();
    for n in 0..=10_000 {
        // The message is built outside the count: only accepting it counts.
        let message = api(n);
        let mut step = None;
        let counted = allocation_counter::measure(|| {
            step = Some(runs.accept(run, "provider", message, LIMIT).map(|(s, _)| s));
        });
        assert_eq!(step, Some(Ok(Step::Api { number: n as u64 })));
        if n == 10 || n == 10_000 {
            bytes_at.push((n, counted.bytes_total, counted.count_total));
        }
    }
    let (tenth, ten_thousandth) = (bytes_at[0], bytes_at[1]);
    assert!(
        ten_thousandth.1 <= tenth.1 && ten_thousandth.2 <= tenth.2,
        "accepting API #{} allocated {} bytes in {} allocations, API #{} {} bytes in {}: \
         per-message work grows with the run",
        ten_thousandth.0,
        ten_thousandth.1,
        ten_thousandth.2,
        tenth.0,
        tenth.1,
        tenth.2,
    );
}

/// The run's end hands back its facts as the messages before it did, and
/// the run is gone: the facts are shared, not the run.
#[test]
fn the_end_of_a_large_run_answers_its_facts_without_copying_it() {
    let run = RunId::new_random();
    let mut runs = Runs::default();
    runs.request(run, "provider", "aws", None);
    runs.accept(run, "provider", Message::Started, LIMIT)
        .expect("started");
    for n in 0..5_000 {
        runs.accept(run, "provider", api(n), LIMIT).expect("api");
    }
    let mut answer = None;
    let counted = allocation_counter::measure(|| {
        answer = Some(runs.accept(run, "provider", Message::Completed { count: 5_000 }, LIMIT));
    });
    let (_, facts) = answer.expect("measured").expect("completed");
    assert_eq!(
        (facts.provider.as_str(), facts.provider_type.as_str()),
        ("provider", "aws")
    );
    assert!(!runs.is_open(run));
    assert_eq!(
        counted.bytes_total, 0,
        "ending a run of 5,000 APIs allocated {} bytes",
        counted.bytes_total
    );
}
