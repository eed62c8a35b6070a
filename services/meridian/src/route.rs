//! `meridian route`: the hub URL in front of separately deployed services
//! (compose, Kubernetes). It reads each service's OpenAPI document at start
//! and sends every request to the service whose path template matches, so
//! the routing table is the services' own description, never a hand-kept
//! list; it serves the merged document at `/api/openapi.json` with the UI at
//! `/api/docs`. `/readyz` is ready when every service is.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meridian_kit::CancellationToken;
use meridian_kit::headers::remove_hop_by_hop;
use meridian_kit::http::{self as kit_http, ApiError};
use meridian_kit::retry::{Backoff, retry};
use utoipa::openapi::OpenApi;

/// Largest request body forwarded.
const MAX_BODY: usize = 16 << 20;

/// One service behind the router.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Its name, for errors and logs.
    pub name: String,
    /// Its base URL, e.g. `http://inventory:8082`.
    pub url: String,
}

/// A path template of one service: literal segments, or `None` for `{param}`.
#[derive(Clone, Debug)]
struct Template {
    segments: Vec<Option<String>>,
    upstream: usize,
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_matches('/').split('/').collect()
}

impl Template {
    fn parse(path: &str, upstream: usize) -> Self {
        let segments = segments(path)
            .into_iter()
            .map(|s| (!(s.starts_with('{') && s.ends_with('}'))).then(|| s.to_owned()))
            .collect();
        Self { segments, upstream }
    }

    /// How many literal segments matched (`None`: no match).
    fn score(&self, path: &[&str]) -> Option<usize> {
        if self.segments.len() != path.len() {
            return None;
        }
        let mut literal = 0;
        for (t, p) in self.segments.iter().zip(path) {
            match t {
                Some(lit) if lit == p => literal += 1,
                Some(_) => return None,
                None if p.is_empty() => return None,
                None => {}
            }
        }
        Some(literal)
    }
}

/// The routing table and the merged document.
#[derive(Clone)]
struct Routes {
    upstreams: Vec<Upstream>,
    templates: Vec<Template>,
    http: reqwest::Client,
}

impl Routes {
    /// The service for `path`: the matching template with most literal segments.
    fn pick(&self, path: &str) -> Option<&Upstream> {
        let path = segments(path);
        self.templates
            .iter()
            .filter_map(|t| t.score(&path).map(|s| (s, t.upstream)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, u)| &self.upstreams[u])
    }
}

/// Fetches every upstream's document (retrying until `patience` runs out,
/// since services start in any order) and builds the router.
pub async fn router(upstreams: Vec<Upstream>, patience: Duration) -> anyhow::Result<Router> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut templates = Vec::new();
    let mut merged: Option<OpenApi> = None;
    for (i, upstream) in upstreams.iter().enumerate() {
        let doc = fetch_doc(&http, upstream, patience).await?;
        for path in doc.paths.paths.keys() {
            templates.push(Template::parse(path, i));
        }
        merged = Some(match merged {
            None => doc,
            Some(mut m) => {
                m.merge(doc);
                m
            }
        });
    }
    let merged = merged.ok_or_else(|| anyhow::anyhow!("no upstream services"))?;
    tracing::info!(
        services = upstreams.len(),
        paths = templates.len(),
        "routing the hub URL"
    );
    let routes = Routes {
        upstreams,
        templates,
        http,
    };
    let own = Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "alive"})) }),
        )
        .route("/readyz", get(ready))
        .fallback(forward)
        .with_state(routes);
    let router = kit_http::docs_router(kit_http::finish_openapi(merged, "Meridian hub")).merge(own);
    Ok(kit_http::tracked(
        router,
        "hub",
        &meridian_kit::metrics::Metrics::new(),
    ))
}

async fn fetch_doc(
    http: &reqwest::Client,
    upstream: &Upstream,
    patience: Duration,
) -> anyhow::Result<OpenApi> {
    let url = format!("{}/api/openapi.json", upstream.url.trim_end_matches('/'));
    let backoff = Backoff::within(patience, Duration::from_millis(100), Duration::from_secs(2));
    let what = format!("fetching the OpenAPI document of {}", upstream.name);
    retry(&what, backoff, &CancellationToken::new(), || async {
        let response = http.get(&url).send().await?.error_for_status()?;
        response.json::<OpenApi>().await
    })
    .await
    .map_err(|e| anyhow::anyhow!("{} ({url}): {e}", upstream.name))
}

