//! The web console in a real browser (headless Chromium through
//! chromedriver) against a hub started as `meridian up` starts it, with a
//! real agent binary and a fake Tyk Dashboard: sign-in, agents and their
//! tokens, an agent turning ACTIVE and its APIs appearing without a reload,
//! a deletion seen after pressing Sync, a sync job, a policy and a key, the
//! gateway's APIs and an OAuth token revoked, a portal sync and an approval. A screenshot of every page is written under
//! `target/console-screenshots/`.

use std::time::Duration;

use meridian::demo_provider::{DemoProvider, sample_apis};
use meridian::hub::{HubConfig, start};
use meridian_kit::CancellationToken;
use meridian_tests::browser::Browser;
use meridian_tests::*;
use serde_json::json;

/// A name that is markup: the console must show it as text.
const XSS: &str = "<img src=x onerror=alert(1)>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_does_the_daily_work_in_a_real_browser() {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let hub = start(
        HubConfig {
            nats_url: nats.url(),
            data_dir: dir.path().to_owned(),
            api_key: API_KEY.into(),
            jwt_secret: JWT_SECRET.into(),
            gateway_secret: tyk::GATEWAY_SECRET.into(),
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
    let grpc = format!("http://{}", hub.grpc_addr);
    let gateway = format!("http://{}", hub.gateway_addr);
    let _running = tokio::spawn(hub.run_until_stopped(Duration::from_secs(5)));
    // The demo APIs, and one whose Dashboard entry has an OpenAPI document.
    let mut apis = sample_apis();
    apis.push(json!({
        "api_definition": meridian::demo_provider::tyk_api("documented", "Documented", "/documented/",
            "http://documented.internal:8080", &["public"]),
        "oas": {"openapi": "3.0.3", "info": {"title": "Documented API", "version": "1.2.0",
            "description": "Items and their owners."},
            "paths": {"/items": {"get": {"summary": "List the items",
                "parameters": [{"name": "owner", "in": "query", "description": "Only this owner's"}],
                "responses": {"200": {"description": "The items"}}}}}}
    }));
    // Names are data: markup in one is shown as text, never run.
    apis.push(json!({"api_definition": meridian::demo_provider::tyk_api(
        "xss", XSS, "/xss/", "http://xss.internal:8080", &[])}));
    let provider = DemoProvider::new(apis, "demo-key");
    let provider_url = serve_demo_provider(&provider).await;

    // The session: HttpOnly, SameSite=Strict; writes need the CSRF token;
    // every page has a Content-Security-Policy.
    let http = reqwest::Client::new();
    let index = http.get(&url).send().await.unwrap();
    let csp = index.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let login = http
        .post(format!("{url}/console/login"))
        .json(&json!({"key": API_KEY}))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let csrf = login.json::<serde_json::Value>().await.unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    let forged = http
        .post(format!("{url}/console/api/api/agents/"))
        .header("cookie", &session)
        .json(&json!({"name": "forged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401, "a write without the CSRF token");
    let with_token = http
        .get(format!("{url}/console/api/api/agents/"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    assert_eq!(
        http.get(format!("{url}/console/api/api/agents/"))
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "no session, no API"
    );

    let b = Browser::start(1280, 800).await;
    b.goto(&url).await;
    b.screenshot("signin").await;
    let nav_shown = || async {
        b.client
            .execute(
                "return getComputedStyle(document.getElementById('nav')).display !== 'none'",
                vec![],
            )
            .await
            .unwrap()
    };
    b.wait_text("h1", "Sign in").await;
    assert_eq!(
        nav_shown().await,
        json!(false),
        "the navigation shows before sign-in"
    );
    // A wrong key is refused with a message.
    b.fill("#admin-key", "not-the-key").await;
    b.click("form.signin button[type=submit]").await;
    b.wait_text("#message", "not the admin key").await;
    // By keyboard: the key field has the focus; Enter signs in.
    b.fill_and_enter("#admin-key", API_KEY).await;
    b.wait_text("h1", "Agents").await;
    let cookies = b
        .client
        .execute("return document.cookie", vec![])
        .await
        .unwrap();
    assert!(
        !cookies
            .as_str()
            .unwrap_or_default()
            .contains("meridian_session"),
        "the session cookie is HttpOnly"
    );

    // A new agent and its token (shown once, with the config snippet).
    b.fill("#agent-name", "browser-agent").await;
    b.fill("#agent-description", "made in the console").await;
    b.click("form[aria-label='New agent'] button").await;
    b.wait_text("tr[data-agent='browser-agent']", "INACTIVE")
        .await;
    // A new token cuts a running agent off: asked first, then done.
    b.click("tr[data-agent='browser-agent'] [data-action=token]")
        .await;
    b.wait_text(
        "tr[data-agent='browser-agent'] [data-action=token]",
        "current one stops working",
    )
    .await;
    b.click("tr[data-agent='browser-agent'] [data-action=token]")
        .await;
    b.wait_text("#agent-yaml", "token:").await;
    let token = b.text("#shown-secret").await;
    assert!(token.starts_with("ey"), "{token}");
    assert!(b.text("#agent-yaml").await.contains(&token));
    b.click("#agent-token button").await;
    b.wait_text("#message", "Agent token").await;

    // An agent whose name is markup: shown as text.
    b.fill("#agent-name", XSS).await;
    b.click("form[aria-label='New agent'] button").await;
    b.wait_text("main table", XSS).await;
    b.no_markup_ran().await;
    // Another agent, renamed, then deleted after a confirmation.
    b.fill("#agent-name", "temporary").await;
    b.click("form[aria-label='New agent'] button").await;
    b.wait_text("tr[data-agent='temporary']", "INACTIVE").await;
    b.click("tr[data-agent='temporary'] [data-action=rename]")
        .await;
    b.fill_and_enter("tr[data-agent='temporary'] input", "renamed")
        .await;
    b.wait_text("tr[data-agent='renamed']", "INACTIVE").await;
    b.click("tr[data-agent='renamed'] [data-action=delete]")
        .await;
    b.wait_text(
        "tr[data-agent='renamed'] [data-action=delete]",
        "Really delete",
    )
    .await;
    b.click("tr[data-agent='renamed'] [data-action=delete]")
        .await;
    b.wait_text("#message", "Agent renamed deleted").await;
    assert!(
        b.client
            .find_all(fantoccini::Locator::Css("tr[data-agent='renamed']"))
            .await
            .unwrap()
            .is_empty()
    );

    // The agent runs with it: ACTIVE, and its APIs appear, without a reload.
    let yaml = tyk_agent_yaml(&grpc, &token, &provider_url, "");
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = start_agent_binary(agent_dir.path(), &yaml).await;
    b.wait_text("tr[data-agent='browser-agent']", "ACTIVE")
        .await;
    b.wait_text("tr[data-agent='browser-agent']", "tyk (tyk)")
        .await;
    b.screenshot("agents").await;
    b.goto(&format!("{url}/#/apis")).await;
    let mut names: Vec<String> = sample_apis()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    names.push("Documented".into());
    names.push(XSS.into());
    for name in &names {
        b.wait_text("main table", name).await;
    }
    b.no_markup_ran().await;
    b.screenshot("repository").await;

    // An API deleted at the provider; Sync on the providers page; deleted.
    let gone = names[0].clone();
    provider
        .apis
        .write()
        .unwrap()
        .retain(|a| a["name"] != gone.as_str());
    b.goto(&format!("{url}/#/providers")).await;
    b.click("tr[data-provider='tyk'] button").await;
    b.wait_text("tr[data-provider='tyk']", "1 deleted").await;
    b.screenshot("providers").await;
    b.goto(&format!("{url}/#/apis")).await;
    b.click("#filter-status").await;
    b.client
        .find(fantoccini::Locator::Css("#filter-status"))
        .await
        .unwrap()
        .select_by_value("deleted")
        .await
        .unwrap();
    b.click("form[aria-label='Filter APIs'] button").await;
    b.wait_text(&format!("tr[data-api='{gone}']"), "deleted")
        .await;
    // Its page: deleted-at and the lifecycle.
    b.click(&format!("tr[data-api='{gone}'] a")).await;
    b.wait_text("main", "Deleted at").await;
    b.wait_text("main table", "deleted").await;
    b.screenshot("api-deleted").await;
    // An API's OpenAPI document is rendered as documentation.
    b.goto(&format!("{url}/#/apis")).await;
    b.click("tr[data-api='Documented'] a").await;
    b.wait_text(
        "section[aria-label='API documentation']",
        "Documented API 1.2.0",
    )
    .await;
    let docs = b.text("section[aria-label='API documentation']").await;
    for part in [
        "Items and their owners.",
        "GET",
        "/items",
        "List the items",
        "owner",
        "200 The items",
    ] {
        assert!(
            docs.contains(part),
            "{part:?} not in the rendered document: {docs}"
        );
    }
    b.screenshot("api").await;

    // A sync job.
    b.goto(&format!("{url}/#/jobs")).await;
    b.fill("#job-provider", "tyk").await;
    // A REST error is shown as its message.
    b.fill("#job-every", "soon").await;
    b.click("form[aria-label='New sync job'] button").await;
    b.wait_text("#message", "repeat_every").await;
    b.fill("#job-every", "1h").await;
    b.click("form[aria-label='New sync job'] button").await;
    b.wait_text("tr[data-job='tyk']", "1h").await;
    b.click("tr[data-job='tyk'] button").await;
    b.wait_text("tr[data-job='tyk']", "paused").await;
    b.screenshot("jobs").await;

    // Live events.
    b.goto(&format!("{url}/#/events")).await;
    b.wait_text("main table", "io.meridian.api.deleted").await;
    b.screenshot("events").await;

    // A policy and a key applying it (the key shown once).
    b.goto(&format!("{url}/#/keys")).await;
    b.fill("#policy-id", "browser-gold").await;
    b.fill("#policy-name", "Browser gold").await;
    b.fill("#policy-apis", "demo-catalogue").await;
    b.fill("#policy-tags", "portal").await;
    b.fill("#policy-quota", "500").await;
    b.click("form[aria-label='Policy'] button").await;
    b.wait_text("tr[data-policy='browser-gold']", "demo-catalogue")
        .await;
    b.fill("#key-alias", "browser-key").await;
    b.client
        .find(fantoccini::Locator::Css("#key-policies"))
        .await
        .unwrap()
        .select_by_value("browser-gold")
        .await
        .unwrap();
    b.click("form[aria-label='New key'] button").await;
    b.wait_text("tr[data-key='browser-key']", "browser-gold")
        .await;
    let key = b.text("#shown-secret").await;
    assert!(key.len() >= 16, "{key}");
    // Its quota as the gateways count it: all of it left, and no period
    // running before its first request.
    b.wait_text("tr[data-key='browser-key'] td.quota", "500 of 500")
        .await;
    b.wait_text(
        "tr[data-key='browser-key'] td.quota",
        "a period starts with its next request",
    )
    .await;
    b.click("tr[data-key='browser-key'] button").await;
    b.wait_text("tr[data-key='browser-key']", "inactive").await;
    // A key and an agent whose names are markup: shown as text.
    b.fill("#key-alias", XSS).await;
    b.client
        .find(fantoccini::Locator::Css("#key-policies"))
        .await
        .unwrap()
        .select_by_value("browser-gold")
        .await
        .unwrap();
    b.click("form[aria-label='New key'] button").await;
    b.wait_text("main table", XSS).await;
    b.no_markup_ran().await;
    // A second key, deleted: asked first, then gone.
    b.fill("#key-alias", "doomed-key").await;
    b.client
        .find(fantoccini::Locator::Css("#key-policies"))
        .await
        .unwrap()
        .select_by_value("browser-gold")
        .await
        .unwrap();
    b.click("form[aria-label='New key'] button").await;
    b.wait_text("tr[data-key='doomed-key']", "active").await;
    b.click("tr[data-key='doomed-key'] [data-action=delete-key]")
        .await;
    b.wait_text(
        "tr[data-key='doomed-key'] [data-action=delete-key]",
        "Really delete",
    )
    .await;
    b.click("tr[data-key='doomed-key'] [data-action=delete-key]")
        .await;
    b.wait_text("#message", "Key deleted").await;
    let gone = eventually(Duration::from_secs(10), || async {
        b.client
            .find_all(fantoccini::Locator::Css("tr[data-key='doomed-key']"))
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(gone.is_some(), "the deleted key is still listed");
    b.screenshot("keys").await;

    // The gateway page: APIs with the middleware each turns on; an OAuth
    // API's clients and their tokens (by hash), a token revoked there and
    // refused by the gateway.
    let hub_tyk = tyk::Tyk::new(&url);
    hub_tyk
        .post_ok(
            "/tyk/apis",
            &json!({"api_id": "orders", "name": "Orders", "use_oauth2": true,
                "oauth_meta": {"allowed_access_types": ["client_credentials"]},
                "CORS": {"enable": true, "allowed_origins": ["https://app.example"]},
                "cache_options": {"enable_cache": true, "cache_timeout": 60},
                "proxy": {"listen_path": "/orders/", "target_url": url, "strip_listen_path": true},
                "version_data": {"not_versioned": true}}),
        )
        .await;
    hub_tyk
        .post_ok(
            "/tyk/policies",
            &json!({"id": "orders-app", "name": "Orders app", "rate": 100, "per": 1,
                "access_rights": {"orders": {"api_id": "orders", "versions": ["Default"]}}}),
        )
        .await;
    let client = hub_tyk
        .post_ok(
            "/tyk/oauth/clients/create",
            &json!({"api_id": "orders", "policy_id": "orders-app",
                "redirect_uri": "https://app.example/cb", "description": "the shop"}),
        )
        .await;
    let client_id = client["client_id"].as_str().unwrap().to_owned();
    let (status, _) = hub_tyk.get("/tyk/reload?block=true").await;
    assert_eq!(status, 200);
    let granted: serde_json::Value = http
        .post(format!("{gateway}/orders/oauth/token"))
        .basic_auth(&client_id, client["secret"].as_str())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = granted["access_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let use_token = || async {
        http.get(format!("{gateway}/orders/healthz"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(use_token().await, 200);
    b.goto(&format!("{url}/#/gateway")).await;
    b.wait_text(
        "tr[data-gateway-api='orders'] td.middleware",
        "OAuth 2.0, CORS, cache",
    )
    .await;
    b.click("tr[data-gateway-api='orders'] a").await;
    b.wait_text(&format!("tr[data-client='{client_id}']"), "orders-app")
        .await;
    b.click(&format!(
        "tr[data-client='{client_id}'] [data-action=tokens]"
    ))
    .await;
    let hash = meridian_keys::hash_secret(&token);
    let row = format!("tr[data-token='{hash}']");
    b.wait_text(&row, &hash).await;
    b.screenshot("gateway").await;
    b.click(&format!("{row} [data-action=revoke-token]")).await;
    b.wait_text(
        &format!("{row} [data-action=revoke-token]"),
        "Really revoke",
    )
    .await;
    b.click(&format!("{row} [data-action=revoke-token]")).await;
    b.wait_text("#message", "Token revoked").await;
    let refused = eventually(Duration::from_secs(1), || async {
        (use_token().await == 403).then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "the gateway still takes a token revoked in the console"
    );

    // Tyk OAS APIs: one posted with operation middleware, its operations
    // shown with what each has; one imported from the console's form (a
    // pasted document), then exported.
    hub_tyk
        .post_ok(
            "/tyk/apis/oas",
            &json!({"openapi": "3.0.3", "info": {"title": "Shop", "version": "2.0.0"},
                "paths": {"/items": {"get": {"operationId": "listItems", "summary": "The items"},
                    "post": {"operationId": "addItem"}}},
                "x-tyk-api-gateway": {"info": {"id": "shop-oas", "name": "Shop", "state": {"active": true}},
                    "upstream": {"url": url}, "server": {"listenPath": {"value": "/shop-oas/", "strip": true}},
                    "middleware": {"operations": {"listItems": {"allow": {"enabled": true},
                        "ignoreAuthentication": {"enabled": true}}}}}}),
        )
        .await;
    b.goto(&format!("{url}/#/gateway/shop-oas")).await;
    b.wait_text("tr[data-gateway-api='shop-oas']", "Tyk OAS")
        .await;
    b.wait_text(
        "tr[data-gateway-api='shop-oas'] td.middleware",
        "operation rules (1)",
    )
    .await;
    b.wait_text(
        "tr[data-operation='listItems'] td.operation-middleware",
        "allow, ignoreAuthentication",
    )
    .await;
    b.wait_text("tr[data-operation='addItem'] td.operation-middleware", "—")
        .await;
    b.click("#oas-export").await;
    b.wait_text("#message", "Exported shop-oas.json").await;
    b.wait_text("#oas-download", "Save shop-oas.json").await;
    b.fill(
        "#oas-document",
        &json!({"openapi": "3.0.3", "info": {"title": "Imported pets", "version": "1.0.0"},
            "paths": {"/healthz": {"get": {"operationId": "health"}}}})
        .to_string(),
    )
    .await;
    b.fill("#oas-listen-path", "/imported-pets/").await;
    b.fill("#oas-upstream", &url).await;
    b.click("#oas-auth").await;
    b.click("form[aria-label='Import an OpenAPI document'] button")
        .await;
    b.wait_text("#message", "API imported").await;
    b.wait_text("tr[data-operation='health']", "health").await;
    b.screenshot("gateway-oas").await;
    let (status, _) = hub_tyk.get("/tyk/reload?block=true").await;
    assert_eq!(status, 200);
    let served = http
        .get(format!("{gateway}/imported-pets/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200, "the imported API is served, keyless");

    // The developer portal: the hub's key-issuer as a provider (the policy
    // above is tagged `portal`), synchronised from the console; a request
    // approved there.
    let portal = meridian_tests::portal::Portal::new(&url);
    let (status, created) = portal
        .post(
            "/portal-api/providers",
            &json!({"name": "hub", "type": "meridian", "url": url,
            "secret": tyk::GATEWAY_SECRET, "policy_tags": "portal"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let limit = tyk::Tyk::new(&url)
        .post(
            "/tyk/policies",
            &json!({"id": "browser-free", "name": "Browser free", "rate": 5, "per": 1,
            "tags": ["portal"], "partitions": {"rate_limit": true}, "active": true}),
        )
        .await;
    assert_eq!(limit.0, 200, "{}", limit.1);
    b.goto(&format!("{url}/#/portal")).await;
    b.click("#sync-all").await;
    b.wait_text("tr[data-report='hub']", "ok").await;
    b.wait_text("tr[data-product='Browser gold']", "draft")
        .await;
    b.click("tr[data-product='Browser gold'] button").await;
    b.wait_text("tr[data-product='Browser gold']", "published")
        .await;
    b.click("tr[data-plan='Browser free'] button").await;
    b.wait_text("tr[data-plan='Browser free']", "published")
        .await;
    let products = portal.get_ok("/portal-api/products").await;
    let plans = portal.get_ok("/portal-api/plans").await;
    let app = portal
        .post_ok(
            "/portal-api/apps",
            &json!({"name": "shop", "owner": "dev@example.com"}),
        )
        .await;
    let (status, asked) = portal
        .post(
            "/portal-api/provisioning-requests",
            &json!({"app_id": app["id"],
            "product_id": products[0]["id"], "plan_id": plans[0]["id"]}),
        )
        .await;
    assert_eq!(status, 201, "{asked}");
    let request = asked["request"]["id"].as_str().unwrap().to_owned();
    b.click("#sync-all").await; // refreshes the lists with the request
    b.wait_text(&format!("tr[data-request='{request}']"), "pending")
        .await;
    b.click(&format!("tr[data-request='{request}'] button"))
        .await;
    b.wait_text(&format!("tr[data-request='{request}']"), "approved")
        .await;
    let credential = b.text("#shown-secret").await;
    let approved = portal
        .get_ok(&format!("/portal-api/provisioning-requests/{request}"))
        .await;
    assert_eq!(
        approved["credential"]["key_hash"],
        meridian_portal_sync::domain::hash_key(&credential),
        "the key shown is the one issued"
    );
    b.screenshot("portal").await;

    // Every form field is labelled; a narrow screen scrolls no page sideways.
    let unlabelled = b
        .client
        .execute(
            "return [...document.querySelectorAll('input, select, textarea')].filter(e => !e.closest('label') && !e.getAttribute('aria-label')).map(e => e.id)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]), "fields without a label");
    b.client.set_window_size(390, 844).await.unwrap();
    for page in ["agents", "apis", "gateway", "portal"] {
        b.goto(&format!("{url}/#/{page}")).await;
        b.wait_text("h1", "").await;
        let wide = b
            .client
            .execute("return document.documentElement.scrollWidth", vec![])
            .await
            .unwrap();
        assert!(
            wide.as_u64().unwrap() <= 390,
            "{page} is {wide} px wide at 390"
        );
        b.screenshot(&format!("{page}-narrow")).await;
    }

    // Sign-out: back to the sign-in form, and the session no longer works.
    b.click("#signout").await;
    b.wait_text("h1", "Sign in").await;
    assert_eq!(
        nav_shown().await,
        json!(false),
        "the navigation shows after sign-out"
    );
    let after = b
        .client
        .execute_async(
            "const done = arguments[0]; fetch('/console/api/api/agents/').then(r => done(r.status))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(after, json!(401));
    b.client.clone().close().await.unwrap();
    stop.cancel();
}

/// `meridian route` (compose, Kubernetes) serves the console too: sign-in,
/// and the console's calls forwarded through the router to the services,
/// with the admin key or the Gateway API secret added. Signing out on one
/// router replica ends the session on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_of_a_separate_deployment_serves_the_console() {
    let nats = Nats::start().await;
    let (ki, _) = tyk::start_key_issuer(&nats, |_| {}).await;
    let ps = meridian_tests::portal::start_portal_sync(&nats, |_| {}).await;
    let stop = CancellationToken::new();
    // Two router replicas, as a Deployment of two would run.
    let start_router = |port: u16| {
        let upstreams = vec![
            meridian::route::Upstream {
                name: "key-issuer".into(),
                url: ki.url.clone(),
            },
            meridian::route::Upstream {
                name: "portal-sync".into(),
                url: ps.running.url.clone(),
            },
        ];
        let (stop, nats_url) = (stop.clone(), nats.url());
        tokio::spawn(async move {
            let sessions = meridian::console::Sessions::start(
                &nats_url,
                &meridian_kit::metrics::Metrics::new(),
                stop.clone(),
            )
            .await
            .expect("the console's sessions");
            let console = meridian::console::Console {
                inner: axum::Router::new(),
                api_key: API_KEY.into(),
                gateway_secret: Some(tyk::GATEWAY_SECRET.into()),
                agent_url: "agents.example.com:50051".into(),
                sessions,
            };
            meridian::route::serve(&format!("127.0.0.1:{port}"), upstreams, Some(console), stop)
                .await
        })
    };
    let (port, other_port) = (
        meridian_kit::nats_server::free_port(),
        meridian_kit::nats_server::free_port(),
    );
    let served = start_router(port);
    let other_served = start_router(other_port);
    let url = format!("http://127.0.0.1:{port}");
    let other = format!("http://127.0.0.1:{other_port}");
    let http = reqwest::Client::new();
    for url in [&url, &other] {
        let up = eventually(Duration::from_secs(30), || async {
            let r = http.get(url).send().await.ok()?;
            r.status().is_success().then_some(r.text().await.ok()?)
        })
        .await
        .expect("the router serves the console");
        assert!(up.contains("/console/app.js"), "{up}");
    }
    let login = http
        .post(format!("{url}/console/login"))
        .json(&json!({"key": API_KEY}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let session = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let answer: serde_json::Value = login.json().await.unwrap();
    assert_eq!(answer["agent_url"], "agents.example.com:50051");
    for base in [&url, &other] {
        for (path, shape) in [
            ("/console/api/tyk/policies", "array"),
            ("/console/api/portal-api/providers", "array"),
        ] {
            let r = http
                .get(format!("{base}{path}"))
                .header("cookie", &session)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{base}{path}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(body.is_array(), "{path}: {shape} expected, got {body}");
        }
    }

    // Signed out on one replica: the cookie (kept, as a thief would keep
    // it) is refused there at once, and on the other replica too.
    let out = http
        .post(format!("{url}/console/logout"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let status_at = |base: String| {
        let (http, session) = (http.clone(), session.clone());
        async move {
            http.get(format!("{base}/console/api/tyk/policies"))
                .header("cookie", session)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        status_at(url.clone()).await,
        401,
        "refused where it signed out"
    );
    let refused = eventually(Duration::from_secs(2), || async {
        (status_at(other.clone()).await == 401).then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "the other replica still accepts the signed-out session"
    );
    let events = stream_count(&nats.js, meridian_schemas::streams::CONSOLE).await;
    assert_eq!(events, 1, "one revocation on the log");
    let stored = nats
        .js
        .get_stream(meridian_schemas::streams::CONSOLE)
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    let cookie_value = session.split_once('=').unwrap().1.as_bytes();
    assert!(
        !stored
            .payload
            .windows(cookie_value.len())
            .any(|w| w == cookie_value),
        "the session cookie itself went on the log"
    );
    stop.cancel();
    let _ = other_served.await;
    stop.cancel();
    let _ = served.await;
}
