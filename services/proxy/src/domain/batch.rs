//! Batch requests (Tyk's `enable_batch_request_support`): `POST
//! {listen_path}/tyk/batch/` with `{"requests": [{method, headers, body,
//! relative_url}], "suppress_parallel_execution": bool}`. Each request is
//! rebuilt under the API's listen path (never another host, never another
//! API: its path is normalised and must stay under the listen path) and
//! sent through the gateway's whole pipeline with its own headers (its own
//! key, counted against that key's limits). The answer is
//! `[{relative_url, code, headers, body}]`, in the order asked.
//!
//! This module reads and checks a batch; the data plane runs it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::path;

/// Most requests in one batch.
pub const MAX_REQUESTS: usize = 100;

/// Most bytes of a batch request's body.
pub const MAX_BODY: usize = 1024 * 1024;

/// Most bytes of the answers' bodies together.
pub const MAX_REPLY: usize = 10 * 1024 * 1024;

/// Tyk's answer to a body that is not a batch.
pub const MALFORMED: &str = "Batch request malformed";

/// The path of an API's batch endpoint, when `path` is it (with or
/// without a trailing `/`).
pub fn is_batch_path(listen_path: &str, path: &str) -> bool {
    path.strip_prefix(listen_path)
        .is_some_and(|rest| matches!(rest, "/tyk/batch" | "/tyk/batch/"))
}

/// One request of a batch, as sent.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RequestDefinition {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Header names to values.
    pub headers: Option<BTreeMap<String, String>>,
    /// The body, as text.
    pub body: String,
    /// Where, relative to the listen path (`items/1?full=true`).
    pub relative_url: String,
}

/// A batch, as sent.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Batch {
    /// The requests, answered in this order.
    pub requests: Vec<RequestDefinition>,
    /// Send them one after another instead of all at once.
    pub suppress_parallel_execution: bool,
}

/// One request of a batch, checked and rebuilt under the listen path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubRequest {
    /// The method, in upper case.
    pub method: String,
    /// The path and query to ask the gateway for (normalised, under the
    /// listen path).
    pub target: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
    /// As sent, for the answer.
    pub relative_url: String,
}

/// One answer of a batch (Tyk's `BatchReplyUnit`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ReplyUnit {
    /// As sent.
    pub relative_url: String,
    /// The status.
    pub code: u16,
    /// Header names (as Go writes them, `Content-Type`) to their values.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The body, as text.
    pub body: String,
}

/// Reads a batch's body; the message of a 400 when it is not one, or
/// when one of its requests cannot be sent (naming it).
pub fn parse(body: &[u8], listen_path: &str) -> Result<(Vec<SubRequest>, bool), String> {
    let batch: Batch = serde_json::from_slice(body).map_err(|_| MALFORMED.to_owned())?;
    if batch.requests.is_empty() {
        return Err(format!("{MALFORMED}: requests is empty"));
    }
    if batch.requests.len() > MAX_REQUESTS {
        return Err(format!(
            "{MALFORMED}: {} requests, at most {MAX_REQUESTS} in one batch",
            batch.requests.len()
        ));
    }
    let subs = batch
        .requests
        .into_iter()
        .enumerate()
        .map(|(i, r)| sub_request(i, r, listen_path))
        .collect::<Result<_, _>>()?;
    Ok((subs, batch.suppress_parallel_execution))
}

