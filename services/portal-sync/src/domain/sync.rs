//! What a sync decides, as pure functions: which retrieved policies become
//! Products or Plans, and what becomes of each Product and Plan of the
//! provider (new, updated, hidden, restored or unchanged).
//!
//! Only a complete retrieval reaches here: a failed or partial fetch hides
//! nothing because it never gets this far.

use std::collections::BTreeSet;

use meridian_schemas::ids::MERIDIAN_NAMESPACE;
use uuid::Uuid;

use super::model::{ApiAccess, Display, Limits, Origin, Plan, Product, Provider};
use super::state::PortalState;

/// A provider policy as retrieved, in the shape both kinds of provider
/// reduce to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetrievedPolicy {
    /// The provider's policy id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// The APIs it grants.
    pub apis: Vec<ApiAccess>,
    /// Its limits.
    pub limits: Limits,
    /// Its partitions: access rights, quota, rate limit.
    pub acl: bool,
    /// See `acl`.
    pub quota: bool,
    /// See `acl`.
    pub rate_limit: bool,
    /// The portal creation that made it (its `meta_data` marker), if any.
    pub creation: String,
}

/// What a tagged policy becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An access policy: a Product.
    Product,
    /// A limit policy: a Plan.
    Plan,
}

impl RetrievedPolicy {
    fn partitioned(&self) -> bool {
        self.acl || self.quota || self.rate_limit
    }

    /// Product or Plan, and whether it is bare-bones (partitioned). A
    /// partitioned policy goes by its partitions (access rights: a Product;
    /// quota or rate limit only: a Plan); any other by its content (access
    /// rights: a Product; none: a Plan).
    pub fn kind(&self) -> (Kind, bool) {
        if self.partitioned() {
            (if self.acl { Kind::Product } else { Kind::Plan }, true)
        } else if self.apis.is_empty() {
            (Kind::Plan, false)
        } else {
            (Kind::Product, false)
        }
    }

    /// Whether it carries one of the provider's tags.
    pub fn tagged_for(&self, provider: &Provider) -> bool {
        self.tags.iter().any(|t| provider.policy_tags.contains(t))
    }
}

/// The portal id of the Product or Plan made from a provider's policy: the
/// same on every replica and every replay.
pub fn catalogue_id(kind: Kind, provider_id: &str, policy_id: &str) -> String {
    let kind = match kind {
        Kind::Product => "product",
        Kind::Plan => "plan",
    };
    Uuid::new_v5(
        &MERIDIAN_NAMESPACE,
        format!("portal:{kind}:{provider_id}:{policy_id}").as_bytes(),
    )
    .to_string()
}

/// How a sync changed one Product or Plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A placeholder for a new policy.
    New,
    /// Its policy changed.
    Updated,
    /// Its policy was not retrieved: hidden and unpublished.
    Hidden,
    /// Its policy came back: shown with the configuration it had.
    Restored,
}

impl Change {
    /// The event's `change`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "created",
            Self::Updated => "updated",
            Self::Hidden => "hidden",
            Self::Restored => "restored",
        }
    }
}

/// Counts of a sync's changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// See [`Change::New`].
    pub new: u32,
    /// See [`Change::Updated`].
    pub updated: u32,
    /// See [`Change::Hidden`].
    pub hidden: u32,
    /// See [`Change::Restored`].
    pub restored: u32,
}

impl Counts {
    /// Counts one change.
    pub fn add(&mut self, change: Change) {
        match change {
            Change::New => self.new += 1,
            Change::Updated => self.updated += 1,
            Change::Hidden => self.hidden += 1,
            Change::Restored => self.restored += 1,
        }
    }
}

/// A Product or a Plan: what a sync changes on both alike, and what the
/// handlers they share read.
pub trait Listed: Clone + PartialEq {
    /// Its portal id.
    fn id(&self) -> &str;
    /// Its one provider.
    fn provider_id(&self) -> &str;
    /// The provider's policy behind it.
    fn policy_id(&self) -> &str;
    /// Where it came from.
    fn origin(&self) -> Origin;
    /// The name shown.
    fn name(&self) -> &str;
    /// Whether it is hidden.
    fn hidden(&self) -> bool;
    /// Hides it: unpublished, the published state kept for a restore.
    fn hide(&mut self);
    /// Shows it again with the published state it had.
    fn restore(&mut self);
    /// Takes what the policy decides (APIs or limits, the policy's name).
    fn follow(&mut self, policy: &RetrievedPolicy);
    /// Stamps a change.
    fn touch(&mut self, now_ms: i64);
}

macro_rules! listed {
    ($t:ty, |$p:ident, $policy:ident| $follow:block) => {
        impl Listed for $t {
            fn id(&self) -> &str {
                &self.id
            }
            fn provider_id(&self) -> &str {
                &self.provider_id
            }
            fn policy_id(&self) -> &str {
                &self.policy_id
            }
            fn origin(&self) -> Origin {
                self.origin
            }
            fn name(&self) -> &str {
                &self.display.name
            }
            fn hidden(&self) -> bool {
                self.hidden
            }
            fn hide(&mut self) {
                self.published_before_hidden = self.display.published;
                self.display.published = false;
                self.hidden = true;
            }
            fn restore(&mut self) {
                self.display.published = self.published_before_hidden;
                self.published_before_hidden = false;
                self.hidden = false;
            }
            fn follow(&mut self, $policy: &RetrievedPolicy) {
                let $p = self;
                $follow
            }
            fn touch(&mut self, now_ms: i64) {
                self.updated_at_ms = now_ms;
            }
        }
    };
}

