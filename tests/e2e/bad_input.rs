//! Bad input gets a clear error, and the repository is unchanged.

use std::time::Duration;

use meridian_schemas::proto::{
    HealthMessage, HealthReply, Hello, Provider, SyncMessage, SyncRequest, SyncStarted,
    health_message, sync_message,
};
use meridian_tests::*;
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

async fn repository_digest(api: &Api) -> String {
    api.get_ok("/api/repository/digest").await["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_errors_are_clear_json() {
    let nats = Nats::start().await;
    let gw = start_gateway(&nats, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let inv = start_inventory(&nats, dir.path().join("inventory")).await;
    let api = Api::new(&gw.rest.url, &inv.url);
    let (agent_id, _) = api.register_agent("errors").await;
    let before = repository_digest(&api).await;

    for key in [None, Some("wrong-key")] {
        for path in ["/api/agents/", "/api/apis"] {
            let (code, body) = api.with_key(key).get(path).await;
            assert_eq!(code, 401, "{path} with {key:?}");
            assert_eq!(body["error"], "unauthenticated");
            assert!(body["message"].as_str().unwrap().contains("X-API-Key"));
        }
    }
    let (code, body) = api
        .call(reqwest::Method::POST, "/api/agents/", Some("{not json"))
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("invalid_argument"))
    );
    let (code, body) = api
        .post("/api/agents/", &json!({"description": "no name"}))
        .await;
    assert_eq!(code, 400);
    assert!(body["message"].as_str().unwrap().contains("name"), "{body}");
    let (code, body) = api.post("/api/agents/", &json!({"name": "   "})).await;
    assert_eq!(code, 400);
    assert!(
        body["message"].as_str().unwrap().starts_with("name:"),
        "{body}"
    );

    let unknown = uuid::Uuid::new_v4();
    assert_eq!(api.get(&format!("/api/agents/{unknown}")).await.0, 404);
    assert_eq!(
        api.post(
            "/api/auth/token/",
            &json!({"agent_id": unknown.to_string()})
        )
        .await
        .0,
        404
    );
    assert_eq!(
        api.post(&format!("/api/agents/{unknown}/sync"), &json!({}))
            .await
            .0,
        404
    );
    let (code, body) = api.get("/api/agents/not-a-uuid").await;
    assert_eq!(code, 400);
    assert!(
        body["message"].as_str().unwrap().starts_with("id:"),
        "{body}"
    );
    let (code, body) = api
        .post(&format!("/api/agents/{agent_id}/sync"), &json!({}))
        .await;
    assert_eq!(code, 409, "not connected: {body}");
    assert!(body["message"].as_str().unwrap().contains("not connected"));
    let (code, body) = api.get("/api/apis?status=gone").await;
    assert_eq!(code, 400);
    assert!(
        body["message"].as_str().unwrap().starts_with("status:"),
        "{body}"
    );
    assert_eq!(api.get("/api/apis?per_page=0").await.0, 400);
    assert_eq!(api.get(&format!("/api/apis/{unknown}")).await.0, 404);
    let revoke = format!("/api/auth/token/{agent_id}");
    assert_eq!(
        api.call(reqwest::Method::DELETE, &revoke, None).await.0,
        204
    );
    assert_eq!(
        api.call(reqwest::Method::DELETE, &revoke, None).await.0,
        404,
        "nothing left to revoke"
    );

    assert_eq!(
        repository_digest(&api).await,
        before,
        "nothing stored changed"
    );
    gw.rest.stop().await;
    inv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_revoked_replaced_and_expired_tokens_are_unauthenticated() {
    let nats = Nats::start().await;
    let gw = start_gateway(&nats, |c| {
        c.token_ttl = meridian_kit::config::HumanDuration(Duration::from_secs(1))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let inv = start_inventory(&nats, dir.path().join("inventory")).await;
    let api = Api::new(&gw.rest.url, &inv.url);
    let (agent_id, first) = api.register_agent("tokens").await;
    let p = [("p", "tyk")];

    let code = |r: Result<(), tonic::Status>| r.err().map(|s| s.code());
    assert_eq!(
        code(hello(&gw.grpc_url, "garbage", &p).await),
        Some(Code::Unauthenticated)
    );
    assert_eq!(
        code(hello(&gw.grpc_url, &first, &p).await),
        None,
        "fresh token works"
    );

    // A new token replaces the old one.
    let second = api
        .post_ok("/api/auth/token/", &json!({"agent_id": agent_id}))
        .await;
    let second = second["token"].as_str().unwrap().to_owned();
    let replaced = hello(&gw.grpc_url, &first, &p).await.unwrap_err();
    assert_eq!(replaced.code(), Code::Unauthenticated);
    assert!(
        replaced.message().contains("revoked, replaced or expired"),
        "{}",
        replaced.message()
    );

    // Revoked.
    assert_eq!(revoke(&api, &agent_id).await, 204);
    assert_eq!(
        code(hello(&gw.grpc_url, &second, &p).await),
        Some(Code::Unauthenticated)
    );

    // Expired (the gateway issues 1-second tokens in this test).
    let third = api
        .post_ok("/api/auth/token/", &json!({"agent_id": agent_id}))
        .await;
    let third = third["token"].as_str().unwrap().to_owned();
    assert!(
        hello(&gw.grpc_url, &third, &p).await.is_ok(),
        "a new token works"
    );
    let expired = eventually(Duration::from_secs(5), || async {
        hello(&gw.grpc_url, &third, &p)
            .await
            .err()
            .filter(|e| e.code() == Code::Unauthenticated)
    })
    .await;
    assert!(expired.is_some(), "the 1-second token still works");

    // A deleted agent's token stops working.
    let fourth = api
        .post_ok("/api/auth/token/", &json!({"agent_id": agent_id}))
        .await;
    let fourth = fourth["token"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call(
            reqwest::Method::DELETE,
            &format!("/api/agents/{agent_id}"),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        code(hello(&gw.grpc_url, &fourth, &p).await),
        Some(Code::Unauthenticated)
    );
    assert_eq!(api.get(&format!("/api/agents/{agent_id}")).await.0, 404);
    gw.rest.stop().await;
    inv.stop().await;
}

/// Revokes the agent's token; the HTTP status.
async fn revoke(api: &Api, agent_id: &str) -> u16 {
    let path = format!("/api/auth/token/{agent_id}");
    api.call(reqwest::Method::DELETE, &path, None).await.0
}

/// Waits for the provider's last run to end as failed; its summary.
async fn run_failed(api: &Api, provider: &str) -> serde_json::Value {
    eventually(Duration::from_secs(10), || async {
        let last = api.last_sync(provider).await;
        (last["result"] == "failed").then_some(last)
    })
    .await
    .expect("the broken run ends as failed")
}

/// An agent's sync stream driven by hand: a hello for one provider on the
/// health stream (kept open), the sync stream, and the hub's first request.
struct RawSync {
    stx: tokio::sync::mpsc::Sender<SyncMessage>,
    requests: tonic::Streaming<SyncRequest>,
    /// A message of the requested run.
    msg: Box<dyn Fn(sync_message::Kind) -> SyncMessage + Send>,
    _health: (
        tokio::sync::mpsc::Sender<HealthMessage>,
        tonic::Streaming<HealthReply>,
    ),
}

impl RawSync {
    async fn open(grpc: &str, token: &str, provider: &str) -> Self {
        let mut client = meridian_agent::session::connect(grpc, token).await.unwrap();
        let (htx, hrx) = tokio::sync::mpsc::channel(4);
        let hello_msg = Hello {
            providers: vec![Provider {
                name: provider.into(),
                r#type: "tyk".into(),
            }],
            agent_version: String::new(),
        };
        htx.send(HealthMessage {
            kind: Some(health_message::Kind::Hello(hello_msg)),
        })
        .await
        .unwrap();
        let mut replies = client
            .health(ReceiverStream::new(hrx))
            .await
            .unwrap()
            .into_inner();
        replies.message().await.unwrap();
        let (stx, srx) = tokio::sync::mpsc::channel(4);
        let mut requests = client
            .sync(ReceiverStream::new(srx))
            .await
            .unwrap()
            .into_inner();
        let request = requests
            .message()
            .await
            .unwrap()
            .expect("initial sync request");
        let provider = provider.to_owned();
        let msg = Box::new(move |kind| SyncMessage {
            run_id: request.run_id.clone(),
            provider: provider.clone(),
            kind: Some(kind),
            fencing_token: None,
        });
        Self {
            stx,
            requests,
            msg,
            _health: (htx, replies),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_during_a_sync_stops_the_stream_at_the_next_message() {
    let TestHub {
        nats,
        gw,
        dir: _dir,
        inv,
        api,
    } = TestHub::start(|_| {}).await;
    let (agent_id, token) = api.register_agent("revoked-mid-sync").await;
    let sync_before = stream_count(&nats.js, meridian_schemas::streams::SYNC).await;
    let RawSync {
        stx,
        mut requests,
        msg,
        _health,
    } = RawSync::open(&gw.grpc_url, &token, "p").await;
    stx.send(msg(sync_message::Kind::Started(SyncStarted {})))
        .await
        .unwrap();
    stx.send(msg(sync_message::Kind::Api(api_def("one", "One", ""))))
        .await
        .unwrap();
    // Both are stored: the stream works (and the gateway has read the
    // agent's record for them).
    let stored = eventually(Duration::from_secs(10), || async {
        let n = stream_count(&nats.js, meridian_schemas::streams::SYNC).await;
        (n == sync_before + 2).then_some(n)
    })
    .await;
    assert_eq!(stored, Some(sync_before + 2));

    assert_eq!(revoke(&api, &agent_id).await, 204);
    stx.send(msg(sync_message::Kind::Api(api_def("two", "Two", ""))))
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), requests.message())
        .await
        .expect("the hub kept the stream open after the token was revoked")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("revoked, replaced or expired"),
        "{}",
        status.message()
    );
    // The message after the revocation went nowhere (the run then ends as
    // failed: the stream is gone).
    let last = run_failed(&api, "p").await;
    assert!(last["reason"].is_string(), "{last}");
    let apis = api.apis("all").await;
    assert!(apis.iter().all(|a| a["name"] != "Two"), "{apis:?}");
    gw.rest.stop().await;
    inv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_provider_names_and_oversized_messages_are_refused_and_store_nothing() {
    let nats = Nats::start().await;
    let gw = start_gateway(&nats, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let inv = start_inventory(&nats, dir.path().join("inventory")).await;
    let api = Api::new(&gw.rest.url, &inv.url);
    let (agent_id, token) = api.register_agent("strict").await;
    let sync_before = stream_count(&nats.js, meridian_schemas::streams::SYNC).await;

    let too_long = "x".repeat(129);
    for bad in ["", "line\nbreak", "bell\u{7}", too_long.as_str()] {
        let status = hello(&gw.grpc_url, &token, &[(bad, "tyk")])
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert!(
            status.message().contains("providers[0].name"),
            "{}",
            status.message()
        );
    }
    assert_eq!(
        api.get_ok(&format!("/api/agents/{agent_id}")).await["providers"],
        serde_json::Value::Null
    );

    // A good hello, then an API larger than the limit on the sync stream.
    let RawSync {
        stx,
        mut requests,
        msg,
        _health,
    } = RawSync::open(&gw.grpc_url, &token, "p").await;
    stx.send(msg(sync_message::Kind::Started(SyncStarted {})))
        .await
        .unwrap();
    let mut huge = api_def("huge", "Huge", "");
    huge.raw = "x".repeat(1_030_000);
    stx.send(msg(sync_message::Kind::Api(huge))).await.unwrap();
    let status = requests.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("limit"), "{}", status.message());

    // The run is recorded as failed; no API was stored.
    let last = run_failed(&api, "p").await;
    assert!(last["reason"].as_str().unwrap().contains("limit"));
    assert_eq!(api.apis("all").await.len(), 0);
    assert_eq!(
        stream_count(&nats.js, meridian_schemas::streams::SYNC).await,
        sync_before + 2,
        "started and failed only"
    );
    gw.rest.stop().await;
    inv.stop().await;
}

/// An agent that sends an API twice in one run: the repeat is dropped (the
/// first definition stands) and the run still completes with its count of
/// distinct APIs. The run's APIs are stored in chunks that name their place
/// in the run, and every API's definition is read back from its chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_sent_twice_in_a_run_is_stored_once_and_apis_travel_in_chunks() {
    use meridian_schemas::sync::{CHUNK_MAX_APIS, SyncEvent, SyncEventKind};

    let TestHub {
        nats,
        gw,
        dir: _dir,
        inv,
        api,
    } = TestHub::start(|_| {}).await;
    let (_, token) = api.register_agent("chunky").await;
    let RawSync {
        stx,
        requests: _requests,
        msg,
        _health,
    } = RawSync::open(&gw.grpc_url, &token, "p").await;
    let n = 2 * CHUNK_MAX_APIS + 22;
    let id = |i: usize| format!("api-{i:03}");
    stx.send(msg(sync_message::Kind::Started(SyncStarted {})))
        .await
        .unwrap();
    for i in 0..n {
        let def = api_def(&id(i), &format!("API {i}"), "v1");
        stx.send(msg(sync_message::Kind::Api(def))).await.unwrap();
        if i == 70 {
            // The first API again, changed: a repeat within the run.
            let again = api_def(&id(0), "Changed", "v2");
            stx.send(msg(sync_message::Kind::Api(again))).await.unwrap();
        }
    }
    stx.send(msg(sync_message::Kind::Completed(
        meridian_schemas::proto::SyncCompleted { count: n as u64 },
    )))
    .await
    .unwrap();

    let last = eventually(Duration::from_secs(10), || async {
        let last = api.last_sync("p").await;
        (last["result"] == "completed").then_some(last)
    })
    .await
    .expect("the run completes: its count is the distinct APIs");
    assert_eq!(last["count"], n, "{last}");
    let apis = api.apis("all").await;
    assert_eq!(apis.len(), n);
    let first = apis.iter().find(|a| a["provider_api_id"] == id(0)).unwrap();
    assert_eq!(first["name"], "API 0", "the first definition stands");

    // In the log: chunks of at most CHUNK_MAX_APIS, each naming how many of
    // the run's APIs came before it, together every API once, in order.
    let mut sent = Vec::new();
    let mut chunks = 0;
    for event in stream_events::<SyncEvent>(&nats.js, meridian_schemas::streams::SYNC).await {
        if let SyncEventKind::Apis { first, apis } = event.kind {
            assert!(
                !apis.is_empty() && apis.len() <= CHUNK_MAX_APIS,
                "{}",
                apis.len()
            );
            assert_eq!(first, sent.len() as u64, "a chunk names its place");
            sent.extend(apis.into_iter().map(|a| a.definition.provider_api_id));
            chunks += 1;
        }
    }
    assert_eq!(sent, (0..n).map(id).collect::<Vec<_>>());
    assert!((3..n).contains(&chunks), "{chunks} chunks for {n} APIs");

    // Each API's definition comes from its place in its chunk.
    for i in [0, 1, CHUNK_MAX_APIS - 1, CHUNK_MAX_APIS, n - 1] {
        let summary = apis.iter().find(|a| a["provider_api_id"] == id(i)).unwrap();
        let (code, detail) = api
            .get(&format!("/api/apis/{}", summary["id"].as_str().unwrap()))
            .await;
        assert_eq!(code, 200, "{detail}");
        assert_eq!(
            detail["definition"]["upstream_url"],
            format!("http://{}.internal", id(i)),
            "{detail}"
        );
    }
    gw.rest.stop().await;
    inv.stop().await;
}

/// Provider names as users write them (dots, spaces, any UTF-8) sync end to
/// end: the gateway accepts the hello, `SYNC` subjects carry the name
/// escaped (one token, so routing is unchanged), and the repository and the
/// public events name the provider as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_names_with_dots_and_spaces_sync_end_to_end() {
    let TestHub {
        nats,
        gw,
        dir: _dir,
        inv,
        api,
    } = TestHub::start(|_| {}).await;
    let (agent_id, token) = api.register_agent("named").await;
    let dotted = MemorySource::new(vec![api_def("a", "A", "v1"), api_def("b", "B", "v1")]);
    let spaced = MemorySource::new(vec![api_def("c", "C", "v1")]);
    let agent = Agent::start(
        &gw.grpc_url,
        &token,
        vec![
            ("tyk.eu prod", "tyk", dotted),
            ("Production APIs", "aws", spaced),
        ],
    );
    api.wait_for_total("active", 3, Duration::from_secs(30))
        .await;
    let (status, page) = api.get("/api/apis?provider=tyk.eu%20prod&status=all").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total"], 2, "{page}");

    let stream = nats
        .js
        .get_stream(meridian_schemas::streams::SYNC)
        .await
        .unwrap();
    let escaped = format!("sync.{agent_id}.tyk%2Eeu%20prod.run");
    let last = stream.get_last_raw_message_by_subject(&escaped).await;
    assert!(last.is_ok(), "no run events on {escaped}: {last:?}");
    let events = wait_for_public(
        &nats.js,
        &meridian_schemas::public::filter_for(Some("created"), Some("Production APIs")).unwrap(),
        1,
    )
    .await;
    assert_eq!(events[0]["data"]["provider"], "Production APIs");
    agent.stop().await;
    gw.rest.stop().await;
    inv.stop().await;
}

/// Hostile REST input: out-of-range numbers and durations, huge bodies,
/// wrong methods and wrong types each get a 4xx in the JSON error shape
/// naming what is wrong; a JSON body needs no `Content-Type`; nothing
/// stored changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rest_input_gets_a_4xx_naming_the_parameter() {
    let TestHub {
        nats,
        gw,
        dir: _dir,
        inv,
        api,
    } = TestHub::start(|_| {}).await;
    let scheduler = start_scheduler(&nats, |_| {}).await;
    let api = api.with_scheduler(&scheduler.url);
    let (agent_id, _) = api.register_agent("hostile").await;
    let before = repository_digest(&api).await;
    let refused = |code: u16, body: &serde_json::Value, status: u16, starts: &str| {
        assert_eq!(code, status, "{body}");
        assert!(body["error"].is_string(), "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(starts), "{starts}: {body}");
    };

    let (code, body) = api.get("/api/events?since=4294967295w").await;
    refused(code, &body, 400, "since:");
    let (code, body) = api.get("/api/events?since=100y").await;
    refused(code, &body, 400, "since:");
    let (code, body) = api.get(&format!("/api/events?after={}", u64::MAX)).await;
    refused(code, &body, 400, "after:");
    let (code, body) = api
        .get("/api/apis?page=9223372036854775809&per_page=2")
        .await;
    refused(code, &body, 400, "page:");
    let (code, body) = api.get("/api/apis?page=99999999999999999999999").await;
    refused(code, &body, 400, "query:");

    let jobs = format!("/api/agents/{agent_id}/sync-jobs");
    let (code, body) = api
        .post(
            &jobs,
            &json!({"provider": "p", "repeat_every": "4294967295w"}),
        )
        .await;
    refused(code, &body, 400, "repeat_every:");
    let (code, body) = api.post(&jobs, &json!({"provider": 5})).await;
    refused(code, &body, 400, "provider:");
    let (code, body) = api
        .post("/api/agents/", &json!({"name": ["a", "list"]}))
        .await;
    refused(code, &body, 400, "name:");

    // A 10 MB body: 413 in the JSON shape, on every service that reads one.
    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(10 << 20));
    for path in ["/api/agents/", &jobs] {
        let (code, body) = api.call(reqwest::Method::POST, path, Some(&huge)).await;
        refused(code, &body, 413, "body:");
        assert_eq!(body["error"], "too_large");
    }
    // A wrong method: 405 in the JSON shape.
    for path in ["/api/agents/", "/api/apis", &jobs] {
        let (code, body) = api.call(reqwest::Method::PATCH, path, None).await;
        refused(code, &body, 405, path);
        assert_eq!(body["error"], "method_not_allowed");
    }

    // `curl -d '{...}'` sends no JSON content type; the body is JSON anyway.
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/agents/", gw.rest.url))
        .header("x-api-key", API_KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"name": "from-curl"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["name"], "from-curl", "{created}");

    assert_eq!(
        repository_digest(&api).await,
        before,
        "nothing stored changed"
    );
    let jobs_after = api.get_ok(&jobs).await;
    assert_eq!(jobs_after, json!([]), "no job was stored");
    scheduler.stop().await;
    gw.rest.stop().await;
    inv.stop().await;
    drop(nats);
}

/// Sends raw bytes as frames of an agent stream, as a broken or hostile
/// client would; reads the hub's answers (of type `D`) as the agent does.
struct RawFrames<D>(std::marker::PhantomData<D>);

impl<D> Default for RawFrames<D> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl<D: prost::Message + Default + Send + 'static> tonic::codec::Codec for RawFrames<D> {
    type Encode = Vec<u8>;
    type Decode = D;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<D>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        Default::default()
    }
}

