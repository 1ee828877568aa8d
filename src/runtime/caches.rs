//! The caches of a term: each a reflector over one watch (see [`crate::client::watch`]), and
//! the stream of the objects it saw change.

use std::sync::Arc;

use kube::{
    Api,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};

use crate::{
    api::Kubeconfig,
    client::watch::{Watches, watch},
};

/// What brings a Kubeconfig back through its own watch: anything but its status. The status
/// is the controller's own, and each write of it would otherwise bring the object back once
/// more for nothing (a third of the reconciles of an issuance; the renewal is scheduled).
pub fn not_status(kc: &Kubeconfig) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = kube::Resource::meta(kc);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        meta.generation,
        &meta.finalizers,
        meta.deletion_timestamp.is_some(),
    )
        .hash(&mut hasher);
    Some(hasher.finish())
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
    mut cached: impl FnMut(K) -> T + Send + 'static,
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
        futures::TryStreamExt::map_ok(
            watch(api, config, name, watches),
            move |event| match event {
                watcher::Event::Apply(o) => watcher::Event::Apply(cache(o)),
                watcher::Event::Delete(o) => watcher::Event::Delete(cache(o)),
                watcher::Event::InitApply(o) => watcher::Event::InitApply(cache(o)),
                watcher::Event::Init => watcher::Event::Init,
                watcher::Event::InitDone => watcher::Event::InitDone,
            },
        ),
    )
    .touched_objects();
    (store, events)
}
