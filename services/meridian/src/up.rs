//! `meridian up`: NATS, every hub service, a demo provider and a demo agent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meridian_kit::CancellationToken;
use meridian_kit::nats_server::{self, NatsServer};

use crate::demo_provider::{self, DemoProvider};
use crate::hub::{self, HubConfig};
use meridian_agent::providers::ProviderConfig;
use meridian_agent::providers::tyk::{MeridianGateway, TykDashboard};
use meridian_agent::session::{self, SessionConfig};

/// Options of `meridian up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Use this NATS server instead of starting one.
    #[arg(long, env = "MERIDIAN_NATS_URL")]
    pub nats_url: Option<String>,
    /// Where NATS data, the repository and generated secrets live.
    #[arg(long, default_value = ".meridian")]
    pub data_dir: PathBuf,
    /// REST address of the hub.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub http: String,
    /// gRPC address for agents.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub grpc: String,
    /// The gateway's data plane: where API clients send their requests.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway: String,
    /// Do not start the demo provider and agent.
    #[arg(long)]
    pub no_demo: bool,
}

fn random_hex() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A secret kept in `data_dir/name`, created on first use (mode 0600).
fn persistent_secret(data_dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = data_dir.join(name);
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let secret = random_hex();
    std::fs::write(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(secret)
}

/// Runs everything until Ctrl-C.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let mut _nats_child = None;
    let nats_url = match &args.nats_url {
        Some(url) => url.clone(),
        None => {
            let port = (!nats_server::port_taken(4222)).then_some(4222);
            let server = NatsServer::start(port, Some(args.data_dir.join("nats")))?;
            tracing::info!(url = %server.url, store = %server.store_dir.display(), "started nats-server");
            let url = server.url.clone();
            _nats_child = Some(server);
            url
        }
    };
    // Generated once and kept, like the token-signing secret: a restart
    // keeps the key the user exported.
    let (api_key, generated) = match std::env::var(meridian_kit::config::API_KEY_VAR) {
        Ok(k) if !k.is_empty() => (k, false),
        _ => (persistent_secret(&args.data_dir, ADMIN_KEY_FILE)?, true),
    };
    let jwt_secret = persistent_secret(&args.data_dir, "jwt-secret")?;
    let (gateway_secret, secret_source) = gateway_secret(&args.data_dir)?;
    let stop = meridian_kit::shutdown::on_signal();
    let config = HubConfig {
        nats_url: nats_url.clone(),
        data_dir: args.data_dir.clone(),
        api_key: api_key.clone(),
        jwt_secret,
        gateway_secret: gateway_secret.clone(),
        http_addr: args.http.clone(),
        grpc_addr: args.grpc.clone(),
        gateway_addr: args.gateway.clone(),
        heartbeat_interval: Duration::from_secs(10),
    };
    let running = hub::start(config, stop.clone()).await?;
    let hub_url = format!("http://{}", running.http_addr);
    println!("\nMeridian hub is up");
    println!("  REST API   {hub_url}   (docs: {hub_url}/api/docs)");
    println!("  agents     {} (gRPC)", running.grpc_addr);
    println!(
        "  gateway    http://{}   (API traffic; definitions at {hub_url}/tyk/apis)",
        running.gateway_addr
    );
    println!("  NATS       {nats_url}");
    if generated {
        let kept = args.data_dir.join(ADMIN_KEY_FILE);
        println!(
            "  admin key  {api_key}   (generated once, kept in {}; set MERIDIAN_API_KEY to choose one)",
            kept.display()
        );
        println!("\n  export MERIDIAN_API_KEY={api_key}");
    } else {
        println!("  admin key  from MERIDIAN_API_KEY");
    }
    match secret_source {
        Some(var) => println!("  Tyk Gateway API  {hub_url}/tyk/   (secret from {var})"),
        None => println!(
            "  Tyk Gateway API  {hub_url}/tyk/   x-tyk-authorization: {gateway_secret}   (generated once, kept in {}; set {GATEWAY_SECRET_VAR} to choose one)",
            args.data_dir.join(GATEWAY_SECRET_FILE).display()
        ),
    }
    if !args.no_demo {
        let demo = start_demo(
            &hub_url,
            &api_key,
            &running.grpc_addr.to_string(),
            &gateway_secret,
            &args.data_dir,
            stop.clone(),
        )
        .await
        .context("starting the demo provider and agent")?;
        println!(
            "  demo       provider {} with {} APIs, {DEMO_GATEWAY_API} on the gateway's /demo/, agent {}",
            demo.0,
            demo_provider::sample_apis().len(),
            demo.1
        );
        let portal = demo_portal(
            &hub_url,
            &api_key,
            &gateway_secret,
            &format!("http://{}", running.gateway_addr),
        )
        .await
        .context("setting up the demo portal provider")?;
        println!(
            "  portal     provider {DEMO_PORTAL_PROVIDER} (this hub's key-issuer): {portal}   ({hub_url}/portal-api/products)"
        );
        println!("\n  try: scripts/meridian apis list");
    }
    println!("\nCtrl-C stops everything.\n");
    let _running_marker = RunningMarker::write(&args.data_dir, &nats_url)?;
    let outcome = running.run_until_stopped(Duration::from_secs(15)).await;
    drop(_nats_child);
    match &outcome {
        Ok(()) => tracing::info!("Meridian hub stopped"),
        Err(e) => tracing::error!(error = %e, "Meridian hub stopped after a failure"),
    }
    outcome
}

