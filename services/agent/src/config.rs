//! The agent's configuration: `agent-config.yaml` with the keys the governance
//! agent documents, every key overridable by an environment variable named
//! after its path (`MERIDIAN_AGENT_GOVERNANCEDASHBOARD_SERVER_URL` for
//! `governanceDashboard.server.url`), with the documented `TYK_AGENT_...`
//! names accepted as aliases so existing deployments move over unchanged.
//!
//! Loading is a pure function of the file's text and the environment
//! ([`from_sources`]), so tests call it directly. Environment names are
//! matched against an index of the documented keys case-insensitively and
//! without separators, and each value is typed by its key (a numeric-looking
//! token stays a string where the key is a string). Every failure names the
//! key: a bad file, an unknown key, an unknown provider type, a missing
//! required field, a bad duration.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_kit::config::{HumanDuration, Secret};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Prefix of the agent's environment variables.
pub const ENV_PREFIX: &str = "MERIDIAN_AGENT_";
/// Prefix of the governance agent's documented variables, accepted as aliases.
pub const ALIAS_PREFIX: &str = "TYK_AGENT_";
/// The variable naming the configuration file (not a setting itself).
pub const CONFIG_PATH_VAR: &str = "MERIDIAN_AGENT_CONFIG";

/// A configuration problem, naming the key (or variable) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The key path (`rpc.keepalive.time`) or variable name.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// Accepted for compatibility with existing files; Meridian needs none.
    #[serde(default)]
    pub license_key: Option<Secret>,
    /// Where the hub is and how to authenticate.
    pub governance_dashboard: GovernanceDashboard,
    /// The providers to discover.
    #[serde(default)]
    pub instances: Vec<Instance>,
    /// `debug`, `info`, `warn` or `error`.
    #[serde(default = "default_log_level")]
    pub log_level: LogLevel,
    /// The health probe server.
    #[serde(default)]
    pub health_probe: HealthProbe,
    /// gRPC connection settings.
    #[serde(default)]
    pub rpc: Rpc,
    /// Kubernetes leader election.
    #[serde(default)]
    pub leader_election: LeaderElection,
}

/// `governanceDashboard`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GovernanceDashboard {
    /// `server`.
    pub server: Server,
    /// `auth`.
    pub auth: Auth,
}

/// `governanceDashboard.server`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// The hub's gRPC endpoint: `host:port` or a URL.
    pub url: String,
    /// TLS towards the hub.
    #[serde(default)]
    pub tls: Tls,
}

/// `governanceDashboard.server.tls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tls {
    /// Use TLS.
    #[serde(default)]
    pub enabled: bool,
    /// CA certificate to trust (PEM file).
    #[serde(default)]
    pub ca_cert_path: Option<String>,
    /// Client certificate for mTLS (PEM file).
    #[serde(default)]
    pub client_cert_path: Option<String>,
    /// Client key for mTLS (PEM file).
    #[serde(default)]
    pub client_key_path: Option<String>,
    /// Do not verify the hub's certificate (testing only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `governanceDashboard.auth`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Auth {
    /// The agent's token, issued by the hub.
    pub token: Secret,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Debug,
    /// The default.
    Info,
    /// Warnings and errors.
    Warn,
    /// Errors only.
    Error,
}

fn default_log_level() -> LogLevel {
    LogLevel::Info
}

/// `healthProbe`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthProbe {
    /// `server`.
    #[serde(default)]
    pub server: ProbeServer,
}

/// `healthProbe.server`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeServer {
    /// Port of the liveness and readiness endpoints.
    #[serde(default = "default_probe_port")]
    pub port: u16,
}

impl Default for ProbeServer {
    fn default() -> Self {
        Self {
            port: default_probe_port(),
        }
    }
}

fn default_probe_port() -> u16 {
    5959
}

/// `rpc`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rpc {
    /// `keepalive`.
    #[serde(default)]
    pub keepalive: Keepalive,
}

