//! Header injection as Tyk's classic definitions ask for it: per version,
//! `global_headers` / `global_headers_remove` on the way in,
//! `global_response_headers` / `global_response_headers_remove` on the way
//! out, per path `extended_paths.transform_headers` and
//! `transform_response_headers`, and the `header_injector` response
//! processor's `add_headers` / `remove_headers`. Values may name Tyk's
//! variables: `$tyk_context.NAME` (what the request carries, when the
//! definition sets `enable_context_vars`, as in Tyk) and `$tyk_meta.KEY`
//! (the key's session metadata); one that is not known becomes empty, as
//! in Tyk.
//!
//! Order, as Tyk's middleware runs it: in, the globals (removed, then
//! set) and then the first matching path entry; out, the first matching
//! path entry, then the globals, then the processor's. A set replaces
//! every header of that name. Names the gateway frames messages or routes
//! with (`Host`, `Content-Length`, `Transfer-Encoding`, hop-by-hop ones)
//! are refused, naming the field: forwarding them changed would make
//! what is checked differ from what is forwarded.
//!
//! Compiled once per definition; a request to an API without any pays
//! nothing (the route holds `None`).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::Value;

use super::Invalid;
use super::apidef::ApiDefinition;

/// Response processors Meridian runs (Tyk's names).
const PROCESSORS: &[&str] = &["header_injector"];

/// `extended_paths` entries that transform bodies: not run here, so a
/// definition that fills them is refused rather than served without them.
const BODY_TRANSFORMS: &[&str] = &[
    "transform",
    "transform_response",
    "transform_jq",
    "transform_jq_response",
];

/// Header names the gateway owns: refused in every rule.
const OWNED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-proto",
];

/// One piece of a header value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    /// `$tyk_context.NAME`.
    Context(String),
    /// `$tyk_meta.KEY`.
    Meta(String),
}

/// A header value with its variables found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(Vec<Part>);

impl Template {
    fn parse(value: &str) -> Self {
        const LABELS: [(&str, bool); 2] = [("$tyk_context.", true), ("$tyk_meta.", false)];
        let mut parts = Vec::new();
        let mut rest = value;
        loop {
            let next = LABELS
                .iter()
                .filter_map(|&(label, context)| rest.find(label).map(|at| (at, label, context)))
                .min_by_key(|&(at, _, _)| at);
            let Some((at, label, context)) = next else {
                break;
            };
            let after = &rest[at + label.len()..];
            // Tyk's variable names: letters, digits, `_`, `-`, `.`.
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
                .unwrap_or(after.len());
            if len == 0 {
                // Not a variable: the label stays as text.
                parts.push(Part::Text(rest[..at + label.len()].to_owned()));
                rest = after;
                continue;
            }
            if at > 0 {
                parts.push(Part::Text(rest[..at].to_owned()));
            }
            let name = after[..len].to_owned();
            parts.push(if context {
                Part::Context(name)
            } else {
                Part::Meta(name)
            });
            rest = &after[len..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Self(parts)
    }

    /// The value for one request: variables from `vars`, unknown ones
    /// empty; control characters (from metadata, say) become spaces, so
    /// the value is always a valid header value.
    pub fn render(&self, vars: &dyn Vars) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Context(name) => out.push_str(&vars.context(name).unwrap_or_default()),
                Part::Meta(key) => out.push_str(&vars.meta(key).unwrap_or_default()),
            }
        }
        if out.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            out = out
                .chars()
                .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
                .collect();
        }
        out
    }
}

/// What variables resolve to for one request.
pub trait Vars {
    /// `$tyk_context.NAME`, `None` when unknown (or context variables are
    /// off).
    fn context(&self, name: &str) -> Option<String>;
    /// `$tyk_meta.KEY` from the key's session metadata.
    fn meta(&self, key: &str) -> Option<String>;
}

/// Headers removed, then set (names in lower case).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edits {
    /// Removed.
    pub remove: Vec<String>,
    /// Set (replacing any of that name).
    pub set: Vec<(String, Template)>,
}

impl Edits {
    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    fn render_into(&self, vars: &dyn Vars, out: &mut Rendered) {
        for name in &self.remove {
            out.remove(name);
        }
        for (name, value) in &self.set {
            out.remove(name);
            out.set.push((name.clone(), value.render(vars)));
        }
    }
}

/// The edits of one direction for one request, rendered: what the data
/// plane applies (client's or upstream's headers named in `remove` or
/// `set` are dropped, then `set` written).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Dropped.
    pub remove: Vec<String>,
    /// Written, in order.
    pub set: Vec<(String, String)>,
}

