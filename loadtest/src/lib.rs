//! What the benchmarks share.

pub mod wrk;

use std::time::Instant;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures_util::StreamExt;
use meridian_kit::bus::{AckWindow, PUBLISH_WINDOW, stream_config};
use meridian_schemas::sync::{
    ApiDefinition, CHUNK_MAX_APIS, DiscoveredApi, SyncEvent, SyncEventKind,
};
use meridian_schemas::{AgentId, Envelope, Event, EventMeta, RunId, streams};
use meridian_tests::api_def;

/// A definition whose encoded `SYNC` message is about 2 KB (the spine
/// benchmark's API).
pub fn definition(i: usize) -> meridian_schemas::proto::ApiDefinition {
    let mut d = api_def(&format!("api-{i:06}"), &format!("Benchmark API {i}"), "v1");
    d.raw = serde_json::json!({"api_id": d.provider_api_id, "description": "x".repeat(1_750)})
        .to_string();
    d
}

/// One sync run of `n` [`definition`]s as the `SYNC` stream holds it:
/// started, the APIs in full chunks as the gateway stores them (see
/// [`meridian_schemas::sync::CHUNK_MAX_APIS`]), completed. Encoded envelopes
/// with their sequences and subjects.
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
    let apis: Vec<DiscoveredApi> = (0..n)
        .map(|i| DiscoveredApi::new(ApiDefinition::from(definition(i))))
        .collect();
    events.extend(apis.chunks(CHUNK_MAX_APIS).zip(0..).map(|(chunk, i)| {
        event(SyncEventKind::Apis {
            first: (i * CHUNK_MAX_APIS) as u64,
            apis: chunk.to_vec(),
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

/// The size of one API's `SYNC` message as version 1 of the gateway stored
/// it, one message per API: the message size of the same-run references.
pub fn api_message_size() -> usize {
    let api = DiscoveredApi::new(ApiDefinition::from(definition(0)));
    let event = SyncEvent {
        run_id: RunId::new_random(),
        agent_id: AgentId::new_random(),
        provider: "bench".into(),
        kind: SyncEventKind::Api {
            definition: api.definition,
            content_hash: api.content_hash,
        },
    };
    Envelope::wrap(&event, EventMeta::default())
        .to_bytes()
        .len()
}

/// The stream the same-run references use: configured as `SYNC`.
pub const BENCH_STREAM: &str = "BENCH";

/// Messages/s of publishing `n` messages of `size` bytes to [`BENCH_STREAM`]
/// with `Nats-Msg-Id` and awaited acks, 512 in flight: the same-run
/// reference for the gateway's appends.
pub async fn raw_publish(js: &jetstream::Context, n: usize, size: usize) -> anyhow::Result<f64> {
    let mut config = stream_config(streams::SYNC);
    config.name = BENCH_STREAM.into();
    config.subjects = vec!["bench.>".into()];
    js.create_or_update_stream(config).await?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let mut window = AckWindow::new(PUBLISH_WINDOW);
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
