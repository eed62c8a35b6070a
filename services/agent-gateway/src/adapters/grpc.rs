//! The agent-facing gRPC service: health and sync streams.
//!
//! Protocol: the agent opens the health stream, says `Hello` with its
//! providers, waits for the first `HealthReply`, then opens the sync stream.
//! Opening the sync stream triggers an initial sync of every provider.
//!
//! A replica of an agent that elects a leader opens the sync stream with its
//! fencing token (`x-meridian-fencing-token`) and puts it on every message:
//! opening raises the agent's fence through `AGENTS` (so every gateway
//! replica sees it), and a message or stream with an older token is refused
//! with `FailedPrecondition`, failing its open runs: a deposed leader cannot
//! finish a run.
//!
//! Each sync stream subscribes (queue group `sync`) to the agent's core-NATS
//! request subject, so a sync asked for on any replica (REST, scheduler)
//! reaches the replica holding the stream. Runs belong to the stream they were
//! requested on; messages for other runs, out of order, oversized or malformed
//! end the stream with `InvalidArgument`. When a stream ends, its unfinished
//! runs are appended as `failed` with the reason, so nothing waits forever.
//!
//! A run's API messages are appended in chunks (see
//! [`meridian_schemas::sync`]): one `SYNC` message per up to 64 APIs the
//! agent sent in a row, so a large sync costs the bus a publish per chunk,
//! not per API. An API sent twice in one run is stored once.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use meridian_kit::bus::{AckWindow, BusError, Publisher};
use meridian_kit::metrics::{Counter, Family, Labels, Metrics};
use meridian_kit::time::now_ms;
use meridian_schemas::agents::{Heartbeat, ProviderRef};
use meridian_schemas::commands::{self, RunStarted, TriggerSync, TriggerSyncReply};
use meridian_schemas::proto::agent_hub_server::AgentHub;
use meridian_schemas::proto::{
    HealthMessage, HealthReply, SyncMessage, SyncRequest, health_message, sync_message,
};
use meridian_schemas::sync::{
    ApiDefinition, CHUNK_MAX_APIS, CHUNK_MAX_BYTES, DiscoveredApi, SyncEvent, SyncEventKind,
};
use meridian_schemas::{AgentId, EventMeta, FENCING_TOKEN_METADATA, RunId, streams};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;
use uuid::Uuid;

use super::registry::{ExecError, Registry};
use super::tokens::{TokenError, Tokens};
use crate::domain::{self, AgentRecord, Command, Rejection};

/// Protocol settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often agents must send a heartbeat.
    pub heartbeat_interval: Duration,
    /// Missed heartbeats before an agent counts as `INACTIVE`.
    pub missed_heartbeats: u32,
    /// Largest encoded `ApiDefinition` accepted.
    pub max_api_bytes: usize,
    /// Publishes (mostly chunks of APIs) kept in flight per sync stream.
    pub publish_window: usize,
    /// Longest an API waits in a chunk that is not full.
    pub chunk_linger: Duration,
}

