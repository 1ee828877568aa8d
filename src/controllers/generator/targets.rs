//! What a generator's reconcile shares: the caches it reads, and the watches of its target
//! kinds (started once per kind, on first use), whose changes bring every generator back, as
//! do changes of namespaces (from the shared reflector, see [`Context::trigger`]).

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, reflector::Store, watcher},
};
use tokio::sync::mpsc;

use crate::{
    api::{Authority, GeneratorTarget, Kubeconfig},
    client::watch::watch,
    model::Result,
};

pub struct Context {
    pub client: Client,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub kubeconfigs: Store<Kubeconfig>,
    pub authorities: Store<Authority>,
    /// Resolved target kinds.
    kinds: Mutex<HashMap<(String, String), ApiResource>>,
    /// Target kinds with a watch running; each change triggers every generator.
    watched: Mutex<HashSet<(String, String)>>,
    watches: std::sync::Arc<crate::client::watch::Watches>,
    trigger: mpsc::UnboundedSender<()>,
}

impl Context {
    /// The context, and the stream of "something a generator may depend on changed". Changes
    /// of namespaces come from the term's one Namespace reflector, through [`Self::trigger`].
    pub fn new(
        client: Client,
        namespaces: Store<PartialObjectMeta<Namespace>>,
        kubeconfigs: Store<Kubeconfig>,
        authorities: Store<Authority>,
        watches: std::sync::Arc<crate::client::watch::Watches>,
    ) -> (Self, impl futures::Stream<Item = ()> + Send + 'static) {
        let (trigger, changes) = mpsc::unbounded_channel();
        let changes = futures::stream::unfold(changes, |mut rx| async move {
            rx.recv().await.map(|()| ((), rx))
        });
        (
            Self {
                client,
                namespaces,
                kubeconfigs,
                authorities,
                kinds: Mutex::default(),
                watched: Mutex::default(),
                watches,
                trigger,
            },
            changes,
        )
    }

    /// Brings every generator back (a namespace entered or left a selector, perhaps).
    pub fn trigger(&self) -> impl Fn() + Send + 'static {
        let trigger = self.trigger.clone();
        move || {
            let _ = trigger.send(());
        }
    }

    /// The API resource of a target kind, from discovery (once per kind).
    pub(super) async fn resource(&self, target: &GeneratorTarget) -> Result<ApiResource, String> {
        let key = (target.api_version.clone(), target.kind.clone());
        if let Some(found) = self.kinds.lock().ok().and_then(|k| k.get(&key).cloned()) {
            return Ok(found);
        }
        let (group, version) = match target.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", target.api_version.as_str()),
        };
        let gvk = GroupVersionKind::gvk(group, version, &target.kind);
        let (resource, _) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| {
                format!(
                    "the API server does not serve {} {} ({e}); install its CRD or fix spec.target",
                    target.api_version, target.kind
                )
            })?;
        if let Ok(mut kinds) = self.kinds.lock() {
            kinds.insert(key, resource.clone());
        }
        Ok(resource)
    }

    /// Starts a watch of a target kind, once; its changes trigger every generator.
    pub(super) fn watch(&self, resource: &ApiResource) {
        let key = (resource.api_version.clone(), resource.kind.clone());
        let new = self.watched.lock().is_ok_and(|mut w| w.insert(key));
        if !new {
            return;
        }
        let stream = watch(
            Api::<PartialObjectMeta<DynamicObject>>::all_with(self.client.clone(), resource),
            watcher::Config::default(),
            &format!("{} (generators)", resource.kind),
            &self.watches,
        )
        .touched_objects();
        let forward = self.trigger.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(stream);
            while events.next().await.is_some() {
                if forward.send(()).is_err() {
                    return;
                }
            }
        });
    }
}
