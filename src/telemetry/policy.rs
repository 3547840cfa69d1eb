//! The hot-reloadable part of the configuration: the sampling rules (`--sampling-rules`) and
//! the route templates (`--route`, then `--routes-file`), swapped whole while the proxy runs.
//!
//! A request loads the current [`Policy`] once (one atomic load, no lock) and uses that one
//! snapshot for its route and its sampling decision, so it never sees half a config. The
//! [`Reloader`] re-reads each file every [`POLL`] and swaps in a new policy when a file's bytes
//! changed and parse. Polling, not inotify, because a mounted ConfigMap changes by swapping a
//! symlinked directory, which file watches miss. A file that is missing or does not parse keeps
//! the previous policy (at start-up: the defaults), logs one line per bad version and counts
//! `tracemesh_config_reload_errors_total{file}`; `tracemesh_config_generation{file,sha256}`
//! shows how many versions were loaded and the SHA-256 of the one in use.

use std::{path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::sampling::rules::Rules;
use crate::{config::routes::Routes, metrics::ConfigMetrics};

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_millis(250);

/// One consistent version of the reloadable configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub rules: Rules,
    pub routes: Routes,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rules: Rules::defaults(),
            routes: Routes::default(),
        }
    }
}

/// Where requests read the current policy. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PolicyHandle(Arc<ArcSwap<Policy>>);

impl PolicyHandle {
    pub fn new(policy: Policy) -> Self {
        PolicyHandle(Arc::new(ArcSwap::from_pointee(policy)))
    }

    /// The current policy: one snapshot, held for as long as the guard lives.
    pub fn load(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.0.load()
    }

    fn store(&self, policy: Policy) {
        self.0.store(Arc::new(policy));
    }
}

/// The files a proxy reloads.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub rules_file: Option<PathBuf>,
    pub routes_file: Option<PathBuf>,
    /// `--route` templates: tried before the file's.
    pub static_routes: Routes,
}

/// One watched file: what was last seen (to skip unchanged bytes) and the metric label.
struct Watched {
    label: &'static str,
    path: PathBuf,
    last: Option<Vec<u8>>,
    missing_logged: bool,
    generation: i64,
    sha256: Option<String>,
}

/// Watches the files and swaps the policy. Run with [`Reloader::run`].
pub struct Reloader {
    handle: PolicyHandle,
    static_routes: Routes,
    rules: Option<Watched>,
    routes: Option<Watched>,
    current_rules: Rules,
    current_file_routes: Routes,
    metrics: ConfigMetrics,
}

impl Reloader {
    /// Loads what the files say now (or the defaults) and returns the reloader with the handle
    /// requests read from.
    pub async fn start(sources: Sources, metrics: ConfigMetrics) -> (Reloader, PolicyHandle) {
        let watched = |label, path: Option<PathBuf>| {
            path.map(|path| Watched {
                label,
                path,
                last: None,
                missing_logged: false,
                generation: 0,
                sha256: None,
            })
        };
        let mut reloader = Reloader {
            handle: PolicyHandle::new(Policy {
                rules: Rules::defaults(),
                routes: sources.static_routes.clone(),
            }),
            static_routes: sources.static_routes,
            rules: watched("sampling_rules", sources.rules_file),
            routes: watched("routes", sources.routes_file),
            current_rules: Rules::defaults(),
            current_file_routes: Routes::default(),
            metrics,
        };
        reloader.poll().await;
        let handle = reloader.handle.clone();
        (reloader, handle)
    }

