//! Tyk's own policy-merge cases (`internal/policy/apply_test.go` and its
//! `testdata`, Tyk 5.x), as facts: the policies, the key, and what the
//! merged session must be. Each case carries the name Tyk gives it. Where
//! Meridian deliberately differs, the case says so and asserts Meridian's
//! answer; docs/gateway.md lists the same deviations.
//!
//! Not ported: the MCP and JSON-RPC primitive limits (`apply_mcp_test.go`;
//! Meridian's gateway proxies neither) and the custom-policies hook of Tyk's
//! middleware (`SetCustomPolicies`), whose two cases are ported here as
//! plain policies.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::*;

/// The policies of the cases, by the id a key names them with. Some carry
/// another `id` inside (what allowance scopes name), as in Tyk's data.
fn policies() -> HashMap<String, Policy> {
    let all = json!({
        "acl-for-a-b": {"access_rights": {"a": {}, "b": {}}, "partitions": {"acl": true}},
        "acl1": {"access_rights": {"a": {}}, "partitions": {"acl": true}},
        "acl2": {"access_rights": {"b": {}}, "partitions": {"acl": true}},
        "allowed-types1": {"id": "allowed_types_1", "access_rights": {"a": {
            "allowed_types": [{"name": "Country", "fields": ["code", "name"]}, {"name": "Person", "fields": ["name", "height"]}],
            "restricted_types": [{"name": "Dog", "fields": ["name", "breed", "country"]}, {"name": "Cat", "fields": ["name", "country"]}]}}},
        "allowed-types2": {"id": "allowed_types_2", "access_rights": {"a": {
            "allowed_types": [{"name": "Country", "fields": ["code", "phone"]}, {"name": "Person", "fields": ["name", "mass"]}],
            "restricted_types": [{"name": "Dog", "fields": ["name", "breed"]}, {"name": "Cat", "fields": ["name"]}]}}},
        "complexity1": {"max_query_depth": 2, "access_rights": {"a": {}}, "partitions": {"acl": true, "complexity": true}},
        "complexity2": {"max_query_depth": 3, "access_rights": {"a": {}}, "partitions": {"acl": true, "complexity": true}},
        "difforg": {"org_id": "different"},
        "field-level-depth-limit1": {"id": "field-level-depth-limit1", "access_rights": {"graphql-api": {"field_access_rights": [
            {"type_name": "Query", "field_name": "people", "limits": {"max_query_depth": 4}},
            {"type_name": "Mutation", "field_name": "putPerson", "limits": {"max_query_depth": 3}},
            {"type_name": "Query", "field_name": "countries", "limits": {"max_query_depth": 3}}]}}},
        "field-level-depth-limit2": {"id": "field-level-depth-limit2", "access_rights": {"graphql-api": {"field_access_rights": [
            {"type_name": "Query", "field_name": "people", "limits": {"max_query_depth": 2}},
            {"type_name": "Mutation", "field_name": "putPerson", "limits": {"max_query_depth": -1}},
            {"type_name": "Query", "field_name": "continents", "limits": {"max_query_depth": 4}}]}}},
        "inactive1": {"access_rights": {"a": {}}, "is_inactive": true, "partitions": {"acl": true, "rate_limit": true}},
        "inactive2": {"access_rights": {"a": {}}, "is_inactive": true, "partitions": {"acl": true, "quota": true}},
        "introspection-disabled": {"id": "introspection_disabled", "access_rights": {"a": {"disable_introspection": true}}},
        "introspection-enabled": {"id": "introspection_enabled", "access_rights": {"a": {}}},
        "nonpart1": {"id": "p1", "access_rights": {"a": {}}},
        "nonpart2": {"id": "p2", "access_rights": {"b": {}}},
        "nonpart3": {"id": "p3", "access_rights": {"a": {}, "b": {}}},
        "per-path1": {"id": "per_path_1", "access_rights": {
            "a": {"allowed_urls": [{"url": "/user", "methods": ["GET", "POST"]}]},
            "b": {"allowed_urls": [{"url": "/", "methods": ["PUT"]}]}}},
        "per-path2": {"id": "per_path_2", "access_rights": {
            "a": {"allowed_urls": [{"url": "/user", "methods": ["GET"]}, {"url": "/companies", "methods": ["GET", "POST"]}]}}},
        "per_api_and_no_other_partitions": {"access_rights": {
            "c": {"limit": {"rate": 2000, "per": 60, "quota_max": -1}},
            "d": {"limit": {"rate": 20, "per": 1, "quota_max": 1000, "quota_renewal_rate": 3600}}},
            "partitions": {"per_api": true}},
        "per_api_and_partitions": {"access_rights": {"d": {"limit": {"rate": 20, "per": 1, "quota_max": 1000, "quota_renewal_rate": 3600}}},
            "partitions": {"quota": true, "rate_limit": true, "acl": true, "per_api": true}},
        "per_api_and_some_partitions": {"access_rights": {"d": {"limit": {"rate": 20, "per": 1, "quota_max": 1000, "quota_renewal_rate": 3600}}},
            "partitions": {"rate_limit": true, "per_api": true}},
        "per_api_with_limit_set_from_policy": {"rate": 300, "per": 1, "quota_max": -1, "access_rights": {
            "d": {"limit": {"rate": 200, "per": 10, "quota_max": 5000, "quota_renewal_rate": 3600}}, "e": {}},
            "partitions": {"per_api": true}},
        "per_api_with_api_d": {"access_rights": {"d": {"limit": {"rate": 200, "per": 10, "quota_max": 5000, "quota_renewal_rate": 3600}}},
            "partitions": {"per_api": true}},
        "per_api_with_higher_rate_on_api_d": {"access_rights": {"d": {"limit": {"rate": 400, "per": 25, "quota_max": 5000, "quota_renewal_rate": 3600}}},
            "partitions": {"per_api": true}},
        "per_api_with_api_c": {"access_rights": {"c": {"limit": {"rate": 3000, "per": 10, "quota_max": 6000, "quota_renewal_rate": 3600}}},
            "partitions": {"per_api": true}},
        "quota1": {"quota_max": 2, "access_rights": {"a": {}}, "partitions": {"acl": true, "quota": true}},
        "quota2": {"quota_max": 3, "access_rights": {"a": {}}, "partitions": {"acl": true, "quota": true}},
        "quota3": {"quota_max": 3, "access_rights": {"a": {}}, "partitions": {"acl": true, "quota": true}},
        "quota4": {"quota_max": 3, "access_rights": {"b": {}}, "partitions": {"quota": true}},
        "quota5": {"quota_max": 4, "access_rights": {"b": {}}, "partitions": {"acl": true, "quota": true}},
        "rate-for-a": {"rate": 4, "per": 1, "access_rights": {"a": {}}, "partitions": {"rate_limit": true}},
        "rate-for-a-b": {"rate": 4, "per": 1, "access_rights": {"a": {}, "b": {}}, "partitions": {"rate_limit": true}},
        "rate-for-b": {"rate": 2, "per": 1, "access_rights": {"b": {}}, "partitions": {"rate_limit": true}},
        "rate-no-partition": {"rate": 12, "per": 1, "access_rights": {"a": {}}},
        "rate1": {"rate": 3, "per": 1, "access_rights": {"a": {}}, "partitions": {"acl": true, "rate_limit": true}},
        "rate2": {"rate": 4, "per": 1, "access_rights": {"a": {}}, "partitions": {"acl": true, "rate_limit": true}},
        "rate3": {"rate": 4, "per": 4, "partitions": {"acl": true, "rate_limit": true}},
        "rate4": {"rate": 8, "per": 1, "access_rights": {"a": {}}, "partitions": {"acl": true, "rate_limit": true}},
        "rate5": {"rate": 10, "per": 1, "access_rights": {"a": {}}, "partitions": {"acl": true, "rate_limit": true}},
        "restricted-types1": {"id": "restricted_types_1", "access_rights": {"a": {"restricted_types": [
            {"name": "Country", "fields": ["code", "name"]}, {"name": "Person", "fields": ["name", "height"]}]}}},
        "restricted-types2": {"id": "restricted_types_2", "access_rights": {"a": {"restricted_types": [
            {"name": "Country", "fields": ["code", "phone"]}, {"name": "Person", "fields": ["name", "mass"]}]}}},
        "tags1": {"access_rights": {"a": {}}, "tags": ["tagA"], "partitions": {"acl": true, "quota": true}},
        "tags2": {"access_rights": {"a": {}}, "tags": ["tagX", "tagY"], "partitions": {"acl": true, "rate_limit": true}},
        "throttle1": {"id": "throttle1", "throttle_interval": 9, "throttle_retry_limit": 99, "access_rights": {"a": {}}},
        "unlimited-quota": {"quota_max": -1, "access_rights": {"a": {}}, "partitions": {"acl": true, "quota": true}},
        "unlimited-rate": {"rate": -1, "access_rights": {"a": {}}, "partitions": {"acl": true, "rate_limit": true}},
        "unlimitedComplexity": {"max_query_depth": -1, "access_rights": {"a": {}}, "partitions": {"acl": true, "complexity": true}},
        "per_api_with_endpoint_limits_on_d_and_e": {"rate": 500, "per": 1, "quota_max": -1, "access_rights": {
            "d": {"limit": {"rate": 100, "per": 10}, "endpoints": [
                {"path": "/get", "methods": [{"name": "GET", "limit": {"rate": -1}}]},
                {"path": "/post", "methods": [{"name": "POST", "limit": {"rate": 300, "per": 10}}]}]},
            "e": {"endpoints": [
                {"path": "/get", "methods": [{"name": "GET", "limit": {"rate": -1}}]},
                {"path": "/post", "methods": [{"name": "POST", "limit": {"rate": 300, "per": 10}}]}]}},
            "partitions": {"per_api": true}},
        "per_endpoint_limits_different_on_api_d": {"rate": 500, "per": 1, "quota_max": -1, "access_rights": {
            "d": {"limit": {"rate": 100, "per": 10}, "endpoints": [
                {"path": "/get", "methods": [{"name": "GET", "limit": {"rate": -1}}]},
                {"path": "/post", "methods": [{"name": "POST", "limit": {"rate": 400, "per": 11}}]},
                {"path": "/anything", "methods": [{"name": "PUT", "limit": {"rate": 500, "per": 10}}]}]}},
            "partitions": {"per_api": true}},
        "endpoint_rate_limits_on_acl_partition_only": {"id": "endpoint_rate_limits_on_rate_limit_partition_disabled", "rate": 500, "per": 1, "quota_max": -1, "access_rights": {
            "d": {"endpoints": [{"path": "/get", "methods": [{"name": "GET", "limit": {"rate": -1}}]}]}},
            "partitions": {"acl": true}},
        "endpoint_rate_limits_on_quota_partition_only": {"quota_max": 1000, "partitions": {"quota": true}},
        "api_d_get_endpoint_rl_1_configure_on_non_partitioned_policy": {"rate": 500, "per": 1, "quota_max": -1,
            "access_rights": {"d": {"endpoints": [{"path": "/get", "methods": [{"name": "GET", "limit": {"rate": 10, "per": 60}}]}]}},
            "partitions": {"acl": true, "rate_limit": true, "quota": true}},
        "api_d_get_endpoint_rl_2_configure_on_non_partitioned_policy": {"rate": 500, "per": 1, "quota_max": -1,
            "access_rights": {"d": {"endpoints": [{"path": "/get", "methods": [{"name": "GET", "limit": {"rate": 20, "per": 60}}]}]}},
            "partitions": {"acl": true, "rate_limit": true, "quota": true}},
        "api_d_get_endpoint_rl_3_configure_on_non_partitioned_policy": {"rate": 500, "per": 1, "quota_max": -1,
            "access_rights": {"d": {"endpoints": [{"path": "/get", "methods": [{"name": "GET", "limit": {"rate": -1}}]}]}},
            "partitions": {"acl": true, "rate_limit": true, "quota": true}},
        "api_d_post_endpoint_rl_1_configure_on_non_partitioned_policy": {"rate": 500, "per": 1, "quota_max": -1,
            "access_rights": {"d": {"endpoints": [{"path": "/post", "methods": [{"name": "POST", "limit": {"rate": 20, "per": 60}}]}]}},
            "partitions": {"acl": true, "rate_limit": true, "quota": true}},
        "api_e_get_endpoint_rl_1_configure_on_non_partitioned_policy": {"rate": 500, "per": 1, "quota_max": -1,
            "access_rights": {"e": {"endpoints": [{"path": "/get", "methods": [{"name": "GET", "limit": {"rate": 100, "per": 60}}]}]}},
            "partitions": {"acl": true, "rate_limit": true, "quota": true}},
        "post-expiry": {"post_expiry_action": "delete", "post_expiry_grace_period": 3600, "access_rights": {"api1": {"versions": ["Default"]}}},
        "post-expiry-empty": {"post_expiry_action": "", "post_expiry_grace_period": 0, "access_rights": {"api1": {}}},
    });
    serde_json::from_value::<HashMap<String, Value>>(all)
        .unwrap()
        .into_iter()
        .map(|(key, mut v)| {
            // As in Tyk's data: the per-API and endpoint policies carry their
            // key as their id, the partition ones none (their ACLs then set
            // no allowance scope).
            let named = ["per_api", "per_endpoint", "api_", "endpoint_"]
                .iter()
                .any(|prefix| key.starts_with(prefix));
            if v.get("id").is_none() && named {
                v["id"] = json!(key);
            }
            (key, serde_json::from_value(v).unwrap())
        })
        .collect()
}

