//! A small Tyk-Dashboard-compatible provider for development: `GET /api/apis?p=N`
//! answers `{"apis":[{"api_definition":{...}}],"pages":N}`, ten per page, and
//! wants the dashboard key raw in `Authorization` (no `Bearer`), as Tyk does.

use std::sync::{Arc, RwLock};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

/// APIs per page, as the Tyk Dashboard pages them.
pub const PAGE_SIZE: usize = 10;

/// The provider's APIs, shared so tests can change them: Tyk classic
/// definitions, or whole Dashboard entries (`{"api_definition": ..., "oas": ...}`).
#[derive(Clone)]
pub struct DemoProvider {
    /// Definitions served.
    pub apis: Arc<RwLock<Vec<Value>>>,
    /// The dashboard key clients must present.
    pub key: String,
}

#[derive(Deserialize)]
struct Page {
    p: Option<usize>,
}

/// A Tyk classic API definition.
pub fn tyk_api(id: &str, name: &str, listen_path: &str, target: &str, tags: &[&str]) -> Value {
    json!({
        "api_id": id,
        "name": name,
        "org_id": "demo-org",
        "use_keyless": false,
        "use_standard_auth": true,
        "enable_jwt": false,
        "use_oauth2": false,
        "active": true,
        "tags": tags,
        "proxy": { "listen_path": listen_path, "target_url": target, "strip_listen_path": true },
        "version_data": { "not_versioned": true, "versions": { "Default": { "name": "Default" } } }
    })
}

/// The sample APIs `meridian up` starts with.
pub fn sample_apis() -> Vec<Value> {
    vec![
        tyk_api(
            "petstore",
            "Petstore",
            "/petstore/",
            "http://petstore.internal:8080",
            &["public", "demo"],
        ),
        tyk_api(
            "payments",
            "Payments",
            "/payments/",
            "http://payments.internal:8080",
            &["pci"],
        ),
        tyk_api(
            "users",
            "Users",
            "/users/",
            "http://users.internal:8080",
            &["internal"],
        ),
        tyk_api(
            "orders",
            "Orders",
            "/orders/",
            "http://orders.internal:8080",
            &["internal"],
        ),
        tyk_api(
            "weather",
            "Weather",
            "/weather/",
            "http://weather.internal:8080",
            &["public"],
        ),
    ]
}

impl DemoProvider {
    /// A provider with the given APIs and key.
    pub fn new(apis: Vec<Value>, key: &str) -> Self {
        Self {
            apis: Arc::new(RwLock::new(apis)),
            key: key.to_owned(),
        }
    }

    /// The HTTP routes (`/healthz` for container health checks).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/apis", get(list))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self.clone())
    }
}

async fn list(
    State(p): State<DemoProvider>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> impl IntoResponse {
    let authorized =
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(p.key.as_str());
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"Status": "Error", "Message": "Not authorised"})),
        );
    }
    // Copy only the page asked for: the list can be thousands long.
    let apis = p.apis.read().expect("apis lock");
    let pages = apis.len().div_ceil(PAGE_SIZE).max(1);
    let n = page.p.unwrap_or(1).max(1);
    let items: Vec<Value> = apis
        .iter()
        .skip((n - 1) * PAGE_SIZE)
        .take(PAGE_SIZE)
        .map(|d| {
            // Whole entries (with `oas`) are served as they are.
            if d.get("api_definition").is_some() {
                d.clone()
            } else {
                json!({ "api_definition": d })
            }
        })
        .collect();
    drop(apis);
    (
        StatusCode::OK,
        Json(json!({ "apis": items, "pages": pages })),
    )
}
