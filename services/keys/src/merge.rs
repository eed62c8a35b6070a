//! The effective session of a key: the key merged with its policies, which
//! is what the proxy enforces. The rules are Tyk's (its policy `Apply`):
//!
//! - A policy sets the parts of a key its `partitions` name (quota, rate
//!   limit, ACL, complexity); with none named it sets all of them. Those
//!   parts of the key's own values are cleared first, so a policy's value
//!   applies even when the key had a larger one.
//! - With several policies, access rights are the union (versions and
//!   allowed URL methods merged per API); the most generous quota (-1,
//!   unlimited, beats any number), renewal period, rate (the shortest
//!   interval between requests), throttle and depth win.
//! - A `per_api` policy takes each API's limits from its access right (or
//!   the policy's own limits when the right has none), and keeps them per
//!   API; it may not also name partitions, and per-API and partitioned
//!   policies cannot be mixed on one key.
//! - A policy without access rights (a "master" policy) sets the key's
//!   root limits.
//! - APIs that only an ACL-less partition touched are dropped; APIs whose
//!   rate or quota no policy set inherit the key's root values.
//! - With one API, the root limits are that API's (older clients read them).
//! - Tags are the union, metadata the key's overlaid by each policy's;
//!   the key is inactive when it or any of its policies is.
//! - A missing policy is skipped when the key has several, an error when it
//!   is the only one.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{AccessRight, AccessRights, Limit, Policy, Session};

mod json;
#[cfg(test)]
mod tyk_table;

/// Why a key's policies cannot be applied (the proxy refuses the key).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The key's only policy does not exist.
    #[error("policy not found: {0:?}")]
    PolicyNotFound(String),
    /// A policy belongs to another organisation than the key.
    #[error("policy {policy:?} belongs to organisation {policy_org:?}, the key to {key_org:?}")]
    OtherOrganisation {
        /// The policy.
        policy: String,
        /// Its organisation.
        policy_org: String,
        /// The key's.
        key_org: String,
    },
    /// A policy is `per_api` and names partitions too.
    #[error("cannot apply policy {0} which has per_api and any of partitions set")]
    PerApiWithPartitions(String),
    /// Per-API and partitioned policies on one key.
    #[error("cannot apply multiple policies when some have per_api set and some are partitioned")]
    MixedPerApiAndPartitions,
    /// After merging, the key grants access to no API.
    #[error("key has no valid policies to be applied: they grant access to no API")]
    NoAccess,
}

/// Tyk's `greaterThanInt64`: is `a` more generous than `b`, where -1 is
/// unlimited.
fn more_generous(a: i64, b: i64) -> bool {
    if a == -1 {
        return b != -1;
    }
    if b == -1 {
        return false;
    }
    a > b
}

/// Tyk's "no rate limit set": a rate or a window of 0. A rate of -1
/// (unlimited) is set, and allows more than any number.
fn rate_empty(l: &Limit) -> bool {
    l.rate == 0.0 || l.per == 0.0
}

/// Tyk's `Duration`: time between two requests, 0 for unlimited (-1).
fn duration(l: &Limit) -> f64 {
    if l.rate <= 0.0 || l.per <= 0.0 {
        0.0
    } else {
        l.per / l.rate
    }
}

/// Tyk's `ApplyRateLimits`: the policy's rate goes to `api` and to the
/// session's root when either is unset or allows fewer requests.
fn apply_rate(p: &Policy, session: &mut Session, api: &mut Limit) {
    let policy = p.limit();
    if rate_empty(&policy) {
        return;
    }
    let smoothing = policy_smoothing(p);
    if rate_empty(api) || duration(api) > duration(&policy) {
        api.rate = p.rate;
        api.per = p.per;
        copy_smoothing(api, &smoothing);
    }
    let own = session.limit();
    if rate_empty(&own) || duration(&own) > duration(&policy) {
        session.rate = p.rate;
        session.per = p.per;
        match p.other.get("smoothing") {
            Some(s) => session.other.insert("smoothing".into(), s.clone()),
            None => session.other.remove("smoothing"),
        };
    }
}

