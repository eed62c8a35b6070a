//! The deployment files checked against the code, not by eye:
//! - every manifest in `k8s/` parses into the typed objects of `k8s-openapi`
//!   and back without losing a field (a misspelt field fails), the
//!   kustomization lists every file, and every hub service has a Deployment,
//!   a Service and probes on its real HTTP port and health paths;
//! - `compose.yaml` runs every service, and its variables, flags, ports,
//!   health checks and cross-service URLs match what the binaries accept;
//! - both use the nats-server version `scripts/setup` pins, and the
//!   `Dockerfile` builds every binary they start;
//! - no service crate depends on another service crate (the launcher,
//!   which runs them all in one process, excepted): what two services
//!   share lives in a library crate (`schemas`, `kit`, `keys`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, PodSpec, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use meridian_kit::config::from_vars;
use meridian_tests::workspace_binary;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The version `scripts/setup` pins.
fn pinned_nats() -> String {
    read("scripts/setup")
        .lines()
        .find_map(|l| l.strip_prefix("NATS_SERVER_VERSION="))
        .expect("scripts/setup pins NATS_SERVER_VERSION")
        .trim()
        .to_owned()
}

/// The binaries the Dockerfile builds.
fn dockerfile_binaries() -> BTreeSet<String> {
    let text = read("Dockerfile");
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1].to_owned())
        .collect()
}

/// The hub's server binaries: each must run in compose and on Kubernetes.
const SERVERS: [&str; 7] = [
    "meridian-agent-gateway",
    "meridian-inventory",
    "meridian-scheduler",
    "meridian-key-issuer",
    "meridian-proxy",
    "meridian-portal-sync",
    "meridian-agent",
];

/// What one container runs, as the deployment file says.
#[derive(Debug, Default)]
struct Launch {
    /// Container / compose service name.
    name: String,
    /// Binary and arguments.
    command: Vec<String>,
    /// Its environment (secrets resolved, downward API as placeholders).
    env: BTreeMap<String, String>,
    /// Files mounted into it: path -> text.
    files: BTreeMap<String, String>,
}

