//! The end-to-end test harness: a real `nats-server -js` per test on a free
//! port with its own store, services bound to port 0, and helpers to drive
//! them as an operator and an agent would.

pub mod browser;
pub mod fake_dashboard;
pub mod fake_kube;
pub mod load;
pub mod pki;
pub mod portal;
pub mod processes;
pub mod raw_http;
pub mod tyk;
pub mod upstream;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use meridian_agent::providers::{ProviderConfig, ProviderError, Source};
use meridian_agent::session::{self, SessionConfig};
use meridian_kit::CancellationToken;
pub use meridian_kit::metrics::Metrics;
use meridian_kit::nats_server::NatsServer;
use meridian_schemas::lifecycle::LifecycleEvent;
use meridian_schemas::proto::ApiDefinition;
use meridian_schemas::{Envelope, streams};
use serde_json::Value;
use tokio::task::JoinHandle;

/// The admin key every test hub uses.
pub const API_KEY: &str = "test-admin-key";
/// The token-signing secret every test hub uses.
pub const JWT_SECRET: &str = "test-jwt-secret-that-is-at-least-32-bytes";

/// A real nats-server with JetStream, killed on drop.
pub struct Nats {
    /// The server process.
    pub server: NatsServer,
    /// A client for assertions.
    pub client: async_nats::Client,
    /// JetStream on that client.
    pub js: async_nats::jetstream::Context,
}

impl Nats {
    /// Starts a server on a free port with a temporary store. Fails loudly
    /// (with install instructions) when no suitable nats-server exists.
    pub async fn start() -> Self {
        let server = NatsServer::start(None, None).unwrap_or_else(|e| panic!("{e}"));
        let client = async_nats::connect(&server.url)
            .await
            .expect("connect to test nats-server");
        let js = async_nats::jetstream::new(client.clone());
        Self { server, client, js }
    }

    /// The URL services connect to.
    pub fn url(&self) -> String {
        self.server.url.clone()
    }
}

/// A running service task.
pub struct Running {
    /// Its base URL.
    pub url: String,
    /// Cancel to stop it gracefully.
    pub stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Running {
    /// Graceful stop, waiting for it to finish.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
    }

    /// Crash: abort the service mid-flight (no graceful drain, no final
    /// flush), then stop the tasks it had spawned, as the end of a process
    /// would, and wait until it is gone.
    pub async fn kill(self) {
        self.handle.abort();
        self.stop.cancel();
        let _ = self.handle.await;
    }
}

/// A running agent-gateway.
pub struct Gateway {
    /// REST.
    pub rest: Running,
    /// gRPC URL for agents.
    pub grpc_url: String,
}

/// Starts an agent-gateway; `tweak` adjusts its configuration.
pub async fn start_gateway(
    nats: &Nats,
    tweak: impl FnOnce(&mut meridian_agent_gateway::Config),
) -> Gateway {
    let mut config = meridian_agent_gateway::Config::new(&nats.url(), API_KEY, JWT_SECRET);
    tweak(&mut config);
    let app = meridian_agent_gateway::App::build(config, &Metrics::new())
        .await
        .expect("build agent-gateway");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", http.local_addr().unwrap());
    let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
    let stop = CancellationToken::new();
    let s = stop.clone();
    let handle = tokio::spawn(async move {
        if let Err(e) = app.serve(http, grpc, s).await {
            eprintln!("agent-gateway ended: {e}");
        }
    });
    wait_ready(&url).await;
    Gateway {
        rest: Running { url, stop, handle },
        grpc_url,
    }
}

/// Starts inventory on `data_dir`.
pub async fn start_inventory(nats: &Nats, data_dir: PathBuf) -> Running {
    let app = meridian_inventory::App::build(
        meridian_inventory::Config::new(&nats.url(), data_dir, API_KEY),
        &Metrics::new(),
    )
    .await
    .expect("build inventory");
    serve_on_free_port("inventory", |http, stop| app.serve(http, stop)).await
}

/// Binds a free port, runs `serve` on it in the background and waits until
/// its `/readyz` answers.
async fn serve_on_free_port<F, E>(
    name: &'static str,
    serve: impl FnOnce(tokio::net::TcpListener, CancellationToken) -> F,
) -> Running
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", http.local_addr().unwrap());
    let stop = CancellationToken::new();
    let served = serve(http, stop.clone());
    let handle = tokio::spawn(async move {
        if let Err(e) = served.await {
            eprintln!("{name} ended: {e}");
        }
    });
    wait_ready(&url).await;
    Running { url, stop, handle }
}

