//! Wiring: configuration, NATS, the fold of `PORTAL`, the writer, the
//! syncer, the public relay and HTTP.

use std::sync::Arc;

use meridian_kit::writer::Lock;
use std::time::Duration;

use meridian_kit::CancellationToken;
use meridian_kit::bus::{self, Publisher};
use meridian_kit::config::{ConfigError, HumanDuration, Secret, admin_key, parse_duration};
use meridian_kit::http::DigestView;
use meridian_kit::http::{self, ApiKey, ReadyCheck};
use meridian_kit::metrics::{Counter, Family, Labels, Metrics};
use meridian_kit::projection::{InMemory, Progress, ProjectionError, ProjectionSpec, Runner};
use meridian_schemas::streams;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::adapters::fold::PortalWriter;
use crate::adapters::relay;
use crate::adapters::seal::Sealer;
use crate::adapters::syncer::Syncer;
use crate::api;
use crate::domain::PortalState;

/// Environment prefix of the configuration.
pub const ENV_PREFIX: &str = "MERIDIAN_PORTAL_SYNC__";

/// Tyk's developer portal variable for the sync interval, accepted too
/// (minutes, as Tyk reads it, or a duration such as `90s`).
pub const TYK_REFRESH_VAR: &str = "PORTAL_REFRESHINTERVAL";

/// Configuration (`MERIDIAN_PORTAL_SYNC__<FIELD>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// NATS server URL. Default: `nats://127.0.0.1:4222`.
    #[serde(default = "meridian_kit::config::default_nats_url")]
    pub nats_url: String,
    /// Address of the standalone REST server. Default: `127.0.0.1:8086`.
    #[serde(default = "default_http_addr")]
    pub http_addr: String,
    /// Admin key; defaults to `MERIDIAN_API_KEY`.
    pub api_key: Option<Secret>,
    /// Between scheduled syncs of every provider (default 10m; else
    /// `PORTAL_REFRESHINTERVAL`, Tyk's name, in minutes).
    pub refresh_interval: Option<HumanDuration>,
    /// Seals provider secrets on the log (at least 16 bytes). Default: a key
    /// derived from the admin key, so changing the admin key without setting
    /// this makes stored secrets unreadable (save the providers again).
    pub seal_key: Option<Secret>,
    /// This replica's name in sync claims and reports (default: `HOSTNAME`).
    pub replica: Option<String>,
    /// How long a sync claim holds before another replica may take over a
    /// provider whose sync never reported. Default: `5m`.
    #[serde(default = "default_lease")]
    pub sync_lease: HumanDuration,
    /// How long an approval or revocation may stay under way (recorded,
    /// its provider call not yet recorded) before any replica finishes or
    /// undoes it. Default: `30s`.
    #[serde(default = "default_intent_deadline")]
    pub intent_deadline: HumanDuration,
}

fn default_intent_deadline() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

fn default_http_addr() -> String {
    "127.0.0.1:8086".into()
}
fn default_lease() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

/// The default sync interval (Tyk's).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(600);

impl Config {
    /// Defaults with the given NATS URL and admin key (launcher and tests).
    pub fn new(nats_url: &str, api_key: &str) -> Self {
        Self {
            nats_url: nats_url.to_owned(),
            http_addr: "127.0.0.1:0".into(),
            api_key: Some(Secret::new(api_key)),
            refresh_interval: None,
            seal_key: None,
            replica: None,
            sync_lease: default_lease(),
            intent_deadline: default_intent_deadline(),
        }
    }
}

