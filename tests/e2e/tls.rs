//! TLS and mTLS between agents and the hub: the gateway serves its gRPC
//! endpoint with a certificate and requires client certificates signed by
//! its CA; agents get in only when they trust the hub (or skip verification
//! on purpose) and present a client certificate. The real agent binary,
//! configured through `governanceDashboard.server.tls`, syncs over it.

use std::time::Duration;

use meridian::demo_provider::{DemoProvider, sample_apis};
use meridian_agent::session::{self, SessionConfig};
use meridian_agent::tls::{self, TlsFiles};
use meridian_tests::pki::TestPki;
use meridian_tests::*;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// Opens the health stream with a hello and waits for the hub's answer.
async fn reaches(hub: &str, token: &str, files: Option<TlsFiles>) -> Result<(), String> {
    let tls = files
        .map(|f| tls::client_config(&f).map_err(|e| e.to_string()))
        .transpose()?;
    let mut client = session::connect_with(hub, token, None, tls)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(meridian_schemas::proto::HealthMessage {
        kind: Some(meridian_schemas::proto::health_message::Kind::Hello(
            meridian_schemas::proto::Hello::default(),
        )),
    })
    .await
    .unwrap();
    let mut replies = client
        .health(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{s}"))?
        .into_inner();
    replies
        .message()
        .await
        .map_err(|s| format!("{s}"))?
        .map(|_| ())
        .ok_or_else(|| "no reply".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_reach_a_tls_hub_only_with_trust_and_a_client_certificate() {
    let pki = TestPki::generate();
    let TestHub {
        nats: _nats,
        gw,
        dir,
        inv,
        api,
    } = TestHub::start(|c| {
        c.tls_cert = Some(path(&pki.server_cert));
        c.tls_key = Some(path(&pki.server_key));
        c.tls_client_ca = Some(path(&pki.ca));
    })
    .await;
    let (agent_id, token) = api.register_agent("tls-agent").await;
    let port = gw.grpc_url.rsplit(':').next().unwrap().to_owned();
    let hub = format!("https://localhost:{port}");
    let trusted = |client: bool| TlsFiles {
        ca_cert: Some(path(&pki.ca)),
        client: client.then(|| (path(&pki.client_cert), path(&pki.client_key))),
        insecure_skip_verify: false,
    };

    // Trust plus a client certificate: in, by name and by IP address.
    reaches(&hub, &token, Some(trusted(true))).await.unwrap();
    let by_ip = format!("https://127.0.0.1:{port}");
    reaches(&by_ip, &token, Some(trusted(true))).await.unwrap();

    // No client certificate: the hub refuses the handshake.
    let refused = reaches(&hub, &token, Some(trusted(false))).await;
    assert!(
        refused.is_err(),
        "an agent without a client certificate got in"
    );

    // A CA that did not sign the hub: the agent refuses the hub.
    let wrong_ca = TlsFiles {
        ca_cert: Some(path(&pki.other_ca)),
        ..trusted(true)
    };
    let err = reaches(&hub, &token, Some(wrong_ca)).await.unwrap_err();
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );

    // Skipping verification gets in (with the client certificate).
    let skip = TlsFiles {
        ca_cert: None,
        insecure_skip_verify: true,
        ..trusted(true)
    };
    reaches(&hub, &token, Some(skip)).await.unwrap();

    // Plain gRPC to a TLS endpoint does not work.
    assert!(reaches(&gw.grpc_url, &token, None).await.is_err());

    // The real agent binary, configured for mTLS, syncs over it.
    let provider = DemoProvider::new(sample_apis(), "demo-key");
    let provider_url = serve_demo_provider(&provider).await;
    let config = format!(
        r#"
governanceDashboard:
  server:
    url: "localhost:{port}"
    tls:
      enabled: true
      caCertPath: "{ca}"
      clientCertPath: "{cert}"
      clientKeyPath: "{key}"
  auth:
    token: "{token}"
healthProbe:
  server:
    port: 0
instances:
  - name: "tyk"
    type: "tyk"
    config:
      host: "{provider_url}"
      auth: "demo-key"
"#,
        ca = path(&pki.ca),
        cert = path(&pki.client_cert),
        key = path(&pki.client_key),
    );
    let agent = start_agent_binary(dir.path(), &config).await;
    let probe_port = agent.probe;
    api.wait_for_total("active", sample_apis().len() as u64, T)
        .await;
    let shown = api.get_ok(&format!("/api/agents/{agent_id}")).await;
    assert_eq!(shown["status"], "ACTIVE");
    assert_eq!(
        agent_readiness(probe_port).await,
        Some(json!({"hub": "connected", "role": "not electing"}))
    );

    // And an in-process session with the same settings runs too.
    let mut config = SessionConfig::new(&hub, &token, Vec::new());
    config.tls = Some(tls::client_config(&trusted(true)).unwrap());
    let agent = Agent::run(config);
    agent.stop().await;

    gw.rest.stop().await;
    inv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_unusable_tls_files_refuses_to_start_naming_the_variable() {
    let nats = Nats::start().await;
    let pki = TestPki::generate();
    let not_pem = pki.dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    type File<'a> = Option<&'a std::path::Path>;
    let cases: [(File, File, File, &str); 5] = [
        (Some(&pki.server_cert), None, None, "TLS_KEY"),
        (None, Some(&pki.server_key), None, "TLS_CERT"),
        (None, None, Some(&pki.ca), "TLS_CLIENT_CA"),
        (Some(&not_pem), Some(&pki.server_key), None, "TLS_CERT"),
        (
            Some(&pki.server_cert),
            Some(&pki.server_key),
            Some(&pki.dir.path().join("missing.pem")),
            "TLS_CLIENT_CA",
        ),
    ];
    for (cert, key, ca, var) in cases {
        let mut config = meridian_agent_gateway::Config::new(&nats.url(), API_KEY, JWT_SECRET);
        config.tls_cert = cert.map(path);
        config.tls_key = key.map(path);
        config.tls_client_ca = ca.map(path);
        let err = match meridian_agent_gateway::App::build(config, &Metrics::new()).await {
            Ok(_) => panic!("started with {var} wrong"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!("MERIDIAN_AGENT_GATEWAY__{var}")),
            "{var}: {err}"
        );
    }
}
