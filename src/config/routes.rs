//! Route templates (`--route /orders/{id}`): the bounded names a raw path is reduced to, for the
//! `http.route` span attribute, the span name, and the `route` metric label. A raw path never
//! becomes a label: a path that matches no template is [`Route::Unmatched`].
//!
//! Syntax: segments separated by `/`; `{name}` matches exactly one non-empty segment; a final
//! `{*name}` matches the rest of the path (one or more segments). Templates are tried in the
//! order given; the first match wins. Matching allocates nothing.
//!
//! A routes file (`--routes-file`) holds one template per line; blank lines and lines starting
//! with `#` are skipped. It may be reloaded while the proxy runs, so template texts are
//! interned: each distinct text is leaked once for the process's life, however often it is
//! loaded again.

use std::{
    collections::HashSet,
    fmt,
    sync::{Arc, Mutex},
};

/// The label value shared by every path that matches no template.
pub const UNMATCHED: &str = "_unmatched";

/// A configured set of templates. Empty means "no route label at all".
#[derive(Debug, Clone, Default)]
pub struct Routes(Arc<[Template]>);

#[derive(Debug)]
struct Template {
    raw: &'static str,
    segments: Box<[Segment]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Param,
    Rest,
}

/// Which template a path matched. `Copy`: it rides in labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// A configured template.
    Matched(&'static str),
    /// A template the proxy inferred from the path (`telemetry::autoroute`).
    Learned(&'static str),
    Unmatched,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Matched(t) | Route::Learned(t) => t,
            Route::Unmatched => UNMATCHED,
        }
    }

    /// The template, when there is one (configured or learned).
    pub fn template(self) -> Option<&'static str> {
        match self {
            Route::Matched(t) | Route::Learned(t) => Some(t),
            Route::Unmatched => None,
        }
    }
}

/// Why a template was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route template {template:?}: {reason}")]
pub struct RouteError {
    template: String,
    reason: &'static str,
}

impl Routes {
    /// Parses templates. Each distinct template text is leaked once (interned), so routes are
    /// `&'static str` labels.
    ///
    /// # Errors
    /// A template that does not start with `/`, has an empty or malformed `{..}` segment, or a
    /// `{*rest}` that is not last.
    pub fn parse<'a>(templates: impl IntoIterator<Item = &'a str>) -> Result<Self, RouteError> {
        let mut out = Vec::new();
        for t in templates
            .into_iter()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let err = |reason| RouteError {
                template: t.to_owned(),
                reason,
            };
            let rest = t
                .strip_prefix('/')
                .ok_or_else(|| err("must start with /"))?;
            let parts: Vec<&str> = if rest.is_empty() {
                Vec::new()
            } else {
                rest.split('/').collect()
            };
            let mut segments = Vec::with_capacity(parts.len());
            for (i, p) in parts.iter().enumerate() {
                let seg = match p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    Some(name) if name.starts_with('*') => {
                        if i + 1 != parts.len() {
                            return Err(err("{*rest} must be the last segment"));
                        }
                        Segment::Rest
                    }
                    Some(name) if !name.is_empty() && !name.contains(['{', '}']) => Segment::Param,
                    Some(_) => return Err(err("empty or malformed {parameter}")),
                    None if p.contains(['{', '}']) => {
                        return Err(err("braces must span a whole segment"))
                    }
                    None if p.is_empty() && i + 1 != parts.len() => {
                        return Err(err("empty segment"))
                    }
                    None => Segment::Literal((*p).into()),
                };
                segments.push(seg);
            }
            out.push(Template {
                raw: intern(t),
                segments: segments.into(),
            });
        }
        Ok(Routes(out.into()))
    }

    /// Parses a routes file: one template per line, `#` comments and blank lines skipped.
    ///
    /// # Errors
    /// As [`Routes::parse`], for the first bad line.
    pub fn parse_file(text: &str) -> Result<Self, RouteError> {
        Routes::parse(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#')),
        )
    }

    /// `self`'s templates, then `other`'s (the first match still wins).
    pub fn chain(&self, other: &Routes) -> Routes {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        let all: Vec<Template> = self
            .0
            .iter()
            .chain(other.0.iter())
            .map(|t| Template {
                raw: t.raw,
                segments: t.segments.iter().cloned().collect(),
            })
            .collect();
        Routes(all.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The route for `path` (no query string), or `None` when no templates are configured.
    pub fn route(&self, path: &str) -> Option<Route> {
        if self.0.is_empty() {
            return None;
        }
        let found = self.0.iter().find(|t| t.matches(path));
        Some(found.map_or(Route::Unmatched, |t| Route::Matched(t.raw)))
    }
}

/// The one `&'static str` for a template text.
pub(crate) fn intern(text: &str) -> &'static str {
    static TEXTS: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut texts = TEXTS.lock().unwrap_or_else(|e| e.into_inner());
    let texts = texts.get_or_insert_with(HashSet::new);
    if let Some(&known) = texts.get(text) {
        return known;
    }
    let leaked: &'static str = Box::leak(text.to_owned().into_boxed_str());
    texts.insert(leaked);
    leaked
}

