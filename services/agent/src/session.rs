//! The agent's connection to the hub: outbound only, plain or TLS. It opens
//! the health stream (hello with the providers, then heartbeats at the
//! interval the hub asks for) and, while this replica may sync (it leads, or
//! does not elect), the sync stream (the hub pushes sync requests; each run
//! is answered with `started`, one message per API, then `completed` with the
//! count or `failed` with the reason, every message carrying the fencing
//! token). A replica that stops leading closes its sync stream and abandons
//! its runs. When a stream breaks it reconnects with exponential backoff and
//! jitter, logging each change of state (never the token).

use std::sync::Arc;
use std::time::Duration;

use meridian_schemas::FENCING_TOKEN_METADATA;
use meridian_schemas::proto::agent_hub_client::AgentHubClient;
use meridian_schemas::proto::{
    HealthMessage, Heartbeat, Hello, Provider, SyncCompleted, SyncFailed, SyncMessage, SyncRequest,
    SyncStarted, health_message, sync_message,
};
use rustls::pki_types::ServerName;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::Uri;
use tracing::Instrument as _;

use meridian_kit::metrics::{Counter, Family, Labels, Metrics};
use meridian_kit::retry::Backoff;

use crate::election::Role;
use crate::providers::ProviderConfig;

/// gRPC keepalive towards the hub.
#[derive(Clone, Copy, Debug)]
pub struct Keepalive {
    /// Idle time before a ping.
    pub time: Duration,
    /// How long to wait for its answer.
    pub timeout: Duration,
    /// Ping even with no open stream.
    pub permit_without_stream: bool,
}

/// How the agent reaches the hub.
#[derive(Clone)]
pub struct SessionConfig {
    /// gRPC URL, e.g. `http://127.0.0.1:50051`.
    pub hub: String,
    /// Token from `POST /api/auth/token/`.
    pub token: String,
    /// Its providers.
    pub providers: Vec<ProviderConfig>,
    /// Keepalive pings (none when `None`).
    pub keepalive: Option<Keepalive>,
    /// Reported in the hello.
    pub agent_version: String,
    /// TLS towards the hub (plain gRPC when `None`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Where runs and discovered APIs are counted.
    pub counters: RunCounters,
}

/// The agent's counters of runs and discovered APIs, by provider.
#[derive(Clone)]
pub struct RunCounters {
    runs: Family<Labels, Counter>,
    discovered: Family<Labels, Counter>,
}

impl RunCounters {
    /// Registers `meridian_agent_sync_runs_total{provider,result}` and
    /// `meridian_agent_apis_discovered_total{provider}` in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            runs: metrics.counters(
                "meridian_agent_sync_runs",
                "Sync runs this agent ran, by provider and result",
            ),
            discovered: metrics.counters(
                "meridian_agent_apis_discovered",
                "APIs discovered and sent to the hub, by provider",
            ),
        }
    }

    fn ran(&self, provider: &str, result: &str) {
        let labels = vec![
            ("provider", provider.to_owned()),
            ("result", result.to_owned()),
        ];
        self.runs.get_or_create(&labels).inc();
    }

    fn discovered(&self, provider: &str, count: u64) {
        let labels = vec![("provider", provider.to_owned())];
        self.discovered.get_or_create(&labels).inc_by(count);
    }
}

impl SessionConfig {
    /// A session with default keepalive (30 s / 20 s).
    pub fn new(hub: &str, token: &str, providers: Vec<ProviderConfig>) -> Self {
        Self {
            hub: hub.to_owned(),
            token: token.to_owned(),
            providers,
            keepalive: Some(Keepalive {
                time: Duration::from_secs(30),
                timeout: Duration::from_secs(20),
                permit_without_stream: true,
            }),
            agent_version: format!("meridian-agent/{}", env!("CARGO_PKG_VERSION")),
            tls: None,
            counters: RunCounters::new(&Metrics::new()),
        }
    }
}

