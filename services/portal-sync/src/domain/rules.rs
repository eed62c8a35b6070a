//! The portal's write rules, decided without I/O: what a provisioning
//! request may ask for, what a new Product or Plan must be, and the policy
//! the provider is asked to create for it. The HTTP layer calls these and
//! maps an [`Invalid`] to a 400 once; the provider's answers come in as
//! values.

use meridian_schemas::ids::MERIDIAN_NAMESPACE;
use serde_json::{Value, json};

use super::PortalState;
use super::model::{
    ApiAccess, Credential, Invalid, Issuing, Limits, Request, Status, check_name, invalid,
};

/// Checks a provisioning request against the portal: the app exists, the
/// Product and the Plan exist, are shown and published, and come from one
/// provider. Answers that provider's id.
pub fn check_request(
    state: &PortalState,
    app_id: &str,
    product_id: &str,
    plan_id: &str,
) -> Result<String, Invalid> {
    if state.app(app_id).is_none() {
        return Err(invalid("app_id", format!("no app {app_id:?}")));
    }
    let product = state
        .product(product_id)
        .ok_or_else(|| invalid("product_id", format!("no Product {product_id:?}")))?;
    let plan = state
        .plan(plan_id)
        .ok_or_else(|| invalid("plan_id", format!("no Plan {plan_id:?}")))?;
    for (name, hidden, published) in [
        ("product_id", product.hidden, product.display.published),
        ("plan_id", plan.hidden, plan.display.published),
    ] {
        if hidden {
            return Err(invalid(
                name,
                "is hidden: its policy is gone from the provider",
            ));
        }
        if !published {
            return Err(invalid(name, "is not published"));
        }
    }
    if product.provider_id != plan.provider_id {
        return Err(invalid(
            "plan_id",
            format!(
                "the Plan comes from provider {:?} and the Product from {:?}: a credential is issued by one provider",
                plan.provider_id, product.provider_id
            ),
        ));
    }
    Ok(product.provider_id.clone())
}

/// One API a new Product asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiAsked {
    /// The provider's API id.
    pub api_id: String,
    /// Versions granted (empty: `Default`).
    pub versions: Vec<String>,
    /// Its provider, when the caller named one.
    pub provider_id: Option<String>,
}

/// What the provider said of an API a Product asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiFound {
    /// Its name.
    pub name: String,
    /// Its authentication method (`authToken`, `oauth2`, ...).
    pub auth_type: String,
}

/// A new Product's shape, before its provider is asked anything: a name,
/// one provider, at least one API, every API of that provider.
pub fn check_product(name: &str, provider_id: &str, apis: &[ApiAsked]) -> Result<(), Invalid> {
    check_name("name", name)?;
    if provider_id.is_empty() {
        return Err(invalid(
            "provider_id",
            "must name the Product's one provider",
        ));
    }
    if apis.is_empty() {
        return Err(invalid("apis", "must name at least one API"));
    }
    for (i, api) in apis.iter().enumerate() {
        if api.api_id.is_empty() {
            return Err(invalid(&format!("apis[{i}].api_id"), "must not be empty"));
        }
        if let Some(other) = api.provider_id.as_ref().filter(|p| *p != provider_id) {
            return Err(invalid(
                &format!("apis[{i}].provider_id"),
                format!(
                    "{other:?} is not the Product's provider {provider_id:?}: a Product's APIs all come from one provider"
                ),
            ));
        }
    }
    Ok(())
}

