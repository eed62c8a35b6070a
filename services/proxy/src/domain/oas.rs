//! Tyk OAS API definitions: an OpenAPI 3 document whose `x-tyk-api-gateway`
//! extension says how the gateway serves it. The gateway converts the
//! extension into the classic definition it compiles, as Tyk's own gateway
//! does (its `ExtractTo`), so an API compiles to one route whichever format
//! it came in; the document itself is kept as it was sent (vendor
//! extensions included) and given back by the OAS endpoints.
//!
//! The extension's fields are read strictly: a field the gateway does not
//! serve is refused with a 400 naming it (`x-tyk-api-gateway.server.
//! customDomain`), never accepted and ignored; `x-...` vendor extensions
//! are kept anywhere. Served:
//!
//! - `info`: `id`, `dbId`, `orgId`, `name`, `state.active`;
//! - `upstream`: `url`, `preserveHostHeader`;
//! - `server`: `listenPath` (`value`, `strip`), `authentication`
//!   (`enabled`; `securitySchemes` naming the document's
//!   `components.securitySchemes`: an `apiKey` in a header or an `http`
//!   `bearer` scheme is a key read from that header, an `oauth2` scheme is
//!   OAuth 2.0 with its `allowedAuthorizeTypes`, `authLoginRedirect` and
//!   `refreshToken`; `stripAuthorizationData` is not served);
//! - `middleware.global`: `cors`, `cache`, `transformRequestHeaders`,
//!   `transformResponseHeaders`, `contextVariables`;
//! - `middleware.operations`, keyed by the document's `operationId`:
//!   `transformRequestHeaders`, `transformResponseHeaders`, `allow`,
//!   `block`, `ignoreAuthentication`, `mockResponse` ([`super::endpoints`]),
//!   `validateRequest` ([`super::validate`]).

use serde_json::{Map, Value, json};

use std::sync::Arc;

use super::Invalid;
use super::apidef::ApiDefinition;
use super::endpoints::Endpoints;
use super::routes::Route;

/// The extension's name.
pub const EXTENSION: &str = "x-tyk-api-gateway";

/// The JSON Schema of the extension as the gateway serves it (what `GET
/// /tyk/schema` answers): the fields read here, nothing else.
pub const EXTENSION_SCHEMA: &str = include_str!("x-tyk-api-gateway.schema.json");

type Object = Map<String, Value>;

/// Refuses a key of `obj` not in `served` (vendor extensions pass).
fn served_only(obj: &Object, at: &str, served: &[&str]) -> Result<(), Invalid> {
    match obj
        .keys()
        .find(|k| !k.starts_with("x-") && !served.contains(&k.as_str()))
    {
        Some(k) => Err(Invalid::new(
            format!("{at}.{k}"),
            format!(
                "Meridian's gateway does not serve this field (served here: {})",
                served.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn object<'a>(obj: &'a Object, at: &str, key: &str) -> Result<Option<&'a Object>, Invalid> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(Invalid::new(format!("{at}.{key}"), "must be an object")),
    }
}

fn string<'a>(obj: &'a Object, at: &str, key: &str) -> Result<Option<&'a str>, Invalid> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Invalid::new(format!("{at}.{key}"), "must be a string")),
    }
}

fn boolean(obj: &Object, at: &str, key: &str) -> Result<bool, Invalid> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(Invalid::new(format!("{at}.{key}"), "must be true or false")),
    }
}

/// `obj.key` as a list of strings (absent or `null`: none), or the 400
/// naming `at.key`.
pub(super) fn strings(obj: &Object, at: &str, key: &str) -> Result<Vec<String>, Invalid> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| Invalid::new(format!("{at}.{key}"), "must be a list of strings"))
            })
            .collect(),
        Some(_) => Err(Invalid::new(
            format!("{at}.{key}"),
            "must be a list of strings",
        )),
    }
}

/// A `section` with `enabled: false` (or none) is off; `enabled` must be
/// there otherwise, as Tyk's schema requires.
fn enabled(section: &Object, at: &str) -> Result<bool, Invalid> {
    boolean(section, at, "enabled")
}

/// The extension of `doc`, or the 400 Tyk answers without one.
pub fn extension(doc: &Value) -> Result<&Object, Invalid> {
    let root = doc
        .as_object()
        .ok_or_else(|| Invalid::new("body", "must be an OpenAPI document (a JSON object)"))?;
    root.get(EXTENSION)
        .and_then(Value::as_object)
        .ok_or_else(|| Invalid::new(EXTENSION, "the payload should contain x-tyk-api-gateway"))
}

