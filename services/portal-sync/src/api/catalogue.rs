//! `/portal-api/products` and `/portal-api/plans`: API Products (access
//! policies) and Plans (limit policies). A sync makes placeholders of
//! tagged policies; one created here creates its policy in the provider at
//! once, tagged with the provider's policy tags so the next sync knows it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use meridian_kit::http::{ApiError, ErrorBody, Json, Query};
use meridian_schemas::portal::PortalEntity;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiState, Unsettled, provider_failed, time};
use crate::adapters::providers::Connection;
use crate::domain::PortalState;
use crate::domain::model::{
    ApiAccess, CREATION_MARKER, Creation, Display, Limits, Origin, Plan, Product, Request, Status,
    check_name, invalid as field,
};
use crate::domain::rules::{self, ApiAsked, ApiFound};
use crate::domain::sync::{Kind, Listed, catalogue_id};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_products, create_product))
        .routes(routes!(get_product, update_product, delete_product))
        .routes(routes!(list_plans, create_plan))
        .routes(routes!(get_plan, update_plan, delete_plan))
}

/// `?hidden=true` lists hidden ones too; `?provider_id=` one provider's.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub struct ListQuery {
    /// Include Products/Plans whose policy the last sync did not retrieve.
    pub hidden: bool,
    /// Only this provider's.
    pub provider_id: Option<String>,
}

/// A Product as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    /// Portal id.
    pub id: String,
    /// Its one provider.
    pub provider_id: String,
    /// The provider's access policy behind it.
    pub policy_id: String,
    /// That policy's name.
    pub policy_name: String,
    /// What the admin set: name, description, docs, catalogues, published.
    #[serde(flatten)]
    pub display: Display,
    /// The APIs it grants.
    pub apis: Vec<ApiAccess>,
    /// The authentication method its APIs share (when known).
    pub auth_type: String,
    /// Its policy was not retrieved by the last sync (then never published).
    pub hidden: bool,
    /// Made from a partitioned policy: a bare-bones placeholder.
    pub bare_bones: bool,
    /// `sync` or `portal`.
    pub origin: Origin,
    /// The provider's baseline URL: where developers send requests.
    pub baseline_url: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// A Plan as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PlanView {
    /// Portal id.
    pub id: String,
    /// Its one provider.
    pub provider_id: String,
    /// The provider's limit policy behind it.
    pub policy_id: String,
    /// That policy's name.
    pub policy_name: String,
    /// What the admin set.
    #[serde(flatten)]
    pub display: Display,
    /// Its limits.
    #[serde(flatten)]
    pub limits: Limits,
    /// Provisioning requests for it are approved without an admin.
    pub auto_approve: bool,
    /// See [`ProductView::hidden`].
    pub hidden: bool,
    /// See [`ProductView::bare_bones`].
    pub bare_bones: bool,
    /// `sync` or `portal`.
    pub origin: Origin,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

fn product_view(state: &PortalState, p: &Product) -> ProductView {
    ProductView {
        id: p.id.clone(),
        provider_id: p.provider_id.clone(),
        policy_id: p.policy_id.clone(),
        policy_name: p.policy_name.clone(),
        display: p.display.clone(),
        apis: p.apis.clone(),
        auth_type: p.auth_type.clone(),
        hidden: p.hidden,
        bare_bones: p.bare_bones,
        origin: p.origin,
        baseline_url: state
            .provider(&p.provider_id)
            .map(|prov| prov.baseline_url.clone())
            .unwrap_or_default(),
        created_at: time(p.created_at_ms),
        updated_at: time(p.updated_at_ms),
    }
}

fn plan_view(p: &Plan) -> PlanView {
    PlanView {
        id: p.id.clone(),
        provider_id: p.provider_id.clone(),
        policy_id: p.policy_id.clone(),
        policy_name: p.policy_name.clone(),
        display: p.display.clone(),
        limits: p.limits.clone(),
        auto_approve: p.auto_approve,
        hidden: p.hidden,
        bare_bones: p.bare_bones,
        origin: p.origin,
        created_at: time(p.created_at_ms),
        updated_at: time(p.updated_at_ms),
    }
}

