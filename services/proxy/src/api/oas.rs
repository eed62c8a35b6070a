//! `/tyk/apis/oas...`: Tyk OAS API definitions (an OpenAPI document with
//! `x-tyk-api-gateway`), as Tyk's Gateway API answers them. Stored on
//! `APIS` beside classic definitions ([`ApisEvent::OasSaved`]), checked
//! against the same table (one listen path, one API, whichever format),
//! and served as the classic definition they convert to
//! ([`crate::domain::oas`]).

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use meridian_kit::tyk::{ModifyKey, TykError, TykJson, TykPath, TykQuery};
use meridian_schemas::apis::ApisEvent;
use serde::Deserialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ApiState, MISSING, refuse_taken_path};
use crate::adapters::fold::read;
use crate::adapters::writer::WriteError;
use crate::domain::oas::{self, EXTENSION};

/// Tyk's answer for an OAS endpoint asked about a classic API.
const CLASSIC: &str =
    "the requested API definition is in Tyk classic format, please use old API endpoint";

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_oas, create_oas))
        .routes(routes!(get_oas, update_oas, patch_oas, delete_oas))
        .routes(routes!(export_one))
        .routes(routes!(export_all))
        .routes(routes!(import_oas))
        .routes(routes!(schema))
}

/// `?oasVersion=`.
#[derive(Debug, Default, Deserialize)]
struct SchemaQuery {
    #[serde(default, rename = "oasVersion")]
    oas_version: Option<String>,
}

/// The JSON Schema of `x-tyk-api-gateway` as this gateway serves it (the
/// fields it reads; any other is refused), for OpenAPI 3.0 and 3.1
/// documents; 404 for another version, as Tyk answers.
#[utoipa::path(get, path = "/tyk/schema", tag = "apis", security(("tyk_secret" = [])),
    params(("oasVersion" = Option<String>, Query, description = "3.0.x or 3.1.x (default: 3.0)")),
    responses((status = 200, body = Object, description = "{status, message, schema}"),
        (status = 404, body = Object, description = "No schema for that OpenAPI version")))]
async fn schema(TykQuery(q): TykQuery<SchemaQuery>) -> Response {
    let version = q.oas_version.unwrap_or_default();
    if !(version.is_empty() || version.starts_with("3.0") || version.starts_with("3.1")) {
        let body = serde_json::json!({"status": "Failed",
            "message": format!("Schema not found for version {version:?}")});
        return (axum::http::StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    }
    let schema: Value =
        serde_json::from_str(oas::EXTENSION_SCHEMA).expect("the published schema is JSON");
    axum::Json(serde_json::json!({"status": "Success", "message": "", "schema": schema}))
        .into_response()
}

/// `?mode=public`: without the extension.
#[derive(Debug, Default, Deserialize)]
struct Mode {
    #[serde(default)]
    mode: Option<String>,
}

impl Mode {
    fn public(&self) -> Result<bool, TykError> {
        match self.mode.as_deref() {
            None | Some("") => Ok(false),
            Some("public") => Ok(true),
            Some(other) => Err(TykError::bad_request(format!(
                "Request malformed: mode: {other:?} is not a mode (public, or none)"
            ))),
        }
    }

    fn shown(&self, doc: &Value) -> Result<Value, TykError> {
        Ok(if self.public()? {
            oas::public(doc)
        } else {
            doc.clone()
        })
    }
}

/// Checks a document and the definition it converts to.
fn check(doc: &Value) -> Result<crate::domain::ApiDefinition, TykError> {
    let (def, _) = oas::compile(doc)?;
    meridian_keys::check_id("x-tyk-api-gateway.info.id", &def.api_id)?;
    Ok(def)
}

/// Stores a document; `must_be_new` for a creation, else a replacement of
/// an OAS API.
async fn save(s: &ApiState, doc: Value, must_be_new: bool) -> Result<String, TykError> {
    let def = check(&doc)?;
    let api_id = def.api_id.clone();
    let change_id = Uuid::new_v4();
    let at_ms = meridian_kit::time::now_ms();
    let document = doc.to_string();
    let definition = serde_json::to_string(&def).expect("definitions serialize");
    s.writer
        .write(|state| {
            let stored = state.get(&api_id);
            if must_be_new && stored.is_some() {
                return Err(TykError::bad_request(format!(
                    "API {api_id:?} already exists; PUT /tyk/apis/oas/{api_id} replaces it"
                )));
            }
            match stored {
                None if !must_be_new => return Err(TykError::not_found(MISSING)),
                Some(a) if a.document.is_none() => return Err(TykError::bad_request(CLASSIC)),
                _ => {}
            }
            refuse_taken_path(state, &def)?;
            Ok((
                ApisEvent::OasSaved {
                    api_id: api_id.clone(),
                    document: document.clone(),
                    definition: definition.clone(),
                    created: stored.is_none(),
                    change_id,
                    at_ms,
                },
                (),
            ))
        })
        .await
        .map_err(WriteError::<TykError>::answer)?;
    Ok(api_id)
}

/// The stored document of an OAS API (catching up before "not found").
async fn document(s: &ApiState, id: &str) -> Result<Value, TykError> {
    let find = || {
        read(s.writer.state())
            .get(id)
            .map(|a| a.document.as_deref().cloned())
    };
    let found = match find() {
        Some(found) => Some(found),
        None => {
            s.writer.catch_up().await;
            find()
        }
    };
    match found {
        None => Err(TykError::not_found(MISSING)),
        Some(None) => Err(TykError::bad_request(CLASSIC)),
        Some(Some(doc)) => Ok(doc),
    }
}

/// Every Tyk OAS API (classic ones are listed by `GET /tyk/apis`).
#[utoipa::path(get, path = "/tyk/apis/oas", tag = "apis", security(("tyk_secret" = [])),
    params(("mode" = Option<String>, Query, description = "public: without x-tyk-api-gateway")),
    responses((status = 200, body = Vec<Object>, description = "OpenAPI documents with x-tyk-api-gateway")))]