/// Checks the OpenAPI part Meridian reads: `openapi` 3.x, `info`, `paths`.
fn check_document(root: &Object) -> Result<(), Invalid> {
    match string(root, "", "openapi").map_err(|_| Invalid::new("openapi", "must be a string"))? {
        Some(v) if v.starts_with("3.") => {}
        Some(v) => {
            return Err(Invalid::new(
                "openapi",
                format!("{v:?} is not an OpenAPI 3 version (3.0.x, 3.1.x)"),
            ));
        }
        None => return Err(Invalid::new("openapi", "is required (3.0.3, for example)")),
    }
    if !root.get("info").is_some_and(Value::is_object) {
        return Err(Invalid::new("info", "is required (title and version)"));
    }
    if !root.get("paths").is_none_or(Value::is_object) {
        return Err(Invalid::new("paths", "must be an object"));
    }
    Ok(())
}

/// The HTTP methods of an OpenAPI path item.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Where the document declares `operation_id`: its path and method.
pub fn operation(doc: &Object, operation_id: &str) -> Option<(String, String)> {
    let paths = doc.get("paths")?.as_object()?;
    paths.iter().find_map(|(path, item)| {
        let item = item.as_object()?;
        METHODS.iter().find_map(|m| {
            let op = item.get(*m)?.as_object()?;
            (op.get("operationId")?.as_str()? == operation_id)
                .then(|| (path.clone(), m.to_ascii_uppercase()))
        })
    })
}

/// `transformRequestHeaders` / `transformResponseHeaders`: `(set, remove)`.
fn header_edits(section: &Object, at: &str) -> Result<Option<(Object, Vec<String>)>, Invalid> {
    served_only(section, at, &["enabled", "add", "remove"])?;
    if !enabled(section, at)? {
        return Ok(None);
    }
    let mut set = Object::new();
    match section.get("add") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("{at}.add[{i}]");
                let item = item
                    .as_object()
                    .ok_or_else(|| Invalid::new(&at, "must be {name, value}"))?;
                served_only(item, &at, &["name", "value"])?;
                let name = string(item, &at, "name")?
                    .ok_or_else(|| Invalid::new(format!("{at}.name"), "is required"))?;
                let value = string(item, &at, "value")?.unwrap_or_default();
                set.insert(name.to_owned(), value.into());
            }
        }
        Some(_) => {
            return Err(Invalid::new(
                format!("{at}.add"),
                "must be a list of {name, value}",
            ));
        }
    }
    Ok(Some((set, strings(section, at, "remove")?)))
}

/// The classic `CORS` section of `middleware.global.cors`.
fn cors(section: &Object, at: &str) -> Result<Value, Invalid> {
    served_only(
        section,
        at,
        &[
            "enabled",
            "allowedOrigins",
            "allowedMethods",
            "allowedHeaders",
            "exposedHeaders",
            "allowCredentials",
            "maxAge",
            "optionsPassthrough",
            "debug",
        ],
    )?;
    let max_age = match section.get("maxAge") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| Invalid::new(format!("{at}.maxAge"), "must be a number of seconds"))?,
    };
    Ok(json!({
        "enable": enabled(section, at)?,
        "allowed_origins": strings(section, at, "allowedOrigins")?,
        "allowed_methods": strings(section, at, "allowedMethods")?,
        "allowed_headers": strings(section, at, "allowedHeaders")?,
        "exposed_headers": strings(section, at, "exposedHeaders")?,
        "allow_credentials": boolean(section, at, "allowCredentials")?,
        "max_age": max_age,
        "options_passthrough": boolean(section, at, "optionsPassthrough")?,
        "debug": boolean(section, at, "debug")?,
    }))
}

