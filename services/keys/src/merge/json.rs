//! Merges of access-right fields Meridian keeps as the JSON clients sent
//! (GraphQL types and field limits, per-endpoint rate limits), with Tyk's
//! rules. Pure; a value not of the expected shape is left as it was.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

fn number(v: Option<&Value>) -> f64 {
    v.and_then(Value::as_f64).unwrap_or(0.0)
}

/// Tyk's `Duration` of an endpoint's rate limit (`{"rate", "per"}`).
fn endpoint_duration(limit: &Value) -> f64 {
    let (rate, per) = (number(limit.get("rate")), number(limit.get("per")));
    if rate <= 0.0 || per <= 0.0 {
        0.0
    } else {
        per / rate
    }
}

/// `endpoints` (`[{"path", "methods": [{"name", "limit"}]}]`) as a map of
/// (path, method) to limit.
fn endpoint_map(endpoints: Option<&Value>) -> BTreeMap<(String, String), Value> {
    let mut map = BTreeMap::new();
    for endpoint in endpoints.and_then(Value::as_array).into_iter().flatten() {
        let path = endpoint.get("path").and_then(Value::as_str).unwrap_or("");
        for method in endpoint
            .get("methods")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = method.get("name").and_then(Value::as_str).unwrap_or("");
            let limit = method.get("limit").cloned().unwrap_or_else(|| json!({}));
            map.insert((path.to_owned(), name.to_owned()), limit);
        }
    }
    map
}

