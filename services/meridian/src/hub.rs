//! The hub in one process: agent-gateway, inventory, scheduler, key-issuer, the proxy and
//! portal-sync side by
//! side, every REST endpoint on one URL (routed by path) with the web console at `/`, one OpenAPI
//! document for all, and the
//! proxy's data plane on its own address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use meridian_kit::CancellationToken;
use meridian_kit::http::{self, Surface};
use meridian_kit::metrics::Metrics;
use tokio::task::JoinHandle;
use utoipa_axum::router::OpenApiRouter;

/// What the hub needs.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// NATS URL.
    pub nats_url: String,
    /// Directory for service state.
    pub data_dir: PathBuf,
    /// Admin key.
    pub api_key: String,
    /// Token signing secret.
    pub jwt_secret: String,
    /// The Gateway API secret (`x-tyk-authorization`) of key-issuer.
    pub gateway_secret: String,
    /// REST address.
    pub http_addr: String,
    /// gRPC address for agents.
    pub grpc_addr: String,
    /// The proxy's data plane (API traffic).
    pub gateway_addr: String,
    /// Heartbeat interval expected from agents.
    pub heartbeat_interval: Duration,
}

/// A running hub.
pub struct RunningHub {
    /// Where REST answers.
    pub http_addr: SocketAddr,
    /// Where agents connect.
    pub grpc_addr: SocketAddr,
    /// Where API clients connect (the proxy's data plane).
    pub gateway_addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<Task>,
}

/// Builds and starts every hub service in this process.
pub async fn start(config: HubConfig, stop: CancellationToken) -> anyhow::Result<RunningHub> {
    let mut gw_config =
        meridian_agent_gateway::Config::new(&config.nats_url, &config.api_key, &config.jwt_secret);
    gw_config.heartbeat_interval = meridian_kit::config::HumanDuration(config.heartbeat_interval);
    // One hub, one set of series: the services add their own families to it.
    let metrics = Metrics::new();
    let gateway = meridian_agent_gateway::App::build(gw_config, &metrics).await?;
    let inventory = meridian_inventory::App::build(
        meridian_inventory::Config::new(
            &config.nats_url,
            config.data_dir.join("inventory"),
            &config.api_key,
        ),
        &metrics,
    )
    .await?;
    let mut scheduler_config = meridian_scheduler::Config::new(&config.nats_url, &config.api_key);
    scheduler_config.replica = Some("hub".into());
    let scheduler = meridian_scheduler::App::build(scheduler_config, &metrics).await?;
    let mut key_config = meridian_key_issuer::Config::new(&config.nats_url, &config.gateway_secret);
    // The console lists keys (by hash) for the admin to inactivate or delete.
    key_config.enable_hashed_keys_listing = true;
    let key_issuer = meridian_key_issuer::App::build(key_config, &metrics).await?;

    let proxy = meridian_proxy::App::build(
        meridian_proxy::Config::new(&config.nats_url, &config.gateway_secret),
        &metrics,
    )
    .await?;

    let mut portal_config = meridian_portal_sync::Config::new(&config.nats_url, &config.api_key);
    portal_config.replica = Some("hub".into());
    let portal = meridian_portal_sync::App::build(portal_config, &metrics).await?;

    let mut checks = gateway.ready_checks();
    checks.extend(inventory.ready_checks());
    checks.extend(scheduler.ready_checks());
    checks.extend(key_issuer.ready_checks());
    checks.extend(proxy.ready_checks());
    checks.extend(portal.ready_checks());
    let api = OpenApiRouter::new()
        .merge(gateway.api())
        .merge(inventory.api())
        .merge(scheduler.api())
        .merge(key_issuer.api())
        .merge(proxy.api())
        .merge(portal.api());
    let router = http::service_router(api, checks, "Meridian hub", &metrics);

    let http_listener = tokio::net::TcpListener::bind(&config.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} for REST: {e}", config.http_addr))?;
    let grpc_listener = tokio::net::TcpListener::bind(&config.grpc_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} for agents: {e}", config.grpc_addr))?;
    meridian_kit::listen::raise_open_files();
    let gateway_listener =
        meridian_kit::listen::bind(&config.gateway_addr, meridian_kit::listen::DEFAULT_BACKLOG)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {} for API traffic: {e}",
                    config.gateway_addr
                )
            })?;
    let gateway_addr = gateway_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;
    let sessions =
        crate::console::Sessions::start(&config.nats_url, &metrics, stop.clone()).await?;
    let router = router
        .clone()
        .merge(crate::console::router(crate::console::Console {
            inner: router,
            api_key: config.api_key.clone(),
            gateway_secret: Some(config.gateway_secret.clone()),
            agent_url: format!("http://{grpc_addr}"),
            sessions,
        }));

    let tasks = vec![
        task("http", http::serve(http_listener, router, stop.clone())),
        task(
            "agent-gateway",
            gateway.run_until_stopped(grpc_listener, stop.clone()),
        ),
        task("inventory", inventory.run_until_stopped(stop.clone())),
        task("scheduler", scheduler.run_until_stopped(stop.clone())),
        task("key-issuer", key_issuer.run_until_stopped(stop.clone())),
        task(
            "proxy",
            proxy.run_until_stopped(gateway_listener, stop.clone()),
        ),
        task("portal-sync", portal.run_until_stopped(stop.clone())),
    ];
    Ok(RunningHub {
        http_addr,
        grpc_addr,
        gateway_addr,
        stop,
        tasks,
    })
}

/// A service's failure, whatever its error type.
type TaskError = Box<dyn std::error::Error + Send + Sync>;

type Task = (&'static str, JoinHandle<Result<(), TaskError>>);

/// Runs one service of the hub in the background.
fn task<E: std::error::Error + Send + Sync + 'static>(
    name: &'static str,
    run: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) -> Task {
    (
        name,
        tokio::spawn(async move { run.await.map_err(TaskError::from) }),
    )
}

impl RunningHub {
    /// Waits until stop is requested or a service exits; then stops the rest
    /// and waits for them (up to `grace`). Reports which service ended and why.
    pub async fn run_until_stopped(mut self, grace: Duration) -> anyhow::Result<()> {
        let first = {
            let waits = self.tasks.iter_mut().map(|(name, handle)| {
                let name = *name;
                Box::pin(async move { (name, handle.await) })
            });
            tokio::select! {
                () = self.stop.cancelled() => None,
                (done, _, _) = futures_util::future::select_all(waits) => Some(done),
            }
        };
        let mut failure = None;
        if let Some((name, result)) = first {
            match result {
                Ok(Ok(())) => tracing::info!(service = name, "service stopped"),
                Ok(Err(e)) => {
                    tracing::error!(service = name, error = %e, "service failed; stopping the hub");
                    failure = Some(format!("{name}: {e}"));
                }
                Err(e) => failure = Some(format!("{name} panicked: {e}")),
            }
        }
        self.stop.cancel();
        let remaining = self.tasks.into_iter().filter(|(_, h)| !h.is_finished());
        let all = futures_util::future::join_all(
            remaining.map(|(name, h)| async move { (name, h.await) }),
        );
        match tokio::time::timeout(grace, all).await {
            Ok(results) => {
                for (name, r) in results {
                    if let Ok(Err(e)) = r {
                        tracing::warn!(service = name, error = %e, "service ended with an error during shutdown");
                    }
                }
            }
            Err(_) => tracing::warn!("some services did not stop within {grace:?}"),
        }
        match failure {
            Some(f) => Err(anyhow::anyhow!(f)),
            None => Ok(()),
        }
    }
}