/// The classic `cache_options` of `middleware.global.cache`.
fn cache(section: &Object, at: &str) -> Result<Value, Invalid> {
    served_only(
        section,
        at,
        &[
            "enabled",
            "timeout",
            "cacheAllSafeRequests",
            "cacheResponseCodes",
            "enableUpstreamCacheControl",
            "controlTTLHeaderName",
        ],
    )?;
    let timeout = match section.get("timeout") {
        None | Some(Value::Null) => 60,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| Invalid::new(format!("{at}.timeout"), "must be a number of seconds"))?,
    };
    let codes = match section.get("cacheResponseCodes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|c| {
                c.as_i64().ok_or_else(|| {
                    Invalid::new(
                        format!("{at}.cacheResponseCodes"),
                        "must be a list of status codes",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(Invalid::new(
                format!("{at}.cacheResponseCodes"),
                "must be a list of status codes",
            ));
        }
    };
    Ok(json!({
        "enable_cache": enabled(section, at)?,
        "cache_timeout": timeout,
        "cache_all_safe_requests": boolean(section, at, "cacheAllSafeRequests")?,
        "cache_response_codes": codes,
        "enable_upstream_cache_control": boolean(section, at, "enableUpstreamCacheControl")?,
        "cache_control_ttl_header": string(section, at, "controlTTLHeaderName")?.unwrap_or_default(),
    }))
}

/// The key's header, or OAuth 2.0, from `server.authentication`.
fn authentication(
    classic: &mut Object,
    root: &Object,
    auth: Option<&Object>,
    at: &str,
) -> Result<(), Invalid> {
    let Some(auth) = auth else {
        classic.insert("use_keyless".into(), true.into());
        return Ok(());
    };
    served_only(auth, at, &["enabled", "securitySchemes"])?;
    if !enabled(auth, at)? {
        classic.insert("use_keyless".into(), true.into());
        return Ok(());
    }
    let schemes_at = format!("{at}.securitySchemes");
    let schemes = object(auth, at, "securitySchemes")?
        .ok_or_else(|| Invalid::new(&schemes_at, "is required when authentication is enabled (which of the document's security schemes the gateway checks)"))?;
    let declared = root
        .get("components")
        .and_then(|c| c.get("securitySchemes"))
        .and_then(Value::as_object);
    let mut on = Vec::new();
    for (name, scheme) in schemes {
        let at = format!("{schemes_at}.{name}");
        let scheme = scheme
            .as_object()
            .ok_or_else(|| Invalid::new(&at, "must be an object"))?;
        let component = declared
            .and_then(|d| d.get(name))
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Invalid::new(
                    &at,
                    format!("names no security scheme of the document (components.securitySchemes.{name})"),
                )
            })?;
        if boolean(scheme, &at, "enabled")? {
            on.push((name, at, scheme, component));
        }
    }
    let [(name, at, scheme, component)] = on.as_slice() else {
        return Err(Invalid::new(
            &schemes_at,
            format!(
                "the gateway checks exactly one security scheme per API ({} enabled)",
                on.len()
            ),
        ));
    };
    let kind = component.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "apiKey" | "http" => {
            served_only(scheme, at, &["enabled", "header"])?;
            let header = match kind {
                "http"
                    if component
                        .get("scheme")
                        .and_then(Value::as_str)
                        .map(str::to_ascii_lowercase)
                        .as_deref()
                        == Some("bearer") =>
                {
                    "Authorization".to_owned()
                }
                "apiKey" if component.get("in").and_then(Value::as_str) == Some("header") => {
                    component
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("Authorization")
                        .to_owned()
                }
                _ => {
                    return Err(Invalid::new(
                        format!("components.securitySchemes.{name}"),
                        "the gateway reads keys from a header: an apiKey scheme `in: header`, or http `bearer`",
                    ));
                }
            };
            let header = match object(scheme, at, "header")? {
                Some(h) => {
                    served_only(h, &format!("{at}.header"), &["enabled", "name"])?;
                    string(h, &format!("{at}.header"), "name")?
                        .filter(|n| !n.is_empty())
                        .map_or(header, str::to_owned)
                }
                None => header,
            };
            classic.insert("auth".into(), json!({"auth_header_name": header}));
        }
        "oauth2" => {
            served_only(
                scheme,
                at,
                &[
                    "enabled",
                    "allowedAuthorizeTypes",
                    "authLoginRedirect",
                    "refreshToken",
                    "header",
                ],
            )?;
            let flows = component.get("flows").and_then(Value::as_object);
            let mut grants: Vec<&str> = Vec::new();
            for (flow, grant) in [
                ("clientCredentials", "client_credentials"),
                ("authorizationCode", "authorization_code"),
                ("password", "password"),
            ] {
                if flows.is_some_and(|f| f.contains_key(flow)) {
                    grants.push(grant);
                }
            }
            if boolean(scheme, at, "refreshToken")? {
                grants.push("refresh_token");
            }
            classic.insert("use_oauth2".into(), true.into());
            classic.insert(
                "oauth_meta".into(),
                json!({
                    "allowed_access_types": grants,
                    "allowed_authorize_types": strings(scheme, at, "allowedAuthorizeTypes")?,
                    "auth_login_redirect": string(scheme, at, "authLoginRedirect")?.unwrap_or_default(),
                }),
            );
        }
        other => {
            return Err(Invalid::new(
                format!("components.securitySchemes.{name}.type"),
                format!(
                    "{other:?}: the gateway serves apiKey (in a header), http bearer and oauth2 schemes"
                ),
            ));
        }
    }
    Ok(())
}

/// What `middleware.operations.<operationId>` may set.
const OPERATION_FIELDS: [&str; 7] = [
    "transformRequestHeaders",
    "transformResponseHeaders",
    "allow",
    "block",
    "ignoreAuthentication",
    "mockResponse",
    "validateRequest",
];