async fn wait_ready(url: &str) {
    let http = reqwest::Client::new();
    let ok = eventually(Duration::from_secs(30), || async {
        let r = http.get(format!("{url}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(ok.is_some(), "{url} did not become ready");
}

/// Starts a scheduler replica (minimum interval 1 s, so tests can use short
/// cadences); `tweak` adjusts the rest.
pub async fn start_scheduler(
    nats: &Nats,
    tweak: impl FnOnce(&mut meridian_scheduler::Config),
) -> Running {
    let mut config = meridian_scheduler::Config::new(&nats.url(), API_KEY);
    config.min_interval = meridian_kit::config::HumanDuration(Duration::from_secs(1));
    tweak(&mut config);
    let app = meridian_scheduler::App::build(config, &Metrics::new())
        .await
        .expect("build scheduler");
    serve_on_free_port("scheduler", |http, stop| app.serve(http, stop)).await
}

/// The body of an answer a test relies on: a setup call that fails is a
/// failure there, naming the call, not a confusing one further on.
#[track_caller]
pub fn expect_ok(method: &str, path: &str, (status, body): (u16, Value)) -> Value {
    assert!(
        (200..300).contains(&status),
        "{method} {path} answered {status}: {body}"
    );
    body
}

/// The value of one series (`name{labels}` as the text format writes it)
/// on the `/metrics` of the service at `base`; `None` when it cannot be
/// read.
pub async fn metric(base: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))?
        .trim()
        .parse()
        .ok()
}

/// Polls `f` every 50 ms until it returns `Some`, or `None` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The hub's REST API, routed by path as the launcher and the Ingress do.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// The OpenAPI documents of the services called, by base URL: every
    /// answer is checked against its service's document.
    documents: Arc<Mutex<std::collections::HashMap<String, Arc<Value>>>>,
    /// agent-gateway base URL.
    pub gateway: String,
    /// inventory base URL.
    pub inventory: String,
    /// scheduler base URL (empty when the test runs none).
    pub scheduler: String,
    /// The key sent in `X-API-Key` (None: no header).
    pub key: Option<String>,
}

impl Api {
    /// Routes to the two services.
    pub fn new(gateway: &str, inventory: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            documents: Arc::default(),
            gateway: gateway.into(),
            inventory: inventory.into(),
            scheduler: String::new(),
            key: Some(API_KEY.into()),
        }
    }

    /// The same API with sync-job paths routed to `scheduler`.
    pub fn with_scheduler(&self, scheduler: &str) -> Self {
        Self {
            scheduler: scheduler.into(),
            ..self.clone()
        }
    }

    /// The same API with another key (or none).
    pub fn with_key(&self, key: Option<&str>) -> Self {
        Self {
            key: key.map(str::to_owned),
            ..self.clone()
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base(path))
    }

    /// The service that answers `path`.
    fn base(&self, path: &str) -> &str {
        if path.contains("/sync-jobs") {
            return &self.scheduler;
        }
        let inventory = [
            "/api/apis",
            "/api/providers",
            "/api/repository",
            "/api/events",
        ]
        .iter()
        .any(|p| path.starts_with(p));
        if inventory {
            &self.inventory
        } else {
            &self.gateway
        }
    }

    /// The OpenAPI document `base` serves (fetched once).
    async fn document(&self, base: &str) -> Arc<Value> {
        if let Some(doc) = self.documents.lock().unwrap().get(base) {
            return doc.clone();
        }
        let doc: Value = self
            .http
            .get(format!("{base}/api/openapi.json"))
            .send()
            .await
            .expect("the OpenAPI document")
            .json()
            .await
            .expect("the OpenAPI document is JSON");
        let doc = Arc::new(doc);
        self.documents
            .lock()
            .unwrap()
            .insert(base.to_owned(), doc.clone());
        doc
    }

    /// Checks an answer against the service's OpenAPI document: the
    /// operation declares the status, and the body fits its schema.
    async fn conforms(&self, method: &reqwest::Method, path: &str, status: u16, body: &Value) {
        let base = self.base(path).to_owned();
        let doc = self.document(&base).await;
        let Some(template) = path_template(&doc, path) else {
            // No such path: the JSON 404 of the router's fallback.
            assert_eq!(
                status, 404,
                "{method} {path}: {status} for an undocumented path"
            );
            return;
        };
        let operation = &doc["paths"][&template][method.as_str().to_lowercase()];
        if operation.is_null() {
            assert_eq!(
                status, 405,
                "{method} {path}: {status} for an undocumented method"
            );
            return;
        }
        if let Err(e) = answer_fits(&doc, &template, method.as_str(), status, body) {
            panic!("{e}");
        }
    }

    /// Sends a request; returns status and JSON body (Null when empty).
    #[must_use]
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method.clone(), self.url(path));
        if let Some(k) = &self.key {
            req = req.header("x-api-key", k);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        self.conforms(&method, path, status, &body).await;
        (status, body)
    }

    /// GET.
    #[must_use]
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// POST JSON.
    #[must_use]
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(&body.to_string()))
            .await
    }

    /// GET that must succeed (2xx); its body.
    pub async fn get_ok(&self, path: &str) -> Value {
        expect_ok("GET", path, self.get(path).await)
    }

    /// POST that must succeed (2xx); its body.
    pub async fn post_ok(&self, path: &str, body: &Value) -> Value {
        expect_ok("POST", path, self.post(path, body).await)
    }

    /// Asks the agent to sync now (one provider, or all); returns the run ids.
    pub async fn trigger_sync(&self, agent: &str, provider: Option<&str>) -> Vec<String> {
        let body = match provider {
            Some(p) => serde_json::json!({ "provider": p }),
            None => serde_json::json!({}),
        };
        let (code, answer) = self.post(&format!("/api/agents/{agent}/sync"), &body).await;
        assert_eq!(code, 202, "{answer}");
        answer["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Registers an agent and issues its token.
    pub async fn register_agent(&self, name: &str) -> (String, String) {
        let (status, agent) = self
            .post("/api/agents/", &serde_json::json!({"name": name}))
            .await;
        assert_eq!(status, 201, "{agent}");
        let id = agent["id"].as_str().unwrap().to_owned();
        let (status, token) = self
            .post("/api/auth/token/", &serde_json::json!({"agent_id": id}))
            .await;
        assert_eq!(status, 200, "{token}");
        (id, token["token"].as_str().unwrap().to_owned())
    }

    /// Every API of the repository with the given status filter.
    pub async fn apis(&self, status: &str) -> Vec<Value> {
        let (code, page) = self
            .get(&format!("/api/apis?status={status}&per_page=500"))
            .await;
        assert_eq!(code, 200, "{page}");
        page["apis"].as_array().unwrap().clone()
    }

    /// Waits until the repository's total for `status` equals `n`.
    pub async fn wait_for_total(&self, status: &str, n: u64, timeout: Duration) {
        let got = eventually(timeout, || async {
            let (_, page) = self
                .get(&format!("/api/apis?status={status}&per_page=1"))
                .await;
            (page["total"].as_u64() == Some(n)).then_some(())
        })
        .await;
        if got.is_none() {
            let (_, page) = self
                .get(&format!("/api/apis?status={status}&per_page=1"))
                .await;
            panic!(
                "repository {status} total is {}, expected {n}",
                page["total"]
            );
        }
    }

    /// The provider's last sync as `/api/providers` shows it.
    pub async fn last_sync(&self, provider: &str) -> Value {
        let (_, providers) = self.get("/api/providers").await;
        providers
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == provider))
            .map(|p| p["last_sync"].clone())
            .unwrap_or(Value::Null)
    }
}

