//! The request pipeline: the steps a request to an API goes through,
//! chosen once per API when its definition is folded (so an API pays only
//! for the steps it enables: a keyless API with no organisation runs
//! none), and the per-request [`Context`] they fill in.
//!
//! Before them, an API with CORS on has its CORS decided
//! ([`super::cors`]): a preflight is answered there, before any step (it
//! carries no key), and other requests go on with the headers CORS adds.
//!
//! A request moves through four phases, after Cloudflare pingora's
//! `ProxyHttp`, each a method of the data plane
//! (`crate::adapters::dataplane`): *request* (`request_phase`: the steps
//! below, each continuing or refusing with Tyk's status and message),
//! *upstream request* (`upstream_request_phase`: the forwarded request is
//! written: path, headers), *response* (`response_phase`: the upstream's
//! answer is passed back with what the steps add, such as `X-RateLimit-*`),
//! and *done* (`done_phase`: what is counted once the answer is decided). Each step's decision is a pure function of its state
//! and the request's facts ([`super::access`], [`super::limits`],
//! [`meridian_keys::limits`]); counters and clocks live in the adapters.

use std::sync::Arc;

use meridian_keys::Session;

use super::limits::LimitHeaders;
use super::routes::Route;

/// One step of the request phase, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The API's organisation (its `org_id`), first of all: an inactive
    /// organisation refuses every request; its rate limit and quota count
    /// every request to its APIs, keyless ones too (Tyk's
    /// `OrganizationMonitor`). No organisation session: nothing to do.
    Org,
    /// The version the request is for (versioned APIs only).
    Version,
    /// A Tyk OAS API's operation rules ([`super::endpoints`]): an
    /// operation not allowed, or blocked, is refused before the key check;
    /// one that ignores authentication skips the key steps.
    Endpoint,
    /// Key auth: the key from the API's auth header, and what its
    /// effective session allows (active, not expired, this API and
    /// version, `allowed_urls`).
    Key,
    /// The key's rate limit, with throttling (unless the API sets
    /// `disable_rate_limit`).
    KeyRate,
    /// The key's quota (unless the API sets `disable_quota`).
    KeyQuota,
}

/// The steps of one API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// In order.
    pub steps: Vec<Step>,
}

/// What a plan is built from (read off the API definition).
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanInput {
    /// The API names an organisation.
    pub has_org: bool,
    /// The API is versioned.
    pub versioned: bool,
    /// No key needed.
    pub keyless: bool,
    /// `disable_rate_limit`.
    pub disable_rate_limit: bool,
    /// `disable_quota`.
    pub disable_quota: bool,
}

impl Plan {
    /// The steps an API with these settings runs.
    pub fn of(input: PlanInput) -> Self {
        let mut steps = Vec::with_capacity(5);
        if input.has_org {
            steps.push(Step::Org);
        }
        if input.versioned {
            steps.push(Step::Version);
        }
        if !input.keyless {
            steps.push(Step::Key);
            if !input.disable_rate_limit {
                steps.push(Step::KeyRate);
            }
            if !input.disable_quota {
                steps.push(Step::KeyQuota);
            }
        }
        Self { steps }
    }
}

impl Plan {
    /// The plan with the operation-rules step, after the organisation's
    /// and the version's (where Tyk's version check decides them).
    pub fn with_endpoints(&mut self) {
        let at = self
            .steps
            .iter()
            .take_while(|s| matches!(s, Step::Org | Step::Version))
            .count();
        self.steps.insert(at, Step::Endpoint);
    }
}

/// What the steps read off a request, whichever HTTP/1 code parsed it
/// (the data plane's fast path or hyper).
pub trait Facts {
    /// The normalised path (see [`super::path`]).
    fn path(&self) -> &str;
    /// The query, without its `?`.
    fn query(&self) -> Option<&str>;
    /// The method.
    fn method(&self) -> &str;
    /// The first value of header `name` (lower case), when it is visible
    /// ASCII (what `HeaderValue::to_str` accepts).
    fn header(&self, name: &str) -> Option<&str>;
}

/// A header value as text: visible ASCII, spaces and tabs, or nothing.
pub fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// The key a request authenticated with.
#[derive(Clone, Debug)]
pub struct Identity {
    /// SHA-256 (hex) of the key.
    pub key_hash: String,
    /// Its effective session (the key merged with its policies).
    pub session: Arc<Session>,
    /// The key's quota reset marker (its own `last_updated`).
    pub quota_reset: Arc<str>,
}

/// One request's way through the pipeline.
#[derive(Debug)]
pub struct Context {
    /// The API.
    pub route: Arc<Route>,
    /// The version resolved (`None`: not versioned).
    pub version: Option<String>,
    /// The version's path segment is removed before forwarding.
    pub strip_segment: bool,
    /// The key, once the key step passed.
    pub identity: Option<Identity>,
    /// `X-RateLimit-*` from the quota step (Tyk's default source).
    pub quota_headers: Option<LimitHeaders>,
    /// `X-RateLimit-*` from the rate-limit step.
    pub rate_headers: Option<LimitHeaders>,
    /// Now, ms since the epoch, read once when the request arrived.
    pub now_ms: i64,
    /// What CORS adds to the answer, whatever it is ([`super::cors`]).
    pub cors_headers: super::cors::Added,
    /// Headers injected and removed both ways ([`super::transforms`]),
    /// once the steps passed.
    pub edits: Option<Box<super::transforms::RequestEdits>>,
    /// The operation needs no key (`ignoreAuthentication`).
    pub skip_auth: bool,
    /// The operation is answered by the gateway (`mockResponse`).
    pub mock: Option<Arc<super::endpoints::Mock>>,
    /// The operation's request is checked (`validateRequest`), with the
    /// values of its path's parameters.
    pub validate: Option<(Arc<super::validate::Validation>, Vec<String>)>,
}

impl Context {
    /// A request to `route` that arrived at `now_ms`.
    pub fn new(route: Arc<Route>, now_ms: i64) -> Self {
        Self {
            route,
            version: None,
            strip_segment: false,
            identity: None,
            quota_headers: None,
            rate_headers: None,
            now_ms,
            cors_headers: Vec::new(),
            edits: None,
            skip_auth: false,
            mock: None,
            validate: None,
        }
    }

    /// Now, Unix seconds.
    pub fn now_s(&self) -> i64 {
        self.now_ms.div_euclid(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_runs_only_the_steps_it_enables() {
        let plan = |i: PlanInput| Plan::of(i).steps;
        assert_eq!(
            plan(PlanInput {
                keyless: true,
                ..PlanInput::default()
            }),
            vec![],
            "keyless, no organisation: nothing before the upstream"
        );
        assert_eq!(
            plan(PlanInput::default()),
            vec![Step::Key, Step::KeyRate, Step::KeyQuota]
        );
        assert_eq!(
            plan(PlanInput {
                has_org: true,
                versioned: true,
                disable_quota: true,
                ..PlanInput::default()
            }),
            vec![Step::Org, Step::Version, Step::Key, Step::KeyRate],
            "the organisation comes first of all"
        );
        assert_eq!(
            plan(PlanInput {
                has_org: true,
                keyless: true,
                ..PlanInput::default()
            }),
            vec![Step::Org],
            "an organisation's limits count keyless traffic too"
        );
        let mut p = Plan::of(PlanInput {
            has_org: true,
            versioned: true,
            ..PlanInput::default()
        });
        p.with_endpoints();
        assert_eq!(
            p.steps,
            vec![
                Step::Org,
                Step::Version,
                Step::Endpoint,
                Step::Key,
                Step::KeyRate,
                Step::KeyQuota
            ]
        );
    }
}