/// The classic definition an OAS document converts to, and the route the
/// gateway serves it with (the classic route, plus the operations' rules
/// the classic format has no place for).
pub fn compile(doc: &Value) -> Result<(ApiDefinition, Route), Invalid> {
    let def = to_classic(doc)?;
    let mut route = super::routes::compile(&def)?;
    let root = doc
        .as_object()
        .expect("to_classic() checked it is an object");
    let ops = extension(doc)?
        .get("middleware")
        .and_then(|m| m.get("operations"))
        .and_then(Value::as_object);
    let mut rules = Vec::new();
    for (id, op) in ops.into_iter().flatten() {
        let at = format!("{EXTENSION}.middleware.operations.{id}");
        let (path, method) = operation(root, id).ok_or_else(|| {
            Invalid::new(
                &at,
                format!("the document has no operation with operationId {id:?}"),
            )
        })?;
        let section = op
            .as_object()
            .ok_or_else(|| Invalid::new(&at, "must be an object"))?;
        if let Some(rule) = super::endpoints::rule(doc, (&path, &method), section, &at)? {
            rules.push(rule);
        }
    }
    if !rules.is_empty() {
        route.endpoints = Some(Arc::new(Endpoints::new(rules)));
        route.plan.with_endpoints();
    }
    Ok((def, route))
}

/// The classic definition an OAS document is served as.
pub fn to_classic(doc: &Value) -> Result<ApiDefinition, Invalid> {
    let x = extension(doc)?;
    let root = doc
        .as_object()
        .expect("extension() checked it is an object");
    check_document(root)?;
    let at = EXTENSION;
    served_only(x, at, &["info", "upstream", "server", "middleware"])?;
    let mut classic = Object::new();

    let info_at = format!("{at}.info");
    let info = object(x, at, "info")?.ok_or_else(|| Invalid::new(&info_at, "is required"))?;
    served_only(info, &info_at, &["id", "dbId", "orgId", "name", "state"])?;
    let name = string(info, &info_at, "name")?
        .ok_or_else(|| Invalid::new(format!("{info_at}.name"), "is required"))?;
    classic.insert("name".into(), name.into());
    classic.insert(
        "api_id".into(),
        string(info, &info_at, "id")?.unwrap_or_default().into(),
    );
    classic.insert(
        "org_id".into(),
        string(info, &info_at, "orgId")?.unwrap_or_default().into(),
    );
    let state_at = format!("{info_at}.state");
    let state = object(info, &info_at, "state")?
        .ok_or_else(|| Invalid::new(&state_at, "is required ({\"active\": true})"))?;
    served_only(state, &state_at, &["active"])?;
    classic.insert("active".into(), boolean(state, &state_at, "active")?.into());

    let up_at = format!("{at}.upstream");
    let upstream = object(x, at, "upstream")?.ok_or_else(|| Invalid::new(&up_at, "is required"))?;
    served_only(upstream, &up_at, &["url", "preserveHostHeader"])?;
    let url = string(upstream, &up_at, "url")?
        .ok_or_else(|| Invalid::new(format!("{up_at}.url"), "is required (the upstream's URL)"))?;
    let preserve = match object(upstream, &up_at, "preserveHostHeader")? {
        Some(p) => {
            served_only(p, &format!("{up_at}.preserveHostHeader"), &["enabled"])?;
            enabled(p, &format!("{up_at}.preserveHostHeader"))?
        }
        None => false,
    };

    let server_at = format!("{at}.server");
    let server = object(x, at, "server")?.ok_or_else(|| Invalid::new(&server_at, "is required"))?;
    served_only(server, &server_at, &["listenPath", "authentication"])?;
    let listen_at = format!("{server_at}.listenPath");
    let listen = object(server, &server_at, "listenPath")?
        .ok_or_else(|| Invalid::new(&listen_at, "is required ({\"value\": \"/pets/\"})"))?;
    served_only(listen, &listen_at, &["value", "strip"])?;
    let value = string(listen, &listen_at, "value")?
        .ok_or_else(|| Invalid::new(format!("{listen_at}.value"), "is required"))?;
    classic.insert(
        "proxy".into(),
        json!({"listen_path": value, "target_url": url,
            "strip_listen_path": boolean(listen, &listen_at, "strip")?,
            "preserve_host_header": preserve}),
    );
    authentication(
        &mut classic,
        root,
        object(server, &server_at, "authentication")?,
        &format!("{server_at}.authentication"),
    )?;

    let mut version = Object::new();
    version.insert("name".into(), "Default".into());
    let mut extended = Object::new();
    if let Some(mw) = object(x, at, "middleware")? {
        let mw_at = format!("{at}.middleware");
        served_only(mw, &mw_at, &["global", "operations"])?;
        if let Some(global) = object(mw, &mw_at, "global")? {
            let g_at = format!("{mw_at}.global");
            served_only(
                global,
                &g_at,
                &[
                    "cors",
                    "cache",
                    "transformRequestHeaders",
                    "transformResponseHeaders",
                    "contextVariables",
                ],
            )?;
            if let Some(c) = object(global, &g_at, "cors")? {
                classic.insert("CORS".into(), cors(c, &format!("{g_at}.cors"))?);
            }
            if let Some(c) = object(global, &g_at, "cache")? {
                classic.insert("cache_options".into(), cache(c, &format!("{g_at}.cache"))?);
            }
            for (key, set_field) in [
                ("transformRequestHeaders", "global_headers"),
                ("transformResponseHeaders", "global_response_headers"),
            ] {
                if let Some(t) = object(global, &g_at, key)?
                    && let Some((set, remove)) = header_edits(t, &format!("{g_at}.{key}"))?
                {
                    version.insert(set_field.into(), set.into());
                    version.insert(format!("{set_field}_remove"), json!(remove));
                }
            }
            if let Some(c) = object(global, &g_at, "contextVariables")? {
                let c_at = format!("{g_at}.contextVariables");
                served_only(c, &c_at, &["enabled"])?;
                classic.insert("enable_context_vars".into(), enabled(c, &c_at)?.into());
            }
        }
        if let Some(ops) = object(mw, &mw_at, "operations")? {
            let ops_at = format!("{mw_at}.operations");
            let (mut request, mut response) = (Vec::new(), Vec::new());
            for (id, op) in ops {
                let op_at = format!("{ops_at}.{id}");
                let op = op
                    .as_object()
                    .ok_or_else(|| Invalid::new(&op_at, "must be an object"))?;
                served_only(op, &op_at, &OPERATION_FIELDS)?;
                let (path, method) = operation(root, id).ok_or_else(|| {
                    Invalid::new(
                        &op_at,
                        format!("the document has no operation with operationId {id:?}"),
                    )
                })?;
                for (key, into) in [
                    ("transformRequestHeaders", &mut request),
                    ("transformResponseHeaders", &mut response),
                ] {
                    if let Some(t) = object(op, &op_at, key)?
                        && let Some((set, remove)) = header_edits(t, &format!("{op_at}.{key}"))?
                    {
                        into.push(json!({"path": path, "method": method,
                            "add_headers": set, "delete_headers": remove}));
                    }
                }
            }
            if !request.is_empty() {
                extended.insert("transform_headers".into(), request.into());
            }
            if !response.is_empty() {
                extended.insert("transform_response_headers".into(), response.into());
            }
        }
    }
    if !extended.is_empty() {
        version.insert("extended_paths".into(), extended.into());
    }
    classic.insert(
        "version_data".into(),
        json!({"not_versioned": true, "default_version": "Default",
            "versions": {"Default": version}}),
    );
    serde_json::from_value(Value::Object(classic))
        .map_err(|e| Invalid::new(EXTENSION, format!("does not convert to a definition: {e}")))
}