/// The sync interval: ours, else Tyk's `PORTAL_REFRESHINTERVAL` (a bare
/// number is minutes), else 10 minutes.
pub fn refresh_interval(
    own: Option<HumanDuration>,
    tyk: Option<&str>,
) -> Result<Duration, ConfigError> {
    let interval = match (own, tyk) {
        (Some(d), _) => d.0,
        (None, Some(raw)) => match raw.trim().parse::<u64>() {
            Ok(minutes) => Duration::from_secs(minutes.saturating_mul(60)),
            Err(_) => parse_duration(raw.trim()).map_err(|e| ConfigError {
                message: format!("{TYK_REFRESH_VAR}: {e}"),
            })?,
        },
        (None, None) => DEFAULT_REFRESH,
    };
    if interval < Duration::from_secs(1) {
        return Err(ConfigError {
            message: format!("{ENV_PREFIX}REFRESH_INTERVAL must be at least 1s"),
        });
    }
    Ok(interval)
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
    /// The fold stopped.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// HTTP server.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
}

meridian_kit::config_failure!(AppError);

/// A built portal-sync, ready to run.
pub struct App {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    runner: Runner<InMemory<PortalState>>,
    progress: Progress,
    writer: PortalWriter,
    sealer: Arc<Sealer>,
    syncer: Syncer,
    api_key: ApiKey,
    metrics: Metrics,
    recoveries: Family<Labels, Counter>,
    intent_deadline: Duration,
}

impl App {
    /// Checks configuration, connects, creates the streams. Series go to
    /// `metrics` (one per service instance; the hub shares one).
    pub async fn build(config: Config, metrics: &Metrics) -> Result<Self, AppError> {
        let key = admin_key(config.api_key.clone(), "MERIDIAN_PORTAL_SYNC__API_KEY")?;
        let refresh = refresh_interval(
            config.refresh_interval,
            std::env::var(TYK_REFRESH_VAR).ok().as_deref(),
        )?;
        let seal_material = match &config.seal_key {
            Some(k) if k.expose().len() < 16 => {
                return Err(ConfigError {
                    message: format!("{ENV_PREFIX}SEAL_KEY must be at least 16 bytes"),
                }
                .into());
            }
            Some(k) => k.expose().to_owned(),
            None => key.expose().to_owned(),
        };
        let replica = meridian_kit::config::replica_name(config.replica.as_deref(), "portal-sync");
        let client = bus::connect(
            &config.nats_url,
            "meridian-portal-sync",
            Duration::from_secs(30),
            metrics,
        )
        .await?;
        let js = async_nats::jetstream::new(client.clone());
        bus::ensure_streams(&js, &[streams::PORTAL]).await?;
        bus::ensure_public_stream(&js).await?;
        let state = Arc::new(Lock::new(PortalState::default()));
        let (runner, progress) = Runner::in_memory(
            js.clone(),
            state.clone(),
            ProjectionSpec::ordered("portal-sync", streams::PORTAL),
            metrics,
        );
        let writer =
            PortalWriter::new(Publisher::new(js.clone(), metrics), state, progress.clone());
        let sealer = Arc::new(Sealer::new(&seal_material));
        let recoveries = metrics.counters(
            "meridian_portal_recoveries",
            "Writes finished or undone after a crash, an outage or a lost answer, by action (approval_finished, approval_undone, auto_approval_finished, revocation_finished, creation_finished, creation_undone, settled_unknown, sync_takeover)",
        );
        let syncer = Syncer {
            writer: writer.clone(),
            sealer: sealer.clone(),
            replica,
            lease: config.sync_lease.0,
            refresh,
            runs: metrics.counters(
                "meridian_portal_syncs",
                "Provider syncs run by this replica, by provider type and result (ok, failed)",
            ),
            recoveries: recoveries.clone(),
        };
        tracing::info!(refresh = %meridian_kit::config::format_duration(refresh), "providers are synchronised at start and every refresh interval");
        Ok(Self {
            client,
            js,
            runner,
            progress,
            writer,
            sealer,
            syncer,
            api_key: ApiKey::new(key.expose()),
            metrics: metrics.clone(),
            recoveries,
            intent_deadline: config.intent_deadline.0,
        })
    }

    /// The fold.
    pub fn state(&self) -> Arc<Lock<PortalState>> {
        self.writer.state().clone()
    }