async fn list_oas(
    State(s): State<ApiState>,
    TykQuery(mode): TykQuery<Mode>,
) -> Result<axum::Json<Vec<Value>>, TykError> {
    mode.public()?;
    s.writer.catch_up().await;
    let state = read(s.writer.state());
    let docs = state
        .all()
        .filter_map(|a| a.document.as_deref())
        .map(|d| mode.shown(d))
        .collect::<Result<_, _>>()?;
    Ok(axum::Json(docs))
}

/// Creates a Tyk OAS API (an id is generated when `x-tyk-api-gateway.info.id`
/// is empty). Live on every replica once stored.
#[utoipa::path(post, path = "/tyk/apis/oas", tag = "apis", security(("tyk_secret" = [])),
    request_body(content = Object, description = "An OpenAPI 3 document with x-tyk-api-gateway"),
    responses((status = 200, body = ModifyKey)))]
async fn create_oas(
    State(s): State<ApiState>,
    TykJson(doc): TykJson<Value>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    oas::extension(&doc)?;
    let id = doc[EXTENSION]["info"]["id"].as_str().unwrap_or_default();
    let doc = if id.is_empty() {
        oas::with_id(doc.clone(), &Uuid::new_v4().simple().to_string())
    } else {
        doc
    };
    let id = save(&s, doc, true).await?;
    tracing::info!(api = %id, "OAS API created");
    Ok(axum::Json(ModifyKey::new(id, "added")))
}

/// A Tyk OAS API's document (400 for a classic API, as Tyk answers).
#[utoipa::path(get, path = "/tyk/apis/oas/{apiID}", tag = "apis", security(("tyk_secret" = [])),
    params(("apiID" = String, Path), ("mode" = Option<String>, Query, description = "public: without x-tyk-api-gateway")),
    responses((status = 200, body = Object, description = "The OpenAPI document")))]
async fn get_oas(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
    TykQuery(mode): TykQuery<Mode>,
) -> Result<axum::Json<Value>, TykError> {
    mode.public()?;
    Ok(axum::Json(mode.shown(&document(&s, &id).await?)?))
}

