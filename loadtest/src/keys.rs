//! Key-issuer benchmark: create 100,000 keys through the Gateway API
//! (`POST /tyk/keys`, 64 clients at once, each key applying one policy), then
//! look their effective sessions up in the fold, as the proxy does once per
//! request.
//!
//! Creates/s is set beside two same-run references on the same NATS: raw
//! JetStream publishes of messages of a stored key's size with the same 64
//! writers, each awaiting its ack and expecting its subject's last sequence
//! (what a create costs on the bus), and the same with 512 acks in flight from
//! one writer (the bus's ceiling). Lookups are timed one by one (p50, p99,
//! max) beside a plain `HashMap` get without a lock.
//!
//! `cargo run --release -p meridian-loadtest --bin keys-bench [-- N]`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::header::{HeaderMap, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID};
use meridian_keys::fold::read;
use meridian_keys::hash_secret;
use meridian_kit::bus::stream_config;
use meridian_kit::projection::Digested;
use meridian_loadtest::raw_publish;
use meridian_schemas::keys::KeysEvent;
use meridian_schemas::{Envelope, EventMeta, streams};
use meridian_tests::Nats;
use meridian_tests::tyk::{GATEWAY_SECRET, start_key_issuer};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Clients creating keys at once.
const CLIENTS: usize = 64;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Nanosecond timings of `f` over `keys`, one call each, `rounds` times.
fn time_each<T>(keys: &[String], rounds: usize, mut f: impl FnMut(&str) -> T) -> Vec<u64> {
    let mut out = Vec::with_capacity(keys.len() * rounds);
    for _ in 0..rounds {
        for k in keys {
            let started = Instant::now();
            std::hint::black_box(f(k));
            out.push(started.elapsed().as_nanos() as u64);
        }
    }
    out.sort_unstable();
    out
}

