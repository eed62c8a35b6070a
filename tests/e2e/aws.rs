//! The real agent binary against AWS API Gateway as the `moto` server plays
//! it: REST APIs with resources, a deployed stage and its export, HTTP APIs,
//! a deletion, and an unreachable endpoint failing only its own run.
//! (moto accepts any credentials here; see `Moto` in the harness.)

use std::time::Duration;

use meridian_agent::providers::sigv4::Signer;
use meridian_tests::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const REST_APIS: usize = 30;
const HTTP_APIS: usize = 3;

/// Signed JSON calls to moto, as an AWS client would make them.
struct Aws {
    url: String,
    signer: Signer,
    http: reqwest::Client,
}

impl Aws {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let url = format!("{}{path}", self.url);
        let mut extra = vec![];
        if !body.is_empty() {
            extra.push(("content-type", "application/json"));
        }
        let headers = self
            .signer
            .sign(
                method.as_str(),
                &url,
                &extra,
                body.as_bytes(),
                std::time::SystemTime::now(),
            )
            .unwrap();
        let mut req = self.http.request(method.clone(), &url);
        for (k, v) in headers.into_iter().chain(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        ) {
            req = req.header(k, v);
        }
        let res = req.body(body).send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_http_apis_from_api_gateway_land_and_deletions_follow() {
    let moto = Moto::start().await;
    let (key_id, secret) = ("AKIAMERIDIANTEST".to_owned(), "test-secret".to_owned());
    let aws = Aws {
        url: moto.url.clone(),
        signer: Signer::new(&key_id, &secret, None, "us-east-1", "apigateway"),
        http: reqwest::Client::new(),
    };
    use reqwest::Method;
    let mut rest_ids = Vec::new();
    for i in 0..REST_APIS {
        let api = aws
            .call(
                Method::POST,
                "/restapis",
                Some(json!({"name": format!("rest-{i}"), "tags": {"team": "payments"}})),
            )
            .await;
        rest_ids.push(api["id"].as_str().unwrap().to_owned());
    }
    // The first one has a resource with an IAM-authorized method, deployed to `prod`.
    let first = &rest_ids[0];
    let root = aws
        .call(Method::GET, &format!("/restapis/{first}/resources"), None)
        .await["item"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pets = aws
        .call(
            Method::POST,
            &format!("/restapis/{first}/resources/{root}"),
            Some(json!({"pathPart": "pets"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    aws.call(
        Method::PUT,
        &format!("/restapis/{first}/resources/{pets}/methods/GET"),
        Some(json!({"authorizationType": "AWS_IAM"})),
    )
    .await;
    aws.call(
        Method::PUT,
        &format!("/restapis/{first}/resources/{pets}/methods/GET/integration"),
        Some(json!({"type": "HTTP", "httpMethod": "GET", "uri": "http://pets.internal/pets"})),
    )
    .await;
    aws.call(
        Method::POST,
        &format!("/restapis/{first}/deployments"),
        Some(json!({"stageName": "prod"})),
    )
    .await;
    for i in 0..HTTP_APIS {
        aws.call(
            Method::POST,
            "/v2/apis",
            Some(json!({"name": format!("http-{i}"), "protocolType": "HTTP"})),
        )
        .await;
    }

    let TestHub {
        nats: _nats,
        gw,
        dir,
        inv,
        api,
    } = TestHub::start(|_| {}).await;
    let (agent_id, token) = api.register_agent("aws-agent").await;
    let config = format!(
        r#"
governanceDashboard:
  server: {{url: "{hub}"}}
  auth: {{token: "{token}"}}
healthProbe: {{server: {{port: 0}}}}
instances:
  - name: aws-main
    type: aws
    config: {{region: us-east-1, accessKeyId: "{key_id}", accessKeySecret: "{secret}", endpoint: "{moto}"}}
  - name: aws-unreachable
    type: aws
    config: {{region: us-east-1, accessKeyId: "{key_id}", accessKeySecret: "{secret}", endpoint: "http://127.0.0.1:{closed}"}}
"#,
        hub = gw.grpc_url,
        closed = closed_port(),
        moto = moto.url,
    );
    let _agent = start_agent_binary(dir.path(), &config).await;

    api.wait_for_total("active", (REST_APIS + HTTP_APIS) as u64, T)
        .await;
    let id = meridian_schemas::ApiId::derive(
        meridian_schemas::AgentId::parse(&agent_id).unwrap(),
        "aws-main",
        first,
    );
    let shown = api.get_ok(&format!("/api/apis/{id}")).await;
    assert_eq!(shown["name"], "rest-0");
    assert_eq!(shown["definition"]["stages"], json!(["prod"]));
    assert_eq!(shown["definition"]["auth_methods"], json!(["AWS_IAM"]));
    assert_eq!(shown["definition"]["tags"], json!(["team=payments"]));
    assert!(
        shown["definition"]["openapi"]["paths"]["/pets"].is_object(),
        "{shown}"
    );
    let http_apis = api
        .apis("active")
        .await
        .into_iter()
        .filter(|a| a["name"].as_str().unwrap().starts_with("http-"))
        .count();
    assert_eq!(http_apis, HTTP_APIS);

    let unreachable = eventually(T, || async {
        let last = api.last_sync("aws-unreachable").await;
        (!last.is_null()).then_some(last)
    })
    .await
    .expect("aws-unreachable reported a run");
    assert_eq!(unreachable["result"], "failed", "{unreachable}");
    let reason = unreachable["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("GET http://") && reason.contains("/restapis"),
        "{unreachable}"
    );
    assert!(reason.contains("onnect"), "the cause is named: {reason}");
    assert_eq!(api.last_sync("aws-main").await["result"], "completed");

    // Deleted in API Gateway: the next sync marks it deleted.
    aws.call(Method::DELETE, &format!("/restapis/{}", rest_ids[5]), None)
        .await;
    api.trigger_sync(&agent_id, Some("aws-main")).await;
    api.wait_for_total("deleted", 1, T).await;
    assert_eq!(
        api.apis("deleted").await[0]["provider_api_id"],
        rest_ids[5].as_str()
    );
    inv.stop().await;
    gw.rest.stop().await;
}
