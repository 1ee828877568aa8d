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
    runtime::{
        reflector::{self, Store},
        watcher::{self, watcher},
    },
};
use tracing::{info, warn};

/// How long a watch may fail without progress before it counts as stalled: longer than an
/// API server restart takes (about 25 s from stop to serving again, measured in
/// `tests/integration/faults.rs`), so that a restart does not make the leader step down.
pub const STALL_AFTER: Duration = Duration::from_secs(60);

/// How long after the API server came back every watch must have listed again.
pub const FROZEN_AFTER: Duration = Duration::from_secs(15);

/// The longest pause between two attempts of a failing watch: short enough that after an
/// outage of 15 s every watch has listed again well within [`STALL_AFTER`].
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The progress of every watch, by name, and the recoveries from an unreachable API server.
///
/// A watch whose connection died without a word (seen after API server restarts: no error, no
/// end, no event ever again) would otherwise wait for the server's watch timeout, minutes. So
/// when any watch lists again after the API server was unreachable, every watch starts over
/// with a fresh list once ([`Watches::recoveries`]).
#[derive(Debug)]
pub struct Watches {
    progress: Mutex<BTreeMap<String, Progress>>,
    /// Whether a watch found the API server unreachable since the last recovery.
    unreachable: Mutex<bool>,
    /// When the watches last recovered from an unreachable API server.
    recovered_at: Mutex<Option<Instant>>,
    recovered: tokio::sync::watch::Sender<u64>,
}