/// A new Product's access, from what its provider said of each API asked
/// (`None`: it has no such API): every API must exist and all must use one
/// authentication method, so that one credential works for all. Answers
/// the APIs granted, that method, and the access policy to create in the
/// provider (tagged with `policy_tags`, so the next sync knows it).
pub fn product_access(
    name: &str,
    provider_name: &str,
    policy_tags: &[String],
    asked: &[ApiAsked],
    found: &[Option<ApiFound>],
) -> Result<(Vec<ApiAccess>, String, Value), Invalid> {
    let mut apis = Vec::with_capacity(asked.len());
    let mut methods: Vec<(&str, &str)> = Vec::with_capacity(asked.len());
    for (i, (choice, found)) in asked.iter().zip(found).enumerate() {
        let found = found.as_ref().ok_or_else(|| {
            invalid(
                &format!("apis[{i}].api_id"),
                format!("provider {provider_name:?} has no API {:?}", choice.api_id),
            )
        })?;
        methods.push((&choice.api_id, &found.auth_type));
        apis.push(ApiAccess {
            api_id: choice.api_id.clone(),
            api_name: found.name.clone(),
            versions: if choice.versions.is_empty() {
                vec!["Default".into()]
            } else {
                choice.versions.clone()
            },
        });
    }
    let auth_type = methods.first().map(|(_, m)| *m).unwrap_or_default();
    if let Some((api, other)) = methods.iter().find(|(_, m)| *m != auth_type) {
        return Err(invalid(
            "apis",
            format!(
                "{:?} uses {auth_type} and {api:?} uses {other}: all APIs of a Product must use one authentication method, so that one credential works for all",
                methods[0].0
            ),
        ));
    }
    let access_rights: serde_json::Map<String, Value> = apis
        .iter()
        .map(|a| {
            (
                a.api_id.clone(),
                json!({"api_id": a.api_id, "api_name": a.api_name, "versions": a.versions}),
            )
        })
        .collect();
    let policy = json!({
        "name": name,
        "tags": policy_tags,
        "access_rights": access_rights,
        "partitions": {"acl": true, "quota": false, "rate_limit": false, "complexity": false},
        "active": true,
        "rate": 0, "per": 0, "quota_max": -1, "quota_renewal_rate": 0,
    });
    Ok((apis, auth_type.to_owned(), policy))
}

/// A new Plan's limits: a name, one provider, a rate of 0 or more over a
/// window of more than 0 seconds when set, a quota of -1 (unlimited, the
/// default) or more over a period of more than 0 seconds when set.
pub fn check_plan(
    name: &str,
    provider_id: &str,
    rate: f64,
    per: f64,
    quota_max: Option<i64>,
    quota_renewal_rate: i64,
) -> Result<Limits, Invalid> {
    check_name("name", name)?;
    if provider_id.is_empty() {
        return Err(invalid("provider_id", "must name the Plan's one provider"));
    }
    if !(rate >= 0.0 && rate.is_finite()) {
        return Err(invalid("rate", "must be 0 or more"));
    }
    if !(per >= 0.0 && per.is_finite()) || (rate > 0.0 && per <= 0.0) {
        return Err(invalid(
            "per",
            "must be more than 0 seconds when rate is set",
        ));
    }
    let quota_max = quota_max.unwrap_or(-1);
    if quota_max < -1 {
        return Err(invalid("quota_max", "must be -1 (unlimited) or more"));
    }
    if quota_renewal_rate < 0 || (quota_max > 0 && quota_renewal_rate == 0) {
        return Err(invalid(
            "quota_renewal_rate",
            "must be more than 0 seconds when quota_max is set",
        ));
    }
    Ok(Limits {
        rate,
        per,
        quota_max,
        quota_renewal_rate,
    })
}

/// The limit policy to create in the provider for a new Plan (tagged with
/// `policy_tags`, so the next sync knows it).
pub fn plan_policy(name: &str, policy_tags: &[String], limits: &Limits) -> Value {
    json!({
        "name": name,
        "tags": policy_tags,
        "access_rights": {},
        "partitions": {"acl": false, "quota": true, "rate_limit": true, "complexity": false},
        "active": true,
        "rate": limits.rate, "per": limits.per,
        "quota_max": limits.quota_max, "quota_renewal_rate": limits.quota_renewal_rate,
    })
}

/// Why a provisioning decision was refused: the request or credential is
/// not there (a 404), or its state does not allow it (a 409).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Nothing by that id.
    #[error("{0}")]
    NotFound(String),
    /// Decided already, or another decision is under way.
    #[error("{0}")]
    Conflict(String),
}

