//! The Tyk Gateway API side of the tests: a client that sends the Gateway
//! API secret and checks every answer against two contracts, Meridian's
//! served OpenAPI document and Tyk's own (`../shared/tyk-gateway-swagger.yml`,
//! the shapes and status codes Tyk scripts expect). Tyk's document is read
//! where it exists (CI has it beside the clone); elsewhere the check is
//! skipped and the test says so once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

use crate::{Metrics, Nats, Running, answer_fits, expect_ok, path_template, schema_fits};

/// The Gateway API secret every test key-issuer uses.
pub const GATEWAY_SECRET: &str = "test-gateway-secret-0123456789";

/// Where Tyk's Gateway API document is, beside the repository.
pub fn contract_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/tyk-gateway-swagger.yml")
}

/// Answers where Meridian differs from Tyk on purpose (method, Tyk's path
/// template, status); their bodies must still be Tyk's `ApiStatusMessage`.
/// Documented in the key-issuer's API module and docs/gateway.md.
pub const DEVIATIONS: [(&str, &str, u16); 8] = [
    // A blocking reload that live gateway replicas did not confirm in time.
    ("get", "/tyk/reload", 504),
    ("get", "/tyk/reload/group", 504),
    // Tyk answers 500 ("Delete failed") for a policy that does not exist.
    ("delete", "/tyk/policies/{polID}", 404),
    // Another writer kept changing the same entity (compare-and-set).
    ("post", "/tyk/policies", 409),
    ("put", "/tyk/policies/{polID}", 409),
    ("put", "/tyk/keys/{keyID}", 409),
    ("post", "/tyk/keys/policy/{keyID}", 409),
    // A session Tyk answers 500 for (per-API beside partitioned policies,
    // "Failed to create key - ..."): bad input, so a 400 here.
    ("post", "/tyk/keys/create", 400),
];

/// Routes Tyk's gateway serves that its document leaves out: answers are
/// checked against Meridian's document only.
const UNDOCUMENTED: [(&str, &str); 1] = [
    // Tyk's router takes POST on a policy's path (as POST /tyk/policies).
    ("post", "/tyk/policies/{polID}"),
];

/// Answers whose `meta_data` Tyk's code takes as any JSON where its
/// document says a map of strings: checked without it.
const ANY_META_DATA: [(&str, &str); 4] = [
    ("post", "/tyk/oauth/clients/create"),
    ("get", "/tyk/oauth/clients/{apiID}"),
    ("get", "/tyk/oauth/clients/{apiID}/{keyName}"),
    ("put", "/tyk/oauth/clients/{apiID}/{keyName}"),
];

/// Tyk's document as JSON Schema can read it (OpenAPI 3.0's `nullable`
/// becomes a `null` type), or `None` when it is not beside the repository.
pub fn tyk_contract() -> Option<Arc<Value>> {
    static CONTRACT: OnceLock<Option<Arc<Value>>> = OnceLock::new();
    CONTRACT
        .get_or_init(|| {
            let path = contract_path();
            let Ok(text) = std::fs::read_to_string(&path) else {
                eprintln!(
                    "SKIPPED: answers are not checked against Tyk's Gateway API document: {} is \
                     not there (it is in CI, beside the clone)",
                    path.display()
                );
                return None;
            };
            let mut doc: Value = serde_yaml::from_str(&text).expect("Tyk's document parses");
            nullable_to_type(&mut doc);
            external_refs_to_objects(&mut doc);
            Some(Arc::new(doc))
        })
        .clone()
}

/// Tyk's document points the OAS endpoints' bodies at the OpenAPI 3.0
/// schema on GitHub (`allOf` with its own `TykVendorExtension`); tests run
/// without the network, so such a `$ref` is read as "an object": the
/// `x-tyk-api-gateway` part is still checked against Tyk's schema.
fn external_refs_to_objects(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map
                .get("$ref")
                .and_then(Value::as_str)
                .is_some_and(|r| r.starts_with("http://") || r.starts_with("https://"))
            {
                map.clear();
                map.insert("type".into(), "object".into());
                return;
            }
            map.values_mut().for_each(external_refs_to_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(external_refs_to_objects),
        _ => {}
    }
}