#[derive(Default)]
struct Applied {
    quota: BTreeSet<String>,
    rate: BTreeSet<String>,
    acl: BTreeSet<String>,
    complexity: BTreeSet<String>,
    per_api: bool,
    partitioned: bool,
    /// Which policy last set an API's ACL (Tyk's `Limit.SetBy`).
    set_by: BTreeMap<String, String>,
}

/// The key merged with its policies; `policy` looks a policy up by id.
pub fn effective<'p>(
    key: &Session,
    policy: impl Fn(&str) -> Option<&'p Policy>,
) -> Result<Session, MergeError> {
    let ids = key.policy_ids();
    let mut session = key.clone();
    if ids.is_empty() {
        for (api, right) in &mut session.access_rights {
            if !right.limit.is_empty() {
                right.allowance_scope.clone_from(api);
            }
        }
        return Ok(session);
    }
    clear(&mut session, ids.iter().filter_map(|id| policy(id)));

    let mut rights = AccessRights::new();
    let mut applied = Applied::default();
    let mut tags: Vec<String> = Vec::new();
    for id in &ids {
        let Some(p) = policy(id) else {
            if ids.len() > 1 {
                continue;
            }
            return Err(MergeError::PolicyNotFound(id.clone()));
        };
        if !p.org_id.is_empty() && !key.org_id.is_empty() && p.org_id != key.org_id {
            return Err(MergeError::OtherOrganisation {
                policy: id.clone(),
                policy_org: p.org_id.clone(),
                key_org: key.org_id.clone(),
            });
        }
        if p.partitions.per_api && p.partitions.any() {
            return Err(MergeError::PerApiWithPartitions(p.id.clone()));
        }
        if p.partitions.per_api {
            apply_per_api(p, key, &mut rights, &mut applied)?;
        } else {
            apply_partitions(p, key, &mut session, &mut rights, &mut applied)?;
        }
        session.is_inactive |= p.is_inactive;
        tags.extend(p.tags.iter().cloned());
        for (k, v) in &p.meta_data {
            session.meta_data.insert(k.clone(), v.clone());
        }
        if p.last_updated > session.last_updated {
            session.last_updated.clone_from(&p.last_updated);
        }
        // What happens to the key once it expires: the last policy that
        // says.
        if let Some(action) = p.other.get("post_expiry_action")
            && action.as_str().is_some_and(|a| !a.is_empty())
        {
            session
                .other
                .insert("post_expiry_action".into(), action.clone());
        }
        if let Some(grace) = p.other.get("post_expiry_grace_period")
            && grace.as_i64().is_some_and(|g| g != 0)
        {
            session
                .other
                .insert("post_expiry_grace_period".into(), grace.clone());
        }
    }
    let mut seen = BTreeSet::new();
    session.tags = key
        .tags
        .iter()
        .chain(&tags)
        .filter(|t| seen.insert(t.as_str()))
        .cloned()
        .collect();

    let distinct_acl: BTreeSet<&String> = applied
        .set_by
        .values()
        .filter(|by| !by.is_empty())
        .collect();
    let several_acls = distinct_acl.len() > 1;
    rights.retain(|api, _| applied.acl.contains(api));
    for (api, right) in &mut rights {
        if !applied.rate.contains(api) {
            right.other.remove("endpoints");
            right.limit.rate = session.rate;
            right.limit.per = session.per;
            right.limit.throttle_interval = session.throttle_interval;
            right.limit.throttle_retry_limit = session.throttle_retry_limit;
            match session.other.get("smoothing") {
                Some(s) => right.limit.other.insert("smoothing".into(), s.clone()),
                None => right.limit.other.remove("smoothing"),
            };
        }
        if !applied.complexity.contains(api) {
            right.limit.max_query_depth = session.max_query_depth;
        }
        if !applied.quota.contains(api) {
            right.limit.quota_max = session.quota_max;
            right.limit.quota_renewal_rate = session.quota_renewal_rate;
            right.limit.quota_renews = session.quota_renews;
        }
        if several_acls
            && right.allowance_scope.is_empty()
            && let Some(by) = applied.set_by.get(api).filter(|by| !by.is_empty())
        {
            right.allowance_scope.clone_from(by);
        }
    }
    // One API: the root limits are that API's (older clients read them).
    if applied.quota.len() == 1 && applied.rate.len() == 1 && applied.complexity.len() == 1 {
        for right in rights.values() {
            session.rate = right.limit.rate;
            session.per = right.limit.per;
            session.quota_max = right.limit.quota_max;
            session.quota_renews = right.limit.quota_renews;
            session.quota_renewal_rate = right.limit.quota_renewal_rate;
            session.max_query_depth = right.limit.max_query_depth;
        }
    }
    if !applied.acl.is_empty() {
        session.access_rights = rights;
    }
    if session.access_rights.is_empty() {
        return Err(MergeError::NoAccess);
    }
    Ok(session)
}