/// The request that owns a credential.
pub fn credential_owner(state: &PortalState, credential_id: &str) -> Option<Request> {
    state
        .requests()
        .find(|r| r.credential.as_ref().is_some_and(|c| c.id == credential_id))
        .cloned()
}

/// The request `id`, while it is pending (`decided`: what to say when it
/// is not).
fn pending(state: &PortalState, id: &str, decided: &str) -> Result<Request, Refusal> {
    let r = state
        .request(id)
        .cloned()
        .ok_or_else(|| Refusal::NotFound(format!("no provisioning request {id:?}")))?;
    if r.status != Status::Pending {
        return Err(Refusal::Conflict(format!(
            "provisioning request {id:?} {decided}"
        )));
    }
    Ok(r)
}

/// Rejecting a pending request with no approval under way: the request as
/// rejected at `now_ms`.
pub fn reject(
    state: &PortalState,
    id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<Request, Refusal> {
    let mut r = pending(state, id, "was decided already")?;
    if r.issuing.is_some() {
        return Err(Refusal::Conflict(format!(
            "an approval of provisioning request {id:?} is under way (it is finished, or undone once its provider answers); ask again in a moment"
        )));
    }
    r.status = Status::Rejected;
    reason.clone_into(&mut r.reason);
    r.decided_at_ms = now_ms;
    Ok(r)
}

/// Starting an approval: the request, still pending, recorded with the key
/// about to be issued (`issuing`), unless another approval started less
/// than `deadline_ms` ago (an older one was left by a crash and is taken
/// over).
pub fn start_approval(
    state: &PortalState,
    id: &str,
    issuing: &Issuing,
    now_ms: i64,
    deadline_ms: i64,
) -> Result<Request, Refusal> {
    let mut r = pending(state, id, "was decided by someone else meanwhile")?;
    if r.issuing
        .as_ref()
        .is_some_and(|i| now_ms - i.started_at_ms < deadline_ms)
    {
        return Err(Refusal::Conflict(format!(
            "an approval of provisioning request {id:?} is under way; ask again in a moment"
        )));
    }
    r.issuing = Some(issuing.clone());
    Ok(r)
}

/// Starting a revocation: the credential's request, with the revocation
/// recorded as under way since `now_ms` (or since it was first started).
pub fn start_revocation(
    state: &PortalState,
    credential_id: &str,
    now_ms: i64,
) -> Result<Request, Refusal> {
    let mut r = live_credential(state, credential_id)?;
    if let Some(c) = r.credential.as_mut()
        && c.revoking_at_ms == 0
    {
        c.revoking_at_ms = now_ms;
    }
    Ok(r)
}

/// The request owning the credential, while the credential is not revoked.
fn live_credential(state: &PortalState, credential_id: &str) -> Result<Request, Refusal> {
    let r = credential_owner(state, credential_id)
        .ok_or_else(|| Refusal::NotFound(format!("no credential {credential_id:?}")))?;
    if r.credential.as_ref().is_some_and(|c| c.revoked_at_ms == 0) {
        Ok(r)
    } else {
        Err(Refusal::Conflict(format!(
            "credential {credential_id:?} was revoked already"
        )))
    }
}

/// The credential an approval issues: named after its request (a retried
/// approval names the same one), for the key hashed as `key_hash` that the
/// provider deletes by `provider_key_ref`, with the approval's alias and
/// policies, issued at `now_ms`.
pub fn credential(
    request_id: &str,
    issuing: &Issuing,
    key_hash: &str,
    provider_key_ref: &str,
    now_ms: i64,
) -> Credential {
    Credential {
        id: uuid::Uuid::new_v5(
            &MERIDIAN_NAMESPACE,
            format!("portal:credential:{request_id}").as_bytes(),
        )
        .to_string(),
        key_hash: key_hash.to_owned(),
        provider_key_ref: provider_key_ref.to_owned(),
        alias: issuing.alias.clone(),
        policies: issuing.policies.clone(),
        issued_at_ms: now_ms,
        revoked_at_ms: 0,
        revoking_at_ms: 0,
    }
}

/// Finishing an approval once the provider holds the key: the request,
/// still pending with its approval under way, approved at `now_ms` with
/// `credential` (automatic when the approval was).
pub fn finish_approval(
    state: &PortalState,
    id: &str,
    credential: Credential,
    now_ms: i64,
) -> Result<Request, Refusal> {
    let mut r = pending(state, id, "was decided by someone else meanwhile")?;
    let Some(issuing) = r.issuing.take() else {
        return Err(Refusal::Conflict(format!(
            "provisioning request {id:?} has no approval under way (it was undone meanwhile)"
        )));
    };
    r.status = Status::Approved;
    r.automatic = issuing.automatic;
    r.decided_at_ms = now_ms;
    r.credential = Some(credential);
    Ok(r)
}

/// Whether the log holds the approval of `id` with the key hashed as
/// `key_hash` (how a publish with no answer is settled).
pub fn approved_with(state: &PortalState, id: &str, key_hash: &str) -> Option<Request> {
    state
        .request(id)
        .filter(|r| {
            r.status == Status::Approved
                && r.credential
                    .as_ref()
                    .is_some_and(|c| c.key_hash == key_hash)
        })
        .cloned()
}

/// Taking back an approval that cannot be finished (its key was deleted
/// in the provider): the request, still pending, with no approval under
/// way.
pub fn undo_approval(state: &PortalState, id: &str) -> Result<Request, Refusal> {
    let mut r = pending(state, id, "was decided meanwhile; nothing to undo")?;
    if r.issuing.take().is_none() {
        return Err(Refusal::Conflict(format!(
            "provisioning request {id:?} has no approval under way"
        )));
    }
    Ok(r)
}

/// Whether the log shows no approval of `id` under way.
pub fn approval_cleared(state: &PortalState, id: &str) -> Option<Request> {
    state.request(id).filter(|r| r.issuing.is_none()).cloned()
}

/// Whether the log holds a revocation of the credential, started or done.
pub fn revocation_recorded(state: &PortalState, credential_id: &str) -> Option<Request> {
    credential_owner(state, credential_id).filter(|r| {
        r.credential
            .as_ref()
            .is_some_and(|c| c.revoking_at_ms != 0 || c.revoked_at_ms != 0)
    })
}

/// Finishing a revocation once the provider no longer holds the key: the
/// credential's request with the credential revoked at `now_ms`.
pub fn finish_revocation(
    state: &PortalState,
    credential_id: &str,
    now_ms: i64,
) -> Result<Request, Refusal> {
    let mut r = live_credential(state, credential_id)?;
    if let Some(c) = r.credential.as_mut() {
        c.revoked_at_ms = now_ms;
        c.revoking_at_ms = 0;
    }
    Ok(r)
}

/// Whether the log holds the credential as revoked.
pub fn revoked(state: &PortalState, credential_id: &str) -> Option<Request> {
    credential_owner(state, credential_id)
        .filter(|r| r.credential.as_ref().is_some_and(|c| c.revoked_at_ms != 0))
}

#[cfg(test)]
mod tests {
    use meridian_schemas::portal::{PortalEntity, PortalEvent};

    use super::*;
    use crate::domain::model::{App, Display, Plan, Product};

    /// The portal after these entities were saved, in this order.
    fn given(saved: &[(PortalEntity, String, Value)]) -> PortalState {
        let mut state = PortalState::default();
        for (seq, (entity, id, body)) in (1..).zip(saved) {
            let event = PortalEvent::Saved {
                entity: *entity,
                id: id.clone(),
                body: body.to_string(),
                change: "created".into(),
                change_id: uuid::Uuid::nil(),
                at_ms: 0,
            };
            state.apply(&event, seq).unwrap();
        }
        state
    }

    fn asked(id: &str, provider: Option<&str>) -> ApiAsked {
        ApiAsked {
            api_id: id.into(),
            versions: vec![],
            provider_id: provider.map(str::to_owned),
        }
    }

    fn found(name: &str, auth: &str) -> Option<ApiFound> {
        Some(ApiFound {
            name: name.into(),
            auth_type: auth.into(),
        })
    }

    /// Given a portal holding these, when a request asks for these, then
    /// this provider or a refusal naming this field.
    #[test]
    fn a_request_names_an_app_and_a_published_product_and_plan_of_one_provider() {
        let product = |id: &str, provider: &str, published: bool, hidden: bool| Product {
            id: id.into(),
            provider_id: provider.into(),
            hidden,
            display: Display {
                published,
                ..Display::default()
            },
            ..Product::default()
        };
        let plan = |id: &str, provider: &str, published: bool, hidden: bool| Plan {
            id: id.into(),
            provider_id: provider.into(),
            hidden,
            display: Display {
                published,
                ..Display::default()
            },
            ..Plan::default()
        };
        let app = App {
            id: "shop".into(),
            ..App::default()
        };
        let mut saved = vec![(PortalEntity::App, app.id.clone(), json!(app))];
        for p in [
            product("orders", "dash", true, false),
            product("draft", "dash", false, false),
            product("gone", "dash", true, true),
            product("elsewhere", "other", true, false),
        ] {
            saved.push((PortalEntity::Product, p.id.clone(), json!(p)));
        }
        for p in [
            plan("free", "dash", true, false),
            plan("unpublished", "dash", false, false),
            plan("hidden", "dash", true, true),
        ] {
            saved.push((PortalEntity::Plan, p.id.clone(), json!(p)));
        }
        let state = given(&saved);
        /// App, Product, Plan asked; the provider, or the field refused and why.
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Result<&'a str, (&'a str, &'a str)>,
        );
        let cases: [Case; 9] = [
            ("shop", "orders", "free", Ok("dash")),
            ("nobody", "orders", "free", Err(("app_id", "no app"))),
            ("shop", "nothing", "free", Err(("product_id", "no Product"))),
            ("shop", "orders", "nothing", Err(("plan_id", "no Plan"))),
            (
                "shop",
                "draft",
                "free",
                Err(("product_id", "not published")),
            ),
            ("shop", "gone", "free", Err(("product_id", "hidden"))),
            (
                "shop",
                "orders",
                "unpublished",
                Err(("plan_id", "not published")),
            ),
            ("shop", "orders", "hidden", Err(("plan_id", "hidden"))),
            (
                "shop",
                "elsewhere",
                "free",
                Err(("plan_id", "one provider")),
            ),
        ];
        for (app, product, plan, expected) in cases {
            let got = check_request(&state, app, product, plan);
            match (expected, got) {
                (Ok(provider), Ok(got)) => assert_eq!(got, provider),
                (Err((field, why)), Err(e)) => {
                    assert_eq!(e.field, field, "{app}/{product}/{plan}: {e}");
                    assert!(e.message.contains(why), "{app}/{product}/{plan}: {e}");
                }
                (expected, got) => panic!("{app}/{product}/{plan}: {got:?}, not {expected:?}"),
            }
        }
    }

    /// The portal after one request, pending or as changed by `edit`.
    fn one_request(edit: impl FnOnce(&mut Request)) -> PortalState {
        let mut r = Request {
            id: "r1".into(),
            ..Request::default()
        };
        edit(&mut r);
        given(&[(PortalEntity::Request, "r1".into(), json!(r))])
    }

    #[test]
    fn a_pending_request_is_rejected_once_and_not_while_an_approval_is_under_way() {
        let rejected = reject(&one_request(|_| {}), "r1", "no", 7).unwrap();
        assert_eq!(
            (
                rejected.status,
                rejected.reason.as_str(),
                rejected.decided_at_ms
            ),
            (Status::Rejected, "no", 7)
        );
        assert!(matches!(
            reject(&one_request(|_| {}), "r2", "", 7),
            Err(Refusal::NotFound(_))
        ));
        let decided = one_request(|r| r.status = Status::Approved);
        assert!(
            matches!(reject(&decided, "r1", "", 7), Err(Refusal::Conflict(m)) if m.contains("decided already"))
        );
        let issuing = one_request(|r| r.issuing = Some(Issuing::default()));
        assert!(
            matches!(reject(&issuing, "r1", "", 7), Err(Refusal::Conflict(m)) if m.contains("under way"))
        );
    }

    #[test]
    fn an_approval_starts_on_a_pending_request_or_takes_over_one_left_past_its_deadline() {
        let key = Issuing {
            alias: "shop-r1".into(),
            policies: vec!["p".into(), "q".into()],
            automatic: true,
            started_at_ms: 1_000,
        };
        let started = start_approval(&one_request(|_| {}), "r1", &key, 1_000, 30_000).unwrap();
        assert_eq!(started.issuing.as_ref(), Some(&key));
        assert_eq!(
            started.status,
            Status::Pending,
            "approved only once the key exists"
        );
        let earlier = |at: i64| {
            one_request(move |r| {
                r.issuing = Some(Issuing {
                    started_at_ms: at,
                    ..Issuing::default()
                })
            })
        };
        assert!(matches!(
            start_approval(&earlier(0), "r1", &key, 29_999, 30_000),
            Err(Refusal::Conflict(_))
        ));
        assert!(
            start_approval(&earlier(0), "r1", &key, 30_000, 30_000).is_ok(),
            "past its deadline: taken over"
        );
        let rejected = one_request(|r| r.status = Status::Rejected);
        assert!(matches!(
            start_approval(&rejected, "r1", &key, 0, 30_000),
            Err(Refusal::Conflict(_))
        ));
        assert!(matches!(
            start_approval(&rejected, "r9", &key, 0, 30_000),
            Err(Refusal::NotFound(_))
        ));
    }

    #[test]
    fn an_approval_finishes_only_while_under_way_and_is_settled_by_its_key() {
        let issuing = Issuing {
            alias: "shop-r1".into(),
            policies: vec!["p".into(), "q".into()],
            automatic: true,
            started_at_ms: 1_000,
        };
        let c = credential("r1", &issuing, "h1", "ref1", 2_000);
        assert_eq!(
            c,
            credential("r1", &issuing, "h1", "ref1", 2_000),
            "a retried approval names the same credential"
        );
        assert_ne!(c.id, credential("r2", &issuing, "h1", "ref1", 2_000).id);
        assert_eq!(
            (c.alias.as_str(), c.policies.as_slice(), c.issued_at_ms),
            ("shop-r1", &["p".to_owned(), "q".to_owned()][..], 2_000)
        );
        let under_way = one_request(|r| r.issuing = Some(issuing.clone()));
        let approved = finish_approval(&under_way, "r1", c.clone(), 3_000).unwrap();
        assert_eq!(
            (
                approved.status,
                approved.automatic,
                approved.decided_at_ms,
                approved.issuing.is_none()
            ),
            (Status::Approved, true, 3_000, true)
        );
        assert_eq!(approved.credential.as_ref(), Some(&c));
        assert!(
            matches!(finish_approval(&one_request(|_| {}), "r1", c.clone(), 3_000),
                Err(Refusal::Conflict(m)) if m.contains("no approval under way")),
            "undone meanwhile"
        );
        let decided = one_request(|r| {
            r.status = Status::Rejected;
            r.issuing = Some(Issuing::default());
        });
        assert!(matches!(
            finish_approval(&decided, "r1", c.clone(), 3_000),
            Err(Refusal::Conflict(_))
        ));
        assert!(matches!(
            finish_approval(&under_way, "r9", c.clone(), 3_000),
            Err(Refusal::NotFound(_))
        ));
        let logged = one_request(|r| *r = approved.clone());
        assert!(approved_with(&logged, "r1", "h1").is_some());
        assert!(
            approved_with(&logged, "r1", "other").is_none(),
            "approved with another key"
        );
        assert!(approved_with(&under_way, "r1", "h1").is_none());
    }

    #[test]
    fn an_approval_is_undone_only_while_under_way() {
        let under_way = one_request(|r| r.issuing = Some(Issuing::default()));
        let undone = undo_approval(&under_way, "r1").unwrap();
        assert_eq!(
            (undone.status, undone.issuing.is_none()),
            (Status::Pending, true)
        );
        assert!(approval_cleared(&under_way, "r1").is_none());
        assert!(approval_cleared(&one_request(|_| {}), "r1").is_some());
        assert!(matches!(
            undo_approval(&one_request(|_| {}), "r1"),
            Err(Refusal::Conflict(_))
        ));
        let approved = one_request(|r| {
            r.status = Status::Approved;
            r.issuing = Some(Issuing::default());
        });
        assert!(matches!(
            undo_approval(&approved, "r1"),
            Err(Refusal::Conflict(m)) if m.contains("decided meanwhile")
        ));
        assert!(matches!(
            undo_approval(&under_way, "r9"),
            Err(Refusal::NotFound(_))
        ));
    }

    /// The portal after one approved request, its credential `c1` with a
    /// revocation started at `revoking` and done at `revoked` (0: not).
    fn one_credential(revoking: i64, revoked: i64) -> PortalState {
        one_request(move |r| {
            r.status = Status::Approved;
            r.credential = Some(crate::domain::model::Credential {
                id: "c1".into(),
                revoking_at_ms: revoking,
                revoked_at_ms: revoked,
                ..Default::default()
            });
        })
    }

    #[test]
    fn a_revocation_finishes_once_and_the_log_shows_each_step() {
        let done = finish_revocation(&one_credential(3, 0), "c1", 9).unwrap();
        let c = done.credential.unwrap();
        assert_eq!((c.revoked_at_ms, c.revoking_at_ms), (9, 0));
        assert!(matches!(
            finish_revocation(&one_credential(3, 4), "c1", 9),
            Err(Refusal::Conflict(m)) if m.contains("revoked already")
        ));
        assert!(matches!(
            finish_revocation(&one_credential(3, 0), "c2", 9),
            Err(Refusal::NotFound(_))
        ));
        // (revoking, revoked) -> (a revocation recorded, revoked)
        for ((revoking, revoked_at), expected) in [
            ((0, 0), (false, false)),
            ((3, 0), (true, false)),
            ((0, 4), (true, true)),
        ] {
            let state = one_credential(revoking, revoked_at);
            assert_eq!(
                (
                    revocation_recorded(&state, "c1").is_some(),
                    revoked(&state, "c1").is_some()
                ),
                expected,
                "revoking {revoking}, revoked {revoked_at}"
            );
        }
        assert!(revocation_recorded(&one_credential(3, 0), "c2").is_none());
    }

    #[test]
    fn a_revocation_starts_once_and_keeps_its_first_start() {
        let started = start_revocation(&one_credential(0, 0), "c1", 5).unwrap();
        assert_eq!(started.credential.unwrap().revoking_at_ms, 5);
        let again = start_revocation(&one_credential(3, 0), "c1", 5).unwrap();
        assert_eq!(
            again.credential.unwrap().revoking_at_ms,
            3,
            "the first start is kept"
        );
        assert!(matches!(
            start_revocation(&one_credential(3, 4), "c1", 5),
            Err(Refusal::Conflict(_))
        ));
        assert!(matches!(
            start_revocation(&one_credential(0, 0), "c2", 5),
            Err(Refusal::NotFound(_))
        ));
    }

    #[test]
    fn a_product_has_a_name_one_provider_and_at_least_one_api_of_it() {
        let cases: [(&str, &str, Vec<ApiAsked>, Option<&str>); 6] = [
            (
                "Orders",
                "dash",
                vec![asked("a", None), asked("b", Some("dash"))],
                None,
            ),
            ("", "dash", vec![asked("a", None)], Some("name")),
            ("Orders", "", vec![asked("a", None)], Some("provider_id")),
            ("Orders", "dash", vec![], Some("apis")),
            (
                "Orders",
                "dash",
                vec![asked("", None)],
                Some("apis[0].api_id"),
            ),
            (
                "Orders",
                "dash",
                vec![asked("a", None), asked("b", Some("other"))],
                Some("apis[1].provider_id"),
            ),
        ];
        for (name, provider, apis, refused) in cases {
            let got = check_product(name, provider, &apis);
            assert_eq!(
                got.as_ref().err().map(|e| e.field.as_str()),
                refused,
                "{name:?} {provider:?} {apis:?}: {got:?}"
            );
        }
    }

    #[test]
    fn a_products_apis_exist_share_one_auth_method_and_make_its_access_policy() {
        let tags = vec!["portal".to_owned()];
        let apis = [asked("a", None), asked("b", None)];
        let (access, auth, policy) = product_access(
            "Orders",
            "dash",
            &tags,
            &apis,
            &[found("A", "authToken"), found("B", "authToken")],
        )
        .unwrap();
        assert_eq!(auth, "authToken");
        assert_eq!(access[1].api_name, "B");
        assert_eq!(access[0].versions, ["Default"]);
        assert_eq!(policy["tags"], json!(["portal"]));
        assert_eq!(policy["partitions"]["acl"], true);
        assert_eq!(policy["partitions"]["rate_limit"], false);
        assert_eq!(policy["access_rights"]["b"]["api_name"], "B");

        let missing = product_access(
            "Orders",
            "dash",
            &tags,
            &apis,
            &[found("A", "authToken"), None],
        )
        .unwrap_err();
        assert_eq!(missing.field, "apis[1].api_id");
        assert!(missing.message.contains("no API \"b\""), "{missing}");

        let mixed = product_access(
            "Orders",
            "dash",
            &tags,
            &apis,
            &[found("A", "authToken"), found("B", "oauth2")],
        )
        .unwrap_err();
        assert_eq!(mixed.field, "apis");
        assert!(
            mixed.message.contains("one authentication method"),
            "{mixed}"
        );
    }

    #[test]
    fn a_plans_limits_are_checked_and_make_its_limit_policy() {
        type Case = (f64, f64, Option<i64>, i64, Option<&'static str>);
        let cases: [Case; 8] = [
            (10.0, 1.0, None, 0, None),
            (0.0, 0.0, Some(100), 3600, None),
            (-1.0, 1.0, None, 0, Some("rate")),
            (f64::NAN, 1.0, None, 0, Some("rate")),
            (10.0, 0.0, None, 0, Some("per")),
            (10.0, 1.0, Some(-2), 0, Some("quota_max")),
            (10.0, 1.0, Some(100), 0, Some("quota_renewal_rate")),
            (10.0, 1.0, None, -5, Some("quota_renewal_rate")),
        ];
        for (rate, per, quota, renewal, refused) in cases {
            let got = check_plan("Free", "dash", rate, per, quota, renewal);
            assert_eq!(
                got.as_ref().err().map(|e| e.field.as_str()),
                refused,
                "{rate} {per} {quota:?} {renewal}: {got:?}"
            );
        }
        assert_eq!(
            check_plan("Free", "", 1.0, 1.0, None, 0).unwrap_err().field,
            "provider_id"
        );
        let limits = check_plan("Free", "dash", 10.0, 1.0, None, 0).unwrap();
        assert_eq!(limits.quota_max, -1, "unlimited by default");
        let policy = plan_policy("Free", &["portal".to_owned()], &limits);
        assert_eq!(policy["partitions"]["rate_limit"], true);
        assert_eq!(policy["partitions"]["acl"], false);
        assert_eq!(policy["rate"], 10.0);
        assert_eq!(policy["quota_max"], -1);
    }
}