/// What a launch serves, once its configuration is checked.
#[derive(Debug, Default, PartialEq)]
struct Serves {
    http_port: Option<u16>,
    grpc_port: Option<u16>,
    /// API traffic (the proxy's data plane).
    traffic_port: Option<u16>,
    /// Other services it calls: (host, port).
    calls: Vec<(String, u16)>,
    electing: bool,
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

fn host_port(url: &str) -> (String, u16) {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let authority = rest.split('/').next().unwrap();
    let (host, port) = authority.rsplit_once(':').expect("host:port");
    (host.to_owned(), port.parse().unwrap())
}

fn help(args: &[&str]) -> String {
    let out = std::process::Command::new(workspace_binary("meridian"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "meridian {args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The service's configuration from the launch's variables (unknown or
/// mistyped ones fail, naming the variable); the admin key must be set.
fn service_config<T: serde::de::DeserializeOwned>(launch: &Launch, prefix: &str) -> T {
    assert!(
        launch.env.contains_key("MERIDIAN_API_KEY")
            || launch.env.contains_key(&format!("{prefix}API_KEY")),
        "{}: no admin key",
        launch.name
    );
    from_vars(prefix, launch.env.clone())
        .unwrap_or_else(|e| panic!("{}: {}", launch.name, e.message))
}

/// A REST service on `http_addr` that uses NATS at `nats_url`.
fn served(http_addr: &str, nats_url: &str) -> Serves {
    Serves {
        http_port: Some(port_of(http_addr)),
        calls: vec![host_port(nats_url)],
        ..Default::default()
    }
}

/// Checks a launch against the binary it starts; what it serves and calls.
fn check(launch: &Launch) -> Serves {
    let at = &launch.name;
    let (binary, args) = launch.command.split_first().expect("a command");
    let vars = || launch.env.clone().into_iter();
    match binary.as_str() {
        "meridian-agent-gateway" => {
            assert!(args.is_empty(), "{at}: {args:?}");
            let c: meridian_agent_gateway::Config =
                service_config(launch, meridian_agent_gateway::app::ENV_PREFIX);
            let secret = c.jwt_secret.as_ref().expect("JWT secret set");
            assert!(secret.expose().len() >= 32, "{at}: JWT secret too short");
            Serves {
                http_port: Some(port_of(&c.http_addr)),
                grpc_port: Some(port_of(&c.grpc_addr)),
                calls: vec![host_port(&c.nats_url)],
                ..Default::default()
            }
        }
        "meridian-inventory" => {
            assert!(args.is_empty() || args == ["serve"], "{at}: {args:?}");
            let c: meridian_inventory::Config =
                service_config(launch, meridian_inventory::app::ENV_PREFIX);
            assert!(c.data_dir.is_absolute(), "{at}: data on a volume path");
            served(&c.http_addr, &c.nats_url)
        }
        "meridian-scheduler" => {
            assert!(args.is_empty(), "{at}: {args:?}");
            let c: meridian_scheduler::Config =
                service_config(launch, meridian_scheduler::app::ENV_PREFIX);
            served(&c.http_addr, &c.nats_url)
        }
        "meridian-key-issuer" => {
            assert!(args.is_empty(), "{at}: {args:?}");
            let prefix = meridian_key_issuer::app::ENV_PREFIX;
            let c: meridian_key_issuer::Config = from_vars(prefix, launch.env.clone())
                .unwrap_or_else(|e| panic!("{at}: {}", e.message));
            let secret = c.secret.as_ref().expect("Gateway API secret set");
            assert!(
                secret.expose().len() >= meridian_key_issuer::app::MIN_SECRET_BYTES,
                "{at}: Gateway API secret too short"
            );
            served(&c.http_addr, &c.nats_url)
        }
        "meridian-proxy" => {
            assert!(args.is_empty(), "{at}: {args:?}");
            let prefix = meridian_proxy::app::ENV_PREFIX;
            let c: meridian_proxy::Config = from_vars(prefix, launch.env.clone())
                .unwrap_or_else(|e| panic!("{at}: {}", e.message));
            let secret = c.secret.as_ref().expect("Gateway API secret set");
            assert!(
                secret.expose().len() >= meridian_kit::tyk::MIN_SECRET_BYTES,
                "{at}: Gateway API secret too short"
            );
            Serves {
                traffic_port: Some(port_of(&c.listen)),
                ..served(&c.http_addr, &c.nats_url)
            }
        }
        "meridian-portal-sync" => {
            assert!(args.is_empty(), "{at}: {args:?}");
            let c: meridian_portal_sync::Config =
                service_config(launch, meridian_portal_sync::app::ENV_PREFIX);
            served(&c.http_addr, &c.nats_url)
        }
        "meridian-agent" => {
            assert_eq!(args.len(), 2, "{at}: {args:?}");
            assert_eq!(args[0], "--config");
            let text = launch
                .files
                .get(&args[1])
                .unwrap_or_else(|| panic!("{at}: {} is not mounted", args[1]));
            let c = meridian_agent::config::from_sources(Some((&args[1], text)), vars())
                .unwrap_or_else(|e| panic!("{at}: {e}"));
            let hub = c.governance_dashboard.server.url.clone();
            let mut calls = vec![host_port(&hub)];
            for i in &c.instances {
                for key in ["host", "url"] {
                    if let Some(host) = i.config.get(key).and_then(Value::as_str) {
                        calls.push(host_port(host));
                    }
                }
            }
            Serves {
                http_port: Some(c.health_probe.server.port),
                calls,
                electing: c.leader_election.enabled,
                ..Default::default()
            }
        }
        "meridian" => {
            let sub: Vec<&str> = args
                .iter()
                .take_while(|a| !a.starts_with("--"))
                .map(String::as_str)
                .collect();
            let text = help(&sub);
            for flag in args.iter().filter(|a| a.starts_with("--")) {
                assert!(
                    text.contains(flag.as_str()),
                    "{at}: meridian {sub:?} has no {flag}"
                );
            }
            for var in launch
                .env
                .keys()
                .filter(|k| k.starts_with("MERIDIAN_ROUTE_"))
            {
                assert!(
                    text.contains(&format!("env: {var}")),
                    "{at}: {var} is not read"
                );
            }
            let flag = |name: &str| {
                args.iter()
                    .position(|a| a == name)
                    .map(|i| args[i + 1].clone())
            };
            match sub.first().copied() {
                Some("route") => {
                    let env = |k: &str| launch.env.get(k).cloned().unwrap();
                    Serves {
                        http_port: Some(port_of(&env("MERIDIAN_ROUTE_LISTEN"))),
                        calls: [
                            "GATEWAY",
                            "INVENTORY",
                            "SCHEDULER",
                            "KEY_ISSUER",
                            "PROXY",
                            "PORTAL_SYNC",
                            "NATS_URL",
                        ]
                        .map(|u| host_port(&env(&format!("MERIDIAN_ROUTE_{u}"))))
                        .to_vec(),
                        ..Default::default()
                    }
                }
                Some("demo-provider") => Serves {
                    http_port: Some(port_of(&flag("--listen").expect("--listen"))),
                    ..Default::default()
                },
                Some("agents") => Serves {
                    calls: vec![host_port(&launch.env["MERIDIAN_HUB_URL"])],
                    ..Default::default()
                },
                other => panic!("{at}: unexpected meridian {other:?}"),
            }
        }
        other => panic!("{at}: {other} is not a Meridian binary"),
    }
}

// ---------- compose ----------

/// `${VAR:-default}` as compose resolves it with VAR unset.
fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').expect("closing brace") + i;
        let inner = &rest[i + 2..end];
        out.push_str(inner.split_once(":-").map_or("", |(_, d)| d));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out.replace("$$", "$")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|x| interpolate(x.as_str().unwrap())).collect())
        .unwrap_or_default()
}

/// Domain modules decide; the edge speaks HTTP. No domain module (a
/// service's `src/domain.rs` or `src/domain/`, and the keys crate, which is
/// a domain) names axum, hyper or the http crate, with no exception: the
/// proxy's compiled routes hold plain values (header names as lower-case
/// text, the upstream's authority as shared bytes) that the data plane
/// turns into hyper's types without copying.
#[test]
fn domain_modules_name_no_http_types() {
    let mut files = Vec::new();
    let services = root().join("services");
    for service in std::fs::read_dir(&services).unwrap() {
        let src = service.unwrap().path().join("src");
        let domain = src.join("domain");
        if src.join("domain.rs").is_file() {
            files.push(src.join("domain.rs"));
        }
        if domain.is_dir() {
            let mut stack = vec![domain];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|e| e == "rs") {
                        files.push(path);
                    }
                }
            }
        }
    }
    for entry in std::fs::read_dir(services.join("keys/src")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    assert!(files.len() >= 15, "domain modules not found: {files:?}");
    let mut found = Vec::new();
    for file in &files {
        let relative = file
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for (n, line) in read(&relative).lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if ["axum", "hyper::", "use hyper", "http::"]
                .iter()
                .any(|t| code.contains(t))
            {
                found.push(format!("{relative}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "HTTP types in domain modules:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_service_crate_depends_on_another_service() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let services_dir = root().join("services").canonicalize().expect("services/");
    // A service is a crate under services/ that builds a binary.
    let is_service = |p: &Value| {
        Path::new(p["manifest_path"].as_str().unwrap_or_default()).starts_with(&services_dir)
            && p["targets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["kind"][0] == "bin"))
    };
    let services: BTreeSet<&str> = packages
        .iter()
        .filter(|p| is_service(p))
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in [
        "meridian-key-issuer",
        "meridian-proxy",
        "meridian-portal-sync",
        "meridian",
    ] {
        assert!(
            services.contains(name),
            "{name} is found as a service: {services:?}"
        );
    }
    assert!(
        !services.contains("meridian-keys"),
        "meridian-keys is a library"
    );
    let mut wrong = Vec::new();
    for p in packages
        .iter()
        .filter(|p| is_service(p) && p["name"] != "meridian")
    {
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dep = d["name"].as_str().unwrap_or_default();
            if services.contains(dep) {
                wrong.push(format!(
                    "{} depends on {dep}",
                    p["name"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "a service crate depends on another service; move what they share into a library \
         crate: {wrong:?}"
    );
}

#[test]
fn compose_runs_every_service_with_what_its_binary_accepts() {
    let mut yaml: serde_yaml::Value = serde_yaml::from_str(&read("compose.yaml")).unwrap();
    yaml.apply_merge().unwrap();
    let doc: Value = serde_json::to_value(&yaml).unwrap();
    let services = doc["services"].as_object().unwrap();
    let built = dockerfile_binaries();
    assert_eq!(
        services["nats"]["image"],
        format!("nats:{}-alpine", pinned_nats()),
        "compose runs the pinned nats-server"
    );
    let mut serves = BTreeMap::new();
    let mut started = BTreeSet::new();
    for (name, svc) in services {
        if name == "nats" {
            continue;
        }
        assert_eq!(svc["build"], ".", "{name} is built from the Dockerfile");
        let command = strings(&svc["command"]);
        assert!(
            built.contains(&command[0]),
            "{name}: the Dockerfile does not build {}",
            command[0]
        );
        started.insert(command[0].clone());
        let env: BTreeMap<String, String> = svc["environment"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), interpolate(v.as_str().unwrap())))
                    .collect()
            })
            .unwrap_or_default();
        let mut files = BTreeMap::new();
        for mount in strings(&svc["volumes"]) {
            let parts: Vec<&str> = mount.split(':').collect();
            if let Some(local) = parts[0].strip_prefix("./") {
                files.insert(parts[1].to_owned(), read(local));
            }
        }
        let launch = Launch {
            name: name.clone(),
            command,
            env,
            files,
        };
        // The agent reads its token from the file agent-setup writes.
        let mut launch = launch;
        if name == "agent" {
            launch.env.insert(
                "MERIDIAN_AGENT_GOVERNANCEDASHBOARD_AUTH_TOKEN".into(),
                "from-agent-setup".into(),
            );
        }
        serves.insert(name.clone(), check(&launch));
    }
    for server in SERVERS {
        assert!(started.contains(server), "compose does not run {server}");
    }
    for needed in [
        "hub",
        "demo-provider",
        "demo-provider-2",
        "agent-setup",
        "agent",
    ] {
        assert!(services.contains_key(needed), "compose has no {needed}");
    }

    for (name, svc) in services {
        // Health checks probe the service's own health endpoints and port.
        let test = strings(&svc["healthcheck"]["test"]);
        if name == "agent-setup" {
            assert!(test.is_empty(), "a one-shot job has no health check");
        } else {
            let url = test
                .last()
                .unwrap_or_else(|| panic!("{name}: no health check"));
            if name != "nats" {
                let (_, port) = host_port(url);
                assert_eq!(
                    Some(port),
                    serves[name].http_port,
                    "{name}: health check port"
                );
                assert!(
                    url.ends_with("/readyz") || url.ends_with("/healthz"),
                    "{url}"
                );
            }
        }
        // Dependencies exist, and wait for health (or completion).
        if let Some(deps) = svc["depends_on"].as_object() {
            for (dep, how) in deps {
                assert!(
                    services.contains_key(dep),
                    "{name} depends on unknown {dep}"
                );
                let wanted = if dep == "agent-setup" {
                    "service_completed_successfully"
                } else {
                    "service_healthy"
                };
                assert_eq!(how["condition"], wanted, "{name} -> {dep}");
            }
        }
        // Published ports are the ports the service listens on.
        for published in strings(&svc["ports"]) {
            let (_, container) = published.rsplit_once(':').unwrap();
            let container: u16 = container.parse().unwrap();
            let s = &serves[name];
            assert!(
                [s.http_port, s.grpc_port, s.traffic_port].contains(&Some(container)),
                "{name} publishes {container}, listens on {s:?}"
            );
        }
    }
    let published: Vec<String> = services
        .values()
        .flat_map(|s| strings(&s["ports"]))
        .collect();
    assert!(
        published.contains(&"8000:8000".to_owned()),
        "the hub URL is published"
    );
    assert!(
        published.contains(&"50051:50051".to_owned()),
        "agents' gRPC is published"
    );

    // Every call goes to a service of the file, on the port it listens on.
    for (name, s) in &serves {
        for (host, port) in &s.calls {
            if host == "nats" {
                assert_eq!(*port, 4222, "{name}: NATS client port");
                continue;
            }
            let target = serves
                .get(host)
                .unwrap_or_else(|| panic!("{name} calls {host}, which compose does not run"));
            assert!(
                [target.http_port, target.grpc_port, target.traffic_port].contains(&Some(*port)),
                "{name} calls {host}:{port}; it listens on {target:?}"
            );
        }
    }
}

// ---------- Kubernetes ----------

/// Parses one manifest document into its typed object and back; every
/// field of the file must survive (unknown or misspelt ones do not).
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, at: &str) -> T {
    let object: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
    let back = serde_json::to_value(&object).unwrap();
    if let Some(path) = lost(doc, &back, String::new()) {
        panic!(
            "{at}: field {path} is not part of the {} schema",
            doc["kind"]
        );
    }
    object
}

/// The first path present in `original` but missing or different in `back`.
fn lost(original: &Value, back: &Value, at: String) -> Option<String> {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            None if !v.is_null() => Some(format!("{at}.{k}")),
            None => None,
            Some(w) => lost(v, w, format!("{at}.{k}")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| lost(v, w, format!("{at}[{i}]"))),
        (a, b) if a == b => None,
        _ => Some(at),
    }
}

#[derive(Default)]
struct Cluster {
    deployments: Vec<Deployment>,
    stateful_sets: Vec<StatefulSet>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    ingresses: Vec<Ingress>,
    claims: Vec<PersistentVolumeClaim>,
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn load_cluster() -> Cluster {
    let kustomization: Value = serde_yaml::from_str(&read("k8s/kustomization.yaml")).unwrap();
    let listed: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    let present: BTreeSet<String> = std::fs::read_dir(root().join("k8s"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "kustomization resources = the files in k8s/"
    );
    let mut cluster = Cluster::default();
    for file in &listed {
        let text = read(&format!("k8s/{file}"));
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let doc: Value = serde_json::to_value(
                <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap(),
            )
            .unwrap();
            let at = format!("k8s/{file} document {i}");
            match doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: no kind"))
            {
                "Deployment" => cluster.deployments.push(typed(&doc, &at)),
                "StatefulSet" => cluster.stateful_sets.push(typed(&doc, &at)),
                "Service" => cluster.services.push(typed(&doc, &at)),
                "ConfigMap" => cluster.config_maps.push(typed(&doc, &at)),
                "Secret" => cluster.secrets.push(typed(&doc, &at)),
                "ServiceAccount" => cluster.service_accounts.push(typed(&doc, &at)),
                "Role" => cluster.roles.push(typed(&doc, &at)),
                "RoleBinding" => cluster.role_bindings.push(typed(&doc, &at)),
                "Ingress" => cluster.ingresses.push(typed(&doc, &at)),
                "PersistentVolumeClaim" => cluster.claims.push(typed(&doc, &at)),
                "Namespace" => {
                    typed::<Namespace>(&doc, &at);
                }
                other => panic!("{at}: unexpected kind {other}"),
            }
        }
    }
    cluster
}

impl Cluster {
    fn secret_value(&self, name: &str, key: &str) -> String {
        let secret = self
            .secrets
            .iter()
            .find(|s| name_of(&s.metadata) == name)
            .unwrap_or_else(|| panic!("no Secret {name}"));
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .cloned()
            .unwrap_or_else(|| panic!("Secret {name} has no {key}"))
    }

    fn config_map(&self, name: &str) -> &ConfigMap {
        self.config_maps
            .iter()
            .find(|c| name_of(&c.metadata) == name)
            .unwrap_or_else(|| panic!("no ConfigMap {name}"))
    }

    /// What the container runs, with its environment and mounted files.
    fn launch(&self, pod: &PodSpec, c: &Container) -> Launch {
        let mut env = BTreeMap::new();
        for from in c.env_from.iter().flatten() {
            let cm = from.config_map_ref.as_ref().expect("envFrom a ConfigMap");
            env.extend(self.config_map(&cm.name).data.clone().unwrap_or_default());
        }
        for var in c.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => match (&from.secret_key_ref, &from.field_ref) {
                    (Some(s), _) => self.secret_value(&s.name, &s.key),
                    (None, Some(f)) => {
                        assert!(
                            ["metadata.name", "metadata.namespace"]
                                .contains(&f.field_path.as_str()),
                            "{}: {}",
                            var.name,
                            f.field_path
                        );
                        format!("downward-{}", f.field_path)
                    }
                    _ => panic!("{}: unsupported valueFrom", var.name),
                },
                (None, None) => String::new(),
            };
            env.insert(var.name.clone(), value);
        }
        let mut files = BTreeMap::new();
        for mount in c.volume_mounts.iter().flatten() {
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .unwrap_or_else(|| panic!("{}: no volume {}", c.name, mount.name));
            if let Some(secret) = &volume.secret {
                let name = secret.secret_name.as_deref().unwrap();
                let s = self
                    .secrets
                    .iter()
                    .find(|s| name_of(&s.metadata) == name)
                    .unwrap();
                for (key, text) in s.string_data.clone().unwrap_or_default() {
                    files.insert(format!("{}/{key}", mount.mount_path), text);
                }
            }
        }
        Launch {
            name: c.name.clone(),
            command: c.command.clone().unwrap_or_default(),
            env,
            files,
        }
    }
}

/// The container port a probe or Service names (by name or number).
fn container_port(
    c: &Container,
    port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
) -> u16 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let ports = c.ports.as_deref().unwrap_or_default();
    let found = match port {
        IntOrString::Int(n) => ports.iter().find(|p| p.container_port == *n),
        IntOrString::String(name) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
    };
    u16::try_from(
        found
            .unwrap_or_else(|| panic!("{}: no port {port:?}", c.name))
            .container_port,
    )
    .unwrap()
}

#[test]
fn k8s_manifests_are_typed_complete_and_point_at_real_endpoints() {
    let cluster = load_cluster();
    let built = dockerfile_binaries();
    let mut started = BTreeSet::new();
    let mut serves = BTreeMap::new();
    for d in &cluster.deployments {
        let name = name_of(&d.metadata).to_owned();
        let spec = &d.spec;
        let pod = spec.template.spec.as_ref().unwrap();
        let labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        let selector = spec.selector.match_labels.clone().unwrap();
        assert!(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{name}: selector"
        );
        let c = &pod.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("meridian"),
            "{name}: the kustomize image"
        );
        let launch = cluster.launch(pod, c);
        let binary = &launch.command[0];
        assert!(
            built.contains(binary),
            "{name}: the Dockerfile does not build {binary}"
        );
        started.insert(binary.clone());
        let s = check(&launch);
        // Probes: the health paths, on the port the service listens on.
        for (kind, probe) in [
            ("liveness", &c.liveness_probe),
            ("readiness", &c.readiness_probe),
        ] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .unwrap_or_else(|| panic!("{name}: no {kind} probe"));
            let path = get.path.as_deref().unwrap_or_default();
            let wanted = if kind == "liveness" {
                "/healthz"
            } else {
                "/readyz"
            };
            assert_eq!(path, wanted, "{name}: {kind} probe path");
            assert_eq!(
                Some(container_port(c, &get.port)),
                s.http_port,
                "{name}: {kind} port"
            );
        }
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        assert!(
            requests.is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")),
            "{name}: resource requests"
        );
        // A Service selects it, on ports the container has.
        let service = cluster
            .services
            .iter()
            .find(|s| {
                let sel = s
                    .spec
                    .as_ref()
                    .unwrap()
                    .selector
                    .clone()
                    .unwrap_or_default();
                !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .unwrap_or_else(|| panic!("{name}: no Service selects it"));
        for port in service.spec.as_ref().unwrap().ports.iter().flatten() {
            container_port(c, port.target_port.as_ref().expect("targetPort"));
        }
        if s.electing {
            assert_eq!(spec.replicas, Some(3), "{name}: three electing replicas");
            for var in ["POD_NAME", "POD_NAMESPACE"] {
                assert!(launch.env[var].starts_with("downward-"), "{name}: {var}");
            }
            let account = pod
                .service_account_name
                .as_deref()
                .expect("a ServiceAccount");
            assert!(
                cluster
                    .service_accounts
                    .iter()
                    .any(|a| name_of(&a.metadata) == account)
            );
            let binding = cluster
                .role_bindings
                .iter()
                .find(|b| b.subjects.iter().flatten().any(|s| s.name == account))
                .expect("a RoleBinding for the agent");
            let role = cluster
                .roles
                .iter()
                .find(|r| name_of(&r.metadata) == binding.role_ref.name)
                .expect("the bound Role");
            for rule in role.rules.iter().flatten() {
                assert_eq!(
                    rule.api_groups.as_deref(),
                    Some(&["coordination.k8s.io".to_owned()][..])
                );
                assert_eq!(rule.resources.as_deref(), Some(&["leases".to_owned()][..]));
                for verb in &rule.verbs {
                    assert!(
                        ["get", "create", "update"].contains(&verb.as_str()),
                        "verb {verb}"
                    );
                }
            }
        }
        serves.insert(service.metadata.name.clone().unwrap(), s);
    }
    for server in SERVERS {
        assert!(started.contains(server), "no Deployment runs {server}");
    }
    assert!(started.contains("meridian"), "the hub router runs");

    // NATS: the pinned version, JetStream on a persistent volume.
    let nats = cluster
        .stateful_sets
        .iter()
        .find(|s| name_of(&s.metadata) == "nats")
        .expect("NATS");
    let nspec = &nats.spec;
    let nc = &nspec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        nc.image.as_deref(),
        Some(format!("nats:{}-alpine", pinned_nats()).as_str())
    );
    assert!(nc.args.as_ref().unwrap().contains(&"-js".to_owned()));
    assert!(
        nspec
            .volume_claim_templates
            .as_ref()
            .is_some_and(|v| !v.is_empty())
    );
    assert!(nc.readiness_probe.is_some() && nc.liveness_probe.is_some());

    // Calls between services go to Services, on their ports.
    for (name, s) in &serves {
        for (host, port) in &s.calls {
            if host == "nats" {
                assert_eq!(*port, 4222);
                continue;
            }
            if host.ends_with(".tyk") {
                continue; // the operator's own Tyk Dashboard
            }
            let target = cluster
                .services
                .iter()
                .find(|x| name_of(&x.metadata) == host)
                .unwrap_or_else(|| panic!("{name} calls {host}: no such Service"));
            let ports: Vec<i32> = target
                .spec
                .as_ref()
                .unwrap()
                .ports
                .iter()
                .flatten()
                .map(|p| p.port)
                .collect();
            assert!(
                ports.contains(&i32::from(*port)),
                "{name} calls {host}:{port}; it has {ports:?}"
            );
        }
    }

    // The Ingress sends each path to an existing Service port.
    let ingress = &cluster.ingresses[0];
    let mut prefixes = Vec::new();
    for rule in ingress.spec.as_ref().unwrap().rules.iter().flatten() {
        for path in &rule.http.as_ref().unwrap().paths {
            let backend = path.backend.service.as_ref().unwrap();
            let target = cluster
                .services
                .iter()
                .find(|s| name_of(&s.metadata) == backend.name)
                .unwrap_or_else(|| panic!("Ingress -> unknown Service {}", backend.name));
            let port = backend.port.as_ref().unwrap().name.clone().unwrap();
            assert!(
                target
                    .spec
                    .as_ref()
                    .unwrap()
                    .ports
                    .iter()
                    .flatten()
                    .any(|p| p.name.as_deref() == Some(&port))
            );
            prefixes.push(path.path.clone().unwrap());
        }
    }
    assert!(
        prefixes.contains(&"/api".to_owned()),
        "every REST path is routed"
    );
    assert!(
        !cluster.claims.is_empty(),
        "inventory's data is on a volume"
    );
}

