//! `meridian import`: a Tyk estate into Meridian's gateway and key-issuer,
//! in one command, through the Gateway API on the hub URL (so it works
//! against `meridian up`, compose and Kubernetes alike).
//!
//! Sources:
//! - a `tyk-sync dump` folder (`.tyk.json` listing `files` (API definitions,
//!   bare or as the Dashboard wraps them in `api_definition`), `policies` and
//!   `assets`);
//! - a file-based gateway's folder: `apps/*.json` and
//!   `policies/policies.json` (policies by id);
//! - a live Tyk Gateway (`--from-gateway URL --from-secret SECRET`): its
//!   `/tyk/apis`, `/tyk/policies` and, when it lists keys in clear
//!   (`hash_keys: false`), its keys;
//! - keys from a JSON export (`--keys FILE`: `{"<key>": <session>, ...}`).
//!
//! Everything is read and checked before anything is written: a file that
//! does not parse stops the import naming it, with nothing written. Then
//! APIs, policies and keys are compared with what Meridian holds, and each
//! is created, updated or left alone (so a second run changes nothing);
//! every item Meridian refuses is named with its reason, and the others go
//! on (each item is one write: none is half-imported). `--dry-run` prints
//! the plan and writes nothing. Tyk OAS API definitions are refused, named,
//! until Meridian's gateway serves them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{Map, Value};

/// Where the estate comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A folder: a `tyk-sync dump`, or a file-based gateway's.
    Folder(PathBuf),
    /// A live Tyk Gateway and its secret.
    Gateway {
        /// Its base URL.
        url: String,
        /// Its `x-tyk-authorization` secret.
        secret: String,
    },
}

/// What to import, and where.
#[derive(Debug, Clone)]
pub struct Import {
    /// The estate.
    pub source: Source,
    /// A JSON export of keys (`{"<key>": <session>}`), if any.
    pub keys_file: Option<PathBuf>,
    /// The hub URL (Meridian's Gateway API is served there).
    pub hub: String,
    /// Meridian's Gateway API secret.
    pub secret: String,
    /// Only print what would change.
    pub dry_run: bool,
}

/// The kinds of item, in the order they are written (policies name APIs,
/// keys name policies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A classic API definition.
    Api,
    /// A policy.
    Policy,
    /// A key.
    Key,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Api => "API",
            Self::Policy => "policy",
            Self::Key => "key",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Self::Api => "APIs",
            Self::Policy => "policies",
            Self::Key => "keys",
        }
    }
}

/// One item read from the source.
#[derive(Debug, Clone)]
pub struct Item {
    /// What it is.
    pub kind: Kind,
    /// Its id (for a key: the key, shown shortened).
    pub id: String,
    /// Where it was read (a file, or the gateway's path).
    pub origin: String,
    /// The body to send, or why it cannot be imported.
    pub body: Result<Value, String>,
}

/// What happened to an item (or would, in a dry run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Created in Meridian.
    Created,
    /// Replaced in Meridian (it differed).
    Updated,
    /// Meridian already holds it as it is.
    Unchanged,
    /// Not imported, for this reason.
    Refused(String),
}

/// The whole import's result.
#[derive(Debug, Default)]
pub struct Report {
    /// Each item with its outcome, in the order they were handled.
    pub items: Vec<(Item, Outcome)>,
}

impl Report {
    /// Items refused.
    pub fn refused(&self) -> usize {
        self.items
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Refused(_)))
            .count()
    }

    /// The summary printed at the end: counts per kind, then each refused
    /// item with its reason.
    pub fn summary(&self, dry_run: bool) -> String {
        let mut counts: BTreeMap<Kind, [usize; 4]> = BTreeMap::new();
        for (item, outcome) in &self.items {
            let slot = match outcome {
                Outcome::Created => 0,
                Outcome::Updated => 1,
                Outcome::Unchanged => 2,
                Outcome::Refused(_) => 3,
            };
            counts.entry(item.kind).or_default()[slot] += 1;
        }
        let (created, updated) = if dry_run {
            ("to create", "to update")
        } else {
            ("created", "updated")
        };
        let mut out = String::new();
        for (kind, [c, u, same, refused]) in counts {
            out.push_str(&format!(
                "{}: {c} {created}, {u} {updated}, {same} unchanged, {refused} refused\n",
                kind.plural()
            ));
        }
        for (item, outcome) in &self.items {
            if let Outcome::Refused(why) = outcome {
                out.push_str(&format!(
                    "refused {} {} ({}): {why}\n",
                    item.kind.name(),
                    shown_id(item),
                    item.origin
                ));
            }
        }
        if dry_run {
            out.push_str("dry run: nothing was written\n");
        }
        out
    }
}