/// Messages/s of `writers` tasks publishing `n` messages of `size` bytes in
/// all, each on its own subject expecting that subject's last sequence,
/// one at a time per writer (awaiting each ack).
async fn raw_expecting(
    js: &async_nats::jetstream::Context,
    n: usize,
    size: usize,
    writers: usize,
) -> anyhow::Result<f64> {
    let mut config = stream_config(streams::KEYS);
    config.name = "BENCH_KEYS".into();
    config.subjects = vec!["benchkeys.>".into()];
    js.create_or_update_stream(config).await?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let js = js.clone();
        let payload = payload.clone();
        tasks.spawn(async move {
            let mut i = w;
            while i < n {
                let mut headers = HeaderMap::new();
                headers.insert(NATS_MESSAGE_ID, format!("bench-key-{i}").as_str());
                headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
                js.publish_with_headers(format!("benchkeys.{i}"), headers, payload.clone())
                    .await?
                    .await?;
                i += writers;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = meridian_tests::size_arg(100_000)?;
    println!("key-issuer benchmark: {n} keys through POST /tyk/keys, {CLIENTS} clients at once");
    let nats = Nats::start().await;
    let (key_issuer, state) = start_key_issuer(&nats, |_| {}).await;
    let http = reqwest::Client::new();
    let base = key_issuer.url.clone();
    let post = |path: String, body: String| {
        http.post(format!("{base}{path}"))
            .header("x-tyk-authorization", GATEWAY_SECRET)
            .body(body)
            .send()
    };
    let policy = serde_json::json!({"id": "bench", "rate": 100, "per": 1, "quota_max": 10_000,
        "quota_renewal_rate": 3600, "access_rights": {"pets": {"api_id": "pets", "versions": ["Default"]}}});
    let answer = post("/tyk/policies".into(), policy.to_string()).await?;
    anyhow::ensure!(
        answer.status().is_success(),
        "policy: {}",
        answer.text().await?
    );

    let rss_before = rss_mib();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let http = http.clone();
        let base = base.clone();
        tasks.spawn(async move {
            let mut keys = Vec::new();
            let mut i = c;
            while i < n {
                let body = format!(
                    r#"{{"org_id": "bench", "alias": "key-{i}", "apply_policies": ["bench"], "meta_data": {{"n": {i}}}}}"#
                );
                let answer: serde_json::Value = http
                    .post(format!("{base}/tyk/keys"))
                    .header("x-tyk-authorization", GATEWAY_SECRET)
                    .body(body)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let key = answer["key"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("no key in {answer}"))?;
                keys.push(key.to_owned());
                i += CLIENTS;
            }
            anyhow::Ok(keys)
        });
    }
    let mut keys = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        keys.extend(done??);
    }
    let create_s = started.elapsed().as_secs_f64();
    let creates = n as f64 / create_s;
    let rss_after = rss_mib();
    anyhow::ensure!(read(&state).key_count() == n, "the fold has every key");

    // The size of a stored key's event, for the references.
    let size = {
        let hash = hash_secret(&keys[0]);
        let view = read(&state);
        let entry = view.key(&hash).expect("the first key");
        let event = KeysEvent::KeySaved {
            key_hash: hash.clone(),
            session: serde_json::to_string(entry.value.as_ref())?,
            created: true,
            change_id: uuid::Uuid::new_v4(),
            at_ms: 0,
        };
        Envelope::wrap(&event, EventMeta::default())
            .to_bytes()
            .len()
    };
    // The fold alone, without NATS or HTTP: the same events applied to a
    // fresh view (what every replica does at start, and per write).
    let events: Vec<KeysEvent> = {
        let view = read(&state);
        let mut events = vec![KeysEvent::PolicySaved {
            policy_id: "bench".into(),
            policy: serde_json::to_string(
                view.policy("bench").expect("the policy").value.as_ref(),
            )?,
            created: true,
            change_id: uuid::Uuid::new_v4(),
            at_ms: 0,
        }];
        for k in &keys {
            let hash = hash_secret(k);
            let session = serde_json::to_string(view.key(&hash).expect("a key").value.as_ref())?;
            events.push(KeysEvent::KeySaved {
                key_hash: hash,
                session,
                created: true,
                change_id: uuid::Uuid::new_v4(),
                at_ms: 0,
            });
        }
        events
    };
    let mut fresh = meridian_keys::KeysState::default();
    let apply_started = Instant::now();
    for (i, event) in events.iter().enumerate() {
        fresh.apply(event, i as u64 + 1)?;
    }
    let apply_s = apply_started.elapsed().as_secs_f64();
    anyhow::ensure!(
        fresh.digest() != String::new() && fresh.key_count() == n,
        "the fold applied every key"
    );
    drop(fresh);
    let raw_same = raw_expecting(&nats.js, n, size, CLIENTS).await?;
    let raw_window = raw_publish(&nats.js, n, size).await?;

    println!();
    println!("| creates | keys | seconds | keys/s | vs reference |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| POST /tyk/keys ({CLIENTS} clients; check, compare-and-set publish, folded back) | {n} | {create_s:.2} | {creates:.0} | {:.2}x |",
        creates / raw_same
    );
    println!(
        "| reference: raw JetStream publish of {size} B, {CLIENTS} writers, each ack awaited, expected last subject sequence | {n} | {:.2} | {raw_same:.0} | 1.00x |",
        n as f64 / raw_same
    );
    println!(
        "| reference: raw JetStream publish of {size} B, 512 acks in flight | {n} | {:.2} | {raw_window:.0} | {:.2}x |",
        n as f64 / raw_window,
        raw_window / raw_same
    );
    println!(
        "| the fold alone: applying the same {n} key events to a fresh view (parse, merge, index), no NATS | {n} | {apply_s:.2} | {:.0} | {:.2}x |",
        n as f64 / apply_s,
        n as f64 / apply_s / raw_same
    );
    println!(
        "\nresident memory: {rss_before:.0} MiB before the creates, {rss_after:.0} MiB after \
         ({:.0} bytes per key, the whole process: fold, NATS client, HTTP)",
        (rss_after - rss_before) * 1024.0 * 1024.0 / n as f64
    );

    // Lookups: each key's effective session, as the proxy reads it.
    let hashes: Vec<String> = keys.iter().map(|k| hash_secret(k)).collect();
    let rounds = 10;
    let shared = state.clone();
    let fold = time_each(&hashes, rounds, |h| {
        read(&shared).effective(h).and_then(|e| e.clone().ok())
    });
    let with_hash = time_each(&keys, 1, |k| {
        let h = hash_secret(k);
        read(&shared).effective(&h).and_then(|e| e.clone().ok())
    });
    let plain: HashMap<String, Arc<u64>> = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| (h.clone(), Arc::new(i as u64)))
        .collect();
    let reference = time_each(&hashes, rounds, |h| plain.get(h).cloned());
    anyhow::ensure!(
        hashes
            .iter()
            .all(|h| matches!(read(&state).effective(h), Some(Ok(_)))),
        "every key has an effective session"
    );
    println!();
    println!("| lookups | lookups | lookups/s | p50 | p99 | max |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (what, t) in [
        (
            "effective session by key hash (the fold: read lock, hash map, Arc clone)",
            &fold,
        ),
        (
            "the same from the key itself (SHA-256 of it first)",
            &with_hash,
        ),
        ("reference: HashMap get and Arc clone, no lock", &reference),
    ] {
        let total: u64 = t.iter().sum();
        println!(
            "| {what} | {} | {:.0} | {} ns | {} ns | {} ns |",
            t.len(),
            t.len() as f64 / (total as f64 / 1e9),
            percentile(t, 50.0),
            percentile(t, 99.0),
            t[t.len() - 1]
        );
    }
    let p99 = Duration::from_nanos(percentile(&fold, 99.0));
    println!(
        "\nfold lookup p99 {p99:?}: {} the 1 µs target",
        if p99 < Duration::from_micros(1) {
            "meets"
        } else {
            "MISSES"
        }
    );
    key_issuer.stop().await;
    Ok(())
}