#[test]
fn a_misspelt_manifest_field_is_caught() {
    let doc: Value = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"selector": {"a": "b"}, "ports": [{"port": 80, "targetPrt": "http"}]}
    });
    let caught = std::panic::catch_unwind(|| typed::<Service>(&doc, "example"));
    let message = caught
        .err()
        .and_then(|e| e.downcast_ref::<String>().cloned())
        .expect("the misspelling is reported");
    assert!(message.contains("spec.ports[0].targetPrt"), "{message}");
}

/// One service's variables as its config struct declares them: each field
/// (in order) with its doc comment, read from the source file.
fn documented_fields(source: &str) -> Vec<(String, String)> {
    let text = read(source);
    let body = text
        .split("pub struct Config {")
        .nth(1)
        .unwrap_or_else(|| panic!("{source} has no `pub struct Config`"));
    let body = &body[..body.find("\n}").unwrap()];
    let mut fields = Vec::new();
    let mut doc = Vec::new();
    for line in body.lines().map(str::trim) {
        if let Some(d) = line.strip_prefix("///") {
            doc.push(d.trim().to_owned());
        } else if let Some(field) = line.strip_prefix("pub ") {
            let name = field.split(':').next().unwrap().trim().to_owned();
            fields.push((name, doc.join(" ")));
            doc.clear();
        }
    }
    fields
}

