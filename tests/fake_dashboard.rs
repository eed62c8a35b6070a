//! A Tyk Dashboard that speaks what the developer portal uses: the portal
//! policy listing in pages (`GET /api/portal/policies?p=N` answering
//! `{"Data": [...], "Pages": N}`, access rights spelled `apiid`/`apiname`),
//! policy creation and deletion, API lookups (`{"api_definition": ...}`),
//! and keys (`POST /api/keys`, `DELETE /api/keys/{hash}?hashed=true`).
//! Every call needs `Authorization: <secret>`. A real HTTP server.
//!
//! Tests can make one page fail, answer garbage, and read what was asked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Policies per page.
pub const PAGE_SIZE: usize = 10;

#[derive(Default)]
struct Store {
    /// Policies by `_id`, in creation order of their ids.
    policies: BTreeMap<String, Value>,
    /// API definitions by id.
    apis: BTreeMap<String, Value>,
    /// Sessions by key hash.
    keys: BTreeMap<String, Value>,
    /// A page that answers 500.
    failing_page: Option<u64>,
    /// Answer every listing with non-JSON.
    garbage: bool,
    /// Listing pages asked for, in order.
    pages_asked: Vec<u64>,
    next_id: u64,
}

/// The fake; clone to share.
#[derive(Clone)]
pub struct FakeDashboard {
    store: Arc<Mutex<Store>>,
    /// While true, listing requests wait (a provider that is slow to answer).
    held: Arc<tokio::sync::watch::Sender<bool>>,
    /// Listing requests waiting now.
    waiting: Arc<tokio::sync::watch::Sender<usize>>,
    /// While true, a custom key's or a policy's creation stores it and
    /// then holds its answer (the window between a provider's write and the
    /// caller hearing of it).
    writes_held: Arc<tokio::sync::watch::Sender<bool>>,
    /// Write answers held now.
    writes_waiting: Arc<tokio::sync::watch::Sender<usize>>,
    secret: Arc<str>,
    /// Its base URL.
    pub url: String,
}

fn sha256(s: &str) -> String {
    format!("{:x}", Sha256::digest(s.as_bytes()))
}

/// Rewrites access rights the Dashboard's listing way (`apiid`, `apiname`).
fn dashboard_spelling(policy: &mut Value) {
    if let Some(rights) = policy
        .get_mut("access_rights")
        .and_then(Value::as_object_mut)
    {
        for right in rights.values_mut() {
            if let Some(r) = right.as_object_mut() {
                if let Some(id) = r.remove("api_id") {
                    r.insert("apiid".into(), id);
                }
                if let Some(name) = r.remove("api_name") {
                    r.insert("apiname".into(), name);
                }
            }
        }
    }
}

impl FakeDashboard {
    /// Serves on a free port; callers authenticate with `secret`.
    pub async fn start(secret: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Self {
            store: Arc::default(),
            held: Arc::new(tokio::sync::watch::channel(false).0),
            waiting: Arc::new(tokio::sync::watch::channel(0).0),
            writes_held: Arc::new(tokio::sync::watch::channel(false).0),
            writes_waiting: Arc::new(tokio::sync::watch::channel(0).0),
            secret: secret.into(),
            url: format!("http://{}", listener.local_addr().unwrap()),
        };
        let app = axum::Router::new()
            .route("/api/portal/policies", get(list).post(create_policy))
            .route("/api/portal/policies/{id}", delete(delete_policy))
            .route("/api/apis/{id}", get(get_api))
            .route("/api/keys", axum::routing::post(create_key))
            .route(
                "/api/keys/{hash}",
                delete(delete_key).post(create_custom_key),
            )
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }

    /// Adds or replaces a policy (given with `api_id`/`api_name`; listed
    /// with the Dashboard's spelling).
    pub fn put_policy(&self, mut policy: Value) {
        dashboard_spelling(&mut policy);
        let id = policy["_id"].as_str().expect("a policy _id").to_owned();
        self.lock().policies.insert(id, policy);
    }

    /// A policy by id.
    pub fn policy(&self, id: &str) -> Option<Value> {
        self.lock().policies.get(id).cloned()
    }

    /// Every policy.
    pub fn policies(&self) -> Vec<Value> {
        self.lock().policies.values().cloned().collect()
    }

    /// Removes a policy.
    pub fn remove_policy(&self, id: &str) -> Option<Value> {
        self.lock().policies.remove(id)
    }

    /// Sets a policy's tags.
    pub fn set_tags(&self, id: &str, tags: &[&str]) {
        self.lock().policies.get_mut(id).expect("the policy")["tags"] = json!(tags);
    }

    /// Defines an API.
    pub fn put_api(&self, id: &str, definition: Value) {
        self.lock().apis.insert(id.to_owned(), definition);
    }

    /// The sessions of the keys issued, by hash.
    pub fn keys(&self) -> BTreeMap<String, Value> {
        self.lock().keys.clone()
    }

    /// Makes page `p` answer 500 (None: every page answers).
    pub fn fail_page(&self, p: Option<u64>) {
        self.lock().failing_page = p;
    }

    /// Makes the listing answer garbage.
    pub fn answer_garbage(&self, on: bool) {
        self.lock().garbage = on;
    }

    /// The listing pages asked for since the last call.
    pub fn take_pages_asked(&self) -> Vec<u64> {
        std::mem::take(&mut self.lock().pages_asked)
    }

    /// Holds listing requests until [`FakeDashboard::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Lets held listing requests go on.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Holds the answers of custom key and policy creations (what was
    /// created is stored first) until [`FakeDashboard::release_writes`].
    pub fn hold_writes(&self) {
        self.writes_held.send_replace(true);
    }