/// The document's path template that `path` (with its query) matches:
/// literal segments first, then `{param}` ones.
pub fn path_template(doc: &Value, path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or(path);
    let wanted: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, String)> = None;
    for template in doc["paths"].as_object()?.keys() {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != wanted.len() {
            continue;
        }
        let mut literal = 0;
        let fits = parts.iter().zip(&wanted).all(|(t, w)| {
            if t.starts_with('{') {
                !w.is_empty()
            } else {
                literal += 1;
                t == w
            }
        });
        if fits && best.as_ref().is_none_or(|(n, _)| literal > *n) {
            best = Some((literal, template.clone()));
        }
    }
    best.map(|(_, t)| t)
}

/// Checks an answer against an OpenAPI document's operation
/// (`template`, `method`): the status is declared and the body fits its
/// JSON schema. The error says which and why.
pub fn answer_fits(
    doc: &Value,
    template: &str,
    method: &str,
    status: u16,
    body: &Value,
) -> Result<(), String> {
    let method = method.to_lowercase();
    let operation = &doc["paths"][template][&method];
    let response = &operation["responses"][status.to_string()];
    if !response.is_object() {
        return Err(format!(
            "{method} {template}: status {status} is not in the OpenAPI document (it declares {:?}); body {body}",
            operation["responses"]
                .as_object()
                .map(|r| r.keys().collect::<Vec<_>>())
        ));
    }
    let schema = &response["content"]["application/json"]["schema"];
    if schema.is_null() {
        return if body.is_null() {
            Ok(())
        } else {
            Err(format!(
                "{method} {template} {status}: a body the document does not declare: {body}"
            ))
        };
    }
    let pointer = format!(
        "#/paths/{}/{method}/responses/{status}/content/application~1json/schema",
        template
            .replace('~', "~0")
            .replace('/', "~1")
            .replace('{', "%7B")
            .replace('}', "%7D"),
    );
    schema_fits(doc, &pointer, body).map_err(|e| format!("{method} {template} {status}: {e}"))
}