/// Opens the agent stream `method` (`Sync`, `Health`), sends `frames`, and
/// returns the status it ends with.
async fn raw_stream<D: prost::Message + Default + Send + 'static>(
    grpc: &str,
    token: &str,
    method: &'static str,
    frames: Vec<Vec<u8>>,
) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(grpc.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    for frame in frames {
        tx.send(frame).await.unwrap();
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut answers = match client
            .streaming(request, path, RawFrames::<D>::default())
            .await
        {
            Ok(answers) => answers.into_inner(),
            Err(status) => return status,
        };
        // The stream stays open from our side: only the hub can end it.
        loop {
            match answers.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return tonic::Status::ok("ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the hub ended the stream");
    drop(tx);
    ended
}

async fn raw_sync(grpc: &str, token: &str, frames: Vec<Vec<u8>>) -> tonic::Status {
    raw_stream::<SyncRequest>(grpc, token, "/meridian.agent.v1.AgentHub/Sync", frames).await
}

/// A garbage frame on the health stream, as the first message or after a
/// hello, ends it with `InvalidArgument` saying so (the sync stream's
/// answer), never `Internal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_health_frame_is_the_agents_error() {
    use prost::Message as _;
    let TestHub {
        nats: _nats,
        gw,
        dir: _dir,
        inv,
        api,
    } = TestHub::start(|_| {}).await;
    let (_, token) = api.register_agent("health-frames").await;
    let hello = HealthMessage {
        kind: Some(health_message::Kind::Hello(Hello {
            providers: vec![],
            ..Default::default()
        })),
    }
    .encode_to_vec();
    for frames in [vec![vec![0xff; 64]], vec![hello, vec![0xff; 64]]] {
        let status = raw_stream::<HealthReply>(
            &gw.grpc_url,
            &token,
            "/meridian.agent.v1.AgentHub/Health",
            frames,
        )
        .await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .starts_with("health stream: a message could not be decoded"),
            "{}",
            status.message()
        );
    }
    gw.rest.stop().await;
    inv.stop().await;
}