    /// Lets held write answers go.
    pub fn release_writes(&self) {
        self.writes_held.send_replace(false);
    }

    /// Waits until `n` write answers are held.
    pub async fn wait_writes_held(&self, n: usize) {
        let _ = self.writes_waiting.subscribe().wait_for(|w| *w >= n).await;
    }

    /// Holds here while [`FakeDashboard::hold_writes`] is on.
    async fn held_write(&self) {
        if *self.writes_held.borrow() {
            self.writes_waiting.send_modify(|w| *w += 1);
            let _ = self.writes_held.subscribe().wait_for(|h| !*h).await;
            self.writes_waiting.send_modify(|w| *w -= 1);
        }
    }

    /// Waits until `n` listing requests are held.
    pub async fn wait_held(&self, n: usize) {
        let _ = self.waiting.subscribe().wait_for(|w| *w >= n).await;
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&*self.secret)
    }
}

fn not_authorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"Status": "Error", "Message": "Not authorised", "Meta": null})),
    )
        .into_response()
}

async fn list(
    State(f): State<FakeDashboard>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if !f.authorised(&headers) {
        return not_authorised();
    }
    let page: u64 = q.get("p").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    if *f.held.borrow() {
        f.waiting.send_modify(|w| *w += 1);
        let _ = f.held.subscribe().wait_for(|h| !*h).await;
        f.waiting.send_modify(|w| *w -= 1);
    }
    let mut store = f.lock();
    store.pages_asked.push(page);
    if store.garbage {
        return (StatusCode::OK, "<html>maintenance</html>").into_response();
    }
    if store.failing_page == Some(page) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "page unavailable").into_response();
    }
    let all: Vec<&Value> = store.policies.values().collect();
    let pages = all.len().div_ceil(PAGE_SIZE).max(1);
    let start = (usize::try_from(page).unwrap() - 1) * PAGE_SIZE;
    let data: Vec<Value> = all
        .into_iter()
        .skip(start)
        .take(PAGE_SIZE)
        .cloned()
        .collect();
    Json(json!({"Data": data, "Pages": pages})).into_response()
}

async fn create_policy(
    State(f): State<FakeDashboard>,
    headers: HeaderMap,
    Json(mut policy): Json<Value>,
) -> Response {
    if !f.authorised(&headers) {
        return not_authorised();
    }
    if policy["name"].as_str() == Some("refuse-me") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"Status": "Error", "Message": "Policy name is reserved", "Meta": null})),
        )
            .into_response();
    }
    let id = {
        let mut store = f.lock();
        store.next_id += 1;
        let id = format!("portal{:04}", store.next_id);
        policy["_id"] = json!(id);
        dashboard_spelling(&mut policy);
        store.policies.insert(id.clone(), policy);
        id
    };
    f.held_write().await;
    Json(json!({"Status": "OK", "Message": id, "Meta": null})).into_response()
}

async fn delete_policy(
    State(f): State<FakeDashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !f.authorised(&headers) {
        return not_authorised();
    }
    match f.lock().policies.remove(&id) {
        Some(_) => {
            Json(json!({"Status": "OK", "Message": "Data deleted", "Meta": null})).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"Status": "Error", "Message": "Not found"})),
        )
            .into_response(),
    }
}

async fn get_api(
    State(f): State<FakeDashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !f.authorised(&headers) {
        return not_authorised();
    }
    match f.lock().apis.get(&id) {
        Some(d) => Json(json!({"api_definition": d})).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"Status": "Error", "Message": "API not found"})),
        )
            .into_response(),
    }
}

async fn create_key(
    State(f): State<FakeDashboard>,
    headers: HeaderMap,
    Json(session): Json<Value>,
) -> Response {
    if !f.authorised(&headers) {
        return not_authorised();
    }
    let mut store = f.lock();
    for p in session["apply_policies"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        if !store.policies.contains_key(p.as_str().unwrap_or_default()) {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"Status": "Error", "Message": format!("policy {p} not found")})),
            )
                .into_response();
        }
    }
    store.next_id += 1;
    let key = format!(
        "dashkey{:08}{}",
        store.next_id,
        uuid::Uuid::new_v4().simple()
    );
    let hash = sha256(&key);
    store.keys.insert(hash.clone(), session.clone());
    Json(json!({"api_model": {}, "key_id": key, "data": session, "key_hash": hash})).into_response()
}

/// `POST /api/keys/{key}`: a custom key, created or written over (as
/// Tyk's custom keys); with [`FakeDashboard::hold_writes`] the answer waits
/// after the key is stored.
async fn create_custom_key(
    State(f): State<FakeDashboard>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Json(session): Json<Value>,
) -> Response {
    if !f.authorised(&headers) {
        return not_authorised();
    }
    let hash = sha256(&key);
    {
        let mut store = f.lock();
        for p in session["apply_policies"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if !store.policies.contains_key(p.as_str().unwrap_or_default()) {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"Status": "Error", "Message": format!("policy {p} not found")})),
                )
                    .into_response();
            }
        }
        store.keys.insert(hash.clone(), session.clone());
    }
    f.held_write().await;
    Json(json!({"api_model": {}, "key_id": key, "data": session, "key_hash": hash})).into_response()
}

/// `DELETE /api/keys/{hash}?hashed=true`, or `/api/keys/{key}` by the key.
async fn delete_key(
    State(f): State<FakeDashboard>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if !f.authorised(&headers) {
        return not_authorised();
    }
    let hash = if q.get("hashed").map(String::as_str) == Some("true") {
        key
    } else {
        sha256(&key)
    };
    match f.lock().keys.remove(&hash) {
        Some(_) => Json(json!({"Status": "OK", "Message": "Key deleted"})).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"Status": "Error", "Message": "Key not found"})),
        )
            .into_response(),
    }
}