/// The configuration reference, generated from the six config structs: the
/// variable names serde reads (the same list `--help` prints) and each
/// field's doc comment, which says its default or that it is required.
fn configuration_reference() -> String {
    use meridian_kit::config::{fields, variables_help};
    let services: [(&str, &str, &str, &[&str], String); 6] = [
        (
            "meridian-agent-gateway",
            "services/agent-gateway/src/app.rs",
            meridian_agent_gateway::app::ENV_PREFIX,
            fields::<meridian_agent_gateway::Config>(),
            variables_help::<meridian_agent_gateway::Config>(
                meridian_agent_gateway::app::ENV_PREFIX,
            ),
        ),
        (
            "meridian-inventory",
            "services/inventory/src/app.rs",
            meridian_inventory::app::ENV_PREFIX,
            fields::<meridian_inventory::Config>(),
            variables_help::<meridian_inventory::Config>(meridian_inventory::app::ENV_PREFIX),
        ),
        (
            "meridian-scheduler",
            "services/scheduler/src/app.rs",
            meridian_scheduler::app::ENV_PREFIX,
            fields::<meridian_scheduler::Config>(),
            variables_help::<meridian_scheduler::Config>(meridian_scheduler::app::ENV_PREFIX),
        ),
        (
            "meridian-key-issuer",
            "services/key-issuer/src/app.rs",
            meridian_key_issuer::app::ENV_PREFIX,
            fields::<meridian_key_issuer::Config>(),
            variables_help::<meridian_key_issuer::Config>(meridian_key_issuer::app::ENV_PREFIX),
        ),
        (
            "meridian-proxy",
            "services/proxy/src/app.rs",
            meridian_proxy::app::ENV_PREFIX,
            fields::<meridian_proxy::Config>(),
            variables_help::<meridian_proxy::Config>(meridian_proxy::app::ENV_PREFIX),
        ),
        (
            "meridian-portal-sync",
            "services/portal-sync/src/app.rs",
            meridian_portal_sync::app::ENV_PREFIX,
            fields::<meridian_portal_sync::Config>(),
            variables_help::<meridian_portal_sync::Config>(meridian_portal_sync::app::ENV_PREFIX),
        ),
    ];
    let mut out = String::from(
        "# Configuration\n\n\
         <!-- Generated from each service's `Config` struct by tests/e2e/deploy.rs \
         (`MERIDIAN_BLESS=1 cargo test -p meridian-tests --test e2e configuration` rewrites it); \
         edit the doc comments there, not this file. -->\n\n\
         Each service is its own binary configured by environment variables, which is\n\
         how compose and Kubernetes run them: the variable is the service's prefix\n\
         followed by the name. Unknown variables under a service's prefix are\n\
         rejected, and bad configuration exits with code 64 naming the variable.\n\
         `MERIDIAN_API_KEY` is the admin key for all of them (key-issuer and the\n\
         proxy take the Gateway API secret instead). Durations are written like\n\
         `500ms`, `30s`, `5m`, `12h`, `30d`. Each binary's `--help` lists the same\n\
         variables.\n",
    );
    for (binary, source, prefix, fields, help) in services {
        let documented = documented_fields(source);
        let names: Vec<&str> = documented.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names, fields,
            "{source}: the fields read from the source are the ones serde reads"
        );
        out.push_str(&format!(
            "\n## `{binary}`\n\n| variable | what it sets |\n| --- | --- |\n"
        ));
        for (field, doc) in &documented {
            let var = format!("{prefix}{}", field.to_uppercase());
            assert!(help.contains(&var), "{binary} --help lacks {var}");
            assert!(
                doc.to_lowercase().contains("default") || doc.contains("equired"),
                "{source}: the doc comment of `{field}` says neither its default nor that it is required"
            );
            out.push_str(&format!("| `{var}` | {} |\n", doc.replace('|', "\\|")));
        }
    }
    out
}

/// `docs/configuration.md` is what the config structs say today: a field
/// added, renamed or documented differently fails here until the page is
/// generated again.
#[test]
fn the_configuration_reference_is_generated_from_the_config_structs() {
    let generated = configuration_reference();
    let path = root().join("docs/configuration.md");
    if std::env::var_os("MERIDIAN_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let page = read("docs/configuration.md");
    assert!(
        page == generated,
        "docs/configuration.md differs from the config structs; run \
         MERIDIAN_BLESS=1 cargo test -p meridian-tests --test e2e configuration"
    );
}
