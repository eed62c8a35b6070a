//! portal-sync against a fake Tyk Dashboard (a real HTTP server holding
//! tagged and untagged, access and limit, partitioned policies over several
//! pages, and the key endpoints) and against Meridian's own key-issuer and
//! proxy; every answer checked against portal-sync's OpenAPI document.

use std::time::Duration;

use meridian_schemas::portal::PortalEvent;
use meridian_schemas::streams;
use meridian_tests::fake_dashboard::FakeDashboard;
use meridian_tests::portal::{Portal, PortalSync, start_portal_sync, start_portal_sync_process};
use meridian_tests::tyk::{GATEWAY_SECRET, Tyk, start_key_issuer, start_proxy};
use meridian_tests::upstream::Upstream;
use meridian_tests::*;
use serde_json::{Value, json};

const DASH_SECRET: &str = "dashboard-secret-for-the-portal";

fn sha256(s: &str) -> String {
    meridian_portal_sync::domain::hash_key(s)
}

fn access(id: &str, tags: &[&str], api: &str) -> Value {
    json!({"_id": id, "name": format!("{id} access"), "tags": tags, "active": true,
        "rate": 0, "per": 0, "quota_max": -1,
        "access_rights": {api: {"api_id": api, "api_name": api.to_uppercase(), "versions": ["Default"]}}})
}

fn limit(id: &str, tags: &[&str], rate: u32) -> Value {
    json!({"_id": id, "name": format!("{id} limit"), "tags": tags, "active": true,
        "rate": rate, "per": 1, "quota_max": 1000, "quota_renewal_rate": 3600,
        "access_rights": {}})
}

/// Two APIs with keys and one with JWTs, and no policies.
async fn empty_dashboard() -> FakeDashboard {
    let dash = FakeDashboard::start(DASH_SECRET).await;
    dash.put_api(
        "orders",
        json!({"api_id": "orders", "name": "Orders", "use_keyless": false}),
    );
    dash.put_api("pets", json!({"api_id": "pets", "name": "Pets"}));
    dash.put_api(
        "signed",
        json!({"api_id": "signed", "name": "Signed", "enable_jwt": true}),
    );
    dash
}

/// 22 policies over 3 pages: 8 tagged access policies, 6 tagged limit
/// policies, one partitioned of each, one with the second tag, 5 untagged.
/// Tagged: 10 Products and 7 Plans.
async fn dashboard() -> FakeDashboard {
    let dash = empty_dashboard().await;
    for i in 1..=8 {
        dash.put_policy(access(&format!("acc-{i:02}"), &["portal"], "orders"));
    }
    for i in 1..=6 {
        dash.put_policy(limit(&format!("lim-{i:02}"), &["portal"], 10 * i));
    }
    let mut part_acl = access("part-acl", &["portal"], "pets");
    part_acl["partitions"] = json!({"acl": true});
    dash.put_policy(part_acl);
    let mut part_quota = limit("part-quota", &["portal"], 5);
    part_quota["partitions"] = json!({"quota": true, "rate_limit": true});
    dash.put_policy(part_quota);
    dash.put_policy(access("partner-01", &["partner", "x"], "pets"));
    for i in 1..=5 {
        dash.put_policy(access(&format!("internal-{i:02}"), &["internal"], "orders"));
    }
    dash
}

