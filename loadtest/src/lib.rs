//! What the benchmarks share.

use std::time::Instant;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures_util::StreamExt;
use meridian_schemas::sync::{ApiDefinition, SyncEvent, SyncEventKind};
use meridian_schemas::{AgentId, Envelope, Event, EventMeta, RunId};
use meridian_tests::api_def;

/// A definition whose encoded `SYNC` message is about 2 KB (the spine
/// benchmark's API).
pub fn definition(i: usize) -> meridian_schemas::proto::ApiDefinition {
    let mut d = api_def(&format!("api-{i:06}"), &format!("Benchmark API {i}"), "v1");
    d.raw = serde_json::json!({"api_id": d.provider_api_id, "description": "x".repeat(1_750)})
        .to_string();
    d
}

/// One sync run of `n` [`definition`]s as the `SYNC` stream holds it
/// (started, the APIs, completed): encoded envelopes with their sequences
/// and subjects.
pub fn encoded_run(n: usize) -> Vec<(u64, String, Vec<u8>)> {
    let run_id = RunId::new_random();
    let agent_id = AgentId::new_random();
    let event = |kind| SyncEvent {
        run_id,
        agent_id,
        provider: "bench".into(),
        kind,
    };
    let mut events = vec![event(SyncEventKind::Started {
        provider_type: "tyk".into(),
    })];
    events.extend((0..n).map(|i| {
        let definition = ApiDefinition::from(definition(i));
        event(SyncEventKind::Api {
            content_hash: definition.content_hash(),
            definition,
        })
    }));
    events.push(event(SyncEventKind::Completed { count: n as u64 }));
    events
        .iter()
        .zip(1..)
        .map(|(e, seq)| {
            let meta = EventMeta {
                occurred_at_ms: 1_700_000_000_000 + seq as i64,
                ..EventMeta::default()
            };
            (seq, e.subject(), Envelope::wrap(e, meta).to_bytes())
        })
        .collect()
}

/// Messages/s of reading the first `count` messages of `stream` with a raw
/// ordered consumer: the same-run reference for replaying it.
pub async fn ordered_drain(
    js: &jetstream::Context,
    stream: &str,
    count: u64,
) -> anyhow::Result<f64> {
    let stream = js.get_stream(stream).await?;
    let started = Instant::now();
    let mut messages = stream
        .create_consumer(OrderedConfig::default())
        .await?
        .messages()
        .await?;
    let mut seen = 0;
    while seen < count {
        messages
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the stream ended after {seen} messages"))??;
        seen += 1;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}