/// One API a new Product grants.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApiChoice {
    /// The provider's API id.
    pub api_id: String,
    /// Versions granted (default `Default`).
    pub versions: Vec<String>,
    /// The API's provider, when named: it must be the Product's one.
    pub provider_id: Option<String>,
}

/// A Product to create.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ProductInput {
    /// Required.
    pub name: String,
    /// Required: the one provider whose policy it is.
    pub provider_id: String,
    /// Required: at least one API of that provider, all with one
    /// authentication method.
    pub apis: Vec<ApiChoice>,
    /// Optional.
    pub description: String,
    /// Optional (Markdown).
    pub docs: String,
    /// Optional.
    pub catalogues: Vec<String>,
    /// Default off.
    pub published: bool,
}

/// A Plan to create.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PlanInput {
    /// Required.
    pub name: String,
    /// Required: the one provider whose policy it is.
    pub provider_id: String,
    /// Requests per `per` seconds (0: no rate limit).
    pub rate: f64,
    /// The rate window in seconds.
    pub per: f64,
    /// Requests per quota period (-1, the default, is unlimited).
    pub quota_max: Option<i64>,
    /// The quota period in seconds.
    pub quota_renewal_rate: i64,
    /// Optional.
    pub description: String,
    /// Optional (Markdown).
    pub docs: String,
    /// Optional.
    pub catalogues: Vec<String>,
    /// Default off.
    pub published: bool,
    /// Approve provisioning requests for it without an admin.
    pub auto_approve: bool,
}

/// What an admin may change on a Product or Plan (absent: unchanged).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DisplayUpdate {
    /// Shown to developers.
    pub name: Option<String>,
    /// A description.
    pub description: Option<String>,
    /// Documentation (Markdown).
    pub docs: Option<String>,
    /// Catalogues it is listed in.
    pub catalogues: Option<Vec<String>>,
    /// Developers see it (refused while it is hidden).
    pub published: Option<bool>,
    /// Plans only: approve requests without an admin.
    pub auto_approve: Option<bool>,
}

/// Fields of a Product's or Plan's view the admin cannot set, that a
/// `PUT` may still carry unchanged (the usual read-modify-write sends back
/// what `GET` answered). Timestamps are the server's and not compared.
const SERVER_STAMPED: [&str; 2] = ["created_at", "updated_at"];

impl DisplayUpdate {
    const FIELDS: [&'static str; 6] = [
        "name",
        "description",
        "docs",
        "catalogues",
        "published",
        "auto_approve",
    ];

    /// The update a body asks for, and the other fields it carries (to be
    /// checked against the current view by [`unchanged`]).
    fn split(body: Value) -> Result<(Self, serde_json::Map<String, Value>), ApiError> {
        let Value::Object(fields) = body else {
            return Err(ApiError::invalid_field("body", "must be a JSON object"));
        };
        let (settable, rest): (serde_json::Map<_, _>, serde_json::Map<_, _>) = fields
            .into_iter()
            .partition(|(k, _)| Self::FIELDS.contains(&k.as_str()));
        let update = serde_json::from_value(Value::Object(settable))
            .map_err(|e| ApiError::invalid_field("body", e))?;
        Ok((update, rest))
    }

    fn apply(&self, display: &mut Display, hidden: bool) -> Result<(), ApiError> {
        if let Some(name) = &self.name {
            check_name("name", name)?;
            display.name.clone_from(name);
        }
        if let Some(d) = &self.description {
            display.description.clone_from(d);
        }
        if let Some(d) = &self.docs {
            display.docs.clone_from(d);
        }
        if let Some(c) = &self.catalogues {
            display.catalogues.clone_from(c);
        }
        if let Some(p) = self.published {
            if p && hidden {
                return Err(ApiError::conflict(
                    "published: it is hidden (its policy was not retrieved by the last sync); it can be published once a sync finds its policy again",
                ));
            }
            display.published = p;
        }
        Ok(())
    }
}

