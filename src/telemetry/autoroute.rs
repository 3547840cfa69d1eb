//! Automatic route names: when no templates are configured (`--route`, `--routes-file`), a
//! path is reduced to a template by replacing each segment that looks like an identifier with
//! `{id}`: `/users/123/orders/9f8e7d6c5b4a` → `/users/{id}/orders/{id}`. The
//! result names the span (`GET /users/{id}`), sets `http.route` (marked
//! `tracemesh.route.inferred`), and is the RED `route` label.
//!
//! Configured templates win outright: with any configured, a path none matches is
//! `_unmatched`, so the operator's templates are the whole label set.
//!
//! What looks like an identifier: a decimal number, a UUID, a run of at least 4 hex digits with
//! a digit among them (object IDs, hashes, short hex IDs), an opaque token of at least 16 URL-safe characters
//! mixing letters and digits, a segment that is mostly digits (`2024-01-15`, `ord-12345`), and
//! a segment that is personal or encoded rather than a name: one with `@` (an e-mail address),
//! `%` or `+`, or longer than [`MAX_NAME`] bytes.
//!
//! The templates learned are bounded per proxy (`--route-learn-limit`, default 200): once the
//! limit is reached, a path whose template is new is [`Route::Unmatched`], so labels, span names
//! and the memory they take stay bounded whatever paths clients send. A path with more than
//! [`MAX_SEGMENTS`] segments, or a template longer than [`MAX_TEMPLATE`] bytes, is unmatched too.
//!
//! The request path builds the template in a stack buffer and looks it up in an `ArcSwap`'d map
//! (no lock, no allocation); only a new template takes the learner's mutex, and only while the
//! learner is not full: at most `limit` times in the process's life.
//!
//! Each direction has a learner of its own, so the app's outbound calls (object keys, other
//! services' paths) cannot use up the routes of its inbound API.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;

use crate::config::routes::{intern, Route};

/// Templates learned by default.
pub const DEFAULT_LIMIT: usize = 200;
/// Longest template learned, in bytes.
pub const MAX_TEMPLATE: usize = 128;
/// Most segments a learned template has.
pub const MAX_SEGMENTS: usize = 16;
/// The segment an identifier becomes.
pub const ID: &str = "{id}";
/// A longer segment is an identifier, whatever its characters.
pub const MAX_NAME: usize = 40;

/// The proxy's learned templates; shared by every worker and both directions.
#[derive(Debug)]
pub struct RouteLearner {
    limit: usize,
    known: ArcSwap<HashMap<Box<[u8]>, &'static str>>,
    adding: Mutex<()>,
}

impl RouteLearner {
    /// A learner of at most `limit` templates; `0` learns nothing (paths keep no route).
    pub fn new(limit: usize) -> Self {
        RouteLearner {
            limit,
            known: ArcSwap::from_pointee(HashMap::new()),
            adding: Mutex::new(()),
        }
    }

    /// Whether it learns at all.
    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// The learned template for `path`, or `Unmatched` past the bounds; `None` when off.
    pub fn route(&self, path: &str) -> Option<Route> {
        if self.limit == 0 {
            return None;
        }
        let mut buf = [0u8; MAX_TEMPLATE];
        let Some(n) = template(path, &mut buf) else {
            return Some(Route::Unmatched);
        };
        let key = &buf[..n];
        let known = self.known.load();
        if let Some(&t) = known.get(key) {
            return Some(Route::Learned(t));
        }
        if known.len() >= self.limit {
            return Some(Route::Unmatched); // full: no lock for what cannot be learned
        }
        drop(known);
        Some(self.learn(key))
    }

