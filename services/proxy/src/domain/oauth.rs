//! OAuth 2.0 on an API with `use_oauth2`, as Tyk runs it (Tyk builds on
//! the osin library): the token endpoint (`{listen_path}/oauth/token`),
//! the authorization endpoint that sends a user to the API owner's login
//! page (`{listen_path}/oauth/authorize`), and the endpoint that page calls
//! with the Gateway API secret once the user approved
//! (`{listen_path}/tyk/oauth/authorize-client/`). Decided here without
//! I/O, against this replica's view of clients, tokens and keys; issuing
//! (recording the hashes in `KEYS` through key-issuer) is the adapter's.
//!
//! Errors have RFC 6749's shape (`{"error", "error_description"}`) with
//! Tyk's status, 403, for every OAuth error; the authorization endpoint
//! answers Tyk's `{"status": "error", "message"}` instead, as Tyk does.

use std::collections::BTreeMap;

use meridian_keys::{KeysState, hash_secret, same_bytes, secret_matches};
use serde_json::{Map, Value};

use super::Invalid;
use super::apidef::ApiDefinition;

/// A grant the token endpoint serves (`oauth_meta.allowed_access_types`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// `authorization_code`.
    AuthorizationCode,
    /// `refresh_token`.
    RefreshToken,
    /// `client_credentials`.
    ClientCredentials,
    /// `password` (the user is a basic-auth key of the API's organisation).
    Password,
}

impl Grant {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "authorization_code" => Self::AuthorizationCode,
            "refresh_token" => Self::RefreshToken,
            "client_credentials" => Self::ClientCredentials,
            "password" => Self::Password,
            _ => return None,
        })
    }
}

/// What the authorization endpoints hand out (`oauth_meta.allowed_authorize_types`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseType {
    /// `code`: an authorization code, exchanged at the token endpoint.
    Code,
    /// `token`: an access token at once (the implicit grant).
    Token,
}

/// An API's OAuth settings, compiled from its definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuth {
    /// Grants the token endpoint serves.
    pub grants: Vec<Grant>,
    /// What the authorization endpoints hand out.
    pub response_types: Vec<ResponseType>,
    /// `oauth_meta.auth_login_redirect`: the API owner's login page.
    pub login_redirect: String,
    /// The definition's `session_lifetime` (seconds), when set: how long
    /// its access tokens live instead of the gateway's default.
    pub token_lifetime_s: Option<i64>,
}

impl OAuth {
    /// Refresh tokens are issued (with every grant but
    /// `client_credentials`) only when the API serves the refresh grant.
    pub fn issues_refresh_tokens(&self) -> bool {
        self.grants.contains(&Grant::RefreshToken)
    }
}

fn strings(meta: Option<&Map<String, Value>>, name: &str) -> Result<Vec<String>, Invalid> {
    meta.map_or(Ok(Vec::new()), |m| {
        super::oas::strings(m, "oauth_meta", name)
    })
}