fn sub_request(i: usize, r: RequestDefinition, listen_path: &str) -> Result<SubRequest, String> {
    let field = |name: &str| format!("{MALFORMED}: requests[{i}].{name}");
    let method = if r.method.is_empty() {
        "GET".to_owned()
    } else {
        r.method.to_ascii_uppercase()
    };
    if !method.bytes().all(|b| b.is_ascii_uppercase()) || method.len() > 16 {
        return Err(format!(
            "{} {:?} is not an HTTP method",
            field("method"),
            r.method
        ));
    }
    let relative = r.relative_url.trim_start_matches('/');
    if r.relative_url.contains("://")
        || r.relative_url.starts_with("//")
        || r.relative_url.bytes().any(|b| !b.is_ascii_graphic())
    {
        return Err(format!(
            "{} {:?} must be a path relative to the API (no host, no spaces)",
            field("relative_url"),
            r.relative_url
        ));
    }
    let (rel_path, query) = match relative.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (relative, None),
    };
    let joined = format!("{listen_path}/{rel_path}");
    let normalised = path::normalize(&joined)
        .map_err(|why| format!("{} {:?}: {why}", field("relative_url"), r.relative_url))?
        .into_owned();
    let under = normalised == listen_path
        || normalised
            .strip_prefix(listen_path)
            .is_some_and(|rest| rest.starts_with('/'))
        || listen_path.is_empty();
    if !under || is_batch_path(listen_path, &normalised) {
        return Err(format!(
            "{} {:?} must stay under the API's listen path (and not be the batch endpoint)",
            field("relative_url"),
            r.relative_url
        ));
    }
    let mut target = normalised;
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    let mut headers = Vec::new();
    for (name, value) in r.headers.unwrap_or_default() {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let lower = name.to_ascii_lowercase();
        if !valid_name
            || value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f)
            || matches!(
                lower.as_str(),
                "host" | "content-length" | "transfer-encoding" | "connection"
            )
        {
            return Err(format!(
                "{} {name:?} cannot be sent (a header name and a value on one line; Host, Content-Length, Transfer-Encoding and Connection are the gateway's)",
                field("headers")
            ));
        }
        headers.push((lower, value));
    }
    Ok(SubRequest {
        method,
        target,
        headers,
        body: r.body,
        relative_url: r.relative_url,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse_json(v: serde_json::Value) -> Result<(Vec<SubRequest>, bool), String> {
        parse(v.to_string().as_bytes(), "/shop")
    }

    #[test]
    fn requests_are_rebuilt_under_the_listen_path() {
        let (subs, serial) = parse_json(json!({"requests": [
            {"method": "get", "headers": {"Authorization": "k"}, "body": "", "relative_url": "items/1?full=true"},
            {"method": "POST", "body": "{}", "relative_url": "/items/./2/../3"},
            {"relative_url": ""}],
            "suppress_parallel_execution": true}))
        .unwrap();
        assert!(serial);
        assert_eq!(subs[0].method, "GET");
        assert_eq!(subs[0].target, "/shop/items/1?full=true");
        assert_eq!(subs[0].headers, vec![("authorization".into(), "k".into())]);
        assert_eq!(subs[1].target, "/shop/items/3");
        assert_eq!(subs[2].target, "/shop/");
        assert!(is_batch_path("/shop", "/shop/tyk/batch/"));
        assert!(is_batch_path("/shop", "/shop/tyk/batch"));
        assert!(!is_batch_path("/shop", "/shop/tyk/batch/x"));
    }

    #[test]
    fn what_would_leave_the_api_or_is_not_a_batch_is_refused() {
        let refused = |v: serde_json::Value| parse_json(v).unwrap_err();
        assert_eq!(parse(b"not json", "/shop").unwrap_err(), MALFORMED);
        assert_eq!(refused(json!({"requests": "x"})), MALFORMED);
        assert!(refused(json!({"requests": []})).contains("empty"));
        for (url, why) in [
            ("../admin/x", "listen path"),
            ("http://evil.example/x", "relative"),
            ("//evil.example/x", "relative"),
            ("a b", "relative"),
            ("tyk/batch/", "batch endpoint"),
            ("%2e%2e/admin", "listen path"),
        ] {
            let e = refused(json!({"requests": [{"method": "GET", "relative_url": url}]}));
            assert!(
                e.contains("requests[0].relative_url") && e.contains(why),
                "{url}: {e}"
            );
        }
        let e = refused(json!({"requests": [{"method": "G T", "relative_url": "x"}]}));
        assert!(e.contains("requests[0].method"), "{e}");
        let e = refused(json!({"requests": [{"relative_url": "x", "headers": {"Host": "evil"}}]}));
        assert!(e.contains("requests[0].headers"), "{e}");
        let many: Vec<_> = (0..=MAX_REQUESTS)
            .map(|_| json!({"relative_url": "x"}))
            .collect();
        assert!(refused(json!({"requests": many})).contains("at most 100"));
    }
}