/// `rpc.keepalive`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Keepalive {
    /// Send keepalive pings.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Idle time before a ping.
    #[serde(default = "secs::<30>")]
    pub time: HumanDuration,
    /// How long to wait for the ping's answer.
    #[serde(default = "secs::<20>")]
    pub timeout: HumanDuration,
    /// Ping even without an open stream.
    #[serde(default = "yes")]
    pub permit_without_stream: bool,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            enabled: true,
            time: secs::<30>(),
            timeout: secs::<20>(),
            permit_without_stream: true,
        }
    }
}

fn yes() -> bool {
    true
}

fn secs<const N: u64>() -> HumanDuration {
    HumanDuration(Duration::from_secs(N))
}

/// `leaderElection`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaderElection {
    /// Elect one leader among replicas; only the leader syncs.
    #[serde(default)]
    pub enabled: bool,
    /// The Lease object's name.
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// The Lease's namespace; empty: the agent's own (`POD_NAMESPACE`).
    #[serde(default)]
    pub lease_namespace: String,
    /// How long a lease holds without renewal.
    #[serde(default = "secs::<15>")]
    pub lease_duration: HumanDuration,
    /// How long the leader keeps trying to renew before it steps down.
    #[serde(default = "secs::<10>")]
    pub renew_deadline: HumanDuration,
    /// Pause between attempts.
    #[serde(default = "secs::<2>")]
    pub retry_period: HumanDuration,
}

impl Default for LeaderElection {
    fn default() -> Self {
        Self {
            enabled: false,
            lease_name: default_lease_name(),
            lease_namespace: String::new(),
            lease_duration: secs::<15>(),
            renew_deadline: secs::<10>(),
            retry_period: secs::<2>(),
        }
    }
}

fn default_lease_name() -> String {
    "governance-agent-lock".into()
}

/// One entry of `instances`. `Debug` leaves `config` out: it holds
/// credentials until [`ProviderSettings::parse`] wraps them.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Provider name reported to the hub.
    pub name: String,
    /// `tyk`, `aws` or `meridian`.
    #[serde(rename = "type")]
    pub provider_type: String,
    /// Provider-specific settings, checked by [`ProviderSettings::parse`].
    #[serde(default)]
    pub config: Value,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.name)
            .field("provider_type", &self.provider_type)
            .finish_non_exhaustive()
    }
}

/// A provider's settings, by type.
#[derive(Debug, Clone)]
pub enum ProviderSettings {
    /// A Tyk Dashboard.
    Tyk(TykSettings),
    /// AWS API Gateway.
    Aws(AwsSettings),
    /// Meridian's own gateway (the proxy's `/tyk/apis`).
    Meridian(MeridianSettings),
}

/// `config` of a `tyk` instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TykSettings {
    /// The Dashboard's URL.
    pub host: String,
    /// The Dashboard API key (sent raw in `Authorization`).
    pub auth: Secret,
}

/// `config` of a `meridian` instance: Meridian's own gateway, read through
/// the Gateway API as any Tyk Gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeridianSettings {
    /// The hub's (or the proxy's admin) URL.
    pub url: String,
    /// The Gateway API secret (sent in `x-tyk-authorization`).
    pub secret: Secret,
}

/// `config` of an `aws` instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsSettings {
    /// Region, for example `us-east-1`.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub access_key_secret: Secret,
    /// Session token for temporary credentials.
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// Another endpoint (tests, private endpoints).
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// Provider types this agent knows.
pub const PROVIDER_TYPES: [&str; 3] = ["tyk", "aws", "meridian"];