async fn ready(State(routes): State<Routes>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let mut down = Vec::new();
    for u in &routes.upstreams {
        let url = format!("{}/readyz", u.url.trim_end_matches('/'));
        let ok = routes
            .http
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !ok {
            down.push(u.name.clone());
        }
    }
    if down.is_empty() {
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "not ready", "waiting_for": down})),
        )
    }
}

async fn forward(State(routes): State<Routes>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let Some(upstream) = routes.pick(&path) else {
        return kit_http::not_found_fallback(request.uri().clone())
            .await
            .into_response();
    };
    let target = format!(
        "{}{}",
        upstream.url.trim_end_matches('/'),
        request
            .uri()
            .path_and_query()
            .map_or(path.as_str(), |pq| pq.as_str())
    );
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::invalid_field("body", format!("larger than {MAX_BODY} bytes"))
                .into_response();
        }
    };
    // The body is sent whole, so its length and Host are the client's to set.
    let mut headers = parts.headers;
    remove_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    let sent = routes
        .http
        .request(parts.method, &target)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            return ApiError::unavailable(format!("{} is not answering: {e}", upstream.name))
                .into_response();
        }
    };
    let status = response.status();
    let mut out = Response::builder().status(status);
    let mut answered = response.headers().clone();
    remove_hop_by_hop(&mut answered);
    answered.remove(header::CONTENT_LENGTH);
    if let Some(headers) = out.headers_mut() {
        headers.extend(answered);
    }
    let bytes: Bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::unavailable(format!("{} broke off its answer: {e}", upstream.name))
                .into_response();
        }
    };
    out.body(Body::from(bytes))
        .unwrap_or_else(|e| ApiError::internal("building the answer", e).into_response())
}

/// Serves the router on `addr` until `stop`.
pub async fn serve(
    addr: &str,
    upstreams: Vec<Upstream>,
    console: Option<crate::console::Console>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut router = router(upstreams, Duration::from_secs(120)).await?;
    match console {
        Some(console) => {
            router = router
                .clone()
                .merge(crate::console::router(crate::console::Console {
                    inner: router,
                    ..console
                }));
        }
        None => tracing::warn!("MERIDIAN_API_KEY is not set: the web console is off"),
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "hub router listening");
    kit_http::serve(listener, router, stop).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_literal_template_wins() {
        let routes = Routes {
            upstreams: ["gateway", "scheduler", "inventory"]
                .map(|n| Upstream {
                    name: n.into(),
                    url: String::new(),
                })
                .to_vec(),
            templates: vec![
                Template::parse("/api/agents/{id}", 0),
                Template::parse("/api/agents/", 0),
                Template::parse("/api/agents/{id}/sync", 0),
                Template::parse("/api/agents/{id}/sync-jobs", 1),
                Template::parse("/api/agents/{id}/sync-jobs/{job_id}", 1),
                Template::parse("/api/apis/{id}", 2),
            ],
            http: reqwest::Client::new(),
        };
        let pick = |p: &str| routes.pick(p).map(|u| u.name.as_str());
        assert_eq!(pick("/api/agents/"), Some("gateway"));
        assert_eq!(pick("/api/agents"), Some("gateway"));
        assert_eq!(pick("/api/agents/a1"), Some("gateway"));
        assert_eq!(pick("/api/agents/a1/sync"), Some("gateway"));
        assert_eq!(pick("/api/agents/a1/sync-jobs/"), Some("scheduler"));
        assert_eq!(pick("/api/agents/a1/sync-jobs/j1"), Some("scheduler"));
        assert_eq!(pick("/api/apis/x"), Some("inventory"));
        assert_eq!(pick("/api/apis/x/y/z"), None);
        assert_eq!(pick("/elsewhere"), None);
    }
}