/// A case's access rights as Tyk compares them: per API the limits set,
/// the scope, allowed URLs, versions and the GraphQL and endpoint fields.
/// Meridian also fills each right's `api_id` from its key (Tyk leaves it
/// empty in a merged session); that is not compared.
fn rights(s: &Session) -> Value {
    let mut out = serde_json::Map::new();
    for (api, right) in &s.access_rights {
        let mut r = serde_json::Map::new();
        let l = &right.limit;
        let mut limit = serde_json::Map::new();
        for (name, v) in [("rate", l.rate), ("per", l.per)] {
            if v != 0.0 {
                limit.insert(name.into(), json!(v));
            }
        }
        for (name, v) in [
            ("quota_max", l.quota_max),
            ("quota_renewal_rate", l.quota_renewal_rate),
            ("throttle_retry_limit", l.throttle_retry_limit),
            ("max_query_depth", l.max_query_depth),
        ] {
            if v != 0 {
                limit.insert(name.into(), json!(v));
            }
        }
        if !limit.is_empty() {
            r.insert("limit".into(), Value::Object(limit));
        }
        if !right.allowance_scope.is_empty() {
            r.insert("allowance_scope".into(), json!(right.allowance_scope));
        }
        if !right.allowed_urls.is_empty() {
            r.insert(
                "allowed_urls".into(),
                Value::Array(
                    right
                        .allowed_urls
                        .iter()
                        .map(|u| json!({"url": u.url, "methods": u.methods}))
                        .collect(),
                ),
            );
        }
        for field in [
            "restricted_types",
            "allowed_types",
            "field_access_rights",
            "disable_introspection",
            "endpoints",
        ] {
            if let Some(v) = right.other.get(field).filter(|v| !v.is_null()) {
                r.insert(field.into(), v.clone());
            }
        }
        out.insert(api.clone(), Value::Object(r));
    }
    Value::Object(out)
}