/// Replaces a Tyk OAS API's document; `x-tyk-api-gateway.info.id`, when
/// given, must be the path's.
#[utoipa::path(put, path = "/tyk/apis/oas/{apiID}", tag = "apis", security(("tyk_secret" = [])),
    params(("apiID" = String, Path)),
    request_body(content = Object, description = "An OpenAPI 3 document with x-tyk-api-gateway"),
    responses((status = 200, body = ModifyKey)))]
async fn update_oas(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
    TykJson(doc): TykJson<Value>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    oas::extension(&doc)?;
    let given = doc[EXTENSION]["info"]["id"].as_str().unwrap_or_default();
    if !given.is_empty() && given != id {
        return Err(TykError::bad_request(
            "Request APIID does not match that in Definition! For Update operations these must match.",
        ));
    }
    let doc = oas::with_id(doc.clone(), &id);
    s.writer.catch_up().await;
    save(&s, doc, false).await?;
    tracing::info!(api = %id, "OAS API replaced");
    Ok(axum::Json(ModifyKey::new(id, "modified")))
}

/// Deletes a Tyk OAS API.
#[utoipa::path(delete, path = "/tyk/apis/oas/{apiID}", tag = "apis", security(("tyk_secret" = [])),
    params(("apiID" = String, Path)),
    responses((status = 200, body = ModifyKey)))]
async fn delete_oas(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    document(&s, &id).await?;
    super::delete_stored(&s, &id).await?;
    tracing::info!(api = %id, "OAS API deleted");
    Ok(axum::Json(ModifyKey::new(id, "deleted")))
}

/// A JSON file to download.
fn attachment(body: &Value, name: &str) -> Response {
    let mut res = body.to_string().into_response();
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::try_from(format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

/// A Tyk OAS API's document as a file (`<apiID>.json`).
#[utoipa::path(get, path = "/tyk/apis/oas/{apiID}/export", tag = "apis", security(("tyk_secret" = [])),
    params(("apiID" = String, Path), ("mode" = Option<String>, Query, description = "public: without x-tyk-api-gateway")),
    responses((status = 200, content_type = "application/octet-stream", description = "The OpenAPI document (JSON)")))]
async fn export_one(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
    TykQuery(mode): TykQuery<Mode>,
) -> Result<Response, TykError> {
    mode.public()?;
    let doc = mode.shown(&document(&s, &id).await?)?;
    let name = format!("{}.json", id.replace(['"', '/', '\\'], "_"));
    Ok(attachment(&doc, &name))
}

/// Every Tyk OAS API's document, as one file (a JSON list).
#[utoipa::path(get, path = "/tyk/apis/oas/export", tag = "apis", security(("tyk_secret" = [])),
    params(("mode" = Option<String>, Query, description = "public: without x-tyk-api-gateway")),
    responses((status = 200, content_type = "application/octet-stream", description = "A JSON list of OpenAPI documents")))]
async fn export_all(
    State(s): State<ApiState>,
    TykQuery(mode): TykQuery<Mode>,
) -> Result<Response, TykError> {
    let axum::Json(docs) = list_oas(State(s), TykQuery(mode)).await?;
    Ok(attachment(&Value::Array(docs), "apis.json"))
}

/// `POST /tyk/apis/oas/import` parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImportQuery {
    #[serde(default)]
    listen_path: Option<String>,
    #[serde(default, rename = "upstreamURL")]
    upstream_url: Option<String>,
    #[serde(default)]
    custom_domain: Option<String>,
    #[serde(default)]
    allow_list: Option<String>,
    #[serde(default)]
    validate_request: Option<String>,
    #[serde(default)]
    mock_response: Option<String>,
    #[serde(default)]
    authentication: Option<String>,
}

fn flag(field: &str, value: Option<&str>) -> Result<Option<bool>, TykError> {
    match value {
        None | Some("") => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(other) => Err(TykError::bad_request(format!(
            "Request malformed: {field}: {other:?} is not true or false"
        ))),
    }
}

