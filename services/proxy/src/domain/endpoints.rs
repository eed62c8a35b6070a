//! Per-operation rules of a Tyk OAS API (`middleware.operations`, keyed by
//! the document's `operationId`), matched on a request's method and path
//! after the listen path, the operation's path template read as Tyk reads
//! it (`{name}` is one segment, the whole path must match):
//!
//! - `allow`: once any operation has it, only allowed operations are
//!   served; any other request is refused, as is a `block`ed one, with
//!   Tyk's 403 `Requested endpoint is forbidden`, before the key check (as
//!   Tyk's version check does);
//! - `ignoreAuthentication`: the operation needs no key (and counts against
//!   no key's limits);
//! - `mockResponse`: the operation is answered by the gateway, after the
//!   checks, without calling the upstream: the configured code, headers
//!   and body, or (`fromOASExamples`) the document's example for the
//!   configured status code and content type, or one made from its schema.
//!
//! Compiled once per definition; decided per request without I/O.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::Invalid;

/// A mocked answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mock {
    /// The status.
    pub code: u16,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// One operation's rules.
#[derive(Clone, Debug)]
pub struct Rule {
    method: String,
    path: regex::Regex,
    allow: bool,
    block: bool,
    /// `ignoreAuthentication`.
    pub ignore_auth: bool,
    /// `mockResponse`.
    pub mock: Option<Arc<Mock>>,
    /// `validateRequest`.
    pub validate: Option<Arc<super::validate::Validation>>,
}

impl Rule {
    /// The values of the path's `{...}` parameters in `path`, in order.
    pub fn path_params<'a>(&self, path: &'a str) -> Vec<&'a str> {
        self.path
            .captures(path)
            .map(|c| c.iter().skip(1).flatten().map(|m| m.as_str()).collect())
            .unwrap_or_default()
    }
}

/// An API's operation rules.
#[derive(Clone, Debug, Default)]
pub struct Endpoints {
    rules: Vec<Rule>,
    allow_list: bool,
}

/// A request to an operation the API does not serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forbidden;

impl Endpoints {
    /// The rule of the operation `method` and `path` (after the listen
    /// path) reach, if any, or [`Forbidden`].
    pub fn decide(&self, method: &str, path: &str) -> Result<Option<&Rule>, Forbidden> {
        let found = self
            .rules
            .iter()
            .find(|r| r.method.eq_ignore_ascii_case(method) && r.path.is_match(path));
        match found {
            Some(r) if r.block => Err(Forbidden),
            Some(r) if self.allow_list && !r.allow => Err(Forbidden),
            None if self.allow_list => Err(Forbidden),
            found => Ok(found),
        }
    }

    /// Some operation is mocked (the gateway answers it) or validated
    /// (its body is read whole): such APIs are served by hyper.
    pub fn reads_whole_requests(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.mock.is_some() || r.validate.is_some())
    }

    /// No rule does anything.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// An OpenAPI path template as a pattern: `{name}` one segment, anchored.
fn template(field: &str, path: &str) -> Result<regex::Regex, Invalid> {
    let mut pattern = String::from("^");
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        pattern.push_str(&regex::escape(&rest[..open]));
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| Invalid::new(field, format!("{path:?}: a {{ without its }}")))?;
        pattern.push_str("([^/]+)");
        rest = &rest[open + close + 1..];
    }
    pattern.push_str(&regex::escape(rest));
    pattern.push('$');
    regex::Regex::new(&pattern).map_err(|e| Invalid::new(field, format!("{path:?}: {e}")))
}

type Object = Map<String, Value>;