/// The OAuth settings of a definition with `use_oauth2` (`None` without),
/// or the 400 naming the field Meridian cannot serve.
pub fn compile(def: &ApiDefinition) -> Result<Option<OAuth>, Invalid> {
    let on = def.other.get("use_oauth2").and_then(Value::as_bool);
    if on != Some(true) {
        return Ok(None);
    }
    let meta = match def.other.get("oauth_meta") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => return Err(Invalid::new("oauth_meta", "must be an object")),
    };
    let grants = strings(meta, "allowed_access_types")?
        .iter()
        .map(|g| {
            Grant::parse(g).ok_or_else(|| {
                Invalid::new(
                    "oauth_meta.allowed_access_types",
                    format!(
                        "{g:?} is not a grant the gateway issues tokens for \
                         (authorization_code, refresh_token, client_credentials, password)"
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let response_types = strings(meta, "allowed_authorize_types")?
        .iter()
        .map(|t| match t.as_str() {
            "code" => Ok(ResponseType::Code),
            "token" => Ok(ResponseType::Token),
            other => Err(Invalid::new(
                "oauth_meta.allowed_authorize_types",
                format!("{other:?} is not code or token"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let login_redirect = match meta.and_then(|m| m.get("auth_login_redirect")) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(Invalid::new(
                "oauth_meta.auth_login_redirect",
                "must be a URL (a string)",
            ));
        }
    };
    let keychange = def
        .other
        .get("notifications")
        .and_then(|n| n.get("oauth_on_keychange_url"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !keychange.is_empty() {
        return Err(Invalid::new(
            "notifications.oauth_on_keychange_url",
            "the gateway does not send OAuth key-change notifications; leave it empty",
        ));
    }
    let token_lifetime_s = def
        .other
        .get("session_lifetime")
        .and_then(Value::as_i64)
        .filter(|s| *s > 0);
    Ok(Some(OAuth {
        grants,
        response_types,
        login_redirect,
        token_lifetime_s,
    }))
}

/// The OAuth endpoints under a listen path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/oauth/token`.
    Token,
    /// `/oauth/authorize`.
    Authorize,
    /// `/tyk/oauth/authorize-client/`.
    AuthorizeClient,
}

/// The endpoint `rest` (the path after the listen path) names, if any.
pub fn endpoint(rest: &str) -> Option<Endpoint> {
    match rest.strip_suffix('/').unwrap_or(rest) {
        "/oauth/token" => Some(Endpoint::Token),
        "/oauth/authorize" => Some(Endpoint::Authorize),
        "/tyk/oauth/authorize-client" => Some(Endpoint::AuthorizeClient),
        _ => None,
    }
}

/// A request's parameters: the body's (a form, or a JSON object of
/// strings as Tyk also takes) before the query string's, the first of a
/// name winning (Go's `FormValue`).
#[derive(Clone, Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Parses a body of `content_type` and a query string.
    pub fn parse(
        content_type: Option<&str>,
        body: &[u8],
        query: Option<&str>,
    ) -> Result<Self, Error> {
        let mut pairs = Vec::new();
        let json = content_type.is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if json && !body.is_empty() {
            let object: BTreeMap<String, String> = serde_json::from_slice(body).map_err(|e| {
                Error::invalid_request(format!("the JSON body is not an object of strings: {e}"))
            })?;
            pairs.extend(object);
        } else {
            pairs.extend(form_urlencoded::parse(body).into_owned());
        }
        if let Some(q) = query {
            pairs.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        Ok(Self(pairs))
    }

    /// The first value of `name`, or `""`.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// An OAuth error: RFC 6749's code and a description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// `invalid_request`, `unauthorized_client`, ...
    pub error: &'static str,
    /// What went wrong.
    pub description: String,
    /// The redirect URI the error goes back to, once it is known good.
    pub redirect: Option<String>,
    /// The request's `state`.
    pub state: String,
}

impl Error {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            description: description.into(),
            redirect: None,
            state: String::new(),
        }
    }

    /// `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new("invalid_request", description)
    }

    fn unauthorized_client(description: impl Into<String>) -> Self {
        Self::new("unauthorized_client", description)
    }

    fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new("invalid_grant", description)
    }

    /// `invalid_grant` for a code or refresh token already used (decided
    /// by key-issuer when it is redeemed).
    pub fn grant_used() -> Self {
        Self::invalid_grant(
            "the code or refresh token is unknown, expired, already used or another client's",
        )
    }

    /// `temporarily_unavailable`: the token could not be recorded.
    pub fn unavailable(description: impl Into<String>) -> Self {
        Self::new("temporarily_unavailable", description)
    }

    /// The body: `error`, `error_description`, `state` when given, and
    /// `redirect_to` (the redirect URI carrying the error) when known.
    pub fn body(&self) -> Value {
        let mut out = Map::new();
        out.insert("error".into(), self.error.into());
        out.insert("error_description".into(), self.description.clone().into());
        if !self.state.is_empty() {
            out.insert("state".into(), self.state.clone().into());
        }
        if let Some(redirect) = &self.redirect {
            let params: Vec<(&str, &str)> = out
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
                .collect();
            let to = with_params(redirect, &params, false);
            out.insert("redirect_to".into(), to.into());
        }
        Value::Object(out)
    }
}

/// `redirect` with `params` added to its query (or, with `fragment`, as
/// its fragment: the implicit grant's answer).
pub fn with_params(redirect: &str, params: &[(&str, &str)], fragment: bool) -> String {
    let Ok(mut url) = url::Url::parse(redirect) else {
        return redirect.to_owned();
    };
    url.set_fragment(None);
    if fragment {
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        url.set_fragment(Some(&encoded));
    } else {
        url.query_pairs_mut().extend_pairs(params);
    }
    url.to_string()
}

/// Whether `redirect` is `base` or below it (osin's rule: same scheme
/// and host, the same path or one under it, no `..`).
pub fn redirect_allowed(base: &str, redirect: &str) -> bool {
    if base == redirect {
        return true;
    }
    let (Ok(base), Ok(redirect)) = (url::Url::parse(base), url::Url::parse(redirect)) else {
        return false;
    };
    if redirect.fragment().is_some()
        || base.scheme() != redirect.scheme()
        || base.host_str() != redirect.host_str()
        || base.port_or_known_default() != redirect.port_or_known_default()
    {
        return false;
    }
    if base.path() == redirect.path() {
        return true;
    }
    let prefix = format!("{}/", base.path().trim_end_matches('/'));
    redirect
        .path()
        .strip_prefix(&prefix)
        .is_some_and(|rest| rest.split('/').all(|s| s != ".." && s != "%2e%2e"))
}

/// The client authenticated by a request: HTTP Basic (`client_id:secret`,
/// each URL-encoded, RFC 6749 2.3.1), or else the form's `client_id` and
/// `client_secret`.
pub fn client_auth(authorization: Option<&str>, form: &Form) -> Result<(String, String), Error> {
    if let Some(value) = authorization {
        let basic = value
            .split_once(' ')
            .filter(|(scheme, _)| *scheme == "Basic")
            .map(|(_, b)| b.trim())
            .ok_or_else(|| {
                Error::invalid_request("the Authorization header is not Basic client credentials")
            })?;
        let decoded = decode_base64(basic)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                Error::invalid_request("the Basic credentials are not base64 of UTF-8")
            })?;
        let (id, secret) = decoded.split_once(':').ok_or_else(|| {
            Error::invalid_request("the Basic credentials are not client_id:client_secret")
        })?;
        let unescape = |s: &str| {
            percent_decode(s)
                .ok_or_else(|| Error::invalid_request("the Basic credentials are not URL-encoded"))
        };
        return Ok((unescape(id)?, unescape(secret)?));
    }
    let (id, secret) = (form.get("client_id"), form.get("client_secret"));
    if id.is_empty() || secret.is_empty() {
        return Err(Error::invalid_request("Client authentication not sent"));
    }
    Ok((id.to_owned(), secret.to_owned()))
}

fn percent_decode(s: &str) -> Option<String> {
    // The query-string decoder: `+` is a space, as Go's QueryUnescape.
    let joined = format!("v={s}");
    form_urlencoded::parse(joined.as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

/// Standard base64 (with or without padding).
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
        .ok()
}

/// A client of the API, checked as osin checks it: it exists and belongs
/// to the API, and it has a redirect URI. `secret`: checked when given.
fn client_of<'a>(
    keys: &'a KeysState,
    api_id: &str,
    client_id: &str,
    secret: Option<&str>,
) -> Result<&'a meridian_keys::OAuthClient, Error> {
    let client = keys
        .client(client_id)
        .filter(|c| keys.client_apis(&c.value).iter().any(|a| a == api_id))
        .ok_or_else(|| Error::unauthorized_client("no such client for this API"))?;
    if let Some(secret) = secret
        && !secret_matches(secret, &client.value.secret_hash)
    {
        return Err(Error::unauthorized_client(
            "the client secret does not match",
        ));
    }
    if client.value.redirect_uri.is_empty() {
        return Err(Error::unauthorized_client(
            "the client has no redirect_uri (Tyk requires one for every grant)",
        ));
    }
    Ok(&client.value)
}

/// What a token request is granted, decided; the adapter issues it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// The client.
    pub client_id: String,
    /// SHA-256 (hex) of the code or refresh token exchanged, if any.
    pub redeem: Option<String>,
    /// SHA-256 (hex) of the user key whose session the token carries
    /// (password grant, and refreshes of its tokens); empty: the client's policy.
    pub key_hash: String,
    /// A refresh token goes with the access token.
    pub refresh: bool,
}

/// Decides a token request (`POST {listen_path}/oauth/token`).
pub fn token_request(
    keys: &KeysState,
    api: (&str, &str),
    oauth: &OAuth,
    authorization: Option<&str>,
    form: &Form,
    now_ms: i64,
) -> Result<Issue, Error> {
    let (api_id, org_id) = api;
    let grant = Grant::parse(form.get("grant_type"))
        .filter(|g| oauth.grants.contains(g))
        .ok_or_else(|| {
            Error::new(
                "unsupported_grant_type",
                "The authorization grant type is not supported by the authorization server.",
            )
        })?;
    let (client_id, secret) = client_auth(authorization, form)?;
    let needed = match grant {
        Grant::AuthorizationCode => ["code", ""],
        Grant::RefreshToken => ["refresh_token", ""],
        Grant::Password => ["username", "password"],
        Grant::ClientCredentials => ["", ""],
    };
    for name in needed.into_iter().filter(|n| !n.is_empty()) {
        if form.get(name).is_empty() {
            return Err(Error::invalid_grant(format!("{name} is required")));
        }
    }
    let client = client_of(keys, api_id, &client_id, Some(&secret))?;
    let refresh = oauth.issues_refresh_tokens() && grant != Grant::ClientCredentials;
    let mut issue = Issue {
        client_id: client_id.clone(),
        redeem: None,
        key_hash: String::new(),
        refresh,
    };
    match grant {
        Grant::ClientCredentials => {}
        Grant::AuthorizationCode => {
            let hash = hash_secret(form.get("code"));
            let code = keys
                .code(&hash)
                .map(|c| &c.value)
                .filter(|c| c.client_id == client_id && c.expires_ms > now_ms)
                .ok_or_else(Error::grant_used)?;
            let asked = match form.get("redirect_uri") {
                "" => client.redirect_uri.as_str(),
                uri => uri,
            };
            if !redirect_allowed(&client.redirect_uri, asked) || asked != code.redirect_uri {
                return Err(Error::invalid_request(
                    "redirect_uri is not the one the code was issued for",
                ));
            }
            issue.redeem = Some(hash);
        }
        Grant::RefreshToken => {
            let hash = hash_secret(form.get("refresh_token"));
            let token = keys
                .token(&hash)
                .map(|t| &t.value)
                .filter(|t| t.refresh && t.client_id == client_id && t.expires_ms > now_ms)
                .ok_or_else(Error::grant_used)?;
            issue.key_hash.clone_from(&token.key_hash);
            issue.redeem = Some(hash);
        }
        Grant::Password => {
            let user = format!("{org_id}{}", form.get("username"));
            let key_hash = hash_secret(&user);
            let known = keys
                .key(&key_hash)
                .is_some_and(|k| password_matches(&k.value.other, form.get("password")));
            if !known {
                return Err(Error::new(
                    "access_denied",
                    "The resource owner or authorization server denied the request.",
                ));
            }
            issue.key_hash = key_hash;
        }
    }
    if issue.key_hash.is_empty() && client.policy_id.is_empty() {
        return Err(Error::unauthorized_client(
            "the client has no policy_id: its tokens would carry no access rights",
        ));
    }
    Ok(issue)
}

/// A basic-auth user's password against its key's `basic_auth_data`
/// (`hash`: `bcrypt`, or empty / `plaintext` for a password kept as sent).
fn password_matches(session_other: &Map<String, Value>, password: &str) -> bool {
    let Some(data) = session_other
        .get("basic_auth_data")
        .and_then(Value::as_object)
    else {
        return false;
    };
    let stored = data.get("password").and_then(Value::as_str).unwrap_or("");
    if stored.is_empty() {
        return false;
    }
    match data.get("hash_type").and_then(Value::as_str).unwrap_or("") {
        "bcrypt" => bcrypt::verify(password, stored).unwrap_or(false),
        "" | "plaintext" => same_bytes(stored.as_bytes(), password.as_bytes()),
        _ => false,
    }
}

/// An authorization request checked (`/oauth/authorize` and
/// `/tyk/oauth/authorize-client/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The client.
    pub client_id: String,
    /// Where the answer goes.
    pub redirect_uri: String,
    /// What is asked for.
    pub response_type: ResponseType,
    /// The request's `state`, returned as given.
    pub state: String,
}

