//! The sync stream: sync requests to the agent, its runs back into `SYNC`.
//!
//! Each sync stream subscribes (queue group `sync`) to the agent's core-NATS
//! request subject, so a sync asked for on any replica (REST, scheduler)
//! reaches the replica holding the stream. Runs belong to the stream they
//! were requested on; [`crate::domain::runs`] decides what each message
//! means, and a message that breaks the protocol (or cannot be decoded) ends
//! the stream with `InvalidArgument` (`ResourceExhausted` when too large) and
//! the reason. When a stream ends, its unfinished runs are appended as
//! `failed` with the reason, so nothing waits forever.
//!
//! A run's APIs are appended in chunks ([`super::chunks`]); an API sent twice
//! in one run is stored once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use meridian_kit::bus::{AckWindow, BusError};
use meridian_kit::time::now_ms;
use meridian_schemas::agents::ProviderRef;
use meridian_schemas::commands::{self, RunProbe, RunStarted, TriggerSync, TriggerSyncReply};
use meridian_schemas::proto::{SyncMessage, SyncRequest, sync_message};
use meridian_schemas::sync::{ApiDefinition, DiscoveredApi, SyncEvent, SyncEventKind};
use meridian_schemas::{AgentId, EventMeta, RunId, streams};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;
use uuid::Uuid;

use super::chunks::{AcceptedApi, Chunk, add_to_chunk, drain_where};
use super::{BoxStream, Hub, inbound_failure};
use crate::domain::runs::{self, End, Message, Runs, Step};

/// The runs of one stream, shared by its receiver and its request responder.
type SharedRuns = Arc<Mutex<Runs>>;

/// How long the initial sync of a new stream waits for the agent's hello to
/// reach the registry.
const HELLO_PATIENCE: Duration = Duration::from_secs(5);

fn lock(runs: &SharedRuns) -> std::sync::MutexGuard<'_, Runs> {
    // The state machine never panics half-way through a change.
    runs.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Opens a sync stream: authenticates, raises the fence, serves sync