/// A Product or Plan as far as creating it with its policy goes.
trait Created: Listing + serde::de::DeserializeOwned + Clone {
    /// Which it is.
    const KIND: Kind;
    /// `product` or `plan` (a [`Creation`]'s kind).
    const NAME: &'static str;
    /// The draft with its id and the policy the provider made.
    fn with_policy(self, id: String, policy_id: String) -> Self;
    /// Its policy id.
    fn policy(&self) -> &str;
}

impl Created for Product {
    const KIND: Kind = Kind::Product;
    const NAME: &'static str = "product";
    fn with_policy(self, id: String, policy_id: String) -> Self {
        Self {
            id,
            policy_id,
            ..self
        }
    }
    fn policy(&self) -> &str {
        &self.policy_id
    }
}

impl Created for Plan {
    const KIND: Kind = Kind::Plan;
    const NAME: &'static str = "plan";
    fn with_policy(self, id: String, policy_id: String) -> Self {
        Self {
            id,
            policy_id,
            ..self
        }
    }
    fn policy(&self) -> &str {
        &self.policy_id
    }
}

/// Creates `policy` in the provider for `draft` and stores the Product or
/// Plan, as every write with a provider side effect here: the creation is
/// recorded first (its id goes into the policy's `meta_data`), then the
/// provider is asked, then the Product or Plan is stored and the creation
/// deleted (see [`finish_creation`]). A provider that fails has the
/// creation undone (a policy its lost answer made is found by the marker
/// and deleted).
async fn create_with_policy<T: Created>(
    s: &ApiState,
    provider_id: &str,
    connection: &Connection,
    mut policy: Value,
    draft: &T,
) -> Result<T, ApiError> {
    let creation = Creation {
        id: uuid::Uuid::new_v4().to_string(),
        kind: T::NAME.to_owned(),
        provider_id: provider_id.to_owned(),
        entity: serde_json::to_string(draft).expect("entities serialize"),
        started_at_ms: meridian_kit::time::now_ms(),
    };
    s.save_settled(
        PortalEntity::Creation,
        &creation.id,
        "started",
        |_| Ok(creation.clone()),
        |state| state.creation(&creation.id).cloned(),
    )
    .await
    .map_err(Unsettled::into_error)?;
    policy["meta_data"] = json!({ CREATION_MARKER: creation.id });
    match connection.create_policy(&policy).await {
        Ok(policy_id) => finish_creation::<T>(s, &creation, connection, &policy_id).await,
        Err(e) => {
            let failed = provider_failed(&format!("create the {}'s policy", T::WHAT), &e);
            undo_creation(s, &creation, connection).await;
            Err(failed)
        }
    }
}

/// Stores the Product or Plan of `creation` with the policy the provider
/// made, then deletes the creation. When the log gives no answer nothing is
/// undone (a replica finishes it later); when the store is refused the
/// policy is deleted again.
async fn finish_creation<T: Created>(
    s: &ApiState,
    creation: &Creation,
    connection: &Connection,
    policy_id: &str,
) -> Result<T, ApiError> {
    let draft: T = serde_json::from_str(&creation.entity).map_err(|e| {
        ApiError::conflict(format!(
            "creation {:?} holds no {}: {e}",
            creation.id,
            T::WHAT
        ))
    })?;
    let id = catalogue_id(T::KIND, &creation.provider_id, policy_id);
    let entity = draft.with_policy(id.clone(), policy_id.to_owned());
    let saved = s
        .save_settled(
            T::ENTITY,
            &id,
            "created",
            |state| {
                if T::find(state, &id).is_some() {
                    return Err(ApiError::conflict("stored already"));
                }
                Ok(entity.clone())
            },
            |state| T::find(state, &id).cloned(),
        )
        .await;
    match saved {
        Ok(saved) => {
            forget_creation(s, &creation.id).await;
            Ok(saved)
        }
        Err(Unsettled::Unknown(e)) => Err(e),
        Err(Unsettled::Failed(e)) => {
            undo_creation(s, creation, connection).await;
            Err(e)
        }
    }
}

