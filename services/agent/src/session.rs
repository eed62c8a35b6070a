//! The agent's connection to the hub: outbound only. It opens the health
//! stream (hello with the providers, then heartbeats at the interval the hub
//! asks for) and the sync stream (the hub pushes sync requests; each run is
//! answered with `started`, one message per API, then `completed` with the
//! count or `failed` with the reason). When either stream breaks it
//! reconnects with exponential backoff and jitter, logging each change of
//! state (never the token).

use std::time::Duration;

use meridian_schemas::proto::agent_hub_client::AgentHubClient;
use meridian_schemas::proto::{
    HealthMessage, Heartbeat, Hello, Provider, SyncCompleted, SyncFailed, SyncMessage, SyncStarted,
    health_message, sync_message,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

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
        }
    }
}

/// Runs the agent until `stop`, reconnecting with backoff.
pub async fn run_until_stopped(config: SessionConfig, stop: CancellationToken) {
    run_reporting(config, stop, watch::channel(false).0).await;
}

/// [`run_until_stopped`], reporting on `link` whether both streams are up.
pub async fn run_reporting(
    config: SessionConfig,
    stop: CancellationToken,
    link: watch::Sender<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    while !stop.is_cancelled() {
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            r = session(&config, &stop, &link) => r,
        };
        link.send_replace(false);
        match outcome {
            Ok(()) => return,
            Err(Failure::Connected(e)) => {
                backoff = Duration::from_millis(200);
                tracing::warn!(hub = %config.hub, error = %e, "lost the hub; reconnecting");
            }
            Err(Failure::Connecting(e)) => {
                tracing::warn!(hub = %config.hub, error = %e, "cannot connect to the hub; retrying in {backoff:?}");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(jitter(backoff)) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Between half and all of `d`, so a fleet of agents does not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d / 2 + d.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// Why a session ended: before or after both streams were up.
enum Failure {
    Connecting(String),
    Connected(String),
}

/// Adds the token to every call.
type Interceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync>;

/// A hub client that authenticates every call.
pub type Client = AgentHubClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Interceptor>,
>;

/// A client that sends the token with every call.
pub async fn connect(hub: &str, token: &str) -> Result<Client, String> {
    connect_with(hub, token, None).await
}

/// [`connect`] with keepalive pings.
pub async fn connect_with(
    hub: &str,
    token: &str,
    keepalive: Option<Keepalive>,
) -> Result<Client, String> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(hub.to_owned())
        .map_err(|e| format!("{hub:?} is not a URL: {e}"))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(k) = keepalive {
        endpoint = endpoint
            .http2_keep_alive_interval(k.time)
            .keep_alive_timeout(k.timeout)
            .keep_alive_while_idle(k.permit_without_stream);
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach {hub}: {e}"))?;
    let value: tonic::metadata::MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(|_| "token is not valid metadata".to_owned())?;
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
) -> Result<(), Failure> {
    let Streams {
        _client,
        mut replies,
        health_tx,
        interval,
        mut requests,
        sync_tx,
    } = open(config).await.map_err(Failure::Connecting)?;
    link.send_replace(true);
    tracing::info!(hub = %config.hub, providers = config.providers.len(), "connected to the hub");
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = ticker.tick() => {
                let beat = HealthMessage { kind: Some(health_message::Kind::Heartbeat(Heartbeat {
                    sent_at_ms: meridian_kit::time::now_ms(),
                })) };
                health_tx.send(beat).await.map_err(|_| Failure::Connected("health stream closed".into()))?;
            }
            reply = replies.message() => match reply {
                Ok(Some(_)) => {}
                Ok(None) => return Err(Failure::Connected("hub closed the health stream".into())),
                Err(s) => return Err(Failure::Connected(format!("health stream: {}", s.message()))),
            },
            request = requests.message() => match request {
                Ok(Some(req)) => {
                    let provider = config.providers.iter().find(|p| p.name == req.provider).cloned();
                    let tx = sync_tx.clone();
                    tokio::spawn(async move { run_sync(provider, req, tx).await });
                }
                Ok(None) => return Err(Failure::Connected("hub closed the sync stream".into())),
                Err(s) => return Err(Failure::Connected(format!("sync stream: {}", s.message()))),
            },
        }
    }
}

/// Both streams, open.
struct Streams {
    /// Kept so the connection lives as long as the streams.
    _client: Client,
    replies: tonic::Streaming<meridian_schemas::proto::HealthReply>,
    health_tx: mpsc::Sender<HealthMessage>,
    interval: Duration,
    requests: tonic::Streaming<meridian_schemas::proto::SyncRequest>,
    sync_tx: mpsc::Sender<SyncMessage>,
}

/// Connects and opens both streams.
async fn open(config: &SessionConfig) -> Result<Streams, String> {
    let mut client = connect_with(&config.hub, &config.token, config.keepalive).await?;
    let (health_tx, health_rx) = mpsc::channel(8);
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
    let _ = health_tx
        .send(HealthMessage {
            kind: Some(health_message::Kind::Hello(hello)),
        })
        .await;
    let mut replies = client
        .health(ReceiverStream::new(health_rx))
        .await
        .map_err(|s| format!("health stream refused: {}", s.message()))?
        .into_inner();
    let first = replies
        .message()
        .await
        .map_err(|s| s.message().to_owned())?
        .ok_or("hub closed the health stream")?;
    let interval = Duration::from_secs(u64::from(first.heartbeat_interval_seconds.max(1)));

    let (sync_tx, sync_rx) = mpsc::channel::<SyncMessage>(1024);
    let requests = client
        .sync(ReceiverStream::new(sync_rx))
        .await
        .map_err(|s| format!("sync stream refused: {}", s.message()))?
        .into_inner();
    Ok(Streams {
        _client: client,
        replies,
        health_tx,
        interval,
        requests,
        sync_tx,
    })
}

async fn run_sync(
    provider: Option<ProviderConfig>,
    req: meridian_schemas::proto::SyncRequest,
    tx: mpsc::Sender<SyncMessage>,
) {
    let msg = |kind| SyncMessage {
        run_id: req.run_id.clone(),
        provider: req.provider.clone(),
        kind: Some(kind),
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
            for api in apis {
                if tx.send(msg(sync_message::Kind::Api(api))).await.is_err() {
                    return;
                }
            }
            let _ = tx
                .send(msg(sync_message::Kind::Completed(SyncCompleted { count })))
                .await;
            tracing::info!(provider = %req.provider, count, "synced");
        }
        Err(reason) => {
            tracing::warn!(provider = %req.provider, %reason, "sync failed");
            let _ = tx
                .send(msg(sync_message::Kind::Failed(SyncFailed { reason })))
                .await;
        }
    }
}