/// A key is shown by its first characters only.
fn shown_id(item: &Item) -> String {
    if item.kind == Kind::Key && item.id.len() > 8 {
        format!("{}...", &item.id[..8])
    } else {
        item.id.clone()
    }
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// An API definition as a source holds it: bare, or wrapped by the
/// Dashboard (`api_definition`, or `oas` for a Tyk OAS API).
fn api_item(value: Value, origin: String) -> Item {
    let (definition, oas) = match value {
        Value::Object(mut o) if o.contains_key("api_definition") || o.contains_key("oas") => {
            let oas = o
                .get("oas")
                .is_some_and(|v| !v.is_null() && v != &Value::Object(Map::new()));
            (o.remove("api_definition").unwrap_or(Value::Null), oas)
        }
        other => {
            let oas = other.get("openapi").is_some() || other.get("x-tyk-api-gateway").is_some();
            (other, oas)
        }
    };
    let id = definition
        .get("api_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let body = if oas {
        Err("a Tyk OAS API definition: Meridian's gateway does not serve OAS definitions yet (import it as a classic definition, or wait for OAS support)".to_owned())
    } else if id.is_empty() {
        Err("the definition has no api_id".to_owned())
    } else {
        Ok(definition)
    };
    Item {
        kind: Kind::Api,
        id: if id.is_empty() { origin.clone() } else { id },
        origin,
        body,
    }
}

/// A policy as a source holds it; its id is `id`, else the Dashboard's
/// `_id` (as tyk-sync's portable ids), else `fallback` (its key in a
/// policies file).
fn policy_item(mut value: Value, origin: String, fallback: Option<&str>) -> Item {
    let id = ["id", "_id"]
        .iter()
        .find_map(|f| {
            value
                .get(*f)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .or(fallback)
        .unwrap_or_default()
        .to_owned();
    let body = if id.is_empty() {
        Err("the policy has no id".to_owned())
    } else {
        value["id"] = Value::String(id.clone());
        Ok(value)
    };
    Item {
        kind: Kind::Policy,
        id,
        origin,
        body,
    }
}

fn key_items(export: Value, origin: &str) -> anyhow::Result<Vec<Item>> {
    let Value::Object(keys) = export else {
        anyhow::bail!("{origin}: a key export is an object of keys to sessions");
    };
    Ok(keys
        .into_iter()
        .map(|(key, session)| Item {
            kind: Kind::Key,
            body: if session.is_object() {
                Ok(session)
            } else {
                Err("its session is not a JSON object".to_owned())
            },
            id: key,
            origin: origin.to_owned(),
        })
        .collect())
}

/// Reads a folder: a `tyk-sync dump` (with `.tyk.json`) or a file-based
/// gateway's (`apps/`, `policies/policies.json`).
pub fn read_folder(dir: &Path) -> anyhow::Result<Vec<Item>> {
    let index = dir.join(".tyk.json");
    let mut items = Vec::new();
    if index.exists() {
        let index = read_json(&index)?;
        let listed = |field: &str| -> Vec<String> {
            index
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|f| f.get("file").and_then(Value::as_str).map(str::to_owned))
                .collect()
        };
        for file in listed("files") {
            let path = dir.join(&file);
            items.push(api_item(read_json(&path)?, file));
        }
        for file in listed("policies") {
            let path = dir.join(&file);
            items.push(policy_item(read_json(&path)?, file, None));
        }
        for file in listed("assets") {
            items.push(Item {
                kind: Kind::Api,
                id: file.clone(),
                origin: file,
                body: Err("a Dashboard API template: Meridian has no templates".to_owned()),
            });
        }
        return Ok(items);
    }
    let apps = dir.join("apps");
    let policies = dir.join("policies").join("policies.json");
    anyhow::ensure!(
        apps.is_dir() || policies.exists(),
        "{} is neither a tyk-sync dump (no .tyk.json) nor a gateway's folder (no apps/ or policies/policies.json)",
        dir.display()
    );
    if apps.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&apps)
            .with_context(|| format!("cannot read {}", apps.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for path in files {
            let origin = format!(
                "apps/{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            items.push(api_item(read_json(&path)?, origin));
        }
    }
    if policies.exists() {
        let Value::Object(by_id) = read_json(&policies)? else {
            anyhow::bail!(
                "{}: policies by id (a JSON object) expected",
                policies.display()
            );
        };
        for (id, policy) in by_id {
            items.push(policy_item(
                policy,
                "policies/policies.json".into(),
                Some(&id),
            ));
        }
    }
    Ok(items)
}

/// A Gateway API client (Tyk's or Meridian's: the same API).
struct GatewayApi {
    base: String,
    secret: String,
    http: reqwest::Client,
}

impl GatewayApi {
    fn new(base: &str, secret: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            secret: secret.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-tyk-authorization", &self.secret);
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.call(reqwest::Method::GET, path, None).await
    }
}

/// Reads a live Tyk Gateway's APIs, policies and (when listed in clear)
/// keys.
async fn read_gateway(url: &str, secret: &str) -> anyhow::Result<Vec<Item>> {
    let tyk = GatewayApi::new(url, secret);
    let mut items = Vec::new();
    let expect_list = |what: &str, (status, body): (u16, Value)| -> anyhow::Result<Vec<Value>> {
        anyhow::ensure!(
            status == 200,
            "the gateway answered {what} with {status}: {body}"
        );
        match body {
            Value::Array(a) => Ok(a),
            Value::Null => Ok(Vec::new()),
            other => anyhow::bail!("the gateway's {what} is not a list: {other}"),
        }
    };
    for api in expect_list("/tyk/apis", tyk.get("/tyk/apis").await?)? {
        items.push(api_item(api, "/tyk/apis".into()));
    }
    for policy in expect_list("/tyk/policies", tyk.get("/tyk/policies").await?)? {
        items.push(policy_item(policy, "/tyk/policies".into(), None));
    }
    let (status, listed) = tyk.get("/tyk/keys").await?;
    let keys: Vec<String> = listed["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    if status != 200 {
        eprintln!(
            "import: the gateway does not list its keys ({status}: it hashes them); keys can come from a JSON export (--keys FILE)"
        );
    }
    for key in keys {
        let (status, session) = tyk.get(&format!("/tyk/keys/{key}")).await?;
        let hashed = key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit());
        items.push(Item {
            kind: Kind::Key,
            body: match status {
                200 if hashed => Err("the gateway lists it by its hash; a key is imported from the key itself (export it with --keys)".to_owned()),
                200 => Ok(session),
                other => Err(format!("the gateway answered {other} for it")),
            },
            id: key,
            origin: "/tyk/keys".into(),
        });
    }
    Ok(items)
}

/// Fields Meridian (and Tyk) stamp on a write: not compared.
const STAMPED: [&str; 5] = [
    "last_updated",
    "date_created",
    "quota_remaining",
    "quota_renews",
    "_id",
];

/// Whether every field of `wanted` is in `held` with the same value
/// (fields the server stamps aside); a field `held` adds is a default.
fn holds(held: &Value, wanted: &Value) -> bool {
    match (held, wanted) {
        (Value::Object(h), Value::Object(w)) => w.iter().all(|(k, v)| {
            STAMPED.contains(&k.as_str())
                || match h.get(k) {
                    Some(hv) => holds(hv, v),
                    None => v.is_null() || w_is_empty(v),
                }
        }),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        // Unset in the source: whatever default Meridian filled in.
        (_, Value::Null) => true,
        (Value::Null, w) if w_is_empty(w) => true,
        (h, w) => h == w,
    }
}

fn w_is_empty(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Where an item lives in Meridian's Gateway API.
fn paths(item: &Item) -> (String, String) {
    let id = urlencode(&item.id);
    match item.kind {
        Kind::Api => (format!("/tyk/apis/{id}"), "/tyk/apis".into()),
        Kind::Policy => (format!("/tyk/policies/{id}"), "/tyk/policies".into()),
        // A custom key is created (or replaced) by POST to its path; its
        // stored form is read back as stored.
        Kind::Key => (
            format!("/tyk/keys/{id}?stored=true"),
            format!("/tyk/keys/{id}"),
        ),
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What Meridian says of a refused write.
fn reason(status: u16, body: &Value) -> String {
    let message = body
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    format!("Meridian answered {status}: {message}")
}

/// Brings one item into Meridian (or says what it would do).
async fn import_item(hub: &GatewayApi, item: &Item, dry_run: bool) -> anyhow::Result<Outcome> {
    let body = match &item.body {
        Ok(b) => b,
        Err(why) => return Ok(Outcome::Refused(why.clone())),
    };
    let (read, write) = paths(item);
    let (status, held) = hub.get(&read).await?;
    let planned = match status {
        200 if holds(&held, body) => return Ok(Outcome::Unchanged),
        200 => Outcome::Updated,
        404 => Outcome::Created,
        other => return Ok(Outcome::Refused(reason(other, &held))),
    };
    if dry_run {
        return Ok(planned);
    }
    let (method, path) = match (item.kind, &planned) {
        (Kind::Api, Outcome::Created) => (reqwest::Method::POST, write),
        (Kind::Api | Kind::Policy, _) => (reqwest::Method::PUT, read.clone()),
        (Kind::Key, _) => (reqwest::Method::POST, write),
    };
    let (status, answer) = hub.call(method, &path, Some(body)).await?;
    Ok(if (200..300).contains(&status) {
        planned
    } else {
        Outcome::Refused(reason(status, &answer))
    })
}

/// Runs an import; the report says what happened to every item.
pub async fn run(import: &Import) -> anyhow::Result<Report> {
    let mut items = match &import.source {
        Source::Folder(dir) => read_folder(dir)?,
        Source::Gateway { url, secret } => read_gateway(url, secret).await?,
    };
    if let Some(file) = &import.keys_file {
        let origin = file.display().to_string();
        items.extend(key_items(read_json(file)?, &origin)?);
    }
    items.sort_by_key(|i| i.kind);
    let hub = GatewayApi::new(&import.hub, &import.secret);
    let mut report = Report::default();
    for item in items {
        let outcome = import_item(&hub, &item, import.dry_run).await?;
        if import.dry_run || !matches!(outcome, Outcome::Unchanged) {
            let verb = match (&outcome, import.dry_run) {
                (Outcome::Created, false) => "created",
                (Outcome::Created, true) => "would create",
                (Outcome::Updated, false) => "updated",
                (Outcome::Updated, true) => "would update",
                (Outcome::Unchanged, _) => "unchanged",
                (Outcome::Refused(_), _) => "refused",
            };
            println!("{verb} {} {}", item.kind.name(), shown_id(&item));
        }
        report.items.push((item, outcome));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_meridian_holds_may_add_defaults_but_not_differ() {
        let wanted = json!({"api_id": "a", "proxy": {"listen_path": "/a/"}, "tags": [], "last_updated": "1"});
        let held = json!({"api_id": "a", "proxy": {"listen_path": "/a/", "strip_listen_path": false},
            "tags": null, "last_updated": "2", "active": true});
        assert!(holds(&held, &wanted));
        let moved = json!({"api_id": "a", "proxy": {"listen_path": "/b/"}});
        assert!(!holds(&held, &moved));
        assert!(holds(&json!({"rate": 100.0}), &json!({"rate": 100})));
    }

    #[test]
    fn sources_are_read_in_tyks_shapes() {
        let wrapped = api_item(
            json!({"api_definition": {"api_id": "x"}, "api_model": {}}),
            "f".into(),
        );
        assert_eq!((wrapped.id.as_str(), wrapped.body.is_ok()), ("x", true));
        let oas = api_item(
            json!({"api_definition": {"api_id": "y"}, "oas": {"openapi": "3.0.3"}}),
            "g".into(),
        );
        assert!(oas.body.unwrap_err().contains("OAS"));
        let portable = policy_item(json!({"_id": "5f1", "name": "p"}), "h".into(), None);
        assert_eq!(portable.id, "5f1");
        assert_eq!(portable.body.unwrap()["id"], "5f1");
        let keyed = policy_item(json!({"name": "p"}), "policies.json".into(), Some("gold"));
        assert_eq!(keyed.id, "gold");
    }
}