/// The document without the extension (`mode=public`).
pub fn public(doc: &Value) -> Value {
    let mut doc = doc.clone();
    if let Some(root) = doc.as_object_mut() {
        root.remove(EXTENSION);
    }
    doc
}

/// The document with the extension's `info.id` set (what a `POST` without
/// one, or an import, is stored as).
pub fn with_id(mut doc: Value, api_id: &str) -> Value {
    if let Some(info) = doc
        .get_mut(EXTENSION)
        .and_then(|x| x.as_object_mut())
        .map(|x| x.entry("info").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    {
        info.insert("id".into(), api_id.into());
    }
    doc
}

/// The query parameters of `POST /tyk/apis/oas/import` and `PATCH
/// /tyk/apis/oas/{apiID}`: each given one changes the extension.
#[derive(Clone, Debug, Default)]
pub struct Params {
    /// `listenPath`.
    pub listen_path: Option<String>,
    /// `upstreamURL`.
    pub upstream: Option<String>,
    /// `authentication`: check the document's security requirement.
    pub authentication: Option<bool>,
    /// `allowList`: every operation allowed (and only those).
    pub allow_list: Option<bool>,
    /// `validateRequest`: every operation with a JSON request body validated.
    pub validate_request: Option<bool>,
    /// `mockResponse`: every operation with a JSON 200 answer mocked from
    /// its examples.
    pub mock_response: Option<bool>,
}

/// The operations of `doc` with an `operationId`: (id, operation).
fn operations(doc: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for item in doc
        .get("paths")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|p| p.values())
    {
        for m in METHODS {
            if let Some(op) = item.get(m)
                && let Some(id) = op.get("operationId").and_then(Value::as_str)
            {
                out.push((id.to_owned(), op.clone()));
            }
        }
    }
    out
}