    /// Polls until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        if self.rules.is_none() && self.routes.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.poll().await,
            }
        }
    }

    /// Reads both files; swaps the policy if either changed and parsed. A version counts only
    /// once both files read the same twice in a row, so a ConfigMap update that swaps them
    /// between the two reads is taken whole at the next poll, never half.
    async fn poll(&mut self) {
        let first = (
            read_file(self.rules.as_ref()).await,
            read_file(self.routes.as_ref()).await,
        );
        let changed = |w: &Option<Watched>, r: &Option<std::io::Result<Vec<u8>>>| match (w, r) {
            (Some(w), Some(Ok(bytes))) => w.last.as_deref() != Some(&bytes[..]),
            (Some(w), Some(Err(_))) => !w.missing_logged,
            _ => false,
        };
        if !changed(&self.rules, &first.0) && !changed(&self.routes, &first.1) {
            return;
        }
        let second = (
            read_file(self.rules.as_ref()).await,
            read_file(self.routes.as_ref()).await,
        );
        let same =
            |a: &Option<std::io::Result<Vec<u8>>>, b: &Option<std::io::Result<Vec<u8>>>| match (
                a, b,
            ) {
                (Some(Ok(a)), Some(Ok(b))) => a == b,
                (Some(Err(_)), Some(Err(_))) | (None, None) => true,
                _ => false,
            };
        if !same(&first.0, &second.0) || !same(&first.1, &second.1) {
            return; // caught mid-update: the next poll sees the settled version
        }
        let mut changed = false;
        if let Some(w) = self.rules.as_mut() {
            if let Some(rules) = reload(w, first.0, &self.metrics, |t| {
                Rules::parse(t).map_err(|e| e.to_string())
            }) {
                tracing::info!(file = %w.path.display(), rules = rules.len(), "sampling rules loaded");
                self.current_rules = rules;
                changed = true;
            }
        }
        if let Some(w) = self.routes.as_mut() {
            if let Some(routes) = reload(w, first.1, &self.metrics, |t| {
                Routes::parse_file(t).map_err(|e| e.to_string())
            }) {
                tracing::info!(file = %w.path.display(), routes = routes.len(), "route templates loaded");
                self.current_file_routes = routes;
                changed = true;
            }
        }
        if changed {
            self.handle.store(Policy {
                rules: self.current_rules.clone(),
                routes: self.static_routes.chain(&self.current_file_routes),
            });
        }
    }
}

/// Largest file read: a rules or routes file is a few KiB; anything this large is a mistake
/// (or an attack on memory) and is refused whole.
const MAX_FILE: u64 = 1 << 20;

/// The file's bytes (`None` when the file is not watched).
async fn read_file(w: Option<&Watched>) -> Option<std::io::Result<Vec<u8>>> {
    let w = w?;
    Some(
        async {
            let len = tokio::fs::metadata(&w.path).await?.len();
            if len > MAX_FILE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{len} bytes, more than {MAX_FILE}"),
                ));
            }
            tokio::fs::read(&w.path).await
        }
        .await,
    )
}

/// The bytes read, if they differ from the last ones seen. A file that cannot be read is
/// reported once per disappearance; one that was never there (an optional ConfigMap not
/// created yet) is said once and not counted as an error.
fn take_changed(
    w: &mut Watched,
    read: Option<std::io::Result<Vec<u8>>>,
    metrics: &ConfigMetrics,
) -> Option<Vec<u8>> {
    match read? {
        Ok(bytes) => {
            w.missing_logged = false;
            if w.last.as_deref() == Some(&bytes[..]) {
                return None;
            }
            w.last = Some(bytes.clone());
            Some(bytes)
        }
        Err(e) => {
            if !w.missing_logged {
                w.missing_logged = true;
                // A file that comes back with the same bytes is loaded again.
                w.last = None;
                if w.generation == 0 && e.kind() == std::io::ErrorKind::NotFound {
                    tracing::info!(file = %w.path.display(), "no {} yet; using the defaults until it appears", w.label);
                } else {
                    let kept = if w.generation == 0 {
                        "the defaults"
                    } else {
                        "the previous version"
                    };
                    tracing::warn!(file = %w.path.display(), error = %e, "cannot read {}; keeping {kept}", w.label);
                    metrics.reload_error(w.label);
                }
            }
            None
        }
    }
}

/// A new version of `w`'s file, parsed by `parse`: `Some` when its bytes changed and parse
/// (counted as loaded), `None` when unchanged, unreadable or invalid (reported).
fn reload<T>(
    w: &mut Watched,
    read: Option<std::io::Result<Vec<u8>>>,
    metrics: &ConfigMetrics,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    let bytes = take_changed(w, read, metrics)?;
    match std::str::from_utf8(&bytes)
        .map_err(|e| e.to_string())
        .and_then(parse)
    {
        Ok(value) => {
            loaded(w, &bytes, metrics);
            Some(value)
        }
        Err(e) => {
            rejected(w, &e, metrics);
            None
        }
    }
}