/// The map back as `endpoints`: by path, methods by upper-cased name (the
/// order Tyk answers in).
fn endpoints_of(map: BTreeMap<(String, String), Value>) -> Option<Value> {
    if map.is_empty() {
        return None;
    }
    let mut by_path: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for ((path, name), limit) in map {
        by_path.entry(path).or_default().push((name, limit));
    }
    let endpoints = by_path
        .into_iter()
        .map(|(path, mut methods)| {
            methods.sort_by_key(|(name, _)| name.to_uppercase());
            json!({
                "path": path,
                "methods": methods
                    .into_iter()
                    .map(|(name, limit)| json!({"name": name, "limit": limit}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    Some(Value::Array(endpoints))
}

/// Tyk's `ApplyEndpointLevelLimits`: a policy's endpoint limits merged
/// into those earlier policies set; per endpoint and method the higher
/// rate (shorter duration; at equal durations the larger rate) wins.
pub fn merge_endpoints(policy: Option<&Value>, current: Option<&Value>) -> Option<Value> {
    let current_map = endpoint_map(current);
    if current_map.is_empty() {
        return policy.filter(|v| !v.is_null()).cloned();
    }
    let mut result = endpoint_map(policy);
    if result.is_empty() {
        return endpoints_of(current_map);
    }
    for (endpoint, current_limit) in current_map {
        match result.get(&endpoint) {
            None => {
                result.insert(endpoint, current_limit);
            }
            Some(policy_limit) => {
                let (p, c) = (
                    endpoint_duration(policy_limit),
                    endpoint_duration(&current_limit),
                );
                if p > c
                    || (p == c
                        && number(current_limit.get("rate")) > number(policy_limit.get("rate")))
                {
                    result.insert(endpoint, current_limit);
                }
            }
        }
    }
    endpoints_of(result)
}

/// GraphQL `restricted_types` or `allowed_types` (`[{"name", "fields"}]`)
/// of two policies: types unioned by name, each type's fields unioned.
pub fn union_types(current: Option<&Value>, new: Option<&Value>) -> Option<Value> {
    let current_types = current.and_then(Value::as_array).filter(|a| !a.is_empty());
    let Some(current_types) = current_types else {
        return new
            .filter(|v| !v.is_null())
            .cloned()
            .or_else(|| current.cloned());
    };
    let mut merged = current_types.clone();
    for t in new.and_then(Value::as_array).into_iter().flatten() {
        let name = t.get("name");
        match merged.iter_mut().find(|m| m.get("name") == name) {
            Some(existing) => {
                let fields = existing
                    .as_object_mut()
                    .map(|o| o.entry("fields").or_insert_with(|| json!([])));
                if let Some(Value::Array(fields)) = fields {
                    for f in t
                        .get("fields")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if !fields.contains(f) {
                            fields.push(f.clone());
                        }
                    }
                }
            }
            None => merged.push(t.clone()),
        }
    }
    Some(Value::Array(merged))
}

/// Tyk's `greaterThanInt` for depth limits: -1 (unlimited) beats anything.
fn deeper(a: i64, b: i64) -> bool {
    if a == -1 {
        return b != -1;
    }
    b != -1 && a > b
}

/// GraphQL `field_access_rights` (`[{"type_name", "field_name", "limits":
/// {"max_query_depth"}}]`) of two policies: the same field keeps the
/// deeper limit, other fields are added.
pub fn merge_field_limits(current: Option<&Value>, new: Option<&Value>) -> Option<Value> {
    let current_rights = current.and_then(Value::as_array).filter(|a| !a.is_empty());
    let Some(current_rights) = current_rights else {
        return new
            .filter(|v| !v.is_null())
            .cloned()
            .or_else(|| current.cloned());
    };
    let mut merged = current_rights.clone();
    let key = |v: &Value| (v.get("type_name").cloned(), v.get("field_name").cloned());
    for right in new.and_then(Value::as_array).into_iter().flatten() {
        let depth_of = |v: &Value| {
            v.get("limits")
                .and_then(|l| l.get("max_query_depth"))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        match merged.iter_mut().find(|m| key(m) == key(right)) {
            Some(existing) => {
                let new_depth = depth_of(right);
                if deeper(new_depth, depth_of(existing))
                    && let Some(o) = existing.as_object_mut()
                {
                    let limits = o
                        .entry("limits")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Some(l) = limits.as_object_mut() {
                        l.insert("max_query_depth".into(), json!(new_depth));
                    }
                }
            }
            None => merged.push(right.clone()),
        }
    }
    Some(Value::Array(merged))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(path: &str, method: &str, rate: f64, per: f64) -> Value {
        json!([{"path": path, "methods": [{"name": method, "limit": {"rate": rate, "per": per}}]}])
    }

    #[test]
    fn endpoint_limits_keep_the_higher_rate_and_every_endpoint() {
        assert_eq!(
            merge_endpoints(Some(&ep("/a", "GET", 5.0, 1.0)), None),
            Some(ep("/a", "GET", 5.0, 1.0))
        );
        assert_eq!(
            merge_endpoints(None, Some(&ep("/a", "GET", 5.0, 1.0))),
            Some(ep("/a", "GET", 5.0, 1.0))
        );
        assert_eq!(
            merge_endpoints(
                Some(&ep("/a", "GET", 5.0, 1.0)),
                Some(&ep("/a", "GET", 10.0, 1.0))
            ),
            Some(ep("/a", "GET", 10.0, 1.0))
        );
        assert_eq!(
            merge_endpoints(
                Some(&ep("/a", "GET", 10.0, 60.0)),
                Some(&ep("/a", "GET", 5.0, 30.0))
            ),
            Some(ep("/a", "GET", 10.0, 60.0)),
            "equal durations: the larger rate"
        );
        let both = merge_endpoints(
            Some(&ep("/b", "POST", 1.0, 1.0)),
            Some(&ep("/a", "GET", 2.0, 1.0)),
        )
        .unwrap();
        assert_eq!(both.as_array().unwrap().len(), 2);
        assert_eq!(both[0]["path"], "/a", "sorted by path");
    }

    #[test]
    fn graphql_types_union_and_field_limits_take_the_deeper() {
        let a = json!([{"name": "Query", "fields": ["a", "b"]}]);
        let b =
            json!([{"name": "Query", "fields": ["b", "c"]}, {"name": "Mutation", "fields": ["x"]}]);
        assert_eq!(
            union_types(Some(&a), Some(&b)),
            Some(
                json!([{"name": "Query", "fields": ["a", "b", "c"]}, {"name": "Mutation", "fields": ["x"]}])
            )
        );
        assert_eq!(union_types(None, Some(&b)), Some(b.clone()));
        let l1 = json!([{"type_name": "Query", "field_name": "people", "limits": {"max_query_depth": 4}}]);
        let l2 = json!([{"type_name": "Query", "field_name": "people", "limits": {"max_query_depth": 2}},
            {"type_name": "Query", "field_name": "films", "limits": {"max_query_depth": -1}}]);
        assert_eq!(
            merge_field_limits(Some(&l1), Some(&l2)),
            Some(
                json!([{"type_name": "Query", "field_name": "people", "limits": {"max_query_depth": 4}},
                {"type_name": "Query", "field_name": "films", "limits": {"max_query_depth": -1}}])
            )
        );
    }
}