/// An endpoint list as a sorted list of `METHOD path rate/per` (Tyk
/// compares them as sets).
fn endpoints(s: &Session, api: &str) -> Vec<String> {
    let mut out: Vec<String> = s.access_rights[api]
        .other
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|e| {
            let path = e["path"].as_str().unwrap_or("").to_owned();
            e["methods"].as_array().into_iter().flatten().map(move |m| {
                format!(
                    "{} {path} {}/{}",
                    m["name"].as_str().unwrap_or(""),
                    m["limit"]["rate"].as_f64().unwrap_or(0.0),
                    m["limit"]["per"].as_f64().unwrap_or(0.0)
                )
            })
        })
        .collect();
    out.sort();
    out
}

/// What a case expects.
enum Expect {
    /// The merge succeeds.
    Ok,
    /// The merge succeeds and the session passes the check.
    Session(fn(&Session)),
    /// The merge fails with a message containing this.
    Error(&'static str),
}

struct Case {
    /// Tyk's name of the case.
    tyk: &'static str,
    policies: &'static [&'static str],
    /// The key before policies (apply_policies added).
    key: fn() -> Value,
    /// Also run with the policies in reverse order (Tyk's `reverseOrder`).
    reverse: bool,
    expect: Expect,
}

fn no_key() -> Value {
    json!({})
}

