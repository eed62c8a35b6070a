//! A Kubernetes API server that speaks only what the agent's elector uses:
//! `coordination.k8s.io/v1` Lease get, create and replace, with
//! `resourceVersion` conflicts as the real one answers them. A real HTTP
//! server; the agents reach it through a kubeconfig file.
//!
//! For tests of races and failures it can also hold reads until several
//! electors have read (so they race with the same version), stall every
//! request (a Kubernetes API that hangs), and tells the history of writes.

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
    /// Every accepted write: the holder it named, and when.
    writes: Vec<(String, std::time::Instant)>,
}

/// The store, the barrier of gathered reads, and the stall switch.
#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    /// Reads still to arrive before the held ones are let through (0: none
    /// held).
    gathering: Arc<tokio::sync::watch::Sender<usize>>,
    stalled: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            store: Arc::default(),
            gathering: Arc::new(tokio::sync::watch::channel(0).0),
            stalled: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }

    /// Waits while the fake is stalled.
    async fn pass(&self) {
        let _ = self.stalled.subscribe().wait_for(|s| !*s).await;
    }

    /// Holds a read while reads are being gathered, until the last arrives.
    /// A read whose client gives up while held (its future is dropped) no
    /// longer counts, so the reads let through are all still wanted.
    async fn gather(&self) {
        struct Held<'a>(&'a Shared, bool);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.gathering.send_modify(|left| *left += 1);
                }
            }
        }
        let mut released = self.gathering.subscribe();
        let held = self.gathering.send_if_modified(|left| {
            let hold = *left > 0;
            *left = left.saturating_sub(1);
            hold
        });
        let mut guard = Held(self, held);
        if held {
            let _ = released.wait_for(|left| *left == 0).await;
        }
        guard.1 = false;
    }
}

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
        let store = self.store.lock();
        let lease = store.leases.get(&(ns.to_owned(), name.to_owned()))?;
        Some((
            lease["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0),
        ))
    }

    /// How many writes were refused: a stale `resourceVersion`, or a create
    /// of a Lease that exists.
    pub fn conflicts(&self) -> u64 {
        self.store.lock().conflicts
    }

    /// Holds the next `n` Lease reads until all `n` have arrived, so the
    /// electors making them see the same version and race to write it.
    pub fn gather_reads(&self, n: usize) {
        self.store.gathering.send_replace(n);
    }

    /// While `on`, every request waits (a Kubernetes API that hangs).
    pub fn stall(&self, on: bool) {
        self.store.stalled.send_replace(on);
    }

    /// Every accepted write: the holder it named, and when it landed.
    pub fn writes(&self) -> Vec<(String, std::time::Instant)> {
        self.store.lock().writes.clone()
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
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
    store
        .writes
        .push((holder.to_owned(), std::time::Instant::now()));
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
    store.pass().await;
    // What the Lease was when the read arrived: gathered reads are answered
    // as reads made at the same moment (else the first released could
    // create the Lease before the others looked, and they would not race).
    let found = store.lock().leases.get(&(ns, name.clone())).cloned();
    store.gather().await;
    match found {
        Some(lease) => (StatusCode::OK, Json(lease)),
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
    store.pass().await;
    let mut store = store.lock();
    let key = (ns.clone(), name.clone());
    if store.leases.contains_key(&key) {
        store.conflicts += 1;
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
    store.pass().await;
    let mut store = store.lock();
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
