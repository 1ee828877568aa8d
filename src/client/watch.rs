//! Watches that recover from every API server fault, and a record of whether they make
//! progress.
//!
//! kube-runtime's watcher resumes a broken watch from the last resourceVersion it saw. After an
//! API server restart that version is often older than the new server's watch cache, and the
//! watch's start is answered `410 Gone` ("too old resource version"); kube-runtime 5.0 then
//! retries the same version forever (it relists only on a 410 that arrives *inside* a watch).
//! Every watch here therefore starts over with a fresh list after any error, with its own
//! backoff, and the cache behind it is replaced atomically when that list completes.
//!
//! Each watch reports to [`Watches`]: a watch whose errors have not been followed by progress
//! (a completed list or an event) for [`STALL_AFTER`] is stalled; `/readyz` and the metric
//! `kubeconfig_authority_watches_stalled` say so, and a leader steps down.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream::BoxStream};
use kube::{
    Api, Resource,
    runtime::watcher::{self, watcher},
};
use tracing::warn;

/// How long a watch may fail without progress before it counts as stalled: longer than an
/// API server restart takes (about 25 s from stop to serving again, measured in
/// `tests/integration/faults.rs`), so that a restart does not make the leader step down.
pub const STALL_AFTER: Duration = Duration::from_secs(60);

/// The longest pause between two attempts of a failing watch: short enough that after an
/// outage of 15 s every watch has listed again well within [`STALL_AFTER`].
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The progress of every watch, by name.
#[derive(Debug, Default)]
pub struct Watches(Mutex<BTreeMap<String, Progress>>);

/// One watch's state: since when it has been failing, and the last error.
#[derive(Debug, Clone, Default)]
struct Progress {
    failing_since: Option<Instant>,
    last_error: String,
}

impl Watches {
    fn update(&self, name: &str, change: impl FnOnce(&mut Progress)) {
        if let Ok(mut all) = self.0.lock() {
            change(all.entry(name.to_string()).or_default());
        }
    }

    /// The watches failing for longer than `after` as of `now`, each with its last error.
    pub fn stalled(&self, now: Instant, after: Duration) -> Vec<(String, String)> {
        let Ok(all) = self.0.lock() else {
            return Vec::new();
        };
        all.iter()
            .filter(|(_, p)| {
                p.failing_since
                    .is_some_and(|t| now.duration_since(t) >= after)
            })
            .map(|(name, p)| (name.clone(), p.last_error.clone()))
            .collect()
    }

    /// Forgets every watch (a new term starts new ones).
    pub fn clear(&self) {
        if let Ok(mut all) = self.0.lock() {
            all.clear();
        }
    }
}

/// The pause before attempt number `failures + 1` of a failing watch: 0.5 s doubling up to
/// [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(500)
        .saturating_mul(1u32 << (failures - 1).min(16))
        .min(MAX_BACKOFF)
}

/// A watch of `api` that starts over with a fresh list after any error (see the module docs),
/// reporting its progress to `watches` under `name`. Errors are passed on (after being
/// logged) so that the caller sees them; the stream never ends.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    name: &str,
    watches: &Arc<Watches>,
) -> BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let (name, watches) = (name.to_string(), watches.clone());
    type Inner<K> = BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;
    futures::stream::unfold((None::<Inner<K>>, 0u32), move |(inner, failures)| {
        let (api, config, name, watches) =
            (api.clone(), config.clone(), name.clone(), watches.clone());
        async move {
            let mut inner = match inner {
                Some(inner) => inner,
                None => {
                    tokio::time::sleep(backoff(failures)).await;
                    watcher(api.clone(), config.clone()).boxed()
                }
            };
            loop {
                match inner.next().await {
                    Some(Ok(event)) => {
                        let progress = matches!(
                            event,
                            watcher::Event::InitDone
                                | watcher::Event::Apply(_)
                                | watcher::Event::Delete(_)
                        );
                        let failures = if progress {
                            watches.update(&name, |p| p.failing_since = None);
                            0
                        } else {
                            failures
                        };
                        return Some((Ok(event), (Some(inner), failures)));
                    }
                    Some(Err(error)) => {
                        warn!(watch = %name, "watch failed, listing again: {error}");
                        watches.update(&name, |p| {
                            p.failing_since.get_or_insert_with(Instant::now);
                            p.last_error = error.to_string();
                        });
                        return Some((Err(error), (None, failures.saturating_add(1))));
                    }
                    // A watcher does not end; should it, a new one starts.
                    None => inner = watcher(api.clone(), config.clone()).boxed(),
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        let pauses: Vec<u64> = (0..8).map(|f| backoff(f).as_millis() as u64).collect();
        assert_eq!(pauses, [0, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_watch_is_stalled_only_after_failing_long_enough_without_progress() {
        let watches = Watches::default();
        let start = Instant::now();
        watches.update("secrets", |p| {
            p.failing_since = Some(start);
            p.last_error = "410".into();
        });
        watches.update("namespaces", |p| p.failing_since = None);
        assert!(
            watches
                .stalled(start + STALL_AFTER - Duration::from_secs(1), STALL_AFTER)
                .is_empty()
        );
        assert_eq!(
            watches.stalled(start + STALL_AFTER, STALL_AFTER),
            [("secrets".to_string(), "410".to_string())]
        );
        watches.update("secrets", |p| p.failing_since = None);
        assert!(watches.stalled(start + STALL_AFTER, STALL_AFTER).is_empty());
    }
}