/// Checks `body` against the schema at `pointer` (a `#/...` JSON pointer)
/// inside `doc`.
pub fn schema_fits(doc: &Value, pointer: &str, body: &Value) -> Result<(), String> {
    let mut root = doc.clone();
    root["$ref"] = Value::String(pointer.to_owned());
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .map_err(|e| format!("the document's schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the answer breaks the OpenAPI document: {errors:?}\n{body}"
        ))
    }
}

/// A provider whose API list (or failure) the test controls.
#[derive(Clone)]
pub struct MemorySource(pub Arc<Mutex<Result<Vec<ApiDefinition>, String>>>);

impl MemorySource {
    /// A source listing `apis`.
    pub fn new(apis: Vec<ApiDefinition>) -> Self {
        Self(Arc::new(Mutex::new(Ok(apis))))
    }

    /// Replace what the next sync lists (or make it fail).
    pub fn set(&self, next: Result<Vec<ApiDefinition>, String>) {
        *self.0.lock().unwrap() = next;
    }
}

impl Source for MemorySource {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ApiDefinition>, ProviderError>> {
        let r = self.0.lock().unwrap().clone();
        Box::pin(async move { r.map_err(ProviderError::Unavailable) })
    }
}

/// An API definition for tests.
pub fn api_def(id: &str, name: &str, version: &str) -> ApiDefinition {
    ApiDefinition {
        provider_api_id: id.into(),
        name: name.into(),
        version: version.into(),
        base_path: format!("/{id}/"),
        upstream_url: format!("http://{id}.internal"),
        auth_methods: vec!["authToken".into()],
        tags: vec!["test".into()],
        raw: serde_json::json!({"api_id": id, "name": name}).to_string(),
        ..Default::default()
    }
}

/// A running demo agent.
pub struct Agent {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Agent {
    /// Connects an agent with the given providers (name, type, source).
    pub fn start(grpc_url: &str, token: &str, providers: Vec<(&str, &str, MemorySource)>) -> Self {
        Self::run(SessionConfig::new(
            grpc_url,
            token,
            providers
                .into_iter()
                .map(|(name, t, source)| ProviderConfig {
                    name: name.into(),
                    provider_type: t.into(),
                    source: Arc::new(source),
                })
                .collect(),
        ))
    }

    /// Runs an agent session as configured.
    pub fn run(config: SessionConfig) -> Self {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(session::run_until_stopped(config, stop.clone()));
        Self { stop, handle }
    }