fn flag(section: Option<&Value>, at: &str) -> Result<bool, Invalid> {
    let Some(section) = section.filter(|v| !v.is_null()) else {
        return Ok(false);
    };
    let obj = section
        .as_object()
        .ok_or_else(|| Invalid::new(at, "must be an object ({\"enabled\": true})"))?;
    if let Some(k) = obj.keys().find(|k| !k.starts_with("x-") && *k != "enabled") {
        return Err(Invalid::new(
            format!("{at}.{k}"),
            "Meridian's gateway does not serve this field (served here: enabled)",
        ));
    }
    match obj.get("enabled") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(Invalid::new(
            format!("{at}.enabled"),
            "must be true or false",
        )),
    }
}

/// Follows a local `$ref` (`#/components/...`) in `doc`, a few times.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    for _ in 0..16 {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => match r.strip_prefix('#').and_then(|p| doc.pointer(p)) {
                Some(target) => v = target,
                None => return v,
            },
            None => return v,
        }
    }
    v
}

/// An example value made from a schema, as Tyk's example extractor makes
/// it: the schema's `example`, else by type (`"string"`, `0`, `true`, a
/// list of one item, an object of its properties).
pub fn example_of(doc: &Value, schema: &Value, depth: usize) -> Value {
    let schema = resolve(doc, schema);
    if let Some(example) = schema.get("example") {
        return example.clone();
    }
    if depth > 8 {
        return Value::Null;
    }
    let kind = schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_else(|| {
            if schema.get("properties").is_some() {
                "object"
            } else {
                ""
            }
        });
    match kind {
        "string" => schema
            .get("enum")
            .and_then(|e| e.get(0))
            .cloned()
            .unwrap_or_else(|| "string".into()),
        "integer" | "number" => 0.into(),
        "boolean" => true.into(),
        "array" => Value::Array(vec![example_of(
            doc,
            schema.get("items").unwrap_or(&Value::Null),
            depth + 1,
        )]),
        "object" => Value::Object(
            schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| {
                    p.iter()
                        .map(|(k, s)| (k.clone(), example_of(doc, s, depth + 1)))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => Value::Null,
    }
}

/// `mockResponse`, compiled for the operation `op` of `doc`.
fn mock(doc: &Value, op: &Value, section: &Object, at: &str) -> Result<Option<Mock>, Invalid> {
    const SERVED: [&str; 5] = ["enabled", "code", "body", "headers", "fromOASExamples"];
    if let Some(k) = section
        .keys()
        .find(|k| !k.starts_with("x-") && !SERVED.contains(&k.as_str()))
    {
        return Err(Invalid::new(
            format!("{at}.{k}"),
            format!(
                "Meridian's gateway does not serve this field (served here: {})",
                SERVED.join(", ")
            ),
        ));
    }
    if section.get("enabled").and_then(Value::as_bool) != Some(true) {
        return Ok(None);
    }
    let code = |v: Option<&Value>, field: &str| -> Result<u16, Invalid> {
        match v {
            None | Some(Value::Null) => Ok(200),
            Some(v) => v
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| {
                    Invalid::new(format!("{at}.{field}"), "must be an HTTP status (100-599)")
                }),
        }
    };
    let from = section.get("fromOASExamples").filter(|v| !v.is_null());
    if let Some(from) = from.and_then(Value::as_object)
        && from.get("enabled").and_then(Value::as_bool) == Some(true)
    {
        let f_at = format!("{at}.fromOASExamples");
        let status = code(from.get("code"), "fromOASExamples.code")?;
        let content_type = from
            .get("contentType")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .unwrap_or("application/json");
        let name = from
            .get("exampleName")
            .and_then(Value::as_str)
            .unwrap_or("");
        let response = op
            .get("responses")
            .and_then(|r| r.get(status.to_string()))
            .map(|r| resolve(doc, r))
            .ok_or_else(|| {
                Invalid::new(
                    &f_at,
                    format!("the operation has no {status} response to take an example from"),
                )
            })?;
        let media = response
            .get("content")
            .and_then(|c| c.get(content_type))
            .ok_or_else(|| {
                Invalid::new(
                    &f_at,
                    format!("the {status} response has no {content_type} content"),
                )
            })?;
        let example = if let Some(e) = media.get("example") {
            e.clone()
        } else if let Some(examples) = media
            .get("examples")
            .and_then(Value::as_object)
            .filter(|e| !e.is_empty())
        {
            let chosen = if name.is_empty() {
                examples.values().next()
            } else {
                Some(examples.get(name).ok_or_else(|| {
                    Invalid::new(
                        format!("{f_at}.exampleName"),
                        format!(
                            "{name:?} is not an example of the {status} {content_type} response"
                        ),
                    )
                })?)
            };
            chosen
                .map(|e| resolve(doc, e).get("value").cloned().unwrap_or(Value::Null))
                .unwrap_or(Value::Null)
        } else {
            example_of(doc, media.get("schema").unwrap_or(&Value::Null), 0)
        };
        let mut headers: Vec<(String, String)> = response
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| {
                h.iter()
                    .map(|(k, v)| {
                        let schema = resolve(doc, v)
                            .get("schema")
                            .cloned()
                            .unwrap_or(Value::Null);
                        let value = match example_of(doc, &schema, 0) {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        (k.clone(), value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        headers.push(("Content-Type".into(), content_type.to_owned()));
        return Ok(Some(Mock {
            code: status,
            headers,
            body: Bytes::from(example.to_string()),
        }));
    }
    let headers = match section.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let name = h.get("name").and_then(Value::as_str);
                let value = h.get("value").and_then(Value::as_str).unwrap_or("");
                name.map(|n| (n.to_owned(), value.to_owned()))
                    .ok_or_else(|| Invalid::new(format!("{at}.headers[{i}].name"), "is required"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(Invalid::new(
                format!("{at}.headers"),
                "must be a list of {name, value}",
            ));
        }
    };
    Ok(Some(Mock {
        code: code(section.get("code"), "code")?,
        headers,
        body: Bytes::from(
            section
                .get("body")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        ),
    }))
}

/// The rules of one operation (its section of `middleware.operations`),
/// at `path` and `method`; `None` when it sets nothing these rules serve.
pub fn rule(
    doc: &Value,
    (path, method): (&str, &str),
    section: &Object,
    at: &str,
) -> Result<Option<Rule>, Invalid> {
    let op = doc
        .get("paths")
        .and_then(|p| p.get(path))
        .and_then(|i| i.get(method.to_ascii_lowercase()))
        .unwrap_or(&Value::Null);
    let mock = match section.get("mockResponse") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => mock(doc, op, m, &format!("{at}.mockResponse"))?,
        Some(_) => {
            return Err(Invalid::new(
                format!("{at}.mockResponse"),
                "must be an object",
            ));
        }
    };
    let validate = match section.get("validateRequest") {
        None | Some(Value::Null) => None,
        Some(Value::Object(v)) => {
            super::validate::compile(doc, path, op, v, &format!("{at}.validateRequest"))?
        }
        Some(_) => {
            return Err(Invalid::new(
                format!("{at}.validateRequest"),
                "must be an object",
            ));
        }
    };
    let r = Rule {
        method: method.to_ascii_uppercase(),
        path: template(at, path)?,
        allow: flag(section.get("allow"), &format!("{at}.allow"))?,
        block: flag(section.get("block"), &format!("{at}.block"))?,
        ignore_auth: flag(
            section.get("ignoreAuthentication"),
            &format!("{at}.ignoreAuthentication"),
        )?,
        mock: mock.map(Arc::new),
        validate: validate.map(Arc::new),
    };
    let any = r.allow || r.block || r.ignore_auth || r.mock.is_some() || r.validate.is_some();
    Ok(any.then_some(r))
}

impl Endpoints {
    /// Rules in the document's order.
    pub fn new(rules: Vec<Rule>) -> Self {
        let allow_list = rules.iter().any(|r| r.allow);
        Self { rules, allow_list }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({"paths": {"/pets/{id}": {"get": {"responses": {"200": {
            "headers": {"X-Rate": {"schema": {"type": "integer", "example": 5}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}}}}}},
            "components": {"schemas": {"Pet": {"type": "object",
                "properties": {"id": {"type": "integer"}, "name": {"type": "string", "example": "Rex"},
                    "tags": {"type": "array", "items": {"type": "string"}}}}}}})
    }

    fn rule_of(section: Value) -> Result<Option<Rule>, Invalid> {
        rule(
            &doc(),
            ("/pets/{id}", "GET"),
            section.as_object().unwrap(),
            "ops.showPet",
        )
    }

    #[test]
    fn allow_lists_and_blocks_decide_before_anything_else() {
        let allowed = rule_of(json!({"allow": {"enabled": true}}))
            .unwrap()
            .unwrap();
        let e = Endpoints::new(vec![allowed]);
        assert!(e.decide("GET", "/pets/7").unwrap().is_some());
        assert_eq!(e.decide("POST", "/pets/7").unwrap_err(), Forbidden);
        assert_eq!(
            e.decide("GET", "/pets/7/toys").unwrap_err(),
            Forbidden,
            "the whole path"
        );
        assert_eq!(e.decide("GET", "/other").unwrap_err(), Forbidden);
        let blocked = rule_of(json!({"block": {"enabled": true}}))
            .unwrap()
            .unwrap();
        let e = Endpoints::new(vec![blocked]);
        assert_eq!(e.decide("get", "/pets/x").unwrap_err(), Forbidden);
        assert!(
            e.decide("GET", "/other").unwrap().is_none(),
            "no allow list: the rest passes"
        );
        assert!(
            rule_of(json!({"allow": {"enabled": false}}))
                .unwrap()
                .is_none()
        );
        let e = rule_of(json!({"allow": {"enabled": true, "other": 1}})).unwrap_err();
        assert_eq!(e.field, "ops.showPet.allow.other");
    }

    #[test]
    fn mocks_come_from_the_section_or_the_documents_examples() {
        let plain = rule_of(
            json!({"mockResponse": {"enabled": true, "code": 201, "body": "made",
            "headers": [{"name": "X-Mock", "value": "1"}]}}),
        )
        .unwrap()
        .unwrap();
        let m = plain.mock.unwrap();
        assert_eq!((m.code, m.body.as_ref()), (201, b"made".as_ref()));
        assert_eq!(m.headers, [("X-Mock".to_owned(), "1".to_owned())]);
        let from = rule_of(
            json!({"mockResponse": {"enabled": true, "fromOASExamples": {"enabled": true}}}),
        )
        .unwrap()
        .unwrap();
        let m = from.mock.unwrap();
        assert_eq!(m.code, 200);
        let body: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(body, json!({"id": 0, "name": "Rex", "tags": ["string"]}));
        assert!(m.headers.contains(&("X-Rate".to_owned(), "5".to_owned())));
        let e = rule_of(json!({"mockResponse": {"enabled": true, "fromOASExamples": {"enabled": true, "code": 404}}}))
            .unwrap_err();
        assert_eq!(e.field, "ops.showPet.mockResponse.fromOASExamples");
        assert!(
            rule_of(json!({"mockResponse": {"enabled": false}}))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn templates_match_one_segment_per_parameter() {
        let t = template("f", "/pets/{id}/toys/{toy}").unwrap();
        assert!(t.is_match("/pets/1/toys/ball"));
        assert!(!t.is_match("/pets/1/2/toys/ball"));
        assert!(!t.is_match("/pets/1/toys/ball/x"));
        assert!(template("f", "/pets/{id").is_err());
        let r = rule_of(json!({"allow": {"enabled": true}}))
            .unwrap()
            .unwrap();
        assert_eq!(r.path_params("/pets/42"), ["42"]);
    }
}