/// Applies `p` to the extension of `doc` (which has one).
pub fn apply(doc: &mut Value, p: &Params) -> Result<(), Invalid> {
    let requirement: Vec<String> = doc
        .get("security")
        .and_then(Value::as_array)
        .and_then(|s| s.first())
        .and_then(Value::as_object)
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default();
    let ops = operations(doc);
    let x = doc
        .get_mut(EXTENSION)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Invalid::new(EXTENSION, "the payload should contain x-tyk-api-gateway"))?;
    if let Some(listen) = p.listen_path.as_deref().filter(|l| !l.is_empty()) {
        x.entry("server").or_insert_with(|| json!({}))["listenPath"] =
            json!({"value": listen, "strip": true});
    }
    if let Some(url) = p.upstream.as_deref().filter(|u| !u.is_empty()) {
        x.entry("upstream").or_insert_with(|| json!({}))["url"] = json!(url);
    }
    if let Some(on) = p.authentication {
        if on && requirement.is_empty() {
            return Err(Invalid::new(
                "authentication",
                "the document has no security requirement to check",
            ));
        }
        let schemes: Object = requirement
            .iter()
            .map(|name| (name.clone(), json!({"enabled": true})))
            .collect();
        x.entry("server").or_insert_with(|| json!({}))["authentication"] = if on {
            json!({"enabled": true, "securitySchemes": schemes})
        } else {
            json!({"enabled": false})
        };
    }
    let mw = x.entry("middleware").or_insert_with(|| json!({}));
    for (id, op) in &ops {
        let section = &mut mw["operations"][id.as_str()];
        if let Some(on) = p.allow_list {
            section["allow"] = json!({"enabled": on});
        }
        let json_body = op
            .get("requestBody")
            .and_then(|b| b.get("content"))
            .and_then(Value::as_object)
            .is_some_and(|c| c.keys().any(|ct| super::validate::is_json(Some(ct))));
        if let Some(on) = p.validate_request
            && json_body
        {
            section["validateRequest"] = json!({"enabled": on});
        }
        let json_answer = op
            .get("responses")
            .and_then(|r| r.get("200"))
            .and_then(|r| r.get("content"))
            .is_some_and(|c| c.get("application/json").is_some());
        if let Some(on) = p.mock_response
            && json_answer
        {
            section["mockResponse"] = json!({"enabled": on, "fromOASExamples": {"enabled": on}});
        }
        if section.as_object().is_none_or(Map::is_empty) {
            mw["operations"].as_object_mut().map(|o| o.remove(id));
        }
    }
    if mw
        .get("operations")
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
    {
        mw.as_object_mut().map(|m| m.remove("operations"));
    }
    if mw.as_object().is_some_and(Map::is_empty) {
        x.remove("middleware");
    }
    Ok(())
}