async fn add_provider(portal: &Portal, name: &str, url: &str, secret: &str, tags: &str) -> Value {
    let (status, body) = portal
        .post(
            "/portal-api/providers",
            &json!({"name": name, "type": "tyk", "url": url, "secret": secret,
                "policy_tags": tags, "baseline_url": "https://gw.example.com"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn list(portal: &Portal, path: &str) -> Vec<Value> {
    let (status, body) = portal.get(path).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

fn by_policy<'a>(items: &'a [Value], policy: &str) -> &'a Value {
    items
        .iter()
        .find(|p| p["policy_id"] == policy)
        .unwrap_or_else(|| panic!("no entry for policy {policy} in {items:?}"))
}

fn counts(report: &Value) -> (u64, u64, u64, u64) {
    assert_eq!(report["status"], "ok", "{report}");
    let n = |f: &str| report[f].as_u64().unwrap();
    (n("new"), n("updated"), n("hidden"), n("restored"))
}

struct Setup {
    nats: Nats,
    dash: FakeDashboard,
    ps: PortalSync,
    portal: Portal,
    provider: String,
}

async fn setup(dash: FakeDashboard) -> Setup {
    let nats = Nats::start().await;
    let ps = start_portal_sync(&nats, |_| {}).await;
    let portal = Portal::new(&ps.running.url);
    let created = add_provider(
        &portal,
        "Dashboard EU",
        &dash.url,
        DASH_SECRET,
        "portal,partner",
    )
    .await;
    assert_eq!(created["secret"], "********");
    assert_eq!(created["policy_tags"], "portal,partner");
    assert_eq!(
        (
            created["connection"]["reachable"].clone(),
            created["connection"]["authenticated"].clone()
        ),
        (json!(true), json!(true)),
        "{created}"
    );
    let provider = created["id"].as_str().unwrap().to_owned();
    Setup {
        nats,
        dash,
        ps,
        portal,
        provider,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_policies_become_products_and_plans_that_hide_and_come_back() {
    let s = setup(dashboard().await).await;
    s.dash.take_pages_asked();
    let report = s.portal.sync(&s.provider).await;
    assert_eq!(counts(&report), (17, 0, 0, 0), "{report}");
    assert_eq!(report["policies"], 17);
    assert_eq!(s.dash.take_pages_asked(), [1, 2, 3], "every page, once");

    let products = list(&s.portal, "/portal-api/products").await;
    let plans = list(&s.portal, "/portal-api/plans").await;
    assert_eq!((products.len(), plans.len()), (10, 7));
    // Placeholders: the policy's access rights (Dashboard spelling read),
    // no limits; unpublished; the provider's baseline URL shown.
    let gold = by_policy(&products, "acc-01");
    assert_eq!(
        gold["apis"],
        json!([{"api_id": "orders", "api_name": "ORDERS", "versions": ["Default"]}])
    );
    assert_eq!(
        (gold["published"].clone(), gold["hidden"].clone()),
        (json!(false), json!(false))
    );
    assert_eq!(gold["baseline_url"], "https://gw.example.com");
    assert_eq!(gold["origin"], "sync");
    assert_eq!(by_policy(&products, "part-acl")["bare_bones"], true);
    assert_eq!(by_policy(&products, "partner-01")["bare_bones"], false);
    assert_eq!(by_policy(&plans, "part-quota")["bare_bones"], true);
    let lim3 = by_policy(&plans, "lim-03");
    assert_eq!(
        (lim3["rate"].clone(), lim3["quota_max"].clone()),
        (json!(30.0), json!(1000))
    );
    assert!(
        products
            .iter()
            .all(|p| !p["policy_id"].as_str().unwrap().starts_with("internal"))
    );
    // Nothing changed: nothing to do.
    assert_eq!(counts(&s.portal.sync(&s.provider).await), (0, 0, 0, 0));

    // The admin configures a Product and a Plan.
    let product_id = gold["id"].as_str().unwrap().to_owned();
    let plan_id = by_policy(&plans, "lim-01")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = s
        .portal
        .put(
            &format!("/portal-api/products/{product_id}"),
            Some(
                &json!({"description": "Orders for partners", "docs": "# Orders",
                "catalogues": ["public"], "published": true}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .portal
        .put(
            &format!("/portal-api/plans/{plan_id}"),
            Some(&json!({"published": true, "auto_approve": true, "description": "Starter"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Read-modify-write: what GET answered goes back with one field
    // changed; the fields the admin cannot set pass when unchanged, and a
    // change of one is refused naming it.
    let mut shown = s
        .portal
        .get_ok(&format!("/portal-api/products/{product_id}"))
        .await;
    shown["docs"] = json!("# Orders, with examples");
    let (status, body) = s
        .portal
        .put(&format!("/portal-api/products/{product_id}"), Some(&shown))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["docs"], "# Orders, with examples");
    let mut plan_shown = s
        .portal
        .get_ok(&format!("/portal-api/plans/{plan_id}"))
        .await;
    plan_shown["published"] = json!(true);
    let (status, body) = s
        .portal
        .put(&format!("/portal-api/plans/{plan_id}"), Some(&plan_shown))
        .await;
    assert_eq!(status, 200, "{body}");
    // Sent back exactly as GET answered it: answered as an update, and
    // nothing appended to PORTAL (the time it last changed is kept).
    let stored = stream_count(&s.nats.js, streams::PORTAL).await;
    for path in [
        format!("/portal-api/products/{product_id}"),
        format!("/portal-api/plans/{plan_id}"),
    ] {
        let same = s.portal.get_ok(&path).await;
        let (status, body) = s.portal.put(&path, Some(&same)).await;
        assert_eq!((status, &body), (200, &same), "{path}");
    }
    assert_eq!(
        stream_count(&s.nats.js, streams::PORTAL).await,
        stored,
        "unchanged saves appended nothing"
    );
    for (field, value) in [("policy_id", json!("another")), ("bogus", json!(1))] {
        let mut changed = shown.clone();
        changed[field] = value;
        let (status, body) = s
            .portal
            .put(
                &format!("/portal-api/products/{product_id}"),
                Some(&changed),
            )
            .await;
        assert_eq!(status, 400, "{field}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}: ")),
            "{body}"
        );
    }
    shown["docs"] = json!("# Orders");
    let (status, body) = s
        .portal
        .put(&format!("/portal-api/products/{product_id}"), Some(&shown))
        .await;
    assert_eq!(status, 200, "{body}");

    // A policy's limits change: its Plan follows.
    let mut lim2 = s.dash.policy("lim-02").unwrap();
    lim2["rate"] = json!(99);
    s.dash.put_policy(lim2);
    assert_eq!(counts(&s.portal.sync(&s.provider).await), (0, 1, 0, 0));

    // A tag removed and a policy deleted: both hidden and unpublished.
    s.dash.set_tags("acc-01", &["internal"]);
    let lim1 = s.dash.remove_policy("lim-01").unwrap();
    assert_eq!(counts(&s.portal.sync(&s.provider).await), (0, 0, 2, 0));
    let shown = list(&s.portal, "/portal-api/products").await;
    assert_eq!(shown.len(), 9);
    assert!(shown.iter().all(|p| p["id"] != product_id.as_str()));
    let hidden = s
        .portal
        .get_ok(&format!("/portal-api/products/{product_id}"))
        .await;
    assert_eq!(
        (hidden["hidden"].clone(), hidden["published"].clone()),
        (json!(true), json!(false))
    );
    let all = list(&s.portal, "/portal-api/products?hidden=true").await;
    assert_eq!(all.len(), 10);
    let (status, body) = s
        .portal
        .put(
            &format!("/portal-api/products/{product_id}"),
            Some(&json!({"published": true})),
        )
        .await;
    assert_eq!(status, 409, "a hidden Product cannot be published: {body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("published"),
        "{body}"
    );
    assert_eq!(
        counts(&s.portal.sync(&s.provider).await),
        (0, 0, 0, 0),
        "hidden stays hidden"
    );

    // Back: shown again with every field the admin had set.
    s.dash.set_tags("acc-01", &["portal"]);
    s.dash.put_policy(lim1);
    assert_eq!(counts(&s.portal.sync(&s.provider).await), (0, 0, 0, 2));
    let back = s
        .portal
        .get_ok(&format!("/portal-api/products/{product_id}"))
        .await;
    assert_eq!(back["hidden"], false);
    assert_eq!(back["published"], true);
    assert_eq!(back["description"], "Orders for partners");
    assert_eq!(back["docs"], "# Orders");
    assert_eq!(back["catalogues"], json!(["public"]));
    let plan = s
        .portal
        .get_ok(&format!("/portal-api/plans/{plan_id}"))
        .await;
    assert_eq!(
        (
            plan["hidden"].clone(),
            plan["published"].clone(),
            plan["auto_approve"].clone(),
            plan["description"].clone()
        ),
        (json!(false), json!(true), json!(true), json!("Starter"))
    );

    // The provider shows its last sync; the public stream has every change.
    let provider = s
        .portal
        .get_ok(&format!("/portal-api/providers/{}", s.provider))
        .await;
    assert_eq!(provider["last_sync"]["status"], "ok");
    assert_eq!(provider["secret"], "********");
    let events = wait_for_public(&s.nats.js, "events.product.>", 13).await;
    let kinds = |t: &str| events.iter().filter(|e| e["type"] == t).count();
    assert_eq!(
        (
            kinds("io.meridian.product.created"),
            kinds("io.meridian.product.hidden"),
            kinds("io.meridian.product.restored")
        ),
        (10, 1, 1)
    );
    let hidden_event = events
        .iter()
        .find(|e| e["type"] == "io.meridian.product.hidden")
        .unwrap();
    assert_eq!(hidden_event["data"]["hidden"], true);
    assert_eq!(hidden_event["data"]["published"], false);
    assert_eq!(
        hidden_event["_subject"],
        format!("events.product.hidden.{}", s.provider)
    );
    let plan_events = wait_for_public(&s.nats.js, "events.plan.>", 7 + 1 + 1 + 1 + 1).await;
    assert!(
        plan_events
            .iter()
            .any(|e| e["type"] == "io.meridian.plan.restored")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_partial_fetch_hides_nothing() {
    let s = setup(dashboard().await).await;
    assert_eq!(counts(&s.portal.sync(&s.provider).await), (17, 0, 0, 0));
    let nothing_hidden = || async {
        let all = list(&s.portal, "/portal-api/products?hidden=true").await;
        assert_eq!(all.len(), 10);
        assert!(all.iter().all(|p| p["hidden"] == false), "{all:?}");
        let plans = list(&s.portal, "/portal-api/plans?hidden=true").await;
        assert!(plans.iter().all(|p| p["hidden"] == false), "{plans:?}");
    };

    // The second page fails: the first page's policies alone would hide
    // the rest; nothing is hidden and the reason is reported.
    s.dash.fail_page(Some(2));
    let report = s.portal.sync(&s.provider).await;
    assert_eq!(report["status"], "failed", "{report}");
    let reason = report["reason"].as_str().unwrap();
    assert!(reason.contains("p=2") && reason.contains("500"), "{reason}");
    nothing_hidden().await;
    s.dash.fail_page(None);

    // Garbage.
    s.dash.answer_garbage(true);
    let report = s.portal.sync(&s.provider).await;
    assert_eq!(report["status"], "failed");
    assert!(
        report["reason"].as_str().unwrap().contains("unreadable"),
        "{report}"
    );
    nothing_hidden().await;
    s.dash.answer_garbage(false);

    // A wrong secret: saved anyway (the test says so), sync fails with 401.
    let path = format!("/portal-api/providers/{}", s.provider);
    let (status, changed) = s
        .portal
        .put(
            &path,
            Some(
                &json!({"name": "Dashboard EU", "url": s.dash.url, "secret": "wrong",
            "policy_tags": "portal,partner"}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["connection"]["reachable"], true);
    assert_eq!(changed["connection"]["authenticated"], false);
    let report = s.portal.sync(&s.provider).await;
    assert!(
        report["reason"].as_str().unwrap().contains("401"),
        "{report}"
    );
    nothing_hidden().await;
    // Back to the right secret; a change without a secret keeps it.
    s.portal
        .put_ok(
            &path,
            Some(
                &json!({"name": "Dashboard EU", "url": s.dash.url, "secret": DASH_SECRET,
            "policy_tags": "portal,partner"}),
            ),
        )
        .await;
    let (status, _) = s
        .portal
        .put(
            &path,
            Some(&json!({"name": "Dashboard EU", "url": s.dash.url,
            "policy_tags": "portal,partner", "baseline_url": "https://gw2.example.com"})),
        )
        .await;
    assert_eq!(status, 200);

    // A second provider that is down: reported failed, the first goes on.
    let down = add_provider(
        &s.portal,
        "Dashboard US",
        &format!("http://127.0.0.1:{}", closed_port()),
        "x",
        "portal",
    )
    .await;
    assert_eq!(down["connection"]["reachable"], false, "{down}");
    let (status, all) = s
        .portal
        .put("/portal-api/providers/synchronize", None)
        .await;
    assert_eq!(status, 200, "{all}");
    let reports = all["providers"].as_array().unwrap();
    assert_eq!(reports.len(), 2, "{all}");
    assert_eq!(
        (reports[0]["name"].clone(), reports[0]["status"].clone()),
        (json!("Dashboard EU"), json!("ok"))
    );
    assert_eq!(counts(&reports[0]), (0, 0, 0, 0));
    assert_eq!(
        (reports[1]["name"].clone(), reports[1]["status"].clone()),
        (json!("Dashboard US"), json!("failed"))
    );
    assert!(
        reports[1]["reason"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{all}"
    );
    nothing_hidden().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_and_plans_created_in_the_portal_create_their_policies() {
    let s = setup(empty_dashboard().await).await;
    let (status, product) = s
        .portal
        .post(
            "/portal-api/products",
            &json!({"name": "Orders API", "provider_id": s.provider,
                "apis": [{"api_id": "orders"}, {"api_id": "pets", "provider_id": s.provider}],
                "description": "Orders and pets", "published": true}),
        )
        .await;
    assert_eq!(status, 201, "{product}");
    assert_eq!(
        (product["origin"].clone(), product["auth_type"].clone()),
        (json!("portal"), json!("auth_token"))
    );
    let policy = s
        .dash
        .policy(product["policy_id"].as_str().unwrap())
        .expect("the policy in the Dashboard");
    assert_eq!(policy["tags"], json!(["portal", "partner"]));
    assert_eq!(policy["access_rights"]["orders"]["apiid"], "orders");
    assert_eq!(policy["partitions"]["acl"], true);
    let (status, plan) = s
        .portal
        .post(
            "/portal-api/plans",
            &json!({"name": "Starter", "provider_id": s.provider, "rate": 5, "per": 1,
                "quota_max": 1000, "quota_renewal_rate": 3600, "published": true}),
        )
        .await;
    assert_eq!(status, 201, "{plan}");
    let limit_policy = s.dash.policy(plan["policy_id"].as_str().unwrap()).unwrap();
    assert_eq!(limit_policy["tags"], json!(["portal", "partner"]));
    assert_eq!(limit_policy["rate"], 5.0);

    // The next sync recognises both: no duplicates.
    assert_eq!(counts(&s.portal.sync(&s.provider).await), (0, 0, 0, 0));
    assert_eq!(list(&s.portal, "/portal-api/products").await.len(), 1);
    assert_eq!(list(&s.portal, "/portal-api/plans").await.len(), 1);

    // The rules, each a 400 naming the field; nothing created.
    let policies_before = s.dash.policies().len();
    for (body, field, why) in [
        (
            json!({"name": "Mixed", "provider_id": s.provider,
            "apis": [{"api_id": "orders"}, {"api_id": "pets", "provider_id": "another"}]}),
            "apis[1].provider_id",
            "one provider",
        ),
        (
            json!({"name": "Mixed auth", "provider_id": s.provider,
            "apis": [{"api_id": "orders"}, {"api_id": "signed"}]}),
            "apis",
            "one authentication method",
        ),
        (
            json!({"name": "Ghost", "provider_id": s.provider, "apis": [{"api_id": "ghost"}]}),
            "apis[0].api_id",
            "has no API",
        ),
        (
            json!({"name": "None", "provider_id": s.provider, "apis": []}),
            "apis",
            "at least one",
        ),
        (
            json!({"name": "", "provider_id": s.provider, "apis": [{"api_id": "orders"}]}),
            "name",
            "empty",
        ),
        (
            json!({"name": "x", "provider_id": s.provider, "apis": [{"api_id": "orders"}], "colour": 1}),
            "colour",
            "unknown field",
        ),
    ] {
        let (status, body) = s.portal.post("/portal-api/products", &body).await;
        assert_eq!(status, 400, "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with(field) && message.contains(why),
            "{field}: {message}"
        );
    }
    // The provider refuses: its answer is in the error; nothing created.
    let (status, body) = s
        .portal
        .post(
            "/portal-api/products",
            &json!({"name": "refuse-me", "provider_id": s.provider, "apis": [{"api_id": "orders"}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Policy name is reserved"),
        "{body}"
    );
    let (status, _) = s
        .portal
        .post(
            "/portal-api/products",
            &json!({"name": "x", "provider_id": "nobody", "apis": [{"api_id": "orders"}]}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(s.dash.policies().len(), policies_before);
    assert_eq!(
        list(&s.portal, "/portal-api/products?hidden=true")
            .await
            .len(),
        1
    );

    // Deleting a portal-made Product deletes its policy too.
    let (status, _) = s
        .portal
        .delete(&format!(
            "/portal-api/products/{}",
            product["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 204);
    assert!(
        s.dash
            .policy(product["policy_id"].as_str().unwrap())
            .is_none()
    );
    assert_eq!(counts(&s.portal.sync(&s.provider).await), (0, 0, 0, 0));
}

async fn stream_text(js: &async_nats::jetstream::Context, stream: &str) -> String {
    stream_envelopes(js, stream)
        .await
        .iter()
        .map(|e| String::from_utf8_lossy(&e.to_bytes()).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_requests_become_credentials_by_hand_or_automatically() {
    let s = setup(empty_dashboard().await).await;
    let product = s
        .portal
        .post_ok(
            "/portal-api/products",
            &json!({"name": "Orders", "provider_id": s.provider, "apis": [{"api_id": "orders"}], "published": true}),
        )
        .await;
    let plan = |name: &str, auto: bool, published: bool| {
        json!({"name": name, "provider_id": s.provider, "rate": 10, "per": 1,
            "auto_approve": auto, "published": published})
    };
    let manual = s
        .portal
        .post_ok("/portal-api/plans", &plan("Manual", false, true))
        .await;
    let auto = s
        .portal
        .post_ok("/portal-api/plans", &plan("Auto", true, true))
        .await;
    let draft = s
        .portal
        .post_ok("/portal-api/plans", &plan("Draft", true, false))
        .await;
    let (status, app) = s
        .portal
        .post(
            "/portal-api/apps",
            &json!({"name": "Shop", "owner": "dev@example.com", "description": "A shop"}),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let ask =
        |plan: &Value| json!({"app_id": id(&app), "product_id": id(&product), "plan_id": id(plan)});

    // By hand: pending until approved; the key is answered once.
    let (status, pending) = s
        .portal
        .post("/portal-api/provisioning-requests", &ask(&manual))
        .await;
    assert_eq!(status, 201, "{pending}");
    assert_eq!(pending["request"]["status"], "pending");
    assert!(pending.get("key").is_none());
    let waiting = list(
        &s.portal,
        "/portal-api/provisioning-requests?status=pending",
    )
    .await;
    assert_eq!(waiting.len(), 1);
    let request = id(&pending["request"]);
    let (status, approved) = s
        .portal
        .put(
            &format!("/portal-api/provisioning-requests/{request}/approve"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{approved}");
    let key = approved["key"].as_str().unwrap().to_owned();
    let credential = &approved["request"]["credential"];
    assert_eq!(credential["key_hash"], sha256(&key));
    let issued = s.dash.keys();
    let session = issued.get(&sha256(&key)).expect("the key in the Dashboard");
    assert_eq!(
        session["apply_policies"],
        json!([product["policy_id"], manual["policy_id"]])
    );
    let (status, _) = s
        .portal
        .put(
            &format!("/portal-api/provisioning-requests/{request}/approve"),
            None,
        )
        .await;
    assert_eq!(status, 409, "approved once");

    // Automatically, by the Plan.
    let (status, auto_answer) = s
        .portal
        .post("/portal-api/provisioning-requests", &ask(&auto))
        .await;
    assert_eq!(status, 201, "{auto_answer}");
    assert_eq!(auto_answer["request"]["status"], "approved");
    assert_eq!(auto_answer["request"]["automatic"], true);
    let auto_key = auto_answer["key"].as_str().unwrap().to_owned();
    assert!(s.dash.keys().contains_key(&sha256(&auto_key)));

    // Rejected; an unpublished Plan is refused.
    let third = s
        .portal
        .post_ok("/portal-api/provisioning-requests", &ask(&manual))
        .await;
    let third = id(&third["request"]);
    let (status, rejected) = s
        .portal
        .put(
            &format!("/portal-api/provisioning-requests/{third}/reject"),
            Some(&json!({"reason": "not a partner"})),
        )
        .await;
    assert_eq!(
        (status, rejected["status"].clone()),
        (200, json!("rejected")),
        "{rejected}"
    );
    let (status, _) = s
        .portal
        .put(
            &format!("/portal-api/provisioning-requests/{third}/approve"),
            None,
        )
        .await;
    assert_eq!(status, 409);
    let (status, body) = s
        .portal
        .post("/portal-api/provisioning-requests", &ask(&draft))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().starts_with("plan_id"),
        "{body}"
    );

    // A Product and a Plan of two providers: one credential cannot hold both.
    let other = add_provider(&s.portal, "Second", &s.dash.url, DASH_SECRET, "second").await;
    let other_plan = s
        .portal
        .post_ok(
            "/portal-api/plans",
            &json!({"name": "Other", "provider_id": other["id"], "published": true}),
        )
        .await;
    let (status, body) = s
        .portal
        .post("/portal-api/provisioning-requests", &ask(&other_plan))
        .await;
    assert_eq!(status, 400);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("plan_id") && message.contains("one provider"),
        "{message}"
    );

    // A Product or Plan with live credentials is not deleted.
    for path in [
        format!("/portal-api/products/{}", id(&product)),
        format!("/portal-api/plans/{}", id(&manual)),
    ] {
        let (status, body) = s.portal.delete(&path).await;
        assert_eq!(status, 409, "{path}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("live credentials"),
            "{body}"
        );
    }

    // Credentials: hashes only; revoking deletes the key in the provider.
    let creds = list(&s.portal, "/portal-api/credentials").await;
    assert_eq!(creds.len(), 2);
    let (status, revoked) = s
        .portal
        .delete(&format!(
            "/portal-api/credentials/{}",
            credential["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_ne!(revoked["revoked_at"], "");
    assert!(!s.dash.keys().contains_key(&sha256(&key)));
    let (status, _) = s
        .portal
        .delete(&format!(
            "/portal-api/credentials/{}",
            credential["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 409);
    // Deleting the app revokes what it still holds.
    let (status, _) = s
        .portal
        .delete(&format!("/portal-api/apps/{}", id(&app)))
        .await;
    assert_eq!(status, 204);
    assert!(s.dash.keys().is_empty(), "{:?}", s.dash.keys());

    // Neither a key nor the provider's secret is on the log.
    let log = stream_text(&s.nats.js, streams::PORTAL).await;
    for secret in [key.as_str(), auto_key.as_str(), DASH_SECRET] {
        assert!(!log.contains(secret), "a secret is on PORTAL");
    }
    let events = wait_for_public(&s.nats.js, "events.provisioning.>", 3).await;
    let approved_events: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "io.meridian.provisioning.approved")
        .collect();
    assert_eq!(approved_events.len(), 2);
    assert!(
        approved_events
            .iter()
            .any(|e| e["data"]["key_hash"] == sha256(&key))
    );
    assert!(
        approved_events
            .iter()
            .any(|e| e["data"]["automatic"] == true)
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "io.meridian.provisioning.rejected")
            .count(),
        1
    );
    let public_text: String = events.iter().map(Value::to_string).collect();
    assert!(!public_text.contains(&key) && !public_text.contains(&auto_key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_checked_and_their_secret_never_shown() {
    let nats = Nats::start().await;
    let ps = start_portal_sync(&nats, |_| {}).await;
    let portal = Portal::new(&ps.running.url);
    let dash = empty_dashboard().await;
    let good = json!({"name": "D", "type": "tyk", "url": dash.url, "secret": DASH_SECRET, "policy_tags": "a,b"});
    for (change, field) in [
        (json!({"policy_tags": "a, b"}), "policy_tags"),
        (json!({"policy_tags": "a,,b"}), "policy_tags"),
        (json!({"policy_tags": ""}), "policy_tags"),
        (json!({"secret": ""}), "secret"),
        (json!({"url": "dashboard:3000"}), "url"),
        (json!({"type": "kong"}), "type"),
        (json!({"name": ""}), "name"),
        (json!({"baseline_url": "gw"}), "baseline_url"),
        (json!({"secrets": "x"}), "secrets"),
    ] {
        let mut body = good.clone();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = portal.post("/portal-api/providers", &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().starts_with(field),
            "{field}: {answer}"
        );
    }
    let mut no_secret = good.clone();
    no_secret.as_object_mut().unwrap().remove("secret");
    let (status, answer) = portal.post("/portal-api/providers", &no_secret).await;
    assert_eq!(status, 400, "{answer}");
    assert!(list(&portal, "/portal-api/providers").await.is_empty());

    let (status, created) = portal.post("/portal-api/providers", &good).await;
    assert_eq!(status, 201);
    let (status, dup) = portal.post("/portal-api/providers", &good).await;
    assert_eq!(status, 409, "{dup}");
    let shown = list(&portal, "/portal-api/providers").await;
    assert_eq!(shown[0]["secret"], "********");
    assert!(!shown[0].to_string().contains(DASH_SECRET));
    // The admin key: X-API-Key, or Authorization as Tyk's portal takes it.
    let (status, _) = portal.with_key(None).get("/portal-api/providers").await;
    assert_eq!(status, 401);
    let (status, _) = portal
        .with_key(Some("wrong"))
        .get("/portal-api/providers")
        .await;
    assert_eq!(status, 401);
    let (status, _) = portal
        .call_with(
            reqwest::Method::GET,
            "/portal-api/providers",
            None,
            Some(("authorization", API_KEY)),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = portal.get("/portal-api/providers/nobody").await;
    assert_eq!(status, 404);
    // A provider with Products cannot be removed; without, it can.
    let id = created["id"].as_str().unwrap();
    dash.put_policy(access("p1", &["a"], "orders"));
    portal.sync(id).await;
    let (status, body) = portal.delete(&format!("/portal-api/providers/{id}")).await;
    assert_eq!(status, 409, "{body}");
    let product = &list(&portal, "/portal-api/products").await[0];
    portal
        .delete_ok(&format!(
            "/portal-api/products/{}",
            product["id"].as_str().unwrap()
        ))
        .await;
    assert!(
        dash.policy("p1").is_some(),
        "a synced Product's policy stays in the provider"
    );
    let (status, _) = portal.delete(&format!("/portal-api/providers/{id}")).await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meridian_provider_issues_keys_the_proxy_honours() {
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let proxy = start_proxy(&nats, |_| {}).await;
    // The hub URL in front of both, as compose and Kubernetes run them.
    let router = meridian::route::router(
        vec![
            meridian::route::Upstream {
                name: "key-issuer".into(),
                url: ki.url.clone(),
            },
            meridian::route::Upstream {
                name: "proxy".into(),
                url: proxy.admin.url.clone(),
            },
        ],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hub = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let tyk = Tyk::new(&hub);
    for (id, path) in [("orders-api", "/orders/"), ("other-api", "/other/")] {
        let (status, body) = tyk
            .post("/tyk/apis", &json!({"api_id": id, "name": id, "use_keyless": false,
                "auth": {"auth_header_name": "Authorization"},
                "proxy": {"listen_path": path, "target_url": up.url(), "strip_listen_path": true},
                "version_data": {"not_versioned": true, "versions": {"Default": {"name": "Default"}}}}))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    let ps = start_portal_sync(&nats, |_| {}).await;
    let portal = Portal::new(&ps.running.url);
    let (status, provider) = portal
        .post(
            "/portal-api/providers",
            &json!({"name": "Meridian", "type": "meridian", "url": hub,
            "secret": GATEWAY_SECRET, "policy_tags": "portal"}),
        )
        .await;
    assert_eq!(status, 201, "{provider}");
    assert_eq!(provider["connection"]["authenticated"], true, "{provider}");
    let provider = provider["id"].as_str().unwrap().to_owned();
    let (status, product) = portal
        .post(
            "/portal-api/products",
            &json!({"name": "Orders", "provider_id": provider,
            "apis": [{"api_id": "orders-api"}], "published": true}),
        )
        .await;
    assert_eq!(status, 201, "{product}");
    let (status, policy) = tyk
        .get(&format!(
            "/tyk/policies/{}",
            product["policy_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(policy["tags"], json!(["portal"]));
    let (status, plan) = portal
        .post(
            "/portal-api/plans",
            &json!({"name": "Free", "provider_id": provider, "rate": 100, "per": 1,
            "auto_approve": true, "published": true}),
        )
        .await;
    assert_eq!(status, 201, "{plan}");
    assert_eq!(
        counts(&portal.sync(&provider).await),
        (0, 0, 0, 0),
        "both recognised"
    );
    let app = portal
        .post_ok(
            "/portal-api/apps",
            &json!({"name": "Shop", "owner": "dev@example.com"}),
        )
        .await;
    let (status, issued) = portal
        .post(
            "/portal-api/provisioning-requests",
            &json!({"app_id": app["id"], "product_id": product["id"], "plan_id": plan["id"]}),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let key = issued["key"].as_str().unwrap().to_owned();

    let (status, _) = tyk.get("/tyk/reload?block=true").await;
    assert_eq!(status, 200);
    let http = reqwest::Client::new();
    let call = |path: &str| {
        let req = http
            .get(format!("{}{path}", proxy.gateway))
            .header("authorization", key.clone());
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(call("/orders/list").await, 200, "the Product's API");
    assert_eq!(call("/other/list").await, 403, "another API");

    // Revoked: the key is deleted in key-issuer and refused.
    let credential = issued["request"]["credential"]["id"].as_str().unwrap();
    let (status, _) = portal
        .delete(&format!("/portal-api/credentials/{credential}"))
        .await;
    assert_eq!(status, 200);
    let (status, _) = tyk.get("/tyk/reload?block=true").await;
    assert_eq!(status, 200);
    assert_eq!(call("/orders/list").await, 403);
}

async fn count_claims(js: &async_nats::jetstream::Context) -> usize {
    stream_events::<PortalEvent>(js, streams::PORTAL)
        .await
        .iter()
        .filter(|e| matches!(e, PortalEvent::SyncClaimed { .. }))
        .count()
}

async fn digest(portal: &Portal) -> Value {
    let (status, body) = portal.get("/api/portal/digest").await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_sync_and_a_restart_or_rebuild_changes_nothing() {
    let s = setup(dashboard().await).await;
    // A second replica, whose wait for another's sync gives up after 2 s.
    let b = start_portal_sync(&s.nats, |c| {
        c.replica = Some("replica-b".into());
        c.sync_lease = meridian_kit::config::HumanDuration(Duration::from_secs(2));
    })
    .await;
    let portal_b = Portal::new(&b.running.url);
    // Its start-up sync found the provider unsynced, and ran.
    let first = eventually(Duration::from_secs(30), || async {
        let p = s
            .portal
            .get_ok(&format!("/portal-api/providers/{}", s.provider))
            .await;
        (p["last_sync"]["status"] == "ok").then_some(p["last_sync"].clone())
    })
    .await
    .expect("replica b's start-up sync");
    assert_eq!(first["replica"], "replica-b");
    assert_eq!(counts(&first), (17, 0, 0, 0));
    s.dash.take_pages_asked();
    let claims_before = count_claims(&s.nats.js).await;

    // Replica a's sync holds the claim while the Dashboard is slow; asked
    // meanwhile, replica b does not fetch: it waits for a's report, and
    // after its 2 s says who holds the sync.
    s.dash.hold();
    let a = s.portal.clone();
    let provider = s.provider.clone();
    let a_sync = tokio::spawn(async move { a.sync(&provider).await });
    s.dash.wait_held(1).await;
    assert_eq!(count_claims(&s.nats.js).await, claims_before + 1);
    let b_report = portal_b.sync(&s.provider).await;
    assert_eq!(b_report["status"], "failed", "{b_report}");
    assert!(
        b_report["reason"]
            .as_str()
            .unwrap()
            .contains("holds this provider's sync"),
        "{b_report}"
    );
    s.dash.release();
    let a_report = a_sync.await.unwrap();
    assert_eq!(counts(&a_report), (0, 0, 0, 0));
    assert_ne!(a_report["replica"], "replica-b");
    assert_eq!(
        count_claims(&s.nats.js).await,
        claims_before + 1,
        "one claim"
    );
    assert_eq!(
        s.dash.take_pages_asked(),
        [1, 2, 3],
        "one replica fetched, once"
    );
    // Asked at once, both answer the one run's report (or one runs after
    // the other): never two fetches at the same time.
    let (a_report, b_report) = tokio::join!(s.portal.sync(&s.provider), portal_b.sync(&s.provider));
    let pages = s.dash.take_pages_asked();
    if a_report["run_id"] == b_report["run_id"] {
        assert_eq!(pages, [1, 2, 3]);
    } else {
        assert_eq!(pages, [1, 2, 3, 1, 2, 3], "one after the other");
    }
    assert_eq!(digest(&s.portal).await, digest(&portal_b).await);
    let events_before = wait_for_public(&s.nats.js, "events.>", 17).await.len();
    let log_before = stream_count(&s.nats.js, streams::PORTAL).await;
    let before = digest(&s.portal).await;

    // Every replica stops; one starts again: the same state, nothing
    // published again (its start-up sync is skipped: one ran just now).
    b.running.stop().await;
    s.ps.running.stop().await;
    let again = start_portal_sync(&s.nats, |_| {}).await;
    let portal = Portal::new(&again.running.url);
    assert_eq!(digest(&portal).await, before);
    let rebuilt = meridian_portal_sync::rebuild(&s.nats.url()).await.unwrap();
    assert_eq!(json!(rebuilt.digest), before["digest"]);
    assert_eq!(stream_count(&s.nats.js, streams::PORTAL).await, log_before);
    // A barrier: one more change and its public event; had the restarted
    // relay sent anything twice, it would be counted before this one.
    let product = list(&portal, "/portal-api/products").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    portal
        .put_ok(
            &format!("/portal-api/products/{product}"),
            Some(&json!({"description": "after restart"})),
        )
        .await;
    let events = wait_for_public(&s.nats.js, "events.>", events_before + 1).await;
    assert_eq!(events.len(), events_before + 1);
    assert_eq!(
        events.last().unwrap()["type"],
        "io.meridian.product.updated"
    );
}

/// A Product, an automatic and a manual Plan of `provider`, and an app:
/// what a provisioning request names.
async fn catalogue_for_requests(portal: &Portal, provider: &str) -> (Value, Value, Value, Value) {
    let (status, product) = portal
        .post(
            "/portal-api/products",
            &json!({"name": "Orders", "provider_id": provider, "apis": [{"api_id": "orders"}], "published": true}),
        )
        .await;
    assert_eq!(status, 201, "{product}");
    let plan = |name: &str, auto: bool| {
        json!({"name": name, "provider_id": provider, "rate": 10, "per": 1,
            "auto_approve": auto, "published": true})
    };
    let auto = portal
        .post_ok("/portal-api/plans", &plan("Auto", true))
        .await;
    let manual = portal
        .post_ok("/portal-api/plans", &plan("Manual", false))
        .await;
    let (status, app) = portal
        .post(
            "/portal-api/apps",
            &json!({"name": "Shop", "owner": "dev@example.com"}),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    (product, auto, manual, app)
}

fn ask(app: &Value, product: &Value, plan: &Value) -> Value {
    json!({"app_id": app["id"], "product_id": product["id"], "plan_id": plan["id"]})
}

/// The key hashes of live credentials, and whether any approval is still
/// under way.
async fn live_credentials(portal: &Portal) -> (std::collections::BTreeSet<String>, bool) {
    let requests = list(portal, "/portal-api/provisioning-requests").await;
    let live = requests
        .iter()
        .filter(|r| r["status"] == "approved" && r["credential"]["revoked_at"] == "")
        .map(|r| r["credential"]["key_hash"].as_str().unwrap().to_owned())
        .collect();
    (live, requests.iter().any(|r| r["approving"] == true))
}

/// A replica SIGKILLed after the Dashboard made the key and before the
/// approval was recorded: another replica finishes the approval (the
/// request's Plan approves automatically), exactly one key and one
/// credential afterwards; the app's retry with the same Idempotency-Key
/// answers the same request and key, and makes no second key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_the_key_and_the_approval_leaves_one_key_and_one_credential() {
    let nats = Nats::start().await;
    let dash = empty_dashboard().await;
    let mut a = start_portal_sync_process(&nats, "replica-a", &[("INTENT_DEADLINE", "2s")]).await;
    let b = start_portal_sync(&nats, |c| {
        c.replica = Some("replica-b".into());
        c.intent_deadline = meridian_kit::config::HumanDuration(Duration::from_secs(2));
    })
    .await;
    let (pa, pb) = (a.portal.clone(), Portal::new(&b.running.url));
    let provider = add_provider(&pa, "Dashboard", &dash.url, DASH_SECRET, "portal").await;
    let provider = provider["id"].as_str().unwrap().to_owned();
    let (product, auto, _, app) = catalogue_for_requests(&pa, &provider).await;

    dash.hold_writes();
    let asking = {
        let (pa, body) = (pa.clone(), ask(&app, &product, &auto));
        tokio::spawn(async move {
            let url = format!("{}/portal-api/provisioning-requests", pa.base);
            // Raw: the answer never comes (the replica dies).
            reqwest::Client::new()
                .post(url)
                .header("x-api-key", API_KEY)
                .header("idempotency-key", "shop-order-1")
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    dash.wait_writes_held(1).await;
    a.group.kill();
    dash.release_writes();
    assert!(
        asking.await.unwrap().is_err(),
        "the killed replica answered"
    );
    assert_eq!(dash.keys().len(), 1, "the Dashboard made the key");

    // The other replica finishes it within the deadline and a pass.
    let finished = eventually(Duration::from_secs(15), || async {
        let (live, under_way) = live_credentials(&pb).await;
        (!under_way && live.len() == 1).then_some(live)
    })
    .await
    .expect("the approval left under way is finished");
    let keys: std::collections::BTreeSet<String> = dash.keys().into_keys().collect();
    assert_eq!(keys, finished, "one key, and it is the credential's");

    // The app asks again with the same Idempotency-Key: the same request
    // and the same key, no second one.
    let (status, again) = pb
        .post_idempotent(
            "/portal-api/provisioning-requests",
            &ask(&app, &product, &auto),
            "shop-order-1",
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["request"]["status"], "approved");
    let key = again["key"].as_str().expect("the key, again");
    assert_eq!(finished.iter().next().unwrap(), &sha256(key));
    assert_eq!(dash.keys().len(), 1, "a retry makes no second key");
    assert_eq!(
        list(&pb, "/portal-api/provisioning-requests").await.len(),
        1,
        "nor a second request"
    );
    // The same key for another request is refused, naming the header.
    let (status, reused) = pb
        .post_idempotent(
            "/portal-api/provisioning-requests",
            &json!({"app_id": app["id"], "product_id": product["id"], "plan_id": "another"}),
            "shop-order-1",
        )
        .await;
    assert_eq!(status, 409, "{reused}");
    assert!(
        reused["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );

    // A replica started now folds the same portal.
    let c = start_portal_sync(&nats, |c| c.replica = Some("replica-c".into())).await;
    assert_eq!(
        digest(&Portal::new(&c.running.url)).await,
        digest(&pb).await
    );
}

/// NATS stopped while approvals wait on the Dashboard, for longer than a
/// publish's timeout: the approvals answer 503 (their outcome not known
/// yet) and take nothing back; once NATS is back every request ends
/// approved with its live key, or pending with none, and nothing else is
/// in the Dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approvals_through_a_nats_outage_end_with_a_key_each_or_none() {
    let mut nats = Nats::start().await;
    let dash = empty_dashboard().await;
    let deadline = |c: &mut meridian_portal_sync::Config| {
        c.intent_deadline = meridian_kit::config::HumanDuration(Duration::from_secs(2));
    };
    let a = start_portal_sync(&nats, deadline).await;
    let b = start_portal_sync(&nats, deadline).await;
    let (pa, pb) = (Portal::new(&a.running.url), Portal::new(&b.running.url));
    let provider = add_provider(&pa, "Dashboard", &dash.url, DASH_SECRET, "portal").await;
    let provider = provider["id"].as_str().unwrap().to_owned();
    let (product, _, manual, app) = catalogue_for_requests(&pa, &provider).await;
    let mut requests = Vec::new();
    for _ in 0..3 {
        let (status, r) = pa
            .post(
                "/portal-api/provisioning-requests",
                &ask(&app, &product, &manual),
            )
            .await;
        assert_eq!(status, 201, "{r}");
        requests.push(r["request"]["id"].as_str().unwrap().to_owned());
    }

    dash.hold_writes();
    let approvals: Vec<_> = requests
        .iter()
        .map(|id| {
            let (pa, id) = (pa.clone(), id.clone());
            tokio::spawn(async move {
                pa.put(
                    &format!("/portal-api/provisioning-requests/{id}/approve"),
                    None,
                )
                .await
            })
        })
        .collect();
    dash.wait_writes_held(requests.len()).await;
    nats.server.stop();
    dash.release_writes();
    for approval in approvals {
        let (status, body) = approval.await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("not known yet"),
            "{body}"
        );
    }
    assert_eq!(
        dash.keys().len(),
        requests.len(),
        "nothing was taken back while the outcome was unknown"
    );
    nats.server.restart().expect("nats-server restarts");

    for portal in [&pa, &pb] {
        let settled = eventually(Duration::from_secs(30), || async {
            let (live, under_way) = live_credentials(portal).await;
            (!under_way).then_some(live)
        })
        .await
        .expect("no approval stays under way");
        let keys: std::collections::BTreeSet<String> = dash.keys().into_keys().collect();
        assert_eq!(
            settled, keys,
            "every live credential has its key and every key its credential"
        );
        assert_eq!(
            settled.len(),
            requests.len(),
            "every approval was stored once"
        );
    }
    assert_eq!(digest(&pa).await, digest(&pb).await);
}

/// A replica SIGKILLed while it holds a provider's sync: a sync asked of
/// another replica meanwhile waits for that run; when the claim is
/// replaced (its lease passed and a third replica took the sync over) it
/// answers the new run's report, never the report of the run before its
/// call, and that run found the policy added since.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sync_waiting_on_a_replaced_claim_answers_a_later_run() {
    let nats = Nats::start().await;
    let dash = dashboard().await;
    let short = |name: &'static str| {
        move |c: &mut meridian_portal_sync::Config| {
            c.replica = Some(name.into());
            c.sync_lease = meridian_kit::config::HumanDuration(Duration::from_secs(2));
        }
    };
    let b = start_portal_sync(&nats, short("replica-b")).await;
    let c = start_portal_sync(&nats, short("replica-c")).await;
    let (pb, pc) = (Portal::new(&b.running.url), Portal::new(&c.running.url));
    let provider = add_provider(&pb, "Dashboard", &dash.url, DASH_SECRET, "portal").await;
    let provider = provider["id"].as_str().unwrap().to_owned();
    let before = pb.sync(&provider).await;
    assert_eq!(before["status"], "ok", "{before}");
    let claim = |ps: &PortalSync| ps.state.read().unwrap().sync(&provider).claim;

    // Replica A claims the next sync and dies holding it (the Dashboard
    // holds every listing from now on).
    let mut a = start_portal_sync_process(&nats, "replica-a", &[("SYNC_LEASE", "2s")]).await;
    dash.hold();
    let held = {
        let (pa, provider) = (a.portal.clone(), provider.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .put(format!(
                    "{}/portal-api/providers/{provider}/synchronize",
                    pa.base
                ))
                .header("x-api-key", API_KEY)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    dash.wait_held(1).await;
    a.group.kill();
    assert!(held.await.unwrap().is_err(), "the killed replica answered");
    dash.put_policy(access("acc-new", &["portal"], "orders"));
    let (a_run, _, a_until) = eventually(Duration::from_secs(5), || async {
        claim(&b).filter(|(_, replica, _)| replica == "replica-a")
    })
    .await
    .expect("replica B folds A's claim");

    // B is asked while A's claim holds: it waits for A's run.
    let mut b_call = tokio::spawn({
        let (pb, provider) = (pb.clone(), provider.clone());
        async move { pb.sync(&provider).await }
    });
    // Once A's lease has passed, C is asked: the claim is replaced by a
    // run that is itself held at the Dashboard.
    let lapsed = eventually(Duration::from_secs(10), || async {
        (meridian_kit::time::now_ms() > a_until).then_some(())
    })
    .await;
    assert!(lapsed.is_some());
    let c_call = tokio::spawn({
        let (pc, provider) = (pc.clone(), provider.clone());
        async move { pc.sync(&provider).await }
    });
    let replaced = eventually(Duration::from_secs(10), || async {
        claim(&b).filter(|(run, _, _)| *run != a_run)
    })
    .await;
    assert!(replaced.is_some(), "nobody took A's claim over");
    // B does not answer while the run that replaced A's is in progress.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut b_call)
            .await
            .is_err(),
        "B answered while the run it waits for was still held"
    );
    dash.release();
    let (rb, rc) = (b_call.await.unwrap(), c_call.await.unwrap());
    for report in [&rb, &rc] {
        assert_eq!(report["status"], "ok", "{report}");
        assert_ne!(
            report["run_id"], before["run_id"],
            "a report from before the call: {report}"
        );
    }
    assert_eq!(rb["run_id"], rc["run_id"], "one run for both calls");
    assert_eq!(
        counts(&rb),
        (1, 0, 0, 0),
        "the run found the policy added since: {rb}"
    );
    let products = list(&pb, "/portal-api/products").await;
    by_policy(&products, "acc-new");
    assert_eq!(digest(&pb).await, digest(&pc).await);
}

/// A replica SIGKILLed after the Dashboard made a Product's policy and
/// before the Product was stored: another replica stores the Product with
/// that policy (found by the creation's marker), one policy and one
/// Product afterwards; a creation the provider refuses leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_a_policy_and_its_product_leaves_one_of_each() {
    let nats = Nats::start().await;
    let dash = empty_dashboard().await;
    let mut a = start_portal_sync_process(&nats, "replica-a", &[("INTENT_DEADLINE", "2s")]).await;
    let b = start_portal_sync(&nats, |c| {
        c.replica = Some("replica-b".into());
        c.intent_deadline = meridian_kit::config::HumanDuration(Duration::from_secs(2));
    })
    .await;
    let pb = Portal::new(&b.running.url);
    let provider = add_provider(&a.portal, "Dashboard", &dash.url, DASH_SECRET, "portal").await;
    let provider = provider["id"].as_str().unwrap().to_owned();
    let product = json!({"name": "Orders", "provider_id": provider, "apis": [{"api_id": "orders"}], "published": true});

    dash.hold_writes();
    let creating = {
        let (url, body) = (
            format!("{}/portal-api/products", a.portal.base),
            product.clone(),
        );
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .header("x-api-key", API_KEY)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    dash.wait_writes_held(1).await;
    a.group.kill();
    dash.release_writes();
    assert!(
        creating.await.unwrap().is_err(),
        "the killed replica answered"
    );
    assert_eq!(dash.policies().len(), 1, "the Dashboard made the policy");

    let stored = eventually(Duration::from_secs(15), || async {
        let products = list(&pb, "/portal-api/products").await;
        let left = b.state.read().unwrap().creations().count();
        (products.len() == 1 && left == 0).then_some(products)
    })
    .await
    .expect("the creation left under way is finished");
    let policies = dash.policies();
    assert_eq!(policies.len(), 1, "one policy");
    assert_eq!(stored[0]["policy_id"], policies[0]["_id"]);
    assert_eq!(stored[0]["name"], "Orders");

    // Refused by the provider: nothing is left, here or there.
    let mut refused = product.clone();
    refused["name"] = json!("refuse-me");
    let (status, body) = pb.post("/portal-api/products", &refused).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(dash.policies().len(), 1);
    assert_eq!(list(&pb, "/portal-api/products").await.len(), 1);
    assert_eq!(b.state.read().unwrap().creations().count(), 0);
}