impl ProviderSettings {
    /// Checks instance `index`'s `config` against its type.
    pub fn parse(index: usize, instance: &Instance) -> Result<Self, ConfigError> {
        let at = format!("instances[{index}].config");
        let typed = |v: &Value| -> Result<Self, ConfigError> {
            match instance.provider_type.as_str() {
                "tyk" => typed_value::<TykSettings>(v, &at).map(Self::Tyk),
                "aws" => typed_value::<AwsSettings>(v, &at).map(Self::Aws),
                "meridian" => typed_value::<MeridianSettings>(v, &at).map(Self::Meridian),
                other => Err(error(
                    format!("instances[{index}].type"),
                    format!(
                        "unknown provider type {other:?} (known: {})",
                        PROVIDER_TYPES.join(", ")
                    ),
                )),
            }
        };
        let settings = typed(&instance.config)?;
        match &settings {
            Self::Tyk(t) if t.host.is_empty() => Err(error(format!("{at}.host"), "is required")),
            Self::Tyk(t) if t.auth.expose().is_empty() => {
                Err(error(format!("{at}.auth"), "is required"))
            }
            Self::Meridian(m) if m.url.is_empty() => Err(error(format!("{at}.url"), "is required")),
            Self::Meridian(m) if m.secret.expose().is_empty() => {
                Err(error(format!("{at}.secret"), "is required"))
            }
            Self::Aws(a) if a.region.is_empty() => {
                Err(error(format!("{at}.region"), "is required"))
            }
            _ => Ok(settings),
        }
    }
}

/// Deserializes `value` as `T`, naming the failing key below `at`.
fn typed_value<T: serde::de::DeserializeOwned>(value: &Value, at: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let key = match (at.is_empty(), inner.as_str()) {
            (true, ".") => "(top level)".to_owned(),
            (true, _) => inner.clone(),
            (false, ".") => at.to_owned(),
            (false, _) => format!("{at}.{inner}"),
        };
        error(key, e.into_inner().to_string())
    })
}

/// Every documented scalar key with the JSON type its value takes
/// (`instances` is configured in the file only).
fn documented_keys() -> Vec<(&'static str, Kind)> {
    use Kind::{Bool, Port, Text};
    vec![
        ("licenseKey", Text),
        ("governanceDashboard.server.url", Text),
        ("governanceDashboard.server.tls.enabled", Bool),
        ("governanceDashboard.server.tls.caCertPath", Text),
        ("governanceDashboard.server.tls.clientCertPath", Text),
        ("governanceDashboard.server.tls.clientKeyPath", Text),
        ("governanceDashboard.server.tls.insecureSkipVerify", Bool),
        ("governanceDashboard.auth.token", Text),
        ("logLevel", Text),
        ("healthProbe.server.port", Port),
        ("rpc.keepalive.enabled", Bool),
        ("rpc.keepalive.time", Text),
        ("rpc.keepalive.timeout", Text),
        ("rpc.keepalive.permitWithoutStream", Bool),
        ("leaderElection.enabled", Bool),
        ("leaderElection.leaseName", Text),
        ("leaderElection.leaseNamespace", Text),
        ("leaderElection.leaseDuration", Text),
        ("leaderElection.renewDeadline", Text),
        ("leaderElection.retryPeriod", Text),
    ]
}

/// How an environment value is typed.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Text,
    Bool,
    Port,
}

fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_' && *c != '.')
        .flat_map(char::to_uppercase)
        .collect()
}

/// The variable's key and typed value, or an error naming the variable.
fn env_override(var: &str, raw: &str) -> Result<(&'static str, Value), ConfigError> {
    let name = var
        .strip_prefix(ENV_PREFIX)
        .or_else(|| var.strip_prefix(ALIAS_PREFIX))
        .unwrap_or(var);
    let (key, kind) = documented_keys()
        .into_iter()
        .find(|(key, _)| squash(key) == squash(name))
        .ok_or_else(|| error(var, "is not a setting of the agent"))?;
    let value = match kind {
        Kind::Text => Value::String(raw.to_owned()),
        Kind::Bool => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Value::Bool(true),
            "false" | "0" | "no" => Value::Bool(false),
            _ => return Err(error(var, format!("{raw:?} is not true or false"))),
        },
        Kind::Port => raw
            .parse::<u16>()
            .map(Value::from)
            .map_err(|_| error(var, format!("{raw:?} is not a port number")))?,
    };
    Ok((key, value))
}