/// A frame that is not a sync message, one over the size limit, and a
/// message with a 10 KB run id each end the stream with a status that says
/// why (never OK), quoting at most a short prefix of the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_sync_frames_end_the_stream_with_a_reason() {
    use prost::Message as _;
    let TestHub {
        nats: _nats,
        gw,
        dir: _dir,
        inv,
        api,
    } = TestHub::start(|_| {}).await;
    let (_, token) = api.register_agent("frames").await;

    let garbage = vec![0xff; 64];
    let status = raw_sync(&gw.grpc_url, &token, vec![garbage]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("decoded"), "{}", status.message());

    let oversized = SyncMessage {
        run_id: "x".repeat(2 << 20),
        ..Default::default()
    }
    .encode_to_vec();
    let status = raw_sync(&gw.grpc_url, &token, vec![oversized]).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().len() < 400, "{}", status.message());

    let long_id = SyncMessage {
        run_id: "r".repeat(10 << 10),
        provider: "p".into(),
        kind: Some(sync_message::Kind::Started(SyncStarted {})),
        fencing_token: None,
    }
    .encode_to_vec();
    let status = raw_sync(&gw.grpc_url, &token, vec![long_id]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("run_id:"),
        "{}",
        status.message()
    );
    assert!(
        status.message().len() < 200,
        "the whole id came back: {} bytes",
        status.message().len()
    );
    gw.rest.stop().await;
    inv.stop().await;
}