    /// Disconnects.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}

/// Every change on the `API_LIFECYCLE` stream, in order (a message carries
/// a batch of them).
pub async fn lifecycle_events(js: &async_nats::jetstream::Context) -> Vec<LifecycleEvent> {
    stream_envelopes(js, streams::API_LIFECYCLE)
        .await
        .iter()
        .flat_map(|e| meridian_schemas::lifecycle::changes(e).unwrap())
        .collect()
}

/// Every event on a stream, in order.
pub async fn stream_events<E: meridian_schemas::Event>(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<E> {
    stream_envelopes(js, stream)
        .await
        .iter()
        .map(|e| e.open().unwrap())
        .collect()
}

/// Every message on a stream, in order.
pub async fn stream_envelopes(js: &async_nats::jetstream::Context, stream: &str) -> Vec<Envelope> {
    use futures_util::StreamExt;
    let Ok(stream) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    if last == 0 {
        return out;
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    while let Some(m) = messages.next().await {
        let m = m.unwrap();
        out.push(Envelope::from_bytes(&m.payload).unwrap());
        if m.info().unwrap().stream_sequence >= last {
            break;
        }
    }
    out
}

/// Number of messages stored on a stream.
pub async fn stream_count(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
        .messages
}

/// The public CloudEvents on subjects matching `filter`, in stream order,
/// each checked against the JSON Schema of its type in `schemas/json/` (so
/// every public event a test reads is validated), with its subject added as
/// `_subject`.
pub async fn public_events(js: &async_nats::jetstream::Context, filter: &str) -> Vec<Value> {
    use futures_util::StreamExt;
    let Ok(stream) = js.get_stream(meridian_schemas::streams::EVENTS).await else {
        return Vec::new();
    };
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut pending = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    let mut messages = consumer.messages().await.unwrap();
    let validators = schema_validators();
    while pending > 0 {
        let m = messages.next().await.unwrap().unwrap();
        pending = m.info().unwrap().pending;
        let mut event: Value = serde_json::from_slice(&m.payload).unwrap();
        let ty = event["type"].as_str().unwrap_or_default().to_owned();
        let validator = validators
            .get(ty.as_str())
            .unwrap_or_else(|| panic!("{event}: undocumented type {ty:?}"));
        let errors: Vec<String> = validator
            .iter_errors(&event)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{event} breaks the schema of {ty}: {errors:?}"
        );
        event["_subject"] = Value::String(m.subject.to_string());
        out.push(event);
    }
    out
}

/// A validator per public event type, from the checked-in schemas.
fn schema_validators() -> std::collections::HashMap<&'static str, jsonschema::Validator> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/json");
    meridian_schemas::public::EVENT_TYPES
        .iter()
        .map(|(ty, file)| {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            let schema: Value = serde_json::from_str(&text).unwrap();
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            (*ty, validator)
        })
        .collect()
}

/// Waits until the public stream holds `n` events matching `filter`, and
/// returns them (or fails, showing what is there).
pub async fn wait_for_public(
    js: &async_nats::jetstream::Context,
    filter: &str,
    n: usize,
) -> Vec<Value> {
    let got = eventually(Duration::from_secs(30), || async {
        let events = public_events(js, filter).await;
        (events.len() >= n).then_some(events)
    })
    .await;
    got.unwrap_or_else(|| panic!("fewer than {n} public events on {filter}"))
}

/// A `moto_server` (AWS mock) on a free port, killed on drop. It accepts any
/// credentials: with IAM authentication on (`INITIAL_NO_AUTH_ACTION_COUNT`),
/// moto 5.2.5 refuses correctly signed GET requests to API Gateway (botocore's
/// own signer included), so the signer is checked against AWS's published
/// example instead.
pub struct Moto {
    /// Base URL.
    pub url: String,
    child: std::process::Child,
}

impl Moto {
    /// Starts one on a port it picks, or fails saying how to install it;
    /// ready when it says where it runs.
    pub async fn start() -> Self {
        use std::io::BufRead;
        let bin = std::env::var_os("MOTO_SERVER_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                let venv =
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
                venv.exists().then_some(venv)
            })
            .unwrap_or_else(|| PathBuf::from("moto_server"));
        let mut child = std::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): run scripts/setup (it installs moto[server] into .venv) or set MOTO_SERVER_BIN",
                    bin.display()
                )
            });
        // " * Running on http://127.0.0.1:PORT" on stderr, then the request
        // log: read on a thread for as long as it runs (a full pipe would
        // stall it).
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://"))
                    && line.contains("Running on")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let url = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .expect("moto_server did not say where it runs");
        Self { url, child }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// NATS, one agent-gateway and one inventory, with the API routed to both.