/// Clears the parts of the key its policies set (Tyk's `ClearSession`).
fn clear<'p>(session: &mut Session, policies: impl Iterator<Item = &'p Policy>) {
    for p in policies {
        let all = !p.partitions.any();
        if p.partitions.quota || all {
            session.quota_max = 0;
            session.quota_remaining = 0;
        }
        if p.partitions.rate_limit || all {
            session.rate = 0.0;
            session.per = 0.0;
            session.other.remove("smoothing");
            session.throttle_retry_limit = 0;
            session.throttle_interval = 0.0;
        }
        if p.partitions.complexity || all {
            session.max_query_depth = 0;
        }
    }
}

fn apply_per_api(
    p: &Policy,
    key: &Session,
    rights: &mut AccessRights,
    applied: &mut Applied,
) -> Result<(), MergeError> {
    if applied.partitioned {
        return Err(MergeError::MixedPerApiAndPartitions);
    }
    for (api, right) in &p.access_rights {
        let mut right = right.clone();
        let scope = if right.limit.is_empty() {
            right.limit = p.limit();
            p.id.clone()
        } else {
            api.clone()
        };
        right.allowance_scope.clone_from(&scope);
        let mut set_by = scope;
        if let Some(own) = key.access_rights.get(api) {
            if !own.limit.is_empty() {
                right.limit.quota_renews = own.limit.quota_renews;
            }
            // Introspection the key turned off stays off.
            if own.other.get("disable_introspection") == Some(&serde_json::Value::Bool(true)) {
                right.other.insert(
                    "disable_introspection".into(),
                    serde_json::Value::Bool(true),
                );
            }
        }
        if let Some(current) = rights.get(api) {
            let (merged, kept_current) = more_generous_api(right, current);
            right = merged;
            if kept_current && let Some(by) = applied.set_by.get(api) {
                set_by.clone_from(by);
            }
        }
        applied.set_by.insert(api.clone(), set_by);
        rights.insert(api.clone(), right);
        applied.acl.insert(api.clone());
        applied.quota.insert(api.clone());
        applied.rate.insert(api.clone());
        applied.complexity.insert(api.clone());
    }
    if !p.access_rights.is_empty() {
        applied.per_api = true;
    }
    Ok(())
}

/// Two per-API policies for one API: the more generous limits win (Tyk's
/// `applyAPILevelLimits`), endpoint limits merged; says whether the earlier
/// one's rate or quota was kept (its scope then stays).
fn more_generous_api(mut new: AccessRight, current: &AccessRight) -> (AccessRight, bool) {
    let mut kept_current = false;
    if duration(&new.limit) > duration(&current.limit) {
        new.limit.rate = current.limit.rate;
        new.limit.per = current.limit.per;
        copy_smoothing(&mut new.limit, &current.limit);
        kept_current = true;
    }
    if current.limit.quota_max != new.limit.quota_max
        && more_generous(current.limit.quota_max, new.limit.quota_max)
    {
        new.limit.quota_max = current.limit.quota_max;
        kept_current = true;
    }
    if more_generous(
        current.limit.quota_renewal_rate,
        new.limit.quota_renewal_rate,
    ) {
        new.limit.quota_renewal_rate = current.limit.quota_renewal_rate;
    }
    if new.limit.quota_max == -1 {
        new.limit.quota_renewal_rate = 0;
    }
    if kept_current {
        new.allowance_scope.clone_from(&current.allowance_scope);
    }
    let endpoints =
        json::merge_endpoints(new.other.get("endpoints"), current.other.get("endpoints"));
    set_other(&mut new.other, "endpoints", endpoints);
    (new, kept_current)
}