/// Runs the agent until `stop`, reconnecting with backoff (no election).
pub async fn run_until_stopped(config: SessionConfig, stop: CancellationToken) {
    let (_role, role_rx) = watch::channel(Role::NotElecting);
    run_reporting(config, stop, watch::channel(false).0, role_rx).await;
}

/// [`run_until_stopped`], reporting on `link` whether the hub streams are
/// up, and opening the sync stream only while `role` allows it.
pub async fn run_reporting(
    config: SessionConfig,
    stop: CancellationToken,
    link: watch::Sender<bool>,
    mut role: watch::Receiver<Role>,
) {
    let mut delays = RECONNECT.delays();
    while !stop.is_cancelled() {
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            r = session(&config, &stop, &link, &mut role) => r,
        };
        link.send_replace(false);
        let delay = match outcome {
            Ok(()) => return,
            Err(Failure::Connected(e)) => {
                // It was up: start over from the shortest delay.
                delays = RECONNECT.delays();
                let delay = delays.next().unwrap_or(RECONNECT.min);
                tracing::warn!(hub = %config.hub, error = %e, retry_in = ?delay, "lost the hub; reconnecting");
                delay
            }
            Err(Failure::Connecting(e)) => {
                let delay = delays.next().unwrap_or(RECONNECT.max);
                tracing::warn!(hub = %config.hub, error = %e, retry_in = ?delay, "cannot connect to the hub; retrying");
                delay
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Between attempts to reach the hub: jittered, so a fleet of agents does
/// not reconnect in step; forever, since the hub may be down for long.
const RECONNECT: Backoff = Backoff::forever(Duration::from_millis(200), Duration::from_secs(30));

/// Why a session ended: before or after the streams were up.
enum Failure {
    Connecting(SessionError),
    Connected(SessionError),
}

/// Why the agent could not reach the hub, or lost it.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The hub's address is not usable.
    #[error("{hub:?} is not a usable hub URL: {why}")]
    BadUrl {
        /// As configured.
        hub: String,
        /// What is wrong.
        why: String,
    },
    /// No connection (refused, unresolvable, TLS failed, timed out).
    #[error("cannot reach {hub}: {}", meridian_kit::report::chain(source))]
    Unreachable {
        /// As configured.
        hub: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The token cannot travel as gRPC metadata.
    #[error("the token is not valid gRPC metadata")]
    BadToken,
    /// The hub refused to open a stream.
    #[error("{stream} stream refused: {}", status.message())]
    Refused {
        /// `health` or `sync`.
        stream: &'static str,
        /// The hub's answer.
        status: tonic::Status,
    },
    /// A stream failed.
    #[error("{stream} stream: {}", status.message())]
    Broken {
        /// `health` or `sync`.
        stream: &'static str,
        /// Why.
        status: tonic::Status,
    },
    /// The hub (or this side) closed a stream.
    #[error("{0}")]
    Closed(&'static str),
}

/// Adds the token to every call.
type Interceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync>;

/// A hub client that authenticates every call.
pub type Client = AgentHubClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Interceptor>,
>;

/// A client that sends the token with every call (plain gRPC, no keepalive).
pub async fn connect(hub: &str, token: &str) -> Result<Client, SessionError> {
    connect_with(hub, token, None, None).await
}

/// [`connect`] with keepalive pings and, when `tls` is given, TLS.
pub async fn connect_with(
    hub: &str,
    token: &str,
    keepalive: Option<Keepalive>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Client, SessionError> {
    let bad = |why: String| SessionError::BadUrl {
        hub: hub.to_owned(),
        why,
    };
    let uri: Uri = hub.parse().map_err(|e| bad(format!("{e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| bad("it has no host".into()))?
        .to_owned();
    // With TLS the handshake is ours (see `tls`); tonic then speaks plain
    // HTTP/2 over the encrypted stream, so it is given an http:// URL.
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let plain = format!("http://{host}:{port}");
    let mut endpoint = tonic::transport::Endpoint::from_shared(plain)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(k) = keepalive {
        endpoint = endpoint
            .http2_keep_alive_interval(k.time)
            .keep_alive_timeout(k.timeout)
            .keep_alive_while_idle(k.permit_without_stream);
    }
    let channel = match tls {
        None => endpoint.connect().await,
        Some(config) => {
            let name =
                ServerName::try_from(host.trim_matches(['[', ']']).to_owned()).map_err(|e| {
                    bad(format!(
                        "{host:?} cannot be checked against a certificate: {e}"
                    ))
                })?;
            endpoint
                .connect_with_connector(crate::tls::connector(config, name))
                .await
        }
    }
    .map_err(|source| SessionError::Unreachable {
        hub: hub.to_owned(),
        source,
    })?;
    let value: tonic::metadata::MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(|_| SessionError::BadToken)?;
    let interceptor: Interceptor = Box::new(move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", value.clone());
        Ok(req)
    });
    Ok(AgentHubClient::with_interceptor(channel, interceptor).max_decoding_message_size(8 << 20))
}

async fn session(
    config: &SessionConfig,
    stop: &CancellationToken,
    link: &watch::Sender<bool>,
    role: &mut watch::Receiver<Role>,
) -> Result<(), Failure> {
    let mut health = open_health(config).await.map_err(Failure::Connecting)?;
    let mut current = *role.borrow_and_update();
    let mut sync = match current.sync_token() {
        Some(token) => Some(
            open_sync(&mut health.client, token)
                .await
                .map_err(Failure::Connecting)?,
        ),
        None => None,
    };
    link.send_replace(true);
    tracing::info!(hub = %config.hub, providers = config.providers.len(), role = current.as_str(), "connected to the hub");
    let mut ticker = tokio::time::interval(health.interval);
    let mut role_open = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = ticker.tick() => {
                let beat = HealthMessage { kind: Some(health_message::Kind::Heartbeat(Heartbeat {
                    sent_at_ms: meridian_kit::time::now_ms(),
                })) };
                health.tx.send(beat).await.map_err(|_| Failure::Connected(SessionError::Closed("health stream closed")))?;
            }
            reply = health.replies.message() => match reply {
                Ok(Some(_)) => {}
                Ok(None) => return Err(Failure::Connected(SessionError::Closed("hub closed the health stream"))),
                Err(status) => return Err(Failure::Connected(SessionError::Broken { stream: "health", status })),
            },
            changed = role.changed(), if role_open => {
                if changed.is_err() {
                    role_open = false;
                    continue;
                }
                let next = *role.borrow_and_update();
                if next.sync_token() != current.sync_token() {
                    // Dropping the side closes the stream and aborts its runs.
                    sync = None;
                    match next.sync_token() {
                        Some(token) => {
                            sync = Some(open_sync(&mut health.client, token).await.map_err(Failure::Connected)?);
                            tracing::info!(fencing_token = ?token, "leading: sync stream open");
                        }
                        None => tracing::info!("standing by: sync stream closed"),
                    }
                }
                current = next;
            }
            request = next_request(sync.as_mut()) => match (request, sync.as_mut()) {
                (Ok(Some(req)), Some(side)) => {
                    let provider = config.providers.iter().find(|p| p.name == req.provider).cloned();
                    while side.runs.try_join_next().is_some() {}
                    let span = tracing::info_span!("sync.run", service = "agent", provider = %req.provider, run_id = %req.run_id);
                    meridian_kit::telemetry::follow(&span, Some(req.traceparent.as_str()).filter(|t| !t.is_empty()));
                    let counters = config.counters.clone();
                    side.runs.spawn(run_sync(provider, req, side.tx.clone(), side.fencing_token, counters).instrument(span));
                }
                (Ok(_), _) => return Err(Failure::Connected(SessionError::Closed("hub closed the sync stream"))),
                (Err(status), _) => return Err(Failure::Connected(SessionError::Broken { stream: "sync", status })),
            },
        }
    }
}

/// The health stream, open.
struct Health {
    client: Client,
    replies: tonic::Streaming<meridian_schemas::proto::HealthReply>,
    tx: mpsc::Sender<HealthMessage>,
    interval: Duration,
}

/// The sync stream, open, and the runs it is serving.
struct SyncSide {
    fencing_token: Option<u64>,
    requests: tonic::Streaming<SyncRequest>,
    tx: mpsc::Sender<SyncMessage>,
    /// Aborted when the side is dropped (a replica that stops leading).
    runs: JoinSet<()>,
}

async fn next_request(side: Option<&mut SyncSide>) -> Result<Option<SyncRequest>, tonic::Status> {
    match side {
        Some(s) => s.requests.message().await,
        None => std::future::pending().await,
    }
}

/// Connects, says hello, and waits for the hub's first reply.
async fn open_health(config: &SessionConfig) -> Result<Health, SessionError> {
    let mut client = connect_with(
        &config.hub,
        &config.token,
        config.keepalive,
        config.tls.clone(),
    )
    .await?;
    let (tx, rx) = mpsc::channel(8);
    let hello = Hello {
        providers: config
            .providers
            .iter()
            .map(|p| Provider {
                name: p.name.clone(),
                r#type: p.provider_type.clone(),
            })
            .collect(),
        agent_version: config.agent_version.clone(),
    };
    let _ = tx
        .send(HealthMessage {
            kind: Some(health_message::Kind::Hello(hello)),
        })
        .await;
    let mut replies = client
        .health(ReceiverStream::new(rx))
        .await
        .map_err(|status| SessionError::Refused {
            stream: "health",
            status,
        })?
        .into_inner();
    let first = replies
        .message()
        .await
        .map_err(|status| SessionError::Refused {
            stream: "health",
            status,
        })?
        .ok_or(SessionError::Closed("hub closed the health stream"))?;
    let interval = Duration::from_secs(u64::from(first.heartbeat_interval_seconds.max(1)));
    Ok(Health {
        client,
        replies,
        tx,
        interval,
    })
}

/// Opens the sync stream, announcing the fencing token (if electing).
async fn open_sync(
    client: &mut Client,
    fencing_token: Option<u64>,
) -> Result<SyncSide, SessionError> {
    let (tx, rx) = mpsc::channel::<SyncMessage>(1024);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = fencing_token {
        request
            .metadata_mut()
            .insert(FENCING_TOKEN_METADATA, token.into());
    }
    let requests = client
        .sync(request)
        .await
        .map_err(|status| SessionError::Refused {
            stream: "sync",
            status,
        })?
        .into_inner();
    Ok(SyncSide {
        fencing_token,
        requests,
        tx,
        runs: JoinSet::new(),
    })
}

async fn run_sync(
    provider: Option<ProviderConfig>,
    req: SyncRequest,
    tx: mpsc::Sender<SyncMessage>,
    fencing_token: Option<u64>,
    counters: RunCounters,
) {
    let msg = |kind| SyncMessage {
        run_id: req.run_id.clone(),
        provider: req.provider.clone(),
        kind: Some(kind),
        fencing_token,
    };
    let Some(provider) = provider else {
        let reason = format!("no provider named {:?}", req.provider);
        let _ = tx
            .send(msg(sync_message::Kind::Failed(SyncFailed { reason })))
            .await;
        return;
    };
    let _ = tx
        .send(msg(sync_message::Kind::Started(SyncStarted {})))
        .await;
    match provider.source.list().await {
        Ok(apis) => {
            let count = apis.len() as u64;
            counters.discovered(&req.provider, count);
            for api in apis {
                if tx.send(msg(sync_message::Kind::Api(api))).await.is_err() {
                    return;
                }
            }
            let _ = tx
                .send(msg(sync_message::Kind::Completed(SyncCompleted { count })))
                .await;
            counters.ran(&req.provider, "completed");
            tracing::info!(provider = %req.provider, count, "synced");
        }
        Err(e) => {
            counters.ran(&req.provider, "failed");
            tracing::warn!(provider = %req.provider, reason = %e, "sync failed");
            let reason = e.to_string();
            let _ = tx
                .send(msg(sync_message::Kind::Failed(SyncFailed { reason })))
                .await;
        }
    }
}