    /// How many templates it holds.
    pub fn len(&self) -> usize {
        self.known.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn learn(&self, key: &[u8]) -> Route {
        let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.known.load_full();
        if let Some(&t) = current.get(key) {
            return Route::Learned(t);
        }
        if current.len() >= self.limit {
            return Route::Unmatched;
        }
        // The template was built from a `&str` with ASCII replacements at segment bounds.
        let Ok(text) = std::str::from_utf8(key) else {
            return Route::Unmatched;
        };
        let text = intern(text);
        let mut next = HashMap::clone(&current);
        next.insert(key.into(), text);
        self.known.store(Arc::new(next));
        Route::Learned(text)
    }
}

/// Writes `path`'s template into `out`; its length, or `None` past the bounds.
pub fn template(path: &str, out: &mut [u8; MAX_TEMPLATE]) -> Option<usize> {
    let rest = path.strip_prefix('/')?;
    let mut n = 0;
    let mut put = |bytes: &[u8], n: &mut usize| -> Option<()> {
        let end = *n + bytes.len();
        out.get_mut(*n..end)?.copy_from_slice(bytes);
        *n = end;
        Some(())
    };
    for (i, segment) in rest.split('/').enumerate() {
        if i >= MAX_SEGMENTS {
            return None;
        }
        put(b"/", &mut n)?;
        let s = segment.as_bytes();
        if looks_like_id(s) {
            put(ID.as_bytes(), &mut n)?;
        } else {
            put(s, &mut n)?;
        }
    }
    Some(n)
}

/// Whether a path segment looks like an identifier (see the module docs).
pub fn looks_like_id(s: &[u8]) -> bool {
    if s.is_empty() {
        return false;
    }
    if s.len() > MAX_NAME || s.iter().any(|b| b"@%+".contains(b)) {
        return true;
    }
    let digits = s.iter().filter(|b| b.is_ascii_digit()).count();
    if digits == s.len() || is_uuid(s) {
        return true;
    }
    if digits > 0 && s.len() >= 4 && s.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    let token = s
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~=".contains(b));
    let letters = s.iter().filter(|b| b.is_ascii_alphabetic()).count();
    if token && s.len() >= 16 && digits > 0 && letters > 0 {
        return true;
    }
    token && digits >= 3 && digits * 2 >= s.len()
}

fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learned(l: &RouteLearner, path: &str) -> &'static str {
        match l.route(path) {
            Some(Route::Learned(t)) => t,
            other => panic!("{path:?}: {other:?}"),
        }
    }

    #[test]
    fn known_shapes_map_exactly() {
        let l = RouteLearner::new(DEFAULT_LIMIT);
        for (path, want) in [
            ("/", "/"),
            ("/users/123", "/users/{id}"),
            ("/users/123/orders/9f8e7d6c5b4a", "/users/{id}/orders/{id}"),
            (
                "/users/550e8400-e29b-41d4-a716-446655440000/cart",
                "/users/{id}/cart",
            ),
            ("/users/550E8400-E29B-41D4-A716-446655440000", "/users/{id}"),
            ("/blobs/5d41402abc4b2a76b9719d911017c592", "/blobs/{id}"),
            ("/files/aZ3kL9mQ2xV7bN1pQ", "/files/{id}"),
            ("/files/aZ3k_L9mQ-2xV7bN1p", "/files/{id}"),
            ("/days/2024-01-15", "/days/{id}"),
            ("/orders/ord-12345", "/orders/{id}"),
            ("/api/v1/items", "/api/v1/items"),
            ("/api/v2/h2", "/api/v2/h2"),
            ("/cafebabe/deadbeef", "/cafebabe/deadbeef"),
            ("/x/1eef", "/x/{id}"),
            ("/auth/2fa", "/auth/2fa"),
            ("/static/app.css", "/static/app.css"),
            ("/a//b/", "/a//b/"),
            ("/healthz", "/healthz"),
            ("/users/alice@example.com/cart", "/users/{id}/cart"),
            ("/search/caf%C3%A9", "/search/{id}"),
            ("/tags/a+b", "/tags/{id}"),
            (
                "/docs/a-very-long-slug-that-names-one-article-only",
                "/docs/{id}",
            ),
        ] {
            assert_eq!(learned(&l, path), want, "{path}");
        }
    }

    #[test]
    fn ten_thousand_random_id_paths_learn_a_handful_of_templates() {
        let l = RouteLearner::new(DEFAULT_LIMIT);
        let mut rng = fastrand::Rng::with_seed(7);
        let hex = |rng: &mut fastrand::Rng, n: usize| -> String {
            (0..n)
                .map(|_| char::from(b"0123456789abcdef"[rng.usize(..16)]))
                .collect()
        };
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..10_000 {
            let path = match i % 5 {
                0 => format!("/users/{}", rng.u64(..)),
                1 => format!("/users/{}/orders/{}", rng.u32(..), hex(&mut rng, 24)),
                2 => format!(
                    "/sessions/{}-{}-4{}-a{}-{}",
                    hex(&mut rng, 8),
                    hex(&mut rng, 4),
                    hex(&mut rng, 3),
                    hex(&mut rng, 3),
                    hex(&mut rng, 12)
                ),
                3 => format!("/blobs/{}7", hex(&mut rng, 39)),
                _ => format!("/t/{}", fastrand_token(&mut rng)),
            };
            seen.insert(learned(&l, &path));
        }
        let want: std::collections::BTreeSet<&str> = [
            "/users/{id}",
            "/users/{id}/orders/{id}",
            "/sessions/{id}",
            "/blobs/{id}",
            "/t/{id}",
        ]
        .into();
        assert_eq!(seen, want);
        assert_eq!(l.len(), 5);
    }

    fn fastrand_token(rng: &mut fastrand::Rng) -> String {
        let abc = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut t: String = (0..20)
            .map(|_| char::from(abc[rng.usize(..abc.len())]))
            .collect();
        t.push(char::from(b'0' + rng.u8(..10)));
        t
    }

    #[test]
    fn the_learned_set_is_bounded_and_long_or_deep_paths_are_unmatched() {
        let l = RouteLearner::new(3);
        for p in ["/a", "/b", "/c"] {
            assert_eq!(learned(&l, p), p);
        }
        assert_eq!(l.route("/d"), Some(Route::Unmatched));
        assert_eq!(learned(&l, "/a"), "/a", "known ones still resolve");
        assert_eq!(l.len(), 3);

        let l = RouteLearner::new(DEFAULT_LIMIT);
        let deep = "/x".repeat(MAX_SEGMENTS + 1);
        assert_eq!(l.route(&deep), Some(Route::Unmatched));
        assert_eq!(
            learned(&l, &"/x".repeat(MAX_SEGMENTS)),
            "/x".repeat(MAX_SEGMENTS)
        );
        // Twelve ten-letter names: 132 bytes, over the longest template.
        let long = "/abcdefghij".repeat(12);
        assert!(long.len() > MAX_TEMPLATE);
        assert_eq!(l.route(&long), Some(Route::Unmatched));
        // One long segment is an identifier, not a name.
        assert_eq!(
            learned(&l, &format!("/{}", "y".repeat(MAX_TEMPLATE))),
            "/{id}"
        );
        assert_eq!(l.route("*"), Some(Route::Unmatched));
        assert_eq!(RouteLearner::new(0).route("/users/1"), None);
    }
}