fn case(tyk: &'static str, policies: &'static [&'static str], expect: Expect) -> Case {
    Case {
        tyk,
        policies,
        key: no_key,
        reverse: false,
        expect,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("Empty", &[], Expect::Ok),
        case("Single", &["nonpart1"], Expect::Ok),
        case("Missing", &["nonexistent"], Expect::Error("not found")),
        Case {
            // Tyk compares a policy's organisation with the API's (the
            // case's API has none); Meridian with the key's, when both are
            // set, so the case's key names one.
            key: || json!({"org_id": "acme"}),
            ..case(
                "DiffOrg",
                &["difforg"],
                Expect::Error("belongs to organisation \"different\""),
            )
        },
        case(
            "MultiNonPart",
            &["nonpart1", "nonpart2", "nonexistent"],
            Expect::Session(|s| {
                assert_eq!(
                    rights(s),
                    json!({"a": {"allowance_scope": "p1"}, "b": {"allowance_scope": "p2"}})
                )
            }),
        ),
        case(
            "MultiACLPolicy",
            &["nonpart3"],
            Expect::Session(|s| assert_eq!(rights(s), json!({"a": {}, "b": {}}))),
        ),
        case(
            "QuotaPart with unlimited",
            &["unlimited-quota"],
            Expect::Session(|s| assert_eq!(s.quota_max, -1)),
        ),
        case(
            "QuotaPart",
            &["quota1"],
            Expect::Session(|s| assert_eq!(s.quota_max, 2)),
        ),
        case(
            "QuotaParts",
            &["quota1", "quota2"],
            Expect::Session(|s| assert_eq!(s.quota_max, 3)),
        ),
        case(
            "QuotaParts with acl",
            &["quota5", "quota4"],
            Expect::Session(|s| assert_eq!(s.quota_max, 4)),
        ),
        case(
            "QuotaPart with access rights",
            &["quota3"],
            Expect::Session(|s| assert_eq!(s.quota_max, 3)),
        ),
        case(
            "QuotaPart with access rights in multi-policy",
            &["quota4", "nonpart1"],
            Expect::Session(|s| {
                assert_eq!(s.quota_max, 3);
                assert_eq!(
                    rights(s),
                    json!({"a": {}}),
                    "b is dropped: only a quota named it"
                );
            }),
        ),
        case(
            "RatePart with unlimited",
            &["unlimited-rate"],
            Expect::Session(|s| assert!(s.rate <= 0.0, "rate {}", s.rate)),
        ),
        case(
            "RatePart",
            &["rate1"],
            Expect::Session(|s| assert_eq!(s.rate, 3.0)),
        ),
        case(
            "RateParts",
            &["rate1", "rate2"],
            Expect::Session(|s| assert_eq!(s.rate, 4.0)),
        ),
        case(
            "RateParts with acl",
            &["rate5", "rate4"],
            Expect::Session(|s| assert_eq!(s.rate, 10.0)),
        ),
        Case {
            key: || json!({"rate": 20}),
            ..case(
                "RateParts with acl respected by session",
                &["rate4", "rate5"],
                Expect::Session(|s| assert_eq!(s.rate, 10.0)),
            )
        },
        Case {
            key: || json!({"rate": 20}),
            ..case(
                "Rate with no partition respected by session",
                &["rate-no-partition"],
                Expect::Session(|s| assert_eq!(s.rate, 12.0)),
            )
        },
        case(
            "ComplexityPart with unlimited",
            &["unlimitedComplexity"],
            Expect::Session(|s| assert_eq!(s.max_query_depth, -1)),
        ),
        case(
            "ComplexityPart",
            &["complexity1"],
            Expect::Session(|s| assert_eq!(s.max_query_depth, 2)),
        ),
        case(
            "ComplexityParts",
            &["complexity1", "complexity2"],
            Expect::Session(|s| assert_eq!(s.max_query_depth, 3)),
        ),
        case(
            "AclPart",
            &["acl1"],
            Expect::Session(|s| assert_eq!(rights(s), json!({"a": {}}))),
        ),
        case(
            "AclPart (two policies)",
            &["acl1", "acl2"],
            Expect::Session(|s| assert_eq!(rights(s), json!({"a": {}, "b": {}}))),
        ),
        case(
            "Acl for a and rate for a,b",
            &["acl1", "rate-for-a-b"],
            Expect::Session(|s| {
                assert_eq!(
                    rights(s),
                    json!({"a": {"limit": {"rate": 4.0, "per": 1.0}}})
                )
            }),
        ),
        case(
            "Acl for a,b and individual rate for a,b",
            &["acl-for-a-b", "rate-for-a", "rate-for-b"],
            Expect::Session(|s| {
                assert_eq!(
                    rights(s),
                    json!({"a": {"limit": {"rate": 4.0, "per": 1.0}}, "b": {"limit": {"rate": 2.0, "per": 1.0}}})
                )
            }),
        ),
        Case {
            key: || json!({"access_rights": {"c": {}}}),
            ..case(
                "RightsUpdate",
                &["acl-for-a-b"],
                Expect::Session(|s| assert_eq!(rights(s), json!({"a": {}, "b": {}}))),
            )
        },
        Case {
            key: || json!({"is_inactive": true}),
            ..case(
                "InactiveNoPolicies",
                &[],
                Expect::Session(|s| assert!(s.is_inactive)),
            )
        },
        case(
            "InactiveMergeOne",
            &["tags1", "inactive1"],
            Expect::Session(|s| assert!(s.is_inactive)),
        ),
        case(
            "InactiveMergeAll",
            &["inactive1", "inactive2"],
            Expect::Session(|s| assert!(s.is_inactive)),
        ),
        Case {
            key: || json!({"is_inactive": true}),
            // Deviation: Tyk ignores a key's own is_inactive once it has
            // policies (the key is active when they are); Meridian keeps
            // an inactivated key blocked.
            ..case(
                "InactiveWithSession",
                &["tags1", "tags2"],
                Expect::Session(|s| {
                    assert!(s.is_inactive, "Meridian keeps the key's own is_inactive")
                }),
            )
        },
        case(
            "Per API is set with other partitions to true",
            &["per_api_and_partitions"],
            Expect::Error(
                "cannot apply policy per_api_and_partitions which has per_api and any of partitions set",
            ),
        ),
        case(
            "Per API is set to true with some partitions set to true",
            &["per_api_and_some_partitions"],
            Expect::Error(
                "cannot apply policy per_api_and_some_partitions which has per_api and any of partitions set",
            ),
        ),
        case(
            "Per API is set to true with no other partitions set to true",
            &["per_api_and_no_other_partitions"],
            Expect::Session(|s| {
                assert_eq!(
                    rights(s),
                    json!({
                        "c": {"limit": {"rate": 2000.0, "per": 60.0, "quota_max": -1}, "allowance_scope": "c"},
                        "d": {"limit": {"rate": 20.0, "per": 1.0, "quota_max": 1000, "quota_renewal_rate": 3600}, "allowance_scope": "d"}
                    })
                )
            }),
        ),
        case(
            "several policies with Per API set to true specifying limit for the same API",
            &["per_api_and_no_other_partitions", "per_api_with_api_d"],
            Expect::Session(|s| {
                assert_eq!(
                    rights(s),
                    json!({
                        "c": {"limit": {"rate": 2000.0, "per": 60.0, "quota_max": -1}, "allowance_scope": "c"},
                        "d": {"limit": {"rate": 200.0, "per": 10.0, "quota_max": 5000, "quota_renewal_rate": 3600}, "allowance_scope": "d"}
                    })
                )
            }),
        ),
        case(
            "several policies with Per API set to true specifying limit for the same APIs",
            &[
                "per_api_and_no_other_partitions",
                "per_api_with_api_d",
                "per_api_with_api_c",
            ],
            Expect::Session(|s| {
                assert_eq!(
                    rights(s),
                    json!({
                        "c": {"limit": {"rate": 3000.0, "per": 10.0, "quota_max": -1}, "allowance_scope": "c"},
                        "d": {"limit": {"rate": 200.0, "per": 10.0, "quota_max": 5000, "quota_renewal_rate": 3600}, "allowance_scope": "d"}
                    })
                )
            }),
        ),
        case(
            "several policies, mixed the one which has Per API set to true and partitioned ones",
            &["per_api_with_api_d", "quota1"],
            Expect::Error(
                "cannot apply multiple policies when some have per_api set and some are partitioned",
            ),
        ),
        case(
            "several policies, mixed the one which has Per API set to true and partitioned ones (different order)",
            &["rate1", "per_api_with_api_d"],
            Expect::Error(
                "cannot apply multiple policies when some have per_api set and some are partitioned",
            ),
        ),
        case(
            "Per API is set to true and some API gets limit set from policy's fields",
            &["per_api_with_limit_set_from_policy"],
            Expect::Session(|s| {
                assert_eq!(
                    rights(s),
                    json!({
                        "e": {"limit": {"rate": 300.0, "per": 1.0, "quota_max": -1},
                              "allowance_scope": "per_api_with_limit_set_from_policy"},
                        "d": {"limit": {"rate": 200.0, "per": 10.0, "quota_max": 5000, "quota_renewal_rate": 3600}, "allowance_scope": "d"}
                    })
                )
            }),
        ),
        case(
            "Per API with limits override",
            &[
                "per_api_with_limit_set_from_policy",
                "per_api_with_api_d",
                "per_api_with_higher_rate_on_api_d",
            ],
            Expect::Session(|s| {
                assert_eq!(
                    rights(s),
                    json!({
                        "e": {"limit": {"rate": 300.0, "per": 1.0, "quota_max": -1},
                              "allowance_scope": "per_api_with_limit_set_from_policy"},
                        "d": {"limit": {"rate": 200.0, "per": 10.0, "quota_max": 5000, "quota_renewal_rate": 3600}, "allowance_scope": "d"}
                    })
                )
            }),
        ),
        case(
            "Merge per path rules for the same API",
            &["per-path2", "per-path1"],
            Expect::Session(|s| {
                assert_eq!(
                    rights(s),
                    json!({
                        "a": {"allowed_urls": [{"url": "/user", "methods": ["GET", "POST"]},
                                               {"url": "/companies", "methods": ["GET", "POST"]}]},
                        "b": {"allowed_urls": [{"url": "/", "methods": ["PUT"]}]}
                    })
                );
                // The stored policy is not changed by merging.
                assert_eq!(
                    policies()["per-path2"].access_rights["a"].allowed_urls[0].methods,
                    ["GET"]
                );
            }),
        ),
        case(
            "Merge restricted fields for the same GraphQL API",
            &["restricted-types1", "restricted-types2"],
            Expect::Session(|s| {
                assert_eq!(
                    rights(s),
                    json!({"a": {"restricted_types": [
                        {"name": "Country", "fields": ["code", "name", "phone"]},
                        {"name": "Person", "fields": ["name", "height", "mass"]}]}})
                )
            }),
        ),
        case(
            "Merge allowed fields for the same GraphQL API",
            &["allowed-types1", "allowed-types2"],
            Expect::Session(|s| {
                assert_eq!(
                    rights(s),
                    json!({"a": {
                        "allowed_types": [
                            {"name": "Country", "fields": ["code", "name", "phone"]},
                            {"name": "Person", "fields": ["name", "height", "mass"]}],
                        "restricted_types": [
                            {"name": "Dog", "fields": ["name", "breed", "country"]},
                            {"name": "Cat", "fields": ["name", "country"]}]}})
                )
            }),
        ),
        case(
            "If GQL introspection is disabled, it remains disabled after merging",
            &["introspection-disabled", "introspection-enabled"],
            Expect::Session(|s| {
                assert_eq!(rights(s), json!({"a": {"disable_introspection": true}}))
            }),
        ),
        case(
            "Merge field level depth limit for the same GraphQL API",
            &["field-level-depth-limit1", "field-level-depth-limit2"],
            Expect::Session(|s| {
                assert_eq!(
                    rights(s),
                    json!({"graphql-api": {"field_access_rights": [
                        {"type_name": "Query", "field_name": "people", "limits": {"max_query_depth": 4}},
                        {"type_name": "Mutation", "field_name": "putPerson", "limits": {"max_query_depth": -1}},
                        {"type_name": "Query", "field_name": "countries", "limits": {"max_query_depth": 3}},
                        {"type_name": "Query", "field_name": "continents", "limits": {"max_query_depth": 4}}]}})
                )
            }),
        ),
        case(
            "Throttle interval from policy",
            &["throttle1"],
            Expect::Session(|s| assert_eq!(s.throttle_interval, 9.0)),
        ),
        case(
            "Throttle retry limit from policy",
            &["throttle1"],
            Expect::Session(|s| assert_eq!(s.throttle_retry_limit, 99)),
        ),
        Case {
            key: || json!({"tags": ["key-tag"]}),
            ..case(
                "TagMerge",
                &["tags1", "tags2"],
                Expect::Session(|s| {
                    let mut tags = s.tags.clone();
                    tags.sort();
                    assert_eq!(tags, ["key-tag", "tagA", "tagX", "tagY"]);
                }),
            )
        },
        case("NonpartAndPart", &["nonpart1", "quota1"], Expect::Ok),
        case(
            "inherit quota and rate from partitioned policies",
            &["quota1", "rate3"],
            Expect::Session(|s| assert_eq!((s.quota_max, s.rate, s.per), (2, 4.0, 4.0))),
        ),
        case(
            "inherit quota and rate from partitioned policies applied in different order",
            &["rate3", "quota1"],
            Expect::Session(|s| assert_eq!((s.quota_max, s.rate, s.per), (2, 4.0, 4.0))),
        ),
        Case {
            reverse: true,
            ..case(
                "Per API and per endpoint policies",
                &[
                    "per_api_with_limit_set_from_policy",
                    "per_api_with_endpoint_limits_on_d_and_e",
                ],
                Expect::Session(|s| {
                    let endpoints = [
                        json!({"path": "/get", "methods": [{"name": "GET", "limit": {"rate": -1}}]}),
                        json!({"path": "/post", "methods": [{"name": "POST", "limit": {"rate": 300, "per": 10}}]}),
                    ];
                    assert_eq!(
                        rights(s),
                        json!({
                            "e": {"limit": {"rate": 500.0, "per": 1.0, "quota_max": -1},
                                  "allowance_scope": "per_api_with_endpoint_limits_on_d_and_e",
                                  "endpoints": endpoints},
                            "d": {"limit": {"rate": 200.0, "per": 10.0, "quota_max": 5000, "quota_renewal_rate": 3600},
                                  "allowance_scope": "d", "endpoints": endpoints}
                        })
                    )
                }),
            )
        },
        Case {
            reverse: true,
            ..case(
                "Endpoint level limits overlapping",
                &[
                    "per_api_with_limit_set_from_policy",
                    "per_api_with_endpoint_limits_on_d_and_e",
                    "per_endpoint_limits_different_on_api_d",
                ],
                Expect::Session(|s| {
                    assert_eq!(endpoints(s, "e"), ["GET /get -1/0", "POST /post 300/10"]);
                    assert_eq!(
                        endpoints(s, "d"),
                        ["GET /get -1/0", "POST /post 400/11", "PUT /anything 500/10"]
                    );
                    let r = rights(s);
                    assert_eq!(
                        r["e"]["limit"],
                        json!({"rate": 500.0, "per": 1.0, "quota_max": -1})
                    );
                    assert_eq!(
                        r["d"]["limit"],
                        json!({"rate": 200.0, "per": 10.0, "quota_max": 5000, "quota_renewal_rate": 3600})
                    );
                }),
            )
        },
        case(
            "endpoint_rate_limits_on_acl_partition_only",
            &["endpoint_rate_limits_on_acl_partition_only"],
            Expect::Session(|s| {
                assert!(!s.access_rights.is_empty());
                assert!(endpoints(s, "d").is_empty());
            }),
        ),
        Case {
            reverse: true,
            ..case(
                "endpoint_rate_limits_when_acl_and_quota_partitions_combined",
                &[
                    "endpoint_rate_limits_on_acl_partition_only",
                    "endpoint_rate_limits_on_quota_partition_only",
                ],
                Expect::Session(|s| {
                    assert!(!s.access_rights.is_empty());
                    assert!(endpoints(s, "d").is_empty());
                }),
            )
        },
        Case {
            reverse: true,
            ..case(
                "combine_non_partitioned_policies_with_endpoint_rate_limits_configured_on_api_d",
                &[
                    "api_d_get_endpoint_rl_1_configure_on_non_partitioned_policy",
                    "api_d_get_endpoint_rl_2_configure_on_non_partitioned_policy",
                ],
                Expect::Session(|s| assert_eq!(endpoints(s, "d"), ["GET /get 20/60"])),
            )
        },
        Case {
            reverse: true,
            ..case(
                "combine_non_partitioned_policies_with_endpoint_rate_limits_no_bound_configured_on_api_d",
                &[
                    "api_d_get_endpoint_rl_1_configure_on_non_partitioned_policy",
                    "api_d_get_endpoint_rl_2_configure_on_non_partitioned_policy",
                    "api_d_get_endpoint_rl_3_configure_on_non_partitioned_policy",
                ],
                Expect::Session(|s| assert_eq!(endpoints(s, "d"), ["GET /get -1/0"])),
            )
        },
        Case {
            reverse: true,
            ..case(
                "combine_non_partitioned_policies_with_multiple_endpoint_rate_limits_configured_on_api_d",
                &[
                    "api_d_get_endpoint_rl_1_configure_on_non_partitioned_policy",
                    "api_d_get_endpoint_rl_2_configure_on_non_partitioned_policy",
                    "api_d_get_endpoint_rl_3_configure_on_non_partitioned_policy",
                    "api_d_post_endpoint_rl_1_configure_on_non_partitioned_policy",
                ],
                Expect::Session(|s| {
                    assert_eq!(endpoints(s, "d"), ["GET /get -1/0", "POST /post 20/60"])
                }),
            )
        },
        Case {
            reverse: true,
            ..case(
                "combine_non_partitioned_policies_with_endpoint_rate_limits_configured_on_api_d_and_e",
                &[
                    "api_d_get_endpoint_rl_1_configure_on_non_partitioned_policy",
                    "api_d_get_endpoint_rl_2_configure_on_non_partitioned_policy",
                    "api_d_get_endpoint_rl_3_configure_on_non_partitioned_policy",
                    "api_d_post_endpoint_rl_1_configure_on_non_partitioned_policy",
                    "api_e_get_endpoint_rl_1_configure_on_non_partitioned_policy",
                ],
                Expect::Session(|s| {
                    assert_eq!(endpoints(s, "d"), ["GET /get -1/0", "POST /post 20/60"]);
                    assert_eq!(endpoints(s, "e"), ["GET /get 100/60"]);
                }),
            )
        },
        case(
            "TestApply_PostExpiryPropagation",
            &["post-expiry"],
            Expect::Session(|s| {
                assert_eq!(s.other["post_expiry_action"], "delete");
                assert_eq!(s.other["post_expiry_grace_period"], 3600);
            }),
        ),
        case(
            "empty action does NOT overwrite",
            &["post-expiry", "post-expiry-empty"],
            Expect::Session(|s| {
                assert_eq!(s.other["post_expiry_action"], "delete");
                assert_eq!(s.other["post_expiry_grace_period"], 3600);
            }),
        ),
    ]
}

#[test]
fn tyks_policy_merge_table() {
    let store = policies();
    let mut ran = 0;
    for case in cases() {
        let mut orders = vec![case.policies.to_vec()];
        if case.reverse {
            orders.push(case.policies.iter().rev().copied().collect());
        }
        for order in orders {
            let mut key = (case.key)();
            key["apply_policies"] = json!(order);
            let key: Session = serde_json::from_value(key).unwrap();
            let merged = effective(&key, |id| store.get(id));
            let name = format!("{} {order:?}", case.tyk);
            match (&case.expect, merged) {
                (Expect::Ok, Ok(_)) => {}
                (Expect::Session(check), Ok(s)) => {
                    let checked = std::panic::catch_unwind(|| check(&s));
                    assert!(checked.is_ok(), "Tyk's case {name:?} fails (see above)");
                }
                (Expect::Error(want), Err(e)) => {
                    assert!(e.to_string().contains(want), "{name}: {e}")
                }
                (_, other) => panic!("Tyk's case {name:?}: {other:?}"),
            }
            ran += 1;
        }
    }
    assert!(ran >= 60, "{ran} cases ran");
}

/// Tyk's `TestApplyRateLimits_PolicyLimits`: the policy's rate is applied
/// where it allows more requests, to the API's limit and to the session.
#[test]
fn tyks_rate_limit_cases() {
    let cases = [
        // (Tyk's name, session rate/per, API rate/per, policy rate/per, API after, session after)
        (
            "policy limits unset",
            (5.0, 10.0),
            (10.0, 10.0),
            (0.0, 0.0),
            10.0,
            5.0,
        ),
        (
            "policy limits apply all",
            (5.0, 10.0),
            (5.0, 10.0),
            (10.0, 10.0),
            10.0,
            10.0,
        ),
        (
            "policy limits apply per-api",
            (15.0, 10.0),
            (5.0, 10.0),
            (10.0, 10.0),
            10.0,
            15.0,
        ),
        (
            "policy limits skip",
            (5.0, 10.0),
            (15.0, 10.0),
            (10.0, 10.0),
            15.0,
            10.0,
        ),
    ];
    for (name, session, api, policy, api_after, session_after) in cases {
        let mut s = Session {
            rate: session.0,
            per: session.1,
            ..Session::default()
        };
        let mut l = Limit {
            rate: api.0,
            per: api.1,
            ..Limit::default()
        };
        let p = Policy {
            rate: policy.0,
            per: policy.1,
            ..Policy::default()
        };
        apply_rate(&p, &mut s, &mut l);
        assert_eq!((l.rate, s.rate), (api_after, session_after), "{name}");
    }
    // TestApplyRateLimits_FromCustomPolicies.
    let store: HashMap<String, Policy> = [
        ("pol1", json!({"id": "pol1", "partitions": {"rate_limit": true, "acl": true}, "rate": 8, "per": 1, "access_rights": {"a": {}}})),
        ("pol2", json!({"id": "pol2", "partitions": {"rate_limit": true}, "rate": 10, "per": 1, "access_rights": {"a": {}}})),
        ("pol3", json!({"id": "pol3", "partitions": {"rate_limit": true}, "rate": 8, "per": 1, "access_rights": {"a": {}}})),
        ("pol4", json!({"id": "pol4", "partitions": {"acl": true}, "rate": 10, "per": 1, "access_rights": {"a": {
            "allowed_urls": [{"url": "/user", "methods": ["GET", "POST"]}, {"url": "/companies", "methods": ["GET", "POST"]}]}}})),
    ]
    .into_iter()
    .map(|(id, v)| (id.to_owned(), serde_json::from_value(v).unwrap()))
    .collect();
    let merge = |ids: &[&str]| {
        let key: Session = serde_json::from_value(json!({"apply_policies": ids})).unwrap();
        effective(&key, |id| store.get(id)).unwrap()
    };
    assert_eq!(merge(&["pol1", "pol2"]).rate, 10.0, "FromCustomPolicies");
    // TestApplyACL_FromCustomPolicies, both orders.
    for ids in [["pol3", "pol4"], ["pol4", "pol3"]] {
        let s = merge(&ids);
        assert_eq!(s.rate, 8.0, "{ids:?}");
        assert_eq!(
            s.access_rights["a"].allowed_urls, store["pol4"].access_rights["a"].allowed_urls,
            "{ids:?}"
        );
    }
}

/// Tyk's `TestApplyEndpointLevelLimits` (its testdata cases).
#[test]
fn tyks_endpoint_limit_cases() {
    let ep = |list: &[(&str, &str, f64, f64)]| {
        json!(list
            .iter()
            .map(|(method, path, rate, per)| json!({"path": path, "methods": [{"name": method, "limit": {"rate": rate, "per": per}}]}))
            .collect::<Vec<_>>())
    };
    let cases = [
        ("both empty", ep(&[]), ep(&[]), vec![]),
        (
            "policy endpoints empty",
            ep(&[]),
            ep(&[("GET", "/user", 10.0, 60.0)]),
            vec!["GET /user 10/60"],
        ),
        (
            "curr endpoints empty",
            ep(&[("GET", "/user", 10.0, 60.0)]),
            ep(&[]),
            vec!["GET /user 10/60"],
        ),
        (
            "non overlapping endpoints",
            ep(&[("GET", "/user", 10.0, 60.0)]),
            ep(&[("POST", "/admin", 5.0, 30.0)]),
            vec!["GET /user 10/60", "POST /admin 5/30"],
        ),
        (
            "overlapping endpoints with different limits #1",
            ep(&[("GET", "/user", 10.0, 60.0)]),
            ep(&[("GET", "/user", 5.0, 30.0)]),
            vec!["GET /user 10/60"],
        ),
        (
            "overlapping endpoints with different limits #2",
            ep(&[("GET", "/user", 5.0, 30.0)]),
            ep(&[("GET", "/user", 10.0, 60.0)]),
            vec!["GET /user 10/60"],
        ),
        (
            "overlapping endpoints with same limits",
            ep(&[("GET", "/user", 10.0, 60.0)]),
            ep(&[("GET", "/user", 10.0, 60.0)]),
            vec!["GET /user 10/60"],
        ),
    ];
    for (name, policy, current, want) in cases {
        let merged = json::merge_endpoints(Some(&policy), Some(&current));
        let s = Session {
            access_rights: [(
                "x".to_owned(),
                AccessRight {
                    other: merged
                        .into_iter()
                        .map(|v| ("endpoints".to_owned(), v))
                        .collect(),
                    ..AccessRight::default()
                },
            )]
            .into(),
            ..Session::default()
        };
        let mut want: Vec<String> = want.into_iter().map(str::to_owned).collect();
        want.sort();
        assert_eq!(endpoints(&s, "x"), want, "{name}");
    }
}