impl Template {
    fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        if rest.is_empty() {
            return self.segments.is_empty();
        }
        for seg in self.segments.iter() {
            match seg {
                Segment::Rest => return parts.next().is_some_and(|p| !p.is_empty()),
                Segment::Param => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(l) => match parts.next() {
                    Some(p) if p == &**l => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raws: Vec<&str> = self.0.iter().map(|t| t.raw).collect();
        f.write_str(&raws.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(t: &[&str]) -> Routes {
        Routes::parse(t.iter().copied()).unwrap()
    }

    #[test]
    fn params_match_one_segment_and_literals_match_exactly() {
        let r = routes(&["/orders/{id}", "/orders/{id}/items/{item}", "/health"]);
        assert_eq!(r.route("/orders/42"), Some(Route::Matched("/orders/{id}")));
        assert_eq!(
            r.route("/orders/42/items/7"),
            Some(Route::Matched("/orders/{id}/items/{item}"))
        );
        assert_eq!(r.route("/health"), Some(Route::Matched("/health")));
        assert_eq!(r.route("/orders"), Some(Route::Unmatched));
        assert_eq!(r.route("/orders/"), Some(Route::Unmatched));
        assert_eq!(r.route("/orders/42/items"), Some(Route::Unmatched));
        assert_eq!(r.route("/healthz"), Some(Route::Unmatched));
    }

    #[test]
    fn rest_matches_one_or_more_trailing_segments() {
        let r = routes(&["/static/{*path}", "/"]);
        assert_eq!(
            r.route("/static/a/b.css"),
            Some(Route::Matched("/static/{*path}"))
        );
        assert_eq!(
            r.route("/static/a"),
            Some(Route::Matched("/static/{*path}"))
        );
        assert_eq!(r.route("/static"), Some(Route::Unmatched));
        assert_eq!(r.route("/"), Some(Route::Matched("/")));
    }

    #[test]
    fn first_template_wins() {
        let r = routes(&["/users/me", "/users/{id}"]);
        assert_eq!(r.route("/users/me"), Some(Route::Matched("/users/me")));
        assert_eq!(r.route("/users/9"), Some(Route::Matched("/users/{id}")));
    }

    #[test]
    fn no_templates_means_no_route_label() {
        assert_eq!(Routes::default().route("/anything"), None);
    }

    #[test]
    fn a_routes_file_has_one_template_per_line_and_reloading_it_leaks_nothing_new() {
        let text = "# orders\n/orders/{id}\n\n  /users/{id}  \n";
        let a = Routes::parse_file(text).unwrap();
        let b = Routes::parse_file(text).unwrap();
        assert_eq!(a.to_string(), "/orders/{id},/users/{id}");
        let ptr = |r: &Routes| r.route("/orders/1").unwrap().as_str().as_ptr();
        assert_eq!(ptr(&a), ptr(&b), "the same text is interned once");
        let both = routes(&["/health"]).chain(&a);
        assert_eq!(both.route("/users/3"), Some(Route::Matched("/users/{id}")));
        assert_eq!(both.route("/health"), Some(Route::Matched("/health")));
        assert!(Routes::parse_file("orders\n").is_err());
    }

    #[test]
    fn malformed_templates_are_rejected_with_the_template_named() {
        for bad in ["orders", "/a/{}", "/a/{*rest}/b", "/a/x{id}", "/a//b"] {
            let e = Routes::parse([bad]).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