impl ImportQuery {
    /// The parameters read (a bad boolean, or a custom domain, refused).
    fn params(&self) -> Result<oas::Params, TykError> {
        if self.custom_domain.as_deref().is_some_and(|d| !d.is_empty()) {
            return Err(TykError::bad_request(
                "Request malformed: customDomain: custom domains are not served by Meridian's gateway",
            ));
        }
        Ok(oas::Params {
            listen_path: self.listen_path.clone(),
            upstream: self.upstream_url.clone(),
            authentication: flag("authentication", self.authentication.as_deref())?,
            allow_list: flag("allowList", self.allow_list.as_deref())?,
            validate_request: flag("validateRequest", self.validate_request.as_deref())?,
            mock_response: flag("mockResponse", self.mock_response.as_deref())?,
        })
    }
}

/// Imports a plain OpenAPI 3 document (no `x-tyk-api-gateway`): the
/// extension is made from the parameters and the document (its title, its
/// first server as the upstream, its security requirement as the
/// authentication); `allowList`, `validateRequest` and `mockResponse` turn
/// those on for every operation with an `operationId` (with a JSON request
/// body, with a JSON 200 answer).
#[utoipa::path(post, path = "/tyk/apis/oas/import", tag = "apis", security(("tyk_secret" = [])),
    params(("listenPath" = Option<String>, Query), ("upstreamURL" = Option<String>, Query),
        ("customDomain" = Option<String>, Query, description = "Not served: refused when given"),
        ("allowList" = Option<bool>, Query), ("validateRequest" = Option<bool>, Query),
        ("mockResponse" = Option<bool>, Query),
        ("authentication" = Option<bool>, Query, description = "Check the document's security scheme (default: when the document has a security requirement)")),
    request_body(content = Object, description = "An OpenAPI 3 document without x-tyk-api-gateway"),
    responses((status = 200, body = ModifyKey)))]
async fn import_oas(
    State(s): State<ApiState>,
    TykQuery(q): TykQuery<ImportQuery>,
    TykJson(doc): TykJson<Value>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    if doc.get(EXTENSION).is_some() {
        return Err(TykError::bad_request(
            "the import payload should not contain x-tyk-api-gateway",
        ));
    }
    let params = q.params()?;
    let id = Uuid::new_v4().simple().to_string();
    let doc = oas::imported(doc, &id, &params)?;
    let id = save(&s, doc, true).await?;
    tracing::info!(api = %id, "OAS API imported");
    Ok(axum::Json(ModifyKey::new(id, "added")))
}

/// Replaces the OpenAPI part of a Tyk OAS API and configures its extension
/// from the parameters (as import does); a body with `x-tyk-api-gateway`
/// and no parameters is a `PUT`.
#[utoipa::path(patch, path = "/tyk/apis/oas/{apiID}", tag = "apis", security(("tyk_secret" = [])),
    params(("apiID" = String, Path), ("listenPath" = Option<String>, Query), ("upstreamURL" = Option<String>, Query),
        ("customDomain" = Option<String>, Query, description = "Not served: refused when given"),
        ("allowList" = Option<bool>, Query), ("validateRequest" = Option<bool>, Query),
        ("mockResponse" = Option<bool>, Query), ("authentication" = Option<bool>, Query)),
    request_body(content = Object, description = "An OpenAPI 3 document, with or without x-tyk-api-gateway"),
    responses((status = 200, body = ModifyKey)))]
async fn patch_oas(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
    TykQuery(q): TykQuery<ImportQuery>,
    TykJson(doc): TykJson<Value>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    let params = q.params()?;
    let stored = document(&s, &id).await?;
    let mut doc = doc;
    let root = doc.as_object_mut().ok_or_else(|| {
        TykError::bad_request("Request malformed: body: must be an OpenAPI document")
    })?;
    if !root.contains_key(EXTENSION) {
        root.insert(EXTENSION.into(), stored[EXTENSION].clone());
    }
    oas::apply(&mut doc, &params)?;
    let doc = oas::with_id(doc, &id);
    s.writer.catch_up().await;
    save(&s, doc, false).await?;
    tracing::info!(api = %id, "OAS API patched");
    Ok(axum::Json(ModifyKey::new(id, "modified")))
}