impl Rendered {
    fn remove(&mut self, name: &str) {
        self.set.retain(|(n, _)| n != name);
        if !self.remove.iter().any(|n| n == name) {
            self.remove.push(name.to_owned());
        }
    }

    /// Whether a header of this name from the other side is dropped.
    pub fn drops(&self, name: &str) -> bool {
        self.remove.iter().any(|n| name.eq_ignore_ascii_case(n))
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }
}

/// A per-path entry: the first whose method and path match applies.
#[derive(Clone, Debug)]
struct PathEdits {
    method: String,
    path: regex::Regex,
    edits: Edits,
}

fn first_match<'a>(entries: &'a [PathEdits], method: &str, path: &str) -> Option<&'a Edits> {
    entries
        .iter()
        .find(|e| e.method.eq_ignore_ascii_case(method) && e.path.is_match(path))
        .map(|e| &e.edits)
}

/// One version's rules.
#[derive(Clone, Debug, Default)]
struct VersionRules {
    request: Edits,
    request_paths: Vec<PathEdits>,
    response_paths: Vec<PathEdits>,
    /// The globals, then the processor's.
    response: Vec<Edits>,
}

/// An API's header rules.
#[derive(Clone, Debug)]
pub struct Transforms {
    /// By version name.
    versions: HashMap<String, VersionRules>,
    /// The version of a request to an API that is not versioned.
    unversioned: Option<String>,
    /// `enable_context_vars`.
    pub context_vars: bool,
}

/// What one request gets: edits towards the upstream and towards the
/// client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestEdits {
    /// On the forwarded request.
    pub request: Rendered,
    /// On the upstream's answer.
    pub response: Rendered,
}

impl Transforms {
    /// The rendered edits for a request with `method` to `path` (relative
    /// to the listen path) in `version` (`None`: the API is not
    /// versioned).
    pub fn for_request(
        &self,
        version: Option<&str>,
        method: &str,
        path: &str,
        vars: &dyn Vars,
    ) -> Option<RequestEdits> {
        let name = version.or(self.unversioned.as_deref())?;
        let rules = self.versions.get(name)?;
        let mut out = RequestEdits::default();
        rules.request.render_into(vars, &mut out.request);
        if let Some(edits) = first_match(&rules.request_paths, method, path) {
            edits.render_into(vars, &mut out.request);
        }
        if let Some(edits) = first_match(&rules.response_paths, method, path) {
            edits.render_into(vars, &mut out.response);
        }
        for edits in &rules.response {
            edits.render_into(vars, &mut out.response);
        }
        Some(out)
    }
}