impl Default for Watches {
    fn default() -> Self {
        Self {
            progress: Mutex::default(),
            unreachable: Mutex::default(),
            recovered_at: Mutex::default(),
            recovered: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// One watch's state: since when it has been failing, the last error, and when it last
/// completed a list.
#[derive(Debug, Clone, Default)]
struct Progress {
    failing_since: Option<Instant>,
    last_error: String,
    listed_at: Option<Instant>,
}

impl Watches {
    fn update(&self, name: &str, change: impl FnOnce(&mut Progress)) {
        if let Ok(mut all) = self.progress.lock() {
            change(all.entry(name.to_string()).or_default());
        }
    }

    /// The watches failing for longer than `after` as of `now`, each with its last error.
    pub fn stalled(&self, now: Instant, after: Duration) -> Vec<(String, String)> {
        let Ok(all) = self.progress.lock() else {
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

    /// The watches that have not listed again `after` a recovery from an unreachable API
    /// server, as of `now`: their streams are no longer polled, and only new ones help. (Seen
    /// after API server restarts while the controllers paused their triggers after errors, see
    /// [`NoPause`]; kept as a defence.)
    pub fn frozen(&self, now: Instant, after: Duration) -> Vec<String> {
        let recovered = self.recovered_at.lock().ok().and_then(|r| *r);
        let Some(recovered) = recovered.filter(|r| now.duration_since(*r) >= after) else {
            return Vec::new();
        };
        let Ok(all) = self.progress.lock() else {
            return Vec::new();
        };
        all.iter()
            .filter(|(_, p)| p.listed_at.is_none_or(|l| l < recovered))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// When the API server was last heard from: now, unless a watch has failed since its last
    /// progress, then when the first of those failures began. `None` before any watch listed.
    pub fn last_contact(&self, now: Instant) -> Option<Instant> {
        let all = self.progress.lock().ok()?;
        if !all.values().any(|p| p.listed_at.is_some()) {
            return None;
        }
        Some(
            all.values()
                .filter_map(|p| p.failing_since)
                .min()
                .unwrap_or(now),
        )
    }

    /// Forgets every watch (a new term starts new ones).
    pub fn clear(&self) {
        if let Ok(mut all) = self.progress.lock() {
            all.clear();
        }
        if let Ok(mut recovered) = self.recovered_at.lock() {
            *recovered = None;
        }
    }

    /// Notified each time the watches recover from an unreachable API server.
    pub fn recoveries(&self) -> tokio::sync::watch::Receiver<u64> {
        self.recovered.subscribe()
    }

    /// A watch could not reach the API server.
    fn unreachable(&self) {
        if let Ok(mut unreachable) = self.unreachable.lock() {
            *unreachable = true;
        }
    }

    /// A watch listed: when the API server was unreachable before, every watch starts over.
    fn listed(&self) -> bool {
        let recovered = self
            .unreachable
            .lock()
            .map(|mut unreachable| std::mem::take(&mut *unreachable))
            .unwrap_or(false);
        if recovered {
            if let Ok(mut at) = self.recovered_at.lock() {
                *at = Some(Instant::now());
            }
            self.recovered.send_modify(|n| *n += 1);
        }
        recovered
    }
}

/// The pause a controller takes before it polls its trigger streams again after one of them
/// failed: none. kube-runtime's default (0.8 s doubling to 30 s, reset after two quiet minutes)
/// pauses *all* of a controller's triggers after an error of any one of them, so with a dozen
/// watches failing during an outage the controller polled none of them for up to 30 s at a
/// time: events went unseen, no watch listed again when the API server came back, and a single
/// watch failing for good (a right taken away) delayed every reconcile by up to 30 s. Each
/// watch here has its own backoff ([`backoff`]) and never ends, so the controller needs none.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPause;

impl Iterator for NoPause {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for NoPause {
    fn reset(&mut self) {}
}

/// Whether a watch failed because the API server could not be reached (rather than answered
/// with an error, such as `410 Gone`).
fn unreachable(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => !matches!(e, kube::Error::Api(_)),
        watcher::Error::WatchError(_) => false,
        _ => false,
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
    struct State<K> {
        inner: Option<Inner<K>>,
        failures: u32,
        recoveries: tokio::sync::watch::Receiver<u64>,
        /// When the list under way began, and how many objects it brought so far.
        listing: (Instant, usize),
    }
    watches.update(&name, |_| {});
    let state = State {
        inner: None,
        failures: 0,
        recoveries: watches.recoveries(),
        listing: (Instant::now(), 0),
    };
    futures::stream::unfold(state, move |mut state| {
        let (api, config, name, watches) =
            (api.clone(), config.clone(), name.clone(), watches.clone());
        async move {
            let mut inner = match state.inner.take() {
                Some(inner) => inner,
                None => {
                    tokio::time::sleep(backoff(state.failures)).await;
                    watcher(api.clone(), config.clone()).boxed()
                }
            };
            loop {
                let next = tokio::select! {
                    next = inner.next() => next,
                    changed = state.recoveries.changed() => {
                        if changed.is_ok() {
                            info!(watch = %name, "the API server is reachable again: listing again");
                            inner = watcher(api.clone(), config.clone()).boxed();
                        }
                        continue;
                    }
                };
                match next {
                    Some(Ok(event)) => {
                        let progress = matches!(
                            event,
                            watcher::Event::InitDone
                                | watcher::Event::Apply(_)
                                | watcher::Event::Delete(_)
                        );
                        match event {
                            watcher::Event::Init => state.listing = (Instant::now(), 0),
                            watcher::Event::InitApply(_) => state.listing.1 += 1,
                            _ => {}
                        }
                        if matches!(event, watcher::Event::InitDone) {
                            let (began, objects) = state.listing;
                            info!(
                                watch = %name,
                                objects,
                                seconds = began.elapsed().as_secs_f64(),
                                "listed"
                            );
                            if watches.listed() {
                                // This watch has just listed: the others start over.
                                state.recoveries.borrow_and_update();
                            }
                            watches.update(&name, |p| p.listed_at = Some(Instant::now()));
                        }
                        if progress {
                            watches.update(&name, |p| p.failing_since = None);
                            state.failures = 0;
                        }
                        state.inner = Some(inner);
                        return Some((Ok(event), state));
                    }
                    Some(Err(error)) => {
                        warn!(watch = %name, "watch failed, listing again: {error}");
                        if unreachable(&error) {
                            watches.unreachable();
                        }
                        watches.update(&name, |p| {
                            p.failing_since.get_or_insert_with(Instant::now);
                            p.last_error = error.to_string();
                        });
                        state.failures = state.failures.saturating_add(1);
                        return Some((Err(error), state));
                    }
                    // A watcher does not end; should it, a new one starts.
                    None => inner = watcher(api.clone(), config.clone()).boxed(),
                }
            }
        }
    })
    .boxed()
}

/// Caches objects as they come (managedFields aside).
pub fn keep<K>(object: K) -> K {
    object
}

/// A reflector over `api`: the cache the reconciler reads (each object turned by `cached` into
/// what the cache keeps of it), and the stream of the objects it saw change (deletions
/// included) that triggers reconciles.
pub fn reflect<K, T>(
    watches: &Arc<Watches>,
    name: &str,
    api: Api<K>,
    config: watcher::Config,
    cached: impl FnMut(K) -> T + Send + 'static,
) -> (
    Store<T>,
    impl futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    T: reflector::Lookup + Clone + Send + Sync + 'static,
    T::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    reflect_seen(watches, name, api, config, cached, |_| {})
}

/// [`reflect`], with `seen` told of every event (what the cache keeps of its object) just
/// before the cache takes it: for an index of the cache's objects.
pub fn reflect_seen<K, T>(
    watches: &Arc<Watches>,
    name: &str,
    api: Api<K>,
    config: watcher::Config,
    mut cached: impl FnMut(K) -> T + Send + 'static,
    mut seen: impl FnMut(&watcher::Event<T>) + Send + 'static,
) -> (
    Store<T>,
    impl futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    T: reflector::Lookup + Clone + Send + Sync + 'static,
    T::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let mut cache = move |mut object: K| {
        // managedFields are never read and are often the larger part of an object's metadata.
        object.meta_mut().managed_fields = None;
        cached(object)
    };
    let events = reflector::reflector(
        writer,
        futures::TryStreamExt::map_ok(watch(api, config, name, watches), move |event| {
            let event = summarized(event, &mut cache);
            seen(&event);
            event
        }),
    );
    (store.clone(), once_stored(events, store))
}

/// The objects of a reflector's events, each once its store holds what the event says: the
/// trigger stream of a controller. During a relist the store keeps its old objects until the
/// list is complete, and a controller reconciles what its store holds (an object the store does
/// not hold yet is dropped unreconciled). So the objects of a relist come when it is complete,
/// from the store, with those the relist no longer found (deleted while the watch was away);
/// the first list's come at once (the controllers wait for their stores to fill).
fn once_stored<T, E>(
    events: impl futures::Stream<Item = Result<watcher::Event<T>, E>> + Send + 'static,
    store: Store<T>,
) -> impl futures::Stream<Item = Result<T, E>> + Send + 'static
where
    T: reflector::Lookup + Clone + Send + Sync + 'static,
    T::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    E: Send + 'static,
{
    // During a relist: what the store held when it began, less what it has listed so far, keyed
    // by the hash of namespace and name (8 bytes, not a reference of four strings; two objects
    // of one hash, one chance in about 10^14 at 100,000, would leave one deletion untold).
    let mut before: Option<std::collections::HashMap<u64, Arc<T>>> = None;
    let mut listed_once = false;
    let key = |o: &T| crate::model::managed::hash((o.namespace(), o.name()));
    events.flat_map(move |event| {
        // One trigger or none.
        let one = |trigger| futures::stream::iter(trigger).left_stream();
        match event {
            Err(e) => one(Some(Err(e))),
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => one(Some(Ok(o))),
            Ok(watcher::Event::Init) => {
                before =
                    listed_once.then(|| store.state().into_iter().map(|o| (key(&o), o)).collect());
                one(None)
            }
            Ok(watcher::Event::InitApply(o)) => match before.as_mut() {
                Some(before) => {
                    before.remove(&key(&o));
                    one(None)
                }
                None => one(Some(Ok(o))),
            },
            Ok(watcher::Event::InitDone) => {
                listed_once = true;
                let Some(vanished) = before.take() else {
                    return one(None);
                };
                // The store now holds exactly what the relist listed.
                let listed = store.state().into_iter().chain(vanished.into_values());
                futures::stream::iter(listed.map(|o| Ok(T::clone(&o)))).right_stream()
            }
        }
    })
}

/// The watch of the managed Secrets, into `secrets` (each turned into its summary), and the
/// stream of the Secrets it saw change (deletions included) that triggers reconciles.
pub fn reflect_managed(
    watches: &Arc<Watches>,
    api: Api<k8s_openapi::api::core::v1::Secret>,
    config: watcher::Config,
    secrets: Arc<crate::model::managed::ManagedSecrets>,
) -> impl futures::Stream<Item = Result<Arc<crate::model::managed::ManagedSecret>, watcher::Error>>
+ Send
+ 'static {
    use crate::model::managed::ManagedSecret;
    watch(api, config, "managed Secrets", watches).flat_map(move |event| {
        let (triggers, error) = match event {
            Ok(event) => (secrets.saw(summarized(event, ManagedSecret::from)), None),
            Err(e) => (Vec::new(), Some(Err(e))),
        };
        futures::stream::iter(triggers.into_iter().map(Ok).chain(error))
    })
}

/// An event with its object turned into what a cache keeps of it.
fn summarized<K, T>(event: watcher::Event<K>, mut cached: impl FnMut(K) -> T) -> watcher::Event<T> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(cached(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(cached(o)),
        watcher::Event::InitApply(o) => watcher::Event::InitApply(cached(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Waits until a store has been filled once (`true`), or its watch is gone (`false`: the
/// controller is shutting down, or a target's watches were stopped). A waiter registered
/// before the fill is not always woken (observed with two controllers sharing stores), so the
/// wait is retried.
pub async fn filled<K>(store: &Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(ready) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            store.wait_until_ready(),
        )
        .await
        {
            return ready.is_ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_relist_triggers_once_the_store_holds_it_and_for_what_it_no_longer_found() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let object = |name: &str, version: &str| {
            let mut o = ConfigMap::default();
            o.metadata.name = Some(name.into());
            o.metadata.namespace = Some("ns".into());
            o.metadata.resource_version = Some(version.into());
            o
        };
        use watcher::Event::*;
        let events = [
            Init,
            InitApply(object("a", "1")),
            InitApply(object("b", "1")),
            InitDone,
            Apply(object("a", "2")),
            // A relist after the watch was away: b went, c came, a changed.
            Init,
            InitApply(object("a", "3")),
            InitApply(object("c", "1")),
            InitDone,
        ];
        let (store, writer) = reflector::store::<ConfigMap>();
        let events = reflector::reflector(
            writer,
            futures::stream::iter(events.map(Ok::<_, watcher::Error>)),
        );
        let mut triggers = std::pin::pin!(once_stored(events, store.clone()));
        let mut seen = Vec::new();
        while let Some(Ok(o)) = triggers.next().await {
            // What the store holds of it when the trigger comes.
            let held = store
                .get(&reflector::ObjectRef::from_obj(&o))
                .and_then(|held| held.metadata.resource_version.clone());
            seen.push(format!(
                "{}@{} held {}",
                o.metadata.name.unwrap_or_default(),
                o.metadata.resource_version.unwrap_or_default(),
                held.as_deref().unwrap_or("nothing")
            ));
        }
        // The relist's own come in the store's order.
        if let Some(relisted) = seen.get_mut(3..5) {
            relisted.sort();
        }
        assert_eq!(
            seen,
            [
                // The first list's at once (a controller waits for its store to fill).
                "a@1 held nothing",
                "b@1 held nothing",
                "a@2 held 2",
                // The relist's once complete, as the store holds them; then what it lost.
                "a@3 held 3",
                "c@1 held 1",
                "b@1 held nothing",
            ]
        );
    }

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

    #[test]
    fn every_watch_starts_over_once_when_the_api_server_is_back() {
        let watches = Watches::default();
        let mut others = watches.recoveries();
        assert!(
            !watches.listed(),
            "a list without a fault before is no recovery"
        );
        assert!(!others.has_changed().unwrap());
        watches.unreachable();
        watches.unreachable();
        assert!(watches.listed(), "the first list after the fault");
        assert!(others.has_changed().unwrap());
        others.borrow_and_update();
        assert!(!watches.listed(), "only once per fault");
        assert!(!others.has_changed().unwrap());
    }

    #[test]
    fn a_controller_never_pauses_its_triggers_and_never_ends_them() {
        // kube-runtime's StreamBackoff ends the trigger stream when the backoff ends (None).
        let mut pause = NoPause;
        for _ in 0..10_000 {
            assert_eq!(pause.next(), Some(Duration::ZERO));
        }
        kube::runtime::utils::Backoff::reset(&mut pause);
        assert_eq!(pause.next(), Some(Duration::ZERO));
    }

    #[test]
    fn a_watch_that_does_not_list_again_after_a_recovery_is_frozen() {
        let watches = Watches::default();
        watches.update("Kubeconfigs", |_| {});
        watches.update("Secrets", |_| {});
        let start = Instant::now();
        assert!(watches.frozen(start, Duration::ZERO).is_empty(), "no fault");
        watches.unreachable();
        assert!(watches.listed());
        watches.update("Secrets", |p| p.listed_at = Some(Instant::now()));
        let later = Instant::now() + Duration::from_secs(30);
        assert!(
            watches
                .frozen(Instant::now(), Duration::from_secs(20))
                .is_empty(),
            "too soon"
        );
        assert_eq!(
            watches.frozen(later, Duration::from_secs(20)),
            ["Kubeconfigs"]
        );
        watches.clear();
        assert!(watches.frozen(later, Duration::ZERO).is_empty());
    }

    #[test]
    fn last_contact_is_now_until_a_watch_fails() {
        let watches = Watches::default();
        let start = Instant::now();
        assert_eq!(watches.last_contact(start), None, "nothing heard yet");
        watches.update("a", |p| p.listed_at = Some(start));
        watches.update("b", |p| p.listed_at = Some(start));
        let later = start + Duration::from_secs(60);
        assert_eq!(watches.last_contact(later), Some(later));
        let failed = start + Duration::from_secs(10);
        watches.update("b", |p| p.failing_since = Some(failed));
        assert_eq!(watches.last_contact(later), Some(failed));
        watches.update("b", |p| p.failing_since = None);
        assert_eq!(watches.last_contact(later), Some(later));
    }
}
