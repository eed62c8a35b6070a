//! key-issuer through the Tyk Gateway API: keys, policies, organisation
//! sessions and OAuth clients, every answer checked against Meridian's
//! OpenAPI document and Tyk's (`../shared/tyk-gateway-swagger.yml`).

use std::time::Duration;

use meridian_schemas::commands::{self, RecordTokens, RecordTokensReply};
use meridian_schemas::keys::{KeysEvent, TokenRecord};
use meridian_schemas::{Event, streams};
use meridian_tests::tyk::{GATEWAY_SECRET, Tyk, start_key_issuer};
use meridian_tests::*;
use serde_json::{Value, json};

fn sha256(s: &str) -> String {
    meridian_keys::hash_secret(s)
}

/// A policy giving `api` 100 requests a minute and 1,000 a day.
fn gold(api: &str) -> Value {
    json!({"id": "gold", "name": "Gold", "org_id": "acme", "rate": 100, "per": 60,
        "quota_max": 1000, "quota_renewal_rate": 86400, "active": true,
        "access_rights": {api: {"api_id": api, "api_name": "Pets", "versions": ["Default"]}},
        "tags": ["gold"], "meta_data": {"tier": "gold"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_round_trip_as_tyk_answers_them() {
    let nats = Nats::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let tyk = Tyk::new(&ki.url);

    // A generated key: the organisation id and 32 hex characters; the
    // answer is the only place it appears.
    let session = json!({"org_id": "acme", "alias": "mobile", "rate": 10, "per": 1,
        "quota_max": 100, "quota_renewal_rate": 3600,
        "access_rights": {"pets": {"api_id": "pets", "api_name": "Pets", "versions": ["Default"],
            "allowed_urls": [{"url": "/pets", "methods": ["GET"]}]}},
        "meta_data": {"team": "mobile", "n": 3}, "tags": ["a"],
        "hmac_enabled": false, "monitor": {"trigger_limits": [80.0]}, "jwt_data": {"secret": ""}});
    let (status, created) = tyk.post("/tyk/keys", &session).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(
        (created["status"].as_str(), created["action"].as_str()),
        (Some("ok"), Some("added"))
    );
    let key = created["key"].as_str().unwrap().to_owned();
    let suffix = key.strip_prefix("acme").expect("the org id first");
    assert!(
        suffix.len() == 32 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    assert_eq!(created["key_hash"], sha256(&key));

    // The whole session round-trips, fields Meridian does not use included.
    let (status, shown) = tyk.get(&format!("/tyk/keys/{key}")).await;
    assert_eq!(status, 200);
    for field in [
        "alias",
        "org_id",
        "meta_data",
        "tags",
        "monitor",
        "jwt_data",
        "hmac_enabled",
    ] {
        assert_eq!(shown[field], session[field], "{field}");
    }
    assert_eq!(
        shown["access_rights"]["pets"]["allowed_urls"],
        session["access_rights"]["pets"]["allowed_urls"]
    );
    assert_eq!(
        shown["quota_remaining"], 100,
        "a new key starts a full quota period"
    );
    assert!(shown["quota_renews"].as_i64().unwrap() > 0);
    assert!(shown["date_created"].as_str().unwrap().starts_with("20"));
    // By its hash too.
    let (status, by_hash) = tyk
        .get(&format!("/tyk/keys/{}?hashed=true", sha256(&key)))
        .await;
    assert_eq!((status, &by_hash), (200, &shown));
    let (status, _) = tyk.post("/tyk/keys/create", &session).await;
    assert_eq!(status, 200, "/tyk/keys/create creates too");

    // Update: the quota period restarts unless suppress_reset=1.
    let mut changed = session.clone();
    changed["alias"] = json!("mobile-2");
    changed["quota_max"] = json!(500);
    let (status, answer) = tyk
        .put(&format!("/tyk/keys/{key}?suppress_reset=1"), &changed)
        .await;
    assert_eq!((status, answer["action"].as_str()), (200, Some("modified")));
    let kept = tyk.get_ok(&format!("/tyk/keys/{key}")).await;
    assert_eq!(
        (kept["alias"].as_str(), kept["quota_max"].as_i64()),
        (Some("mobile-2"), Some(500))
    );
    // No request counted yet: all of the new quota is left, as Tyk answers
    // (what suppress_reset keeps of a spent quota is tested in
    // limits::quotas_headers_throttling_and_switches_behave_as_tyk).
    assert_eq!(kept["quota_remaining"], 500);
    assert_eq!(kept["date_created"], shown["date_created"]);
    tyk.put_ok(&format!("/tyk/keys/{key}"), &changed).await;
    let reset = tyk.get_ok(&format!("/tyk/keys/{key}")).await;
    assert_eq!(reset["quota_remaining"], 500, "without it, a new period");

    // A custom key; a POST to an existing one overwrites it, as Tyk; one
    // shorter than Tyk's default minimum (3) is refused.
    let (status, custom) = tyk.post("/tyk/keys/my-custom-key-1", &session).await;
    assert_eq!(
        (status, custom["key"].as_str()),
        (200, Some("my-custom-key-1"))
    );
    let mut replaced = session.clone();
    replaced["alias"] = json!("replaced");
    let (status, again) = tyk.post("/tyk/keys/my-custom-key-1", &replaced).await;
    assert_eq!(
        (status, again["action"].as_str()),
        (200, Some("added")),
        "{again}"
    );
    assert_eq!(
        tyk.get_ok("/tyk/keys/my-custom-key-1").await["alias"],
        "replaced"
    );
    let (status, _) = tyk.post("/tyk/keys/abc", &session).await;
    assert_eq!(status, 200, "three characters is Tyk's minimum");
    let (status, short) = tyk.post("/tyk/keys/ab", &session).await;
    assert_eq!(status, 400);
    assert!(
        short["message"].as_str().unwrap().contains("keyID"),
        "{short}"
    );

    // Preview: checked and merged, not stored.
    let (status, preview) = tyk.post("/tyk/keys/preview", &session).await;
    assert_eq!((status, preview["alias"].as_str()), (200, Some("mobile")));

    // Listing is off while keys are hashed and the listing is not enabled.
    let (status, off) = tyk.get("/tyk/keys").await;
    assert_eq!(status, 404);
    assert_eq!(
        off["message"],
        "Hashed key listing is disabled in config (enable_hashed_keys_listing)"
    );

    // Delete, then it is gone, with Tyk's words.
    let (status, deleted) = tyk.delete(&format!("/tyk/keys/{key}")).await;
    assert_eq!((status, deleted["action"].as_str()), (200, Some("deleted")));
    let (status, gone) = tyk.get(&format!("/tyk/keys/{key}")).await;
    assert_eq!(
        (status, gone["message"].as_str()),
        (404, Some("Key not found"))
    );
    let (status, gone) = tyk.delete(&format!("/tyk/keys/{key}")).await;
    assert_eq!(
        (status, gone["message"].as_str()),
        (404, Some("There is no such key found"))
    );
    let (status, gone) = tyk.put(&format!("/tyk/keys/{key}"), &session).await;
    assert_eq!(
        (status, gone["message"].as_str()),
        (404, Some("Key is not found")),
        "Tyk's PUT says it so"
    );
    ki.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_shape_the_effective_session_the_proxy_reads() {
    let nats = Nats::start().await;
    let (ki, state) = start_key_issuer(&nats, |_| {}).await;
    let tyk = Tyk::new(&ki.url);

    let (status, added) = tyk.post("/tyk/policies", &gold("pets")).await;
    assert_eq!(
        (status, added["key"].as_str(), added["action"].as_str()),
        (200, Some("gold"), Some("added"))
    );
    let (status, generated) = tyk
        .post(
            "/tyk/policies",
            &json!({"name": "Anonymous", "access_rights": {"pets": {}}}),
        )
        .await;
    assert_eq!(status, 200);
    let generated_id = generated["key"].as_str().unwrap().to_owned();
    assert_eq!(generated_id.len(), 24, "a generated id, as Tyk's");
    // A POST with an existing id replaces it, as Tyk; so does a POST to
    // /tyk/policies/{polID}.
    let (status, dup) = tyk.post("/tyk/policies", &gold("pets")).await;
    assert_eq!(
        (status, dup["action"].as_str()),
        (200, Some("added")),
        "{dup}"
    );
    let mut silver = gold("pets");
    silver["id"] = json!("");
    silver["name"] = json!("Silver");
    let (status, at) = tyk.post("/tyk/policies/silver", &silver).await;
    assert_eq!(
        (status, at["key"].as_str(), at["action"].as_str()),
        (200, Some("silver"), Some("added")),
        "{at}"
    );
    assert_eq!(tyk.get_ok("/tyk/policies/silver").await["name"], "Silver");
    assert_eq!(tyk.delete("/tyk/policies/silver").await.0, 200);
    let (status, list) = tyk.get("/tyk/policies").await;
    assert_eq!((status, list.as_array().unwrap().len()), (200, 2));
    let (status, shown) = tyk.get("/tyk/policies/gold").await;
    assert_eq!(
        (status, shown["name"].as_str(), shown["rate"].as_f64()),
        (200, Some("Gold"), Some(100.0))
    );
    assert_eq!(
        shown["access_rights"]["pets"]["versions"],
        json!(["Default"])
    );

    // A key that applies the policy: as stored (`stored=true`) it has no
    // limits of its own; a plain GET answers it merged with the policy, as
    // Tyk does (its own API tests expect the policy's quota there).
    let created = tyk
        .post_ok(
            "/tyk/keys",
            &json!({"org_id": "acme", "alias": "partner", "apply_policies": ["gold"]}),
        )
        .await;
    let key = created["key"].as_str().unwrap().to_owned();
    let stored = tyk.get_ok(&format!("/tyk/keys/{key}?stored=true")).await;
    assert_eq!(stored["rate"].as_f64(), Some(0.0));
    let (status, effective) = tyk.get(&format!("/tyk/keys/{key}")).await;
    assert_eq!(status, 200, "{effective}");
    assert_eq!(
        (effective["rate"].as_f64(), effective["per"].as_f64()),
        (Some(100.0), Some(60.0))
    );
    assert_eq!(effective["quota_max"], 1000);
    assert_eq!(effective["tags"], json!(["gold"]));
    assert_eq!(effective["meta_data"]["tier"], "gold");
    assert!(effective["access_rights"]["pets"].is_object());
    // The fold holds the same, ready for a lookup without I/O.
    let hash = sha256(&key);
    {
        let view = state.read().unwrap();
        let merged = view.effective(&hash).unwrap().as_ref().unwrap();
        assert_eq!(merged.rate, 100.0);
    }

    // Changing the policy changes every key that applies it.
    let mut faster = gold("pets");
    faster["rate"] = json!(500);
    let (status, modified) = tyk.put("/tyk/policies/gold", &faster).await;
    assert_eq!(
        (status, modified["action"].as_str()),
        (200, Some("modified"))
    );
    let effective = tyk.get_ok(&format!("/tyk/keys/{key}")).await;
    assert_eq!(effective["rate"].as_f64(), Some(500.0));

    // A second policy: rights are the union, the most generous limits win.
    let (status, _) = tyk
        .put(
            &format!("/tyk/policies/{generated_id}"),
            &json!({"rate": 1, "per": 1,
            "quota_max": -1, "access_rights": {"owners": {}}}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, set) = tyk
        .post(
            &format!("/tyk/keys/policy/{hash}"),
            &json!({"apply_policies": ["gold", generated_id]}),
        )
        .await;
    assert_eq!(
        (status, set["action"].as_str()),
        (200, Some("updated")),
        "{set}"
    );
    let effective = tyk.get_ok(&format!("/tyk/keys/{key}")).await;
    let apis: Vec<&String> = effective["access_rights"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(apis, ["owners", "pets"]);
    assert_eq!(effective["quota_max"], -1, "unlimited beats 1,000");
    assert_eq!(
        effective["rate"].as_f64(),
        Some(500.0),
        "500 a minute beats 1 a second"
    );
    // An id mismatch is refused as Tyk refuses it.
    let (status, mismatch) = tyk
        .put("/tyk/policies/gold", &json!({"id": "silver"}))
        .await;
    assert_eq!(status, 400);
    assert!(
        mismatch["message"]
            .as_str()
            .unwrap()
            .starts_with("Request ID does not match")
    );
    // A policy that does not exist is skipped, as Tyk's merge skips it:
    // the key is stored (the gateway refuses it while that is its only
    // policy), and beside a real policy it gets that one's limits.
    let (status, unknown) = tyk
        .post("/tyk/keys", &json!({"apply_policies": ["nope"]}))
        .await;
    assert_eq!(status, 200, "{unknown}");
    let (status, mixed) = tyk
        .post("/tyk/keys", &json!({"apply_policies": ["nope", "gold"]}))
        .await;
    assert_eq!(status, 200, "{mixed}");
    let merged = tyk
        .get_ok(&format!("/tyk/keys/{}", mixed["key"].as_str().unwrap()))
        .await;
    assert_eq!(merged["rate"].as_f64(), Some(500.0));
    // Per-API and partitioned policies can never be applied together:
    // refused at creation, as Tyk.
    for (id, body) in [
        (
            "per-api",
            json!({"partitions": {"per_api": true}, "access_rights": {"pets": {}}}),
        ),
        (
            "quota-part",
            json!({"quota_max": 5, "partitions": {"quota": true}, "access_rights": {"pets": {}}}),
        ),
    ] {
        assert_eq!(tyk.put(&format!("/tyk/policies/{id}"), &body).await.0, 200);
    }
    let (status, refused) = tyk
        .post(
            "/tyk/keys",
            &json!({"apply_policies": ["per-api", "quota-part"]}),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        refused["message"],
        "Failed to create key - cannot apply multiple policies when some have per_api set and some are partitioned"
    );

    // Deleting the policies leaves the key without access: the proxy
    // refuses it, and a GET answers it as stored (as Tyk, whose merge
    // fails the same way).
    for id in ["gold", generated_id.as_str(), "per-api", "quota-part"] {
        let (status, _) = tyk.delete(&format!("/tyk/policies/{id}")).await;
        assert_eq!(status, 200);
    }
    let (status, as_stored) = tyk.get(&format!("/tyk/keys/{key}")).await;
    assert_eq!(
        (status, as_stored["rate"].as_f64()),
        (200, Some(0.0)),
        "{as_stored}"
    );
    let (status, gone) = tyk.get("/tyk/policies/gold").await;
    assert_eq!(
        (status, gone["message"].as_str()),
        (404, Some("Policy not found"))
    );
    let (status, gone) = tyk.delete("/tyk/policies/gold").await;
    assert_eq!(
        (status, gone["message"].as_str()),
        (404, Some("Policy not found"))
    );
    ki.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organisation_sessions_limit_or_block_an_organisation() {
    let nats = Nats::start().await;
    let (ki, state) = start_key_issuer(&nats, |_| {}).await;
    let tyk = Tyk::new(&ki.url);
    let (status, added) = tyk
        .post(
            "/tyk/org/keys/acme",
            &json!({"rate": 1000, "per": 1, "quota_max": 10, "quota_renewal_rate": 60}),
        )
        .await;
    assert_eq!(
        (status, added["key"].as_str(), added["action"].as_str()),
        (200, Some("acme"), Some("added"))
    );
    let (status, shown) = tyk.get("/tyk/org/keys/acme").await;
    assert_eq!(
        (
            status,
            shown["org_id"].as_str(),
            shown["quota_remaining"].as_i64()
        ),
        (200, Some("acme"), Some(10))
    );
    tyk.post_ok("/tyk/org/keys/globex", &json!({"rate": 5, "per": 1}))
        .await;
    let list = tyk.get_ok("/tyk/org/keys").await;
    assert_eq!(list["keys"], json!(["acme", "globex"]));
    let filtered = tyk.get_ok("/tyk/org/keys?filter=gl").await;
    assert_eq!(filtered["keys"], json!(["globex"]));

    // is_inactive blocks every key of the organisation at the proxy.
    let (status, modified) = tyk
        .put(
            "/tyk/org/keys/acme",
            &json!({"rate": 1000, "per": 1, "quota_max": 20, "is_inactive": true}),
        )
        .await;
    assert_eq!(
        (status, modified["action"].as_str()),
        (200, Some("modified"))
    );
    let shown = tyk.get_ok("/tyk/org/keys/acme").await;
    assert_eq!(shown["is_inactive"], true);
    // Nothing counted against it yet: all of it is left (a spent one kept
    // without reset_quota: limits::organisation_limits_sum_their_keys_traffic).
    assert_eq!(shown["quota_remaining"], 20);
    tyk.put_ok(
        "/tyk/org/keys/acme?reset_quota=1",
        &json!({"quota_max": 20, "is_inactive": true}),
    )
    .await;
    let shown = tyk.get_ok("/tyk/org/keys/acme").await;
    assert_eq!(
        shown["quota_remaining"], 20,
        "reset_quota=1 starts a new period"
    );
    assert!(state.read().unwrap().org("acme").unwrap().value.is_inactive);

    let (status, mismatch) = tyk
        .post("/tyk/org/keys/acme", &json!({"org_id": "other"}))
        .await;
    assert_eq!(status, 400);
    assert!(mismatch["message"].as_str().unwrap().contains("org_id"));
    // A PUT for an organisation with no session yet writes it, as Tyk.
    let (status, created) = tyk
        .put("/tyk/org/keys/initech", &json!({"rate": 1, "per": 1}))
        .await;
    assert_eq!(
        (status, created["action"].as_str()),
        (200, Some("modified")),
        "{created}"
    );
    assert_eq!(tyk.get_ok("/tyk/org/keys/initech").await["rate"], 1.0);
    let (status, _) = tyk.delete("/tyk/org/keys/acme").await;
    assert_eq!(status, 200);
    let (status, gone) = tyk.get("/tyk/org/keys/acme").await;
    assert_eq!(
        (status, gone["message"].as_str()),
        (404, Some("Org not found"))
    );
    ki.stop().await;
}

/// Records tokens as the proxy does (a core-NATS request, hashes only).
async fn record(nats: &Nats, tokens: Vec<(String, TokenRecord)>) -> RecordTokensReply {
    let request = RecordTokens {
        request_id: uuid::Uuid::new_v4(),
        tokens,
        codes: Vec::new(),
        redeem: None,
    };
    let answer = nats
        .client
        .request(
            streams::RECORD_TOKENS_SUBJECT,
            commands::encode(&request).into(),
        )
        .await
        .expect("a key-issuer answers");
    commands::decode(&answer.payload).unwrap()
}

fn token(client: &str, api: &str, refresh: bool, expires_in_ms: i64) -> TokenRecord {
    let now = meridian_kit::time::now_ms();
    TokenRecord {
        client_id: client.into(),
        api_id: api.into(),
        refresh,
        expires_ms: now + expires_in_ms,
        issued_ms: now,
        key_hash: String::new(),
        access_hash: String::new(),
    }
}

/// A gateway with these APIs (id, `use_oauth2`), for OAuth clients: Tyk
/// refuses a client for an API it does not have or that does not use
/// OAuth 2.0.
async fn gateway_with(nats: &Nats, apis: &[(&str, bool)]) -> meridian_tests::tyk::Proxy {
    let proxy = meridian_tests::tyk::start_proxy(nats, |_| {}).await;
    let admin = Tyk::new(&proxy.admin.url);
    for (id, oauth) in apis {
        let (status, body) = admin
            .post(
                "/tyk/apis",
                &json!({"api_id": id, "name": id, "use_oauth2": oauth,
                    "proxy": {"listen_path": format!("/{id}/"), "target_url": "http://127.0.0.1:9"}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    proxy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_clients_their_secrets_and_their_tokens() {
    let nats = Nats::start().await;
    let (ki, state) = start_key_issuer(&nats, |_| {}).await;
    let _gateway = gateway_with(
        &nats,
        &[
            ("pets", true),
            ("owners", true),
            ("other-api", true),
            ("plain", false),
        ],
    )
    .await;
    let tyk = Tyk::new(&ki.url);
    tyk.post_ok("/tyk/policies", &gold("pets")).await;

    // Tyk's refusals: an API the gateway does not have, one without
    // OAuth 2.0, a policy that does not exist; metadata may be any JSON.
    for (body, message) in [
        (json!({"api_id": "nowhere"}), "API doesn't exist"),
        (json!({"api_id": "plain"}), "API is not OAuth2"),
        (
            json!({"policy_id": "no-such-policy"}),
            "Policy doesn't exist",
        ),
    ] {
        let (status, refused) = tyk.post("/tyk/oauth/clients/create", &body).await;
        assert_eq!(
            (status, refused["message"].as_str()),
            (400, Some(message)),
            "{body}"
        );
    }
    let (status, nested) = tyk
        .post(
            "/tyk/oauth/clients/create",
            &json!({"api_id": "other-api", "meta_data": {"team": {"name": "m", "size": 3}, "tags": ["a"]}}),
        )
        .await;
    assert_eq!(status, 200, "{nested}");
    assert_eq!(nested["meta_data"]["team"]["size"], 3);
    let nested_id = nested["client_id"].as_str().unwrap().to_owned();
    assert_eq!(
        tyk.delete(&format!("/tyk/oauth/clients/other-api/{nested_id}"))
            .await
            .0,
        200
    );
    let (status, unknown) = tyk.get("/tyk/oauth/clients/nowhere").await;
    assert_eq!(status, 404, "{unknown}");

    let (status, created) = tyk
        .post("/tyk/oauth/clients/create", &json!({"api_id": "pets", "policy_id": "gold",
            "redirect_uri": "https://app.example/cb", "description": "mobile app", "meta_data": {"team": "m"}}))
        .await;
    assert_eq!(status, 200, "{created}");
    let client = created["client_id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 32, "a generated secret");
    // Stored as its hash; shown nowhere else.
    assert_eq!(
        state
            .read()
            .unwrap()
            .client(&client)
            .unwrap()
            .value
            .secret_hash,
        sha256(&secret)
    );
    let (status, shown) = tyk.get(&format!("/tyk/oauth/clients/pets/{client}")).await;
    assert_eq!(
        (status, shown["redirect_uri"].as_str()),
        (200, Some("https://app.example/cb"))
    );
    assert!(shown.get("secret").is_none(), "{shown}");
    let list = tyk.get_ok("/tyk/oauth/clients/pets").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let none = tyk.get_ok("/tyk/oauth/clients/other-api").await;
    assert_eq!(none, json!([]));
    let apis = tyk
        .get_ok(&format!("/tyk/oauth/clients/apis/{client}"))
        .await;
    assert_eq!(apis, json!(["pets"]));
    // A client for an API its policy does not cover is refused.
    let (status, refused) = tyk
        .post(
            "/tyk/oauth/clients/create",
            &json!({"api_id": "owners", "policy_id": "gold"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        refused["message"],
        "Policy access rights doesn't contain API this OAuth client belongs to"
    );

    let (status, updated) = tyk
        .put(
            &format!("/tyk/oauth/clients/pets/{client}"),
            &json!({"redirect_uri": "https://app.example/v2",
            "policy_id": "gold", "description": "v2"}),
        )
        .await;
    assert_eq!((status, updated["description"].as_str()), (200, Some("v2")));

    // Tokens the proxy issued (recorded by hash), listed by hash.
    let access: Vec<String> = (0..3)
        .map(|i| format!("access-token-{i}-{client}"))
        .collect();
    let refresh = format!("refresh-token-{client}");
    let mut records: Vec<(String, TokenRecord)> = access
        .iter()
        .map(|t| (sha256(t), token(&client, "pets", false, 3_600_000)))
        .collect();
    records.push((sha256(&refresh), token(&client, "pets", true, 86_400_000)));
    assert!(
        matches!(
            record(&nats, records).await,
            RecordTokensReply::Recorded { .. }
        ),
        "the tokens are recorded"
    );
    let refused = record(
        &nats,
        vec![(sha256("x"), token("nobody", "pets", false, 1000))],
    )
    .await;
    assert!(
        matches!(refused, RecordTokensReply::Refused(_)),
        "{refused:?}"
    );
    let (status, tokens) = tyk
        .get(&format!("/tyk/oauth/clients/pets/{client}/tokens"))
        .await;
    assert_eq!(status, 200);
    let codes: Vec<&str> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes.len(), 3);
    assert!(codes.contains(&sha256(&access[0]).as_str()));
    let page = tyk
        .get_ok(&format!("/tyk/oauth/clients/pets/{client}/tokens?page=1"))
        .await;
    assert_eq!(page["Pagination"]["page_num"], 1);
    assert_eq!(page["Tokens"].as_array().unwrap().len(), 3);

    // Revoke one, then all (with the secret), then the refresh token.
    let (status, revoked) = tyk
        .post_form(
            "/tyk/oauth/revoke",
            &format!(
                "token={}&token_type_hint=access_token&client_id={client}",
                access[0]
            ),
        )
        .await;
    assert_eq!((status, revoked["status"].as_str()), (200, Some("ok")));
    assert!(state.read().unwrap().token(&sha256(&access[0])).is_none());
    let (status, missing) = tyk.post_form("/tyk/oauth/revoke", "client_id=x").await;
    assert_eq!(status, 400);
    assert!(
        missing["message"].as_str().unwrap().contains("token"),
        "{missing}"
    );
    let (status, wrong) = tyk
        .post_form(
            "/tyk/oauth/revoke_all",
            &format!("client_id={client}&client_secret=wrong"),
        )
        .await;
    assert_eq!(
        (status, wrong["message"].as_str()),
        (401, Some("client secret is invalid"))
    );
    let (status, _) = tyk
        .post_form(
            "/tyk/oauth/revoke_all",
            &format!("client_id={client}&client_secret={secret}"),
        )
        .await;
    assert_eq!(status, 200);
    let tokens = tyk
        .get_ok(&format!("/tyk/oauth/clients/pets/{client}/tokens"))
        .await;
    assert_eq!(tokens, json!([]));
    assert!(
        state.read().unwrap().token(&sha256(&refresh)).is_none(),
        "revoke_all takes refresh tokens too"
    );
    record(
        &nats,
        vec![(sha256(&refresh), token(&client, "pets", true, 86_400_000))],
    )
    .await;
    let (status, _) = tyk.delete(&format!("/tyk/oauth/refresh/{refresh}")).await;
    assert_eq!(status, 400, "api_id is required");
    let (status, gone) = tyk
        .delete(&format!("/tyk/oauth/refresh/{refresh}?api_id=pets"))
        .await;
    assert_eq!((status, gone["action"].as_str()), (200, Some("deleted")));
    let (status, _) = tyk
        .delete(&format!("/tyk/oauth/refresh/{refresh}?api_id=pets"))
        .await;
    assert_eq!(status, 404);

    // Lapsed tokens are purged on request.
    record(
        &nats,
        vec![(sha256("short-lived"), token(&client, "pets", false, 50))],
    )
    .await;
    assert!(
        state
            .read()
            .unwrap()
            .token(&sha256("short-lived"))
            .is_some()
    );
    let lapsed = eventually(Duration::from_secs(5), || async {
        let tokens = tyk
            .get_ok(&format!("/tyk/oauth/clients/pets/{client}/tokens"))
            .await;
        (tokens == json!([])).then_some(())
    })
    .await;
    assert!(lapsed.is_some(), "an expired token is not listed");
    let (status, _) = tyk.delete("/tyk/oauth/tokens").await;
    assert_eq!(status, 400, "scope is required");
    let (status, _) = tyk.delete("/tyk/oauth/tokens?scope=lapsed").await;
    assert_eq!(status, 200);
    assert!(
        state
            .read()
            .unwrap()
            .token(&sha256("short-lived"))
            .is_none()
    );

    // A new secret, shown once; the old one no longer revokes.
    let (status, rotated) = tyk
        .put(
            &format!("/tyk/oauth/clients/pets/{client}/rotate"),
            &json!({}),
        )
        .await;
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_eq!(status, 200);
    assert_ne!(new_secret, secret);
    let (status, _) = tyk
        .post_form(
            "/tyk/oauth/revoke_all",
            &format!("client_id={client}&client_secret={secret}"),
        )
        .await;
    assert_eq!(status, 401);

    let (status, deleted) = tyk
        .delete(&format!("/tyk/oauth/clients/pets/{client}"))
        .await;
    assert_eq!((status, deleted["action"].as_str()), (200, Some("deleted")));
    let (status, gone) = tyk.get(&format!("/tyk/oauth/clients/pets/{client}")).await;
    assert_eq!(
        (status, gone["message"].as_str()),
        (404, Some("OAuth Client ID not found"))
    );
    ki.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_tyks_errors_and_stores_nothing() {
    let nats = Nats::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let tyk = Tyk::new(&ki.url);
    tyk.post_ok("/tyk/policies", &gold("pets")).await;
    let before = stream_count(&nats.js, streams::KEYS).await;

    for secret in [None, Some("wrong-secret-0123456789")] {
        let (status, body) = tyk.with_secret(secret).get("/tyk/policies").await;
        assert_eq!(status, 403);
        assert_eq!(
            body,
            json!({"status": "error", "message": "Attempted administrative access with invalid or missing key!"})
        );
    }
    let cases: [(&str, &str, &str); 10] = [
        ("/tyk/keys", "{not json", "body"),
        (
            "/tyk/keys",
            r#"{"rate": "fast", "access_rights": {"a": {}}}"#,
            "rate",
        ),
        (
            "/tyk/keys",
            r#"{"quota_max": -7, "access_rights": {"a": {}}}"#,
            "quota_max",
        ),
        (
            "/tyk/keys",
            r#"{"access_rights": {"a": {"limit": {"per": -2}}}}"#,
            "access_rights.a.limit.per",
        ),
        ("/tyk/keys", r#"{"alias": "no rights"}"#, "Access Rights"),
        (
            "/tyk/policies",
            r#"{"id": "p", "partitions": {"per_api": true, "acl": true}}"#,
            "partitions",
        ),
        (
            "/tyk/policies",
            r#"{"id": "p", "access_rights": []}"#,
            "access_rights",
        ),
        (
            "/tyk/oauth/clients/create",
            r#"{"description": "no api"}"#,
            "api_id",
        ),
        // An allowed URL that is no regular expression would refuse every
        // request with a silent 403; it is refused on write instead.
        (
            "/tyk/keys",
            r#"{"access_rights": {"a": {"allowed_urls": [{"url": "/ok"}, {"url": "/pets/(", "methods": ["GET"]}]}}}"#,
            "access_rights.a.allowed_urls[1].url: is not a valid regular expression: unclosed group",
        ),
        (
            "/tyk/policies",
            r#"{"id": "p", "access_rights": {"a": {"allowed_urls": [{"url": "[z-a]"}]}}}"#,
            "access_rights.a.allowed_urls[0].url",
        ),
    ];
    for (path, body, field) in cases {
        let (status, answer) = tyk
            .call(
                reqwest::Method::POST,
                path,
                meridian_tests::tyk::Body::Raw(body),
            )
            .await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(answer["status"], "error");
        assert!(
            answer["message"].as_str().unwrap().contains(field),
            "{path} {body}: {answer} does not name {field}"
        );
    }
    let (status, _) = tyk.get("/tyk/keys/unknown-key-123").await;
    assert_eq!(status, 404);
    let (status, _) = tyk.get("/tyk/keys/abc?hashed=true").await;
    assert_eq!(status, 400, "hashed=true takes a hash");
    let long = "k".repeat(300);
    let (status, _) = tyk.get(&format!("/tyk/keys/{long}")).await;
    assert_eq!(status, 400);
    // Nothing refused was stored.
    assert_eq!(stream_count(&nats.js, streams::KEYS).await, before);
    ki.stop().await;
}

/// One write's session as stored by the event on the key's subject.
fn saved_session(event: &KeysEvent) -> Option<Value> {
    match event {
        KeysEvent::KeySaved { session, .. } => Some(serde_json::from_str(session).unwrap()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_writing_one_key_lose_no_update() {
    let nats = Nats::start().await;
    let (a, _) = start_key_issuer(&nats, |_| {}).await;
    let (b, _) = start_key_issuer(&nats, |_| {}).await;
    let (ta, tb) = (Tyk::new(&a.url), Tyk::new(&b.url));
    for p in ["p1", "p2"] {
        let mut policy = gold("pets");
        policy["id"] = json!(p);
        ta.post_ok("/tyk/policies", &policy).await;
    }
    let key = "shared-key-0001";
    ta.post_ok(
        &format!("/tyk/keys/{key}"),
        &json!({"alias": "v0", "apply_policies": ["p1"]}),
    )
    .await;
    let hash = sha256(key);
    // Each round, at once: replica A sets the key's policies (a
    // read-modify-write that keeps everything else), replica B replaces the
    // session with a new alias.
    let rounds = 15;
    for round in 0..rounds {
        let policy = if round % 2 == 0 { "p2" } else { "p1" };
        let (set_path, set_body) = (
            format!("/tyk/keys/policy/{hash}"),
            json!({"apply_policies": [policy]}),
        );
        let (put_path, put_body) = (
            format!("/tyk/keys/{key}?suppress_reset=1"),
            json!({"alias": format!("v{}", round + 1), "apply_policies": ["p1"]}),
        );
        let ((s1, r1), (s2, r2)) =
            tokio::join!(ta.post(&set_path, &set_body), tb.put(&put_path, &put_body));
        assert_eq!((s1, s2), (200, 200), "{r1} {r2}");
    }
    // The key's events, in log order: each read-modify-write was decided on
    // the state the event before it left (nothing it did not change moved).
    let subject = streams::keys_subject(streams::KeysEntity::Key, &hash);
    let events: Vec<KeysEvent> = stream_events(&nats.js, streams::KEYS)
        .await
        .into_iter()
        .filter(|e: &KeysEvent| e.subject() == subject)
        .collect();
    let sessions: Vec<Value> = events.iter().filter_map(saved_session).collect();
    let mut rmw_seen = 0;
    let mut aliases = Vec::new();
    for pair in sessions.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        if after["alias"] == before["alias"] {
            // A's policy change: the alias B wrote last survived.
            rmw_seen += 1;
        } else {
            assert_eq!(after["apply_policies"], json!(["p1"]), "B's replacement");
            aliases.push(after["alias"].clone());
        }
    }
    // Every change is in the log once: each of B's replacements (each a
    // new alias), and each of A's policy changes that changed something.
    // A write that found the key already so (A setting `p1` after B's
    // replacement set it) stores nothing; A setting `p2` always changes
    // it, so at least the even rounds' are there.
    let expected: Vec<Value> = (1..=rounds).map(|r| json!(format!("v{r}"))).collect();
    assert_eq!(aliases, expected, "every replacement, once, in order");
    assert_eq!(
        events.len(),
        1 + rounds + rmw_seen,
        "every change is in the log once"
    );
    assert!(
        rmw_seen >= rounds.div_ceil(2) && rmw_seen <= rounds,
        "{rmw_seen} policy changes stored, each keeping the alias before it"
    );
    // Both replicas read what the log's last event says.
    let last = sessions.last().unwrap();
    for t in [&ta, &tb] {
        let shown = t.get_ok(&format!("/tyk/keys/{key}?stored=true")).await;
        assert_eq!(&shown, last);
    }
    let da = ta.get_ok("/api/keys/digest").await;
    let db = tb.get_ok("/api/keys/digest").await;
    assert_eq!(da, db, "the two replicas hold the same view");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_follows_hashing_and_its_switch() {
    let nats = Nats::start().await;
    let (listing, _) = start_key_issuer(&nats, |c| c.enable_hashed_keys_listing = true).await;
    let (plain, _) = start_key_issuer(&nats, |c| c.hash_keys = false).await;
    let session = json!({"access_rights": {"pets": {}}});
    let created = Tyk::new(&listing.url).post_ok("/tyk/keys", &session).await;
    let key = created["key"].as_str().unwrap();
    let (status, listed) = Tyk::new(&listing.url).get("/tyk/keys").await;
    assert_eq!(
        (status, listed["keys"].clone()),
        (200, json!([sha256(key)]))
    );
    let filtered = Tyk::new(&listing.url)
        .get_ok(&format!("/tyk/keys?filter={}", &sha256(key)[..6]))
        .await;
    assert_eq!(filtered["keys"].as_array().unwrap().len(), 1);
    assert!(filtered.get("sessions").is_none(), "only when asked");
    // ?sessions=true (Meridian's): each key as stored and its quota, in
    // one answer.
    let quota_key = Tyk::new(&listing.url)
        .post_ok(
            "/tyk/keys",
            &json!({"alias": "with-quota", "quota_max": 50, "quota_renewal_rate": 60,
                "access_rights": {"pets": {}}}),
        )
        .await;
    let (status, detailed) = Tyk::new(&listing.url).get("/tyk/keys?sessions=true").await;
    assert_eq!(status, 200, "{detailed}");
    let sessions = detailed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{detailed}");
    let with_quota = sessions
        .iter()
        .find(|k| k["key_hash"] == quota_key["key_hash"])
        .expect("the key with a quota");
    assert_eq!(with_quota["session"]["alias"], "with-quota");
    assert_eq!(
        (
            with_quota["quota"]["quota_max"].clone(),
            with_quota["quota"]["quota_remaining"].clone(),
            with_quota["quota"]["quota_renewal_rate"].clone()
        ),
        (json!(50), json!(50), json!(60))
    );
    // Without hashing (as Tyk's hash_keys: false) answers carry no
    // key_hash and the listing is on; it still lists hashes, since keys are
    // never stored in clear.
    let created = Tyk::new(&plain.url).post_ok("/tyk/keys", &session).await;
    assert!(created.get("key_hash").is_none(), "{created}");
    let (status, listed) = Tyk::new(&plain.url).get("/tyk/keys").await;
    assert_eq!(status, 200);
    assert_eq!(listed["keys"].as_array().unwrap().len(), 3);
    listing.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_become_public_events_without_secrets() {
    let nats = Nats::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let _gateway = gateway_with(&nats, &[("pets", true)]).await;
    let tyk = Tyk::new(&ki.url);
    tyk.post_ok("/tyk/policies", &gold("pets")).await;
    let created = tyk
        .post_ok(
            "/tyk/keys",
            &json!({"org_id": "acme", "alias": "partner", "apply_policies": ["gold"]}),
        )
        .await;
    let key = created["key"].as_str().unwrap().to_owned();
    tyk.put_ok(
        &format!("/tyk/keys/{key}"),
        &json!({"org_id": "acme", "alias": "partner-2", "apply_policies": ["gold"]}),
    )
    .await;
    let client = tyk
        .post_ok(
            "/tyk/oauth/clients/create",
            &json!({"api_id": "pets", "policy_id": "gold"}),
        )
        .await;
    let secret = client["secret"].as_str().unwrap().to_owned();
    tyk.delete_ok(&format!("/tyk/keys/{key}")).await;

    let keys = wait_for_public(&nats.js, "events.key.>", 3).await;
    let kinds: Vec<&str> = keys.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "io.meridian.key.created",
            "io.meridian.key.updated",
            "io.meridian.key.deleted"
        ]
    );
    assert_eq!(keys[0]["_subject"], "events.key.created.acme");
    assert_eq!(keys[0]["subject"], sha256(&key));
    assert_eq!(keys[1]["data"]["alias"], "partner-2");
    assert_eq!(keys[0]["data"]["policies"], json!(["gold"]));
    assert_eq!(
        keys[2]["data"]["alias"], "partner-2",
        "a deletion names what was deleted"
    );
    let policies = wait_for_public(&nats.js, "events.policy.>", 1).await;
    assert_eq!(policies[0]["type"], "io.meridian.policy.created");
    assert_eq!(policies[0]["data"]["api_ids"], json!(["pets"]));
    let clients = wait_for_public(&nats.js, "events.oauth_client.>", 1).await;
    assert_eq!(clients[0]["_subject"], "events.oauth_client.created.pets");
    // Neither the key nor the secret is on any stream, in clear.
    for stream in [streams::KEYS, streams::EVENTS] {
        for envelope_or_event in raw_payloads(&nats.js, stream).await {
            for secret in [key.as_str(), secret.as_str()] {
                assert!(
                    !envelope_or_event
                        .windows(secret.len())
                        .any(|w| w == secret.as_bytes()),
                    "{stream} carries a secret in clear"
                );
            }
        }
    }
    ki.stop().await;
}

/// Every message body of a stream.
async fn raw_payloads(js: &async_nats::jetstream::Context, stream: &str) -> Vec<Vec<u8>> {
    let stream = js.get_stream(stream).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(m.payload.to_vec());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_rebuild_give_the_same_view_and_publish_nothing_twice() {
    let nats = Nats::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let _gateway = gateway_with(&nats, &[("pets", true)]).await;
    let tyk = Tyk::new(&ki.url);
    tyk.post_ok("/tyk/policies", &gold("pets")).await;
    for i in 0..5 {
        tyk.post_ok(
            &format!("/tyk/keys/restart-key-{i}"),
            &json!({"apply_policies": ["gold"]}),
        )
        .await;
    }
    tyk.post_ok("/tyk/org/keys/acme", &json!({"rate": 1, "per": 1}))
        .await;
    tyk.post_ok("/tyk/oauth/clients/create", &json!({"api_id": "pets"}))
        .await;
    // 1 policy + 5 keys + 1 client, published once the relay caught up.
    wait_for_public(&nats.js, "events.>", 7).await;
    let before = tyk.get_ok("/api/keys/digest").await;
    ki.stop().await;

    let rebuilt = meridian_key_issuer::rebuild(&nats.url()).await.unwrap();
    assert_eq!(rebuilt.digest, before["digest"].as_str().unwrap());
    assert_eq!(rebuilt.position, before["position"].as_u64().unwrap());

    let (again, _) = start_key_issuer(&nats, |_| {}).await;
    let tyk = Tyk::new(&again.url);
    let after = tyk.get_ok("/api/keys/digest").await;
    assert_eq!(after, before, "a restarted replica folds the same view");
    // A change after the restart is published once the relay has gone past
    // everything before it: then the stream holds exactly one more event.
    tyk.post_ok(
        "/tyk/keys/restart-key-9",
        &json!({"apply_policies": ["gold"]}),
    )
    .await;
    let events = wait_for_public(&nats.js, "events.>", 8).await;
    assert_eq!(events.len(), 8, "nothing published twice: {events:#?}");
    assert_eq!(stream_count(&nats.js, streams::EVENTS).await, 8);
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_key_is_in_no_log_line_and_no_file_of_the_data_directory() {
    let nats = Nats::start().await;
    let bin = workspace_binary("meridian-key-issuer");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = tokio::process::Command::new(bin)
        .env("MERIDIAN_KEY_ISSUER__NATS_URL", nats.url())
        .env(
            "MERIDIAN_KEY_ISSUER__HTTP_ADDR",
            format!("127.0.0.1:{port}"),
        )
        .env("MERIDIAN_KEY_ISSUER__SECRET", GATEWAY_SECRET)
        .env("MERIDIAN_LOG", "debug")
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let ready = eventually(Duration::from_secs(30), || async {
        let r = reqwest::get(format!("{base}/readyz")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(ready.is_some(), "the key-issuer binary did not start");
    let tyk = Tyk::new(&base);
    tyk.post_ok("/tyk/policies", &gold("pets")).await;
    let created = tyk
        .post_ok(
            "/tyk/keys",
            &json!({"alias": "logged?", "apply_policies": ["gold"]}),
        )
        .await;
    let key = created["key"].as_str().unwrap().to_owned();
    let custom = "a-custom-key-nobody-may-see";
    tyk.post_ok(
        &format!("/tyk/keys/{custom}"),
        &json!({"apply_policies": ["gold"]}),
    )
    .await;
    tyk.get_ok(&format!("/tyk/keys/{key}")).await;
    tyk.put_ok(
        &format!("/tyk/keys/{custom}"),
        &json!({"apply_policies": ["gold"]}),
    )
    .await;
    tyk.delete_ok(&format!("/tyk/keys/{key}")).await;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        logged.contains("key created"),
        "the log was captured: {logged}"
    );
    for secret in [key.as_str(), custom, &sha256(&key), &sha256(custom)] {
        let shown: Vec<String> = logged
            .lines()
            .filter(|l| l.contains(secret))
            .map(|l| l.replace(secret, "<SECRET>"))
            .collect();
        assert!(
            shown.is_empty(),
            "log lines show a key or its hash: {shown:#?}"
        );
    }
    // NATS's data directory holds every stream's files.
    let mut files = vec![nats.server.store_dir.clone()];
    let mut searched = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            searched += 1;
            for secret in [key.as_str(), custom] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds a key in clear",
                    path.display()
                );
            }
        }
    }
    assert!(searched > 0, "no file searched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_policies_and_organisations_saved_again_unchanged_append_nothing() {
    let nats = Nats::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let tyk = Tyk::new(&ki.url);
    let last = || async {
        let stream = nats.js.get_stream(streams::KEYS).await.unwrap();
        stream.get_info().await.unwrap().state.last_sequence
    };
    let session = json!({"org_id": "acme", "rate": 10, "per": 1, "quota_max": 100,
        "quota_renewal_rate": 3600, "meta_data": {"team": "a"},
        "access_rights": {"pets": {"api_id": "pets", "versions": ["Default"]}}});
    let (status, created) = tyk.post("/tyk/keys", &session).await;
    assert_eq!(status, 200, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    tyk.post_ok("/tyk/policies", &gold("pets")).await;
    tyk.post_ok(
        "/tyk/org/keys/acme",
        &json!({"quota_max": 500, "quota_renewal_rate": 60}),
    )
    .await;
    let stored = last().await;
    let policy_time = tyk.get_ok("/tyk/policies/gold").await["last_updated"].clone();

    // The same key (its quota kept, as `suppress_reset=1` says), the same
    // policy, the same organisation session (its quota kept, the default):
    // answered as any update, nothing appended.
    for _ in 0..3 {
        let (status, answer) = tyk
            .put(&format!("/tyk/keys/{key}?suppress_reset=1"), &session)
            .await;
        assert_eq!(
            (status, answer["action"].as_str()),
            (200, Some("modified")),
            "{answer}"
        );
        let (status, answer) = tyk.put("/tyk/policies/gold", &gold("pets")).await;
        assert_eq!((status, answer["action"].as_str()), (200, Some("modified")));
        tyk.put_ok(
            "/tyk/org/keys/acme",
            &json!({"quota_max": 500, "quota_renewal_rate": 60}),
        )
        .await;
    }
    assert_eq!(
        last().await,
        stored,
        "nine unchanged saves appended nothing"
    );
    assert_eq!(
        tyk.get_ok("/tyk/policies/gold").await["last_updated"],
        policy_time,
        "an unchanged policy keeps its time"
    );

    // Each change is stored, once.
    let mut changed = session.clone();
    changed["rate"] = json!(11);
    tyk.put_ok(&format!("/tyk/keys/{key}?suppress_reset=1"), &changed)
        .await;
    assert_eq!(last().await, stored + 1);
    assert_eq!(tyk.get_ok(&format!("/tyk/keys/{key}")).await["rate"], 11.0);
    let mut faster = gold("pets");
    faster["rate"] = json!(200);
    tyk.put_ok("/tyk/policies/gold", &faster).await;
    assert_eq!(last().await, stored + 2);
    tyk.put_ok(
        "/tyk/org/keys/acme",
        &json!({"quota_max": 600, "quota_renewal_rate": 60}),
    )
    .await;
    assert_eq!(last().await, stored + 3);
}
