//! Tyk OAS API definitions at the gateway: a hand-written Petstore document
//! with `x-tyk-api-gateway`, stored, served (key auth, header injection),
//! given back as stored (and without the extension with `mode=public`),
//! replaced, exported, imported from a plain document, and held to the
//! same listen-path rule as classic definitions. Real NATS, key-issuer, a
//! proxy replica, a real upstream; answers checked against Tyk's document.

use meridian_tests::tyk::{GATEWAY_SECRET, Tyk, start_key_issuer, start_proxy};
use meridian_tests::upstream::Upstream;
use meridian_tests::*;
use serde_json::{Value, json};

/// The Petstore, as a Tyk 5 user writes it: an API key in `X-Api-Key`, a
/// header added to every request and one to `showPetById`'s answers.
fn petstore(upstream: &str) -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Swagger Petstore", "version": "1.0.0", "license": {"name": "MIT"}},
        "servers": [{"url": "http://petstore.swagger.io/v1"}],
        "paths": {
            "/pets": {
                "get": {"summary": "List all pets", "operationId": "listPets", "tags": ["pets"],
                    "parameters": [{"name": "limit", "in": "query", "required": false,
                        "schema": {"type": "integer", "maximum": 100, "format": "int32"}}],
                    "responses": {"200": {"description": "A paged array of pets",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pets"}}}}}},
                "post": {"summary": "Create a pet", "operationId": "createPets", "tags": ["pets"],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}},
                    "responses": {"201": {"description": "Null response"}}}
            },
            "/pets/{petId}": {
                "get": {"summary": "Info for a specific pet", "operationId": "showPetById", "tags": ["pets"],
                    "parameters": [{"name": "petId", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "Expected response to a valid request",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}}}}
            }
        },
        "components": {
            "schemas": {
                "Pet": {"type": "object", "required": ["id", "name"],
                    "properties": {"id": {"type": "integer", "format": "int64"}, "name": {"type": "string"}, "tag": {"type": "string"}}},
                "Pets": {"type": "array", "maxItems": 100, "items": {"$ref": "#/components/schemas/Pet"}}
            },
            "securitySchemes": {"api_key": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}}
        },
        "security": [{"api_key": []}],
        "x-internal-owner": {"team": "pets", "pager": "#pets-oncall"},
        "x-tyk-api-gateway": {
            "info": {"id": "petstore", "name": "Petstore", "state": {"active": true}},
            "upstream": {"url": upstream},
            "server": {
                "listenPath": {"value": "/petstore/", "strip": true},
                "authentication": {"enabled": true, "securitySchemes": {"api_key": {"enabled": true}}}
            },
            "middleware": {
                "global": {"transformRequestHeaders": {"enabled": true,
                    "add": [{"name": "X-Served-By", "value": "meridian"}], "remove": ["X-Internal"]}},
                "operations": {"showPetById": {"transformResponseHeaders": {"enabled": true,
                    "add": [{"name": "X-Pet-Answer", "value": "yes"}]}}}
            }
        }
    })
}

