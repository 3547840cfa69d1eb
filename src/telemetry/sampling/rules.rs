//! Sampling rules (`--sampling-rules`, YAML): which new roots are sampled, by what they are.
//! Rules are tried in order and the first that matches decides; a request no rule matches gets
//! the configured default sampler (`OTEL_TRACES_SAMPLER`). Rules decide new roots only: a request
//! that continues a trace follows its parent's decision when the sampler is parent-based, so a
//! trace is never cut in the middle.
//!
//! ```yaml
//! probe_defaults: true          # the built-in probe rules first (the default)
//! rules:
//!   - name: checkout             # optional, for logs
//!     match:                     # every field given must match; lists mean "any of"
//!       direction: inbound       # inbound | outbound
//!       method: [POST, PUT]
//!       route: /orders/{id}      # a route template, as configured
//!       path: [/login]           # exact paths
//!       path_prefix: /api/
//!       headers:
//!         - { name: x-canary, value: "1" }     # exact value
//!         - { name: user-agent, prefix: curl/ }
//!         - { name: x-debug }                  # present
//!     ratio: 1.0                 # a probability: consistent, writes ot=th
//!   - match: { path_prefix: /static/ }
//!     never: true
//!   - match: { direction: inbound }
//!     rate_limit: 10             # at most 10 new sampled roots per second per proxy
//!     ratio: 0.5                 # optional with rate_limit: the ratio first, then the limit
//! ```
//!
//! The probe defaults never sample requests from `kube-probe/*` user agents, to `/healthz`,
//! `/readyz`, `/livez`, `/ready`, `/live`, `/metrics` (and below them), or to
//! `grpc.health.v1.Health`. They still count in RED metrics.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};
use serde::Deserialize;

use super::{limiter::RateLimiter, threshold::Threshold};
use crate::{config::routes::Route, metrics::Direction};

/// What a rule does with a new root.
#[derive(Debug, Clone)]
pub enum Action {
    /// Never sampled.
    Never,
    /// Sampled iff the trace's randomness passes `threshold`; then, if set, only while `limit`
    /// has tokens.
    Sample {
        threshold: Threshold,
        limit: Option<Arc<RateLimiter>>,
    },
}

/// What a request shows the rules.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub direction: Direction,
    pub method: &'a Method,
    pub path: &'a str,
    pub route: Option<Route>,
    pub headers: &'a HeaderMap,
}

/// A parsed rules file: the sampling rules and the retention rules. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Rules(Arc<[Rule]>, Arc<[RetentionRule]>);

#[derive(Debug)]
struct Rule {
    name: Box<str>,
    matcher: Matcher,
    action: Action,
}

/// What a request must look like for a rule to apply.
#[derive(Debug, Default)]
struct Matcher {
    direction: Option<Direction>,
    methods: Box<[Method]>,
    route: Option<Box<str>>,
    paths: Box<[Box<str>]>,
    path_prefixes: Box<[Box<str>]>,
    headers: Box<[HeaderMatch]>,
}

/// What deferred sampling does with the spans of matching requests (`retention:` in the
/// file; first match wins; without a match: errors kept, slow learned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retain {
    /// Keep spans that failed.
    pub errors: bool,
    pub slow: Slow,
}

impl Default for Retain {
    fn default() -> Self {
        Retain {
            errors: true,
            slow: Slow::Learned,
        }
    }
}

/// When a span is slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slow {
    /// Over the route's learned p99 (and the floor).
    Learned,
    /// Over this.
    Over(std::time::Duration),
    /// Never kept as slow.
    Never,
}

#[derive(Debug)]
struct RetentionRule {
    matcher: Matcher,
    retain: Retain,
}

#[derive(Debug)]
struct HeaderMatch {
    name: HeaderName,
    test: HeaderTest,
}

#[derive(Debug)]
enum HeaderTest {
    Present,
    Equals(Box<[u8]>),
    Prefix(Box<[u8]>),
}

/// Why a rules file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("sampling rules: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("sampling rule {index} ({name}): {reason}")]
    Rule {
        index: usize,
        name: String,
        reason: String,
    },
}

