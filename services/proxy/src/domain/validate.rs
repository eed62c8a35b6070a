//! `validateRequest` of a Tyk OAS API's operation: the request's
//! parameters (path, query, header) and its JSON body checked against the
//! operation's OpenAPI schemas with a kept JSON Schema library
//! (`jsonschema`), compiled once when the definition is folded, never per
//! request. A failure answers the configured code (Tyk's default 422) with
//! `request validation error: ...` naming the parameter or the body's
//! field, as Tyk answers it.
//!
//! OpenAPI 3.0 schemas are JSON Schema draft 4 with `nullable` (read as a
//! `null` type) and local `$ref`s (inlined here); 3.1 documents are draft
//! 2020-12.

use serde_json::{Map, Value};

use super::Invalid;

/// Largest body a validated operation reads (a larger one is a 413).
pub const MAX_BODY: usize = 1024 * 1024;

/// Where a parameter is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum In {
    Query,
    Header,
    /// The n-th `{...}` of the operation's path.
    Path(usize),
}

#[derive(Debug)]
struct Param {
    name: String,
    at: In,
    required: bool,
    /// The schema's `type`, to read the text as (`integer`, `boolean`...).
    kind: String,
    schema: Option<jsonschema::Validator>,
}

/// One operation's checks.
#[derive(Debug)]
pub struct Validation {
    /// The status of a refusal.
    pub error_code: u16,
    params: Vec<Param>,
    /// The JSON body's schema, and whether a body is required.
    body: Option<(bool, Option<jsonschema::Validator>)>,
}

/// A request the operation's schemas refuse: Tyk's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request validation error: {}", self.0)
    }
}

/// `schema` with its local `$ref`s inlined (cycles cut after a few
/// levels) and `nullable` read as a `null` type.
fn json_schema(doc: &Value, schema: &Value, depth: usize) -> Value {
    if depth > 24 {
        return Value::Object(Map::new());
    }
    match schema {
        Value::Object(map) => {
            if let Some(target) = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix('#'))
                .and_then(|p| doc.pointer(p))
            {
                return json_schema(doc, target, depth + 1);
            }
            let mut out = Map::new();
            for (k, v) in map {
                out.insert(k.clone(), json_schema(doc, v, depth + 1));
            }
            if out.remove("nullable") == Some(Value::Bool(true)) {
                match out.get("type").cloned() {
                    Some(Value::String(t)) => {
                        out.insert("type".into(), serde_json::json!([t, "null"]));
                    }
                    _ => {
                        let inner = Value::Object(std::mem::take(&mut out));
                        out.insert("anyOf".into(), serde_json::json!([inner, {"type": "null"}]));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| json_schema(doc, v, depth + 1))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn validator(doc: &Value, schema: &Value, field: &str) -> Result<jsonschema::Validator, Invalid> {
    let schema = json_schema(doc, schema, 0);
    let three_one = doc
        .get("openapi")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("3.1"));
    let built = if three_one {
        jsonschema::draft202012::new(&schema)
    } else {
        jsonschema::draft4::new(&schema)
    };
    built.map_err(|e| Invalid::new(field, format!("the schema does not compile: {e}")))
}

/// Follows a local `$ref`.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    v.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|p| doc.pointer(p))
        .unwrap_or(v)
}

/// Compiles `validateRequest` for the operation `op` at `path` (its
/// parameters are the path item's and the operation's); `None` when off.
pub fn compile(
    doc: &Value,
    path: &str,
    op: &Value,
    section: &Map<String, Value>,
    at: &str,
) -> Result<Option<Validation>, Invalid> {
    if let Some(k) = section
        .keys()
        .find(|k| !k.starts_with("x-") && !["enabled", "errorResponseCode"].contains(&k.as_str()))
    {
        return Err(Invalid::new(
            format!("{at}.{k}"),
            "Meridian's gateway does not serve this field (served here: enabled, errorResponseCode)",
        ));
    }
    if section.get("enabled").and_then(Value::as_bool) != Some(true) {
        return Ok(None);
    }
    let error_code = match section.get("errorResponseCode") {
        None | Some(Value::Null) => 422,
        Some(v) => v
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| (400..=599).contains(c))
            .ok_or_else(|| {
                Invalid::new(
                    format!("{at}.errorResponseCode"),
                    "must be an HTTP error status (400-599)",
                )
            })?,
    };
    let names: Vec<&str> = path
        .split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(n, _)| n))
        .collect();
    let item = doc
        .get("paths")
        .and_then(|p| p.get(path))
        .unwrap_or(&Value::Null);
    let declared = item
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(
            op.get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        );
    let mut params: Vec<Param> = Vec::new();
    for p in declared {
        let p = resolve(doc, p);
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let field = format!("{at} (parameter {name:?})");
        let location = match p.get("in").and_then(Value::as_str) {
            Some("query") => In::Query,
            Some("header") => In::Header,
            Some("path") => {
                In::Path(names.iter().position(|n| *n == name).ok_or_else(|| {
                    Invalid::new(&field, "a path parameter the path does not name")
                })?)
            }
            // Cookies are not checked (the gateway reads no cookie here).
            _ => continue,
        };
        let schema = p.get("schema");
        let kind = schema
            .map(|s| resolve(doc, s))
            .and_then(|s| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("string")
            .to_owned();
        let param = Param {
            name: if location == In::Header {
                name.to_ascii_lowercase()
            } else {
                name
            },
            at: location,
            required: p.get("required").and_then(Value::as_bool).unwrap_or(false)
                || matches!(location, In::Path(_)),
            kind,
            schema: schema.map(|s| validator(doc, s, &field)).transpose()?,
        };
        // An operation's parameter replaces the path item's of that name.
        params.retain(|q| !(q.name == param.name && q.at == param.at));
        params.push(param);
    }
    let body = op
        .get("requestBody")
        .map(|b| resolve(doc, b))
        .and_then(|b| {
            let required = b.get("required").and_then(Value::as_bool).unwrap_or(false);
            let json = b
                .get("content")?
                .as_object()?
                .iter()
                .find(|(ct, _)| is_json(Some(ct)))?;
            Some((required, json.1.get("schema").cloned()))
        });
    let body = match body {
        Some((required, schema)) => Some((
            required,
            schema
                .map(|s| validator(doc, &s, &format!("{at} (request body)")))
                .transpose()?,
        )),
        None => None,
    };
    Ok(Some(Validation {
        error_code,
        params,
        body,
    }))
}