/// Tyk's header maps and lists as sent (`null` for none).
#[derive(Default, Deserialize)]
#[serde(default)]
struct VersionSection {
    global_headers: Option<BTreeMap<String, String>>,
    global_headers_remove: Option<Vec<String>>,
    global_headers_disabled: bool,
    global_response_headers: Option<BTreeMap<String, String>>,
    global_response_headers_remove: Option<Vec<String>>,
    global_response_headers_disabled: bool,
    extended_paths: Option<BTreeMap<String, Value>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct PathSection {
    path: String,
    method: String,
    delete_headers: Option<Vec<String>>,
    add_headers: Option<BTreeMap<String, String>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Processor {
    name: String,
    options: Option<Value>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct InjectorOptions {
    add_headers: Option<BTreeMap<String, String>>,
    remove_headers: Option<Vec<String>>,
}

/// A header name a rule may touch, in lower case.
fn rule_name(field: &str, name: &str) -> Result<String, Invalid> {
    const SYMBOLS: &[u8] = b"!#$%&'*+-.^_`|~";
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || SYMBOLS.contains(&b));
    if !token {
        return Err(Invalid::new(
            field,
            format!("{name:?} is not a header name"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if OWNED.contains(&lower.as_str()) || meridian_kit::headers::is_hop_by_hop(&lower) {
        return Err(Invalid::new(
            field,
            format!(
                "{name:?} cannot be changed: the gateway sets it (framing, routing, connection)"
            ),
        ));
    }
    Ok(lower)
}

fn edits(
    field: &str,
    remove: Option<Vec<String>>,
    set: Option<BTreeMap<String, String>>,
    (remove_field, set_field): (&str, &str),
) -> Result<Edits, Invalid> {
    let remove = remove
        .unwrap_or_default()
        .iter()
        .map(|n| rule_name(&format!("{field}.{remove_field}"), n))
        .collect::<Result<_, _>>()?;
    let set = set
        .unwrap_or_default()
        .into_iter()
        .map(|(n, v)| {
            let name = rule_name(&format!("{field}.{set_field}"), &n)?;
            Ok((name, Template::parse(&v)))
        })
        .collect::<Result<_, Invalid>>()?;
    Ok(Edits { remove, set })
}

/// Tyk's path pattern: `{name}` is one segment, `/*` anything below, the
/// rest a regular expression found anywhere in the path (Tyk's default
/// matching, without prefix or suffix anchoring).
pub(super) fn path_pattern(field: &str, path: &str) -> Result<regex::Regex, Invalid> {
    let mut pattern = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        pattern.push_str(&rest[..open]);
        pattern.push_str("([^/]+)");
        rest = &rest[open + close + 1..];
    }
    pattern.push_str(rest);
    let pattern = pattern.replace("/*/", "/[^/]+/").replace("/*", "/.*");
    regex::Regex::new(&pattern)
        .map_err(|e| Invalid::new(field, format!("{path:?} is not a path pattern: {e}")))
}

fn path_entries(field: &str, value: Option<&Value>) -> Result<Vec<PathEdits>, Invalid> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let entries: Vec<PathSection> = serde_json::from_value(value.clone()).map_err(|e| {
        Invalid::new(
            field,
            format!("{e} (a list of {{path, method, delete_headers, add_headers}})"),
        )
    })?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let at = format!("{field}[{i}]");
            if entry.path.is_empty() {
                return Err(Invalid::new(format!("{at}.path"), "is required"));
            }
            if entry.method.is_empty() {
                return Err(Invalid::new(format!("{at}.method"), "is required"));
            }
            Ok(PathEdits {
                method: entry.method.to_ascii_uppercase(),
                path: path_pattern(&format!("{at}.path"), &entry.path)?,
                edits: edits(
                    &at,
                    entry.delete_headers,
                    entry.add_headers,
                    ("delete_headers", "add_headers"),
                )?,
            })
        })
        .collect()
}

fn version_rules(
    field: &str,
    section: VersionSection,
    injector: &Edits,
) -> Result<VersionRules, Invalid> {
    let paths = section.extended_paths.unwrap_or_default();
    for name in BODY_TRANSFORMS {
        let filled = paths
            .get(*name)
            .is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()));
        if filled {
            return Err(Invalid::new(
                format!("{field}.extended_paths.{name}"),
                "body transforms are not run by Meridian's gateway; remove them (headers can be changed with transform_headers)",
            ));
        }
    }
    let mut rules = VersionRules {
        request_paths: path_entries(
            &format!("{field}.extended_paths.transform_headers"),
            paths.get("transform_headers"),
        )?,
        response_paths: path_entries(
            &format!("{field}.extended_paths.transform_response_headers"),
            paths.get("transform_response_headers"),
        )?,
        ..VersionRules::default()
    };
    let request = edits(
        field,
        section.global_headers_remove,
        section.global_headers,
        ("global_headers_remove", "global_headers"),
    )?;
    if !section.global_headers_disabled {
        rules.request = request;
    }
    let response = edits(
        field,
        section.global_response_headers_remove,
        section.global_response_headers,
        ("global_response_headers_remove", "global_response_headers"),
    )?;
    // Tyk's switch turns off the processor's headers too.
    if !section.global_response_headers_disabled {
        rules.response = [response, injector.clone()]
            .into_iter()
            .filter(|e| !e.is_empty())
            .collect();
    }
    Ok(rules)
}

/// The `header_injector` processor's options; any other processor is
/// refused, naming it.
fn processors(def: &ApiDefinition) -> Result<Edits, Invalid> {
    let Some(list) = def
        .other
        .get("response_processors")
        .filter(|v| !v.is_null())
    else {
        return Ok(Edits::default());
    };
    let list: Vec<Processor> = serde_json::from_value(list.clone()).map_err(|e| {
        Invalid::new(
            "response_processors",
            format!("{e} (a list of {{name, options}})"),
        )
    })?;
    let mut injector = Edits::default();
    for (i, p) in list.into_iter().enumerate() {
        if !PROCESSORS.contains(&p.name.as_str()) {
            return Err(Invalid::new(
                format!("response_processors[{i}].name"),
                format!(
                    "{:?} is not run by Meridian's gateway (it runs {}); remove it",
                    p.name,
                    PROCESSORS.join(", ")
                ),
            ));
        }
        let field = format!("response_processors[{i}].options");
        let options: InjectorOptions = match p.options.filter(|v| !v.is_null()) {
            None => InjectorOptions::default(),
            Some(v) => serde_json::from_value(v).map_err(|e| {
                Invalid::new(
                    &field,
                    format!("{e} (add_headers: a map of names to values, remove_headers: a list)"),
                )
            })?,
        };
        let more = edits(
            &field,
            options.remove_headers,
            options.add_headers,
            ("remove_headers", "add_headers"),
        )?;
        injector.remove.extend(more.remove);
        injector.set.extend(more.set);
    }
    Ok(injector)
}