/// A key for the Petstore, from key-issuer, once every replica serves
/// what was stored.
async fn petstore_key(keys: &Tyk, admin: &Tyk) -> String {
    let key = keys
        .post_ok(
            "/tyk/keys",
            &json!({"access_rights": {"petstore": {"api_id": "petstore", "versions": ["Default"]}}}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = admin.get("/tyk/reload?block=true").await;
    assert_eq!(status, 200);
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openapi_document_is_the_api_stored_served_and_given_back() {
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let (ki, _) = start_key_issuer(&nats, |_| {}).await;
    let proxy = start_proxy(&nats, |_| {}).await;
    let admin = Tyk::new(&proxy.admin.url);
    let keys = Tyk::new(&ki.url);
    let http = reqwest::Client::new();

    let doc = petstore(&up.url());
    let created = admin.post_ok("/tyk/apis/oas", &doc).await;
    assert_eq!(
        (created["key"].as_str(), created["action"].as_str()),
        (Some("petstore"), Some("added"))
    );
    // Given back as stored: vendor extensions and all.
    assert_eq!(admin.get_ok("/tyk/apis/oas/petstore").await, doc);
    let public = admin.get_ok("/tyk/apis/oas/petstore?mode=public").await;
    assert!(public.get("x-tyk-api-gateway").is_none(), "{public}");
    assert_eq!(public["x-internal-owner"], doc["x-internal-owner"]);
    assert_eq!(admin.get_ok("/tyk/apis/oas").await, json!([doc]));
    // The classic definition it is served as.
    let classic = admin.get_ok("/tyk/apis/petstore").await;
    assert_eq!(classic["proxy"]["listen_path"], "/petstore/");
    assert_eq!(classic["auth"]["auth_header_name"], "X-Api-Key");

    // Served: the document's API key in its header, the headers injected.
    let key = petstore_key(&keys, &admin).await;
    let call = |path: &str, key: Option<&str>| {
        let mut req = http
            .get(format!("{}/petstore{path}", proxy.gateway))
            .header("x-internal", "secret");
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        req.send()
    };
    let res = call("/pets", None).await.unwrap();
    assert_eq!(res.status(), 401);
    let res = call("/pets/7", Some(&key)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-pet-answer"], "yes");
    let seen: Value = res.json().await.unwrap();
    assert_eq!(seen["path"], "/pets/7");
    assert_eq!(seen["headers"]["x-served-by"], "meridian");
    assert!(seen["headers"].get("x-internal").is_none(), "{seen}");
    let res = call("/pets", Some(&key)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("x-pet-answer").is_none(),
        "only showPetById's answers"
    );

    // Fields the gateway does not serve are refused by name; the OAS
    // endpoints and the classic ones keep to their own format.
    let mut unserved = doc.clone();
    unserved["x-tyk-api-gateway"]["server"]["customDomain"] =
        json!({"enabled": true, "name": "pets.example"});
    let (status, body) = admin.put("/tyk/apis/oas/petstore", &unserved).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("x-tyk-api-gateway.server.customDomain"),
        "{body}"
    );
    let mut bare = doc.clone();
    bare.as_object_mut().unwrap().remove("x-tyk-api-gateway");
    let (status, body) = admin.post("/tyk/apis/oas", &bare).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("the payload should contain x-tyk-api-gateway")
    );
    let (status, body) = admin.put("/tyk/apis/petstore", &classic).await;
    assert_eq!(
        status, 400,
        "a classic PUT does not turn an OAS API classic: {body}"
    );
    admin
        .post_ok(
            "/tyk/apis",
            &json!({"api_id": "orders", "name": "Orders", "use_keyless": true,
                "proxy": {"listen_path": "/orders/", "target_url": up.url()}}),
        )
        .await;
    let (status, body) = admin.get("/tyk/apis/oas/orders").await;
    assert_eq!(
        (status, body["message"].as_str()),
        (
            400,
            Some(
                "the requested API definition is in Tyk classic format, please use old API endpoint"
            )
        )
    );
    // One listen path, one API, whichever format.
    let mut clash = doc.clone();
    clash["x-tyk-api-gateway"]["info"]["id"] = json!("clash");
    clash["x-tyk-api-gateway"]["server"]["listenPath"]["value"] = json!("/orders/");
    let (status, body) = admin.post("/tyk/apis/oas", &clash).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("\"orders\""),
        "{body}"
    );
    let (status, body) = admin
        .post(
            "/tyk/apis",
            &json!({"api_id": "shadow", "use_keyless": true,
                "proxy": {"listen_path": "/petstore/", "target_url": up.url()}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("\"petstore\""),
        "{body}"
    );

    // Replaced: a new listen path, served at once.
    let mut moved = doc.clone();
    moved["x-tyk-api-gateway"]["server"]["listenPath"]["value"] = json!("/pets-v2/");
    let answer = admin.put_ok("/tyk/apis/oas/petstore", &moved).await;
    assert_eq!(answer["action"], "modified");
    let (status, _) = admin.get("/tyk/reload?block=true").await;
    assert_eq!(status, 200);
    let res = http
        .get(format!("{}/pets-v2/pets", proxy.gateway))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = http
        .get(format!("{}/petstore/pets", proxy.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // Exported as a file: the document as stored.
    let export = http
        .get(format!("{}/tyk/apis/oas/petstore/export", proxy.admin.url))
        .header("x-tyk-authorization", GATEWAY_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    assert_eq!(
        export.headers()["content-disposition"],
        "attachment; filename=\"petstore.json\""
    );
    assert_eq!(export.json::<Value>().await.unwrap(), moved);

    // Imported from a plain document: the extension is made for it.
    let (status, imported) = admin
        .post(
            &format!(
                "/tyk/apis/oas/import?listenPath=/imported/&upstreamURL={}&authentication=false",
                up.url()
            ),
            &public,
        )
        .await;
    assert_eq!(status, 200, "{imported}");
    let id = imported["key"].as_str().unwrap().to_owned();
    let stored = admin.get_ok(&format!("/tyk/apis/oas/{id}")).await;
    assert_eq!(
        stored["x-tyk-api-gateway"]["info"]["name"],
        "Swagger Petstore"
    );
    assert_eq!(
        stored["x-tyk-api-gateway"]["server"]["listenPath"]["value"],
        "/imported/"
    );
    let (status, _) = admin.get("/tyk/reload?block=true").await;
    assert_eq!(status, 200);
    let res = http
        .get(format!("{}/imported/pets", proxy.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "authentication=false: keyless");
    let (status, body) = admin
        .post("/tyk/apis/oas/import?customDomain=pets.example", &public)
        .await;
    assert_eq!(status, 400, "{body}");
    // Patched: the document replaced, the stored extension kept, the
    // parameters applied (every operation allowed and validated).
    let mut renamed = public.clone();
    renamed["info"]["title"] = json!("Petstore, patched");
    let patched = admin
        .call(
            reqwest::Method::PATCH,
            &format!("/tyk/apis/oas/{id}?allowList=true&validateRequest=true"),
            meridian_tests::tyk::Body::Json(&renamed),
        )
        .await;
    assert_eq!(patched.0, 200, "{}", patched.1);
    let stored = admin.get_ok(&format!("/tyk/apis/oas/{id}")).await;
    assert_eq!(stored["info"]["title"], "Petstore, patched");
    assert_eq!(
        stored["x-tyk-api-gateway"]["server"]["listenPath"]["value"],
        "/imported/"
    );
    assert_eq!(
        stored["x-tyk-api-gateway"]["middleware"]["operations"]["createPets"],
        json!({"allow": {"enabled": true}, "validateRequest": {"enabled": true}})
    );
    let (status, _) = admin.get("/tyk/reload?block=true").await;
    assert_eq!(status, 200);
    let res = http
        .get(format!("{}/imported/owners", proxy.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "not an operation of the document");
    let res = http
        .post(format!("{}/imported/pets", proxy.gateway))
        .header("content-type", "application/json")
        .body(r#"{"id": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422, "validated after the patch");

    // Governance: the agent's `meridian` provider reports the OAS API with
    // its OpenAPI document (without the gateway's extension), the classic
    // one without.
    use meridian_agent::providers::Source as _;
    let source = meridian_agent::providers::tyk::MeridianGateway {
        url: proxy.admin.url.clone(),
        secret: GATEWAY_SECRET.into(),
        http: reqwest::Client::new(),
    };
    let reported = source.list().await.expect("the gateway lists its APIs");
    let pets = reported
        .iter()
        .find(|a| a.provider_api_id == "petstore")
        .expect("petstore reported");
    let documented: Value = serde_json::from_str(&pets.openapi).unwrap();
    let mut without = moved.clone();
    without.as_object_mut().unwrap().remove("x-tyk-api-gateway");
    assert_eq!(documented, without);
    assert_eq!(
        (pets.version.as_str(), pets.base_path.as_str()),
        ("1.0.0", "/pets-v2/")
    );
    assert!(
        pets.auth_methods.contains(&"api_key".to_owned()),
        "{:?}",
        pets.auth_methods
    );
    let orders = reported
        .iter()
        .find(|a| a.provider_api_id == "orders")
        .expect("orders reported");
    assert!(orders.openapi.is_empty());

    // The extension's schema as this gateway serves it; 404 for OAS 4.
    let published = admin.get_ok("/tyk/schema").await;
    assert_eq!(published["status"], "Success");
    assert!(
        published["schema"]["properties"]["middleware"].is_object(),
        "{published}"
    );
    let (status, body) = admin.get("/tyk/schema?oasVersion=4").await;
    assert_eq!(
        (status, body["message"].as_str()),
        (404, Some("Schema not found for version \"4\""))
    );

    // Deleted through either endpoint family.
    admin.delete_ok("/tyk/apis/oas/petstore").await;
    let (status, _) = admin.get("/tyk/apis/oas/petstore").await;
    assert_eq!(status, 404);
    ki.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_are_allowed_blocked_opened_and_mocked_by_operation_id() {
    let super::middleware::Engines {
        nats: _nats,
        up,
        ki,
        fast,
        hyper_only,
        admin,
    } = super::middleware::Engines::start().await;
    let http = reqwest::Client::new();

    // Only listPets (open to all) and showPetById (mocked from the
    // document's example, key needed) are served.
    let mut allowed = petstore(&up.url());
    allowed["paths"]["/pets/{petId}"]["get"]["responses"]["200"]["content"]["application/json"]["example"] =
        json!({"id": 7, "name": "Rex"});
    allowed["x-tyk-api-gateway"]["middleware"] = json!({"operations": {
        "listPets": {"allow": {"enabled": true}, "ignoreAuthentication": {"enabled": true}},
        "showPetById": {"allow": {"enabled": true},
            "mockResponse": {"enabled": true, "fromOASExamples": {"enabled": true}}}
    }});
    admin.post_ok("/tyk/apis/oas", &allowed).await;
    // Another API blocks one operation and serves the rest; one operation
    // mocked from the section itself.
    let mut blocked = petstore(&up.url());
    blocked["x-tyk-api-gateway"]["info"]["id"] = json!("blocked");
    blocked["x-tyk-api-gateway"]["server"]["listenPath"]["value"] = json!("/blocked/");
    blocked["x-tyk-api-gateway"]["server"]["authentication"]["enabled"] = json!(false);
    blocked["x-tyk-api-gateway"]["middleware"] = json!({"operations": {
        "createPets": {"block": {"enabled": true}},
        "showPetById": {"mockResponse": {"enabled": true, "code": 418, "body": "teapot",
            "headers": [{"name": "X-Mocked", "value": "yes"}]}}
    }});
    admin.post_ok("/tyk/apis/oas", &blocked).await;
    let key = petstore_key(&Tyk::new(&ki.url), &admin).await;

    for gateway in [&fast.gateway, &hyper_only.gateway] {
        let send = |method: reqwest::Method, path: &str, key: Option<&str>| {
            let mut req = http.request(method, format!("{gateway}{path}"));
            if let Some(k) = key {
                req = req.header("x-api-key", k);
            }
            req.send()
        };
        // Open: no key, forwarded.
        let res = send(reqwest::Method::GET, "/petstore/pets", None)
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{gateway}");
        let seen: Value = res.json().await.unwrap();
        assert_eq!(seen["path"], "/pets", "forwarded to the upstream");
        // Mocked from the document, after the key check.
        let res = send(reqwest::Method::GET, "/petstore/pets/7", None)
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            401,
            "{gateway}: the mocked operation still needs its key"
        );
        let res = send(reqwest::Method::GET, "/petstore/pets/7", Some(&key))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/json");
        assert_eq!(
            res.json::<Value>().await.unwrap(),
            json!({"id": 7, "name": "Rex"})
        );
        // Not on the allow list: refused before the key check.
        for (method, path) in [
            (reqwest::Method::POST, "/petstore/pets"),
            (reqwest::Method::GET, "/petstore/owners"),
        ] {
            let res = send(method, path, Some(&key)).await.unwrap();
            assert_eq!(res.status(), 403, "{gateway} {path}");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"], "Requested endpoint is forbidden");
        }
        // The other API: one operation blocked, one mocked, the rest forwarded.
        let res = send(reqwest::Method::POST, "/blocked/pets", None)
            .await
            .unwrap();
        assert_eq!(res.status(), 403);
        let res = send(reqwest::Method::GET, "/blocked/pets/1", None)
            .await
            .unwrap();
        assert_eq!(res.status(), 418);
        assert_eq!(res.headers()["x-mocked"], "yes");
        assert_eq!(res.text().await.unwrap(), "teapot");
        let res = send(reqwest::Method::GET, "/blocked/pets", None)
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.json::<Value>().await.unwrap()["path"], "/pets");
    }
    ki.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_validated_against_the_operations_schemas() {
    let nats = Nats::start().await;
    let up = Upstream::start().await;
    let fast = start_proxy(&nats, |_| {}).await;
    let hyper_only = start_proxy(&nats, |c| c.http1_fast_path = false).await;
    let admin = Tyk::new(&fast.admin.url);
    let http = reqwest::Client::new();
    let mut doc = petstore(&up.url());
    doc["x-tyk-api-gateway"]["server"]["authentication"]["enabled"] = json!(false);
    doc["x-tyk-api-gateway"]["middleware"] = json!({"operations": {
        "createPets": {"validateRequest": {"enabled": true}},
        "listPets": {"validateRequest": {"enabled": true, "errorResponseCode": 400}}
    }});
    admin.post_ok("/tyk/apis/oas", &doc).await;
    let (status, _) = admin.get("/tyk/reload?block=true").await;
    assert_eq!(status, 200);

    for gateway in [&fast.gateway, &hyper_only.gateway] {
        let post = |body: String, content_type: &str| {
            http.post(format!("{gateway}/petstore/pets"))
                .header("content-type", content_type)
                .body(body)
                .send()
        };
        let pet = json!({"id": 1, "name": "Rex", "tag": "dog"}).to_string();
        let res = post(pet.clone(), "application/json").await.unwrap();
        assert_eq!(res.status(), 200, "{gateway}");
        let seen: Value = res.json().await.unwrap();
        assert_eq!(
            seen["body_bytes"],
            pet.len(),
            "the body read for checking is forwarded whole"
        );
        let refusals = [
            (
                json!({"id": 1}).to_string(),
                "application/json",
                "\"name\" is a required property",
            ),
            (
                json!({"id": "one", "name": "Rex"}).to_string(),
                "application/json",
                "at /id",
            ),
            ("{".to_owned(), "application/json", "not JSON"),
            (pet.clone(), "text/plain", "is not JSON"),
        ];
        for (body, content_type, expected) in refusals {
            let res = post(body, content_type).await.unwrap();
            assert_eq!(res.status(), 422, "{gateway} {expected}");
            let answer: Value = res.json().await.unwrap();
            let message = answer["error"].as_str().unwrap();
            assert!(
                message.starts_with("request validation error: request body"),
                "{message}"
            );
            assert!(message.contains(expected), "{message}");
        }
        // Over the cap: 413 and the connection closed; a client still
        // writing when the gateway closes sees its write cut instead.
        match post("x".repeat(2 * 1024 * 1024), "application/json").await {
            Ok(res) => assert_eq!(res.status(), 413),
            Err(e) => assert!(e.is_request(), "{gateway}: {e}"),
        }
        // Parameters, with the operation's own error code.
        let res = http
            .get(format!("{gateway}/petstore/pets?limit=1000"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
        let answer: Value = res.json().await.unwrap();
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("query parameter \"limit\""),
            "{answer}"
        );
        let res = http
            .get(format!("{gateway}/petstore/pets?limit=10"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        // An operation without validateRequest is not checked.
        let res = http
            .get(format!("{gateway}/petstore/pets/x?whatever=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
}