fn loaded(w: &mut Watched, bytes: &[u8], metrics: &ConfigMetrics) {
    w.generation += 1;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    metrics.loaded(w.label, w.sha256.replace(hex.clone()), hex, w.generation);
}

fn rejected(w: &Watched, error: &str, metrics: &ConfigMetrics) {
    let kept = if w.generation == 0 {
        "the defaults"
    } else {
        "the previous version"
    };
    tracing::error!(file = %w.path.display(), %error, "invalid {}; keeping {kept}", w.label);
    metrics.reload_error(w.label);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn scrape(m: &Metrics) -> String {
        m.render_openmetrics()
    }

    #[tokio::test]
    async fn a_changed_file_is_swapped_in_and_a_bad_one_keeps_the_previous_version() {
        let dir = std::env::temp_dir().join(format!("tracemesh-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = dir.join("rules.yaml");
        let routes = dir.join("routes");
        std::fs::write(
            &rules,
            "rules: [ { match: { path_prefix: /a }, never: true } ]",
        )
        .unwrap();
        std::fs::write(&routes, "/users/{id}\n").unwrap();
        let metrics = Metrics::new(false);
        let (mut r, handle) = Reloader::start(
            Sources {
                rules_file: Some(rules.clone()),
                routes_file: Some(routes.clone()),
                static_routes: Routes::parse(["/health"]).unwrap(),
            },
            metrics.config.clone(),
        )
        .await;
        let p = handle.load();
        assert_eq!(p.rules.len(), 3, "probe defaults and one rule");
        assert_eq!(p.routes.to_string(), "/health,/users/{id}");
        let text = scrape(&metrics);
        assert!(
            text.contains("tracemesh_config_generation{file=\"sampling_rules\",sha256=\""),
            "{text}"
        );

        // Unchanged bytes: nothing happens. A broken file: the old rules stay, one error.
        r.poll().await;
        std::fs::write(&rules, "rules: [ { ratio: 7 } ]").unwrap();
        r.poll().await;
        r.poll().await;
        assert_eq!(handle.load().rules.len(), 3);
        let text = scrape(&metrics);
        assert!(
            text.contains("tracemesh_config_reload_errors_total{file=\"sampling_rules\"} 1"),
            "{text}"
        );

        // A good file again: generation 2, a new hash, the old hash gone.
        std::fs::write(&rules, "probe_defaults: false\nrules: []\n").unwrap();
        r.poll().await;
        assert_eq!(handle.load().rules.len(), 0);
        let text = scrape(&metrics);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tracemesh_config_generation{file=\"sampling_rules\""))
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].ends_with(" 2"), "{text}");

        // Too large: refused whole, counted, the rules in force stay.
        std::fs::write(&rules, format!("# {}\n", "x".repeat(1 << 20))).unwrap();
        r.poll().await;
        assert_eq!(handle.load().rules.len(), 0);
        assert!(scrape(&metrics)
            .contains("tracemesh_config_reload_errors_total{file=\"sampling_rules\"} 2"));

        // A file that disappears: kept, counted once.
        std::fs::remove_file(&routes).unwrap();
        r.poll().await;
        r.poll().await;
        assert_eq!(handle.load().routes.to_string(), "/health,/users/{id}");
        assert!(
            scrape(&metrics).contains("tracemesh_config_reload_errors_total{file=\"routes\"} 1")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_file_not_there_yet_is_no_error_and_is_loaded_when_it_appears() {
        let dir =
            std::env::temp_dir().join(format!("tracemesh-policy-late-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = dir.join("rules.yaml");
        let metrics = Metrics::new(false);
        let (mut r, handle) = Reloader::start(
            Sources {
                rules_file: Some(rules.clone()),
                ..Sources::default()
            },
            metrics.config.clone(),
        )
        .await;
        assert_eq!(handle.load().rules.len(), 2, "the probe defaults");
        r.poll().await;
        assert!(
            !scrape(&metrics).contains("tracemesh_config_reload_errors_total{"),
            "{}",
            scrape(&metrics)
        );
        std::fs::write(&rules, "probe_defaults: false\n").unwrap();
        r.poll().await;
        assert_eq!(handle.load().rules.len(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