/// Where the generated admin key is kept in the data directory.
const ADMIN_KEY_FILE: &str = "admin-key";

/// Where the generated Gateway API secret is kept in the data directory.
const GATEWAY_SECRET_FILE: &str = "gateway-secret";

/// The variable that chooses the Gateway API secret (`x-tyk-authorization`).
pub const GATEWAY_SECRET_VAR: &str = "MERIDIAN_GATEWAY_SECRET";

/// Tyk's own variable for it, accepted too so a Tyk setup moves over.
pub const TYK_SECRET_VAR: &str = "TYK_GW_SECRET";

/// The Gateway API secret: `MERIDIAN_GATEWAY_SECRET`, else `TYK_GW_SECRET`
/// (and which one), else one generated once and kept in the data directory.
fn gateway_secret(data_dir: &Path) -> anyhow::Result<(String, Option<&'static str>)> {
    for var in [GATEWAY_SECRET_VAR, TYK_SECRET_VAR] {
        if let Ok(secret) = std::env::var(var)
            && !secret.is_empty()
        {
            return Ok((secret, Some(var)));
        }
    }
    Ok((persistent_secret(data_dir, GATEWAY_SECRET_FILE)?, None))
}

/// While the hub runs, `data_dir/nats-url` names its NATS, so that
/// `meridian rebuild` can tell a running hub (which holds the repository)
/// from a stopped one. Removed when the hub stops.
pub const NATS_URL_FILE: &str = "nats-url";

struct RunningMarker(PathBuf);

