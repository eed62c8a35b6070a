//! The demo agent: a minimal client of `agent.proto`, enough to show APIs
//! flowing into the repository. It connects, says hello with its providers,
//! sends heartbeats, and answers each sync request by listing the provider's
//! APIs. The real agent (with documented config, AWS, leader election) is
//! `meridian-agent`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use meridian_schemas::proto::agent_hub_client::AgentHubClient;
use meridian_schemas::proto::{
    ApiDefinition, HealthMessage, Heartbeat, Hello, Provider, SyncCompleted, SyncFailed,
    SyncMessage, SyncStarted, health_message, sync_message,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// Where a provider's APIs come from.
pub trait Source: Send + Sync + 'static {
    /// Lists every API, or says why it cannot.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ApiDefinition>, String>>;
}

/// One provider of the agent.
#[derive(Clone)]
pub struct ProviderConfig {
    /// Name reported to the hub.
    pub name: String,
    /// Kind reported to the hub.
    pub provider_type: String,
    /// Where its APIs come from.
    pub source: Arc<dyn Source>,
}

/// Reads a Tyk Dashboard (`GET /api/apis?p=N`, every page).
pub struct TykDashboard {
    /// Base URL.
    pub host: String,
    /// Dashboard key.
    pub key: String,
    /// HTTP client.
    pub http: reqwest::Client,
}

impl Source for TykDashboard {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ApiDefinition>, String>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut page = 1;
            loop {
                let url = format!("{}/api/apis?p={page}", self.host.trim_end_matches('/'));
                let response = self
                    .http
                    .get(&url)
                    .header("authorization", &self.key)
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {e}"))?;
                if !response.status().is_success() {
                    return Err(format!("GET {url}: HTTP {}", response.status()));
                }
                let body: Value = response
                    .json()
                    .await
                    .map_err(|e| format!("GET {url}: {e}"))?;
                let apis = body["apis"]
                    .as_array()
                    .ok_or_else(|| format!("GET {url}: no `apis` array"))?;
                out.extend(apis.iter().map(|a| normalize_tyk(&a["api_definition"])));
                let pages = body["pages"].as_u64().unwrap_or(1) as usize;
                if page >= pages {
                    return Ok(out);
                }
                page += 1;
            }
        })
    }
}

/// Maps a Tyk classic definition onto the normalized shape.
pub fn normalize_tyk(d: &Value) -> ApiDefinition {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut auth = Vec::new();
    for (flag, name) in [
        ("use_keyless", "keyless"),
        ("use_standard_auth", "authToken"),
        ("enable_jwt", "jwt"),
        ("use_oauth2", "oauth2"),
        ("use_basic_auth", "basic"),
    ] {
        if d[flag].as_bool() == Some(true) {
            auth.push(name.to_owned());
        }
    }
    ApiDefinition {
        provider_api_id: s(&d["api_id"]),
        name: s(&d["name"]),
        version: String::new(),
        base_path: s(&d["proxy"]["listen_path"]),
        upstream_url: s(&d["proxy"]["target_url"]),
        auth_methods: auth,
        tags: d["tags"]
            .as_array()
            .map(|t| t.iter().map(s).collect())
            .unwrap_or_default(),
        stages: Vec::new(),
        openapi: String::new(),
        raw: d.to_string(),
    }
}

/// How the agent reaches the hub.
#[derive(Clone)]
pub struct AgentConfig {
    /// gRPC URL, e.g. `http://127.0.0.1:50051`.
    pub hub: String,
    /// Token from `POST /api/auth/token/`.
    pub token: String,
    /// Its providers.
    pub providers: Vec<ProviderConfig>,
}

/// Runs the agent until `stop`, reconnecting with backoff.
pub async fn run_until_stopped(config: AgentConfig, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    while !stop.is_cancelled() {
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            r = session(&config, &stop) => r,
        };
        match outcome {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "demo agent disconnected; reconnecting in {backoff:?}")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
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
    let channel = tonic::transport::Endpoint::from_shared(hub.to_owned())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
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

async fn session(config: &AgentConfig, stop: &CancellationToken) -> Result<(), String> {
    let mut client = connect(&config.hub, &config.token).await?;
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
        agent_version: format!("meridian-demo-agent/{}", env!("CARGO_PKG_VERSION")),
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
    tracing::info!(hub = %config.hub, "demo agent connected");

    let (sync_tx, sync_rx) = mpsc::channel::<SyncMessage>(1024);
    let mut requests = client
        .sync(ReceiverStream::new(sync_rx))
        .await
        .map_err(|s| format!("sync stream refused: {}", s.message()))?
        .into_inner();
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = ticker.tick() => {
                let beat = HealthMessage { kind: Some(health_message::Kind::Heartbeat(Heartbeat {
                    sent_at_ms: meridian_kit::time::now_ms(),
                })) };
                health_tx.send(beat).await.map_err(|_| "health stream closed")?;
            }
            reply = replies.message() => match reply {
                Ok(Some(_)) => {}
                Ok(None) => return Err("hub closed the health stream".into()),
                Err(s) => return Err(format!("health stream: {}", s.message())),
            },
            request = requests.message() => match request {
                Ok(Some(req)) => {
                    let provider = config.providers.iter().find(|p| p.name == req.provider).cloned();
                    let tx = sync_tx.clone();
                    tokio::spawn(async move { run_sync(provider, req, tx).await });
                }
                Ok(None) => return Err("hub closed the sync stream".into()),
                Err(s) => return Err(format!("sync stream: {}", s.message())),
            },
        }
    }
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
            tracing::info!(provider = %req.provider, count, "demo agent synced");
        }
        Err(reason) => {
            tracing::warn!(provider = %req.provider, %reason, "demo agent sync failed");
            let _ = tx
                .send(msg(sync_message::Kind::Failed(SyncFailed { reason })))
                .await;
        }
    }
}
