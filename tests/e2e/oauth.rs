//! OAuth 2.0 at the gateway, end to end: real NATS, key-issuer, two proxy
//! replicas (one on the HTTP/1.1 fast path, one on hyper), a real
//! upstream. Clients are created in key-issuer; tokens come from the
//! gateway's endpoints under the API's listen path; every grant's token is
//! used on the other replica at once, counted against its policy's quota,
//! and refused on both replicas once revoked.

use std::time::Duration;

use meridian_keys::hash_secret;
use meridian_tests::tyk::{GATEWAY_SECRET, Tyk};
use meridian_tests::*;
use serde_json::{Value, json};

/// The quota of the client's policy: each token may make this many requests.
const QUOTA: usize = 4;

struct Gateway {
    http: reqwest::Client,
    /// The two replicas' data planes.
    planes: [String; 2],
}

impl Gateway {
    /// A form POST to `path` on replica `i`, with Basic client credentials
    /// when given; status and JSON body.
    async fn form(
        &self,
        i: usize,
        path: &str,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
        secret: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.planes[i]))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form)
                    .finish(),
            );
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        if let Some(s) = secret {
            req = req.header("x-tyk-authorization", s);
        }
        let res = req.send().await.expect("the gateway answers");
        let status = res.status().as_u16();
        if status == 200 {
            assert_eq!(
                res.headers()
                    .get("cache-control")
                    .and_then(|v| v.to_str().ok()),
                Some("no-store"),
                "token answers are not cached"
            );
        }
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// A token request on replica `i` with the client's credentials.
    async fn token(
        &self,
        i: usize,
        client: &(String, String),
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        self.form(
            i,
            "/pets/oauth/token",
            Some((&client.0, &client.1)),
            form,
            None,
        )
        .await
    }

    /// The API owner's approval on replica `i` (`authorize-client` with the
    /// Gateway API secret); its answer, which must be a 200.
    async fn approve(&self, i: usize, form: &[(&str, &str)]) -> Value {
        let (status, body) = self
            .form(
                i,
                "/pets/tyk/oauth/authorize-client/",
                None,
                form,
                Some(GATEWAY_SECRET),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `GET /pets/items` on replica `i` with `authorization`.
    async fn call(&self, i: usize, authorization: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}/pets/items", self.planes[i]));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let res = req.send().await.expect("the gateway answers");
        (
            res.status().as_u16(),
            res.json().await.unwrap_or(Value::Null),
        )
    }

    /// The token opens the API on both replicas, as many times as the
    /// quota allows in all, then is refused for its quota.
    async fn spend(&self, token: &str) {
        let bearer = format!("Bearer {token}");
        for n in 0..QUOTA {
            let (status, body) = self.call(n % 2, Some(&bearer)).await;
            assert_eq!(status, 200, "request {n} with a fresh token: {body}");
            assert_eq!(body["path"], "/items", "forwarded to the upstream");
        }
        let (status, body) = self.call(1, Some(&bearer)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("Quota exceeded")),
            "the policy's quota counts the token's requests on both replicas"
        );
    }

    /// The token is refused on both replicas within a second.
    async fn refused_everywhere(&self, token: &str, why: &str) {
        let bearer = format!("Bearer {token}");
        for i in 0..2 {
            let refused = eventually(Duration::from_secs(1), || async {
                let (status, body) = self.call(i, Some(&bearer)).await;
                (status == 403 && body["error"] == "Key not authorised").then_some(())
            })
            .await;
            assert!(
                refused.is_some(),
                "replica {i} still takes a token after {why}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grant_issues_tokens_that_work_everywhere_until_revoked() {
    let super::middleware::Engines {
        nats: _nats,
        up,
        ki,
        fast,
        hyper_only,
        admin,
    } = super::middleware::Engines::start().await;
    let keys = Tyk::new(&ki.url);
    let api = json!({"api_id": "pets", "name": "Pets", "org_id": "acme", "use_oauth2": true,
        "oauth_meta": {"allowed_access_types": ["authorization_code", "refresh_token",
            "client_credentials", "password"],
            "allowed_authorize_types": ["code", "token"],
            "auth_login_redirect": "https://login.example/approve"},
        "proxy": {"listen_path": "/pets/", "target_url": up.url(), "strip_listen_path": true},
        "version_data": {"not_versioned": true}});
    admin.post_ok("/tyk/apis", &api).await;
    let mut refused = api.clone();
    refused["oauth_meta"]["allowed_access_types"] = json!(["client_credentials", "assertion"]);
    refused["api_id"] = json!("other");
    refused["proxy"]["listen_path"] = json!("/other/");
    let (status, body) = admin.post("/tyk/apis", &refused).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("oauth_meta.allowed_access_types: \"assertion\" is not a grant"),
        "{body}"
    );
    keys.post_ok(
        "/tyk/policies",
        &json!({"id": "gold", "name": "Gold", "org_id": "acme", "active": true,
            "rate": 1000, "per": 1, "quota_max": QUOTA, "quota_renewal_rate": 3600,
            "access_rights": {"pets": {"api_id": "pets", "versions": ["Default"]}}}),
    )
    .await;
    let created = keys
        .post_ok(
            "/tyk/oauth/clients/create",
            &json!({"api_id": "pets", "policy_id": "gold",
                "redirect_uri": "https://app.example/cb", "meta_data": {"team": "blue"}}),
        )
        .await;
    let client = (
        created["client_id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    );
    let (status, _) = admin.get("/tyk/reload?block=true").await;
    assert_eq!(status, 200);
    let gw = Gateway {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        planes: [fast.gateway.clone(), hyper_only.gateway.clone()],
    };

    // Bearer tokens as Tyk's OAuth middleware reads them.
    let cases = [
        (None, 400, "Authorization field missing"),
        (Some("just-a-token"), 400, "Authorization field missing"),
        (Some("Basic abc"), 400, "Bearer token malformed"),
        (Some("Bearer nope"), 403, "Key not authorised"),
    ];
    for i in 0..2 {
        for (auth, status, message) in cases {
            let (got, body) = gw.call(i, auth).await;
            assert_eq!(
                (got, body["error"].as_str()),
                (status, Some(message)),
                "{auth:?} on replica {i}"
            );
        }
    }

    // client_credentials: no refresh token; the token is listed by hash.
    let (status, grant) = gw
        .token(0, &client, &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(status, 200, "{grant}");
    assert_eq!(
        (grant["token_type"].as_str(), grant["expires_in"].as_i64()),
        (Some("Bearer"), Some(3600))
    );
    assert!(grant.get("refresh_token").is_none(), "{grant}");
    let cc = grant["access_token"].as_str().unwrap().to_owned();
    assert!(
        cc.starts_with("acme"),
        "tokens look like the organisation's keys: {cc}"
    );
    gw.spend(&cc).await;
    let listed = keys
        .get_ok(&format!("/tyk/oauth/clients/pets/{}/tokens", client.0))
        .await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["code"] == hash_secret(&cc)),
        "{listed}"
    );
    // Errors in RFC 6749's shape, Tyk's 403.
    let wrong = (client.0.clone(), "wrong".to_owned());
    let bad = [
        (
            gw.token(1, &wrong, &[("grant_type", "client_credentials")])
                .await,
            "unauthorized_client",
        ),
        (
            gw.token(1, &client, &[("grant_type", "assertion")]).await,
            "unsupported_grant_type",
        ),
        (
            gw.form(
                1,
                "/pets/oauth/token",
                None,
                &[("grant_type", "client_credentials")],
                None,
            )
            .await,
            "invalid_request",
        ),
        (
            gw.token(
                1,
                &client,
                &[("grant_type", "authorization_code"), ("code", "made-up")],
            )
            .await,
            "invalid_grant",
        ),
    ];
    for ((status, body), error) in bad {
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some(error)),
            "{body}"
        );
        assert!(body["error_description"].is_string(), "{body}");
    }

    // authorization_code, as Tyk runs it: the authorize endpoint sends the
    // user to the API owner's login page; the page approves with the
    // Gateway API secret and gets the code; the client exchanges it.
    let query = format!(
        "client_id={}&response_type=code&redirect_uri=https%3A%2F%2Fapp.example%2Fcb&state=s1",
        client.0
    );
    let res = gw
        .http
        .get(format!("{}/pets/oauth/authorize?{query}", gw.planes[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 307);
    assert_eq!(
        res.headers()["location"].to_str().unwrap(),
        format!("https://login.example/approve?{query}")
    );
    let approve = [
        ("response_type", "code"),
        ("client_id", client.0.as_str()),
        ("redirect_uri", "https://app.example/cb"),
        ("state", "s1"),
    ];
    let (status, body) = gw
        .form(1, "/pets/tyk/oauth/authorize-client/", None, &approve, None)
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (
            403,
            Some("Attempted administrative access with invalid or missing key!")
        )
    );
    let body = gw.approve(1, &approve).await;
    let code = body["code"].as_str().unwrap().to_owned();
    assert_eq!(body["state"], "s1");
    assert_eq!(
        body["redirect_to"],
        format!("https://app.example/cb?code={code}&state=s1")
    );
    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "https://app.example/cb"),
    ];
    let (status, grant) = gw.token(0, &client, &exchange).await;
    assert_eq!(status, 200, "{grant}");
    let (status, again) = gw.token(1, &client, &exchange).await;
    assert_eq!(
        (status, again["error"].as_str()),
        (403, Some("invalid_grant")),
        "a code is used once"
    );
    // Two replicas asked to exchange one code at once: one token.
    let raced = gw.approve(0, &approve).await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let twice = [
        ("grant_type", "authorization_code"),
        ("code", raced.as_str()),
        ("redirect_uri", "https://app.example/cb"),
    ];
    let (a, b) = tokio::join!(gw.token(0, &client, &twice), gw.token(1, &client, &twice));
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 403], "{a:?} {b:?}");
    let ac = grant["access_token"].as_str().unwrap().to_owned();
    let refresh = grant["refresh_token"].as_str().unwrap().to_owned();
    gw.spend(&ac).await;

    // refresh_token: a new pair; the old access token and refresh token stop.
    let (status, renewed) = gw
        .token(
            1,
            &client,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
            ],
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    assert!(renewed["refresh_token"].is_string(), "{renewed}");
    gw.refused_everywhere(&ac, "its refresh token was used")
        .await;
    let (status, reused) = gw
        .token(
            0,
            &client,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
            ],
        )
        .await;
    assert_eq!(
        (status, reused["error"].as_str()),
        (403, Some("invalid_grant"))
    );
    let rt = renewed["access_token"].as_str().unwrap().to_owned();
    gw.spend(&rt).await;

    // password: the user is a basic-auth key of the API's organisation.
    keys.post_ok(
        "/tyk/keys/acmeada",
        &json!({"org_id": "acme", "quota_max": QUOTA, "quota_renewal_rate": 3600,
            "access_rights": {"pets": {"api_id": "pets", "versions": ["Default"]}},
            "basic_auth_data": {"password": "correct horse"}}),
    )
    .await;
    let (status, denied) = gw
        .token(
            0,
            &client,
            &[
                ("grant_type", "password"),
                ("username", "ada"),
                ("password", "wrong"),
            ],
        )
        .await;
    assert_eq!(
        (status, denied["error"].as_str()),
        (403, Some("access_denied"))
    );
    let (status, grant) = gw
        .token(
            0,
            &client,
            &[
                ("grant_type", "password"),
                ("username", "ada"),
                ("password", "correct horse"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{grant}");
    let pw = grant["access_token"].as_str().unwrap().to_owned();
    gw.spend(&pw).await;

    // The implicit grant: the token in the redirect's fragment.
    let implicit = [
        ("response_type", "token"),
        ("client_id", client.0.as_str()),
        ("state", "s2"),
    ];
    let body = gw.approve(0, &implicit).await;
    let it = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        body["redirect_to"],
        format!(
            "https://app.example/cb#access_token={it}&expires_in=3600&token_type=Bearer&state=s2"
        )
    );
    let (status, _) = gw.call(1, Some(&format!("Bearer {it}"))).await;
    assert_eq!(status, 200);

    // Revocation reaches both replicas: one token, then every token of the
    // client, then (for new tokens) the client itself, then its policy.
    let (status, _) = keys
        .post_form(
            "/tyk/oauth/revoke",
            &format!(
                "token={it}&token_type_hint=access_token&client_id={}",
                client.0
            ),
        )
        .await;
    assert_eq!(status, 200);
    gw.refused_everywhere(&it, "POST /tyk/oauth/revoke").await;
    let (status, fresh) = gw
        .token(1, &client, &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(status, 200, "{fresh}");
    let fresh = fresh["access_token"].as_str().unwrap().to_owned();
    let (status, _) = keys
        .post_form(
            "/tyk/oauth/revoke_all",
            &format!("client_id={}&client_secret={}", client.0, client.1),
        )
        .await;
    assert_eq!(status, 200);
    gw.refused_everywhere(&fresh, "POST /tyk/oauth/revoke_all")
        .await;
    gw.refused_everywhere(&pw, "POST /tyk/oauth/revoke_all")
        .await;

    let (status, last) = gw
        .token(0, &client, &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(status, 200, "{last}");
    let last = last["access_token"].as_str().unwrap().to_owned();
    let (status, _) = gw.call(1, Some(&format!("Bearer {last}"))).await;
    assert_eq!(status, 200);
    keys.delete_ok(&format!("/tyk/oauth/clients/pets/{}", client.0))
        .await;
    gw.refused_everywhere(&last, "its client was deleted").await;
    let (status, gone) = gw
        .token(0, &client, &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(
        (status, gone["error"].as_str()),
        (403, Some("unauthorized_client"))
    );

    // A policy deleted: its tokens open nothing.
    let other = keys
        .post_ok(
            "/tyk/oauth/clients/create",
            &json!({"api_id": "pets", "policy_id": "gold", "redirect_uri": "https://app.example/cb"}),
        )
        .await;
    let other = (
        other["client_id"].as_str().unwrap().to_owned(),
        other["secret"].as_str().unwrap().to_owned(),
    );
    let (status, grant) = gw
        .token(0, &other, &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(status, 200, "{grant}");
    let by_policy = grant["access_token"].as_str().unwrap().to_owned();
    keys.delete_ok("/tyk/policies/gold").await;
    for i in 0..2 {
        let refused = eventually(Duration::from_secs(1), || async {
            let (status, _) = gw.call(i, Some(&format!("Bearer {by_policy}"))).await;
            (status == 403).then_some(())
        })
        .await;
        assert!(
            refused.is_some(),
            "replica {i} still takes a token whose policy is gone"
        );
    }
    ki.stop().await;
}