/// Takes back a creation: deletes the policy carrying its marker when the
/// provider has one (found by listing: the answer that named it may have
/// been lost), then the creation. A provider that cannot be asked leaves
/// the creation for the next try.
async fn undo_creation(s: &ApiState, creation: &Creation, connection: &Connection) {
    match made_for(connection, creation).await {
        Ok(Some(policy_id)) => {
            if let Err(e) = connection.delete_policy(&policy_id).await {
                tracing::error!(creation = %creation.id, policy = %policy_id, error = %e,
                    "a policy made for a Product or Plan that was not stored could not be deleted; tried again later");
                return;
            }
            s.recovered("creation_undone");
            tracing::warn!(creation = %creation.id, policy = %policy_id, "creation undone: its policy was deleted in the provider");
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(creation = %creation.id, error = %e,
                "the provider could not be asked whether a creation made its policy; tried again later");
            return;
        }
    }
    forget_creation(s, &creation.id).await;
}

/// The policy the provider holds for `creation`, by its marker.
async fn made_for(
    connection: &Connection,
    creation: &Creation,
) -> Result<Option<String>, crate::adapters::providers::ProviderError> {
    Ok(connection
        .policies()
        .await?
        .into_iter()
        .find(|p| p.creation == creation.id)
        .map(|p| p.id))
}

/// Deletes a finished or undone creation (a failure leaves it for the next
/// recovery pass, which finds its work done).
async fn forget_creation(s: &ApiState, id: &str) {
    let deleted = s
        .delete(PortalEntity::Creation, id, |state| {
            state
                .creation(id)
                .cloned()
                .ok_or_else(|| ApiError::not_found("gone already"))
        })
        .await;
    if let Err(e) = deleted
        && e.code != meridian_kit::http::ErrorCode::NotFound
    {
        tracing::warn!(creation = %id, error = %e.message, "a finished creation is still recorded; the next recovery pass deletes it");
    }
}

/// Finishes or undoes, on this replica, a creation another left under way
/// longer than the deadline: the Product or Plan is stored when the
/// provider holds its policy (by its marker), else the creation is dropped.
pub(super) async fn recover_creation(s: &ApiState, creation: &Creation) -> Result<(), ApiError> {
    let (_, connection) = s.connect(&creation.provider_id).await?;
    let made = made_for(&connection, creation)
        .await
        .map_err(|e| provider_failed("list its policies", &e))?;
    match (made, creation.kind.as_str()) {
        (None, _) => {
            tracing::warn!(creation = %creation.id, "a creation left under way made no policy; dropping it");
            forget_creation(s, &creation.id).await;
        }
        (Some(policy_id), "plan") => {
            let plan: Plan = finish_creation(s, creation, &connection, &policy_id).await?;
            tracing::warn!(creation = %creation.id, plan = %plan.id, policy = %plan.policy(), "a Plan left under way is stored");
        }
        (Some(policy_id), _) => {
            let product: Product = finish_creation(s, creation, &connection, &policy_id).await?;
            tracing::warn!(creation = %creation.id, product = %product.id, policy = %product.policy(), "a Product left under way is stored");
        }
    }
    s.recovered("creation_finished");
    Ok(())
}

/// What the Product and Plan handlers share: one list, one delete.
trait Listing: Listed + Serialize {
    /// The `PORTAL` entity.
    const ENTITY: PortalEntity;
    /// `Product` or `Plan`, for messages.
    const WHAT: &'static str;
    /// Every one, by id.
    fn all(state: &PortalState) -> Vec<&Self>;
    /// One by id.
    fn find<'a>(state: &'a PortalState, id: &str) -> Option<&'a Self>;
    /// The Product or Plan a request asks for, of this kind.
    fn asked(request: &Request) -> &str;
}

impl Listing for Product {
    const ENTITY: PortalEntity = PortalEntity::Product;
    const WHAT: &'static str = "Product";
    fn all(state: &PortalState) -> Vec<&Self> {
        state.products().collect()
    }
    fn find<'a>(state: &'a PortalState, id: &str) -> Option<&'a Self> {
        state.product(id)
    }
    fn asked(request: &Request) -> &str {
        &request.product_id
    }
}

