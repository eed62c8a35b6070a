//! Wiring: configuration, NATS, the folds of `APIS` and `KEYS`, the writer,
//! the replicas' announcements, the admin API and the data plane.

use std::sync::Arc;

use meridian_kit::writer::Lock;
use std::time::Duration;

use meridian_keys::KeysState;
use meridian_keys::fold::Shared as SharedKeys;
use meridian_kit::CancellationToken;
use meridian_kit::bus::{self, Publisher};
use meridian_kit::config::{ConfigError, HumanDuration, Secret};
use meridian_kit::http::{self, ApiKey, ReadyCheck};
use meridian_kit::metrics::Metrics;
use meridian_kit::projection::{InMemory, Progress, ProjectionError, ProjectionSpec, Runner};
use meridian_kit::tyk;
use meridian_schemas::streams;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::adapters::dataplane::{DataPlane, Settings, Timeouts};
use crate::adapters::fold::SharedApis;
use crate::adapters::limits::Limiter;
use crate::adapters::replicas::{self, Replicas};
use crate::adapters::writer::Writer;
use crate::api;
use crate::domain::ApisState;
use crate::domain::limits::HeaderSource;

/// Environment prefix of the configuration.
pub const ENV_PREFIX: &str = "MERIDIAN_PROXY__";

/// Configuration (`MERIDIAN_PROXY__<FIELD>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// NATS server URL. Default: `nats://127.0.0.1:4222`.
    #[serde(default = "meridian_kit::config::default_nats_url")]
    pub nats_url: String,
    /// The data plane: where API clients connect. Default: `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The admin API (`/tyk/apis`, `/tyk/reload`, `/hello`), health and
    /// metrics. Default: `127.0.0.1:8085`.
    #[serde(default = "default_http_addr")]
    pub http_addr: String,
    /// The Gateway API secret (`x-tyk-authorization`), the same as
    /// key-issuer's; required, at least 16 bytes.
    pub secret: Option<Secret>,
    /// How long opening a connection to an upstream may take (502 after).
    /// Default: `5s`.
    #[serde(default = "default_connect_timeout")]
    pub upstream_connect_timeout: HumanDuration,
    /// How long an upstream may take to answer with its headers (504 after;
    /// Tyk's `proxy_default_timeout`). Default: `30s`.
    #[serde(default = "default_read_timeout")]
    pub upstream_read_timeout: HumanDuration,
    /// A PEM file of CA certificates trusted for `https` upstreams, beside
    /// the system's. Default: none (the system's CAs only).
    #[serde(default)]
    pub upstream_ca_file: Option<String>,
    /// How long `/tyk/reload?block=true` waits for every live replica
    /// before answering 504. Default: `10s`.
    #[serde(default = "default_reload_timeout")]
    pub reload_timeout: HumanDuration,
    /// Threads serving API traffic, each with a runtime of its own (one per
    /// core by default; 0 serves it on the process's shared runtime).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Connections the kernel queues on the data-plane port before they are
    /// accepted (default 4,096; the kernel caps it at `net.core.somaxconn`).
    #[serde(default = "default_backlog")]
    pub listen_backlog: u32,
    /// How long NATS may be away before `/hello` and
    /// `meridian_gateway_key_view_unconfirmed` say the key view cannot be
    /// confirmed (the replica keeps serving the keys it knows). Default: `5s`.
    #[serde(default = "default_key_view_stale_after")]
    pub key_view_stale_after: HumanDuration,
    /// What `X-RateLimit-Limit`, `-Remaining` and `-Reset` describe (Tyk's
    /// `rate_limit_response_headers`): `quotas` (Tyk's default: the key's
    /// quota, on answers from the upstream) or `rate_limits` (the key's
    /// rate limit, on every answer past the rate-limit step, 429s too).
    #[serde(default)]
    pub rate_limit_response_headers: HeaderSource,
    /// Plain HTTP/1.1 requests to `http` upstreams take the gateway's fast
    /// path (one parse of the head, bytes passed through); anything else,
    /// and everything when `false`, goes through hyper. Default: `true`.
    #[serde(default = "default_true")]
    pub http1_fast_path: bool,
    /// Bytes of answers the response cache keeps on this replica (APIs
    /// with `cache_options.enable_cache`); the least used go first when it
    /// is full. Default: 67108864 (64 MiB).
    #[serde(default = "default_cache_max_bytes")]
    pub cache_max_bytes: u64,
    /// How long OAuth access tokens live (Tyk's `oauth_token_expire`)
    /// when the API's definition sets no `session_lifetime`. Default: `1h`.
    #[serde(default = "default_oauth_token_expire")]
    pub oauth_token_expire: HumanDuration,
    /// How long OAuth refresh tokens live (Tyk's
    /// `oauth_refresh_token_expire`). Default: `14d`.
    #[serde(default = "default_oauth_refresh_token_expire")]
    pub oauth_refresh_token_expire: HumanDuration,
}