/// `{"type": "array", "nullable": true}` becomes `{"type": ["array", "null"]}`.
fn nullable_to_type(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.remove("nullable") == Some(Value::Bool(true)) {
                match map.get("type").cloned() {
                    Some(Value::String(t)) => {
                        map.insert("type".into(), serde_json::json!([t, "null"]));
                    }
                    _ => {
                        let inner = Value::Object(std::mem::take(map));
                        map.insert("anyOf".into(), serde_json::json!([inner, {"type": "null"}]));
                    }
                }
            }
            for child in map.values_mut() {
                nullable_to_type(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(nullable_to_type),
        _ => {}
    }
}

/// Checks an answer against Tyk's document (when present).
pub fn fits_tyk(method: &str, path: &str, status: u16, body: &Value) -> Result<(), String> {
    if !path.starts_with("/tyk/") {
        return Ok(()); // Meridian's own paths (`/api/keys/digest`)
    }
    let Some(doc) = tyk_contract() else {
        return Ok(());
    };
    let template = path_template(&doc, path)
        .ok_or_else(|| format!("{method} {path}: not a path of Tyk's Gateway API"))?;
    let method = method.to_lowercase();
    if UNDOCUMENTED.contains(&(method.as_str(), template.as_str())) {
        return Ok(());
    }
    let without_meta;
    let body = if ANY_META_DATA.contains(&(method.as_str(), template.as_str())) {
        without_meta = strip_meta_data(body);
        &without_meta
    } else {
        body
    };
    if DEVIATIONS.contains(&(method.as_str(), template.as_str(), status)) {
        return schema_fits(&doc, "#/components/schemas/ApiStatusMessage", body)
            .map_err(|e| format!("{method} {template} {status} (a documented deviation): {e}"));
    }
    answer_fits(&doc, &template, &method, status, body).map_err(|e| format!("Tyk's document: {e}"))
}

/// `body` (an object or a list of them) without `meta_data`.
fn strip_meta_data(body: &Value) -> Value {
    match body {
        Value::Object(o) => {
            let mut o = o.clone();
            o.remove("meta_data");
            Value::Object(o)
        }
        Value::Array(items) => Value::Array(items.iter().map(strip_meta_data).collect()),
        other => other.clone(),
    }
}

/// A request body.
pub enum Body<'a> {
    /// JSON.
    Json(&'a Value),
    /// Form-encoded (`a=1&b=2`).
    Form(&'a str),
    /// Bytes as given.
    Raw(&'a str),
}

/// A Gateway API client for one key-issuer (or the hub URL).
#[derive(Clone)]
pub struct Tyk {
    http: reqwest::Client,
    /// Base URL.
    pub base: String,
    /// `x-tyk-authorization` (None: no header).
    pub secret: Option<String>,
    ours: Arc<Mutex<Option<Arc<Value>>>>,
}

impl Tyk {
    /// With the test secret.
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            secret: Some(GATEWAY_SECRET.into()),
            ours: Arc::default(),
        }
    }

    /// The same client with another secret (or none).
    pub fn with_secret(&self, secret: Option<&str>) -> Self {
        Self {
            secret: secret.map(str::to_owned),
            ..self.clone()
        }
    }

    async fn served_document(&self) -> Arc<Value> {
        if let Some(doc) = self.ours.lock().unwrap().clone() {
            return doc;
        }
        let doc: Value = self
            .http
            .get(format!("{}/api/openapi.json", self.base))
            .send()
            .await
            .expect("the OpenAPI document")
            .json()
            .await
            .expect("the OpenAPI document is JSON");
        let doc = Arc::new(doc);
        *self.ours.lock().unwrap() = Some(doc.clone());
        doc
    }

    /// Sends a request; returns status and JSON body (Null when empty),
    /// after checking the answer against both documents.
    #[must_use]
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Body<'_>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(s) = &self.secret {
            req = req.header("x-tyk-authorization", s);
        }
        req = match body {
            Body::Json(v) => req.body(v.to_string()),
            Body::Form(f) => req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(f.to_owned()),
            Body::Raw(r) => req.body(r.to_owned()),
        };
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = res.text().await.unwrap();
        // Both documents declare JSON for every answer with a body.
        assert!(
            text.is_empty() || content_type.starts_with("application/json"),
            "{method} {path} -> {status} answered {content_type:?}, not JSON: {text}"
        );
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        let ours = self.served_document().await;
        let template = path_template(&ours, path)
            .unwrap_or_else(|| panic!("{method} {path}: not in Meridian's OpenAPI document"));
        if let Err(e) = answer_fits(&ours, &template, method.as_str(), status, &value) {
            panic!("Meridian's document: {e}");
        }
        if let Err(e) = fits_tyk(method.as_str(), path, status, &value) {
            panic!("{e}");
        }
        (status, value)
    }

    /// GET.
    #[must_use]
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Body::Raw("")).await
    }

    /// POST JSON.
    #[must_use]
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Body::Json(body))
            .await
    }

    /// PUT JSON.
    #[must_use]
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Body::Json(body))
            .await
    }

    /// DELETE.
    #[must_use]
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, Body::Raw(""))
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

    /// PUT that must succeed (2xx); its body.
    pub async fn put_ok(&self, path: &str, body: &Value) -> Value {
        expect_ok("PUT", path, self.put(path, body).await)
    }

    /// DELETE that must succeed (2xx); its body.
    pub async fn delete_ok(&self, path: &str) -> Value {
        expect_ok("DELETE", path, self.delete(path).await)
    }

    /// POST a form.
    #[must_use]
    pub async fn post_form(&self, path: &str, form: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Body::Form(form))
            .await
    }
}