impl Listing for Plan {
    const ENTITY: PortalEntity = PortalEntity::Plan;
    const WHAT: &'static str = "Plan";
    fn all(state: &PortalState) -> Vec<&Self> {
        state.plans().collect()
    }
    fn find<'a>(state: &'a PortalState, id: &str) -> Option<&'a Self> {
        state.plan(id)
    }
    fn asked(request: &Request) -> &str {
        &request.plan_id
    }
}

fn missing<T: Listing>(id: &str) -> ApiError {
    ApiError::not_found(format!("no {} {id:?}", T::WHAT))
}

/// The ones a listing shows: shown ones (hidden too with `?hidden=true`),
/// of one provider when asked, by name then id.
fn listed<'a, T: Listing>(state: &'a PortalState, q: &ListQuery) -> Vec<&'a T> {
    let mut all: Vec<&T> = T::all(state)
        .into_iter()
        .filter(|p| {
            (q.hidden || !p.hidden())
                && q.provider_id
                    .as_deref()
                    .is_none_or(|id| id == p.provider_id())
        })
        .collect();
    all.sort_by(|a, b| a.name().cmp(b.name()).then(a.id().cmp(b.id())));
    all
}

/// Deletes a Product or Plan. One created in the portal takes its policy in
/// the provider with it; one a sync made leaves the policy alone (while that
/// policy keeps its tag, the next sync brings a placeholder back). Refused
/// while credentials issued for it are live.
async fn delete_listing<T: Listing>(s: &ApiState, id: &str) -> Result<StatusCode, ApiError> {
    let found = s
        .find(|state| T::find(state, id).cloned())
        .await
        .ok_or_else(|| missing::<T>(id))?;
    let live = s
        .writer
        .read()
        .requests()
        .filter(|r| r.status == Status::Approved && T::asked(r) == id)
        .filter(|r| r.credential.as_ref().is_some_and(|c| c.revoked_at_ms == 0))
        .count();
    if live > 0 {
        return Err(ApiError::conflict(format!(
            "{} {id:?} has {live} live credentials; revoke them first",
            T::WHAT
        )));
    }
    if found.origin() == Origin::Portal {
        let (_, connection) = s.connect(found.provider_id()).await?;
        connection
            .delete_policy(found.policy_id())
            .await
            .map_err(|e| provider_failed(&format!("delete the {}'s policy", T::WHAT), &e))?;
    }
    s.delete(T::ENTITY, id, |state| {
        T::find(state, id).cloned().ok_or_else(|| missing::<T>(id))
    })
    .await?;
    tracing::info!(id = %id, "{} deleted", T::WHAT);
    Ok(StatusCode::NO_CONTENT)
}

/// Products, by name (hidden ones only with `?hidden=true`).
#[utoipa::path(get, path = "/portal-api/products", tag = "products", security(("api_key" = [])),
    params(ListQuery),
    responses((status = 200, body = Vec<ProductView>), (status = 401, body = ErrorBody)))]