impl RunningMarker {
    fn write(data_dir: &Path, nats_url: &str) -> anyhow::Result<Self> {
        let path = data_dir.join(NATS_URL_FILE);
        std::fs::write(&path, nats_url).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for RunningMarker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts the demo provider and the demo agent (registered through the REST
/// API like any other agent; its id is kept in `data_dir/demo-agent-id`).
/// The agent reports two providers: the demo Tyk Dashboard, and the hub's
/// own gateway (given one keyless API in front of the demo provider, the
/// first time).
async fn start_demo(
    hub_url: &str,
    api_key: &str,
    grpc: &str,
    gateway_secret: &str,
    data_dir: &Path,
    stop: CancellationToken,
) -> anyhow::Result<(String, String)> {
    let provider_key = random_hex();
    let provider = DemoProvider::new(demo_provider::sample_apis(), &provider_key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let provider_url = format!("http://{}", listener.local_addr()?);
    let router = provider.router();
    let s = stop.clone();
    tokio::spawn(async move { meridian_kit::http::serve(listener, router, s).await });

    let client = crate::cli::Client::new(hub_url, api_key);
    let id_file = data_dir.join("demo-agent-id");
    let existing = std::fs::read_to_string(&id_file)
        .ok()
        .map(|s| s.trim().to_owned());
    let agent_id = match existing {
        Some(id) if client.get(&format!("/api/agents/{id}")).await.is_ok() => id,
        _ => {
            let created = client
                .post("/api/agents/", &serde_json::json!({"name": "demo-agent", "description": "started by meridian up"}))
                .await?;
            let id = created["id"]
                .as_str()
                .context("no id in the created agent")?
                .to_owned();
            std::fs::write(&id_file, &id)?;
            id
        }
    };
    let token = client
        .post(
            "/api/auth/token/",
            &serde_json::json!({"agent_id": agent_id}),
        )
        .await?;
    let token = token["token"]
        .as_str()
        .context("no token in the answer")?
        .to_owned();
    let source = TykDashboard {
        host: provider_url.clone(),
        key: provider_key,
        http: reqwest::Client::new(),
    };
    demo_gateway_api(hub_url, gateway_secret, &provider_url).await?;
    let gateway = MeridianGateway {
        url: hub_url.to_owned(),
        secret: gateway_secret.to_owned(),
        http: reqwest::Client::new(),
    };
    let config = SessionConfig::new(
        &format!("http://{grpc}"),
        &token,
        vec![
            ProviderConfig {
                name: "demo-tyk".into(),
                provider_type: "tyk".into(),
                source: Arc::new(source),
            },
            ProviderConfig {
                name: "meridian-gateway".into(),
                provider_type: "meridian".into(),
                source: Arc::new(gateway),
            },
        ],
    );
    tokio::spawn(session::run_until_stopped(config, stop));
    Ok((provider_url, agent_id))
}

/// The id of the API `meridian up` defines on its gateway.
pub const DEMO_GATEWAY_API: &str = "demo-catalogue";

/// Defines (or redefines) the demo API on the hub's gateway: keys required
/// (the README's first example makes one, and the portal's demo Product
/// grants it), `/demo/` in front of the demo provider.
async fn demo_gateway_api(hub_url: &str, secret: &str, provider_url: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("{hub_url}/tyk/apis/{DEMO_GATEWAY_API}");
    let existing = http
        .get(&url)
        .header("x-tyk-authorization", secret)
        .send()
        .await?;
    let definition = serde_json::json!({
        "api_id": DEMO_GATEWAY_API,
        "name": "Demo catalogue",
        "org_id": "demo-org",
        "use_keyless": false,
        "proxy": {"listen_path": "/demo/", "target_url": provider_url, "strip_listen_path": true},
        "version_data": {"not_versioned": true, "versions": {"Default": {"name": "Default"}}},
    });
    // The demo provider listens on a new port at each start: replace the
    // definition kept from the last run.
    let request = if existing.status().is_success() {
        http.put(&url)
    } else {
        http.post(format!("{hub_url}/tyk/apis"))
    };
    let created = request
        .header("x-tyk-authorization", secret)
        .json(&definition)
        .send()
        .await?;
    anyhow::ensure!(
        created.status().is_success(),
        "defining the demo API on the gateway: {}",
        created.text().await.unwrap_or_default()
    );
    Ok(())
}

/// The name of the portal provider `meridian up` connects to its own
/// key-issuer.
pub const DEMO_PORTAL_PROVIDER: &str = "meridian-hub";

/// The developer portal's demo: two policies tagged `portal` in the hub's
/// key-issuer (access to the demo API, and a free limit), the hub itself
/// as a `meridian` portal provider (the first time), and one sync, so the
/// portal shows a Product and a Plan. Returns the sync's counts.
async fn demo_portal(
    hub_url: &str,
    api_key: &str,
    gateway_secret: &str,
    gateway_url: &str,
) -> anyhow::Result<String> {
    let http = reqwest::Client::new();
    let policies = [
        serde_json::json!({"id": "demo-portal-access", "name": "Demo catalogue access",
            "tags": ["portal"], "active": true, "partitions": {"acl": true},
            "access_rights": {DEMO_GATEWAY_API: {"api_id": DEMO_GATEWAY_API,
                "api_name": "Demo catalogue", "versions": ["Default"]}}}),
        serde_json::json!({"id": "demo-portal-free", "name": "Free", "tags": ["portal"],
            "active": true, "partitions": {"rate_limit": true, "quota": true},
            "rate": 10, "per": 1, "quota_max": -1}),
    ];
    for policy in policies {
        let id = policy["id"].as_str().unwrap_or_default();
        let answer = http
            .put(format!("{hub_url}/tyk/policies/{id}"))
            .header("x-tyk-authorization", gateway_secret)
            .json(&policy)
            .send()
            .await?;
        anyhow::ensure!(
            answer.status().is_success(),
            "storing the demo policy {id}: {}",
            answer.text().await.unwrap_or_default()
        );
    }
    let client = crate::cli::Client::new(hub_url, api_key);
    let providers = client.get("/portal-api/providers").await?;
    let existing = providers.as_array().and_then(|all| {
        all.iter()
            .find(|p| p["name"] == DEMO_PORTAL_PROVIDER)
            .and_then(|p| p["id"].as_str().map(str::to_owned))
    });
    let id = match existing {
        Some(id) => id,
        None => client
            .post(
                "/portal-api/providers",
                &serde_json::json!({"name": DEMO_PORTAL_PROVIDER, "type": "meridian",
                    "url": hub_url, "secret": gateway_secret, "policy_tags": "portal",
                    "baseline_url": gateway_url}),
            )
            .await?["id"]
            .as_str()
            .context("no id in the created provider")?
            .to_owned(),
    };
    let report = client
        .put(
            &format!("/portal-api/providers/{id}/synchronize"),
            &serde_json::Value::Null,
        )
        .await?;
    let report = &report["providers"][0];
    anyhow::ensure!(
        report["status"] == "ok",
        "the demo portal sync failed: {}",
        report["reason"]
    );
    let products = client.get("/portal-api/products").await?;
    let plans = client.get("/portal-api/plans").await?;
    let count = |v: &serde_json::Value| v.as_array().map_or(0, Vec::len);
    Ok(format!(
        "{} Products, {} Plans",
        count(&products),
        count(&plans)
    ))
}
