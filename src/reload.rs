//! Reloading the configuration while running: on SIGHUP, and when the config file changes
//! (`reload.watch`, checked every `reload.poll_interval`). The new file is loaded, validated and
//! built into a complete snapshot, then swapped in atomically ([`Gateway::swap`]); requests in
//! flight finish on the snapshot they started with. A file that does not load, validate or build
//! is refused with a log line and `gateway_config_reloads_total{result="error"}`, and the old
//! configuration keeps serving. Settings that only take effect at start-up are named in the
//! refusal ([`restart_only_changes`]), never silently ignored.

use crate::config::Config;
use crate::gateway::Gateway;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Where a new configuration comes from: the file (for watching) and the loader, which applies
/// the same environment and flag overrides as the start did.
#[derive(Clone)]
pub struct ConfigSource {
    /// The config file, when there is one (no file: SIGHUP reloads the environment only).
    pub path: Option<PathBuf>,
    /// Loads and validates the configuration as the start did.
    pub load: Arc<dyn Fn() -> Result<Config, String> + Send + Sync>,
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The reload of a running gateway, shared by SIGHUP, the file watch and `POST /admin/reload`:
/// where the configuration comes from, the configuration running now, and how a loaded one is
/// prepared. One reload runs at a time.
pub struct Reloader {
    source: ConfigSource,
    running: std::sync::Mutex<Config>,
    prepare: Arc<dyn Fn(&mut Config) + Send + Sync>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader from `source`, with `running` the configuration the gateway started with.
    pub fn new(
        source: ConfigSource,
        running: Config,
        prepare: Arc<dyn Fn(&mut Config) + Send + Sync>,
    ) -> Self {
        Self {
            source,
            running: std::sync::Mutex::new(running),
            prepare,
        }
    }

    /// Runs [`reload`] on the running configuration, waiting for one in progress.
    pub fn reload(&self, gw: &Gateway, trigger: &str) -> Outcome {
        // A configuration stays whole after any panic of a holder: it is replaced, never edited.
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        reload(gw, &self.source, &mut running, &*self.prepare, trigger)
    }