fn default_oauth_token_expire() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}

fn default_oauth_refresh_token_expire() -> HumanDuration {
    HumanDuration(Duration::from_secs(14 * 24 * 3600))
}

fn default_cache_max_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_true() -> bool {
    true
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_http_addr() -> String {
    "127.0.0.1:8085".into()
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_read_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_reload_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_backlog() -> u32 {
    meridian_kit::listen::DEFAULT_BACKLOG
}
fn default_key_view_stale_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl Config {
    /// Defaults with the given NATS URL and secret (launcher and tests).
    pub fn new(nats_url: &str, secret: &str) -> Self {
        Self {
            nats_url: nats_url.to_owned(),
            listen: "127.0.0.1:0".into(),
            http_addr: "127.0.0.1:0".into(),
            secret: Some(Secret::new(secret)),
            upstream_connect_timeout: default_connect_timeout(),
            upstream_read_timeout: default_read_timeout(),
            upstream_ca_file: None,
            reload_timeout: default_reload_timeout(),
            // In-process (the hub, tests): the shared runtime.
            workers: 0,
            listen_backlog: default_backlog(),
            key_view_stale_after: default_key_view_stale_after(),
            rate_limit_response_headers: HeaderSource::default(),
            http1_fast_path: true,
            cache_max_bytes: default_cache_max_bytes(),
            oauth_token_expire: default_oauth_token_expire(),
            oauth_refresh_token_expire: default_oauth_refresh_token_expire(),
        }
    }
}

/// A failure to start or run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// NATS.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// A fold stopped.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The replicas' announcements cannot be heard.
    #[error("cannot listen to the other replicas: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// HTTP server.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
}

meridian_kit::config_failure!(AppError);

/// How long open client connections may finish their requests at shutdown.
const GRACE: Duration = Duration::from_secs(10);

/// A built proxy replica, ready to run.
pub struct App {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    apis_runner: Runner<InMemory<ApisState>>,
    keys_runner: Runner<InMemory<KeysState>>,
    apis_progress: Progress,
    keys_progress: Progress,
    writer: Writer,
    replicas: Replicas,
    announcements: async_nats::Subscriber,
    purges: async_nats::Subscriber,
    plane: Arc<DataPlane>,
    limiter: Arc<Limiter>,
    workers: usize,
    reload_timeout: Duration,
    key_view_stale_after: Duration,
    secret: ApiKey,
    metrics: Metrics,
}

impl App {
    /// Checks configuration, connects, creates the streams, and starts
    /// listening to the other replicas. Series go to `metrics`.
    pub async fn build(config: Config, metrics: &Metrics) -> Result<Self, AppError> {
        let secret = tyk::secret_from_config(config.secret.as_ref(), ENV_PREFIX)?;
        let client = bus::connect(
            &config.nats_url,
            "meridian-proxy",
            Duration::from_secs(30),
            metrics,
        )
        .await?;
        let js = async_nats::jetstream::new(client.clone());
        bus::ensure_streams(&js, &[streams::APIS, streams::KEYS]).await?;
        let apis: SharedApis = Arc::new(Lock::new(ApisState::default()));
        let keys: SharedKeys = Arc::new(Lock::new(KeysState::default()));
        let (apis_runner, apis_progress) = Runner::in_memory(
            js.clone(),
            apis.clone(),
            ProjectionSpec::ordered("proxy-apis", streams::APIS),
            metrics,
        );
        let (keys_runner, keys_progress) = Runner::in_memory(
            js.clone(),
            keys.clone(),
            ProjectionSpec::ordered("proxy-keys", streams::KEYS),
            metrics,
        );
        let writer = Writer::new(
            Publisher::new(js.clone(), metrics),
            apis.clone(),
            apis_progress.clone(),
        );
        let replicas = Replicas::new(Uuid::new_v4());
        let announcements = replicas::subscribe(&client).await?;
        let purges = crate::adapters::cache::subscribe(&client).await?;
        let counters = bus::ensure_bucket(
            &js,
            streams::LIMITS_BUCKET,
            "Rate-limit and quota counters the gateway replicas share",
        )
        .await?;
        let limiter = Arc::new(Limiter::new(
            counters,
            replicas.clone(),
            config.workers,
            metrics,
        ));
        let settings = Settings {
            timeouts: Timeouts {
                connect: config.upstream_connect_timeout.0,
                read: config.upstream_read_timeout.0,
            },
            extra_ca: config.upstream_ca_file.as_deref(),
            header_source: config.rate_limit_response_headers,
            fast_path: config.http1_fast_path,
            cache_max_bytes: config.cache_max_bytes,
        };
        let plane =
            DataPlane::new(apis, keys, limiter.clone(), settings, metrics).map_err(|e| {
                ConfigError {
                    message: format!("{ENV_PREFIX}{e}"),
                }
            })?;
        plane.issue_tokens_with(crate::adapters::oauth::Issuer {
            client: client.clone(),
            replicas: replicas.clone(),
            secret: secret.clone(),
            token_lifetime: config.oauth_token_expire.0,
            refresh_lifetime: config.oauth_refresh_token_expire.0,
            patience: config.reload_timeout.0,
        });
        let plane = Arc::new(plane);
        let unconfirmed = metrics.gauge(
            "meridian_gateway_key_view_unconfirmed",
            "1 when NATS has been away longer than KEY_VIEW_STALE_AFTER: the key view cannot be confirmed (known keys are still served)",
        );
        let staleness = api::KeyViewStaleness {
            metrics: metrics.clone(),
            after: config.key_view_stale_after.0,
        };
        metrics.on_scrape(Arc::new(move || {
            let (unconfirmed, staleness) = (unconfirmed.clone(), staleness.clone());
            Box::pin(async move {
                unconfirmed.set(i64::from(staleness.unconfirmed_for().is_some()));
            })
        }));
        Ok(Self {
            client,
            js,
            apis_runner,
            keys_runner,
            apis_progress,
            keys_progress,
            writer,
            replicas,
            announcements,
            purges,
            plane,
            limiter,
            workers: config.workers,
            reload_timeout: config.reload_timeout.0,
            key_view_stale_after: config.key_view_stale_after.0,
            secret,
            metrics: metrics.clone(),
        })
    }

    /// This replica's id (what it announces itself as).
    pub fn replica(&self) -> Uuid {
        self.replicas.me()
    }

    /// Folds both streams, announces what it applied and serves clients on
    /// `gateway` until `stop`.
    pub async fn run_until_stopped(
        self,
        gateway: tokio::net::TcpListener,
        stop: CancellationToken,
    ) -> Result<(), AppError> {
        let tracker = tokio::spawn(
            self.replicas
                .clone()
                .track_until_stopped(self.announcements, stop.clone()),
        );
        let limiter = self.limiter.clone();
        let limits_stop = stop.clone();
        let give_back = tokio::spawn(async move {
            // What leases unused hold goes back to the counters, and all of
            // it at a clean stop.
            let mut every = tokio::time::interval(Duration::from_millis(200));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = limits_stop.cancelled() => break,
                    _ = every.tick() => limiter.give_back(meridian_kit::time::now_ms(), false).await,
                }
            }
        });
        let purges = tokio::spawn({
            let answering = crate::adapters::cache::answer_purges(
                self.client.clone(),
                self.purges,
                self.plane.response_cache(),
                self.replicas.me(),
            );
            let stop = stop.clone();
            async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = answering => {}
                }
            }
        });
        let announcer = tokio::spawn(replicas::announce_until_stopped(
            self.client.clone(),
            self.replicas.me(),
            self.apis_progress.clone(),
            self.keys_progress.clone(),
            stop.clone(),
        ));
        // The data plane accepts nothing until both views have caught up
        // with their streams (a client waits in the backlog meanwhile: a
        // view that is behind would answer 404 for a known API and 403 for
        // a valid key).
        let (apis_progress, keys_progress) =
            (self.apis_progress.clone(), self.keys_progress.clone());
        let (plane, workers, plane_stop) = (self.plane.clone(), self.workers, stop.clone());
        let plane = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let caught_up = tokio::select! {
                () = plane_stop.cancelled() => return Ok(()),
                caught_up = async {
                    apis_progress.reached_start().await?;
                    keys_progress.reached_start().await
                } => caught_up,
            };
            if let Err(why) = caught_up {
                tracing::error!(%why, "a view halted before catching up: the data plane does not serve");
                return Ok(());
            }
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                apis = apis_progress.position(),
                keys = keys_progress.position(),
                "gateway views caught up with the log: serving API traffic"
            );
            plane
                .serve_until_stopped(gateway, plane_stop, GRACE, workers)
                .await
        });
        let (apis, keys) = tokio::join!(
            self.apis_runner.run_until_stopped(stop.clone()),
            self.keys_runner.run_until_stopped(stop.clone()),
        );
        stop.cancel();
        let _ = announcer.await;
        let _ = tracker.await;
        let _ = purges.await;
        let served = plane.await.unwrap_or(Ok(()));
        let _ = give_back.await;
        self.limiter
            .give_back(meridian_kit::time::now_ms(), true)
            .await;
        apis?;
        keys?;
        served?;
        Ok(())
    }

    /// Standalone: the data plane on `gateway`, the admin API (with
    /// health, metrics and OpenAPI) on `admin`.
    pub async fn serve(
        self,
        gateway: tokio::net::TcpListener,
        admin: tokio::net::TcpListener,
        stop: CancellationToken,
    ) -> Result<(), AppError> {
        http::serve_service(self, admin, stop, |app, stop| {
            app.run_until_stopped(gateway, stop)
        })
        .await
    }
}

impl http::Surface for App {
    const TITLE: &'static str = "Meridian proxy";

    /// The admin routes: `/tyk/apis` and `/tyk/reload` behind the Gateway
    /// API secret, `/hello` open, with their OpenAPI description.
    fn api(&self) -> OpenApiRouter {
        let state = api::ApiState {
            writer: self.writer.clone(),
            replicas: self.replicas.clone(),
            js: self.js.clone(),
            client: self.client.clone(),
            apis: self.apis_progress.clone(),
            keys: self.keys_progress.clone(),
            reload_timeout: self.reload_timeout,
            staleness: api::KeyViewStaleness {
                metrics: self.metrics.clone(),
                after: self.key_view_stale_after,
            },
        };
        tyk::with_secret(api::router(state.clone()), self.secret.clone())
            .merge(api::open_router(state))
    }

    /// Ready when NATS is connected and both folds caught up.
    fn ready_checks(&self) -> Vec<ReadyCheck> {
        vec![
            http::nats_ready(self.client.clone()),
            http::projection_ready("apis", self.apis_progress.clone()),
            http::projection_ready("gateway-keys", self.keys_progress.clone()),
        ]
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