/// The version a request to an API that is not versioned is in: `Default`,
/// else `default_version`, else the first by name.
pub(super) fn unversioned_name(def: &ApiDefinition) -> Option<String> {
    let versions = &def.version_data.versions;
    if versions.contains_key("Default") {
        return Some("Default".into());
    }
    let default = &def.version_data.default_version;
    if versions.contains_key(default) {
        return Some(default.clone());
    }
    versions.keys().next().cloned()
}

/// Compiles a definition's header rules (`None` when it has none); a
/// malformed rule is refused naming its field.
pub fn compile(def: &ApiDefinition) -> Result<Option<Transforms>, Invalid> {
    let injector = processors(def)?;
    let mut versions = HashMap::new();
    for (name, info) in &def.version_data.versions {
        let field = format!("version_data.versions.{name}");
        let section: VersionSection =
            serde_json::from_value(Value::Object(info.other.clone())).map_err(|e| {
                Invalid::new(
                    &field,
                    format!("{e} (global_headers and the like: maps of names to values; *_remove: lists of names)"),
                )
            })?;
        let rules = version_rules(&field, section, &injector)?;
        let empty = rules.request.is_empty()
            && rules.response.is_empty()
            && rules.request_paths.is_empty()
            && rules.response_paths.is_empty();
        if !empty {
            versions.insert(name.clone(), rules);
        }
    }
    if versions.is_empty() {
        return Ok(None);
    }
    Ok(Some(Transforms {
        versions,
        unversioned: unversioned_name(def),
        context_vars: def
            .other
            .get("enable_context_vars")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }))
}

