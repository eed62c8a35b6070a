//! Agent discovery benchmark: 5,000 APIs in a fake Tyk Dashboard (500 pages
//! of ten) and 5,000 REST APIs in the `moto` server. For each provider:
//! seconds from the sync request until the repository holds all of them, and
//! APIs/s; beside it, in the same run, the bare listing (the provider client
//! alone, no hub) as the reference.
//!
//! `cargo run --release -p meridian-loadtest --bin agent-bench [-- N]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian::demo_provider::{DemoProvider, tyk_api};
use meridian_agent::providers::aws::AwsApiGateway;
use meridian_agent::providers::sigv4::Signer;
use meridian_agent::providers::tyk::TykDashboard;
use meridian_agent::providers::{ProviderConfig, Source};
use meridian_agent::session::{self, SessionConfig};
use meridian_tests::{Api, Moto, Nats, eventually, start_gateway, start_inventory};
use serde_json::json;

async fn create_rest_apis(moto: &Moto, n: usize) -> anyhow::Result<()> {
    let signer = Signer::new("AKIABENCH", "bench", None, "us-east-1", "apigateway");
    let http = reqwest::Client::new();
    let url = format!("{}/restapis", moto.url);
    for i in 0..n {
        let body = json!({"name": format!("bench-{i}")}).to_string();
        let headers = signer.sign(
            "POST",
            &url,
            &[("content-type", "application/json")],
            body.as_bytes(),
            std::time::SystemTime::now(),
        )?;
        let mut req = http.post(&url).header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let res = req.body(body).send().await?;
        anyhow::ensure!(
            res.status().is_success(),
            "create REST API {i}: {}",
            res.status()
        );
    }
    Ok(())
}

/// Seconds from the agent connecting with only `provider` until the
/// repository holds its `n` APIs (the sync on connect is the discovery).
async fn through_hub(
    api: &Api,
    grpc: &str,
    token: &str,
    provider: ProviderConfig,
    n: usize,
) -> anyhow::Result<f64> {
    let name = provider.name.clone();
    let stop = meridian_kit::CancellationToken::new();
    let started = Instant::now();
    let agent = tokio::spawn(session::run_until_stopped(
        SessionConfig::new(grpc, token, vec![provider]),
        stop.clone(),
    ));
    let done = eventually(Duration::from_secs(600), || async {
        let (_, providers) = api.get("/api/providers").await;
        let count = providers
            .as_array()?
            .iter()
            .find(|p| p["name"] == name.as_str())?["api_count"]
            .as_u64()?;
        (count == n as u64 && api.last_sync(&name).await["result"] == "completed").then_some(())
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = agent.await;
    done.ok_or_else(|| anyhow::anyhow!("{name} never reached {n} APIs"))?;
    Ok(seconds)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = meridian_tests::size_arg(5_000)?;
    println!("agent discovery benchmark: {n} APIs per provider");

    let tyk = DemoProvider::new(
        (0..n)
            .map(|i| {
                tyk_api(
                    &format!("api-{i}"),
                    &format!("API {i}"),
                    &format!("/api-{i}/"),
                    "http://up",
                    &["bench"],
                )
            })
            .collect(),
        "bench-key",
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tyk_url = format!("http://{}", listener.local_addr()?);
    let router = tyk.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let moto = Moto::start().await;
    let created = Instant::now();
    create_rest_apis(&moto, n).await?;
    println!(
        "created {n} REST APIs in moto in {:.1} s",
        created.elapsed().as_secs_f64()
    );

    let http = reqwest::Client::new();
    let tyk_source = Arc::new(TykDashboard {
        host: tyk_url,
        key: "bench-key".into(),
        http: http.clone(),
    });
    let aws_source = Arc::new(AwsApiGateway::new(
        "us-east-1",
        "AKIABENCH",
        "bench",
        None,
        Some(moto.url.clone()),
        http,
    ));

    // References: the provider clients alone.
    let mut reference = Vec::new();
    for (name, source) in [
        ("tyk", tyk_source.clone() as Arc<dyn Source>),
        ("aws", aws_source.clone()),
    ] {
        let started = Instant::now();
        let listed = source.list().await.map_err(|e| anyhow::anyhow!(e))?;
        anyhow::ensure!(listed.len() == n, "{name} listed {}", listed.len());
        reference.push(started.elapsed().as_secs_f64());
    }

    let nats = Nats::start().await;
    let gw = start_gateway(&nats, |_| {}).await;
    let dir = tempfile::tempdir()?;
    let inventory = start_inventory(&nats, dir.path().join("inventory")).await;
    let api = Api::new(&gw.rest.url, &inventory.url);
    let (_, token) = api.register_agent("bench").await;
    let provider = |name: &str, kind: &str, source: Arc<dyn Source>| ProviderConfig {
        name: name.into(),
        provider_type: kind.into(),
        source,
    };
    let tyk_s = through_hub(
        &api,
        &gw.grpc_url,
        &token,
        provider("tyk-bench", "tyk", tyk_source),
        n,
    )
    .await?;
    let aws_s = through_hub(
        &api,
        &gw.grpc_url,
        &token,
        provider("aws-bench", "aws", aws_source),
        n,
    )
    .await?;

    println!();
    println!(
        "| provider | APIs | seconds into the repository | APIs/s | reference: listing alone (s) | APIs/s listing alone |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for ((name, s), r) in [
        ("tyk (fake Dashboard, 10 per page)", tyk_s),
        ("aws (moto, REST APIs)", aws_s),
    ]
    .into_iter()
    .zip(reference)
    {
        println!(
            "| {name} | {n} | {s:.2} | {:.0} | {r:.2} | {:.0} |",
            n as f64 / s,
            n as f64 / r
        );
    }
    inventory.stop().await;
    gw.rest.stop().await;
    Ok(())
}
