//! `meridian import` brings a Tyk estate over: from a tyk-sync dump (written
//! here by hand in Tyk's shapes), a file-based gateway's folder, and a live
//! (fake) Tyk Gateway, with keys from an export; twice (the second run
//! changes nothing), as a dry run, and with a malformed file named.

use std::path::Path;
use std::time::Duration;

use meridian::hub::{HubConfig, start};
use meridian_kit::CancellationToken;
use meridian_schemas::streams;
use meridian_tests::tyk::{GATEWAY_SECRET, Tyk};
use meridian_tests::*;
use serde_json::{Value, json};

struct Hub {
    nats: Nats,
    url: String,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn hub() -> Hub {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let hub = start(
        HubConfig {
            nats_url: nats.url(),
            data_dir: dir.path().to_owned(),
            api_key: API_KEY.into(),
            jwt_secret: JWT_SECRET.into(),
            gateway_secret: GATEWAY_SECRET.into(),
            http_addr: "127.0.0.1:0".into(),
            grpc_addr: "127.0.0.1:0".into(),
            gateway_addr: "127.0.0.1:0".into(),
            heartbeat_interval: Duration::from_secs(1),
        },
        stop.clone(),
    )
    .await
    .unwrap();
    let url = format!("http://{}", hub.http_addr);
    tokio::spawn(hub.run_until_stopped(Duration::from_secs(5)));
    let ready = eventually(Duration::from_secs(30), || async {
        let r = reqwest::get(format!("{url}/readyz")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(ready.is_some(), "the hub did not become ready");
    Hub {
        nats,
        url,
        stop,
        _dir: dir,
    }
}

/// `meridian import ARGS` against the hub; exit code and what it printed.
async fn import(hub: &Hub, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(workspace_binary("meridian"))
        .arg("import")
        .args(args)
        .env("MERIDIAN_HUB_URL", &hub.url)
        .env("MERIDIAN_GATEWAY_SECRET", GATEWAY_SECRET)
        .env_remove("TYK_GW_SECRET")
        .kill_on_drop(true)
        .output()
        .await
        .expect("meridian import runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("meridian import {args:?}:\n{text}");
    (out.status.code().unwrap_or(-1), text)
}

fn write(dir: &Path, file: &str, value: &Value) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

fn classic(id: &str, listen: &str) -> Value {
    json!({"api_id": id, "name": format!("API {id}"), "org_id": "acme", "active": true,
        "use_keyless": false, "auth": {"auth_header_name": "Authorization"},
        "proxy": {"listen_path": listen, "target_url": "http://127.0.0.1:9", "strip_listen_path": true},
        "version_data": {"not_versioned": true, "versions": {"Default": {"name": "Default"}}},
        "custom_middleware": {"pre": []}, "tags": ["imported"]})
}

/// A tyk-sync dump as the Dashboard writes it: API files wrapped in
/// `api_definition` (one a Tyk OAS API), a bare one, a policy with the
/// Dashboard's `_id` and an empty `id`, a template.
fn dump(dir: &Path) {
    write(
        dir,
        ".tyk.json",
        &json!({"type": "apidef",
            "files": [{"file": "api-pets.json"}, {"file": "apis/orders.json"}, {"file": "api-oas.json"}],
            "policies": [{"file": "policy-5f1c.json"}],
            "assets": [{"file": "template-1.json"}]}),
    );
    write(
        dir,
        "api-pets.json",
        &json!({"api_model": {}, "api_definition": classic("pets", "/pets/"),
            "hook_references": [], "is_site": false, "sort_by": 0, "user_group_owners": [], "user_owners": []}),
    );
    write(dir, "apis/orders.json", &classic("orders", "/orders/"));
    write(
        dir,
        "api-oas.json",
        &json!({"api_model": {}, "api_definition": {"api_id": "oas1", "name": "OAS"},
            "oas": {"openapi": "3.0.3", "info": {"title": "OAS", "version": "1"}, "x-tyk-api-gateway": {}}}),
    );
    write(
        dir,
        "policy-5f1c.json",
        &json!({"_id": "5f1c0a", "id": "", "name": "Gold", "org_id": "acme", "rate": 100, "per": 60,
            "quota_max": -1, "quota_renewal_rate": -1, "throttle_interval": -1, "throttle_retry_limit": -1,
            "access_rights": {"pets": {"api_id": "pets", "api_name": "API pets", "versions": ["Default"],
                "allowed_urls": [], "limit": null}},
            "partitions": {"quota": false, "rate_limit": false, "acl": false, "complexity": false, "per_api": false},
            "active": true, "is_inactive": false, "tags": ["gold"], "key_expires_in": 0,
            "meta_data": {}, "last_updated": "1700000000"}),
    );
    write(dir, "template-1.json", &json!({"kind": "template"}));
}

async fn counts(nats: &Nats) -> (u64, u64) {
    (
        stream_count(&nats.js, streams::APIS).await,
        stream_count(&nats.js, streams::KEYS).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tyk_sync_dump_and_a_key_export_come_over_once() {
    let hub = hub().await;
    let dir = tempfile::tempdir().unwrap();
    dump(dir.path());
    let keys = dir.path().join("keys.json");
    write(
        dir.path(),
        "keys.json",
        &json!({"imported-key-0001": {"org_id": "acme", "alias": "imported", "apply_policies": ["5f1c0a"],
            "rate": -1, "per": -1, "quota_max": -1, "expires": 0, "last_updated": "1700000000",
            "date_created": "2023-11-14T22:13:20Z", "quota_remaining": 0, "quota_renews": 1700000000}}),
    );
    let folder = dir.path().to_str().unwrap();
    let keys_arg = keys.to_str().unwrap();

    // A dry run prints the plan and writes nothing.
    let before = counts(&hub.nats).await;
    let (code, out) = import(&hub, &[folder, "--keys", keys_arg, "--dry-run"]).await;
    assert_ne!(code, 0, "the OAS API and the template are refused");
    for line in [
        "would create API pets",
        "would create API orders",
        "would create policy 5f1c0a",
        "would create key imported...",
        "APIs: 2 to create, 0 to update, 0 unchanged, 2 refused",
        "dry run: nothing was written",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    assert_eq!(counts(&hub.nats).await, before, "a dry run writes nothing");

    // The import: everything but the refused items, each named with why.
    let (code, out) = import(&hub, &[folder, "--keys", keys_arg]).await;
    assert_ne!(code, 0);
    assert!(
        out.contains("APIs: 2 created, 0 updated, 0 unchanged, 2 refused"),
        "{out}"
    );
    assert!(
        out.contains("policies: 1 created, 0 updated, 0 unchanged, 0 refused"),
        "{out}"
    );
    assert!(
        out.contains("keys: 1 created, 0 updated, 0 unchanged, 0 refused"),
        "{out}"
    );
    assert!(
        out.contains("refused API oas1 (api-oas.json): a Tyk OAS API definition"),
        "{out}"
    );
    assert!(out.contains("refused API template-1.json"), "{out}");
    let tyk = Tyk::new(&hub.url);
    let (status, pets) = tyk.get("/tyk/apis/pets").await;
    assert_eq!((status, pets["name"].as_str()), (200, Some("API pets")));
    assert_eq!(
        pets["custom_middleware"],
        json!({"pre": []}),
        "unknown fields kept"
    );
    assert_eq!(tyk.get("/tyk/apis/orders").await.0, 200);
    assert_eq!(
        tyk.get("/tyk/apis/oas1").await.0,
        404,
        "nothing half-imported"
    );
    let (status, gold) = tyk.get("/tyk/policies/5f1c0a").await;
    assert_eq!((status, gold["name"].as_str()), (200, Some("Gold")));
    let (status, key) = tyk.get("/tyk/keys/imported-key-0001").await;
    assert_eq!(status, 200, "{key}");
    assert_eq!(
        key["rate"].as_f64(),
        Some(100.0),
        "the policy applies to the imported key"
    );
    let after_first = counts(&hub.nats).await;

    // Twice: nothing changes, nothing is written.
    let (code, out) = import(&hub, &[folder, "--keys", keys_arg]).await;
    assert_ne!(code, 0, "the OAS API and the template are still refused");
    assert!(
        out.contains("APIs: 0 created, 0 updated, 2 unchanged, 2 refused"),
        "{out}"
    );
    assert!(
        out.contains("keys: 0 created, 0 updated, 1 unchanged"),
        "{out}"
    );
    assert_eq!(
        counts(&hub.nats).await,
        after_first,
        "a second import writes nothing"
    );

    // A change in the source: shown by a dry run, then applied.
    let mut pets = classic("pets", "/pets/");
    pets["name"] = json!("Pets, renamed");
    write(
        dir.path(),
        "api-pets.json",
        &json!({"api_definition": pets}),
    );
    let (code, out) = import(&hub, &[folder, "--dry-run"]).await;
    assert_ne!(code, 0, "the OAS API and the template are still refused");
    assert!(out.contains("would update API pets"), "{out}");
    assert_eq!(counts(&hub.nats).await, after_first);
    let (code, out) = import(&hub, &[folder]).await;
    assert_ne!(code, 0, "the OAS API and the template are still refused");
    assert!(
        out.contains("APIs: 0 created, 1 updated, 1 unchanged"),
        "{out}"
    );
    assert_eq!(tyk.get_ok("/tyk/apis/pets").await["name"], "Pets, renamed");

    // A malformed file stops the import, named, before anything is written.
    std::fs::write(
        dir.path().join("policy-5f1c.json"),
        "{\"name\": \"Gold\",,}",
    )
    .unwrap();
    let mut orders = classic("orders", "/orders/");
    orders["name"] = json!("would be changed");
    write(dir.path(), "apis/orders.json", &orders);
    let before = counts(&hub.nats).await;
    let (code, out) = import(&hub, &[folder]).await;
    assert_ne!(code, 0);
    assert!(out.contains("policy-5f1c.json is not valid JSON"), "{out}");
    assert_eq!(counts(&hub.nats).await, before, "nothing written");
    assert_eq!(tyk.get_ok("/tyk/apis/orders").await["name"], "API orders");
    hub.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_based_gateways_folder_comes_over() {
    let hub = hub().await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "apps/pets.json", &classic("pets", "/pets/"));
    write(dir.path(), "apps/broken-id.json", &json!({"name": "no id"}));
    write(
        dir.path(),
        "policies/policies.json",
        &json!({"silver": {"rate": 10, "per": 1, "access_rights": {"pets": {"versions": ["Default"]}}}}),
    );
    let (code, out) = import(&hub, &[dir.path().to_str().unwrap()]).await;
    assert_ne!(code, 0, "one API has no id");
    assert!(
        out.contains("APIs: 1 created, 0 updated, 0 unchanged, 1 refused"),
        "{out}"
    );
    assert!(
        out.contains(
            "refused API apps/broken-id.json (apps/broken-id.json): the definition has no api_id"
        ),
        "{out}"
    );
    let tyk = Tyk::new(&hub.url);
    assert_eq!(tyk.get_ok("/tyk/policies/silver").await["rate"], 10.0);
    hub.stop.cancel();
}

/// A fake Tyk Gateway: its Gateway API's listings, behind its secret, with
/// keys listed in clear (`hash_keys: false`).
async fn fake_tyk_gateway() -> String {
    use axum::extract::Path as AxumPath;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    const SECRET: &str = "tyk-gateway-secret";
    fn allowed(h: &HeaderMap) -> bool {
        h.get("x-tyk-authorization").and_then(|v| v.to_str().ok()) == Some(SECRET)
    }
    let app = axum::Router::new()
        .route(
            "/tyk/apis",
            get(|h: HeaderMap| async move {
                if !allowed(&h) {
                    return (StatusCode::FORBIDDEN, axum::Json(json!({"status": "error"})));
                }
                (StatusCode::OK, axum::Json(json!([classic("live", "/live/")])))
            }),
        )
        .route(
            "/tyk/policies",
            get(|h: HeaderMap| async move {
                if !allowed(&h) {
                    return (StatusCode::FORBIDDEN, axum::Json(json!({"status": "error"})));
                }
                (
                    StatusCode::OK,
                    axum::Json(json!([{"id": "live-policy", "rate": 5, "per": 1,
                        "access_rights": {"live": {"api_id": "live", "versions": ["Default"]}}}])),
                )
            }),
        )
        .route(
            "/tyk/keys",
            get(|h: HeaderMap| async move {
                if !allowed(&h) {
                    return (StatusCode::FORBIDDEN, axum::Json(json!({"status": "error"})));
                }
                (StatusCode::OK, axum::Json(json!({"keys": ["live-key-0001"]})))
            }),
        )
        .route(
            "/tyk/keys/{key}",
            get(|h: HeaderMap, AxumPath(key): AxumPath<String>| async move {
                if !allowed(&h) || key != "live-key-0001" {
                    return (StatusCode::NOT_FOUND, axum::Json(json!({"status": "error"})));
                }
                (
                    StatusCode::OK,
                    axum::Json(json!({"org_id": "acme", "alias": "live", "apply_policies": ["live-policy"]})),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_tyk_gateway_comes_over_twice_changing_nothing_the_second_time() {
    let hub = hub().await;
    let gateway = fake_tyk_gateway().await;
    let (code, out) = import(
        &hub,
        &["--from-gateway", &gateway, "--from-secret", "wrong"],
    )
    .await;
    assert_ne!(code, 0);
    assert!(out.contains("403"), "a wrong secret is said: {out}");
    let args = [
        "--from-gateway",
        gateway.as_str(),
        "--from-secret",
        "tyk-gateway-secret",
    ];
    let (code, out) = import(&hub, &args).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("APIs: 1 created"), "{out}");
    assert!(out.contains("keys: 1 created"), "{out}");
    let tyk = Tyk::new(&hub.url);
    let key = tyk.get_ok("/tyk/keys/live-key-0001").await;
    assert_eq!(key["rate"].as_f64(), Some(5.0), "{key}");
    let before = counts(&hub.nats).await;
    let (code, out) = import(&hub, &args).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("APIs: 0 created, 0 updated, 1 unchanged"),
        "{out}"
    );
    assert_eq!(counts(&hub.nats).await, before);
    hub.stop.cancel();
}