/// A media type that is JSON (`application/json`, `...+json`).
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || m.ends_with("+json"))
}

/// The first error of `validator` on `instance`, named by its place.
fn first_error(
    validator: &jsonschema::Validator,
    instance: &Value,
    what: &str,
) -> Result<(), Refused> {
    match validator.validate(instance) {
        Ok(()) => Ok(()),
        Err(e) => {
            let at = e.instance_path().as_str().to_owned();
            Err(Refused(if at.is_empty() {
                format!("{what}: {e}")
            } else {
                format!("{what} at {at}: {e}")
            }))
        }
    }
}

/// A parameter's text read as its schema's type (a number stays text when
/// it does not read as one: the schema then says why).
fn typed(kind: &str, text: &str) -> Value {
    match kind {
        "integer" => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| text.into()),
        "number" => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| text.into()),
        "boolean" => match text {
            "true" => true.into(),
            "false" => false.into(),
            _ => text.into(),
        },
        _ => text.into(),
    }
}

impl Validation {
    /// The operation has a body to check (the request's body is read).
    pub fn reads_body(&self) -> bool {
        self.body.is_some()
    }

    /// Checks the parameters: `query` (without `?`), `header` by lower-case
    /// name, `path_params` in the order the path names them.
    pub fn check_params(
        &self,
        query: Option<&str>,
        header: &dyn Fn(&str) -> Option<String>,
        path_params: &[&str],
    ) -> Result<(), Refused> {
        let pairs: Vec<(String, String)> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        for p in &self.params {
            let (what, text) = match p.at {
                In::Query => (
                    "query",
                    pairs
                        .iter()
                        .find(|(n, _)| *n == p.name)
                        .map(|(_, v)| v.clone()),
                ),
                In::Header => ("header", header(&p.name)),
                In::Path(i) => ("path", path_params.get(i).map(|s| (*s).to_owned())),
            };
            let Some(text) = text else {
                if p.required {
                    return Err(Refused(format!(
                        "{what} parameter {:?} is required",
                        p.name
                    )));
                }
                continue;
            };
            if let Some(schema) = &p.schema {
                first_error(
                    schema,
                    &typed(&p.kind, &text),
                    &format!("{what} parameter {:?}", p.name),
                )?;
            }
        }
        Ok(())
    }