async fn list_products(
    State(s): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Json<Vec<ProductView>> {
    s.writer.catch_up().await;
    let state = s.writer.read();
    Json(
        listed::<Product>(&state, &q)
            .into_iter()
            .map(|p| product_view(&state, p))
            .collect(),
    )
}

/// Creates a Product and, at once, its access policy in the provider
/// (tagged with the provider's policy tags). If the provider refuses,
/// nothing is created here.
#[utoipa::path(post, path = "/portal-api/products", tag = "products", security(("api_key" = [])),
    request_body = ProductInput,
    responses((status = 201, body = ProductView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn create_product(
    State(s): State<ApiState>,
    Json(input): Json<ProductInput>,
) -> Result<(StatusCode, Json<ProductView>), ApiError> {
    let asked: Vec<ApiAsked> = input
        .apis
        .iter()
        .map(|a| ApiAsked {
            api_id: a.api_id.clone(),
            versions: a.versions.clone(),
            provider_id: a.provider_id.clone(),
        })
        .collect();
    rules::check_product(&input.name, &input.provider_id, &asked)?;
    let (provider, connection) = s.connect(&input.provider_id).await?;
    let mut found = Vec::with_capacity(asked.len());
    for choice in &asked {
        let info = connection
            .api(&choice.api_id)
            .await
            .map_err(|e| provider_failed("look the API up", &e))?;
        found.push(info.map(|i| ApiFound {
            name: i.name,
            auth_type: i.auth_type,
        }));
    }
    let (apis, auth_type, policy) = rules::product_access(
        &input.name,
        &provider.name,
        &provider.policy_tags,
        &asked,
        &found,
    )?;
    let now = meridian_kit::time::now_ms();
    let draft = Product {
        provider_id: provider.id.clone(),
        policy_name: input.name.clone(),
        display: Display {
            name: input.name.clone(),
            description: input.description.clone(),
            docs: input.docs.clone(),
            catalogues: input.catalogues.clone(),
            published: input.published,
        },
        apis,
        auth_type,
        origin: Origin::Portal,
        created_at_ms: now,
        updated_at_ms: now,
        ..Product::default()
    };
    let saved = create_with_policy(&s, &provider.id, &connection, policy, &draft).await?;
    tracing::info!(product = %saved.id, provider = %provider.name, policy = %saved.policy_id, "Product created with its policy");
    let state = s.writer.read();
    Ok((StatusCode::CREATED, Json(product_view(&state, &saved))))
}

/// A Product (hidden ones too).
#[utoipa::path(get, path = "/portal-api/products/{id}", tag = "products", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = ProductView), (status = 404, body = ErrorBody)))]
async fn get_product(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ProductView>, ApiError> {
    s.find(|state| state.product(&id).map(|p| product_view(state, p)))
        .await
        .map(Json)
        .ok_or_else(|| missing::<Product>(&id))
}

/// Checks that the fields of a `PUT` the admin cannot set are those of
/// the current view, unchanged: a change is refused naming the field and
/// its value, an unknown field as unknown.
fn unchanged(sent: &serde_json::Map<String, Value>, view: &Value) -> Result<(), ApiError> {
    for (field, value) in sent {
        if SERVER_STAMPED.contains(&field.as_str()) {
            continue;
        }
        match view.get(field) {
            None => {
                return Err(ApiError::invalid_field(
                    field,
                    format!(
                        "is not a field (those that can be set: {})",
                        DisplayUpdate::FIELDS.join(", ")
                    ),
                ));
            }
            Some(current) if current != value => {
                return Err(ApiError::invalid_field(
                    field,
                    format!("is read-only (it is {current}); send it unchanged or leave it out"),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Changes what the admin sets on a Product (kept through hide and
/// restore). Its APIs follow its policy in the provider. The other fields
/// of its view may be sent back unchanged.
#[utoipa::path(put, path = "/portal-api/products/{id}", tag = "products", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)), request_body = DisplayUpdate,
    responses((status = 200, body = ProductView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_product(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<ProductView>, ApiError> {
    let (update, rest) = DisplayUpdate::split(body)?;
    if update.auto_approve.is_some() {
        return Err(ApiError::from(field(
            "auto_approve",
            "is a Plan's setting, not a Product's",
        )));
    }
    s.find(|state| state.product(&id).map(drop))
        .await
        .ok_or_else(|| missing::<Product>(&id))?;
    let saved = s
        .save(PortalEntity::Product, &id, "updated", |state| {
            let mut p = state
                .product(&id)
                .cloned()
                .ok_or_else(|| missing::<Product>(&id))?;
            unchanged(&rest, &json!(product_view(state, &p)))?;
            let before = p.clone();
            update.apply(&mut p.display, p.hidden)?;
            // Stamped when it changes: sent again as it is, it keeps its
            // time and nothing is appended.
            if p != before {
                p.updated_at_ms = meridian_kit::time::now_ms();
            }
            Ok(p)
        })
        .await?;
    let state = s.writer.read();
    Ok(Json(product_view(&state, &saved)))
}

/// Deletes a Product. One created in the portal takes its policy in the
/// provider with it; one a sync made leaves the policy alone (while that
/// policy keeps its tag, the next sync brings a placeholder back). Refused
/// while credentials issued for it are live.
#[utoipa::path(delete, path = "/portal-api/products/{id}", tag = "products", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn delete_product(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_listing::<Product>(&s, &id).await
}

/// Plans, by name (hidden ones only with `?hidden=true`).
#[utoipa::path(get, path = "/portal-api/plans", tag = "plans", security(("api_key" = [])),
    params(ListQuery),
    responses((status = 200, body = Vec<PlanView>), (status = 401, body = ErrorBody)))]
async fn list_plans(State(s): State<ApiState>, Query(q): Query<ListQuery>) -> Json<Vec<PlanView>> {
    s.writer.catch_up().await;
    let state = s.writer.read();
    Json(
        listed::<Plan>(&state, &q)
            .into_iter()
            .map(plan_view)
            .collect(),
    )
}

/// Creates a Plan and, at once, its limit policy in the provider (tagged
/// with the provider's policy tags). If the provider refuses, nothing is
/// created here.
#[utoipa::path(post, path = "/portal-api/plans", tag = "plans", security(("api_key" = [])),
    request_body = PlanInput,
    responses((status = 201, body = PlanView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn create_plan(
    State(s): State<ApiState>,
    Json(input): Json<PlanInput>,
) -> Result<(StatusCode, Json<PlanView>), ApiError> {
    let limits = rules::check_plan(
        &input.name,
        &input.provider_id,
        input.rate,
        input.per,
        input.quota_max,
        input.quota_renewal_rate,
    )?;
    let (provider, connection) = s.connect(&input.provider_id).await?;
    let policy = rules::plan_policy(&input.name, &provider.policy_tags, &limits);
    let now = meridian_kit::time::now_ms();
    let draft = Plan {
        provider_id: provider.id.clone(),
        policy_name: input.name.clone(),
        display: Display {
            name: input.name.clone(),
            description: input.description.clone(),
            docs: input.docs.clone(),
            catalogues: input.catalogues.clone(),
            published: input.published,
        },
        auto_approve: input.auto_approve,
        limits,
        origin: Origin::Portal,
        created_at_ms: now,
        updated_at_ms: now,
        ..Plan::default()
    };
    let saved = create_with_policy(&s, &provider.id, &connection, policy, &draft).await?;
    tracing::info!(plan = %saved.id, provider = %provider.name, policy = %saved.policy_id, "Plan created with its policy");
    Ok((StatusCode::CREATED, Json(plan_view(&saved))))
}

/// A Plan (hidden ones too).
#[utoipa::path(get, path = "/portal-api/plans/{id}", tag = "plans", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = PlanView), (status = 404, body = ErrorBody)))]
async fn get_plan(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<PlanView>, ApiError> {
    s.find(|state| state.plan(&id).map(plan_view))
        .await
        .map(Json)
        .ok_or_else(|| missing::<Plan>(&id))
}

/// Changes what the admin sets on a Plan, auto-approval included (kept
/// through hide and restore). Its limits follow its policy. The other
/// fields of its view may be sent back unchanged.
#[utoipa::path(put, path = "/portal-api/plans/{id}", tag = "plans", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)), request_body = DisplayUpdate,
    responses((status = 200, body = PlanView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_plan(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<PlanView>, ApiError> {
    let (update, rest) = DisplayUpdate::split(body)?;
    s.find(|state| state.plan(&id).map(drop))
        .await
        .ok_or_else(|| missing::<Plan>(&id))?;
    let saved = s
        .save(PortalEntity::Plan, &id, "updated", |state| {
            let mut p = state
                .plan(&id)
                .cloned()
                .ok_or_else(|| missing::<Plan>(&id))?;
            unchanged(&rest, &json!(plan_view(&p)))?;
            let before = p.clone();
            update.apply(&mut p.display, p.hidden)?;
            if let Some(auto) = update.auto_approve {
                p.auto_approve = auto;
            }
            if p != before {
                p.updated_at_ms = meridian_kit::time::now_ms();
            }
            Ok(p)
        })
        .await?;
    Ok(Json(plan_view(&saved)))
}

/// Deletes a Plan; see `DELETE /portal-api/products/{id}`.
#[utoipa::path(delete, path = "/portal-api/plans/{id}", tag = "plans", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn delete_plan(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_listing::<Plan>(&s, &id).await
}
