//! The health probe on `healthProbe.server.port`: `/healthz` answers while
//! the process lives; `/readyz` says whether the hub streams are up and
//! whether this replica leads, stands by, or does not elect (200 when
//! connected, 503 otherwise); `/metrics` has the agent's Prometheus metrics
//! (`meridian_agent_hub_connected`, `meridian_agent_leader`,
//! `meridian_agent_sync_runs_total{provider,result}`,
//! `meridian_agent_apis_discovered_total{provider}`).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use meridian_kit::metrics::Metrics;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::election::Role;

/// What the probe reports.
#[derive(Clone)]
pub struct ProbeState {
    /// Whether both streams to the hub are open.
    pub link: watch::Receiver<bool>,
    /// Leader, standby or not electing.
    pub role: watch::Receiver<Role>,
}

/// The probe's routes; `/metrics` serves `metrics` (the session's counters
/// and the two gauges registered here).
pub fn router(state: ProbeState, metrics: &Metrics) -> Router {
    let connected = metrics.gauge(
        "meridian_agent_hub_connected",
        "1 while the agent's streams to the hub are up",
    );
    let leader = metrics.gauge(
        "meridian_agent_leader",
        "1 while this replica leads (or does not elect), 0 on standby",
    );
    let watched = state.clone();
    metrics.on_scrape(std::sync::Arc::new(move || {
        connected.set(i64::from(*watched.link.borrow()));
        leader.set(i64::from(watched.role.borrow().sync_token().is_some()));
        Box::pin(async {})
    }));
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "alive"})) }),
        )
        .route("/readyz", get(ready))
        .with_state(state)
        .merge(metrics.router())
}

async fn ready(State(s): State<ProbeState>) -> (StatusCode, axum::Json<Value>) {
    let connected = *s.link.borrow();
    let role = *s.role.borrow();
    let mut body = json!({
        "hub": if connected { "connected" } else { "disconnected" },
        "role": role.as_str(),
    });
    if let Role::Leader { fencing_token } = role {
        body["fencing_token"] = json!(fencing_token);
    }
    let status = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}