pub struct TestHub {
    /// The NATS server.
    pub nats: Nats,
    /// agent-gateway.
    pub gw: Gateway,
    /// Inventory's data lives under here (`inventory/`).
    pub dir: tempfile::TempDir,
    /// Inventory.
    pub inv: Running,
    /// The REST API.
    pub api: Api,
}

impl TestHub {
    /// Starts them; `tweak` adjusts the gateway's configuration.
    pub async fn start(tweak: impl FnOnce(&mut meridian_agent_gateway::Config)) -> Self {
        let nats = Nats::start().await;
        let gw = start_gateway(&nats, tweak).await;
        let dir = tempfile::tempdir().unwrap();
        let inv = start_inventory(&nats, dir.path().join("inventory")).await;
        let api = Api::new(&gw.rest.url, &inv.url);
        Self {
            nats,
            gw,
            dir,
            inv,
            api,
        }
    }
}

/// Heartbeats every second, INACTIVE after two missed: status tests end fast.
pub fn fast_heartbeats(c: &mut meridian_agent_gateway::Config) {
    c.heartbeat_interval = meridian_kit::config::HumanDuration(Duration::from_secs(1));
    c.missed_heartbeats = 2;
}

/// The `meridian-agent` binary next to the test binary. `cargo test` does not
/// build another package's binaries, so `scripts/test` builds it first.
pub fn agent_binary() -> PathBuf {
    workspace_binary("meridian-agent")
}

/// A workspace binary (`meridian`, `meridian-agent`) next to the test binary.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --bin {name}` (scripts/test does)",
        bin.display()
    );
    bin
}

/// A running `meridian-agent` process (killed when dropped) and the port
/// its health probe listens on.
pub struct AgentProcess {
    /// The process.
    pub child: tokio::process::Child,
    /// Where `/healthz`, `/readyz` and `/metrics` answer.
    pub probe: u16,
}

/// Writes `yaml` to `dir/agent-config.yaml` and starts the agent binary on
/// it. Give it `healthProbe.server.port: 0`: the port it takes is read from
/// its log, so the probe is ready when the agent says so.
pub async fn start_agent_binary(dir: &std::path::Path, yaml: &str) -> AgentProcess {
    start_agent_binary_env(dir, yaml, &[]).await
}

/// [`start_agent_binary`] with extra environment variables.
pub async fn start_agent_binary_env(
    dir: &std::path::Path,
    yaml: &str,
    env: &[(&str, &str)],
) -> AgentProcess {
    use tokio::io::AsyncBufReadExt;
    let path = dir.join("agent-config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = tokio::process::Command::new(agent_binary())
        .arg("--config")
        .arg(&path)
        .env("MERIDIAN_LOG", "warn,meridian_agent=info")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let probe = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("agent: {line}");
            if line.contains("health probe listening") {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="));
                return addr.and_then(|a| a.rsplit(':').next()?.parse::<u16>().ok());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("the agent said where its probe listens");
    // Its log goes on to the test's output.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("agent: {line}");
        }
    });
    AgentProcess { child, probe }
}

/// Serves a fake Tyk Dashboard on a free port; returns its URL.
pub async fn serve_demo_provider(provider: &meridian::demo_provider::DemoProvider) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = provider.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// An `agent-config.yaml` for the agent binary: the hub at `grpc_url`, the
/// probe on a free port, one Tyk provider named `tyk` (key `demo-key`) at
/// `provider_url`, and `extra` YAML (top-level keys) appended.
pub fn tyk_agent_yaml(grpc_url: &str, token: &str, provider_url: &str, extra: &str) -> String {
    let hub = grpc_url.trim_start_matches("http://");
    format!(
        r#"
governanceDashboard:
  server:
    url: "{hub}"
  auth:
    token: "{token}"
healthProbe:
  server:
    port: 0
instances:
  - name: "tyk"
    type: "tyk"
    config:
      host: "{provider_url}"
      auth: "demo-key"
{extra}
"#
    )
}