/// A session metadata value as Tyk writes it into a header: strings as
/// they are, numbers in their shortest form, lists joined with `,`.
pub fn meta_value(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(meta_value)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    struct Fixed;

    impl Vars for Fixed {
        fn context(&self, name: &str) -> Option<String> {
            (name == "remote_addr").then(|| "10.0.0.1".into())
        }
        fn meta(&self, key: &str) -> Option<String> {
            match key {
                "team" => Some("blue".into()),
                "evil" => Some("a\r\nX-Injected: 1".into()),
                _ => None,
            }
        }
    }

    fn def(v: Value) -> ApiDefinition {
        serde_json::from_value(v).unwrap()
    }

    fn versioned(version: Value, top: Value) -> ApiDefinition {
        let mut d = json!({"api_id": "a", "proxy": {"listen_path": "/a/", "target_url": "http://u"},
            "version_data": {"not_versioned": true, "versions": {"Default": version}}});
        for (k, v) in top.as_object().unwrap() {
            d[k] = v.clone();
        }
        def(d)
    }

    #[test]
    fn templates_resolve_known_variables_and_blank_the_rest() {
        let t = Template::parse(
            "ip=$tyk_context.remote_addr team=$tyk_meta.team x=$tyk_meta.none $tyk_context.",
        );
        assert_eq!(t.render(&Fixed), "ip=10.0.0.1 team=blue x= $tyk_context.");
        assert_eq!(Template::parse("plain").render(&Fixed), "plain");
        assert_eq!(
            Template::parse("$tyk_meta.evil").render(&Fixed),
            "a  X-Injected: 1",
            "no line break reaches a header"
        );
    }

    #[test]
    fn rules_apply_in_tyks_order() {
        let d = versioned(
            json!({"name": "Default",
                "global_headers": {"X-Global": "g", "X-Both": "global"},
                "global_headers_remove": ["Authorization"],
                "global_response_headers": {"X-Out": "o"},
                "global_response_headers_remove": ["Server"],
                "extended_paths": {
                    "transform_headers": [
                        {"path": "/pets/{id}", "method": "GET", "add_headers": {"X-Both": "path"}, "delete_headers": ["X-Global"]},
                        {"path": "/pets", "method": "GET", "add_headers": {"X-Never": "second"}}],
                    "transform_response_headers": [
                        {"path": "/pets/*", "method": "get", "add_headers": {"X-Out": "path"}, "delete_headers": ["ETag"]}]}}),
            json!({"response_processors": [{"name": "header_injector", "options": {"add_headers": {"X-Injected": "$tyk_meta.team"}, "remove_headers": ["X-Powered-By"]}}]}),
        );
        let t = compile(&d).unwrap().expect("has rules");
        let got = t.for_request(None, "GET", "/pets/7", &Fixed).unwrap();
        assert_eq!(
            got.request,
            Rendered {
                remove: vec!["authorization".into(), "x-both".into(), "x-global".into()],
                set: vec![("x-both".into(), "path".into())],
            },
            "globals first, then the first matching path entry"
        );
        assert_eq!(
            got.response,
            Rendered {
                remove: vec![
                    "etag".into(),
                    "x-out".into(),
                    "server".into(),
                    "x-powered-by".into(),
                    "x-injected".into()
                ],
                set: vec![
                    ("x-out".into(), "o".into()),
                    ("x-injected".into(), "blue".into())
                ],
            },
            "the path entry, then the globals, then the processor"
        );
        let other = t.for_request(None, "POST", "/pets/7", &Fixed).unwrap();
        assert_eq!(
            other.request.set,
            vec![
                ("x-both".to_owned(), "global".to_owned()),
                ("x-global".to_owned(), "g".to_owned())
            ],
            "no path entry for POST"
        );
        // The processor's removal comes after the globals' sets.
        let d = versioned(
            json!({"name": "Default", "global_response_headers": {"X-A": "1"}}),
            json!({"response_processors": [{"name": "header_injector", "options": {"remove_headers": ["x-a"]}}]}),
        );
        let got = compile(&d)
            .unwrap()
            .unwrap()
            .for_request(None, "GET", "/", &Fixed)
            .unwrap();
        assert!(got.response.set.is_empty() && got.response.drops("X-A"));
    }

    #[test]
    fn definitions_without_rules_compile_to_nothing() {
        let d = versioned(
            json!({"name": "Default", "global_headers": {}, "extended_paths": {"transform_headers": []}}),
            json!({}),
        );
        assert!(compile(&d).unwrap().is_none());
    }

    #[test]
    fn what_is_not_served_or_not_allowed_is_refused_naming_the_field() {
        let cases = [
            (
                versioned(
                    json!({"global_headers": {"Content-Length": "1"}}),
                    json!({}),
                ),
                "version_data.versions.Default.global_headers",
            ),
            (
                versioned(json!({"global_headers_remove": ["Connection"]}), json!({})),
                "version_data.versions.Default.global_headers_remove",
            ),
            (
                versioned(
                    json!({"global_response_headers": {"bad name": "x"}}),
                    json!({}),
                ),
                "version_data.versions.Default.global_response_headers",
            ),
            (
                versioned(
                    json!({"extended_paths": {"transform_headers": [{"path": "/x", "add_headers": {"A": "b"}}]}}),
                    json!({}),
                ),
                "version_data.versions.Default.extended_paths.transform_headers[0].method",
            ),
            (
                versioned(
                    json!({"extended_paths": {"transform_headers": [{"path": "/x(", "method": "GET"}]}}),
                    json!({}),
                ),
                "version_data.versions.Default.extended_paths.transform_headers[0].path",
            ),
            (
                versioned(
                    json!({"extended_paths": {"transform_response": [{"path": "/x", "method": "GET"}]}}),
                    json!({}),
                ),
                "version_data.versions.Default.extended_paths.transform_response",
            ),
            (
                versioned(
                    json!({}),
                    json!({"response_processors": [{"name": "header_injector"}, {"name": "response_body_transform"}]}),
                ),
                "response_processors[1].name",
            ),
            (
                versioned(
                    json!({}),
                    json!({"response_processors": [{"name": "header_injector", "options": {"add_headers": ["x"]}}]}),
                ),
                "response_processors[0].options",
            ),
        ];
        for (d, field) in cases {
            let e = compile(&d).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn metadata_values_read_as_tyk_writes_them() {
        assert_eq!(meta_value(&json!("a")).as_deref(), Some("a"));
        assert_eq!(meta_value(&json!(3)).as_deref(), Some("3"));
        assert_eq!(meta_value(&json!(["a", "", 2])).as_deref(), Some("a,2"));
        assert_eq!(meta_value(&json!({"a": 1})), None);
    }
}