/// Checks an authorization request as osin does: the client exists for
/// this API and has a redirect URI; the `redirect_uri` asked (the
/// client's when none) is the client's or below it; the `response_type`
/// is one the API allows.
pub fn authorize_request(
    keys: &KeysState,
    api_id: &str,
    oauth: &OAuth,
    form: &Form,
) -> Result<Authorization, Error> {
    let state = form.get("state").to_owned();
    let with_state = |mut e: Error| {
        e.state.clone_from(&state);
        e
    };
    let client = client_of(keys, api_id, form.get("client_id"), None).map_err(with_state)?;
    let asked = match form.get("redirect_uri") {
        "" => client.redirect_uri.clone(),
        uri => uri.to_owned(),
    };
    if !redirect_allowed(&client.redirect_uri, &asked) {
        return Err(with_state(Error::invalid_request(
            "redirect_uri is not the client's",
        )));
    }
    let response_type = match form.get("response_type") {
        "code" => Some(ResponseType::Code),
        "token" => Some(ResponseType::Token),
        _ => None,
    }
    .filter(|t| oauth.response_types.contains(t))
    .ok_or_else(|| {
        let mut e = with_state(Error::new(
            "unsupported_response_type",
            "The authorization server does not support obtaining a token using this method.",
        ));
        e.redirect = Some(asked.clone());
        e
    })?;
    if response_type == ResponseType::Token && client.policy_id.is_empty() {
        return Err(with_state(Error::unauthorized_client(
            "the client has no policy_id: its tokens would carry no access rights",
        )));
    }
    Ok(Authorization {
        client_id: client.client_id.clone(),
        redirect_uri: asked,
        response_type,
        state,
    })
}