fn copy_smoothing(to: &mut Limit, from: &Limit) {
    match from.other.get("smoothing") {
        Some(s) => to.other.insert("smoothing".into(), s.clone()),
        None => to.other.remove("smoothing"),
    };
}

fn apply_partitions(
    p: &Policy,
    key: &Session,
    session: &mut Session,
    rights: &mut AccessRights,
    applied: &mut Applied,
) -> Result<(), MergeError> {
    let partitioned = p.partitions.any();
    if partitioned && applied.per_api {
        return Err(MergeError::MixedPerApiAndPartitions);
    }
    // Every API the policy names has a place (empty at first), so an ACL
    // that comes after a limit-only policy still counts.
    for api in p.access_rights.keys() {
        rights.entry(api.clone()).or_insert_with(|| AccessRight {
            api_id: api.clone(),
            ..AccessRight::default()
        });
    }
    for (api, right) in &p.access_rights {
        let acl = !partitioned || p.partitions.acl;
        // What earlier policies made of this API: the ACL is merged into
        // it, limits are raised on it; a policy's own per-API `limit` is not
        // read outside `per_api` (as Tyk).
        let mut merged = rights.get(api).cloned().unwrap_or_default();
        if acl {
            merged = union_acl(merged, right);
            if merged.api_name.is_empty() {
                merged.api_name.clone_from(&right.api_name);
            }
            applied.acl.insert(api.clone());
            applied.set_by.insert(api.clone(), p.id.clone());
        }
        if !partitioned || p.partitions.quota {
            applied.quota.insert(api.clone());
            if more_generous(p.quota_max, merged.limit.quota_max) {
                merged.limit.quota_max = p.quota_max;
                if more_generous(p.quota_max, session.quota_max) {
                    session.quota_max = p.quota_max;
                }
            }
            if p.quota_renewal_rate > merged.limit.quota_renewal_rate {
                merged.limit.quota_renewal_rate = p.quota_renewal_rate;
                if p.quota_renewal_rate > session.quota_renewal_rate {
                    session.quota_renewal_rate = p.quota_renewal_rate;
                }
            }
        }
        if !partitioned || p.partitions.rate_limit {
            applied.rate.insert(api.clone());
            apply_rate(p, session, &mut merged.limit);
            let endpoints =
                json::merge_endpoints(right.other.get("endpoints"), merged.other.get("endpoints"));
            set_other(&mut merged.other, "endpoints", endpoints);
            if p.throttle_retry_limit > merged.limit.throttle_retry_limit {
                merged.limit.throttle_retry_limit = p.throttle_retry_limit;
                session.throttle_retry_limit =
                    session.throttle_retry_limit.max(p.throttle_retry_limit);
            }
            if p.throttle_interval > merged.limit.throttle_interval {
                merged.limit.throttle_interval = p.throttle_interval;
                session.throttle_interval = session.throttle_interval.max(p.throttle_interval);
            }
        }
        if !partitioned || p.partitions.complexity {
            applied.complexity.insert(api.clone());
            if more_generous(p.max_query_depth, merged.limit.max_query_depth) {
                merged.limit.max_query_depth = p.max_query_depth;
                if more_generous(p.max_query_depth, session.max_query_depth) {
                    session.max_query_depth = p.max_query_depth;
                }
            }
        }
        if let Some(own) = key.access_rights.get(api)
            && !own.limit.is_empty()
        {
            merged.limit.quota_renews = own.limit.quota_renews;
        }
        rights.insert(api.clone(), merged);
    }
    // A master policy (no access rights) sets the key's root limits.
    if p.access_rights.is_empty() {
        if !partitioned || p.partitions.rate_limit {
            session.rate = p.rate;
            session.per = p.per;
            session.throttle_interval = p.throttle_interval;
            session.throttle_retry_limit = p.throttle_retry_limit;
        }
        if !partitioned || p.partitions.complexity {
            session.max_query_depth = p.max_query_depth;
        }
        if !partitioned || p.partitions.quota {
            session.quota_max = p.quota_max;
            session.quota_renewal_rate = p.quota_renewal_rate;
        }
    }
    applied.partitioned = partitioned;
    Ok(())
}