    /// Its progress through `PORTAL`.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    fn api_state(&self) -> api::ApiState {
        api::ApiState {
            writer: self.writer.clone(),
            sealer: self.sealer.clone(),
            syncer: self.syncer.clone(),
            recoveries: self.recoveries.clone(),
            intent_deadline: self.intent_deadline,
        }
    }

    /// Folds `PORTAL`, syncs providers on schedule and relays public events
    /// until `stop`.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<(), AppError> {
        let relay = tokio::spawn(meridian_kit::relay::relay_until_stopped(
            self.js.clone(),
            relay::SPEC,
            relay::to_public,
            stop.clone(),
        ));
        let progress = self.progress.clone();
        let syncer = self.syncer.clone();
        let sync_stop = stop.clone();
        let scheduled = tokio::spawn(async move {
            // Decide on the whole log: wait until the fold caught up.
            tokio::select! {
                () = sync_stop.cancelled() => return,
                _ = progress.catch_up(Duration::from_secs(3600)) => {}
            }
            syncer.run_until_stopped(sync_stop).await;
        });
        let recovery = tokio::spawn(api::recover_until_stopped(
            self.api_state(),
            self.progress.clone(),
            stop.clone(),
        ));
        let folded = self.runner.run_until_stopped(stop.clone()).await;
        stop.cancel();
        let _ = relay.await;
        let _ = scheduled.await;
        let _ = recovery.await;
        folded?;
        Ok(())
    }

    /// Standalone: REST (with health, metrics and OpenAPI) on `http`.
    pub async fn serve(
        self,
        http_listener: tokio::net::TcpListener,
        stop: CancellationToken,
    ) -> Result<(), AppError> {
        http::serve_service(self, http_listener, stop, |app, stop| {
            app.run_until_stopped(stop)
        })
        .await
    }
}

impl http::Surface for App {
    const TITLE: &'static str = "Meridian portal-sync";

    /// The `/portal-api/...` routes and `/api/portal/digest`, behind the
    /// admin key (`X-API-Key` or `Authorization`), with their OpenAPI
    /// description.
    fn api(&self) -> OpenApiRouter {
        let state = self.api_state();
        let digest = OpenApiRouter::new()
            .routes(routes!(digest))
            .with_state(self.writer.clone());
        api::router(state)
            .merge(digest)
            .layer(axum::middleware::from_fn_with_state(
                self.api_key.clone(),
                http::require_api_key_or_authorization,
            ))
    }

    /// Ready when NATS is connected and the fold caught up.
    fn ready_checks(&self) -> Vec<ReadyCheck> {
        vec![
            http::nats_ready(self.client.clone()),
            http::projection_ready("portal", self.progress.clone()),
        ]
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The digest of this replica's view, after catching up with the log.
#[utoipa::path(get, path = "/api/portal/digest", tag = "portal", security(("api_key" = [])),
    responses((status = 200, body = DigestView)))]
async fn digest(
    axum::extract::State(writer): axum::extract::State<PortalWriter>,
) -> http::Json<DigestView> {
    http::Json(writer.digest_view().await)
}

/// Folds `PORTAL` from its first message into a fresh view, as a restarted
/// replica does, and returns its digest and position.
pub async fn rebuild(nats_url: &str) -> Result<DigestView, AppError> {
    meridian_kit::projection::rebuild_in_memory::<PortalState, _>(
        nats_url,
        "portal-sync",
        streams::PORTAL,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refresh_interval_is_ours_then_tyks_in_minutes_then_ten_minutes() {
        assert_eq!(refresh_interval(None, None).unwrap(), DEFAULT_REFRESH);
        assert_eq!(
            refresh_interval(None, Some("5")).unwrap(),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_interval(None, Some("90s")).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            refresh_interval(Some(HumanDuration(Duration::from_secs(30))), Some("5")).unwrap(),
            Duration::from_secs(30)
        );
        let e = refresh_interval(None, Some("soon")).unwrap_err();
        assert!(e.message.contains(TYK_REFRESH_VAR), "{}", e.message);
        assert!(refresh_interval(None, Some("0")).is_err());
    }
}