    /// Checks the body (`content_type` as sent).
    pub fn check_body(&self, content_type: Option<&str>, body: &[u8]) -> Result<(), Refused> {
        let Some((required, schema)) = &self.body else {
            return Ok(());
        };
        if body.is_empty() {
            return if *required {
                Err(Refused("request body: a JSON body is required".into()))
            } else {
                Ok(())
            };
        }
        if !is_json(content_type) {
            return Err(Refused(format!(
                "request body: Content-Type {:?} is not JSON (application/json)",
                content_type.unwrap_or("")
            )));
        }
        let instance: Value = serde_json::from_slice(body)
            .map_err(|e| Refused(format!("request body: not JSON: {e}")))?;
        match schema {
            Some(schema) => first_error(schema, &instance, "request body"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({"openapi": "3.0.3",
            "paths": {"/pets/{petId}": {
                "parameters": [{"name": "petId", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}}],
                "put": {"operationId": "updatePet",
                    "parameters": [{"name": "dryRun", "in": "query", "schema": {"type": "boolean"}},
                        {"name": "X-Trace", "in": "header", "required": true, "schema": {"type": "string", "minLength": 3}}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}},
                    "responses": {"200": {"description": "ok"}}}}},
            "components": {"schemas": {"Pet": {"type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "tag": {"type": "string", "nullable": true},
                    "age": {"type": "integer", "maximum": 30}}}}}})
    }

    fn compiled(section: Value) -> Option<Validation> {
        let d = doc();
        let op = d["paths"]["/pets/{petId}"]["put"].clone();
        compile(
            &d,
            "/pets/{petId}",
            &op,
            section.as_object().unwrap(),
            "ops.updatePet.validateRequest",
        )
        .unwrap()
    }

    #[test]
    fn parameters_are_checked_as_their_schemas_say() {
        let v = compiled(json!({"enabled": true})).unwrap();
        assert_eq!(v.error_code, 422);
        let header = |h: Option<&'static str>| {
            move |n: &str| (n == "x-trace").then(|| h.map(str::to_owned)).flatten()
        };
        let ok = header(Some("abc"));
        assert_eq!(v.check_params(Some("dryRun=true"), &ok, &["7"]), Ok(()));
        let cases = [
            (
                Some("dryRun=maybe"),
                header(Some("abc")),
                "7",
                "query parameter \"dryRun\"",
            ),
            (
                None,
                header(None),
                "7",
                "header parameter \"x-trace\" is required",
            ),
            (
                None,
                header(Some("ab")),
                "7",
                "header parameter \"x-trace\"",
            ),
            (None, header(Some("abc")), "0", "path parameter \"petId\""),
            (None, header(Some("abc")), "x", "path parameter \"petId\""),
        ];
        for (query, header, path, expected) in cases {
            let e = v.check_params(query, &header, &[path]).unwrap_err();
            assert!(e.to_string().contains(expected), "{e}");
            assert!(
                e.to_string().starts_with("request validation error: "),
                "{e}"
            );
        }
    }

    #[test]
    fn bodies_are_json_checked_against_the_schema_naming_the_field() {
        let v = compiled(json!({"enabled": true, "errorResponseCode": 400})).unwrap();
        assert_eq!(v.error_code, 400);
        assert!(v.reads_body());
        let json = Some("application/json; charset=utf-8");
        assert_eq!(
            v.check_body(json, br#"{"name": "Rex", "tag": null}"#),
            Ok(())
        );
        let e = v.check_body(json, br#"{"tag": "x"}"#).unwrap_err();
        assert!(e.0.contains("\"name\" is a required property"), "{e}");
        let e = v
            .check_body(json, br#"{"name": "Rex", "age": 31}"#)
            .unwrap_err();
        assert!(e.0.contains("at /age"), "{e}");
        let e = v.check_body(json, b"{").unwrap_err();
        assert!(e.0.contains("not JSON"), "{e}");
        let e = v.check_body(Some("text/plain"), b"{}").unwrap_err();
        assert!(e.0.contains("not JSON"), "{e}");
        let e = v.check_body(json, b"").unwrap_err();
        assert!(e.0.contains("required"), "{e}");
    }

    #[test]
    fn the_section_is_read_strictly() {
        assert!(compiled(json!({"enabled": false})).is_none());
        let d = doc();
        let op = d["paths"]["/pets/{petId}"]["put"].clone();
        let e = compile(
            &d,
            "/pets/{petId}",
            &op,
            json!({"enabled": true, "errorResponseCode": 200})
                .as_object()
                .unwrap(),
            "v",
        )
        .unwrap_err();
        assert_eq!(e.field, "v.errorResponseCode");
        let e = compile(
            &d,
            "/pets/{petId}",
            &op,
            json!({"enabled": true, "strict": true})
                .as_object()
                .unwrap(),
            "v",
        )
        .unwrap_err();
        assert_eq!(e.field, "v.strict");
    }
}
