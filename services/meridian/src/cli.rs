//! The `meridian` commands that call the hub's REST API.

use anyhow::{Context, bail};
use serde_json::Value;

/// A REST client for the hub.
#[derive(Clone)]
pub struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    /// For the hub at `base` with the admin key.
    pub fn new(base: &str, key: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = req
            .header("x-api-key", &self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach the hub at {}", self.base))?;
        let status = response.status();
        let text = response.text().await?;
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let message = body["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| body.to_string());
            bail!("{} ({status})", message);
        }
        Ok(body)
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// GET with query parameters.
    pub async fn get_query(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)).query(query))
            .await
    }

    /// POST JSON.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// PUT JSON.
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }
}

/// `meridian agents ...`
#[derive(clap::Subcommand, Debug)]
pub enum AgentsCmd {
    /// List agents.
    List,
    /// Register an agent.
    Create {
        /// Name.
        name: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Show one agent.
    Get {
        /// Agent id.
        id: String,
    },
    /// Rename or re-describe an agent.
    Update {
        /// Agent id.
        id: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New description.
        #[arg(long)]
        description: Option<String>,
    },
    /// Remove an agent (revokes its token).
    Delete {
        /// Agent id.
        id: String,
    },
    /// Issue a token (revokes the previous one).
    Token {
        /// Agent id.
        id: String,
    },
    /// Revoke the agent's token.
    Revoke {
        /// Agent id.
        id: String,
    },
    /// Ask the agent to sync now.
    Sync {
        /// Agent id.
        id: String,
        /// Only this provider.
        #[arg(long)]
        provider: Option<String>,
    },
    /// Find the agent named NAME (or register it), issue it a fresh token,
    /// and write `MERIDIAN_AGENT_GOVERNANCEDASHBOARD_AUTH_TOKEN=<token>` to
    /// `--env-file` (mode 0600) for the agent to source: how compose sets
    /// up its agent. The token is never printed.
    Bootstrap {
        /// Agent name.
        name: String,
        /// Where to write the token.
        #[arg(long)]
        env_file: std::path::PathBuf,
    },
}

/// `meridian jobs ...`: scheduled syncs of an agent's providers.
#[derive(clap::Subcommand, Debug)]
pub enum JobsCmd {
    /// List an agent's sync jobs.
    List {
        /// Agent id.
        agent: String,
    },
    /// Sync a provider every `--every`, aligned to `--start-from`.
    Create {
        /// Agent id.
        agent: String,
        /// Provider name (as the agent reported it).
        #[arg(long)]
        provider: String,
        /// Interval: `90s`, `1h30m`, `12h`, `7d`.
        #[arg(long)]
        every: String,
        /// RFC 3339 time the due times align to (default: now).
        #[arg(long)]
        start_from: Option<String>,
    },
    /// Change a job, or pause or resume it.
    Update {
        /// Agent id.
        agent: String,
        /// Job id.
        job: String,
        /// New interval.
        #[arg(long)]
        every: Option<String>,
        /// New alignment.
        #[arg(long)]
        start_from: Option<String>,
        /// `true` to pause, `false` to resume.
        #[arg(long)]
        paused: Option<bool>,
    },
    /// Delete a job.
    Delete {
        /// Agent id.
        agent: String,
        /// Job id.
        job: String,
    },
    /// A job's firings, newest first, with the runs' results.
    Runs {
        /// Agent id.
        agent: String,
        /// Job id.
        job: String,
    },
}

/// `meridian apis ...`
#[derive(clap::Subcommand, Debug)]
pub enum ApisCmd {
    /// List APIs in the repository.
    List {
        /// Only this provider.
        #[arg(long)]
        provider: Option<String>,
        /// Only this agent.
        #[arg(long)]
        agent_id: Option<String>,
        /// active, deleted or all.
        #[arg(long)]
        status: Option<String>,
        /// Name contains.
        #[arg(long)]
        q: Option<String>,
        /// Page (from 1).
        #[arg(long)]
        page: Option<usize>,
        /// Page size.
        #[arg(long)]
        per_page: Option<usize>,
    },
    /// Show one API with its history.
    Get {
        /// API id.
        id: String,
    },
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Runs an `agents` command.
/// `meridian agents bootstrap`.
async fn bootstrap(client: &Client, name: &str, env_file: &std::path::Path) -> anyhow::Result<()> {
    let agents = client.get("/api/agents/").await?;
    let existing = agents
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["name"] == name)
        .and_then(|a| a["id"].as_str().map(str::to_owned));
    let id = match existing {
        Some(id) => id,
        None => {
            let created = client
                .post(
                    "/api/agents/",
                    &serde_json::json!({"name": name, "description": "bootstrapped"}),
                )
                .await?;
            created["id"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("the hub answered without an id: {created}"))?
                .to_owned()
        }
    };
    let issued = client
        .post("/api/auth/token/", &serde_json::json!({"agent_id": id}))
        .await?;
    let token = issued["token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the hub issued no token"))?;
    write_private(
        env_file,
        &format!("MERIDIAN_AGENT_GOVERNANCEDASHBOARD_AUTH_TOKEN={token}\n"),
    )?;
    eprintln!(
        "agent {name} ({id}): token written to {}",
        env_file.display()
    );
    Ok(())
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

pub async fn agents(client: &Client, cmd: AgentsCmd) -> anyhow::Result<()> {
    let v = match cmd {
        AgentsCmd::List => client.get("/api/agents/").await?,
        AgentsCmd::Create { name, description } => {
            client
                .post(
                    "/api/agents/",
                    &serde_json::json!({"name": name, "description": description}),
                )
                .await?
        }
        AgentsCmd::Get { id } => client.get(&format!("/api/agents/{id}")).await?,
        AgentsCmd::Update {
            id,
            name,
            description,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(n) = name {
                body.insert("name".into(), n.into());
            }
            if let Some(d) = description {
                body.insert("description".into(), d.into());
            }
            client
                .put(&format!("/api/agents/{id}"), &Value::Object(body))
                .await?
        }
        AgentsCmd::Delete { id } => client.delete(&format!("/api/agents/{id}")).await?,
        AgentsCmd::Token { id } => {
            client
                .post("/api/auth/token/", &serde_json::json!({"agent_id": id}))
                .await?
        }
        AgentsCmd::Revoke { id } => client.delete(&format!("/api/auth/token/{id}")).await?,
        AgentsCmd::Bootstrap { name, env_file } => {
            bootstrap(client, &name, &env_file).await?;
            Value::Null
        }
        AgentsCmd::Sync { id, provider } => {
            let body = provider.map_or_else(
                || serde_json::json!({}),
                |p| serde_json::json!({"provider": p}),
            );
            client
                .post(&format!("/api/agents/{id}/sync"), &body)
                .await?
        }
    };
    if !v.is_null() {
        print(&v);
    }
    Ok(())
}

/// Runs a `jobs` command.
pub async fn jobs(client: &Client, cmd: JobsCmd) -> anyhow::Result<()> {
    let jobs = |agent: &str| format!("/api/agents/{agent}/sync-jobs");
    let v = match cmd {
        JobsCmd::List { agent } => client.get(&jobs(&agent)).await?,
        JobsCmd::Create {
            agent,
            provider,
            every,
            start_from,
        } => {
            let mut body = serde_json::json!({"provider": provider, "repeat_every": every});
            if let Some(s) = start_from {
                body["start_from"] = s.into();
            }
            client.post(&jobs(&agent), &body).await?
        }
        JobsCmd::Update {
            agent,
            job,
            every,
            start_from,
            paused,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(e) = every {
                body.insert("repeat_every".into(), e.into());
            }
            if let Some(s) = start_from {
                body.insert("start_from".into(), s.into());
            }
            if let Some(p) = paused {
                body.insert("paused".into(), p.into());
            }
            client
                .put(&format!("{}/{job}", jobs(&agent)), &Value::Object(body))
                .await?
        }
        JobsCmd::Delete { agent, job } => client.delete(&format!("{}/{job}", jobs(&agent))).await?,
        JobsCmd::Runs { agent, job } => client.get(&format!("{}/{job}/runs", jobs(&agent))).await?,
    };
    if !v.is_null() {
        print(&v);
    }
    Ok(())
}

/// Runs an `apis` command.
pub async fn apis(client: &Client, cmd: ApisCmd) -> anyhow::Result<()> {
    let v = match cmd {
        ApisCmd::List {
            provider,
            agent_id,
            status,
            q,
            page,
            per_page,
        } => {
            let mut query = Vec::new();
            let mut add = |k: &'static str, v: Option<String>| {
                if let Some(v) = v {
                    query.push((k, v));
                }
            };
            add("provider", provider);
            add("agent_id", agent_id);
            add("status", status);
            add("q", q);
            add("page", page.map(|p| p.to_string()));
            add("per_page", per_page.map(|p| p.to_string()));
            client.get_query("/api/apis", &query).await?
        }
        ApisCmd::Get { id } => client.get(&format!("/api/apis/{id}")).await?,
    };
    print(&v);
    Ok(())
}

/// `meridian providers`
pub async fn providers(client: &Client) -> anyhow::Result<()> {
    print(&client.get("/api/providers").await?);
    Ok(())
}