fn set_path(root: &mut Value, key: &str, value: Value) {
    let mut node = root;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let map = node.as_object_mut().expect("made an object above");
        if parts.peek().is_none() {
            map.insert(part.to_owned(), value);
            return;
        }
        node = map
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Loads the configuration from the file's text (`None`: no file) and the
/// environment. `MERIDIAN_AGENT_` variables win over their `TYK_AGENT_`
/// aliases, and both over the file. `POD_NAME` and `POD_NAMESPACE` are read
/// when leader election is enabled.
pub fn from_sources(
    file: Option<(&str, &str)>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<AgentConfig, ConfigError> {
    let mut root = match file {
        None => Value::Object(Map::new()),
        Some((name, text)) => {
            let value: Value = serde_yaml::from_str(text)
                .map_err(|e| error(name, format!("not valid YAML: {e}")))?;
            if value.is_null() {
                Value::Object(Map::new())
            } else {
                value
            }
        }
    };
    let vars: BTreeMap<String, String> = vars.into_iter().collect();
    // Aliases first, so the Meridian names override them.
    for prefix in [ALIAS_PREFIX, ENV_PREFIX] {
        for (var, raw) in vars
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && *k != CONFIG_PATH_VAR)
        {
            let (key, value) = env_override(var, raw)?;
            set_path(&mut root, key, value);
        }
    }
    let config: AgentConfig = typed_value(&root, "")?;
    validate(&config, &vars)?;
    Ok(config)
}

/// Reads `path` (if any) and the process environment.
pub fn load(path: Option<&std::path::Path>) -> Result<AgentConfig, ConfigError> {
    let text = match path {
        None => None,
        Some(p) => Some((
            p.display().to_string(),
            std::fs::read_to_string(p)
                .map_err(|e| error(p.display().to_string(), format!("cannot read: {e}")))?,
        )),
    };
    from_sources(
        text.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
        std::env::vars(),
    )
}

fn validate(config: &AgentConfig, vars: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    if config.governance_dashboard.server.url.trim().is_empty() {
        return Err(error("governanceDashboard.server.url", "is required"));
    }
    if config.governance_dashboard.auth.token.expose().is_empty() {
        return Err(error("governanceDashboard.auth.token", "is required"));
    }
    let tls = &config.governance_dashboard.server.tls;
    if !tls.enabled
        && config
            .governance_dashboard
            .server
            .url
            .trim()
            .starts_with("https://")
    {
        return Err(error(
            "governanceDashboard.server.tls.enabled",
            "the hub URL is https:// but TLS is off; set tls.enabled: true",
        ));
    }
    if tls.client_cert_path.is_some() != tls.client_key_path.is_some() {
        return Err(error(
            "governanceDashboard.server.tls",
            "clientCertPath and clientKeyPath go together (mTLS needs both)",
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, instance) in config.instances.iter().enumerate() {
        meridian_schemas::streams::validate_provider_name(&instance.name)
            .map_err(|why| error(format!("instances[{i}].name"), why.to_string()))?;
        if !names.insert(instance.name.as_str()) {
            return Err(error(
                format!("instances[{i}].name"),
                format!("{:?} is used by another instance", instance.name),
            ));
        }
        ProviderSettings::parse(i, instance)?;
    }
    let le = &config.leader_election;
    if le.enabled {
        for var in ["POD_NAME", "POD_NAMESPACE"] {
            if vars.get(var).is_none_or(|v| v.is_empty()) {
                return Err(error(
                    "leaderElection.enabled",
                    format!("leader election needs {var} (set it from the downward API)"),
                ));
            }
        }
        if le.renew_deadline.0 >= le.lease_duration.0 {
            return Err(error(
                "leaderElection.renewDeadline",
                "must be shorter than leaseDuration",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the governance agent's documentation, whole.
    const DOCUMENTED: &str = r#"
governanceDashboard:
  server:
    url: "your-governance-instance.tyk.io:50051"
  auth:
    token: "your-agent-token"

# Log level (debug, info, warn, error)
logLevel: info

healthProbe:
  server:
    port: 5959

instances:
  - name: "tyk-provider"
    type: "tyk"
    config:
      host: "http://dashboard:3000"
      auth: "your-tyk-api-key"

  - name: "aws-provider"
    type: "aws"
    config:
      accessKeyId: "your-aws-access-key-id"
      accessKeySecret: "your-aws-access-key-secret"
      region: "us-east-1"
      sessionToken: "your-aws-session-token"

rpc:
  keepalive:
    enabled: true
    time: 30s
    timeout: 20s
    permitWithoutStream: true

leaderElection:
  enabled: true
  leaseName: "governance-agent-lock"
  leaseNamespace: ""
  leaseDuration: "15s"
  renewDeadline: "10s"
  retryPeriod: "2s"
"#;

    fn pod() -> Vec<(String, String)> {
        vec![
            ("POD_NAME".into(), "agent-0".into()),
            ("POD_NAMESPACE".into(), "gov".into()),
        ]
    }

    fn with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars = pod();
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        vars
    }

    fn load(text: &str, vars: Vec<(String, String)>) -> Result<AgentConfig, ConfigError> {
        from_sources(Some(("agent-config.yaml", text)), vars)
    }

    #[test]
    fn a_meridian_provider_needs_its_url_and_secret() {
        let yaml = |config: &str| {
            format!(
                "governanceDashboard:\n  server:\n    url: \"hub:50051\"\n  auth:\n    token: \"t\"\n\
                 instances:\n  - name: \"gateway\"\n    type: \"meridian\"\n    config:\n{config}"
            )
        };
        let c = load(
            &yaml("      url: \"http://hub:8000\"\n      secret: \"gateway-secret-0123\"\n"),
            pod(),
        )
        .unwrap();
        assert!(matches!(
            ProviderSettings::parse(0, &c.instances[0]).unwrap(),
            ProviderSettings::Meridian(m) if m.url == "http://hub:8000" && m.secret.expose() == "gateway-secret-0123"
        ));
        let missing = load(&yaml("      url: \"http://hub:8000\"\n"), pod()).unwrap_err();
        assert_eq!(missing.key, "instances[0].config", "{missing:?}");
        assert!(missing.message.contains("secret"), "{missing:?}");
        let empty = load(&yaml("      url: \"\"\n      secret: \"s\"\n"), pod()).unwrap_err();
        assert_eq!(empty.key, "instances[0].config.url");
    }

    #[test]
    fn the_documented_example_loads() {
        let c = load(DOCUMENTED, pod()).unwrap();
        assert_eq!(
            c.governance_dashboard.server.url,
            "your-governance-instance.tyk.io:50051"
        );
        assert_eq!(
            c.governance_dashboard.auth.token.expose(),
            "your-agent-token"
        );
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.health_probe.server.port, 5959);
        assert_eq!(c.instances.len(), 2);
        assert!(
            matches!(ProviderSettings::parse(0, &c.instances[0]).unwrap(), ProviderSettings::Tyk(t) if t.host == "http://dashboard:3000")
        );
        match ProviderSettings::parse(1, &c.instances[1]).unwrap() {
            ProviderSettings::Aws(a) => {
                assert_eq!(a.region, "us-east-1");
                assert_eq!(a.session_token.unwrap().expose(), "your-aws-session-token");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.rpc.keepalive.time.0, Duration::from_secs(30));
        assert!(c.leader_election.enabled);
        assert_eq!(c.leader_election.retry_period.0, Duration::from_secs(2));
        // Secrets never show in Debug output.
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("your-agent-token") && !shown.contains("your-aws-access-key-secret")
        );
    }

    #[test]
    fn defaults_apply_when_keys_are_absent() {
        let c = from_sources(
            None,
            with(&[
                ("MERIDIAN_AGENT_GOVERNANCEDASHBOARD_SERVER_URL", "hub:50051"),
                ("MERIDIAN_AGENT_GOVERNANCEDASHBOARD_AUTH_TOKEN", "t"),
            ]),
        )
        .unwrap();
        assert_eq!(c.health_probe.server.port, 5959);
        assert!(c.rpc.keepalive.enabled && c.rpc.keepalive.permit_without_stream);
        assert_eq!(c.rpc.keepalive.timeout.0, Duration::from_secs(20));
        assert!(!c.leader_election.enabled);
        assert_eq!(c.leader_election.lease_name, "governance-agent-lock");
        assert_eq!(c.leader_election.lease_duration.0, Duration::from_secs(15));
        assert_eq!(c.leader_election.renew_deadline.0, Duration::from_secs(10));
        assert!(!c.governance_dashboard.server.tls.enabled);
        assert!(c.instances.is_empty());
    }

    #[test]
    fn every_documented_key_can_be_overridden_by_its_variable_and_its_alias() {
        let samples = [
            ("LICENSEKEY", "lk"),
            ("GOVERNANCEDASHBOARD_SERVER_URL", "other:1"),
            ("GOVERNANCEDASHBOARD_SERVER_TLS_ENABLED", "true"),
            ("GOVERNANCEDASHBOARD_SERVER_TLS_CACERTPATH", "/ca.pem"),
            ("GOVERNANCEDASHBOARD_SERVER_TLS_CLIENTCERTPATH", "/c.pem"),
            ("GOVERNANCEDASHBOARD_SERVER_TLS_CLIENTKEYPATH", "/k.pem"),
            ("GOVERNANCEDASHBOARD_SERVER_TLS_INSECURESKIPVERIFY", "true"),
            ("GOVERNANCEDASHBOARD_AUTH_TOKEN", "from-env"),
            ("LOGLEVEL", "debug"),
            ("HEALTHPROBE_SERVER_PORT", "6060"),
            ("RPC_KEEPALIVE_ENABLED", "false"),
            ("RPC_KEEPALIVE_TIME", "1m"),
            ("RPC_KEEPALIVE_TIMEOUT", "5s"),
            ("RPC_KEEPALIVE_PERMITWITHOUTSTREAM", "false"),
            ("LEADERELECTION_ENABLED", "false"),
            ("LEADERELECTION_LEASENAME", "lock"),
            ("LEADERELECTION_LEASENAMESPACE", "ns"),
            ("LEADERELECTION_LEASEDURATION", "30s"),
            ("LEADERELECTION_RENEWDEADLINE", "20s"),
            ("LEADERELECTION_RETRYPERIOD", "3s"),
        ];
        assert_eq!(
            samples.len(),
            documented_keys().len(),
            "a documented key has no sample"
        );
        for prefix in [ENV_PREFIX, ALIAS_PREFIX] {
            let vars: Vec<(String, String)> = samples
                .iter()
                .map(|(k, v)| (format!("{prefix}{k}"), (*v).to_owned()))
                .collect();
            let c = load(DOCUMENTED, vars).unwrap();
            let tls = &c.governance_dashboard.server.tls;
            assert_eq!(c.license_key.as_ref().unwrap().expose(), "lk");
            assert_eq!(c.governance_dashboard.server.url, "other:1");
            assert!(tls.enabled && tls.insecure_skip_verify);
            assert_eq!(tls.ca_cert_path.as_deref(), Some("/ca.pem"));
            assert_eq!(tls.client_cert_path.as_deref(), Some("/c.pem"));
            assert_eq!(tls.client_key_path.as_deref(), Some("/k.pem"));
            assert_eq!(c.governance_dashboard.auth.token.expose(), "from-env");
            assert_eq!(c.log_level, LogLevel::Debug);
            assert_eq!(c.health_probe.server.port, 6060);
            let k = &c.rpc.keepalive;
            assert!(!k.enabled && !k.permit_without_stream);
            assert_eq!(
                (k.time.0, k.timeout.0),
                (Duration::from_secs(60), Duration::from_secs(5))
            );
            let le = &c.leader_election;
            assert!(!le.enabled);
            assert_eq!(
                (le.lease_name.as_str(), le.lease_namespace.as_str()),
                ("lock", "ns")
            );
            assert_eq!(
                (le.lease_duration.0, le.renew_deadline.0, le.retry_period.0),
                (
                    Duration::from_secs(30),
                    Duration::from_secs(20),
                    Duration::from_secs(3)
                )
            );
        }
    }

    #[test]
    fn meridian_names_win_over_aliases_and_strings_stay_strings() {
        let c = load(
            DOCUMENTED,
            with(&[
                ("TYK_AGENT_GOVERNANCEDASHBOARD_AUTH_TOKEN", "alias"),
                ("MERIDIAN_AGENT_GOVERNANCEDASHBOARD_AUTH_TOKEN", "12345"),
            ]),
        )
        .unwrap();
        assert_eq!(c.governance_dashboard.auth.token.expose(), "12345");
    }

    #[test]
    fn each_kind_of_bad_config_names_the_key() {
        type Vars = Vec<(String, String)>;
        let cases: Vec<(String, Vars, &str)> = vec![
            (
                "governanceDashboard: [unclosed".into(),
                pod(),
                "agent-config.yaml",
            ),
            (
                DOCUMENTED.replace("logLevel: info", "logLevel: info\ncolour: red"),
                pod(),
                "colour",
            ),
            (
                DOCUMENTED.replace("type: \"aws\"", "type: \"gcp\""),
                pod(),
                "instances[1].type",
            ),
            (
                DOCUMENTED.replace("      region: \"us-east-1\"\n", ""),
                pod(),
                "instances[1].config",
            ),
            (
                DOCUMENTED.replace("      host: \"http://dashboard:3000\"\n", ""),
                pod(),
                "instances[0].config",
            ),
            (
                DOCUMENTED.replace("time: 30s", "time: soon"),
                pod(),
                "rpc.keepalive.time",
            ),
            (
                DOCUMENTED.replace("leaseDuration: \"15s\"", "leaseDuration: \"-15s\""),
                pod(),
                "leaderElection.leaseDuration",
            ),
            (
                DOCUMENTED.replace("    token: \"your-agent-token\"\n", ""),
                pod(),
                "governanceDashboard.auth",
            ),
            (
                DOCUMENTED.replace("name: \"aws-provider\"", "name: \"tyk-provider\""),
                pod(),
                "instances[1].name",
            ),
            (
                DOCUMENTED.replace("name: \"aws-provider\"", "name: \"aws\\tprovider\""),
                pod(),
                "instances[1].name",
            ),
            (DOCUMENTED.to_owned(), vec![], "leaderElection.enabled"),
            (
                DOCUMENTED.replace(
                    "url: \"your-governance-instance.tyk.io:50051\"",
                    "url: \"https://hub.example.com\"",
                ),
                pod(),
                "governanceDashboard.server.tls.enabled",
            ),
            (
                DOCUMENTED.replace("port: 5959", "port: 99999"),
                pod(),
                "healthProbe.server.port",
            ),
            (
                DOCUMENTED.to_owned(),
                with(&[("MERIDIAN_AGENT_RPC_KEEPALIVE_ENABLED", "maybe")]),
                "MERIDIAN_AGENT_RPC_KEEPALIVE_ENABLED",
            ),
            (
                DOCUMENTED.to_owned(),
                with(&[("TYK_AGENT_HEALTHPROBE_SERVER_PORT", "x")]),
                "TYK_AGENT_HEALTHPROBE_SERVER_PORT",
            ),
            (
                DOCUMENTED.to_owned(),
                with(&[("MERIDIAN_AGENT_FAVOURITE_COLOUR", "red")]),
                "MERIDIAN_AGENT_FAVOURITE_COLOUR",
            ),
            (
                DOCUMENTED.to_owned(),
                with(&[("MERIDIAN_AGENT_LOGLEVEL", "chatty")]),
                "logLevel",
            ),
        ];
        for (text, vars, key) in cases {
            let err = load(&text, vars).unwrap_err();
            assert!(err.key.starts_with(key), "expected {key}, got {err}");
        }
        // Names as users write them are fine.
        let named = DOCUMENTED
            .replace("name: \"tyk-provider\"", "name: \"tyk.eu prod\"")
            .replace("name: \"aws-provider\"", "name: \"Production APIs\"");
        let c = load(&named, pod()).unwrap();
        assert_eq!(c.instances[0].name, "tyk.eu prod");
    }
}
