//! A Kubernetes API server that speaks only what the agent's elector uses:
//! `coordination.k8s.io/v1` Lease get, create and replace, with
//! `resourceVersion` conflicts as the real one answers them. A real HTTP
//! server; the agents reach it through a kubeconfig file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};

/// Leases by (namespace, name), and counters.
#[derive(Default)]
struct Store {
    leases: HashMap<(String, String), Value>,
    next_version: u64,
    conflicts: u64,
}

type Shared = Arc<Mutex<Store>>;

/// The running fake.
pub struct FakeKube {
    /// Its base URL.
    pub url: String,
    store: Shared,
}

const BASE: &str = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases";

impl FakeKube {
    /// Serves on a free loopback port.
    pub async fn start() -> Self {
        let store = Shared::default();
        let router = axum::Router::new()
            .route(BASE, post(create))
            .route(&format!("{BASE}/{{name}}"), get(read).put(replace))
            .fallback(|| async {
                failure(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the fake serves Leases only",
                )
            })
            .with_state(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, store }
    }

    /// Writes a kubeconfig pointing at the fake (namespace `ns`) into `dir`.
    pub fn kubeconfig(&self, dir: &Path, ns: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user:\n    token: fake-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {ns}\n",
            self.url
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The Lease's holder and transition count, if it exists.
    pub fn holder(&self, ns: &str, name: &str) -> Option<(String, i64)> {
        let store = self.store.lock().unwrap();
        let lease = store.leases.get(&(ns.to_owned(), name.to_owned()))?;
        Some((
            lease["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0),
        ))
    }

    /// How many writes were refused for a stale `resourceVersion`.
    pub fn conflicts(&self) -> u64 {
        self.store.lock().unwrap().conflicts
    }
}

fn failure(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Json<Value>) {
    (
        code,
        Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason,
            "code": code.as_u16()
        })),
    )
}

fn stamp(store: &mut Store, ns: &str, mut lease: Value) -> Value {
    store.next_version += 1;
    lease["apiVersion"] = json!("coordination.k8s.io/v1");
    lease["kind"] = json!("Lease");
    lease["metadata"]["namespace"] = json!(ns);
    lease["metadata"]["resourceVersion"] = json!(store.next_version.to_string());
    lease
}

async fn read(
    State(store): State<Shared>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> (StatusCode, Json<Value>) {
    match store.lock().unwrap().leases.get(&(ns, name.clone())) {
        Some(lease) => (StatusCode::OK, Json(lease.clone())),
        None => failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("leases.coordination.k8s.io \"{name}\" not found"),
        ),
    }
}

async fn create(
    State(store): State<Shared>,
    UrlPath(ns): UrlPath<String>,
    Json(lease): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let Some(name) = lease["metadata"]["name"].as_str().map(str::to_owned) else {
        return failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value",
        );
    };
    let mut store = store.lock().unwrap();
    let key = (ns.clone(), name.clone());
    if store.leases.contains_key(&key) {
        return failure(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("leases.coordination.k8s.io \"{name}\" already exists"),
        );
    }
    let mut lease = stamp(&mut store, &ns, lease);
    lease["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
    store.leases.insert(key, lease.clone());
    (StatusCode::CREATED, Json(lease))
}

async fn replace(
    State(store): State<Shared>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Json(lease): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut store = store.lock().unwrap();
    let key = (ns.clone(), name.clone());
    let Some(current) = store.leases.get(&key) else {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("leases.coordination.k8s.io \"{name}\" not found"),
        );
    };
    if lease["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
        store.conflicts += 1;
        return failure(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": \
                 the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    let uid = current["metadata"]["uid"].clone();
    let mut lease = stamp(&mut store, &ns, lease);
    lease["metadata"]["uid"] = uid;
    store.leases.insert(key, lease.clone());
    (StatusCode::OK, Json(lease))
}