/// The agent's `/readyz` on `port` (`None` while it does not answer).
pub async fn agent_readiness(port: u16) -> Option<Value> {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// A benchmark's size: its first argument, or `default`.
pub fn size_arg(default: usize) -> anyhow::Result<usize> {
    Ok(std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(default))
}

/// A barrier for "nothing more was published": appends a run of one API of a
/// provider of its own to `SYNC` (as an agent-gateway would) and waits until
/// that API's `created` event is on the public stream. Inventory applies the
/// log in order and publishes its lifecycle events in that order, and the
/// relay follows them in order, so whatever an earlier action caused (a
/// duplicate, a re-emission after a restart) is in both streams by then; a
/// late one fails the count that follows. Each call adds one lifecycle event
/// and one public event (of provider `sentinel`).
pub async fn pass_sentinel(js: &async_nats::jetstream::Context) {
    use meridian_schemas::sync::{DiscoveredApi, SyncEvent, SyncEventKind};
    let publisher = meridian_kit::bus::Publisher::new(js.clone(), &Metrics::new());
    let (run_id, agent_id) = (
        meridian_schemas::RunId::new_random(),
        meridian_schemas::AgentId::new_random(),
    );
    let event = |kind| SyncEvent {
        run_id,
        agent_id,
        provider: SENTINEL.into(),
        kind,
    };
    let api = meridian_schemas::sync::ApiDefinition::from(api_def("sentinel", "Sentinel", "1"));
    let run = [
        event(SyncEventKind::Started {
            provider_type: "tyk".into(),
        }),
        event(SyncEventKind::Apis {
            first: 0,
            apis: vec![DiscoveredApi::new(api)],
        }),
        event(SyncEventKind::Completed { count: 1 }),
    ];
    publisher
        .publish_all(
            run.into_iter()
                .map(|e| (e, meridian_schemas::EventMeta::default())),
        )
        .await
        .expect("publish the sentinel run");
    let filter = meridian_schemas::streams::api_event_filter(Some("created"), Some(SENTINEL));
    let subject = format!("events.api.created.{agent_id}.{SENTINEL}");
    let seen = eventually(Duration::from_secs(60), || async {
        let events = public_events(js, &filter).await;
        events
            .iter()
            .any(|e| e["_subject"] == subject.as_str())
            .then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "the sentinel run never reached the public stream"
    );
}

/// The provider of [`pass_sentinel`]'s runs.
pub const SENTINEL: &str = "sentinel";

/// [`pass_sentinel`] for the agent status watcher: a heartbeat of an agent
/// of its own (active for a minute), then its `ACTIVE` event on the public
/// stream. The watcher follows heartbeats in order, so by then it has acted
/// on every earlier one. Each call adds one status event.
pub async fn pass_status_sentinel(js: &async_nats::jetstream::Context) {
    let agent = meridian_schemas::AgentId::new_random();
    let now = meridian_kit::time::now_ms();
    let beat = meridian_schemas::agents::Heartbeat {
        agent_id: agent,
        at_ms: now,
        active_until_ms: now + 60_000,
    };
    meridian_kit::bus::Publisher::new(js.clone(), &Metrics::new())
        .publish(&beat, meridian_schemas::EventMeta::default())
        .await
        .expect("publish the sentinel heartbeat");
    let filter = meridian_schemas::streams::agent_status_subject(agent);
    wait_for_public(js, &filter, 1).await;
}

/// A loopback port nothing listens on (bound once and released), for a
/// provider that must be unreachable.
pub fn closed_port() -> u16 {
    meridian_kit::nats_server::free_port()
}

/// Opens a health stream saying hello with `providers`; returns the status
/// the hub answered with (Ok when it accepted the hello).
pub async fn hello(
    grpc: &str,
    token: &str,
    providers: &[(&str, &str)],
) -> Result<(), tonic::Status> {
    let mut client = meridian_agent::session::connect(grpc, token)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = meridian_schemas::proto::Hello {
        providers: providers
            .iter()
            .map(|(n, t)| meridian_schemas::proto::Provider {
                name: (*n).into(),
                r#type: (*t).into(),
            })
            .collect(),
        agent_version: "test".into(),
    };
    tx.send(meridian_schemas::proto::HealthMessage {
        kind: Some(meridian_schemas::proto::health_message::Kind::Hello(hello)),
    })
    .await
    .unwrap();
    let mut replies = client
        .health(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    replies.message().await?;
    Ok(())
}
