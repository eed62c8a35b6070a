//! Driving portal-sync as a portal admin does: a replica on a free port and
//! a client whose every answer is checked against portal-sync's OpenAPI
//! document.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::{API_KEY, Metrics, Nats, Running, answer_fits, expect_ok, path_template};

/// A running portal-sync replica.
pub struct PortalSync {
    /// Its REST server.
    pub running: Running,
    /// Its fold (for digests).
    pub state: Arc<meridian_kit::writer::Lock<meridian_portal_sync::domain::PortalState>>,
}

/// Starts portal-sync with the test admin key (refresh: an hour, so only
/// the start-up sync and the test's own run); `tweak` adjusts the rest.
pub async fn start_portal_sync(
    nats: &Nats,
    tweak: impl FnOnce(&mut meridian_portal_sync::Config),
) -> PortalSync {
    let mut config = meridian_portal_sync::Config::new(&nats.url(), API_KEY);
    config.refresh_interval = Some(meridian_kit::config::HumanDuration(
        std::time::Duration::from_secs(3600),
    ));
    tweak(&mut config);
    let app = meridian_portal_sync::App::build(config, &Metrics::new())
        .await
        .expect("build portal-sync");
    let state = app.state();
    let running =
        crate::serve_on_free_port("portal-sync", |http, stop| app.serve(http, stop)).await;
    PortalSync { running, state }
}

/// A `meridian-portal-sync` process (one SIGKILL away from a crash).
pub struct PortalSyncProcess {
    /// The process group.
    pub group: crate::processes::Group,
    /// A client of it.
    pub portal: Portal,
}

/// Starts a `meridian-portal-sync` process on `nats`, named `replica`,
/// with the test admin key, an hour between scheduled syncs and `settings`
/// (`MERIDIAN_PORTAL_SYNC__` variables without the prefix); waits until it
/// is ready.
pub async fn start_portal_sync_process(
    nats: &Nats,
    replica: &str,
    settings: &[(&str, &str)],
) -> PortalSyncProcess {
    let port = crate::processes::free_port();
    let mut command = std::process::Command::new(crate::workspace_binary("meridian-portal-sync"));
    command
        .env("MERIDIAN_PORTAL_SYNC__NATS_URL", nats.url())
        .env("MERIDIAN_PORTAL_SYNC__API_KEY", API_KEY)
        .env(
            "MERIDIAN_PORTAL_SYNC__HTTP_ADDR",
            format!("127.0.0.1:{port}"),
        )
        .env("MERIDIAN_PORTAL_SYNC__REPLICA", replica)
        .env("MERIDIAN_PORTAL_SYNC__REFRESH_INTERVAL", "1h")
        .env("MERIDIAN_LOG", "warn")
        .stdout(std::process::Stdio::null());
    for (name, value) in settings {
        command.env(format!("MERIDIAN_PORTAL_SYNC__{name}"), value);
    }
    let group = crate::processes::Group::spawn("meridian-portal-sync", command)
        .expect("meridian-portal-sync starts");
    let url = format!("http://127.0.0.1:{port}");
    let ready = crate::eventually(std::time::Duration::from_secs(30), || async {
        let r = reqwest::get(format!("{url}/readyz")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(ready.is_some(), "meridian-portal-sync never became ready");
    PortalSyncProcess {
        group,
        portal: Portal::new(&url),
    }
}

/// A `/portal-api/` client.
#[derive(Clone)]
pub struct Portal {
    http: reqwest::Client,
    /// Base URL.
    pub base: String,
    /// The admin key, sent in `X-API-Key` (None: no key).
    pub key: Option<String>,
    doc: Arc<Mutex<Option<Arc<Value>>>>,
}

impl Portal {
    /// With the test admin key.
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            key: Some(API_KEY.into()),
            doc: Arc::default(),
        }
    }

    /// The same client with another key (or none).
    pub fn with_key(&self, key: Option<&str>) -> Self {
        Self {
            key: key.map(str::to_owned),
            ..self.clone()
        }
    }

    async fn document(&self) -> Arc<Value> {
        if let Some(doc) = self.doc.lock().unwrap().clone() {
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
        *self.doc.lock().unwrap() = Some(doc.clone());
        doc
    }

    /// Sends a request (with `header` instead of `X-API-Key` when given);
    /// returns status and JSON body (Null when empty), after checking the
    /// answer against the OpenAPI document.
    #[must_use]
    pub async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        header: Option<(&str, &str)>,
    ) -> (u16, Value) {
        self.send(method, path, body, header, None).await
    }

    /// `POST` with an `Idempotency-Key` header (and the client's key).
    #[must_use]
    pub async fn post_idempotent(&self, path: &str, body: &Value, key: &str) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            path,
            Some(body),
            None,
            Some(("idempotency-key", key)),
        )
        .await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        header: Option<(&str, &str)>,
        extra: Option<(&str, &str)>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some((name, value)) = extra {
            req = req.header(name, value);
        }
        match (header, &self.key) {
            (Some((name, value)), _) => req = req.header(name, value),
            (None, Some(key)) => req = req.header("x-api-key", key),
            (None, None) => {}
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        let doc = self.document().await;
        match path_template(&doc, path) {
            Some(template) => {
                if let Err(e) = answer_fits(&doc, &template, method.as_str(), status, &value) {
                    panic!("{e}");
                }
            }
            None => assert_eq!(
                status, 404,
                "{method} {path}: undocumented path answered {status}"
            ),
        }
        (status, value)
    }

    /// A request with the client's key.
    #[must_use]
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.call_with(method, path, body, None).await
    }

    /// GET.
    #[must_use]
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// POST JSON.
    #[must_use]
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// PUT JSON (None: no body).
    #[must_use]
    pub async fn put(&self, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, body).await
    }

    /// DELETE.
    #[must_use]
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
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
    pub async fn put_ok(&self, path: &str, body: Option<&Value>) -> Value {
        expect_ok("PUT", path, self.put(path, body).await)
    }

    /// DELETE that must succeed (2xx); its body.
    pub async fn delete_ok(&self, path: &str) -> Value {
        expect_ok("DELETE", path, self.delete(path).await)
    }

    /// `PUT /portal-api/providers/{id}/synchronize`: the one report.
    pub async fn sync(&self, provider_id: &str) -> Value {
        let (status, body) = self
            .put(
                &format!("/portal-api/providers/{provider_id}/synchronize"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["providers"][0].clone()
    }
}
