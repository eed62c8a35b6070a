//! `meridian`: run the hub for development, or talk to a running hub.

use clap::{Parser, Subcommand};
use meridian::cli::{self, AgentsCmd, ApisCmd, Client};
use meridian::route;
use meridian::up::{self, UpArgs};

#[derive(Parser)]
#[command(version, about = "Meridian: a federated API governance hub")]
struct Cli {
    /// The hub's REST URL.
    #[arg(
        long,
        global = true,
        env = "MERIDIAN_HUB_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    hub: String,
    /// The admin key.
    #[arg(
        long,
        global = true,
        env = "MERIDIAN_API_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    api_key: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run NATS, every hub service, a demo provider and a demo agent.
    Up(UpArgs),
    /// Manage agents and their tokens.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Browse the API Repository.
    #[command(subcommand)]
    Apis(ApisCmd),
    /// Providers with API counts, agent status and last sync.
    Providers,
    /// Scheduled syncs of an agent's providers.
    #[command(subcommand)]
    Jobs(cli::JobsCmd),
    /// Follow the public events (API lifecycle, agent status).
    #[command(subcommand)]
    Events(meridian::events::EventsCmd),
    /// Serve the hub URL in front of separately run services (compose,
    /// Kubernetes): requests go to the service whose OpenAPI paths match.
    Route {
        /// Where to listen.
        #[arg(long, env = "MERIDIAN_ROUTE_LISTEN", default_value = "127.0.0.1:8000")]
        listen: String,
        /// agent-gateway's REST URL.
        #[arg(
            long,
            env = "MERIDIAN_ROUTE_GATEWAY",
            default_value = "http://127.0.0.1:8081"
        )]
        gateway: String,
        /// inventory's REST URL.
        #[arg(
            long,
            env = "MERIDIAN_ROUTE_INVENTORY",
            default_value = "http://127.0.0.1:8082"
        )]
        inventory: String,
        /// scheduler's REST URL.
        #[arg(
            long,
            env = "MERIDIAN_ROUTE_SCHEDULER",
            default_value = "http://127.0.0.1:8083"
        )]
        scheduler: String,
        /// key-issuer's REST URL (the Tyk Gateway API's keys, policies,
        /// organisations and OAuth clients).
        #[arg(
            long,
            env = "MERIDIAN_ROUTE_KEY_ISSUER",
            default_value = "http://127.0.0.1:8084"
        )]
        key_issuer: String,
        /// The proxy's admin URL (the Tyk Gateway API's API definitions,
        /// reload and `/hello`).
        #[arg(
            long,
            env = "MERIDIAN_ROUTE_PROXY",
            default_value = "http://127.0.0.1:8085"
        )]
        proxy: String,
        /// What agents connect to, shown by the web console in the
        /// `agent-config.yaml` it fills in (agent-gateway's gRPC address).
        #[arg(
            long,
            env = "MERIDIAN_ROUTE_AGENT_URL",
            default_value = "http://127.0.0.1:50051"
        )]
        agent_url: String,
        /// portal-sync's REST URL (the developer portal's `/portal-api/`).
        #[arg(
            long,
            env = "MERIDIAN_ROUTE_PORTAL_SYNC",
            default_value = "http://127.0.0.1:8086"
        )]
        portal_sync: String,
        /// NATS, where the web console records signed-out sessions so that
        /// every router replica refuses them.
        #[arg(
            long,
            env = "MERIDIAN_ROUTE_NATS_URL",
            default_value = "nats://127.0.0.1:4222"
        )]
        nats_url: String,
    },
    /// Bring a Tyk estate over: API definitions, policies and keys, from a
    /// tyk-sync dump, a gateway's folder or a live Tyk Gateway, into the
    /// hub's gateway and key-issuer. Idempotent; --dry-run shows the plan.
    Import {
        /// A tyk-sync dump folder (with .tyk.json), or a gateway's folder
        /// (apps/*.json, policies/policies.json).
        #[arg(
            required_unless_present = "from_gateway",
            conflicts_with = "from_gateway"
        )]
        folder: Option<std::path::PathBuf>,
        /// Read a live Tyk Gateway instead (its Gateway API URL).
        #[arg(long)]
        from_gateway: Option<String>,
        /// That gateway's secret (x-tyk-authorization).
        #[arg(
            long,
            env = "TYK_GW_SECRET",
            hide_env_values = true,
            default_value = ""
        )]
        from_secret: String,
        /// Keys from a JSON export: {"<key>": <session>, ...}.
        #[arg(long)]
        keys: Option<std::path::PathBuf>,
        /// Meridian's Gateway API secret.
        #[arg(
            long,
            env = "MERIDIAN_GATEWAY_SECRET",
            hide_env_values = true,
            default_value = ""
        )]
        secret: String,
        /// Print what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Serve a demo Tyk-Dashboard-compatible provider with sample APIs.
    DemoProvider {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: String,
        /// The dashboard key clients must send.
        #[arg(long, env = "MERIDIAN_DEMO_PROVIDER_KEY", default_value = "demo-key")]
        key: String,
    },
    /// Exit 0 when URL answers 2xx within 3 s (container health checks).
    Probe {
        /// The URL to GET.
        url: String,
    },
    /// Rebuild the API Repository from the log. Stop the hub first: the
    /// hub's own NATS is started on its data directory for the replay.
    Rebuild {
        /// Use this running NATS (a separately deployed hub) instead of
        /// starting the hub's own.
        #[arg(long, env = "MERIDIAN_NATS_URL")]
        nats_url: Option<String>,
        /// The hub's data directory.
        #[arg(long, default_value = ".meridian")]
        data_dir: std::path::PathBuf,
    },
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The servers log what they do; the other commands print answers.
    let level = if matches!(
        cli.command,
        Command::Up(_)
            | Command::Route { .. }
            | Command::DemoProvider { .. }
            | Command::Rebuild { .. }
    ) {
        "info"
    } else {
        "warn"
    };
    meridian_kit::telemetry::init_at("meridian", level);
    let client = || {
        if cli.api_key.is_empty() {
            anyhow::bail!("set MERIDIAN_API_KEY (or pass --api-key) to the hub's admin key");
        }
        Ok(Client::new(&cli.hub, &cli.api_key))
    };
    let outcome = match cli.command {
        Command::Up(args) => up::up(args).await,
        Command::Agents(cmd) => cli::agents(&client()?, cmd).await,
        Command::Apis(cmd) => cli::apis(&client()?, cmd).await,
        Command::Providers => cli::providers(&client()?).await,
        Command::Jobs(cmd) => cli::jobs(&client()?, cmd).await,
        Command::Events(cmd) => meridian::events::run(cmd).await,
        Command::Route {
            listen,
            gateway,
            inventory,
            scheduler,
            key_issuer,
            proxy,
            portal_sync,
            agent_url,
            nats_url,
        } => {
            let upstreams = [
                ("agent-gateway", gateway),
                ("inventory", inventory),
                ("scheduler", scheduler),
                ("key-issuer", key_issuer),
                ("proxy", proxy),
                ("portal-sync", portal_sync),
            ]
            .into_iter()
            .map(|(name, url)| route::Upstream {
                name: name.into(),
                url,
            })
            .collect();
            // The web console at `/`: it forwards to the routes with the
            // admin key and the Gateway API secret (MERIDIAN_GATEWAY_SECRET);
            // signed-out sessions are shared through NATS.
            let stop = meridian_kit::shutdown::on_signal();
            let console = if cli.api_key.is_empty() {
                None
            } else {
                let metrics = meridian_kit::metrics::Metrics::new();
                let sessions =
                    meridian::console::Sessions::start(&nats_url, &metrics, stop.clone())
                        .await
                        .map_err(|e| anyhow::anyhow!("the web console needs NATS: {e}"))?;
                Some(meridian::console::Console {
                    inner: axum::Router::new(),
                    api_key: cli.api_key.clone(),
                    gateway_secret: std::env::var("MERIDIAN_GATEWAY_SECRET")
                        .ok()
                        .filter(|s| !s.is_empty()),
                    agent_url,
                    sessions,
                })
            };
            route::serve(&listen, upstreams, console, stop).await
        }
        Command::Import {
            folder,
            from_gateway,
            from_secret,
            keys,
            secret,
            dry_run,
        } => {
            if secret.is_empty() {
                anyhow::bail!(
                    "set MERIDIAN_GATEWAY_SECRET (or pass --secret): the import writes through the Gateway API"
                );
            }
            let source = match (folder, from_gateway) {
                (Some(dir), _) => meridian::import::Source::Folder(dir),
                (None, Some(url)) => meridian::import::Source::Gateway {
                    url,
                    secret: from_secret,
                },
                (None, None) => anyhow::bail!("name a folder or --from-gateway URL"),
            };
            let import = meridian::import::Import {
                source,
                keys_file: keys,
                hub: cli.hub.clone(),
                secret,
                dry_run,
            };
            let report = meridian::import::run(&import).await?;
            print!("{}", report.summary(dry_run));
            if report.refused() > 0 {
                anyhow::bail!(
                    "{} item(s) were not imported (named above)",
                    report.refused()
                );
            }
            Ok(())
        }
        Command::DemoProvider { listen, key } => {
            let provider = meridian::demo_provider::DemoProvider::new(
                meridian::demo_provider::sample_apis(),
                &key,
            );
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            tracing::info!(addr = %listener.local_addr()?, "demo provider listening");
            meridian_kit::http::serve(
                listener,
                provider.router(),
                meridian_kit::shutdown::on_signal(),
            )
            .await?;
            Ok(())
        }
        Command::Probe { url } => {
            let answer = reqwest::Client::new()
                .get(&url)
                .timeout(std::time::Duration::from_secs(3))
                .send()
                .await;
            match answer {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => anyhow::bail!("{url}: {}", r.status()),
                Err(e) => anyhow::bail!("{url}: {e}"),
            }
        }
        Command::Rebuild {
            nats_url,
            ref data_dir,
        } => match meridian::rebuild::rebuild(nats_url, data_dir).await {
            Ok(report) => {
                println!("{report}");
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    meridian_kit::telemetry::shutdown();
    outcome
}