/// A plain OpenAPI document made a Tyk OAS API, as Tyk's import makes it:
/// named by its `info.title`, served on `listenPath` (default `/`,
/// stripped) from `upstreamURL` (default: the document's first server
/// URL), its first security requirement's schemes checked unless
/// `authentication=false`, and the other parameters applied ([`apply`]).
pub fn imported(doc: Value, api_id: &str, p: &Params) -> Result<Value, Invalid> {
    let mut doc = doc;
    let root = doc
        .as_object_mut()
        .ok_or_else(|| Invalid::new("body", "must be an OpenAPI document (a JSON object)"))?;
    let title = root
        .get("info")
        .and_then(|i| i.get("title"))
        .and_then(Value::as_str)
        .unwrap_or(api_id)
        .to_owned();
    let server = root
        .get("servers")
        .and_then(Value::as_array)
        .and_then(|s| s.first())
        .and_then(|s| s.get("url"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let upstream = p
        .upstream
        .clone()
        .filter(|u| !u.is_empty())
        .or(server)
        .ok_or_else(|| {
            Invalid::new(
                "upstreamURL",
                "is required: the document has no servers to take the upstream from",
            )
        })?;
    let has_security = root
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    root.insert(
        EXTENSION.into(),
        json!({
            "info": {"id": api_id, "name": title, "state": {"active": true}},
            "upstream": {"url": upstream},
            "server": {"listenPath": {"value": "/", "strip": true}},
        }),
    );
    let params = Params {
        authentication: Some(p.authentication.unwrap_or(has_security)),
        ..p.clone()
    };
    apply(&mut doc, &params)?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::routes::compile;

    /// A Petstore-like document served with a header key.
    pub(crate) fn petstore() -> Value {
        json!({
            "openapi": "3.0.3",
            "info": {"title": "Petstore", "version": "1.0.0"},
            "paths": {
                "/pets": {"get": {"operationId": "listPets", "responses": {"200": {"description": "pets"}}}},
                "/pets/{petId}": {"get": {"operationId": "showPet", "responses": {"200": {"description": "a pet"}}}}
            },
            "components": {"securitySchemes": {"api_key": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}}},
            "security": [{"api_key": []}],
            "x-vendor": {"kept": true},
            "x-tyk-api-gateway": {
                "info": {"id": "pets", "name": "Pets", "orgId": "acme", "state": {"active": true}},
                "upstream": {"url": "http://127.0.0.1:9"},
                "server": {"listenPath": {"value": "/pets/", "strip": true},
                    "authentication": {"enabled": true, "securitySchemes": {"api_key": {"enabled": true}}}},
                "middleware": {
                    "global": {"cors": {"enabled": true, "allowedOrigins": ["https://app.example"]},
                        "transformRequestHeaders": {"enabled": true, "add": [{"name": "X-From", "value": "gw"}], "remove": ["X-Drop"]}},
                    "operations": {"showPet": {"transformResponseHeaders": {"enabled": true, "add": [{"name": "X-Pet", "value": "1"}]}}}
                }
            }
        })
    }

    #[test]
    fn an_oas_api_converts_to_the_classic_definition_it_is_served_as() {
        let def = to_classic(&petstore()).unwrap();
        assert_eq!(
            (def.api_id.as_str(), def.name.as_str(), def.org_id.as_str()),
            ("pets", "Pets", "acme")
        );
        assert!(def.active && !def.use_keyless);
        assert_eq!(def.auth.auth_header_name, "X-Api-Key");
        assert_eq!(def.proxy.listen_path, "/pets/");
        assert!(def.proxy.strip_listen_path);
        assert_eq!(
            def.other["CORS"]["allowed_origins"],
            json!(["https://app.example"])
        );
        let v = &def.version_data.versions["Default"].other;
        assert_eq!(v["global_headers"], json!({"X-From": "gw"}));
        assert_eq!(
            v["extended_paths"]["transform_response_headers"][0]["path"],
            "/pets/{petId}"
        );
        assert_eq!(
            v["extended_paths"]["transform_response_headers"][0]["method"],
            "GET"
        );
        let route = compile(&def).unwrap();
        assert!(route.cors.is_some() && route.transforms.is_some());
        assert_eq!(public(&petstore()).get(EXTENSION), None);
        assert_eq!(public(&petstore())["x-vendor"], json!({"kept": true}));
    }

    #[test]
    fn fields_the_gateway_does_not_serve_are_refused_by_name() {
        let refused = |patch: &dyn Fn(&mut Value), field: &str| {
            let mut doc = petstore();
            patch(&mut doc);
            let e = to_classic(&doc).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        };
        refused(
            &|d| {
                d["x-tyk-api-gateway"]["server"]["customDomain"] = json!({"enabled": true});
            },
            "x-tyk-api-gateway.server.customDomain",
        );
        refused(
            &|d| {
                d["x-tyk-api-gateway"]["middleware"]["operations"]["showPet"]["rateLimit"] =
                    json!({"enabled": true});
            },
            "x-tyk-api-gateway.middleware.operations.showPet.rateLimit",
        );
        refused(
            &|d| {
                d["x-tyk-api-gateway"]["middleware"]["operations"]["nope"] = json!({});
            },
            "x-tyk-api-gateway.middleware.operations.nope",
        );
        refused(
            &|d| {
                d["x-tyk-api-gateway"]["server"]["authentication"]["securitySchemes"]["other"] =
                    json!({"enabled": true});
            },
            "x-tyk-api-gateway.server.authentication.securitySchemes.other",
        );
        refused(
            &|d| {
                d["components"]["securitySchemes"]["api_key"]["in"] = json!("query");
            },
            "components.securitySchemes.api_key",
        );
        refused(
            &|d| {
                d.as_object_mut().unwrap().remove("x-tyk-api-gateway");
            },
            "x-tyk-api-gateway",
        );
        refused(
            &|d| {
                d["openapi"] = json!("2.0");
            },
            "openapi",
        );
        refused(
            &|d| {
                d["x-tyk-api-gateway"]["info"]["state"] = json!({"active": "yes"});
            },
            "x-tyk-api-gateway.info.state.active",
        );
        // Vendor extensions anywhere are kept.
        let mut doc = petstore();
        doc["x-tyk-api-gateway"]["server"]["x-team"] = json!("blue");
        assert!(to_classic(&doc).is_ok());
    }

    #[test]
    fn authentication_off_is_keyless_and_oauth2_schemes_are_oauth() {
        let mut doc = petstore();
        doc["x-tyk-api-gateway"]["server"]["authentication"]["enabled"] = json!(false);
        assert!(to_classic(&doc).unwrap().use_keyless);
        let mut doc = petstore();
        doc["components"]["securitySchemes"] = json!({"oauth": {"type": "oauth2",
            "flows": {"clientCredentials": {"tokenUrl": "/pets/oauth/token", "scopes": {}}}}});
        doc["x-tyk-api-gateway"]["server"]["authentication"]["securitySchemes"] = json!({"oauth": {"enabled": true, "refreshToken": true, "allowedAuthorizeTypes": ["code"],
                "authLoginRedirect": "https://login.example"}});
        let def = to_classic(&doc).unwrap();
        assert_eq!(def.other["use_oauth2"], true);
        assert_eq!(
            def.other["oauth_meta"]["allowed_access_types"],
            json!(["client_credentials", "refresh_token"])
        );
        assert!(compile(&def).unwrap().oauth.is_some());
        let mut bearer = petstore();
        bearer["components"]["securitySchemes"]["api_key"] =
            json!({"type": "http", "scheme": "bearer"});
        assert_eq!(
            to_classic(&bearer).unwrap().auth.auth_header_name,
            "Authorization"
        );
    }

    #[test]
    fn imports_take_the_title_the_first_server_and_the_security_requirement() {
        let mut plain = public(&petstore());
        plain["servers"] = json!([{"url": "http://pets.internal:8080"}]);
        let p = |listen: Option<&str>, up: Option<&str>, auth: Option<bool>| Params {
            listen_path: listen.map(str::to_owned),
            upstream: up.map(str::to_owned),
            authentication: auth,
            ..Params::default()
        };
        let doc = imported(plain.clone(), "imp", &p(Some("/imported/"), None, None)).unwrap();
        let def = to_classic(&doc).unwrap();
        assert_eq!(
            (def.api_id.as_str(), def.name.as_str()),
            ("imp", "Petstore")
        );
        assert_eq!(def.proxy.target_url, "http://pets.internal:8080");
        assert_eq!(def.auth.auth_header_name, "X-Api-Key");
        assert!(!def.use_keyless);
        let open = imported(
            plain.clone(),
            "imp",
            &p(None, Some("http://other:1"), Some(false)),
        )
        .unwrap();
        let def = to_classic(&open).unwrap();
        assert!(def.use_keyless);
        assert_eq!(
            (
                def.proxy.listen_path.as_str(),
                def.proxy.target_url.as_str()
            ),
            ("/", "http://other:1")
        );
        let everything = Params {
            allow_list: Some(true),
            ..p(None, Some("http://other:1"), Some(false))
        };
        let allowed = imported(plain.clone(), "imp", &everything).unwrap();
        let (_, route) = super::compile(&allowed).unwrap();
        let endpoints = route.endpoints.unwrap();
        assert!(endpoints.decide("GET", "/pets").is_ok());
        assert!(
            endpoints.decide("DELETE", "/pets").is_err(),
            "only the document's operations"
        );
        plain.as_object_mut().unwrap().remove("servers");
        assert_eq!(
            imported(plain, "imp", &p(None, None, None))
                .unwrap_err()
                .field,
            "upstreamURL"
        );
    }

    #[test]
    fn the_published_schema_describes_what_is_served() {
        let schema: Value = serde_json::from_str(EXTENSION_SCHEMA).unwrap();
        let v = jsonschema::draft7::new(&schema).unwrap();
        let doc = petstore();
        assert!(
            v.is_valid(&doc[EXTENSION]),
            "{:?}",
            v.validate(&doc[EXTENSION]).err()
        );
        let mut unserved = doc[EXTENSION].clone();
        unserved["server"]["customDomain"] = json!({"enabled": true});
        assert!(
            !v.is_valid(&unserved),
            "what the gateway refuses, the schema refuses"
        );
        assert!(
            to_classic(&{
                let mut d = doc.clone();
                d[EXTENSION] = unserved;
                d
            })
            .is_err()
        );
    }

    #[test]
    fn ids_are_set_in_the_extension() {
        let doc = with_id(petstore(), "new-id");
        assert_eq!(doc[EXTENSION]["info"]["id"], "new-id");
        assert_eq!(
            operation(doc.as_object().unwrap(), "listPets"),
            Some(("/pets".into(), "GET".into()))
        );
    }
}