/// The service.
#[derive(Clone)]
pub struct Hub {
    registry: Registry,
    tokens: Tokens,
    publisher: Publisher,
    client: async_nats::Client,
    settings: Settings,
    /// `meridian_sync_runs_total{result}`: runs that ended, as agents
    /// reported them (or as a broken stream left them).
    sync_runs: Family<Labels, Counter>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Hub {
    /// Builds the service.
    pub fn new(
        registry: Registry,
        tokens: Tokens,
        publisher: Publisher,
        client: async_nats::Client,
        settings: Settings,
        metrics: &Metrics,
    ) -> Self {
        let sync_runs = metrics.counters(
            "meridian_sync_runs",
            "Sync runs ended, by result (completed, failed)",
        );
        Self {
            registry,
            tokens,
            publisher,
            client,
            settings,
            sync_runs,
        }
    }

    fn sync_runs(&self, result: &str) -> Counter {
        self.sync_runs
            .get_or_create_owned(&vec![("result", result.to_owned())])
    }

    /// Checks `authorization: Bearer <token>` against signature, expiry and
    /// the registry's current token for the agent.
    fn authenticate<T>(&self, req: &Request<T>) -> Result<(AgentId, Uuid), Status> {
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing authorization metadata (expected `Bearer <token>`)")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        let (agent, jti) = self.tokens.verify(token.trim()).map_err(|e| match e {
            TokenError::Expired => Status::unauthenticated("token expired"),
            TokenError::Invalid(_) => Status::unauthenticated("token is not valid"),
        })?;
        self.still_valid(self.registry.get(agent).as_ref(), jti, None)?;
        Ok((agent, jti))
    }

    /// The token is still the agent's current one (`record` is the agent's
    /// registry record) and, for a leading replica, its fencing token is not
    /// older than the newest seen.
    fn still_valid(
        &self,
        record: Option<&AgentRecord>,
        jti: Uuid,
        fencing_token: Option<u64>,
    ) -> Result<(), Status> {
        let Some(record) = record else {
            return Err(Status::unauthenticated("unknown agent (deleted?)"));
        };
        if !domain::token_valid(Some(record), jti, now_ms()) {
            return Err(Status::unauthenticated(
                "token revoked, replaced or expired",
            ));
        }
        if let Some(token) = fencing_token {
            domain::check_fence(record, token)
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
        }
        Ok(())
    }

    /// Reads the opener's fencing token and raises the agent's fence to it
    /// (through the log, so every replica refuses the older leader).
    async fn fence(&self, agent: AgentId, metadata: &MetadataMap) -> Result<Option<u64>, Status> {
        let Some(value) = metadata.get(FENCING_TOKEN_METADATA) else {
            return Ok(None);
        };
        let token: u64 = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{FENCING_TOKEN_METADATA}: must be a non-negative integer"
                ))
            })?;
        match self
            .registry
            .execute(
                agent,
                Command::Fence {
                    fencing_token: token,
                },
            )
            .await
        {
            Ok(_) => Ok(Some(token)),
            Err(ExecError::Rejected(r @ Rejection::Fenced { .. })) => {
                Err(Status::failed_precondition(r.to_string()))
            }
            Err(ExecError::Rejected(r)) => Err(Status::unauthenticated(r.to_string())),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn beat(&self, agent: AgentId) -> Result<(), BusError> {
        let at_ms = now_ms();
        let window = self.settings.heartbeat_interval * self.settings.missed_heartbeats;
        let beat = Heartbeat {
            agent_id: agent,
            at_ms,
            active_until_ms: at_ms + window.as_millis() as i64,
        };
        self.publisher
            .publish(
                &beat,
                EventMeta {
                    occurred_at_ms: at_ms,
                    ..Default::default()
                },
            )
            .await
            .map(|_| ())
    }

    async fn announce(
        &self,
        agent: AgentId,
        hello: meridian_schemas::proto::Hello,
    ) -> Result<(), Status> {
        let providers: Vec<ProviderRef> = hello
            .providers
            .into_iter()
            .map(|p| ProviderRef {
                name: p.name,
                provider_type: p.r#type,
            })
            .collect();
        let command = Command::Connect {
            connection_id: Uuid::new_v4(),
            providers,
            agent_version: hello.agent_version,
        };
        match self.registry.execute(agent, command).await {
            Ok(_) => {}
            Err(ExecError::Rejected(Rejection::Invalid { field, why })) => {
                return Err(Status::invalid_argument(format!("hello.{field}: {why}")));
            }
            Err(ExecError::Rejected(e)) => return Err(Status::unauthenticated(e.to_string())),
            Err(e) => return Err(Status::unavailable(e.to_string())),
        }
        self.beat(agent)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}

#[tonic::async_trait]
impl AgentHub for Hub {
    type HealthStream = BoxStream<HealthReply>;
    type SyncStream = BoxStream<SyncRequest>;

    async fn health(
        &self,
        req: Request<Streaming<HealthMessage>>,
    ) -> Result<Response<Self::HealthStream>, Status> {
        let (agent, jti) = self.authenticate(&req)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 30 s"))??;
        let Some(HealthMessage {
            kind: Some(health_message::Kind::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message on the health stream must be hello",
            ));
        };
        self.announce(agent, hello).await?;
        tracing::info!(%agent, "agent connected (health stream)");
        let (tx, rx) = mpsc::channel(4);
        let interval = self.settings.heartbeat_interval.as_secs().max(1) as u32;
        let _ = tx
            .send(Ok(HealthReply {
                heartbeat_interval_seconds: interval,
            }))
            .await;
        let hub = self.clone();
        tokio::spawn(async move {
            let reason = loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    () = tx.closed() => break "hub side closed".to_owned(),
                };
                let result = match message {
                    Ok(Some(HealthMessage {
                        kind: Some(health_message::Kind::Heartbeat(_)),
                    })) => match hub.still_valid(hub.registry.get(agent).as_ref(), jti, None) {
                        Err(status) => Err(status),
                        Ok(()) => hub
                            .beat(agent)
                            .await
                            .map_err(|e| Status::unavailable(e.to_string())),
                    },
                    Ok(Some(HealthMessage {
                        kind: Some(health_message::Kind::Hello(hello)),
                    })) => hub.announce(agent, hello).await,
                    Ok(Some(HealthMessage { kind: None })) => Err(Status::invalid_argument(
                        "health message without hello or heartbeat",
                    )),
                    Ok(None) => break "agent closed the stream".to_owned(),
                    Err(status) => break format!("stream error: {}", status.message()),
                };
                if let Err(status) = result {
                    let reason = status.message().to_owned();
                    let _ = tx.send(Err(status)).await;
                    break reason;
                }
            };
            tracing::info!(%agent, %reason, "agent health stream ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn sync(
        &self,
        req: Request<Streaming<SyncMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let (agent, jti) = self.authenticate(&req)?;
        let fencing_token = self.fence(agent, req.metadata()).await?;
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<SyncRequest, Status>>(64);
        let runs: Runs = Arc::new(Mutex::new(HashMap::new()));
        let subscription = self
            .client
            .queue_subscribe(streams::sync_request_subject(agent), "sync".into())
            .await
            .map_err(|e| Status::unavailable(format!("cannot subscribe to sync requests: {e}")))?;
        tracing::info!(%agent, ?fencing_token, "agent connected (sync stream)");
        let responder = tokio::spawn(respond(
            self.clone(),
            agent,
            subscription,
            runs.clone(),
            tx.clone(),
        ));
        // The initial sync of a new connection.
        let hub = self.clone();
        let (initial_runs, initial_tx) = (runs.clone(), tx.clone());
        tokio::spawn(async move {
            match hub
                .start_runs(
                    agent,
                    None,
                    &initial_runs,
                    &initial_tx,
                    Duration::from_secs(5),
                )
                .await
            {
                TriggerSyncReply::Started(started) => {
                    tracing::info!(%agent, runs = started.len(), "initial sync requested")
                }
                other => tracing::warn!(%agent, ?other, "initial sync not started"),
            }
        });
        let hub = self.clone();
        tokio::spawn(async move {
            let reason = hub
                .receive(agent, (jti, fencing_token), inbound, &runs, &tx)
                .await;
            responder.abort();
            hub.fail_open_runs(agent, &runs, &reason).await;
            tracing::info!(%agent, %reason, "agent sync stream ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Runs requested on one sync stream and whether each has started.
type Runs = Arc<Mutex<HashMap<RunId, RunTrack>>>;

#[derive(Clone, Debug)]
struct RunTrack {
    provider: String,
    provider_type: String,
    started: bool,
    /// Trace context of the request that started the run.
    traceparent: Option<String>,
    /// The provider ids of the APIs accepted so far (a repeat is dropped).
    sent: HashSet<String>,
}

/// A sync message, checked.
enum Inbound {
    /// An API, for its run's chunk.
    Api(AcceptedApi),
    /// An API the run already sent: dropped.
    Duplicate,
    /// Anything else: the event, whether it ends its run, the run's trace
    /// context.
    Event(SyncEvent, bool, Option<String>),
}

/// An API message accepted into its run.
struct AcceptedApi {
    run_id: RunId,
    provider: String,
    traceparent: Option<String>,
    /// API messages of the run before it.
    number: u64,
    /// Its encoded size.
    bytes: usize,
    api: DiscoveredApi,
}

/// APIs of one run waiting to be published together.
struct Chunk {
    run_id: RunId,
    provider: String,
    traceparent: Option<String>,
    /// API messages of the run before the chunk's first.
    first: u64,
    apis: Vec<DiscoveredApi>,
    bytes: usize,
    /// When it is published even if not full.
    due: tokio::time::Instant,
}

/// Removes and returns the chunks that match, keeping the others in order.
fn drain_where(chunks: &mut Vec<Chunk>, matches: impl Fn(&Chunk) -> bool) -> Vec<Chunk> {
    let (taken, kept) = std::mem::take(chunks).into_iter().partition(matches);
    *chunks = kept;
    taken
}

/// Adds an API to its run's chunk, opening one when there is none;
/// returns a chunk that is ready to publish: the run's, once full, or the
/// one the API would have overfilled (the API then opens the next).
fn add_to_chunk(chunks: &mut Vec<Chunk>, api: AcceptedApi, linger: Duration) -> Option<Chunk> {
    let position = chunks.iter().position(|c| c.run_id == api.run_id);
    let mut ready = None;
    if let Some(i) = position
        && chunks[i].bytes + api.bytes > CHUNK_MAX_BYTES
    {
        ready = Some(chunks.swap_remove(i));
    }
    let i = match chunks.iter().position(|c| c.run_id == api.run_id) {
        Some(i) => i,
        None => {
            chunks.push(Chunk {
                run_id: api.run_id,
                provider: api.provider,
                traceparent: api.traceparent,
                first: api.number,
                apis: Vec::with_capacity(CHUNK_MAX_APIS),
                bytes: 0,
                due: tokio::time::Instant::now() + linger,
            });
            chunks.len() - 1
        }
    };
    let chunk = &mut chunks[i];
    chunk.apis.push(api.api);
    chunk.bytes += api.bytes;
    if ready.is_none() && chunk.apis.len() >= CHUNK_MAX_APIS {
        ready = Some(chunks.swap_remove(i));
    }
    ready
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn respond(
    hub: Hub,
    agent: AgentId,
    mut subscription: async_nats::Subscriber,
    runs: Runs,
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
                hub.start_runs(agent, trigger.provider, &runs, &tx, Duration::ZERO)
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

impl Hub {
    /// Pushes sync requests for one provider (or all) to the agent.
    async fn start_runs(
        &self,
        agent: AgentId,
        provider: Option<String>,
        runs: &Runs,
        tx: &mpsc::Sender<Result<SyncRequest, Status>>,
        patience: Duration,
    ) -> TriggerSyncReply {
        // A brand-new connection's hello may still be on its way through the log.
        let deadline = tokio::time::Instant::now() + patience;
        let known = loop {
            match self.registry.get(agent).and_then(|r| r.providers) {
                Some(p) => break p,
                None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                None => break Vec::new(),
            }
        };
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
            runs.lock().expect("runs lock").insert(
                run_id,
                RunTrack {
                    provider: p.name.clone(),
                    provider_type: p.provider_type.clone(),
                    started: false,
                    traceparent: traceparent.clone(),
                    sent: HashSet::new(),
                },
            );
            let request = SyncRequest {
                run_id: run_id.to_string(),
                provider: p.name.clone(),
                traceparent: traceparent.clone().unwrap_or_default(),
            };
            if tx.send(Ok(request)).await.is_err() {
                runs.lock().expect("runs lock").remove(&run_id);
                return TriggerSyncReply::SyncStreamDown;
            }
            started.push(RunStarted {
                provider: p.name,
                run_id,
            });
        }
        TriggerSyncReply::Started(started)
    }

    /// Appends what the agent sends until the stream ends; returns why it
    /// ended. `opened_with` is the stream's token id and fencing token.
    ///
    /// API messages are gathered per run into chunks ([`SyncEventKind::Apis`]),
    /// published when a chunk is full, when its run sends anything else, when
    /// it has waited [`Settings::chunk_linger`], and when the stream ends; the
    /// other messages are published as they come, after their run's chunk.
    async fn receive(
        &self,
        agent: AgentId,
        opened_with: (Uuid, Option<u64>),
        mut inbound: Streaming<SyncMessage>,
        runs: &Runs,
        tx: &mpsc::Sender<Result<SyncRequest, Status>>,
    ) -> String {
        let mut window = AckWindow::new(self.settings.publish_window);
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
                        let due: Vec<Chunk> = drain_where(&mut chunks, |c| c.due <= now);
                        for chunk in due {
                            self.publish_chunk(agent, chunk, &mut window)
                                .await
                                .map_err(unavailable)?;
                        }
                        continue;
                    }
                };
                let message = match message {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok("agent closed the stream".to_owned()),
                    Err(status) => return Ok(format!("stream error: {}", status.message())),
                };
                let (jti, stream_fence) = opened_with;
                self.still_valid(
                    self.registry.get_cached(agent, &mut record),
                    jti,
                    message.fencing_token.or(stream_fence),
                )?;
                let (event, ends_run, traceparent) = match self.to_event(agent, message, runs)? {
                    Inbound::Duplicate => continue,
                    Inbound::Api(api) => {
                        let full = add_to_chunk(&mut chunks, api, self.settings.chunk_linger);
                        if let Some(chunk) = full {
                            self.publish_chunk(agent, chunk, &mut window)
                                .await
                                .map_err(unavailable)?;
                        }
                        continue;
                    }
                    Inbound::Event(event, ends_run, traceparent) => (event, ends_run, traceparent),
                };
                // What the run sent before this goes first.
                let before = drain_where(&mut chunks, |c| c.run_id == event.run_id);
                for chunk in before {
                    self.publish_chunk(agent, chunk, &mut window)
                        .await
                        .map_err(unavailable)?;
                }
                if ends_run {
                    let span = tracing::info_span!("sync.run_ended", service = "agent-gateway", %agent, run_id = %event.run_id);
                    meridian_kit::telemetry::follow(&span, traceparent.as_deref());
                    span.in_scope(|| tracing::debug!("run ended"));
                }
                self.publish_event(&event, traceparent, &mut window)
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
                flushed = self.publish_chunk(agent, chunk, &mut window).await;
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
        &self,
        agent: AgentId,
        chunk: Chunk,
        window: &mut AckWindow,
    ) -> Result<(), BusError> {
        let event = SyncEvent {
            run_id: chunk.run_id,
            agent_id: agent,
            provider: chunk.provider,
            kind: SyncEventKind::Apis {
                first: chunk.first,
                apis: chunk.apis,
            },
        };
        self.publish_event(&event, chunk.traceparent, window).await
    }

    async fn publish_event(
        &self,
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
        let pending = self.publisher.start(event, meta).await?;
        window.push(pending).await
    }

    /// Validates one message against the stream's runs and maps it to an
    /// API for its run's chunk, or to an event (with whether it ends the run,
    /// and the run's trace context).
    fn to_event(
        &self,
        agent: AgentId,
        message: SyncMessage,
        runs: &Runs,
    ) -> Result<Inbound, Status> {
        let run_id = RunId::parse(&message.run_id).map_err(|_| {
            Status::invalid_argument(format!("run_id: {:?} is not a UUID", message.run_id))
        })?;
        let mut runs = runs.lock().expect("runs lock");
        let track = runs.get_mut(&run_id).ok_or_else(|| {
            Status::invalid_argument(format!(
                "run_id: {run_id} was not requested on this stream (or has ended)"
            ))
        })?;
        if message.provider != track.provider {
            return Err(Status::invalid_argument(format!(
                "provider: run {run_id} is for {:?}, not {:?}",
                track.provider, message.provider
            )));
        }
        let provider = track.provider.clone();
        let traceparent = track.traceparent.clone();
        let (kind, ends) = match message.kind {
            None => {
                return Err(Status::invalid_argument(
                    "sync message without started, api, completed or failed",
                ));
            }
            Some(sync_message::Kind::Started(_)) if track.started => {
                return Err(Status::invalid_argument(format!(
                    "run {run_id}: started twice"
                )));
            }
            Some(sync_message::Kind::Started(_)) => {
                track.started = true;
                (
                    SyncEventKind::Started {
                        provider_type: track.provider_type.clone(),
                    },
                    false,
                )
            }
            Some(sync_message::Kind::Api(_)) if !track.started => {
                return Err(Status::invalid_argument(format!(
                    "run {run_id}: api before started"
                )));
            }
            Some(sync_message::Kind::Api(api)) => {
                let size = api.encoded_len();
                if size > self.settings.max_api_bytes {
                    return Err(Status::invalid_argument(format!(
                        "api {:?}: definition is {size} bytes, the limit is {}",
                        api.provider_api_id, self.settings.max_api_bytes
                    )));
                }
                if api.provider_api_id.is_empty() {
                    return Err(Status::invalid_argument(
                        "api.provider_api_id: must not be empty",
                    ));
                }
                // An API sent twice in one run is stored once (the first).
                if !track.sent.insert(api.provider_api_id.clone()) {
                    tracing::debug!(%agent, %run_id, api = %api.provider_api_id, "api sent twice in one run; the repeat is dropped");
                    return Ok(Inbound::Duplicate);
                }
                let number = track.sent.len() as u64 - 1;
                return Ok(Inbound::Api(AcceptedApi {
                    run_id,
                    provider,
                    traceparent,
                    number,
                    bytes: size,
                    api: DiscoveredApi::new(ApiDefinition::from(api)),
                }));
            }
            Some(sync_message::Kind::Completed(_)) if !track.started => {
                return Err(Status::invalid_argument(format!(
                    "run {run_id}: completed before started"
                )));
            }
            Some(sync_message::Kind::Completed(c)) => {
                (SyncEventKind::Completed { count: c.count }, true)
            }
            Some(sync_message::Kind::Failed(f)) => {
                let reason = if f.reason.trim().is_empty() {
                    "agent reported failure".to_owned()
                } else {
                    f.reason
                };
                (SyncEventKind::Failed { reason }, true)
            }
        };
        if ends {
            runs.remove(&run_id);
            let result = if matches!(kind, SyncEventKind::Completed { .. }) {
                "completed"
            } else {
                "failed"
            };
            self.sync_runs(result).inc();
        }
        Ok(Inbound::Event(
            SyncEvent {
                run_id,
                agent_id: agent,
                provider,
                kind,
            },
            ends,
            traceparent,
        ))
    }

    /// Appends `failed` for every run of the stream that has not ended.
    async fn fail_open_runs(&self, agent: AgentId, runs: &Runs, reason: &str) {
        let open: Vec<(RunId, RunTrack)> = runs.lock().expect("runs lock").drain().collect();
        let events = open
            .into_iter()
            .filter(|(_, t)| t.started)
            .map(|(run_id, t)| {
                let event = SyncEvent {
                    run_id,
                    agent_id: agent,
                    provider: t.provider,
                    kind: SyncEventKind::Failed {
                        reason: format!("sync stream ended during the run: {reason}"),
                    },
                };
                (
                    event,
                    EventMeta {
                        occurred_at_ms: now_ms(),
                        correlation_id: Some(run_id.0),
                        traceparent: t.traceparent,
                        ..Default::default()
                    },
                )
            });
        let events: Vec<_> = events.collect();
        self.sync_runs("failed").inc_by(events.len() as u64);
        if let Err(e) = self.publisher.publish_all(events).await {
            tracing::warn!(%agent, error = %e, "could not record unfinished runs as failed");
        }
    }
}

fn unavailable(e: BusError) -> Status {
    Status::unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(run: RunId, number: u64, bytes: usize) -> AcceptedApi {
        AcceptedApi {
            run_id: run,
            provider: "p".into(),
            traceparent: None,
            number,
            bytes,
            api: DiscoveredApi::new(ApiDefinition {
                provider_api_id: format!("api-{number}"),
                ..Default::default()
            }),
        }
    }

    /// A chunk is ready when full, or when the next API would overfill it
    /// by bytes (that API opens the next chunk); runs never share one.
    #[test]
    fn chunks_fill_per_run_by_count_and_by_bytes() {
        let linger = Duration::from_millis(5);
        let (a, b) = (RunId::new_random(), RunId::new_random());
        let mut chunks = Vec::new();
        for n in 0..CHUNK_MAX_APIS as u64 - 1 {
            assert!(add_to_chunk(&mut chunks, api(a, n, 100), linger).is_none());
        }
        assert!(add_to_chunk(&mut chunks, api(b, 0, 100), linger).is_none());
        let full = add_to_chunk(&mut chunks, api(a, 63, 100), linger).expect("64 APIs");
        assert_eq!(
            (full.run_id, full.first, full.apis.len()),
            (a, 0, CHUNK_MAX_APIS)
        );
        assert_eq!(chunks.len(), 1, "run b's chunk stays open");

        let big = CHUNK_MAX_BYTES / 2 - 10;
        assert!(add_to_chunk(&mut chunks, api(a, 64, big), linger).is_none());
        assert!(add_to_chunk(&mut chunks, api(a, 65, big), linger).is_none());
        let over = add_to_chunk(&mut chunks, api(a, 66, big), linger).expect("over the bytes");
        assert_eq!((over.first, over.apis.len()), (64, 2));
        let next = chunks.iter().find(|c| c.run_id == a).unwrap();
        assert_eq!((next.first, next.apis.len()), (66, 1));
    }
}