listed!(Product, |p, policy| {
    p.apis.clone_from(&policy.apis);
    p.policy_name.clone_from(&policy.name);
});
listed!(Plan, |p, policy| {
    p.limits = policy.limits.clone();
    p.policy_name.clone_from(&policy.name);
});

/// What becomes of `existing` given its policy as retrieved (`None`: not
/// retrieved, or no longer a tagged policy of its kind); `new` makes the
/// placeholder for a policy seen for the first time. `None`: no change.
fn decide<T: Listed>(
    existing: Option<&T>,
    retrieved: Option<&RetrievedPolicy>,
    new: impl FnOnce(&RetrievedPolicy) -> T,
    now_ms: i64,
) -> Option<(T, Change)> {
    let (next, change) = match (existing, retrieved) {
        (None, None) => return None,
        (Some(e), None) if e.hidden() => return None,
        (Some(e), None) => {
            let mut next = e.clone();
            next.hide();
            (next, Change::Hidden)
        }
        (None, Some(policy)) => return Some((new(policy), Change::New)),
        (Some(e), Some(policy)) => {
            let mut next = e.clone();
            next.follow(policy);
            if e.hidden() {
                next.restore();
                (next, Change::Restored)
            } else if next == *e {
                return None;
            } else {
                (next, Change::Updated)
            }
        }
    };
    let mut next = next;
    next.touch(now_ms);
    Some((next, change))
}

/// What becomes of the Product made from `policy_id` of `provider`, given
/// the policy as retrieved (`None`: not retrieved, or no longer a tagged
/// access policy). `None` when nothing changes.
pub fn decide_product(
    state: &PortalState,
    provider: &Provider,
    policy_id: &str,
    retrieved: Option<&RetrievedPolicy>,
    now_ms: i64,
) -> Option<(Product, Change)> {
    let id = catalogue_id(Kind::Product, &provider.id, policy_id);
    let new = |policy: &RetrievedPolicy| Product {
        id: id.clone(),
        provider_id: provider.id.clone(),
        policy_id: policy.id.clone(),
        policy_name: policy.name.clone(),
        display: Display {
            name: policy.name.clone(),
            ..Display::default()
        },
        apis: policy.apis.clone(),
        bare_bones: policy.kind().1,
        origin: Origin::Sync,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        ..Product::default()
    };
    decide(state.product(&id), retrieved, new, now_ms)
}

/// What becomes of the Plan made from `policy_id`; see [`decide_product`].
pub fn decide_plan(
    state: &PortalState,
    provider: &Provider,
    policy_id: &str,
    retrieved: Option<&RetrievedPolicy>,
    now_ms: i64,
) -> Option<(Plan, Change)> {
    let id = catalogue_id(Kind::Plan, &provider.id, policy_id);
    let new = |policy: &RetrievedPolicy| Plan {
        id: id.clone(),
        provider_id: provider.id.clone(),
        policy_id: policy.id.clone(),
        policy_name: policy.name.clone(),
        display: Display {
            name: policy.name.clone(),
            ..Display::default()
        },
        limits: policy.limits.clone(),
        bare_bones: policy.kind().1,
        origin: Origin::Sync,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        ..Plan::default()
    };
    decide(state.plan(&id), retrieved, new, now_ms)
}

/// The policy ids a sync of `provider` must look at, by kind: every tagged
/// policy retrieved, and the policy of every Product and Plan the provider
/// already has (those not retrieved are hidden).
pub fn policies_to_visit(
    state: &PortalState,
    provider: &Provider,
    retrieved: &[RetrievedPolicy],
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut products: BTreeSet<String> = state
        .products()
        .filter(|p| p.provider_id == provider.id)
        .map(|p| p.policy_id.clone())
        .collect();
    let mut plans: BTreeSet<String> = state
        .plans()
        .filter(|p| p.provider_id == provider.id)
        .map(|p| p.policy_id.clone())
        .collect();
    for policy in retrieved.iter().filter(|p| p.tagged_for(provider)) {
        match policy.kind().0 {
            Kind::Product => products.insert(policy.id.clone()),
            Kind::Plan => plans.insert(policy.id.clone()),
        };
    }
    (products, plans)
}

