//! `meridian events tail`: prints public events as they arrive, straight from
//! the `MERIDIAN_EVENTS` stream (no hub REST call involved).

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures_util::StreamExt;
use meridian_kit::time::{now_ms, parse_since};
use meridian_schemas::public;
use serde_json::Value;

/// `meridian events ...`
#[derive(clap::Subcommand, Debug)]
pub enum EventsCmd {
    /// Print events as they arrive (Ctrl-C to stop).
    Tail(TailArgs),
}

/// `meridian events tail` options.
#[derive(clap::Args, Debug, Clone)]
pub struct TailArgs {
    /// NATS URL of the hub.
    #[arg(
        long,
        env = "MERIDIAN_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Only this provider's API events.
    #[arg(long)]
    pub provider: Option<String>,
    /// Only this type: created, updated, deleted, restored or status_changed.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Start this far back (`1h`, `7d`) or at this RFC 3339 time; default:
    /// only events from now on.
    #[arg(long)]
    pub since: Option<String>,
    /// Print each event as one line of CloudEvents JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<usize>,
}

/// Runs `meridian events ...`.
pub async fn run(cmd: EventsCmd) -> anyhow::Result<()> {
    match cmd {
        EventsCmd::Tail(args) => tail(&args, &mut std::io::stdout()).await,
    }
}

/// Follows the stream, writing one line per event to `out`, until `count`
/// events (forever without one).
pub async fn tail(args: &TailArgs, out: &mut (impl Write + Send)) -> anyhow::Result<()> {
    let filter = public::filter_for(args.event_type.as_deref(), args.provider.as_deref())
        .map_err(|e| anyhow::anyhow!("--{e}"))?;
    let deliver_policy = match &args.since {
        None => DeliverPolicy::New,
        Some(since) => {
            let ms = parse_since(since, now_ms()).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
            DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(ms) * 1_000_000,
                )?,
            }
        }
    };
    let client = meridian_kit::bus::connect(
        &args.nats_url,
        "meridian-events-tail",
        Duration::from_secs(5),
        &meridian_kit::metrics::Metrics::new(),
    )
    .await?;
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(meridian_schemas::streams::EVENTS)
        .await
        .with_context(|| {
            format!(
                "no {} stream at {} (is the hub running?)",
                meridian_schemas::streams::EVENTS,
                args.nats_url
            )
        })?;
    let mut messages = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter,
            deliver_policy,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    if args.since.is_none() {
        // On stderr, so that --json output stays one event per line.
        eprintln!("following new events from now on (--since 1h shows earlier ones; Ctrl-C stops)");
    }
    let mut printed = 0;
    while args.count.is_none_or(|n| printed < n) {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message?;
        let event: Value = serde_json::from_slice(&message.payload)
            .with_context(|| format!("malformed event on {}", message.subject))?;
        if args.json {
            writeln!(out, "{event}")?;
        } else {
            writeln!(out, "{}", human(&event))?;
        }
        out.flush()?;
        printed += 1;
    }
    Ok(())
}

/// One readable line: time, short type, then what changed.
fn human(event: &Value) -> String {
    let ty = event["type"].as_str().unwrap_or("?");
    let short = ty.strip_prefix("io.meridian.").unwrap_or(ty);
    let time = event["time"].as_str().unwrap_or("?");
    let d = &event["data"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    if short == "agent.status_changed" {
        return format!(
            "{time}  {short:<20}  agent {}  {} (was {})",
            s(&d["agent_id"]),
            s(&d["status"]),
            s(&d["previous_status"])
        );
    }
    let version = s(&d["version"]);
    let mut line = format!(
        "{time}  {short:<20}  {}/{}  {}{}  {}",
        s(&d["provider_type"]),
        s(&d["provider"]),
        s(&d["name"]),
        if version.is_empty() {
            String::new()
        } else {
            format!(" {version}")
        },
        s(&d["api_id"])
    );
    if let Some(changed) = d["changed"].as_array().filter(|c| !c.is_empty()) {
        let names: Vec<String> = changed.iter().map(s).collect();
        line.push_str(&format!("  changed: {}", names.join(", ")));
    }
    line
}