/// Starts a key-issuer with the test secret; `tweak` adjusts its configuration.
pub async fn start_key_issuer(
    nats: &Nats,
    tweak: impl FnOnce(&mut meridian_key_issuer::Config),
) -> (Running, meridian_keys::fold::Shared) {
    let mut config = meridian_key_issuer::Config::new(&nats.url(), GATEWAY_SECRET);
    tweak(&mut config);
    let app = meridian_key_issuer::App::build(config, &Metrics::new())
        .await
        .expect("build key-issuer");
    let state = app.state();
    let running = crate::serve_on_free_port("key-issuer", |http, stop| app.serve(http, stop)).await;
    (running, state)
}

/// A running proxy replica: its admin API and its data plane.
pub struct Proxy {
    /// The admin API (`/tyk/apis`, `/tyk/reload`, `/hello`).
    pub admin: Running,
    /// The data plane's base URL.
    pub gateway: String,
    /// Its replica id.
    pub replica: uuid::Uuid,
}

/// Starts a proxy replica with the test secret; `tweak` adjusts its
/// configuration.
pub async fn start_proxy(nats: &Nats, tweak: impl FnOnce(&mut meridian_proxy::Config)) -> Proxy {
    let mut config = meridian_proxy::Config::new(&nats.url(), GATEWAY_SECRET);
    tweak(&mut config);
    let app = meridian_proxy::App::build(config, &Metrics::new())
        .await
        .expect("build proxy");
    let replica = app.replica();
    let gateway = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_url = format!("http://{}", gateway.local_addr().unwrap());
    let admin =
        crate::serve_on_free_port("proxy", |http, stop| app.serve(gateway, http, stop)).await;
    Proxy {
        admin,
        gateway: gateway_url,
        replica,
    }
}