/// requests for the agent, starts the initial sync, and follows the runs.
pub(super) async fn open(
    hub: &Hub,
    req: Request<Streaming<SyncMessage>>,
) -> Result<Response<BoxStream<SyncRequest>>, Status> {
    let (agent, jti) = hub.authenticate(&req)?;
    let fencing_token = hub.fence(agent, req.metadata()).await?;
    let inbound = req.into_inner();
    let (tx, rx) = mpsc::channel::<Result<SyncRequest, Status>>(64);
    let runs = SharedRuns::default();
    let subscription = hub
        .client
        .queue_subscribe(streams::sync_request_subject(agent), "sync".into())
        .await
        .map_err(|e| Status::unavailable(format!("cannot subscribe to sync requests: {e}")))?;
    // Every holder of the agent's streams hears run probes; the one holding
    // the run answers (see `adapters::orphans`).
    let probes = hub
        .client
        .subscribe(streams::run_probe_subject(agent))
        .await
        .map_err(|e| Status::unavailable(format!("cannot subscribe to run probes: {e}")))?;
    tracing::info!(%agent, ?fencing_token, "agent connected (sync stream)");
    let responder = tokio::spawn(respond(
        hub.clone(),
        agent,
        subscription,
        runs.clone(),
        tx.clone(),
    ));
    let prober = tokio::spawn(answer_probes(hub.clone(), probes, runs.clone()));
    // The initial sync of a new connection.
    let initial = (hub.clone(), runs.clone(), tx.clone());
    tokio::spawn(async move {
        let (hub, runs, tx) = initial;
        match start_runs(&hub, agent, None, &runs, &tx, HELLO_PATIENCE).await {
            TriggerSyncReply::Started(started) => {
                tracing::info!(%agent, runs = started.len(), "initial sync requested")
            }
            other => tracing::warn!(%agent, ?other, "initial sync not started"),
        }
    });
    let hub = hub.clone();
    tokio::spawn(async move {
        let reason = receive(&hub, agent, (jti, fencing_token), inbound, &runs, &tx).await;
        responder.abort();
        prober.abort();
        fail_open_runs(&hub, agent, &runs, &reason).await;
        tracing::info!(%agent, %reason, "agent sync stream ended");
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// Answers the core-NATS sync requests for `agent` while its stream is open.
async fn respond(
    hub: Hub,
    agent: AgentId,
    mut subscription: async_nats::Subscriber,
    runs: SharedRuns,
    tx: mpsc::Sender<Result<SyncRequest, Status>>,
) {
    while let Some(message) = subscription.next().await {
        let span = tracing::info_span!("sync.request", service = "agent-gateway", %agent);
        meridian_kit::telemetry::follow(
            &span,
            meridian_kit::telemetry::extract_nats(message.headers.as_ref()).as_deref(),
        );
        let reply = match commands::decode::<TriggerSync>(&message.payload) {
            Ok(trigger) => {
                start_runs(&hub, agent, trigger.provider, &runs, &tx, Duration::ZERO)
                    .instrument(span)
                    .await
            }
            Err(e) => TriggerSyncReply::UnknownProvider(format!("malformed request: {e}")),
        };
        if let Some(reply_to) = message.reply
            && let Err(e) = hub
                .client
                .publish(reply_to, commands::encode(&reply).into())
                .await
        {
            tracing::warn!(%agent, error = %e, "could not answer a sync request");
        }
    }
}

/// Answers `true` to a probe for a run this stream holds; stays silent for
/// the others (another stream of the agent may hold them).
async fn answer_probes(hub: Hub, mut probes: async_nats::Subscriber, runs: SharedRuns) {
    while let Some(message) = probes.next().await {
        let Ok(probe) = commands::decode::<RunProbe>(&message.payload) else {
            continue;
        };
        if lock(&runs).is_open(probe.run_id)
            && let Some(reply_to) = message.reply
        {
            let _ = hub
                .client
                .publish(reply_to, commands::encode(&true).into())
                .await;
        }
    }
}

/// Pushes sync requests for one provider (or all) to the agent.
async fn start_runs(
    hub: &Hub,
    agent: AgentId,
    provider: Option<String>,
    runs: &SharedRuns,
    tx: &mpsc::Sender<Result<SyncRequest, Status>>,
    patience: Duration,
) -> TriggerSyncReply {
    // A brand-new connection's hello may still be on its way through the log.
    let mut changes = hub.registry.changes();
    let known = tokio::time::timeout(patience, async {
        loop {
            if let Some(p) = hub.registry.get(agent).and_then(|r| r.providers) {
                return p;
            }
            if changes.changed().await.is_err() {
                return Vec::new();
            }
        }
    })
    .await
    .unwrap_or_default();
    let chosen: Vec<ProviderRef> = match &provider {
        Some(name) => match known.iter().find(|p| &p.name == name) {
            Some(p) => vec![p.clone()],
            None => return TriggerSyncReply::UnknownProvider(name.clone()),
        },
        None => known,
    };
    let mut started = Vec::new();
    let traceparent = meridian_kit::telemetry::current_traceparent();
    for p in chosen {
        let run_id = RunId::new_random();
        lock(runs).request(run_id, &p.name, &p.provider_type, traceparent.clone());
        let request = SyncRequest {
            run_id: run_id.to_string(),
            provider: p.name.clone(),
            traceparent: traceparent.clone().unwrap_or_default(),
        };
        if tx.send(Ok(request)).await.is_err() {
            lock(runs).withdraw(run_id);
            return TriggerSyncReply::SyncStreamDown;
        }
        started.push(RunStarted {
            provider: p.name,
            run_id,
        });
    }
    TriggerSyncReply::Started(started)
}

/// What one checked sync message turns into.
enum Inbound {
    /// An API, for its run's chunk.
    Api(AcceptedApi),
    /// An API the run already sent: dropped.
    Duplicate,
    /// Anything else: the event, whether it ends its run, the run's trace
    /// context.
    Event(SyncEvent, bool, Option<String>),
}

/// Appends what the agent sends until the stream ends; returns why it
/// ended. `opened_with` is the stream's token id and fencing token.
///
/// API messages are gathered per run into chunks, published when a chunk
/// is full, when its run sends anything else, when it has waited
/// [`super::Settings::chunk_linger`], and when the stream ends; the other
/// messages are published as they come, after their run's chunk.
async fn receive(
    hub: &Hub,
    agent: AgentId,
    opened_with: (Uuid, Option<u64>),
    mut inbound: Streaming<SyncMessage>,
    runs: &SharedRuns,
    tx: &mpsc::Sender<Result<SyncRequest, Status>>,
) -> String {
    let mut window = AckWindow::new(hub.settings.publish_window);
    let mut chunks: Vec<Chunk> = Vec::new();
    // The agent's record, checked per message, re-read only when the
    // registry has applied an event since (a heartbeat, a revocation).
    let mut record = None;
    let result: Result<String, Status> = async {
        loop {
            let linger = chunks.iter().map(|c| c.due).min();
            let message = tokio::select! {
                m = inbound.message() => m,
                () = tx.closed() => return Ok("hub side closed".to_owned()),
                () = sleep_until(linger) => {
                    let now = tokio::time::Instant::now();
                    for chunk in drain_where(&mut chunks, |c| c.due <= now) {
                        publish_chunk(hub, agent, chunk, &mut window)
                            .await
                            .map_err(unavailable)?;
                    }
                    continue;
                }
            };
            let message = match message {
                Ok(Some(m)) => m,
                Ok(None) => return Ok("agent closed the stream".to_owned()),
                Err(status) => {
                    return match inbound_failure("sync", &status) {
                        Some(answer) => Err(answer),
                        None => Ok(format!("stream error: {}", status.message())),
                    };
                }
            };
            let (jti, stream_fence) = opened_with;
            hub.still_valid(
                hub.registry.get_cached(agent, &mut record),
                jti,
                message.fencing_token.or(stream_fence),
            )?;
            let (event, ends_run, traceparent) = match to_event(hub, agent, message, runs)? {
                Inbound::Duplicate => continue,
                Inbound::Api(api) => {
                    if let Some(full) = add_to_chunk(&mut chunks, api, hub.settings.chunk_linger) {
                        publish_chunk(hub, agent, full, &mut window)
                            .await
                            .map_err(unavailable)?;
                    }
                    continue;
                }
                Inbound::Event(event, ends_run, traceparent) => (event, ends_run, traceparent),
            };
            // What the run sent before this goes first.
            for chunk in drain_where(&mut chunks, |c| c.run_id == event.run_id) {
                publish_chunk(hub, agent, chunk, &mut window)
                    .await
                    .map_err(unavailable)?;
            }
            if ends_run {
                let span = tracing::info_span!("sync.run_ended", service = "agent-gateway", %agent, run_id = %event.run_id);
                meridian_kit::telemetry::follow(&span, traceparent.as_deref());
                span.in_scope(|| tracing::debug!("run ended"));
            }
            publish_event(hub, &event, traceparent, &mut window)
                .await
                .map_err(unavailable)?;
            if ends_run {
                window.flush().await.map_err(unavailable)?;
            }
        }
    }
    .await;
    // What was accepted is stored, however the stream ended.
    let mut flushed = Ok(());
    for chunk in chunks {
        if flushed.is_ok() {
            flushed = publish_chunk(hub, agent, chunk, &mut window).await;
        }
    }
    if flushed.is_ok() {
        flushed = window.flush().await.map(|_| ());
    }
    match (result, flushed) {
        (Ok(reason), Ok(())) => reason,
        (Ok(_), Err(e)) => format!("publishing failed: {e}"),
        (Err(status), _) => {
            let reason = status.message().to_owned();
            let _ = tx.send(Err(status)).await;
            reason
        }
    }
}

async fn publish_chunk(
    hub: &Hub,
    agent: AgentId,
    chunk: Chunk,
    window: &mut AckWindow,
) -> Result<(), BusError> {
    let event = SyncEvent {
        run_id: chunk.run_id,
        agent_id: agent,
        provider: chunk.run.provider.clone(),
        kind: SyncEventKind::Apis {
            first: chunk.first,
            apis: chunk.apis,
        },
    };
    publish_event(hub, &event, chunk.run.traceparent.clone(), window).await
}

async fn publish_event(
    hub: &Hub,
    event: &SyncEvent,
    traceparent: Option<String>,
    window: &mut AckWindow,
) -> Result<(), BusError> {
    let meta = EventMeta {
        occurred_at_ms: now_ms(),
        correlation_id: Some(event.run_id.0),
        traceparent,
        ..Default::default()
    };
    let pending = hub.publisher.start(event, meta).await?;
    window.push(pending).await
}

/// Checks one message against the stream's runs ([`crate::domain::runs`])
/// and maps it to an API for its run's chunk, or to an event (with whether
/// it ends the run, and the run's trace context).
fn to_event(
    hub: &Hub,
    agent: AgentId,
    message: SyncMessage,
    runs: &SharedRuns,
) -> Result<Inbound, Status> {
    let run_id = RunId::parse(&message.run_id).map_err(|_| {
        Status::invalid_argument(format!(
            "run_id: {:?} is not a UUID",
            runs::quote(&message.run_id)
        ))
    })?;
    let mut api = None;
    let checked = match message.kind {
        None => Message::Empty,
        Some(sync_message::Kind::Started(_)) => Message::Started,
        Some(sync_message::Kind::Api(a)) => {
            let checked = Message::Api {
                provider_api_id: a.provider_api_id.clone(),
                size: a.encoded_len(),
            };
            api = Some(a);
            checked
        }
        Some(sync_message::Kind::Completed(c)) => Message::Completed { count: c.count },
        Some(sync_message::Kind::Failed(f)) => Message::Failed { reason: f.reason },
    };
    let (step, run) = lock(runs)
        .accept(
            run_id,
            &message.provider,
            checked,
            hub.settings.max_api_bytes,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let event = |kind| SyncEvent {
        run_id,
        agent_id: agent,
        provider: run.provider.clone(),
        kind,
    };
    Ok(match step {
        Step::Duplicate => {
            tracing::debug!(%agent, %run_id, "api sent twice in one run; the repeat is dropped");
            Inbound::Duplicate
        }
        Step::Api { number } => {
            let api = api.expect("an API step comes from an API message");
            Inbound::Api(AcceptedApi {
                run_id,
                run,
                number,
                bytes: api.encoded_len(),
                api: DiscoveredApi::new(ApiDefinition::from(api)),
            })
        }
        Step::Started => Inbound::Event(
            event(SyncEventKind::Started {
                provider_type: run.provider_type.clone(),
            }),
            false,
            run.traceparent.clone(),
        ),
        Step::Ended(end) => {
            let kind = match end {
                End::Completed { count } => {
                    hub.sync_runs("completed").inc();
                    SyncEventKind::Completed { count }
                }
                End::Failed { reason } => {
                    hub.sync_runs("failed").inc();
                    SyncEventKind::Failed { reason }
                }
            };
            Inbound::Event(event(kind), true, run.traceparent.clone())
        }
    })
}

/// Appends `failed` for every run of the stream that started and has not
/// ended.
async fn fail_open_runs(hub: &Hub, agent: AgentId, runs: &SharedRuns, reason: &str) {
    let open = lock(runs).close();
    let events: Vec<_> = open
        .into_iter()
        .map(|(run_id, run)| {
            let event = SyncEvent {
                run_id,
                agent_id: agent,
                provider: run.provider.clone(),
                kind: SyncEventKind::Failed {
                    reason: format!("sync stream ended during the run: {reason}"),
                },
            };
            let meta = EventMeta {
                occurred_at_ms: now_ms(),
                correlation_id: Some(run_id.0),
                traceparent: run.traceparent.clone(),
                ..Default::default()
            };
            (event, meta)
        })
        .collect();
    hub.sync_runs("failed").inc_by(events.len() as u64);
    if let Err(e) = hub.publisher.publish_all(events).await {
        tracing::warn!(%agent, error = %e, "could not record unfinished runs as failed");
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unavailable(e: BusError) -> Status {
    Status::unavailable(e.to_string())
}