/// How long an authorization code lives (osin's default, Tyk's).
pub const CODE_LIFETIME_MS: i64 = 250_000;

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_schemas::keys::{KeysEvent, TokenRecord};
    use serde_json::json;
    use uuid::Uuid;

    fn oauth(grants: &[Grant]) -> OAuth {
        OAuth {
            grants: grants.to_vec(),
            response_types: vec![ResponseType::Code],
            login_redirect: "https://login.example/approve".into(),
            token_lifetime_s: None,
        }
    }

    /// A view with the policy `gold` (granting `pets`), the client `app`
    /// (secret `s3cret`) of `pets`, and the basic-auth user `ada` of org `o1`.
    fn view() -> KeysState {
        let mut state = KeysState::default();
        let events = [
            KeysEvent::PolicySaved {
                policy_id: "gold".into(),
                policy: json!({"id": "gold", "rate": 10, "per": 1,
                    "access_rights": {"pets": {"api_id": "pets", "versions": ["Default"]}}})
                .to_string(),
                created: true,
                change_id: Uuid::new_v4(),
                at_ms: 0,
            },
            KeysEvent::ClientSaved {
                client_id: "app".into(),
                client: json!({"client_id": "app", "secret_hash": hash_secret("s3cret"),
                    "redirect_uri": "https://app.example/cb", "api_id": "pets",
                    "policy_id": "gold", "meta_data": {"team": "blue"}})
                .to_string(),
                created: true,
                rotated: false,
                change_id: Uuid::new_v4(),
                at_ms: 0,
            },
            KeysEvent::KeySaved {
                key_hash: hash_secret("o1ada"),
                session: json!({"org_id": "o1", "apply_policies": ["gold"],
                    "basic_auth_data": {"password": "pw", "hash_type": ""}})
                .to_string(),
                created: true,
                change_id: Uuid::new_v4(),
                at_ms: 0,
            },
        ];
        for (i, e) in events.iter().enumerate() {
            state.apply(e, i as u64 + 1).unwrap();
        }
        state
    }

    fn form(s: &str) -> Form {
        Form::parse(None, s.as_bytes(), None).unwrap()
    }

    const BASIC: &str = "Basic YXBwOnMzY3JldA=="; // app:s3cret

    #[test]
    fn definitions_name_the_oauth_field_they_get_wrong() {
        let def = |meta: Value| -> ApiDefinition {
            serde_json::from_value(json!({"use_oauth2": true, "oauth_meta": meta})).unwrap()
        };
        let ok = compile(&def(
            json!({"allowed_access_types": ["client_credentials", "refresh_token"],
            "allowed_authorize_types": ["code"], "auth_login_redirect": "https://l"}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(ok.grants, [Grant::ClientCredentials, Grant::RefreshToken]);
        assert!(ok.issues_refresh_tokens());
        let e = compile(&def(json!({"allowed_access_types": ["assertion"]}))).unwrap_err();
        assert_eq!(e.field, "oauth_meta.allowed_access_types");
        let e = compile(&def(json!({"allowed_authorize_types": ["id_token"]}))).unwrap_err();
        assert_eq!(e.field, "oauth_meta.allowed_authorize_types");
        let mut notified = def(json!({}));
        notified.other.insert(
            "notifications".into(),
            json!({"shared_secret": "s", "oauth_on_keychange_url": "https://hook.example"}),
        );
        let e = compile(&notified).unwrap_err();
        assert_eq!(e.field, "notifications.oauth_on_keychange_url");
        let off: ApiDefinition = serde_json::from_value(json!({"use_oauth2": false})).unwrap();
        assert_eq!(compile(&off).unwrap(), None);
    }

    #[test]
    fn client_credentials_need_the_clients_secret_and_a_grant_the_api_allows() {
        let keys = view();
        let o = oauth(&[Grant::ClientCredentials]);
        let f = form("grant_type=client_credentials");
        let issue = token_request(&keys, ("pets", "o1"), &o, Some(BASIC), &f, 0).unwrap();
        assert_eq!(issue.client_id, "app");
        assert!(!issue.refresh && issue.redeem.is_none() && issue.key_hash.is_empty());
        // In the form instead of Basic.
        let f2 = form("grant_type=client_credentials&client_id=app&client_secret=s3cret");
        assert!(token_request(&keys, ("pets", "o1"), &o, None, &f2, 0).is_ok());
        let cases = [
            (
                Some("Basic YXBwOndyb25n"),
                "grant_type=client_credentials",
                "unauthorized_client",
            ), // app:wrong
            (None, "grant_type=client_credentials", "invalid_request"),
            (
                Some(BASIC),
                "grant_type=password&username=a&password=b",
                "unsupported_grant_type",
            ),
            (Some(BASIC), "", "unsupported_grant_type"),
        ];
        for (auth, body, error) in cases {
            let e = token_request(&keys, ("pets", "o1"), &o, auth, &form(body), 0).unwrap_err();
            assert_eq!(e.error, error, "{body}");
        }
        // A client of another API is unknown here.
        let e = token_request(&keys, ("orders", "o1"), &o, Some(BASIC), &f, 0).unwrap_err();
        assert_eq!(e.error, "unauthorized_client");
    }

    #[test]
    fn codes_and_refresh_tokens_are_the_clients_own_and_live() {
        let mut keys = view();
        let code = KeysEvent::CodeIssued {
            code_hash: hash_secret("c0de"),
            code: meridian_schemas::keys::CodeRecord {
                client_id: "app".into(),
                api_id: "pets".into(),
                redirect_uri: "https://app.example/cb".into(),
                expires_ms: 1_000,
                issued_ms: 0,
            },
            change_id: Uuid::new_v4(),
        };
        keys.apply(&code, 10).unwrap();
        let refresh = KeysEvent::TokenIssued {
            token_hash: hash_secret("r3fresh"),
            token: TokenRecord {
                client_id: "app".into(),
                api_id: "pets".into(),
                refresh: true,
                expires_ms: 1_000,
                issued_ms: 0,
                key_hash: String::new(),
                access_hash: String::new(),
            },
            change_id: Uuid::new_v4(),
        };
        keys.apply(&refresh, 11).unwrap();
        let o = oauth(&[Grant::AuthorizationCode, Grant::RefreshToken]);
        let exchange = |body: &str, now| {
            token_request(&keys, ("pets", "o1"), &o, Some(BASIC), &form(body), now)
        };
        let issue = exchange("grant_type=authorization_code&code=c0de", 0).unwrap();
        assert_eq!(issue.redeem.as_deref(), Some(hash_secret("c0de").as_str()));
        assert!(issue.refresh);
        let wrong_uri = exchange(
            "grant_type=authorization_code&code=c0de&redirect_uri=https://evil.example/cb",
            0,
        );
        assert_eq!(wrong_uri.unwrap_err().error, "invalid_request");
        assert_eq!(
            exchange("grant_type=authorization_code&code=c0de", 2_000)
                .unwrap_err()
                .error,
            "invalid_grant"
        );
        assert_eq!(
            exchange("grant_type=authorization_code&code=other", 0)
                .unwrap_err()
                .error,
            "invalid_grant"
        );
        assert_eq!(
            exchange("grant_type=authorization_code", 0)
                .unwrap_err()
                .error,
            "invalid_grant"
        );
        let issue = exchange("grant_type=refresh_token&refresh_token=r3fresh", 0).unwrap();
        assert_eq!(
            issue.redeem.as_deref(),
            Some(hash_secret("r3fresh").as_str())
        );
        // An access token is not a refresh token.
        assert_eq!(
            exchange("grant_type=refresh_token&refresh_token=c0de", 0)
                .unwrap_err()
                .error,
            "invalid_grant"
        );
    }

    #[test]
    fn the_password_grant_checks_the_users_basic_auth_password() {
        let keys = view();
        let o = oauth(&[Grant::Password]);
        let ask =
            |body: &str| token_request(&keys, ("pets", "o1"), &o, Some(BASIC), &form(body), 0);
        let issue = ask("grant_type=password&username=ada&password=pw").unwrap();
        assert_eq!(issue.key_hash, hash_secret("o1ada"));
        assert!(!issue.refresh, "no refresh grant on this API");
        assert_eq!(
            ask("grant_type=password&username=ada&password=no")
                .unwrap_err()
                .error,
            "access_denied"
        );
        assert_eq!(
            ask("grant_type=password&username=bob&password=pw")
                .unwrap_err()
                .error,
            "access_denied"
        );
        let hashed = bcrypt::hash("pw", 4).unwrap();
        let other = json!({"basic_auth_data": {"password": hashed, "hash_type": "bcrypt"}});
        assert!(password_matches(other.as_object().unwrap(), "pw"));
        assert!(!password_matches(other.as_object().unwrap(), "px"));
    }

    #[test]
    fn authorization_requests_check_the_client_its_redirect_and_the_response_type() {
        let keys = view();
        let o = oauth(&[Grant::AuthorizationCode]);
        let ok = authorize_request(
            &keys,
            "pets",
            &o,
            &form("client_id=app&response_type=code&state=xyz"),
        )
        .unwrap();
        assert_eq!(ok.redirect_uri, "https://app.example/cb");
        assert_eq!(ok.state, "xyz");
        let below = authorize_request(
            &keys,
            "pets",
            &o,
            &form(
                "client_id=app&response_type=code&redirect_uri=https%3A%2F%2Fapp.example%2Fcb%2Fdone",
            ),
        );
        assert_eq!(below.unwrap().redirect_uri, "https://app.example/cb/done");
        let cases = [
            ("client_id=nobody&response_type=code", "unauthorized_client"),
            (
                "client_id=app&response_type=code&redirect_uri=https%3A%2F%2Fevil.example%2Fcb",
                "invalid_request",
            ),
            (
                "client_id=app&response_type=code&redirect_uri=https%3A%2F%2Fapp.example%2Fcb%2F..%2Fx",
                "invalid_request",
            ),
            (
                "client_id=app&response_type=token",
                "unsupported_response_type",
            ),
        ];
        for (body, error) in cases {
            let e = authorize_request(&keys, "pets", &o, &form(body)).unwrap_err();
            assert_eq!(e.error, error, "{body}");
        }
        let e = authorize_request(
            &keys,
            "pets",
            &o,
            &form("client_id=app&response_type=token&state=s"),
        )
        .unwrap_err();
        let body = e.body();
        assert_eq!(body["state"], "s");
        assert!(
            body["redirect_to"]
                .as_str()
                .unwrap()
                .starts_with("https://app.example/cb?error=unsupported_response_type"),
            "{body}"
        );
    }

    #[test]
    fn forms_take_json_bodies_and_the_query_string_too() {
        let f = Form::parse(
            Some("application/json; charset=utf-8"),
            br#"{"grant_type":"client_credentials"}"#,
            Some("grant_type=x&scope=a"),
        )
        .unwrap();
        assert_eq!(f.get("grant_type"), "client_credentials");
        assert_eq!(f.get("scope"), "a");
        assert_eq!(f.get("missing"), "");
        assert_eq!(
            Form::parse(Some("application/json"), b"[1]", None)
                .unwrap_err()
                .error,
            "invalid_request"
        );
        assert_eq!(decode_base64("YXBwOnMzY3JldA==").unwrap(), b"app:s3cret");
        assert_eq!(endpoint("/oauth/token/"), Some(Endpoint::Token));
        assert_eq!(
            endpoint("/tyk/oauth/authorize-client/"),
            Some(Endpoint::AuthorizeClient)
        );
        assert_eq!(endpoint("/oauth/tokens"), None);
        assert_eq!(
            with_params("https://a.example/cb?x=1", &[("code", "c d")], false),
            "https://a.example/cb?x=1&code=c+d"
        );
        assert_eq!(
            with_params("https://a.example/cb", &[("access_token", "t")], true),
            "https://a.example/cb#access_token=t"
        );
    }
}