/// The retrieved policy `id` if it is a tagged policy of `kind`.
pub fn retrieved_as<'a>(
    provider: &Provider,
    retrieved: &'a [RetrievedPolicy],
    id: &str,
    kind: Kind,
) -> Option<&'a RetrievedPolicy> {
    retrieved
        .iter()
        .find(|p| p.id == id && p.tagged_for(provider) && p.kind().0 == kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_schemas::portal::{PortalEntity, PortalEvent};

    fn provider() -> Provider {
        Provider {
            id: "prov".into(),
            policy_tags: vec!["portal".into()],
            ..Provider::default()
        }
    }

    fn access(id: &str, tags: &[&str]) -> RetrievedPolicy {
        RetrievedPolicy {
            id: id.into(),
            name: format!("{id} policy"),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            apis: vec![ApiAccess {
                api_id: "api1".into(),
                api_name: "Api 1".into(),
                versions: vec!["Default".into()],
            }],
            ..RetrievedPolicy::default()
        }
    }

    fn saved(state: &mut PortalState, seq: u64, product: &Product) {
        state
            .apply(
                &PortalEvent::Saved {
                    entity: PortalEntity::Product,
                    id: product.id.clone(),
                    body: serde_json::to_string(product).unwrap(),
                    change: "x".into(),
                    change_id: Uuid::new_v4(),
                    at_ms: 0,
                },
                seq,
            )
            .unwrap();
    }

    #[test]
    fn policies_are_classified_by_partitions_then_by_content() {
        let mut p = access("a", &["portal"]);
        assert_eq!(p.kind(), (Kind::Product, false));
        p.apis.clear();
        assert_eq!(p.kind(), (Kind::Plan, false));
        p.quota = true;
        assert_eq!(p.kind(), (Kind::Plan, true));
        p.acl = true;
        assert_eq!(p.kind(), (Kind::Product, true));
        assert!(p.tagged_for(&provider()));
        assert!(!access("b", &["other"]).tagged_for(&provider()));
    }

    #[test]
    fn a_product_hidden_and_restored_keeps_what_the_admin_set() {
        let prov = provider();
        let mut state = PortalState::default();
        let policy = access("gold", &["portal"]);
        let (mut product, change) =
            decide_product(&state, &prov, "gold", Some(&policy), 1).unwrap();
        assert_eq!(change, Change::New);
        assert!(!product.display.published && !product.hidden);
        // The admin configures it.
        product.display.description = "Gold access".into();
        product.display.catalogues = vec!["public".into()];
        product.display.published = true;
        saved(&mut state, 1, &product);
        // Unchanged policy: nothing to do.
        assert!(decide_product(&state, &prov, "gold", Some(&policy), 2).is_none());
        // Gone: hidden and unpublished.
        let (hidden, change) = decide_product(&state, &prov, "gold", None, 3).unwrap();
        assert_eq!(change, Change::Hidden);
        assert!(hidden.hidden && !hidden.display.published);
        saved(&mut state, 2, &hidden);
        assert!(decide_product(&state, &prov, "gold", None, 4).is_none());
        // Back: shown with every field it had, published again.
        let (back, change) = decide_product(&state, &prov, "gold", Some(&policy), 5).unwrap();
        assert_eq!(change, Change::Restored);
        assert!(!back.hidden && back.display.published);
        assert_eq!(back.display.description, "Gold access");
        assert_eq!(back.display.catalogues, ["public"]);
    }

    #[test]
    fn a_plan_follows_its_policy_limits() {
        let prov = provider();
        let mut state = PortalState::default();
        let mut policy = RetrievedPolicy {
            id: "silver".into(),
            name: "Silver".into(),
            tags: vec!["portal".into()],
            limits: Limits {
                rate: 10.0,
                per: 1.0,
                quota_max: 100,
                quota_renewal_rate: 3600,
            },
            ..RetrievedPolicy::default()
        };
        let (plan, change) = decide_plan(&state, &prov, "silver", Some(&policy), 1).unwrap();
        assert_eq!(change, Change::New);
        state
            .apply(
                &PortalEvent::Saved {
                    entity: PortalEntity::Plan,
                    id: plan.id.clone(),
                    body: serde_json::to_string(&plan).unwrap(),
                    change: "created".into(),
                    change_id: Uuid::new_v4(),
                    at_ms: 0,
                },
                1,
            )
            .unwrap();
        policy.limits.rate = 20.0;
        let (plan, change) = decide_plan(&state, &prov, "silver", Some(&policy), 2).unwrap();
        assert_eq!(change, Change::Updated);
        assert!((plan.limits.rate - 20.0).abs() < f64::EPSILON);
    }

    #[test]
    fn visiting_covers_retrieved_tagged_policies_and_known_products() {
        let prov = provider();
        let mut state = PortalState::default();
        let (known, _) =
            decide_product(&state, &prov, "old", Some(&access("old", &["portal"])), 1).unwrap();
        saved(&mut state, 1, &known);
        let retrieved = [access("new", &["portal"]), access("untagged", &["x"])];
        let (products, plans) = policies_to_visit(&state, &prov, &retrieved);
        assert_eq!(
            products.into_iter().collect::<Vec<_>>(),
            ["new".to_owned(), "old".to_owned()]
        );
        assert!(plans.is_empty());
        assert!(retrieved_as(&prov, &retrieved, "untagged", Kind::Product).is_none());
        assert!(retrieved_as(&prov, &retrieved, "new", Kind::Plan).is_none());
        assert!(retrieved_as(&prov, &retrieved, "new", Kind::Product).is_some());
    }
}