// === the file ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "yes")]
    probe_defaults: bool,
    #[serde(default)]
    rules: Vec<RuleSpec>,
    #[serde(default)]
    retention: Vec<RetentionSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionSpec {
    #[serde(default, rename = "match")]
    matches: MatchSpec,
    /// `learned`, `never`, or a duration (`250ms`).
    #[serde(default)]
    slow: Option<String>,
    #[serde(default)]
    errors: Option<bool>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "match")]
    matches: MatchSpec,
    #[serde(default)]
    ratio: Option<f64>,
    #[serde(default)]
    rate_limit: Option<f64>,
    #[serde(default)]
    never: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MatchSpec {
    #[serde(default)]
    direction: Option<String>,
    #[serde(default)]
    method: OneOrMany,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    path: OneOrMany,
    #[serde(default)]
    path_prefix: OneOrMany,
    #[serde(default)]
    headers: Vec<HeaderSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderSpec {
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The paths the probe defaults never sample (and everything below them).
pub const PROBE_PATHS: [&str; 7] = [
    "/healthz",
    "/readyz",
    "/livez",
    "/ready",
    "/live",
    "/metrics",
    "/grpc.health.v1.Health",
];

// === impl Rules ===

impl Rules {
    /// The probe defaults alone: what a proxy without a rules file uses.
    pub fn defaults() -> Self {
        Rules(probe_rules().into(), Arc::new([]))
    }

    /// Parses a rules file.
    ///
    /// # Errors
    /// Invalid YAML, an unknown field, a rule with no action or `never` next to another action,
    /// a ratio outside `[0, 1]`, a rate limit that is not a positive number, an unknown
    /// direction or method, an invalid header name or a path that does not start with `/`.
    pub fn parse(yaml: &str) -> Result<Self, RulesError> {
        let file: File = if yaml.trim().is_empty() {
            serde_yaml_ng::from_str("{}")?
        } else {
            serde_yaml_ng::from_str(yaml)?
        };
        let mut rules = if file.probe_defaults {
            probe_rules()
        } else {
            Vec::new()
        };
        for (i, spec) in file.rules.into_iter().enumerate() {
            let name = spec.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
            let rule = build(spec, &name).map_err(|reason| RulesError::Rule {
                index: i + 1,
                name,
                reason,
            })?;
            rules.push(rule);
        }
        let mut retention = Vec::new();
        for (i, spec) in file.retention.into_iter().enumerate() {
            let err = |reason| RulesError::Rule {
                index: i + 1,
                name: format!("retention #{}", i + 1),
                reason,
            };
            let slow = match spec.slow.as_deref().map(str::trim) {
                None | Some("learned") => Slow::Learned,
                Some("never") => Slow::Never,
                Some(d) => Slow::Over(crate::config::parse_timeout(d).map_err(err)?),
            };
            retention.push(RetentionRule {
                matcher: build_matcher(spec.matches).map_err(err)?,
                retain: Retain {
                    errors: spec.errors.unwrap_or(true),
                    slow,
                },
            });
        }
        Ok(Rules(rules.into(), retention.into()))
    }

    /// What deferred sampling does with `req`'s span: the first matching retention rule.
    pub fn retain(&self, req: &RequestFacts<'_>) -> Retain {
        self.1
            .iter()
            .find(|r| r.matcher.matches(req))
            .map_or_else(Retain::default, |r| r.retain)
    }

    /// The first matching rule's action and name.
    pub fn decide(&self, req: &RequestFacts<'_>) -> Option<(&Action, &str)> {
        self.0
            .iter()
            .find(|r| r.matcher.matches(req))
            .map(|r| (&r.action, &*r.name))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn probe_rules() -> Vec<Rule> {
    let never = |name: &str, matcher| Rule {
        name: name.into(),
        matcher,
        action: Action::Never,
    };
    vec![
        never(
            "probe-defaults: kube-probe user agent",
            Matcher {
                headers: Box::new([HeaderMatch {
                    name: http::header::USER_AGENT,
                    test: HeaderTest::Prefix(b"kube-probe/"[..].into()),
                }]),
                ..Matcher::default()
            },
        ),
        never(
            "probe-defaults: health and metrics paths",
            Matcher {
                paths: PROBE_PATHS.iter().map(|&p| p.into()).collect(),
                ..Matcher::default()
            },
        ),
    ]
}

fn build(spec: RuleSpec, name: &str) -> Result<Rule, String> {
    let action = match (spec.never, spec.ratio, spec.rate_limit) {
        (true, None, None) => Action::Never,
        (true, _, _) => return Err("`never` cannot be combined with ratio or rate_limit".into()),
        (false, None, None) => return Err("needs one of ratio, rate_limit or never".into()),
        (false, ratio, limit) => {
            let ratio = ratio.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&ratio) {
                return Err(format!("ratio {ratio} is not in [0, 1]"));
            }
            let limit = match limit {
                // Below one per 1,000 s a "rate" is a misconfiguration, not a limit.
                Some(rate) if rate.is_finite() && rate >= 0.001 => {
                    Some(Arc::new(RateLimiter::per_second(rate)))
                }
                Some(rate) => {
                    return Err(format!(
                        "rate_limit {rate} is not a positive number of at least 0.001"
                    ))
                }
                None => None,
            };
            Action::Sample {
                threshold: Threshold::from_probability(ratio),
                limit,
            }
        }
    };
    Ok(Rule {
        name: name.into(),
        matcher: build_matcher(spec.matches)?,
        action,
    })
}

fn build_matcher(m: MatchSpec) -> Result<Matcher, String> {
    let direction = match m.direction.as_deref() {
        None => None,
        Some("inbound") => Some(Direction::Inbound),
        Some("outbound") => Some(Direction::Outbound),
        Some(other) => return Err(format!("direction {other:?} is not inbound or outbound")),
    };
    let methods = m
        .method
        .into_vec()
        .into_iter()
        .map(|s| {
            Method::from_bytes(s.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("method {s:?} is not a method"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let paths = |v: OneOrMany, what: &str| {
        v.into_vec()
            .into_iter()
            .map(|p| {
                if p.starts_with('/') {
                    Ok(p.into_boxed_str())
                } else {
                    Err(format!("{what} {p:?} does not start with /"))
                }
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let exact = paths(m.path, "path")?;
    let prefixes = paths(m.path_prefix, "path_prefix")?;
    let headers = m
        .headers
        .into_iter()
        .map(|h| {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("header name {:?} is invalid", h.name))?;
            let test = match (h.value, h.prefix) {
                (None, None) => HeaderTest::Present,
                (Some(v), None) => HeaderTest::Equals(v.into_bytes().into()),
                (None, Some(p)) => HeaderTest::Prefix(p.into_bytes().into()),
                (Some(_), Some(_)) => {
                    return Err(format!("header {:?}: value or prefix, not both", h.name))
                }
            };
            Ok(HeaderMatch { name, test })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Matcher {
        direction,
        methods: methods.into(),
        route: m.route.map(String::into_boxed_str),
        paths: exact.into(),
        path_prefixes: prefixes.into(),
        headers: headers.into(),
    })
}

// === impl Matcher ===

impl Matcher {
    fn matches(&self, req: &RequestFacts<'_>) -> bool {
        self.direction.is_none_or(|d| d == req.direction)
            && (self.methods.is_empty() || self.methods.contains(req.method))
            && self
                .route
                .as_deref()
                .is_none_or(|r| req.route.is_some_and(|got| got.as_str() == r))
            && (self.paths.is_empty() || self.paths.iter().any(|p| path_is(req.path, p)))
            && (self.path_prefixes.is_empty()
                || self
                    .path_prefixes
                    .iter()
                    .any(|p| req.path.starts_with(&**p)))
            && self.headers.iter().all(|h| h.matches(req.headers))
    }
}

/// `path` is `p` or lies below it (`/healthz`, `/healthz/`, `/healthz/etcd`).
fn path_is(path: &str, p: &str) -> bool {
    path.strip_prefix(p)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl HeaderMatch {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        match &self.test {
            HeaderTest::Present => values.next().is_some(),
            HeaderTest::Equals(v) => values.any(|got| got.as_bytes() == &**v),
            HeaderTest::Prefix(p) => values.any(|got| got.as_bytes().starts_with(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestFacts<'a> {
        RequestFacts {
            direction: Direction::Inbound,
            method,
            path,
            route: None,
            headers,
        }
    }

    fn name_for(rules: &Rules, req: &RequestFacts<'_>) -> Option<String> {
        rules.decide(req).map(|(_, n)| n.to_owned())
    }

    #[test]
    fn probe_defaults_match_probes_and_health_paths_only() {
        let rules = Rules::defaults();
        let get = Method::GET;
        let none = HeaderMap::new();
        for path in [
            "/healthz",
            "/readyz",
            "/livez/etcd",
            "/ready",
            "/live",
            "/metrics",
        ] {
            assert!(rules.decide(&facts(&get, path, &none)).is_some(), "{path}");
        }
        let grpc = Method::POST;
        assert!(rules
            .decide(&facts(&grpc, "/grpc.health.v1.Health/Check", &none))
            .is_some());
        for path in ["/", "/healthzz", "/api/ready", "/livestream"] {
            assert!(rules.decide(&facts(&get, path, &none)).is_none(), "{path}");
        }
        let mut probe = HeaderMap::new();
        probe.insert(http::header::USER_AGENT, "kube-probe/1.35".parse().unwrap());
        assert!(rules.decide(&facts(&get, "/", &probe)).is_some());
    }

    #[test]
    fn first_match_wins_and_every_field_must_match() {
        let rules = Rules::parse(
            r#"
probe_defaults: false
rules:
  - name: canary
    match:
      direction: inbound
      method: [post, PUT]
      path_prefix: /api/
      headers:
        - { name: x-canary, value: "1" }
    ratio: 1
  - name: static
    match: { path_prefix: [/static/, /assets/] }
    never: true
  - name: outbound
    match: { direction: outbound }
    rate_limit: 2
"#,
        )
        .unwrap();
        let post = Method::POST;
        let mut canary = HeaderMap::new();
        canary.insert("x-canary", "1".parse().unwrap());
        let none = HeaderMap::new();
        assert_eq!(
            name_for(&rules, &facts(&post, "/api/x", &canary)).as_deref(),
            Some("canary")
        );
        assert_eq!(name_for(&rules, &facts(&post, "/api/x", &none)), None);
        assert_eq!(
            name_for(&rules, &facts(&Method::GET, "/api/x", &canary)),
            None
        );
        assert_eq!(
            name_for(&rules, &facts(&Method::GET, "/assets/a.js", &none)).as_deref(),
            Some("static")
        );
        let mut out = facts(&Method::GET, "/", &none);
        out.direction = Direction::Outbound;
        assert_eq!(name_for(&rules, &out).as_deref(), Some("outbound"));
        assert!(matches!(
            rules.decide(&out).unwrap().0,
            Action::Sample { limit: Some(_), .. }
        ));
        // Probe defaults were turned off.
        assert_eq!(
            name_for(&rules, &facts(&Method::GET, "/healthz", &none)),
            None
        );
    }

    #[test]
    fn routes_match_by_template_text() {
        let rules = Rules::parse("rules:\n  - match:\n      route: /users/{id}\n    never: true\n")
            .unwrap();
        let none = HeaderMap::new();
        let mut req = facts(&Method::GET, "/users/7", &none);
        assert!(rules.decide(&req).is_none());
        req.route = Some(Route::Matched("/users/{id}"));
        assert!(matches!(rules.decide(&req).unwrap().0, Action::Never));
        req.route = Some(Route::Unmatched);
        assert!(rules.decide(&req).is_none());
    }

    #[test]
    fn bad_files_are_rejected_with_the_rule_named() {
        for (yaml, needle) in [
            ("rules: [ { match: {}, ratio: 2 } ]", "not in [0, 1]"),
            ("rules: [ { match: {} } ]", "needs one of"),
            (
                "rules: [ { never: true, ratio: 0.5 } ]",
                "cannot be combined",
            ),
            ("rules: [ { rate_limit: -1 } ]", "positive"),
            (
                "rules: [ { match: { direction: sideways }, never: true } ]",
                "inbound or outbound",
            ),
            (
                "rules: [ { match: { path: healthz }, never: true } ]",
                "start with /",
            ),
            (
                "rules: [ { match: { method: \"GE T\" }, never: true } ]",
                "not a method",
            ),
            (
                "rules: [ { match: { headers: [ { name: \"a b\" } ] }, never: true } ]",
                "invalid",
            ),
            ("rules: [ { ratoi: 0.5 } ]", "unknown field"),
            ("rules: [", "sampling rules"),
        ] {
            let err = Rules::parse(yaml).unwrap_err().to_string();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }

    #[test]
    fn retention_rules_set_per_route_slow_thresholds_and_errors() {
        let rules = Rules::parse(
            "retention:\n  - match:\n      route: /checkout\n    slow: 250ms\n  - match: { path_prefix: /batch/ }\n    slow: never\n    errors: false\n",
        )
        .unwrap();
        let none = HeaderMap::new();
        let mut req = facts(&Method::GET, "/checkout", &none);
        req.route = Some(Route::Matched("/checkout"));
        assert_eq!(
            rules.retain(&req),
            Retain {
                errors: true,
                slow: Slow::Over(std::time::Duration::from_millis(250))
            }
        );
        let batch = facts(&Method::GET, "/batch/nightly", &none);
        assert_eq!(
            rules.retain(&batch),
            Retain {
                errors: false,
                slow: Slow::Never
            }
        );
        assert_eq!(
            rules.retain(&facts(&Method::GET, "/", &none)),
            Retain::default()
        );
        for bad in [
            "retention: [ { slow: fast } ]",
            "retention: [ { slow: 0s } ]",
            "retention: [ { keep: 1 } ]",
        ] {
            assert!(Rules::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_empty_file_means_the_probe_defaults() {
        assert_eq!(Rules::parse("").unwrap().len(), 2);
        assert_eq!(Rules::parse("rules: []").unwrap().len(), 2);
        assert_eq!(Rules::parse("probe_defaults: false").unwrap().len(), 0);
    }
}