    fn running_config(&self) -> Config {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl crate::gateway::Reload for Reloader {
    fn reload(&self, gw: &Gateway, trigger: &str) -> Outcome {
        Reloader::reload(self, gw, trigger)
    }
}

/// The start-up-only keys whose value differs between `running` and `new`: every key declared
/// [`crate::config::Start`] (found from the types, `config/start.rs`), and `demo`, whose effect
/// (the example service runs) depends on `upstreams` too.
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<String> {
    let mut changed = crate::config::start_only_changes(running, new);
    // The example service runs only if the start needed it (`prepare` attaches it).
    if running.serves_demo() != new.serves_demo() {
        changed.push("demo".to_owned());
    }
    changed
}

/// The keys (dotted paths, list items by index) whose values differ between two configurations,
/// compared as the JSON they serialise to (secrets compare equal: both are `<redacted>`).
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let mut out = Vec::new();
    crate::config::walk_differences(&a, &b, &mut |keys, a, b| {
        let inside = a.is_object() && b.is_object();
        if !inside {
            out.push(keys.join("."));
        }
        inside
    });
    out
}

/// What a reload did (the gateway's type, so that the admin route can run one).
pub use crate::gateway::ReloadOutcome as Outcome;

/// Loads, checks, builds and swaps in a new configuration. `running` is updated when applied.
/// `prepare` makes a loaded config comparable with the running one (the built-in example
/// upstream, which the start added).
pub fn reload(
    gw: &Gateway,
    source: &ConfigSource,
    running: &mut Config,
    prepare: &(dyn Fn(&mut Config) + Send + Sync),
    trigger: &str,
) -> Outcome {
    let mut keys = Vec::new();
    let outcome = match (source.load)() {
        Err(e) => Outcome::Refused(format!("invalid configuration: {e}")),
        Ok(mut new) => {
            prepare(&mut new);
            let changed = restart_only_changes(running, &new);
            keys = changed_keys(running, &new);
            if !changed.is_empty() {
                Outcome::Refused(format!(
                    "these settings only take effect at start-up; restart to change them: {}",
                    changed.join(", ")
                ))
            } else {
                match gw.swap(&new) {
                    Ok(()) => {
                        for warning in new.warnings() {
                            tracing::warn!(key = %warning.key, "{}", warning.message);
                        }
                        *running = new;
                        gw.note_loaded(trigger, keys.clone());
                        Outcome::Applied
                    }
                    Err(e) => Outcome::Refused(format!("cannot build the configuration: {e}")),
                }
            }
        }
    };
    match &outcome {
        Outcome::Applied => {
            metrics::counter!("gateway_config_reloads_total", "result" => "ok").increment(1);
            let changed = if keys.is_empty() {
                "nothing".to_owned()
            } else {
                keys.join(", ")
            };
            tracing::info!(trigger, %changed, "configuration reloaded");
        }
        Outcome::Refused(why) => {
            metrics::counter!("gateway_config_reloads_total", "result" => "error").increment(1);
            tracing::error!(trigger, error = %why, "configuration reload refused; the previous configuration keeps serving");
        }
    }
    outcome
}

/// Reloads on SIGHUP and (with `reload.watch`) when the file changes, until aborted. The file's
/// first fingerprint is taken and the SIGHUP handler installed when this is called, not when the
/// task first runs, so that a change or a SIGHUP right after the start is not missed. Must be
/// called inside a tokio runtime.
pub fn watch(
    gw: Gateway,
    reloader: Arc<Reloader>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let running = reloader.running_config();
    let source = reloader.source.clone();
    let interval = running
        .reload
        .poll_interval
        .0
        .max(Duration::from_millis(50));
    let watching = running.reload.watch && source.path.is_some();
    let mut seen = fingerprint(source.path.as_deref());
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    async move {
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let trigger = tokio::select! {
                () = hangup => "SIGHUP",
                () = tokio::time::sleep(interval), if watching => {
                    let now = fingerprint(source.path.as_deref());
                    if now == seen {
                        continue;
                    }
                    "file change"
                }
            };
            // A SIGHUP also re-reads the file: remember what it looked like.
            seen = fingerprint(source.path.as_deref());
            reloader.reload(&gw, trigger);
        }
    }
}

/// What identifies a version of the file: modification time, length and contents' hash (a
/// ConfigMap update replaces a symlink, which a content hash sees whatever the times say).
fn fingerprint(path: Option<&std::path::Path>) -> Option<(Option<SystemTime>, u64)> {
    let path = path?;
    let bytes = std::fs::read(path).ok()?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    Some((modified, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_names_each_leaf_and_each_added_or_changed_entry() {
        let a = Config::default();
        assert!(changed_keys(&a, &a.clone()).is_empty());
        let mut b = a.clone();
        b.defaults.timeout = crate::config::Dur(Duration::from_millis(700));
        b.bots = vec!["bot".to_owned()];
        b.upstreams.insert(
            "svc.ns".to_owned(),
            crate::config::UpstreamConfig::single("http://127.0.0.1:1".to_owned()),
        );
        assert_eq!(
            changed_keys(&a, &b),
            vec!["bots", "defaults.timeout", "upstreams.svc.ns"]
        );
    }

    #[test]
    fn listen_and_spool_dir_are_restart_only_timeouts_are_not() {
        let a = Config::default();
        let mut b = a.clone();
        b.defaults.timeout = crate::config::Dur(Duration::from_millis(700));
        b.max_body_bytes = 4096;
        assert!(restart_only_changes(&a, &b).is_empty());
        *b.listen = "127.0.0.1:1".parse().unwrap();
        b.spool.dir = "/elsewhere".into();
        *b.workers = crate::config::Workers::Count(3);
        assert_eq!(
            restart_only_changes(&a, &b),
            vec!["listen", "spool", "workers"]
        );
        // A start-only key inside a live section, and a live key beside it.
        let mut c = a.clone();
        c.limits.max_in_flight = 7;
        assert!(restart_only_changes(&a, &c).is_empty());
        *c.limits.idle_timeout = crate::config::Dur(Duration::from_secs(1));
        *c.log = crate::config::LogConfig {
            redact: false,
            ..Default::default()
        };
        assert_eq!(
            restart_only_changes(&a, &c),
            vec!["limits.idle_timeout", "log"]
        );
    }

    #[test]
    fn the_demo_is_restart_only_unless_the_start_runs_it() {
        let real = Config::from_yaml("upstreams: {default: {endpoints: ['http://h:1']}}").unwrap();
        let demo = Config::from_yaml("demo: true").unwrap();
        assert_eq!(restart_only_changes(&real, &demo), vec!["demo"]);
        // Started with the demo: `prepare` attaches the running example to the new config.
        let example = crate::config::UpstreamConfig::single("http://127.0.0.1:9");
        let mut running = demo.clone();
        running.attach_demo(&example);
        let mut again = demo.clone();
        again.attach_demo(&example);
        assert!(restart_only_changes(&running, &again).is_empty());
        assert!(
            restart_only_changes(&running, &real).is_empty(),
            "the demo can be left"
        );
    }
}