fn policy_smoothing(p: &Policy) -> Limit {
    let mut l = Limit::default();
    if let Some(s) = p.other.get("smoothing") {
        l.other.insert("smoothing".into(), s.clone());
    }
    l
}

/// Two policies' ACLs for one API: versions and allowed URLs (methods per
/// URL) are merged, GraphQL restricted and allowed types unioned per type,
/// field limits merged (the deeper wins), introspection off if either says
/// so; other fields of the earlier policy stay.
fn union_acl(mut current: AccessRight, new: &AccessRight) -> AccessRight {
    for v in &new.versions {
        if !current.versions.contains(v) {
            current.versions.push(v.clone());
        }
    }
    for url in &new.allowed_urls {
        match current.allowed_urls.iter_mut().find(|u| u.url == url.url) {
            Some(existing) => {
                for m in &url.methods {
                    if !existing.methods.contains(m) {
                        existing.methods.push(m.clone());
                    }
                }
            }
            None => current.allowed_urls.push(url.clone()),
        }
    }
    for field in ["restricted_types", "allowed_types"] {
        let merged = json::union_types(current.other.get(field), new.other.get(field));
        set_other(&mut current.other, field, merged);
    }
    let limits = json::merge_field_limits(
        current.other.get("field_access_rights"),
        new.other.get("field_access_rights"),
    );
    set_other(&mut current.other, "field_access_rights", limits);
    if new.other.get("disable_introspection") == Some(&serde_json::Value::Bool(true)) {
        current.other.insert(
            "disable_introspection".into(),
            serde_json::Value::Bool(true),
        );
    }
    for (k, v) in &new.other {
        // Endpoint limits are rate limits: merged only by a policy that
        // sets rates.
        if k != "endpoints" {
            current.other.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    current
}

/// Sets `field` of `other` to `value`, or removes it for `None`.
fn set_other(other: &mut super::model::Other, field: &str, value: Option<serde_json::Value>) {
    match value {
        Some(v) => other.insert(field.to_owned(), v),
        None => other.remove(field),
    };
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::{Value, json};

    use super::*;

    /// The policies of the table, by id.
    fn policies() -> HashMap<String, Policy> {
        let all = json!({
            "plain1": {"rate": 10, "per": 1, "quota_max": 100, "quota_renewal_rate": 60,
                       "access_rights": {"a": {}}, "tags": ["t1"], "meta_data": {"tier": "silver", "p1": true}},
            "plain2": {"rate": 50, "per": 1, "quota_max": 500, "quota_renewal_rate": 3600,
                       "access_rights": {"b": {}}, "tags": ["t2", "t1"], "meta_data": {"tier": "gold"}},
            "quota3": {"quota_max": 3, "partitions": {"quota": true}, "access_rights": {"a": {}}},
            "quota7": {"quota_max": 7, "partitions": {"quota": true}, "access_rights": {"a": {}}},
            "quota_unlimited": {"quota_max": -1, "partitions": {"quota": true}, "access_rights": {"a": {}}},
            "rate_slow": {"rate": 5, "per": 10, "partitions": {"rate_limit": true}, "access_rights": {"a": {}, "b": {}}},
            "rate_fast": {"rate": 20, "per": 1, "partitions": {"rate_limit": true}, "access_rights": {"a": {}}},
            "throttle": {"throttle_interval": 2, "throttle_retry_limit": 3, "partitions": {"rate_limit": true},
                         "access_rights": {"a": {}}},
            "depth": {"max_query_depth": 4, "partitions": {"complexity": true}, "access_rights": {"a": {}}},
            "acl_a": {"partitions": {"acl": true}, "access_rights": {"a": {"versions": ["v1"],
                      "allowed_urls": [{"url": "/pets", "methods": ["GET"]}]}}},
            "acl_a2": {"partitions": {"acl": true}, "access_rights": {"a": {"versions": ["v2", "v1"],
                      "allowed_urls": [{"url": "/pets", "methods": ["POST", "GET"]}, {"url": "/owners", "methods": ["GET"]}]}}},
            "acl_b": {"partitions": {"acl": true}, "access_rights": {"b": {}}},
            "master": {"rate": 100, "per": 1, "quota_max": 1000, "quota_renewal_rate": 86400},
            "per_api": {"id": "per_api", "rate": 1, "per": 1, "quota_max": 10, "partitions": {"per_api": true},
                        "access_rights": {"c": {"limit": {"rate": 2000, "per": 60, "quota_max": -1}}, "d": {}}},
            "per_api_d": {"id": "per_api_d", "partitions": {"per_api": true},
                          "access_rights": {"d": {"limit": {"rate": 200, "per": 10, "quota_max": 5000, "quota_renewal_rate": 3600}}}},
            "per_api_bad": {"partitions": {"per_api": true, "acl": true}, "access_rights": {"c": {}}},
            "inactive": {"is_inactive": true, "access_rights": {"a": {}}},
            "org_x": {"org_id": "x", "access_rights": {"a": {}}},
        });
        serde_json::from_value::<HashMap<String, Value>>(all)
            .unwrap()
            .into_iter()
            .map(|(id, mut v)| {
                v["id"] = json!(id);
                (id, serde_json::from_value(v).unwrap())
            })
            .collect()
    }

    fn merge(key: Value) -> Result<Session, MergeError> {
        let pols = policies();
        let key: Session = serde_json::from_value(key).unwrap();
        effective(&key, |id| pols.get(id))
    }

    fn with(ids: &[&str]) -> Result<Session, MergeError> {
        merge(json!({"apply_policies": ids}))
    }

    fn apis(s: &Session) -> Vec<&str> {
        s.access_rights.keys().map(String::as_str).collect()
    }

    #[test]
    fn without_policies_the_key_is_its_own_session() {
        let s = merge(json!({"rate": 3, "per": 1, "access_rights": {
            "a": {"limit": {"rate": 1, "per": 1}}, "b": {}}}))
        .unwrap();
        assert_eq!(s.rate, 3.0);
        assert_eq!(
            s.access_rights["a"].allowance_scope, "a",
            "a per-API limit scopes itself"
        );
        assert_eq!(s.access_rights["b"].allowance_scope, "");
    }

    #[test]
    fn a_missing_policy_fails_alone_and_is_skipped_among_others() {
        assert_eq!(
            with(&["nope"]),
            Err(MergeError::PolicyNotFound("nope".into()))
        );
        let s = with(&["nope", "plain1"]).unwrap();
        assert_eq!(apis(&s), ["a"]);
    }

    #[test]
    fn a_policy_of_another_organisation_is_refused() {
        let e = merge(json!({"org_id": "y", "apply_policies": ["org_x"]})).unwrap_err();
        assert!(matches!(e, MergeError::OtherOrganisation { .. }), "{e}");
        assert!(merge(json!({"org_id": "x", "apply_policies": ["org_x"]})).is_ok());
    }

    #[test]
    fn a_plain_policy_replaces_the_keys_limits_and_rights() {
        let s = merge(json!({"rate": 1000, "per": 1, "quota_max": 99999,
            "access_rights": {"zzz": {}}, "apply_policies": ["plain1"]}))
        .unwrap();
        assert_eq!(
            (s.rate, s.per, s.quota_max, s.quota_renewal_rate),
            (10.0, 1.0, 100, 60)
        );
        assert_eq!(apis(&s), ["a"], "the key's own rights are replaced");
        assert_eq!(s.access_rights["a"].limit.rate, 10.0);
    }

    #[test]
    fn several_plain_policies_union_rights_and_keep_each_apis_limits() {
        let s = with(&["plain1", "plain2"]).unwrap();
        assert_eq!(apis(&s), ["a", "b"]);
        assert_eq!(s.access_rights["a"].limit.quota_max, 100);
        assert_eq!(s.access_rights["b"].limit.quota_max, 500);
        // The root takes the most generous of each.
        assert_eq!(
            (s.rate, s.quota_max, s.quota_renewal_rate),
            (50.0, 500, 3600)
        );
        // Two policies set ACLs: each API counts against its own policy.
        assert_eq!(s.access_rights["a"].allowance_scope, "plain1");
        assert_eq!(s.access_rights["b"].allowance_scope, "plain2");
    }

    #[test]
    fn the_largest_quota_wins_and_unlimited_beats_any_number() {
        assert_eq!(with(&["quota3", "acl_a"]).unwrap().quota_max, 3);
        assert_eq!(with(&["quota3", "quota7", "acl_a"]).unwrap().quota_max, 7);
        assert_eq!(with(&["quota7", "quota3", "acl_a"]).unwrap().quota_max, 7);
        assert_eq!(
            with(&["quota7", "quota_unlimited", "quota3", "acl_a"])
                .unwrap()
                .quota_max,
            -1
        );
    }

    #[test]
    fn the_shortest_interval_between_requests_wins() {
        let s = with(&["rate_slow", "rate_fast", "acl_a"]).unwrap();
        assert_eq!((s.rate, s.per), (20.0, 1.0));
        assert_eq!(s.access_rights["a"].limit.rate, 20.0);
        let s = with(&["rate_fast", "rate_slow", "acl_a"]).unwrap();
        assert_eq!((s.rate, s.per), (20.0, 1.0), "order does not matter");
    }

    #[test]
    fn a_partition_clears_only_its_part_of_the_key() {
        let s = merge(json!({"rate": 7, "per": 1, "quota_max": 42,
            "apply_policies": ["quota3", "acl_a"]}))
        .unwrap();
        assert_eq!(
            s.quota_max, 3,
            "the quota partition replaced the key's quota"
        );
        assert_eq!((s.rate, s.per), (7.0, 1.0), "the rate is still the key's");
        assert_eq!(s.access_rights["a"].limit.rate, 7.0, "the API inherits it");
    }

    #[test]
    fn throttling_and_depth_take_the_largest() {
        let s = with(&["throttle", "depth", "acl_a"]).unwrap();
        assert_eq!((s.throttle_interval, s.throttle_retry_limit), (2.0, 3));
        assert_eq!(s.max_query_depth, 4);
        assert_eq!(s.access_rights["a"].limit.max_query_depth, 4);
    }

    #[test]
    fn acls_merge_versions_and_methods_per_url() {
        let s = with(&["acl_a", "acl_a2", "acl_b"]).unwrap();
        assert_eq!(apis(&s), ["a", "b"]);
        let a = &s.access_rights["a"];
        assert_eq!(a.versions, ["v1", "v2"]);
        let urls: Vec<(&str, &[String])> = a
            .allowed_urls
            .iter()
            .map(|u| (u.url.as_str(), u.methods.as_slice()))
            .collect();
        assert_eq!(
            urls,
            [
                ("/pets", &["GET".to_owned(), "POST".to_owned()][..]),
                ("/owners", &["GET".to_owned()][..])
            ]
        );
    }

    #[test]
    fn apis_only_a_non_acl_partition_names_are_dropped() {
        let s = with(&["acl_a", "rate_slow"]).unwrap();
        assert_eq!(apis(&s), ["a"], "b came only from a rate partition");
        assert_eq!(s.access_rights["a"].limit.rate, 5.0);
        assert_eq!(with(&["rate_slow"]), Err(MergeError::NoAccess));
    }

    #[test]
    fn a_rate_partition_after_an_acl_keeps_the_acl() {
        let s = with(&["acl_a", "rate_fast"]).unwrap();
        assert_eq!(s.access_rights["a"].allowed_urls[0].url, "/pets");
        let s = with(&["rate_fast", "acl_a"]).unwrap();
        assert_eq!(s.access_rights["a"].allowed_urls[0].url, "/pets");
        assert_eq!(s.access_rights["a"].limit.rate, 20.0);
    }

    #[test]
    fn a_master_policy_sets_the_root_limits_and_keeps_the_keys_rights() {
        let s = merge(json!({"access_rights": {"a": {}}, "apply_policies": ["master"]})).unwrap();
        assert_eq!(
            (s.rate, s.quota_max, s.quota_renewal_rate),
            (100.0, 1000, 86400)
        );
        assert_eq!(apis(&s), ["a"]);
        assert_eq!(with(&["master"]), Err(MergeError::NoAccess));
    }

    #[test]
    fn per_api_policies_keep_limits_per_api() {
        let s = with(&["per_api"]).unwrap();
        let c = &s.access_rights["c"];
        assert_eq!(
            (c.limit.rate, c.limit.per, c.limit.quota_max),
            (2000.0, 60.0, -1)
        );
        assert_eq!(c.allowance_scope, "c");
        let d = &s.access_rights["d"];
        assert_eq!(
            (d.limit.rate, d.limit.quota_max),
            (1.0, 10),
            "the policy's own limits"
        );
        assert_eq!(d.allowance_scope, "per_api", "counted against the policy");
        // Two per-API policies for d: the more generous limits win.
        let s = with(&["per_api", "per_api_d"]).unwrap();
        let d = &s.access_rights["d"];
        assert_eq!((d.limit.rate, d.limit.per), (200.0, 10.0), "20/s beats 1/s");
        let s = with(&["per_api_d", "per_api"]).unwrap();
        let d = &s.access_rights["d"];
        assert_eq!(
            (d.limit.rate, d.limit.per),
            (200.0, 10.0),
            "in either order"
        );
        assert_eq!(d.limit.quota_max, 5000);
        assert_eq!(
            (d.limit.quota_max, d.limit.quota_renewal_rate),
            (5000, 3600)
        );
    }

    #[test]
    fn per_api_cannot_mix_with_partitions() {
        assert_eq!(
            with(&["per_api_bad"]),
            Err(MergeError::PerApiWithPartitions("per_api_bad".into()))
        );
        assert_eq!(
            with(&["per_api", "quota3"]),
            Err(MergeError::MixedPerApiAndPartitions)
        );
        assert_eq!(
            with(&["acl_a", "per_api"]),
            Err(MergeError::MixedPerApiAndPartitions)
        );
    }

    #[test]
    fn one_api_sets_the_root_limits() {
        let s = merge(json!({"apply_policies": ["per_api_d"]})).unwrap();
        assert_eq!((s.rate, s.per, s.quota_max), (200.0, 10.0, 5000));
    }

    #[test]
    fn tags_metadata_and_inactivity_merge() {
        let s = merge(
            json!({"tags": ["own", "t1"], "meta_data": {"tier": "none", "own": 1},
            "apply_policies": ["plain1", "plain2"]}),
        )
        .unwrap();
        assert_eq!(s.tags, ["own", "t1", "t2"]);
        assert_eq!(
            s.meta_data["tier"], "gold",
            "later policies overlay earlier ones"
        );
        assert_eq!(s.meta_data["own"], 1);
        assert_eq!(s.meta_data["p1"], true);
        assert!(!s.is_inactive);
        assert!(with(&["plain1", "inactive"]).unwrap().is_inactive);
        assert!(
            merge(json!({"is_inactive": true, "apply_policies": ["plain1"]}))
                .unwrap()
                .is_inactive
        );
    }

    #[test]
    fn the_legacy_single_policy_field_applies() {
        let s = merge(json!({"apply_policy_id": "plain1"})).unwrap();
        assert_eq!(s.rate, 10.0);
    }
}
